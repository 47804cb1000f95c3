"""``densepure bench serve`` against a stub Open Inference Protocol v2 server on 127.0.0.1: an answer with an
error is reported as an error, never as a latency or in a rate."""

from __future__ import annotations

import itertools
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from densepure.bench.oip import parse_prometheus
from densepure.cli import main

META = {"name": "digits", "platform": "stub", "inputs": [{"name": "pixels", "datatype": "UINT8",
                                                           "shape": [-1, 1, 8, 8]}]}


class Stub:
    """A v2 server whose n-th infer request (from 0) fails when ``fails(n)``; records the bodies it got."""

    def __init__(self, fails, metrics: bool = False):
        self.count, self.bodies, self.lock, self.answered = itertools.count(), [], threading.Lock(), 0
        stub = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def _send(self, status: int, obj: dict) -> None:
                data = json.dumps(obj).encode()
                self.send_response(status)
                self.send_header("content-type", "application/json")
                self.send_header("content-length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_GET(self):
                if self.path == "/v2/models/digits":
                    return self._send(200, META)
                if self.path == "/metrics" and metrics:
                    data = stub.metrics_text().encode()
                    self.send_response(200)
                    self.send_header("content-type", "text/plain; version=0.0.4")
                    self.send_header("content-length", str(len(data)))
                    self.end_headers()
                    return self.wfile.write(data)
                self._send(404, {"error": "no such route"})

            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["content-length"])))
                with stub.lock:
                    n = next(stub.count)
                    stub.bodies.append(body)
                if fails(n):
                    return self._send(503, {"error": "queue full"})
                with stub.lock:
                    stub.answered += 1
                self._send(200, {"model_name": "digits", "outputs": [
                    {"name": "label", "datatype": "INT64", "shape": [1], "data": [3]},
                    {"name": "draws", "datatype": "INT64", "shape": [1], "data": [42]}]})

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def metrics_text(self) -> str:
        """densepure's per-device samples: each answer's 42 draws split 30 + 12 over two engine loops, 70 + 28
        UNet rows in one batch on each, and 5 classifier batches (not UNet calls)."""
        with self.lock:
            n = self.answered
        lines = ["# TYPE densepure_draws_total counter"]
        for device, draws, rows in (("cpu", 30, 70), ("cpu#1", 12, 28)):
            lines += [f'densepure_draws_total{{device="{device}"}} {draws * n}.0',
                      f'densepure_denoiser_rows_total{{device="{device}"}} {rows * n}.0',
                      f'densepure_batch_rows_count{{device="{device}",model="denoiser"}} {n}.0',
                      f'densepure_batch_rows_count{{device="{device}",model="classifier"}} {5 * n}.0']
        return "\n".join(lines) + "\n"

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.server.shutdown()
        self.server.server_close()


def _report(out):
    report = json.loads((out / "report.json").read_text())
    return report, {k: m["value"] for k, m in report["metrics"].items()}


def test_errors_are_counted_not_timed(tmp_path):
    pytest.importorskip("httpx")
    out = tmp_path / "r"
    with Stub(fails=lambda n: n % 2 == 1) as stub:  # request 0 (the warm-up) succeeds, then every other one fails
        code = main(["bench", "serve", stub.url, "--concurrency", "1", "2", "--requests", "4", "4",
                     "--param", "mode=certify", "--param", "n=100", "--output", str(out)])
    assert code == 0
    report, m = _report(out)
    assert m["errors"] == 4 and m["c1.errors"] == 2 and m["c2.errors"] == 2
    assert m["c1.draws_per_request"] == 42 and m["c1.requests_per_s"] > 0
    rows = report["series"]["requests"]["rows"]  # clients, latency_s, draws, status
    assert sorted(r[3] for r in rows) == [200] * 4 + [503] * 4
    assert all((r[1] is None) == (r[3] == 503) for r in rows)  # an error has no latency
    sweep = report["series"]["concurrency"]["rows"]
    assert [(r[0], r[1], r[2]) for r in sweep] == [(1, 4, 2), (2, 4, 2)]
    assert any("503" in note and "queue full" in note for note in report["notes"])
    body = stub.bodies[-1]  # the model's input name and datatype, the parameters as JSON numbers
    assert body["inputs"][0]["name"] == "pixels" and body["inputs"][0]["datatype"] == "UINT8"
    assert body["inputs"][0]["shape"] == [1, 1, 8, 8] and max(body["inputs"][0]["data"]) <= 255
    assert body["parameters"] == {"mode": "certify", "n": 100}
    assert (out / "throughput_vs_concurrency.png").exists()


