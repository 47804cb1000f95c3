"""Starting and stopping: SIGTERM drains the requests in flight and exits 0; a model that will not load,
or a missing serve extra, is one line and exit status 2."""

import re
import signal
import socket
import subprocess
import sys
import threading
import time

import httpx
import pytest
from serve_helpers import FAST, ROOT, ServerProcess, free_port, infer_json, serve_env

from densepure.cli import main
from densepure.serve.client import Client, ServerError


@pytest.mark.slow  # a server of its own, drained for up to 10 s
def test_sigterm_drains_in_flight_work_within_the_grace_period_and_exits_0(tmp_path, digits):
    """During the drain the server keeps listening and answers new requests 503 with Retry-After (what a
    load balancer expects), finishes what fits in the grace period, cuts off the rest with a 503, exits 0."""
    server = ServerProcess(tmp_path, *FAST, "--grace-period", "10").wait_ready()
    images = digits[0]
    results = {}

    def send(name, x, **params):
        try:
            with Client(server.url, timeout=60) as client:
                results[name] = client.infer(x, mode="certify", **params)
        except Exception as exc:  # noqa: BLE001  (the long request is cut off: what happened is the result)
            results[name] = exc

    threads = [threading.Thread(target=send, args=("short", images[[0]]), kwargs={"n0": 5, "n": 20}),
               threading.Thread(target=send, args=("long", images[[1]]), kwargs={"n0": 10, "n": 100_000})]
    try:
        for t in threads:
            t.start()
        deadline = time.monotonic() + 30
        while server.metric("densepure_images_in_flight") < 2:  # both admitted
            assert time.monotonic() < deadline
            time.sleep(0.05)
        stopped = time.monotonic()
        server.proc.send_signal(signal.SIGTERM)
        time.sleep(1.0)
        # still listening while the long request runs: new work and readiness are 503 with Retry-After
        with httpx.Client(base_url=server.url, timeout=10) as http:
            ready, live = http.get("/v2/health/ready"), http.get("/v2/health/live")
            refused = http.post("/v2/models/digits/infer", json=infer_json(images[[2]], mode="predict", n=5))
        assert live.status_code == 200 and ready.status_code == 503
        for response in (ready, refused):
            assert response.headers["retry-after"] == "1" and response.headers["connection"] == "close"
            assert response.json() == {"error": "the server is shutting down"}
        assert server.proc.poll() is None
        assert server.proc.wait(40) == 0
        elapsed = time.monotonic() - stopped
        for t in threads:
            t.join(30)
    finally:
        server.stop()
    assert not isinstance(results["short"], Exception), results["short"]
    assert results["short"].draws.tolist() == [25]  # finished during the drain
    long = results["long"]  # 100,010 draws do not fit in the grace period: cut off with a 503
    assert isinstance(long, ServerError) and long.status == 503 and "grace period" in long.message
    assert elapsed < 10 + 15
    assert "draining (grace period 10 s)" in server.log()
    assert re.search(r"ready: the models were built in [0-9.]+ s and warmed up in [0-9.]+ s", server.log())


@pytest.mark.slow  # a second interpreter: ~4 s of CPU
def test_a_model_that_does_not_load_is_one_line_and_status_2(tmp_path):
    done = subprocess.run([sys.executable, "-m", "densepure.cli", "serve", "--port", str(free_port()), "--checkpoint",
                           str(tmp_path / "missing.pt")], check=False, capture_output=True, text=True,
                          env=serve_env(), cwd=ROOT, timeout=120)
    last = done.stderr.strip().splitlines()[-1]
    assert done.returncode == 2 and last.startswith("densepure: error: ") and "missing.pt" in last
    assert "Traceback" not in done.stderr


def test_a_taken_port_is_one_line_and_status_2(capsys):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        code = main(["serve", "--port", str(taken.getsockname()[1])])  # fails before anything loads or listens
    err = capsys.readouterr().err
    assert code == 2 and err.startswith("densepure: error: cannot listen on 127.0.0.1:") and err.count("\n") == 1


@pytest.mark.slow  # a second interpreter: ~4 s of CPU
def test_without_the_serve_extra_it_says_how_to_install_it():
    code = "import sys; sys.modules['fastapi'] = None; from densepure.cli import main; sys.exit(main(['serve']))"
    done = subprocess.run([sys.executable, "-c", code], check=False, capture_output=True, text=True, env=serve_env(),
                          cwd=ROOT, timeout=120)
    assert done.returncode == 2 and done.stdout == ""
    assert done.stderr.count("\n") == 1 and "pip install -e '.[serve]'" in done.stderr
