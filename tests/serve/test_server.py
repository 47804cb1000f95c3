"""A real ``densepure serve`` process on 127.0.0.1: health, metadata, every mode, the binary extension,
a fuzzed corpus of bad requests, deadlines, disconnects, backpressure, jobs, metrics and docs."""

import json
import os
import socket
import time
from pathlib import Path

import numpy as np
import pytest
from serve_helpers import infer_json

from densepure.serve.client import Client, ServerError
from densepure.serve.protocol import HEADER_LENGTH, decode_response, encode_request

INFER = "/v2/models/digits/infer"


def test_health_and_metadata(server):
    http = server.http
    assert http.get("/v2/health/live").status_code == 200
    assert http.get("/v2/health/ready").json() == {"ready": True}
    meta = http.get("/v2").json()
    assert meta["name"] == "densepure" and "binary_tensor_data" in meta["extensions"]
    model = http.get("/v2/models/digits").json()
    assert model["name"] == "digits" and model["inputs"] == [{"name": "image", "datatype": "FP32",
                                                              "shape": [-1, 1, 8, 8]}]
    assert {o["name"] for o in model["outputs"]} == {"label", "certified", "radius", "draws", "counts"}
    assert model["parameters"]["smoothing"] == {"smoothing": "densepure", "sigma": 0.25, "K": 3, "b": 2,
                                                "t_star_rule": "auto", "alpha": 0.001,
                                                "noise": "sound", "levels": 16}  # the digits preset's grid
    assert model["parameters"]["defaults"] == {"n0": 20, "n": 200, "alpha": 0.001, "radius": 0.25}
    assert http.get("/v2/models/digits/versions/1").json() == model
    assert http.get("/v2/models/digits/ready").json() == {"name": "digits", "ready": True}
    for path in ("/v2/models/cifar10", "/v2/models/cifar10/ready", "/v2/models/digits/versions/2"):
        response = http.get(path)
        assert response.status_code == 404 and "error" in response.json()


def test_every_mode(server, digits):
    images, labels = digits
    x = images[[0, 1]]
    with Client(server.url) as client:
        predict = client.infer(x, mode="predict", n=40, request_id="p1")
        certify = client.infer(x, mode="certify", n0=10, n=100, outputs=["label", "radius", "draws", "counts"])
        sequential = client.infer(x)  # certify_radius at r = sigma, the server's n0=20, n=200
    assert predict.id == "p1" and predict.radii is None and predict.certified is None
    assert predict.draws.tolist() == [40, 40] and predict.parameters["method"] == "cohen_predict"
    assert certify.draws.tolist() == [110, 110] and certify.counts.shape == (2, 2, 10)
    assert certify.counts[:, 0].sum(axis=1).tolist() == [10, 10] and certify.counts[:, 1].sum(axis=1).tolist() == [
        100, 100]
    effective = certify.parameters.pop("effective_alpha")  # the sound sampler's addition: far below float64's ulp
    assert 0.001 < effective <= np.nextafter(0.001, 1.0)
    assert certify.parameters == {"mode": "certify", "smoothing": "densepure", "sigma": 0.25, "K": 3, "b": 2,
                                  "t_star_rule": "auto", "alpha": 0.001, "method": "cohen_certify", "n": 100, "n0": 10,
                                  "noise": "sound", "levels": 16}
    assert sequential.parameters["radius"] == 0.25 and sequential.parameters["method"].startswith("sequential")
    assert "seed" not in sequential.parameters  # the noise seed is secret
    for result in (predict, certify, sequential):
        assert set(result.labels.tolist()) <= set(labels[[0, 1]].tolist()) | {-1}
    assert ((certify.radii > 0) == (certify.labels >= 0)).all()
    assert (sequential.certified == (sequential.labels >= 0)).all()
    assert (sequential.radii == np.where(sequential.certified, 0.25, 0.0)).all()
    assert (sequential.draws > 20).all() and (sequential.draws <= 220).all()  # n0 + estimation draws up to n