def test_a_server_that_only_errs_has_no_latency(tmp_path):
    pytest.importorskip("httpx")
    out = tmp_path / "r"
    with Stub(fails=lambda n: True) as stub:
        assert main(["bench", "serve", stub.url, "--concurrency", "2", "--requests", "4", "--output", str(out)]) == 0
    report, m = _report(out)
    assert m["errors"] == 4 and m["c2.requests_per_s"] == 0
    assert not [k for k in m if "p50" in k or "p99" in k or "draws" in k]
    assert all(r[1] is None for r in report["series"]["requests"]["rows"])


def test_loadgen_answers_with_errors_are_flagged(tmp_path):
    pytest.importorskip("httpx")
    pytest.importorskip("mlperf_loadgen", reason="the bench extra (mlcommons-loadgen) is not installed")
    out = tmp_path / "r"
    with Stub(fails=lambda n: n > 0) as stub:
        assert main(["bench", "serve", stub.url, "--scenario", "server", "--target-qps", "20", "--min-duration", "0.5",
                     "--min-queries", "5", "--output", str(out)]) == 0
    report, m = _report(out)
    (run,) = report["loadgen"]
    assert run["checks"]["answered_without_error"] is False
    assert m["server_20qps.errors"] >= 5 and m["server_20qps.answered"] == 0
    assert not [k for k in m if k.startswith("server_20qps.p")]  # no latency from errors
    assert all(r[1] is None and r[3] == 1 for r in report["series"]["queries"]["rows"])


def test_an_unknown_model_is_one_line(capsys):
    pytest.importorskip("httpx")
    with Stub(fails=lambda n: False) as stub:
        assert main(["bench", "serve", stub.url, "--model", "cifar10"]) == 2
    assert "has no model 'cifar10'" in capsys.readouterr().err


def test_prometheus_samples():
    text = '# HELP x\n# TYPE x counter\nx_total 3.0\ny{model="denoiser"} 12\nbad line\n'
    assert parse_prometheus(text) == {"x_total": 3.0, 'y{model="denoiser"}': 12.0}


def test_the_servers_metrics_are_summed_over_its_devices(tmp_path):
    """densepure serve labels its per-engine metrics with ``device``: a server-wide figure sums every label set."""
    pytest.importorskip("httpx")
    out = tmp_path / "r"
    with Stub(fails=lambda n: False, metrics=True) as stub:
        assert main(["bench", "serve", stub.url, "--concurrency", "2", "--requests", "4", "--output", str(out)]) == 0
    report, m = _report(out)
    assert m["c2.server_unet_rows_per_call"] == pytest.approx((70 + 28) / 2)  # UNet batches only, both devices
    assert m["c2.server_draws_per_s"] == pytest.approx(m["c2.draws_per_s"])  # 30 + 12 = the 42 the answers say
    row = report["series"]["concurrency"]["rows"][0]
    assert row[-1] == pytest.approx(49.0)


def test_metric_totals():
    from densepure.bench.sweep import metric_total

    samples = parse_prometheus('a_total{device="cpu"} 1\na_total{device="cuda:0"} 2\n'
                               'b_count{device="cpu",model="denoiser"} 3\nb_count{device="cpu",model="classifier"} 4\n'
                               'a_total_other 9\n')
    assert metric_total(samples, "a_total") == 3.0
    assert metric_total(samples, "b_count", model="denoiser") == 3.0 and metric_total(samples, "b_count") == 7.0
    assert metric_total(samples, "missing") is None and metric_total(None, "a_total") is None
