"""Triton's extensions a Triton/KServe user meets: model configuration, statistics, the repository API,
the ``timeout`` and ``priority`` parameters and compressed request bodies, in raw HTTP and with
tritonclient's HTTP client (when it is installed)."""

from __future__ import annotations

import gzip
import json
import time
import zlib

import numpy as np
import pytest
import torch
from serve_helpers import infer_json

from densepure.serve.protocol import HEADER_LENGTH, decode_response, encode_request

INFER = "/v2/models/digits/infer"


def test_model_config_in_triton_s_shape(server):
    config = server.http.get("/v2/models/digits/config").json()
    assert config["name"] == "digits" and config["max_batch_size"] == 8  # the server's --max-batch
    assert config["input"] == [{"name": "image", "data_type": "TYPE_FP32", "format": "FORMAT_NCHW", "dims": [1, 8, 8],
                                "is_shape_tensor": False, "allow_ragged_batch": False, "optional": False}]
    outputs = {o["name"]: o for o in config["output"]}
    assert set(outputs) == {"label", "certified", "radius", "draws", "counts"}
    assert outputs["label"]["data_type"] == "TYPE_INT64" and outputs["certified"]["data_type"] == "TYPE_BOOL"
    assert outputs["counts"]["dims"] == [2, 10] and outputs["radius"]["reshape"] == {"shape": []}
    params = {k: v["string_value"] for k, v in config["parameters"].items()}
    assert {k: params[k] for k in ("smoothing", "sigma", "K", "b", "alpha", "n0", "n")} == {
        "smoothing": "densepure", "sigma": "0.25", "K": "3", "b": "2", "alpha": "0.001", "n0": "20", "n": "200"}
    batching = config["dynamic_batching"]
    assert (batching["priority_levels"], batching["default_priority_level"]) == (9, 5)
    assert server.http.get("/v2/models/digits/versions/1/config").json() == config
    # the server runs on --device auto: the kind is the device that resolves to here, not "not cpu"
    assert config["instance_group"][0]["kind"] == ("KIND_GPU" if torch.cuda.is_available() else "KIND_CPU")
    assert params["backend"] == "torch" and params["precision"] == "fp32"
    for path in ("/v2/models/digits/versions/2/config", "/v2/models/mnist/config"):
        response = server.http.get(path)
        assert response.status_code == 404 and "error" in response.json()
    assert {"model_configuration", "statistics", "model_repository", "schedule_policy"} <= set(
        server.http.get("/v2").json()["extensions"])


def stats(server, path="/v2/models/digits/stats") -> dict:
    (stat,) = server.http.get(path).json()["model_stats"]
    return stat


def test_statistics_count_requests_images_and_times(server, digits):
    before = stats(server)
    ok = server.http.post(INFER, json=infer_json(digits[0][:3], mode="predict", n=10))
    bad = server.http.post(INFER, json=infer_json(digits[0][:1], mode="predict", n=0))
    other = server.http.post("/v2/models/mnist/infer", json=infer_json(digits[0][:1]))  # not this model's
    assert (ok.status_code, bad.status_code, other.status_code) == (200, 400, 404)
    after = stats(server)
    assert (after["name"], after["version"]) == ("digits", "1")
    assert after["inference_count"] - before["inference_count"] == 3
    assert after["execution_count"] > before["execution_count"]
    assert after["last_inference"] >= int(time.time() * 1000) - 60_000
    got, was = after["inference_stats"], before["inference_stats"]
    for name, delta in (("success", 1), ("fail", 1), ("queue", 1), ("compute_input", 1), ("compute_infer", 1),
                        ("compute_output", 1), ("cache_hit", 0)):
        assert got[name]["count"] - was[name]["count"] == delta, name
    assert got["success"]["ns"] - was["success"]["ns"] >= got["compute_infer"]["ns"] - was["compute_infer"]["ns"] > 0
    assert after["batch_stats"] == []
    assert stats(server, "/v2/models/stats")["inference_count"] == after["inference_count"]
    assert stats(server, "/v2/models/digits/versions/1/stats")["inference_count"] == after["inference_count"]
    assert server.http.get("/v2/models/mnist/stats").status_code == 404