def test_binary_extension_and_uint8(server, audit_float_server, digits):
    images = digits[0][[2, 3]]
    body, headers = encode_request(images, {"mode": "predict", "n": 30}, binary=True)
    response = server.http.post(INFER, content=body, headers=headers)
    assert response.status_code == 200 and response.headers["content-type"] == "application/octet-stream"
    obj, tensors = decode_response(response.content, response.headers[HEADER_LENGTH])
    assert all("data" not in o for o in obj["outputs"]) and tensors["draws"].tolist() == [30, 30]
    pixels = np.round(images * 255).astype(np.uint8)
    with Client(audit_float_server.url) as client:  # float noise reads any image
        result = client.infer(pixels, mode="predict", n=30)  # JSON UINT8
    assert result.labels.shape == (2,) and result.draws.tolist() == [30, 30]
    with Client(server.url) as client, pytest.raises(ServerError, match=r"not on the grid k/16 \(--levels 16\)"):
        client.infer(pixels, mode="predict", n=30)  # k/255 is not the digits' grid k/16: the sound noise refuses


def _bad_requests(image: list) -> list:
    """(name, body bytes, headers, path, expected status, a word the error must contain)."""
    def req(inputs=None, **top):
        obj = {"inputs": inputs if inputs is not None else [{"name": "image", "datatype": "FP32",
                                                               "shape": [1, 1, 8, 8], "data": image}]}
        obj.update(top)
        return json.dumps(obj).encode()

    def tensor(**fields):
        return [{"name": "image", "datatype": "FP32", "shape": [1, 1, 8, 8], "data": image, **fields}]

    def params(**p):
        return req(parameters=p)

    binary_header = json.dumps({"inputs": [{"name": "image", "datatype": "FP32", "shape": [1, 1, 8, 8],
                                            "parameters": {"binary_data_size": 256}}]}).encode()
    raw = np.zeros(64, dtype="<f4").tobytes()
    json_h = {"content-type": "application/json"}
    hl = HEADER_LENGTH
    cases = [
        ("not json", b"{not json", json_h, INFER, 400, "JSON"),
        ("empty body", b"", json_h, INFER, 400, "JSON"),
        ("json array", b"[1, 2]", json_h, INFER, 400, "object"),
        ("invalid utf-8", b'{"inputs": "\xff\xfe"}', json_h, INFER, 400, "JSON"),
        ("deep nesting", b"[" * 100_000 + b"]" * 100_000, json_h, INFER, 400, "nested"),
        ("no inputs", json.dumps({"parameters": {}}).encode(), json_h, INFER, 400, "inputs"),
        ("two inputs", req(tensor() + tensor()), json_h, INFER, 400, "exactly one"),
        ("wrong name", req([{**tensor()[0], "name": "x"}]), json_h, INFER, 400, "named"),
        ("unknown field", req(foo=1), json_h, INFER, 400, "foo"),
        ("unknown tensor field", req(tensor(foo=1)), json_h, INFER, 400, "foo"),
        ("id not string", req(id=5), json_h, INFER, 400, "id"),
        ("parameters not object", req(parameters=[1]), json_h, INFER, 400, "parameters"),
        ("INT32", req(tensor(datatype="INT32")), json_h, INFER, 400, "datatype"),
        ("rank 3", req(tensor(shape=[1, 8, 8])), json_h, INFER, 400, "shape"),
        ("wrong size", req(tensor(shape=[1, 1, 8, 9])), json_h, INFER, 400, "shape"),
        ("empty batch", req(tensor(shape=[0, 1, 8, 8], data=[])), json_h, INFER, 400, "shape"),
        ("batch over cap", req(tensor(shape=[9, 1, 8, 8], data=image * 9)), json_h, INFER, 400, "at most 8"),
        ("short data", req(tensor(data=image[:-1])), json_h, INFER, 400, "63 values"),
        ("strings", req(tensor(data=["a"] * 64)), json_h, INFER, 400, "numbers"),
        ("bools", req(tensor(data=[True] * 64)), json_h, INFER, 400, "numbers"),
        ("ragged", req(tensor(data=[[0.1, 0.2], [0.3]])), json_h, INFER, 400, "nested"),
        ("huge integer", req(tensor(data=[10**30] + image[1:])), json_h, INFER, 400, "numbers"),
        ("NaN", req(tensor(data=[float("nan")] + image[1:])), json_h, INFER, 400, "NaN"),
        ("Infinity", req(tensor(data=[float("inf")] + image[1:])), json_h, INFER, 400, "NaN or inf"),
        ("above 1", req(tensor(data=[1.5] + image[1:])), json_h, INFER, 400, "[0, 1]"),
        ("negative", req(tensor(data=[-0.1] + image[1:])), json_h, INFER, 400, "[0, 1]"),
        ("uint8 300", req(tensor(datatype="UINT8", data=[300] + [0] * 63)), json_h, INFER, 400, "0..255"),
        ("uint8 float", req(tensor(datatype="UINT8", data=[0.5] * 64)), json_h, INFER, 400, "integers"),
        ("unknown parameter", params(foo=1), json_h, INFER, 400, "foo"),
        ("timeout string", params(timeout="5"), json_h, INFER, 400, "timeout must be an integer"),
        ("timeout negative", params(timeout=-1), json_h, INFER, 400, "microseconds"),
        ("timeout and deadline_ms", params(timeout=5000, deadline_ms=5), json_h, INFER, 400, "give one"),
        ("priority past the levels", params(priority=10), json_h, INFER, 400, "priority must be in [0, 9]"),
        ("priority float", params(priority=1.5), json_h, INFER, 400, "priority must be an integer"),
        ("bad mode", params(mode="fast"), json_h, INFER, 400, "mode"),
        ("alpha over server's", params(alpha=0.01), json_h, INFER, 400, "alpha"),
        ("alpha string", params(alpha="0.001"), json_h, INFER, 400, "alpha"),
        ("n over cap", params(mode="certify", n=2001), json_h, INFER, 400, "cap"),
        ("n zero", params(mode="predict", n=0), json_h, INFER, 400, "n must"),
        ("n bool", params(mode="predict", n=True), json_h, INFER, 400, "integer"),
        ("n0 in predict", params(mode="predict", n0=5), json_h, INFER, 400, "n0"),
        ("radius negative", params(radius=-0.5), json_h, INFER, 400, "radius"),
        ("radius unreachable", params(radius=10.0), json_h, INFER, 400, "radius"),
        ("deadline negative", params(deadline_ms=-1), json_h, INFER, 400, "deadline_ms"),
        ("client seed", params(seed=1), json_h, INFER, 400, "allow-client-seed"),
        ("draws over queued cap", req(tensor(shape=[3, 1, 8, 8], data=image * 3),
                                      parameters={"mode": "certify", "n": 2000}), json_h, INFER, 400, "queued draws"),
        ("unknown output", req(outputs=[{"name": "logits"}]), json_h, INFER, 400, "logits"),
        ("output of another mode", req(outputs=[{"name": "certified"}], parameters={"mode": "predict"}), json_h,
         INFER, 400, "certified"),
        ("header length not a number", binary_header + raw, {hl: "abc"}, INFER, 400, "Inference-Header"),
        ("header length past the body", binary_header + raw, {hl: "999999"}, INFER, 400, "Inference-Header"),
        ("binary size mismatch", binary_header + raw[:-4], {hl: str(len(binary_header))}, INFER, 400, "binary"),
        ("trailing bytes", binary_header + raw + b"xx", {hl: str(len(binary_header))}, INFER, 400, "bytes"),
        ("binary without header", binary_header + raw, {}, INFER, 400, "JSON"),
        ("data and binary", req(tensor(parameters={"binary_data_size": 256})), json_h, INFER, 400, "both"),
        ("body over limit", b"x" * 400_000, json_h, INFER, 413, "limit"),
        ("unknown model", req(), json_h, "/v2/models/cifar10/infer", 404, "cifar10"),
        ("unknown version", req(), json_h, "/v2/models/digits/versions/7/infer", 404, "version"),
        ("unknown path", req(), json_h, "/v2/models/digits/explain", 404, "no route"),
        ("job deadline", params(deadline_ms=100), json_h, "/v1/jobs", 400, "deadline_ms"),
        ("job timeout", params(timeout=100), json_h, "/v1/jobs", 400, "jobs take no timeout"),
        ("unknown encoding", req(), {**json_h, "content-encoding": "br"}, INFER, 415, "Content-Encoding"),
        ("gzip that is not", req(), {**json_h, "content-encoding": "gzip"}, INFER, 400, "gzip"),
        ("job unknown model", req(model="cifar10"), json_h, "/v1/jobs", 404, "cifar10"),
    ]
    return cases


