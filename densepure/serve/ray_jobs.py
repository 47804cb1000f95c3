"""Jobs that any replica can answer for: a job board in one named Ray actor.

Behind Ray Serve's proxy, ``GET /v1/jobs/{id}`` reaches any replica, rarely the one running the job. The
job's state therefore lives in one place every replica can find: a :class:`JobBoard`, a named Ray actor
(detached, in the ``densepure`` namespace) that the driver creates before it deploys and kills after.
Why an actor and not another store: it needs nothing beside Ray (no Redis or database to run and secure),
it serialises every update (one request at a time, so a result is handed over exactly once), and its
contents are small (states, and final responses until fetched or expired). Its cost: the board lives on
one node, and its contents die with that node (a job then reads as unknown, 404: submit it again).

The replica that accepted a job runs it on its own engine (:class:`SharedJobs` keeps it in a local
:class:`~densepure.serve.jobs.JobStore`) and keeps the board current: every :data:`HEARTBEAT_S` it sends
the state and draws of its running jobs and collects the cancellations other replicas recorded; a final
result goes to the board whole, in one call, so a reader sees a job running or finished, never half of a
result. A job whose replica stopped sending (killed, or its node lost) for :data:`LOST_S` is reported
failed ("the replica running it was lost: submit it again"). A replica that is scaled down keeps running
its jobs for its grace period before it stops; what is left then is reported failed the same way.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from typing import Any

from densepure.serve.jobs import Job, JobStatus, JobStore
from densepure.serve.loop import Outcome

HEARTBEAT_S = 0.5
LOST_S = 10.0
NAMESPACE = "densepure"


class JobBoard:
    """Every job of a deployment (a Ray actor; plain methods, so it is tested in process too). Views are
    the JSON of ``GET /v1/jobs/{id}``; ``ttl_s``: how long a final result waits to be fetched."""

    def __init__(self, ttl_s: float, lost_s: float = LOST_S):
        self.ttl_s, self.lost_s = float(ttl_s), float(lost_s)
        self._views: dict[str, dict] = {}
        self._owner: dict[str, str] = {}
        self._finished: dict[str, float] = {}
        self._seen: dict[str, float] = {}  # replica -> its last heartbeat
        self._cancel: dict[str, set[str]] = {}  # replica -> jobs to cancel there

    def create(self, job_id: str, replica: str, view: dict) -> None:
        self._views[job_id], self._owner[job_id] = dict(view), replica
        self._seen[replica] = time.monotonic()

    def count(self) -> int:
        self._purge()
        return len(self._views)

    def heartbeat(self, replica: str, running: dict[str, dict]) -> list[str]:
        """A replica's running jobs (id -> view); returns the jobs to cancel there."""
        self._seen[replica] = time.monotonic()
        for job_id, view in running.items():
            if job_id in self._views and job_id not in self._finished:
                self._views[job_id] = dict(view)
        return sorted(self._cancel.pop(replica, set()))

    def finish(self, job_id: str, view: dict) -> None:
        """A job's final view (with its result or error), whole."""
        if job_id in self._views and job_id not in self._finished:
            self._views[job_id], self._finished[job_id] = dict(view), time.monotonic()

    def view(self, job_id: str) -> dict | None:
        """The job's view; a final one is handed over (and forgotten); None if unknown, fetched or expired."""
        self._purge()
        if job_id not in self._views:
            return None
        if job_id not in self._finished:
            self._check_owner(job_id)
        view = self._views[job_id]
        if job_id in self._finished:
            self._forget(job_id)
        return dict(view)

    def delete(self, job_id: str) -> dict | None:
        """Forget a job; a running one is cancelled on its replica at its next heartbeat."""
        self._purge()
        view = self._views.get(job_id)
        if view is None:
            return None
        running = job_id not in self._finished
        if running:
            self._cancel.setdefault(self._owner[job_id], set()).add(job_id)
        self._forget(job_id)
        if running:
            return {"id": job_id, "status": JobStatus.CANCELLED.value}
        return {"id": job_id, "status": view["status"], "deleted": True}

    def _check_owner(self, job_id: str) -> None:
        owner = self._owner[job_id]
        silent = time.monotonic() - self._seen.get(owner, 0.0)
        if silent > self.lost_s:
            self.finish(job_id, {**self._views[job_id], "status": JobStatus.FAILED.value,
                                 "error": f"the replica running this job ({owner}) was lost {silent:.0f} s ago: "
                                          "submit it again"})

    def _forget(self, job_id: str) -> None:
        for table in (self._views, self._owner, self._finished):
            table.pop(job_id, None)

    def _purge(self) -> None:
        now = time.monotonic()
        for job_id in [j for j, t in self._finished.items() if now - t > self.ttl_s]:
            self._forget(job_id)


