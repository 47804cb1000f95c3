"""Prometheus metrics of a server, in base units (seconds, rows, draws), on a registry of its own.

* ``densepure_requests_total{endpoint,outcome}`` and ``densepure_request_duration_seconds{endpoint}``:
  every HTTP request (the access-log middleware);
* ``densepure_draws_per_request``: base-classifier draws of a decided request;
* ``densepure_split_requests_total``: requests whose draws were split across devices;
* per engine loop, labelled ``device`` (the device's name; a repeated name gets ``#k``, e.g. ``cpu#1``):
  ``densepure_queue_wait_seconds`` (acceptance to the first image entering that device's engine),
  ``densepure_draws_total`` (draws of decided images, or of a split request's shares),
  ``densepure_denoiser_rows_total``, ``densepure_classifier_rows_total``, ``densepure_batch_rows{model}``
  (model rows, and rows per batch: one UNet and one classifier batch per engine step),
  ``densepure_images_in_flight`` (images in engine slots), ``densepure_queued_draws`` (worst-case draws
  accepted and undecided: what requests are routed by) and ``densepure_device_up`` (1 serving, 0 loading,
  failed or stopped);
* ``densepure_build_info``: versions and setup;
* ``densepure_http_refused_total{reason}``: connections the HTTP layer answered itself and closed
  (``connection_limit``, ``read_timeout``, ``malformed``: :mod:`densepure.serve.http11`).

A server-wide total is the sum over ``device`` (PromQL ``sum without (device) (...)``).
"""

from __future__ import annotations

import platform
from collections.abc import Callable

_LATENCY = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800)
_ROWS = tuple(float(2**k) for k in range(13))
_DRAWS = tuple(float(d) for d in (10, 30, 100, 300, 1_000, 3_000, 10_000, 30_000, 100_000, 300_000, 1_000_000))


class ServeMetrics:
    """The metrics of one server; :meth:`device` gives an engine loop its labelled view, :meth:`render` is the
    ``/metrics`` body and its content type."""

    def __init__(self, build: dict[str, str]):
        from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

        self.registry = r = CollectorRegistry(auto_describe=True)
        self.requests = Counter("densepure_requests", "HTTP requests by endpoint and outcome",
                                ["endpoint", "outcome"], registry=r)
        self.duration = Histogram("densepure_request_duration_seconds", "HTTP request duration",
                                  ["endpoint"], buckets=_LATENCY, registry=r)
        self.draws_per_request = Histogram("densepure_draws_per_request", "draws of a decided request (all images)",
                                           buckets=_DRAWS, registry=r)
        self.split = Counter("densepure_split_requests", "requests whose draws were split across devices", registry=r)
        self.refused = Counter("densepure_http_refused", "connections the HTTP layer answered and closed",
                               ["reason"], registry=r)
        self.queue_wait_s = Histogram("densepure_queue_wait_seconds",
                                      "time from acceptance to the first image entering the engine",
                                      ["device"], buckets=_LATENCY, registry=r)
        self.draws = Counter("densepure_draws", "base-classifier draws of decided images", ["device"], registry=r)
        self.denoiser_rows = Counter("densepure_denoiser_rows", "UNet rows (chain steps) run", ["device"], registry=r)
        self.classifier_rows = Counter("densepure_classifier_rows", "classifier rows run", ["device"], registry=r)
        self.batch_rows = Histogram("densepure_batch_rows", "rows per model batch", ["device", "model"],
                                    buckets=_ROWS, registry=r)
        self.images = Gauge("densepure_images_in_flight", "images in engine slots", ["device"], registry=r)
        self.queued = Gauge("densepure_queued_draws", "worst-case draws of accepted, undecided work", ["device"],
                            registry=r)
        self.up = Gauge("densepure_device_up", "1 while the device's engine loop serves", ["device"], registry=r)
        self._devices: dict[str, DeviceMetrics] = {}
        info = Gauge("densepure_build_info", "densepure version and the served configuration",
                     sorted(build) + ["python"], registry=r)
        info.labels(**build, python=platform.python_version()).set(1)

    def device(self, name: str, queued: Callable[[], float] | None = None,
               up: Callable[[], float] | None = None) -> DeviceMetrics:
        """The metrics of the engine loop on ``name``; ``queued`` and ``up`` are read at each scrape."""
        view = self._devices.setdefault(name, DeviceMetrics(self, name))
        if queued is not None:
            self.queued.labels(name).set_function(queued)
        if up is not None:
            self.up.labels(name).set_function(up)
        return view

    @property
    def steps(self) -> int:
        """Engine steps of every device (Triton's execution_count)."""
        return sum(view.steps for view in self._devices.values())

    # called by the access middleware (event loop) and the engine loops (their threads); the client is thread-safe
    def request(self, endpoint: str, outcome: str, seconds: float) -> None:
        self.requests.labels(endpoint, outcome).inc()
        self.duration.labels(endpoint).observe(seconds)

    def http_refused(self, reason: str) -> None:
        self.refused.labels(reason).inc()

    def work_done(self, draws: int) -> None:
        self.draws_per_request.observe(draws)

    def render(self) -> tuple[bytes, str]:
        from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

        return generate_latest(self.registry), CONTENT_TYPE_LATEST


class DeviceMetrics:
    """One engine loop's view of :class:`ServeMetrics`: the same calls, labelled with its device."""

    def __init__(self, metrics: ServeMetrics, name: str):
        self.metrics, self.name = metrics, name
        self.steps = 0  # written by the engine loop only
        self._draws = metrics.draws.labels(name)
        self._rows = {"denoiser": metrics.denoiser_rows.labels(name), "classifier": metrics.classifier_rows.labels(name)}
        self._batch = {model: metrics.batch_rows.labels(name, model) for model in self._rows}
        self._images = metrics.images.labels(name)
        self._queue_wait = metrics.queue_wait_s.labels(name)

    def queue_wait(self, seconds: float) -> None:
        self._queue_wait.observe(seconds)

    def step(self, unet_rows: int, classifier_rows: int) -> None:
        self.steps += 1
        for model, rows in (("denoiser", unet_rows), ("classifier", classifier_rows)):
            if rows > 0:
                self._rows[model].inc(rows)
                self._batch[model].observe(rows)

    def image_done(self, draws: int) -> None:
        self._draws.inc(draws)

    def work_done(self, draws: int) -> None:
        self.metrics.work_done(draws)

    def in_flight(self, images: int) -> None:
        self._images.set(images)