def _settled(server, timeout: float = 30.0) -> float:
    """The in-flight gauge once earlier tests' requests (cancelled ones included) have left the engine."""
    import time

    deadline = time.monotonic() + timeout
    value = server.metric("densepure_images_in_flight")
    while value and time.monotonic() < deadline:
        time.sleep(0.2)
        value = server.metric("densepure_images_in_flight")
    return value


def test_fuzzed_bad_requests_are_4xx_json_and_the_server_stays_up(server, digits):
    image = digits[0][0].reshape(-1).tolist()
    before = _settled(server)
    for name, body, headers, path, status, word in _bad_requests(image):
        response = server.http.post(path, content=body, headers=headers)
        assert response.status_code == status, (name, response.status_code, response.text[:300])
        error = response.json()["error"]
        assert isinstance(error, str) and word in error, (name, error)
        assert "Traceback" not in response.text and "File \"" not in response.text, name
    assert server.http.get(INFER).status_code == 405 and "error" in server.http.get(INFER).json()
    assert server.http.get("/v2/health/ready").status_code == 200
    assert _settled(server) == before == 0  # no bad request ever reached the engine
    assert server.metric("densepure_requests_total", 'endpoint="infer",outcome="server_error"') == 0
    with Client(server.url) as client:  # and it still answers
        assert client.infer(digits[0][0], mode="predict", n=10).draws.tolist() == [10]


