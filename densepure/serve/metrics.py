"""Prometheus metrics of a server, in base units (seconds, rows, draws), on a registry of its own.

* ``densepure_requests_total{endpoint,outcome}`` and ``densepure_request_duration_seconds{endpoint}``:
  every HTTP request (the access-log middleware);
* ``densepure_queue_wait_seconds``: from acceptance to the first image entering the engine;
* ``densepure_draws_total``, ``densepure_draws_per_request``: base-classifier draws of decided images,
  and per decided request;
* ``densepure_denoiser_rows_total``, ``densepure_classifier_rows_total``, ``densepure_batch_rows{model}``:
  model rows, and rows per batch (one UNet and one classifier batch per engine step);
* ``densepure_images_in_flight``: images in engine slots; ``densepure_build_info``: versions and setup;
* ``densepure_http_refused_total{reason}``: connections the HTTP layer answered itself and closed
  (``connection_limit``, ``read_timeout``, ``malformed``: :mod:`densepure.serve.http11`).
"""

from __future__ import annotations

import platform

_LATENCY = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800)
_ROWS = tuple(float(2**k) for k in range(13))
_DRAWS = tuple(float(d) for d in (10, 30, 100, 300, 1_000, 3_000, 10_000, 30_000, 100_000, 300_000, 1_000_000))


class ServeMetrics:
    """The metrics of one server; :meth:`render` is the ``/metrics`` body and its content type."""

    def __init__(self, build: dict[str, str]):
        from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

        self.registry = r = CollectorRegistry(auto_describe=True)
        self.requests = Counter("densepure_requests", "HTTP requests by endpoint and outcome",
                                ["endpoint", "outcome"], registry=r)
        self.duration = Histogram("densepure_request_duration_seconds", "HTTP request duration",
                                  ["endpoint"], buckets=_LATENCY, registry=r)
        self.queue_wait_s = Histogram("densepure_queue_wait_seconds",
                                      "time from acceptance to the first image entering the engine",
                                      buckets=_LATENCY, registry=r)
        self.draws = Counter("densepure_draws", "base-classifier draws of decided images", registry=r)
        self.denoiser_rows = Counter("densepure_denoiser_rows", "UNet rows (chain steps) run", registry=r)
        self.classifier_rows = Counter("densepure_classifier_rows", "classifier rows run", registry=r)
        self.batch_rows = Histogram("densepure_batch_rows", "rows per model batch", ["model"], buckets=_ROWS,
                                    registry=r)
        self.draws_per_request = Histogram("densepure_draws_per_request", "draws of a decided request (all images)",
                                           buckets=_DRAWS, registry=r)
        self.images = Gauge("densepure_images_in_flight", "images in engine slots", registry=r)
        self.refused = Counter("densepure_http_refused", "connections the HTTP layer answered and closed",
                               ["reason"], registry=r)
        self.steps = 0  # engine steps (Triton's execution_count); written by the engine loop only
        info = Gauge("densepure_build_info", "densepure version and the served configuration",
                     sorted(build) + ["python"], registry=r)
        info.labels(**build, python=platform.python_version()).set(1)

    # called by the access middleware (event loop) and the engine loop (its thread); the client is thread-safe
    def request(self, endpoint: str, outcome: str, seconds: float) -> None:
        self.requests.labels(endpoint, outcome).inc()
        self.duration.labels(endpoint).observe(seconds)

    def queue_wait(self, seconds: float) -> None:
        self.queue_wait_s.observe(seconds)

    def http_refused(self, reason: str) -> None:
        self.refused.labels(reason).inc()

    def step(self, unet_rows: int, classifier_rows: int) -> None:
        self.steps += 1
        for model, rows, total in (("denoiser", unet_rows, self.denoiser_rows),
                                   ("classifier", classifier_rows, self.classifier_rows)):
            if rows > 0:
                total.inc(rows)
                self.batch_rows.labels(model).observe(rows)

    def image_done(self, draws: int) -> None:
        self.draws.inc(draws)

    def work_done(self, draws: int) -> None:
        self.draws_per_request.observe(draws)

    def in_flight(self, images: int) -> None:
        self.images.set(images)

    def render(self) -> tuple[bytes, str]:
        from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

        return generate_latest(self.registry), CONTENT_TYPE_LATEST