class SharedJobs:
    """The job store of one replica: its own jobs run in ``local``, their states go to ``board`` (a handle of
    the :class:`JobBoard` actor). The routes await :meth:`count`, :meth:`add`, :meth:`view` and
    :meth:`delete`; :meth:`finish` is called on the event loop when a job's work is decided."""

    def __init__(self, local: JobStore, board: Any, replica: str):
        self.local, self.board, self.replica = local, board, replica
        self.max_jobs = local.max_jobs
        self._task: asyncio.Task | None = None
        self._pushes: set[asyncio.Future] = set()

    def new_id(self) -> str:
        return self.local.new_id()

    def peek(self, job_id: str) -> dict:
        return self.local.peek(job_id)

    async def count(self) -> int:
        return await self.board.count.remote()

    async def add(self, job: Job) -> None:
        self.local.add(job)
        await self.board.create.remote(job.id, self.replica, self.local.peek(job.id))

    def discard(self, job_id: str) -> None:
        self.local.discard(job_id)

    def finish(self, job_id: str, outcome: Outcome) -> None:
        """Record the outcome locally, then send the final view (result or error) to the board whole."""
        self.local.finish(job_id, outcome)
        view = self.local.view(job_id)  # final: handed over by the local store, now the board's to hand over
        if view is not None:
            self._push(self.board.finish.remote(job_id, view))

    async def view(self, job_id: str) -> dict | None:
        return await self.board.view.remote(job_id)

    async def delete(self, job_id: str) -> dict | None:
        view = await self.board.delete.remote(job_id)
        self.local.delete(job_id)  # here: cancelled at once (elsewhere: at its replica's next heartbeat)
        return view

    # -- the replica's lifecycle ----------------------------------------------------------------
    async def start(self) -> None:
        self._task = asyncio.ensure_future(self._heartbeat())

    async def close(self, wait_s: float) -> None:
        """Let the running jobs finish for up to ``wait_s`` (a replica scaled down drains), cancel the rest
        (reported failed), and stop the heartbeat once the board has every final view."""
        deadline = time.monotonic() + wait_s
        while self.local.running() and time.monotonic() < deadline:
            await asyncio.sleep(0.1)
        for job_id in self.local.running():
            work_id = self.local.work_of(job_id)
            self.finish(job_id, _stopped())  # the board's view first: the cancellation below then finds no job
            self.local.loop.cancel(work_id)
        if self._pushes:
            await asyncio.wait(list(self._pushes), timeout=10)
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    def cancel_all(self) -> None:
        self.local.cancel_all()

    async def _heartbeat(self) -> None:
        while True:
            try:
                running = {job_id: self.local.progress_view(job_id) for job_id in self.local.running()}
                for job_id in await self.board.heartbeat.remote(self.replica, running):
                    self.local.delete(job_id)
            except Exception:  # noqa: BLE001  (the board unreachable a moment: the next beat tries again)
                pass
            await asyncio.sleep(HEARTBEAT_S)

    def _push(self, ref: Any) -> None:
        future = asyncio.ensure_future(_awaited(ref))
        self._pushes.add(future)
        future.add_done_callback(self._pushes.discard)


async def _awaited(ref: Any) -> None:
    await ref


def _stopped():
    from densepure.serve.loop import FailKind, WorkFailed

    return WorkFailed(FailKind.SHUTDOWN, "the replica running this job was scaled down or stopped before the job "
                                         "finished: submit it again")