def test_a_deadline_cancels_the_work(server, digits):
    start = time.monotonic()
    response = server.http.post(INFER, json=infer_json(digits[0][:2], mode="certify", n=2000, deadline_ms=300))
    assert response.status_code == 504 and "deadline_ms=300" in response.json()["error"]
    assert time.monotonic() - start < 10
    server.wait_metric("densepure_images_in_flight", 0)


def test_a_client_that_disconnects_frees_its_slots(server, digits):
    before = server.metric("densepure_requests_total", 'endpoint="infer",outcome="disconnected"')
    body = json.dumps(infer_json(digits[0][:2], mode="certify", n=2000)).encode()
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as sock:
        sock.sendall(b"POST " + INFER.encode() + b" HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                     b"Content-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body)
        deadline = time.monotonic() + 20
        while server.metric("densepure_images_in_flight") < 1:  # admitted into the engine
            assert time.monotonic() < deadline
            time.sleep(0.05)
    server.wait_metric("densepure_requests_total", before + 1, 'endpoint="infer",outcome="disconnected"')
    server.wait_metric("densepure_images_in_flight", 0)


def test_backpressure_is_503_with_retry_after(server, digits):
    with Client(server.url) as client:
        job = client.submit_job(digits[0][4], mode="certify", n=2000)  # 2020 queued draws of the cap's 5000
        try:
            with pytest.raises(ServerError) as info:
                client.infer(digits[0][:2], mode="certify", n=2000)  # 4040 more
            assert info.value.status == 503 and info.value.retry_after >= 1 and "draws queued" in info.value.message
        finally:
            assert client.cancel_job(job)["status"] == "cancelled"
        with pytest.raises(ServerError) as info:
            client.job(job)
        assert info.value.status == 404
        assert client.infer(digits[0][:2], mode="predict", n=10).draws.tolist() == [10, 10]
    server.wait_metric("densepure_images_in_flight", 0)


def test_jobs_lifecycle(server, digits):
    images = digits[0][[5, 6]]
    response = server.http.post("/v1/jobs", json={**infer_json(images, mode="certify", n0=10, n=60),
                                                  "model": "digits", "outputs": [{"name": "label"},
                                                                                 {"name": "counts"}]})
    assert response.status_code == 202
    job = response.json()
    assert response.headers["location"] == f"/v1/jobs/{job['id']}" and job["status"] in ("queued", "running")
    assert len(job["id"]) >= 20  # unguessable: the id is the only key to the result
    with Client(server.url) as client:
        result = client.wait_job(job["id"], poll_s=0.1, timeout=120)
        assert result.counts.sum(axis=2).tolist() == [[10, 60], [10, 60]] and result.labels.shape == (2,)
        with pytest.raises(ServerError) as info:  # handed over once
            client.job(job["id"])
        assert info.value.status == 404
        with pytest.raises(ServerError) as info:
            client.cancel_job("nope")
        assert info.value.status == 404


