"""`densepure serve --devices cpu,cpu`: two engine loops behind one endpoint (real processes on the digits
models), and an in-process app whose second device fails while serving."""

import subprocess
import sys
import threading
import time

import numpy as np
import pytest
from serve_helpers import FAST, ROOT, ServerProcess, free_port, serve_env
from serve_loop_helpers import Brightness, engine_factory

from densepure.serve.client import Client
from densepure.serve.runtime import Runtime
from densepure.serve.settings import ServeOptions

SEED = 4242
OUTPUTS = ["label", "radius", "draws", "counts"]


@pytest.fixture(scope="module")
def two_devices(tmp_path_factory):
    """Two CPU loops (one torch thread each), client seeds allowed, requests of >= 150 draws an image split."""
    proc = ServerProcess(tmp_path_factory.mktemp("devices"), *FAST, "--devices", "cpu,cpu", "--allow-client-seed",
                         "--split-min-draws", "150", "--image-slots", "16")
    try:
        yield proc.wait_ready(180)
    finally:
        proc.stop()


def test_every_device_is_up_and_labelled(two_devices):
    for device in ("cpu#0", "cpu#1"):
        assert two_devices.metric("densepure_device_up", f'device="{device}"') == 1
    text = two_devices.http.get("/metrics").text
    assert 'device="cpu,cpu"' in text  # densepure_build_info
    config = two_devices.http.get("/v2/models/digits/config").json()
    assert config["instance_group"] == [{"name": "digits", "kind": "KIND_CPU", "count": 2}]


@pytest.mark.parametrize("mode,params,split", [
    ("certify", {"n0": 10, "n": 100}, False),
    ("certify", {"n0": 20, "n": 200}, True),
    ("certify_radius", {"radius": 0.25, "n": 400}, True),
    ("predict", {"n": 200}, True),
])
def test_certificates_equal_one_devices_whole_or_split(two_devices, audit_server, digits, mode, params, split):
    images = digits[0][[3, 4]]
    outputs = [name for name in OUTPUTS if mode != "predict" or name != "radius"]
    splits = two_devices.metric("densepure_split_requests_total")
    with Client(audit_server.url) as one, Client(two_devices.url) as two:
        expected = one.infer(images, mode=mode, seed=SEED, noise_id=7, outputs=outputs, **params)
        got = two.infer(images, mode=mode, seed=SEED, noise_id=7, outputs=outputs, **params)
    np.testing.assert_array_equal(got.counts, expected.counts)
    np.testing.assert_array_equal(got.labels, expected.labels)
    np.testing.assert_array_equal(got.draws, expected.draws)
    if mode != "predict":
        np.testing.assert_allclose(got.radii, expected.radii)
    assert two_devices.metric("densepure_split_requests_total") - splits == (1 if split else 0)


@pytest.mark.slow  # the fast tier keeps one multi-device test
def test_requests_go_to_the_device_with_fewer_queued_draws(two_devices, digits):
    images = digits[0]
    before = {d: two_devices.metric("densepure_draws_total", f'device="{d}"') for d in ("cpu#0", "cpu#1")}
    big = {}

    def send_big():
        with Client(two_devices.url, timeout=300) as client:  # 8 images x 140 draws, under the split size each
            big["result"] = client.infer(images[:8], mode="certify", n0=20, n=120)

    thread = threading.Thread(target=send_big)
    thread.start()
    deadline = time.monotonic() + 60
    while two_devices.metric("densepure_queued_draws") < 8 * 140:
        assert time.monotonic() < deadline, "the big request was not accepted"
        time.sleep(0.05)
    with Client(two_devices.url) as client:
        for i in range(3):  # each goes to the device without the big request
            client.infer(images[[10 + i]], mode="predict", n=10)
    thread.join(300)
    assert big["result"].draws.tolist() == [140] * 8
    after = {d: two_devices.metric("densepure_draws_total", f'device="{d}"') for d in before}
    assert sorted(after[d] - before[d] for d in before) == [30, 8 * 140]


@pytest.mark.slow  # a server process of its own
def test_a_device_that_cannot_load_stops_the_server_with_one_line(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "densepure.cli", "serve", *FAST, "--port", str(free_port()),
                           "--devices", "cpu,cuda:5"], env=serve_env(), cwd=ROOT, capture_output=True, text=True,
                          timeout=180)
    assert proc.returncode == 2, proc.stderr[-2000:]
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("densepure: error: device cuda:5 could not load the models: "), last
    assert "Traceback" not in proc.stderr


def test_a_device_failing_while_serving_is_answered_503_then_left_out():
    """The second device's classifier returns NaN: the request running there is a 503 with Retry-After, the
    server stays ready, and the next requests all go to the first device."""
    from starlette.testclient import TestClient

    modules = [Brightness(), Brightness()]
    factories = {"cpu#0": engine_factory(modules[0], 4), "cpu#1": engine_factory(modules[1], 4)}
    options = ServeOptions.build(n0=20, n=200, devices=("cpu", "cpu"), access_log=False)
    made = iter(factories.values())
    runtime = Runtime(options, engine_factory=lambda device: next(made)())
    body = {"inputs": [{"name": "image", "datatype": "FP32", "shape": [1, 1, 8, 8], "data": [0.5] * 64}],
            "parameters": {"mode": "predict", "n": 30}}
    with TestClient(create_app_for(runtime)) as client:
        assert runtime.loop.wait_ready(60)
        modules[1].nan = True
        statuses = [client.post("/v2/models/digits/infer", json=body) for _ in range(2)]  # idle devices take turns
        failed = [r for r in statuses if r.status_code == 503]
        assert len(failed) == 1 and failed[0].headers["retry-after"] == "1"
        assert "device cpu#1 failed" in failed[0].json()["error"]
        assert all(client.post("/v2/models/digits/infer", json=body).status_code == 200 for _ in range(4))
        assert client.get("/v2/health/ready").status_code == 200 and client.get("/v2/health/live").status_code == 200
        text = client.get("/metrics").text
        assert 'densepure_device_up{device="cpu#1"} 0.0' in text and 'densepure_device_up{device="cpu#0"} 1.0' in text


def create_app_for(runtime):
    from densepure.serve.app import create_app

    return create_app(runtime)
