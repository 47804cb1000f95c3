"""The job board of a Ray deployment, in process (it is a plain class that the driver makes an actor): views
handed over once whichever replica asks, cancellations delivered to the owner, a silent owner's job failed,
results expired."""

import time

from densepure.serve.ray_jobs import JobBoard

VIEW = {"id": "j1", "status": "queued", "created": "2026-12-06T00:00:00+00:00", "images": 1}


def test_a_job_is_running_then_handed_over_once():
    board = JobBoard(ttl_s=60)
    board.create("j1", "a", VIEW)
    assert board.count() == 1 and board.view("j1") == VIEW
    assert board.heartbeat("a", {"j1": {**VIEW, "status": "running", "draws": 64}}) == []
    assert board.view("j1")["draws"] == 64  # what the owner said last, to any replica
    board.finish("j1", {**VIEW, "status": "succeeded", "result": {"outputs": []}})
    board.heartbeat("a", {"j1": {**VIEW, "status": "running"}})  # a late beat does not undo the result
    assert board.view("j1")["status"] == "succeeded"
    assert board.view("j1") is None and board.count() == 0


def test_a_deleted_job_is_cancelled_on_its_own_replica():
    board = JobBoard(ttl_s=60)
    board.create("j1", "a", VIEW)
    assert board.delete("j1") == {"id": "j1", "status": "cancelled"}
    assert board.view("j1") is None and board.delete("j1") is None
    assert board.heartbeat("b", {}) == []  # not another replica's business
    assert board.heartbeat("a", {}) == ["j1"] and board.heartbeat("a", {}) == []  # delivered once
    board.create("j2", "a", VIEW)
    board.finish("j2", {**VIEW, "id": "j2", "status": "succeeded"})
    assert board.delete("j2") == {"id": "j2", "status": "succeeded", "deleted": True}
    assert board.heartbeat("a", {}) == []


def test_a_silent_owners_job_reads_failed_and_a_result_expires():
    board = JobBoard(ttl_s=0.2, lost_s=0.2)
    board.create("j1", "a", VIEW)
    board.heartbeat("a", {"j1": {**VIEW, "status": "running"}})
    assert board.view("j1")["status"] == "running"
    time.sleep(0.3)
    view = board.view("j1")
    assert view["status"] == "failed" and "(a) was lost" in view["error"] and "submit it again" in view["error"]
    assert board.view("j1") is None
    board.create("j2", "b", VIEW)
    board.finish("j2", {**VIEW, "status": "succeeded"})
    time.sleep(0.3)
    assert board.view("j2") is None and board.count() == 0  # unfetched past the ttl