def test_repository_index_load_and_unload(server):
    ready = [{"name": "digits", "version": "1", "state": "READY", "reason": ""}]
    assert server.http.post("/v2/repository/index").json() == ready  # tritonclient sends an empty body
    assert server.http.post("/v2/repository/index", json={"ready": True}).json() == ready
    for body, word in ((b"[1]", "object"), (b'{"ready": 1}', "ready"), (b'{"x": 1}', "unknown field")):
        response = server.http.post("/v2/repository/index", content=body)
        assert response.status_code == 400 and word in response.json()["error"]
    assert server.http.post("/v2/repository/models/digits/load").json() == {}
    for path, body, word in (("/v2/repository/models/mnist/load", {}, "cannot load 'mnist'"),
                             ("/v2/repository/models/digits/load", {"parameters": {"config": "{}"}}, "restart"),
                             ("/v2/repository/models/digits/unload", {}, "cannot be unloaded")):
        response = server.http.post(path, json=body)
        assert response.status_code == 400 and word in response.json()["error"]


def test_timeout_is_a_deadline_in_microseconds(server, digits):
    start = time.monotonic()
    response = server.http.post(INFER, json=infer_json(digits[0][:2], mode="certify", n=2000, timeout=300_000))
    assert response.status_code == 504 and "deadline_ms=300 passed" in response.json()["error"]
    assert time.monotonic() - start < 10
    quick = server.http.post(INFER, json=infer_json(digits[0][:1], mode="predict", n=10, timeout=60_000_000,
                                                    priority=1))
    assert quick.status_code == 200 and quick.json()["outputs"][1]["data"] == [10]
    server.wait_metric("densepure_images_in_flight", 0)


@pytest.mark.parametrize("encoding,compress", [
    ("gzip", gzip.compress), ("deflate", zlib.compress),
    ("deflate", lambda data: zlib.compress(data, wbits=-zlib.MAX_WBITS)),  # raw deflate, as some clients send
])
@pytest.mark.parametrize("binary", [False, True])
def test_compressed_bodies(server, digits, encoding, compress, binary):
    body, headers = encode_request(digits[0][:2], {"mode": "predict", "n": 10}, binary=binary)
    response = server.http.post(INFER, content=compress(body), headers={**headers, "content-encoding": encoding})
    assert response.status_code == 200, response.text[:300]
    _, tensors = decode_response(response.content, response.headers.get(HEADER_LENGTH))
    assert tensors["draws"].tolist() == [10, 10]


def test_a_decompression_bomb_is_refused_after_the_limit(server):
    bomb = gzip.compress(b" " * 50_000_000)  # 49 KB that inflate to 50 MB; the server's --max-body-bytes is 300000
    assert len(bomb) < 300_000
    start = time.monotonic()
    response = server.http.post(INFER, content=bomb, headers={"content-encoding": "gzip"})
    assert response.status_code == 413 and "decompresses to more than 300000 bytes" in response.json()["error"]
    assert time.monotonic() - start < 5
    truncated = server.http.post(INFER, content=gzip.compress(json.dumps({}).encode())[:-6],
                                 headers={"content-encoding": "gzip"})
    assert truncated.status_code == 400 and "truncated" in truncated.json()["error"]


def test_tritonclient_http(server, digits):
    httpclient = pytest.importorskip("tritonclient.http", reason="tritonclient[http] is not installed")
    from tritonclient.utils import InferenceServerException

    client = httpclient.InferenceServerClient(f"127.0.0.1:{server.port}")
    try:
        assert client.get_model_config("digits")["max_batch_size"] == 8
        assert client.get_inference_statistics("digits")["model_stats"][0]["name"] == "digits"
        assert client.get_model_repository_index() == [{"name": "digits", "version": "1", "state": "READY",
                                                        "reason": ""}]
        client.load_model("digits")
        images = digits[0][:2].astype(np.float32)
        for compression in (None, "gzip", "deflate"):
            image = httpclient.InferInput("image", list(images.shape), "FP32")
            image.set_data_from_numpy(images, binary_data=True)
            result = client.infer("digits", [image], parameters={"mode": "predict", "n": 10}, priority=2,
                                  timeout=60_000_000, request_compression_algorithm=compression)
            assert result.as_numpy("draws").tolist() == [10, 10] and result.as_numpy("label").shape == (2,)
        with pytest.raises(InferenceServerException, match="deadline"):
            client.infer("digits", [image], parameters={"mode": "certify", "n": 2000}, timeout=200_000)
    finally:
        client.close()
    server.wait_metric("densepure_images_in_flight", 0)
