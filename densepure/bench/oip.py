"""A minimal Open Inference Protocol v2 client for ``bench serve``: any v2 server (densepure's own, KServe,
Triton), JSON tensors, one image per request, errors returned as values (a benchmark counts them).

The model's first input names the tensor and its datatype (``GET /v2/models/NAME``); images in [0, 1]
go as FP32, or scaled to 0..255 for a UINT8 input. An answer's ``draws`` output, when the server gives one
(densepure's does), is the draws the certificate took. ``/metrics`` in Prometheus' text format is read
when the server has it (None otherwise).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass

import numpy as np

from densepure.errors import ConfigError, install_hint

_SAMPLE = re.compile(r"^([A-Za-z_:][\w:]*)(\{[^}]*\})?\s+(\S+)")


def require_httpx():
    try:
        import httpx
    except ImportError as exc:
        raise ConfigError("densepure bench serve needs httpx: pip install httpx (or the serve extra, "
                          f"{install_hint('serve')})") from exc
    return httpx


@dataclass(frozen=True)
class Answer:
    """One request's outcome: HTTP ``status`` (0: no response), ``draws`` (when the server says), ``error``
    (None for a 2xx answer)."""

    status: int
    draws: int | None
    error: str | None

    @property
    def ok(self) -> bool:
        return self.error is None


def parse_prometheus(text: str) -> dict[str, float]:
    """Samples of a Prometheus text exposition: ``{name or name{labels}: value}`` (comments skipped)."""
    out = {}
    for line in text.splitlines():
        hit = _SAMPLE.match(line.strip())
        if hit and not line.startswith("#"):
            try:
                out[hit.group(1) + (hit.group(2) or "")] = float(hit.group(3))
            except ValueError:
                continue
    return out


class OipClient:
    """``url``: the server's base URL; ``model``: the model name; ``timeout``: seconds per request."""

    def __init__(self, url: str, model: str, timeout: float = 600.0):
        httpx = require_httpx()
        self.url, self.model = url.rstrip("/"), model
        self._http = httpx.Client(base_url=self.url, timeout=timeout)
        self._transport_error = httpx.TransportError
        self.input_name, self.datatype = "image", "FP32"

    def __enter__(self) -> OipClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self._http.close()

    def metadata(self) -> dict:
        """The model's metadata; remembers its first input's name and datatype. ConfigError if unreachable."""
        try:
            response = self._http.get(f"/v2/models/{self.model}")
        except self._transport_error as exc:
            raise ConfigError(f"cannot reach {self.url}: {exc}") from exc
        if response.status_code != 200:
            raise ConfigError(f"{self.url} has no model {self.model!r} (GET /v2/models/{self.model}: HTTP "
                              f"{response.status_code}): name it with --model")
        meta = response.json()
        inputs = meta.get("inputs") or [{}]
        self.input_name = inputs[0].get("name", "image")
        self.datatype = inputs[0].get("datatype", "FP32")
        return meta

    def infer(self, image: np.ndarray, parameters: dict) -> Answer:
        """One image ``(C, H, W)`` in [0, 1]; never raises for a server's answer or a lost connection."""
        x = np.asarray(image, dtype=np.float32)[None]
        if self.datatype == "UINT8":
            data = np.rint(x * 255).astype(np.uint8)
        else:
            data = x
        body = {"inputs": [{"name": self.input_name, "shape": list(data.shape), "datatype": self.datatype,
                            "data": data.ravel().tolist()}]}
        if parameters:
            body["parameters"] = parameters
        try:
            response = self._http.post(f"/v2/models/{self.model}/infer", content=json.dumps(body),
                                       headers={"content-type": "application/json"})
        except self._transport_error as exc:
            return Answer(0, None, f"{type(exc).__name__}: {exc}")
        if response.status_code >= 400 or response.status_code < 200:
            return Answer(response.status_code, None, f"HTTP {response.status_code}: {response.text[:200]}")
        try:
            outputs = {o["name"]: o for o in response.json().get("outputs", [])}
        except (ValueError, AttributeError, KeyError, TypeError):
            return Answer(response.status_code, None, "the answer is not an OIP v2 JSON response")
        draws = outputs.get("draws", {}).get("data")
        return Answer(response.status_code, int(sum(draws)) if draws else None, None)

    def metrics(self) -> dict[str, float] | None:
        """``/metrics`` samples, or None when the server has none."""
        try:
            response = self._http.get("/metrics")
        except self._transport_error:
            return None
        return parse_prometheus(response.text) if response.status_code == 200 else None