def test_metrics_docs_and_access_log(server):
    text = server.http.get("/metrics").text
    for name in ("densepure_requests_total", "densepure_request_duration_seconds_bucket",
                 "densepure_queue_wait_seconds_bucket", "densepure_draws_total", "densepure_denoiser_rows_total",
                 "densepure_classifier_rows_total", "densepure_batch_rows_bucket", "densepure_draws_per_request_bucket",
                 "densepure_images_in_flight", "densepure_build_info"):
        assert f"\n{name}" in text, name
    assert server.metric("densepure_draws_total") > 0 and server.metric("densepure_denoiser_rows_total") > 0
    assert 'densepure_requests_total{endpoint="infer",outcome="success"}' in text
    with Client(server.url) as client:  # the client's parsed samples are the text's
        samples = client.metrics()
    rows = server.metric("densepure_batch_rows_count", 'model="denoiser"')
    assert rows > 0 and samples['densepure_batch_rows_count{device="cpu",model="denoiser"}'] >= rows
    assert samples['densepure_denoiser_rows_total{device="cpu"}'] >= server.metric("densepure_denoiser_rows_total") > 0
    assert samples['densepure_device_up{device="cpu"}'] == 1 and 'densepure_queued_draws{device="cpu"}' in samples
    assert samples['densepure_requests_total{endpoint="infer",outcome="success"}'] >= 1
    assert server.http.get("/docs").status_code == 200
    schema = server.http.get("/openapi.json").json()
    assert "/v2/models/{name}/infer" in schema["paths"] and "InferenceRequest" in schema["components"]["schemas"]
    lines = [json.loads(line) for line in server.log().splitlines() if line.startswith("{")]
    infer = [line for line in lines if line["endpoint"] == "infer" and line["status"] == 200]
    assert infer and {"request_id", "client", "duration_s", "mode", "images", "draws"} <= set(infer[0])


@pytest.mark.slow  # it waits for the idle timeout
def test_an_idle_server_sleeps(server):
    """The engine loop waits on a condition when there is no work: an idle server uses almost no CPU."""
    stat = Path(f"/proc/{server.proc.pid}/stat")
    if not stat.exists():
        pytest.skip("needs /proc")
    server.wait_metric("densepure_images_in_flight", 0)

    def cpu_seconds() -> float:
        fields = stat.read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime + stime

    before = cpu_seconds()
    time.sleep(2.0)
    assert cpu_seconds() - before < 0.2


def test_docs_work_offline_and_the_schema_says_the_real_errors(server):
    import re

    page = server.http.get("/docs")
    assert page.status_code == 200
    urls = re.findall(r'(?:src|href)="([^"]*)"', page.text) + re.findall(r"url: '([^']*)'", page.text)
    assert sorted(urls) == ["/docs/swagger-ui-bundle.js", "/docs/swagger-ui.css", "/openapi.json", "data:,"]
    assert "http://" not in page.text and "https://" not in page.text  # nothing from a CDN
    for name, kind, marker in (("swagger-ui-bundle.js", "javascript", b"SwaggerUIBundle"),
                               ("swagger-ui.css", "css", b".swagger-ui")):
        zipped = server.http.get(f"/docs/{name}", headers={"accept-encoding": "gzip"})
        plain = server.http.get(f"/docs/{name}", headers={"accept-encoding": "identity"})
        assert zipped.headers["content-encoding"] == "gzip" and "content-encoding" not in plain.headers
        assert kind in plain.headers["content-type"] and marker in plain.content
        assert zipped.content == plain.content  # httpx inflates what the server sent compressed
        assert int(zipped.headers["content-length"]) < len(plain.content) / 3  # sent as shipped: compressed
    assert server.http.get("/docs/other.js").status_code == 404
    assert server.http.get("/redoc").status_code == 404  # it needs a CDN: not offered
    schema = server.http.get("/openapi.json").json()
    text = json.dumps(schema)
    assert '"422"' not in text and "HTTPValidationError" not in text
    for path, operations in schema["paths"].items():
        for operation in operations.values():
            assert all(p["in"] == "path" for p in operation.get("parameters", [])), (path, operation["parameters"])
    infer = schema["paths"]["/v2/models/{name}/infer"]["post"]
    for status in ("400", "404", "408", "413", "415", "503", "504"):
        assert infer["responses"][status]["content"]["application/json"]["schema"] == {
            "$ref": "#/components/schemas/ErrorResponse"}
    assert {"/v2/models/{name}/config", "/v2/models/{name}/stats", "/v2/repository/index"} <= set(schema["paths"])
