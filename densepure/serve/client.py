"""A small Python client of ``densepure serve`` (Open Inference Protocol v2 and the jobs API), over httpx.

    from densepure.serve.client import Client
    with Client("http://127.0.0.1:8000") as client:
        result = client.infer(image)                      # certify_radius at r = sigma
        result = client.infer(images, mode="certify", n=10_000)
        job = client.submit_job(image, mode="certify", n=100_000)
        result = client.wait_job(job)
        rows = client.metrics()["densepure_denoiser_rows_total"]

Images are (C, H, W) or (B, C, H, W): float in [0, 1] (sent as FP32) or uint8 (sent as UINT8).
An error response raises :class:`ServerError` with the status, the server's message and Retry-After.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np

from densepure.errors import DensePureError
from densepure.serve import require_extra
from densepure.serve.protocol import HEADER_LENGTH, decode_response, encode_request


class ServerError(DensePureError):
    """An error response: ``status``, the server's message, ``retry_after`` seconds (503) or None."""

    def __init__(self, status: int, message: str, retry_after: float | None = None):
        super().__init__(f"HTTP {status}: {message}")
        self.status, self.message, self.retry_after = status, message, retry_after


@dataclass(frozen=True)
class InferResult:
    """One response: per image ``labels`` (-1 abstains), ``draws``, and when the mode has them ``radii``,
    ``certified`` and ``counts`` ((B, 2, classes): selection, estimation); ``parameters`` echoes the setup."""

    labels: np.ndarray
    draws: np.ndarray | None
    radii: np.ndarray | None
    certified: np.ndarray | None
    counts: np.ndarray | None
    parameters: dict
    id: str | None

    @classmethod
    def from_response(cls, obj: dict, tensors: dict[str, np.ndarray]) -> InferResult:
        return cls(tensors["label"], tensors.get("draws"), tensors.get("radius"), tensors.get("certified"),
                   tensors.get("counts"), obj.get("parameters", {}), obj.get("id"))


def _batch(images) -> np.ndarray:
    x = np.asarray(images)
    return x[None] if x.ndim == 3 else x


class Client:
    """``url``: the server's base URL; ``model``: the served model's name (the preset's)."""

    def __init__(self, url: str = "http://127.0.0.1:8000", model: str = "digits", timeout: float = 600.0):
        require_extra(("httpx",))
        import httpx

        self._http = httpx.Client(base_url=url, timeout=timeout)
        self.model = model

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._http.close()

    def _check(self, response):
        if response.status_code >= 400:
            try:
                message = response.json().get("error", response.text)
            except ValueError:
                message = response.text
            retry = response.headers.get("retry-after")
            raise ServerError(response.status_code, message, float(retry) if retry else None)
        return response

    # -- health and metadata ------------------------------------------------------------------
    def live(self) -> bool:
        return self._http.get("/v2/health/live").status_code == 200

    def ready(self) -> bool:
        return self._http.get("/v2/health/ready").status_code == 200

    def wait_ready(self, timeout: float = 300.0, poll_s: float = 0.2) -> None:
        """Block until the server is ready (models loaded and warm)."""
        import httpx

        deadline = time.monotonic() + timeout
        while True:
            try:
                if self.ready():
                    return
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                raise ServerError(503, f"the server was not ready within {timeout:g} s")
            time.sleep(poll_s)

    def server_metadata(self) -> dict:
        return self._check(self._http.get("/v2")).json()

    def model_metadata(self) -> dict:
        return self._check(self._http.get(f"/v2/models/{self.model}")).json()

    def metrics(self) -> dict[str, float]:
        """Every sample of ``/metrics``, keyed as Prometheus writes it: ``name`` or ``name{label="value",...}``
        (labels sorted), e.g. ``densepure_batch_rows_sum{model="denoiser"}``."""
        require_extra(("prometheus_client",))
        from prometheus_client.parser import text_string_to_metric_families

        text = self._check(self._http.get("/metrics")).text
        out = {}
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                labels = ",".join(f'{k}="{v}"' for k, v in sorted(sample.labels.items()))
                out[sample.name + (f"{{{labels}}}" if labels else "")] = float(sample.value)
        return out

    # -- inference ------------------------------------------------------------------------------
    def infer(self, images, mode: str = "certify_radius", binary: bool = False, outputs: list[str] | None = None,
              request_id: str | None = None, **parameters) -> InferResult:
        """Certify or predict ``images`` (parameters: alpha, n0, n, radius, deadline_ms, seed, noise_id)."""
        body, headers = encode_request(_batch(images), {"mode": mode, **parameters}, request_id, binary, outputs)
        response = self._check(self._http.post(f"/v2/models/{self.model}/infer", content=body, headers=headers))
        obj, tensors = decode_response(response.content, response.headers.get(HEADER_LENGTH))
        return InferResult.from_response(obj, tensors)

    # -- jobs -----------------------------------------------------------------------------------
    def submit_job(self, images, mode: str = "certify", outputs: list[str] | None = None, **parameters) -> str:
        """Start a long certification; returns the job id (the only key to its result)."""
        body, headers = encode_request(_batch(images), {"mode": mode, **parameters}, None, False, outputs)
        response = self._check(self._http.post("/v1/jobs", content=body, headers=headers))
        return response.json()["id"]

    def job(self, job_id: str) -> dict:
        """The job's state (a final one is handed over once, then forgotten by the server)."""
        return self._check(self._http.get(f"/v1/jobs/{job_id}")).json()

    def wait_job(self, job_id: str, poll_s: float = 0.5, timeout: float | None = None) -> InferResult:
        """Poll until the job ends; its result, or :class:`ServerError` if it failed or was cancelled."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            state = self.job(job_id)
            if state["status"] == "succeeded":
                obj = state["result"]
                return InferResult.from_response(obj, decode_response(_json_bytes(obj), None)[1])
            if state["status"] in ("failed", "cancelled"):
                raise ServerError(500 if state["status"] == "failed" else 409, state.get("error", state["status"]))
            if deadline is not None and time.monotonic() > deadline:
                raise ServerError(504, f"job {job_id} still {state['status']} after {timeout:g} s")
            time.sleep(poll_s)

    def cancel_job(self, job_id: str) -> dict:
        return self._check(self._http.delete(f"/v1/jobs/{job_id}")).json()


def _json_bytes(obj: dict) -> bytes:
    import json

    return json.dumps(obj).encode()
