"""Open Inference Protocol v2 (KServe v2 / Triton HTTP) tensors in and out, JSON and binary.

Request (``POST /v2/models/{name}/infer``)::

    {"id": "...", "parameters": {...},
     "inputs": [{"name": "image", "datatype": "FP32" | "UINT8", "shape": [B, C, H, W], "data": [...]}],
     "outputs": [{"name": "label", "parameters": {"binary_data": true}}, ...]}

``data`` is row-major, flat or nested; FP32 values in [0, 1], UINT8 values 0..255 (divided by 255).
Binary tensor data extension: the body is the JSON header followed by the raw little-endian tensor
bytes, the header's length in the ``Inference-Header-Content-Length`` HTTP header, and each input
that is sent in binary says ``"parameters": {"binary_data_size": N}`` instead of ``data``. The
payload cannot say its byte order: FP32 data sent big-endian is refused when a value reads as NaN, inf,
outside [0, 1] (a byte-swapped 0.1 reads as -4.3e8) or a subnormal number (a byte-swapped 0.5 reads as
8.8e-44; no real pixel lies in (0, 1.2e-38)). Of the 256 values k/255 of an 8-bit image, every one but
0 is caught that way, so only an all-black image passes byte-swapped. UINT8 has no byte order. Outputs
come back in binary when an output asks ``binary_data: true`` or the request parameter
``binary_data_output`` is true (BOOL as one byte per element).

Every malformed request is a :class:`ProtocolError` naming the problem (400, or 413 for size).
Pure numpy; no web framework, so the client and the tests use the same code.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from densepure.errors import InputError

HEADER_LENGTH = "inference-header-content-length"
INPUT_NAME = "image"
DTYPES = {"BOOL": np.dtype("?"), "UINT8": np.dtype("u1"), "INT64": np.dtype("<i8"), "FP32": np.dtype("<f4")}
INPUT_DTYPES = ("FP32", "UINT8")
OUTPUTS = {"label": "INT64", "certified": "BOOL", "radius": "FP32", "draws": "INT64", "counts": "INT64"}


class ProtocolError(InputError):
    """A request the protocol cannot accept; ``status`` is its HTTP status (400 or 413)."""

    def __init__(self, message: str, status: int = 400):
        super().__init__(message)
        self.status = status


@dataclass(frozen=True)
class OutputRequest:
    name: str
    binary: bool


@dataclass(frozen=True)
class InferRequest:
    """A parsed request: ``images`` (B, C, H, W) float32 in [0, 1], finite; ``outputs`` None = the mode's default."""

    id: str | None
    images: np.ndarray
    parameters: Mapping[str, object]
    outputs: tuple[OutputRequest, ...] | None
    model: str | None = None


@dataclass(frozen=True)
class Tensor:
    """An output tensor: ``datatype`` one of :data:`DTYPES`; ``data`` a numpy array of that type."""

    name: str
    datatype: str
    data: np.ndarray


def _keys(where: str, obj: Mapping, allowed: set[str]) -> None:
    unknown = sorted(set(obj) - allowed)
    if unknown:
        raise ProtocolError(f"unknown field {unknown[0]!r} in {where}; allowed: {', '.join(sorted(allowed))}")


def _split_body(body: bytes, header_length: str | None) -> tuple[bytes, bytes]:
    if header_length is None:
        return body, b""
    try:
        length = int(header_length)
    except ValueError:
        raise ProtocolError(f"Inference-Header-Content-Length must be an integer, got {header_length!r}") from None
    if not 0 < length <= len(body):
        raise ProtocolError(f"Inference-Header-Content-Length {length} must be in [1, {len(body)}] (the body size)")
    return body[:length], body[length:]


def _load_json(header: bytes) -> dict:
    try:
        obj = json.loads(header)
    except (UnicodeDecodeError, ValueError) as exc:
        raise ProtocolError(f"the request is not valid JSON: {exc}") from None
    except RecursionError:
        raise ProtocolError("the request's JSON is nested too deeply") from None
    if not isinstance(obj, dict):
        raise ProtocolError(f"the request must be a JSON object, got {type(obj).__name__}")
    return obj


def parse_infer_request(body: bytes, header_length: str | None, image_shape: tuple[int, int, int], max_batch: int,
                        allow_model: bool = False) -> InferRequest:
    """Parse and check an inference request for images of ``image_shape`` (C, H, W), at most ``max_batch``.

    ``allow_model``: accept a top-level ``model`` field (the jobs API, whose path names no model).
    """
    header, binary = _split_body(body, header_length)
    obj = _load_json(header)
    _keys("the request", obj, {"id", "parameters", "inputs", "outputs"} | ({"model"} if allow_model else set()))
    request_id = obj.get("id")
    if request_id is not None and not isinstance(request_id, str):
        raise ProtocolError(f"id must be a string, got {type(request_id).__name__}")
    model = obj.get("model")
    if model is not None and not isinstance(model, str):
        raise ProtocolError(f"model must be a string, got {type(model).__name__}")
    parameters = obj.get("parameters", {})
    if not isinstance(parameters, dict):
        raise ProtocolError(f"parameters must be a JSON object, got {type(parameters).__name__}")
    inputs = obj.get("inputs")
    if not isinstance(inputs, list) or len(inputs) != 1 or not isinstance(inputs[0], dict):
        raise ProtocolError(f"inputs must be a list of exactly one tensor named {INPUT_NAME!r}")
    images, rest = _parse_image(inputs[0], binary, image_shape, max_batch)
    if rest:
        raise ProtocolError(f"{rest} bytes of binary data follow the inputs' binary_data_size")
    return InferRequest(request_id, images, parameters, _parse_outputs(obj.get("outputs")), model)


def _parse_shape(tensor: dict, image_shape: tuple[int, int, int], max_batch: int) -> tuple[int, ...]:
    shape = tensor.get("shape")
    want = f"[B, {', '.join(str(d) for d in image_shape)}] with 1 <= B <= {max_batch}"
    if (not isinstance(shape, list) or len(shape) != 4
            or not all(isinstance(d, int) and not isinstance(d, bool) for d in shape)):
        raise ProtocolError(f"input {INPUT_NAME} must have shape {want}, got {shape!r}")
    if tuple(shape[1:]) != tuple(image_shape) or shape[0] < 1:
        raise ProtocolError(f"input {INPUT_NAME} must have shape {want}, got {shape}")
    if shape[0] > max_batch:
        raise ProtocolError(f"a request holds at most {max_batch} images (the server's max batch), got {shape[0]}")
    return tuple(shape)


def _parse_image(tensor: dict, binary: bytes, image_shape: tuple[int, int, int],
                 max_batch: int) -> tuple[np.ndarray, int]:
    """The image batch (float32 in [0, 1]) and the count of binary bytes left over."""
    _keys(f"input {INPUT_NAME}", tensor, {"name", "shape", "datatype", "data", "parameters"})
    if tensor.get("name") != INPUT_NAME:
        raise ProtocolError(f"the input must be named {INPUT_NAME!r}, got {tensor.get('name')!r}")
    datatype = tensor.get("datatype")
    if datatype not in INPUT_DTYPES:
        raise ProtocolError(f"input {INPUT_NAME} datatype must be FP32 (in [0, 1]) or UINT8, got {datatype!r}")
    shape = _parse_shape(tensor, image_shape, max_batch)
    count = math.prod(shape)
    params = tensor.get("parameters", {})
    if not isinstance(params, dict):
        raise ProtocolError(f"input {INPUT_NAME} parameters must be a JSON object")
    _keys(f"input {INPUT_NAME} parameters", params, {"binary_data_size"})
    if "binary_data_size" in params:
        if "data" in tensor:
            raise ProtocolError(f"input {INPUT_NAME} has both data and binary_data_size")
        values, used = _binary_values(params["binary_data_size"], binary, DTYPES[datatype], count)
        if datatype == "FP32":
            _check_byte_order(values)
    else:
        if "data" not in tensor:
            raise ProtocolError(f"input {INPUT_NAME} has no data (JSON data or binary_data_size)")
        values, used = _json_values(tensor["data"], datatype, count), 0
    return _to_unit_range(values, datatype).reshape(shape), len(binary) - used


def _binary_values(size: object, binary: bytes, dtype: np.dtype, count: int) -> tuple[np.ndarray, int]:
    if not isinstance(size, int) or isinstance(size, bool) or size < 0:
        raise ProtocolError(f"binary_data_size must be an integer >= 0, got {size!r}")
    if size != count * dtype.itemsize:
        raise ProtocolError(f"binary_data_size is {size} bytes; the shape needs {count * dtype.itemsize}")
    if size > len(binary):
        raise ProtocolError(f"binary_data_size is {size} bytes but only {len(binary)} binary bytes follow the "
                            "JSON header (is Inference-Header-Content-Length right?)")
    return np.frombuffer(binary[:size], dtype=dtype), size


def _check_byte_order(values: np.ndarray) -> None:
    """Refuse FP32 pixels that are subnormal: a [0, 1] image sent big-endian (the range check catches the rest)."""
    tiny = np.finfo(np.float32).tiny
    subnormal = (values != 0) & (np.abs(values) < tiny)
    if subnormal.any():
        raise ProtocolError(f"input {INPUT_NAME} holds subnormal FP32 values (e.g. {float(values[subnormal][0]):.3g}): "
                            "binary tensor data is little-endian; was it sent big-endian?")


def _json_values(data: object, datatype: str, count: int) -> np.ndarray:
    if not isinstance(data, list):
        raise ProtocolError(f"input {INPUT_NAME} data must be a JSON list, got {type(data).__name__}")
    try:
        values = np.asarray(data)
    except (ValueError, TypeError, RecursionError):
        raise ProtocolError(f"input {INPUT_NAME} data must be a flat or evenly nested list of numbers") from None
    kinds = "iu" if datatype == "UINT8" else "iuf"
    if values.dtype.kind not in kinds:
        what = "integers 0..255" if datatype == "UINT8" else "numbers"
        raise ProtocolError(f"input {INPUT_NAME} data must hold {what} ({datatype}), got {values.dtype.kind!r} values")
    if values.size != count:
        raise ProtocolError(f"input {INPUT_NAME} data has {values.size} values; its shape needs {count}")
    return values.reshape(-1)


def _to_unit_range(values: np.ndarray, datatype: str) -> np.ndarray:
    if datatype == "UINT8":
        if values.dtype.kind != "u" or values.dtype.itemsize != 1:
            lo, hi = (int(values.min()), int(values.max())) if values.size else (0, 0)
            if lo < 0 or hi > 255:
                raise ProtocolError(f"input {INPUT_NAME} UINT8 values must be in 0..255, got range [{lo}, {hi}]")
        return values.astype(np.float32) / np.float32(255)
    out = values.astype(np.float32)
    finite = np.isfinite(out)
    if not finite.all():
        raise ProtocolError(f"input {INPUT_NAME} contains NaN or inf (first at flat index {int(np.argmin(finite))})")
    lo, hi = float(out.min()), float(out.max())
    if lo < 0.0 or hi > 1.0:
        raise ProtocolError(f"input {INPUT_NAME} FP32 values must be in [0, 1], got range [{lo:.4g}, {hi:.4g}]: "
                            "send 0..255 pixels as UINT8, and do not normalise")
    return out


def _parse_outputs(outputs: object) -> tuple[OutputRequest, ...] | None:
    if outputs is None:
        return None
    if not isinstance(outputs, list) or not all(isinstance(o, dict) for o in outputs):
        raise ProtocolError("outputs must be a list of objects like {\"name\": \"label\"}")
    out = []
    for entry in outputs:
        _keys("an output", entry, {"name", "parameters"})
        name, params = entry.get("name"), entry.get("parameters", {})
        if name not in OUTPUTS:
            raise ProtocolError(f"unknown output {name!r}; outputs: {', '.join(OUTPUTS)}")
        if not isinstance(params, dict):
            raise ProtocolError(f"output {name} parameters must be a JSON object")
        _keys(f"output {name} parameters", params, {"binary_data"})
        binary = params.get("binary_data", False)
        if not isinstance(binary, bool):
            raise ProtocolError(f"output {name} binary_data must be true or false, got {binary!r}")
        out.append(OutputRequest(name, binary))
    if len({o.name for o in out}) != len(out):
        raise ProtocolError("an output is requested twice")
    return tuple(out)


def response_object(body: dict, tensors: Sequence[Tensor]) -> dict:
    """``body`` (model_name, id, parameters...) with the ``outputs`` as JSON data."""
    return json.loads(encode_response(body, tensors, set())[0])


def encode_response(body: dict, tensors: Sequence[Tensor], binary: set[str]) -> tuple[bytes, dict[str, str]]:
    """The response body and its headers: ``body`` (model_name, id, parameters...) plus ``outputs``; tensors
    named in ``binary`` go after the JSON header as raw little-endian bytes."""
    outputs, chunks = [], []
    for t in tensors:
        entry: dict = {"name": t.name, "datatype": t.datatype, "shape": list(t.data.shape)}
        if t.name in binary:
            raw = np.ascontiguousarray(t.data, dtype=DTYPES[t.datatype]).tobytes()
            entry["parameters"] = {"binary_data_size": len(raw)}
            chunks.append(raw)
        else:
            entry["data"] = t.data.reshape(-1).tolist()
        outputs.append(entry)
    header = json.dumps({**body, "outputs": outputs}, separators=(",", ":")).encode()
    if not chunks:
        return header, {"content-type": "application/json"}
    return header + b"".join(chunks), {"content-type": "application/octet-stream",
                                       HEADER_LENGTH: str(len(header))}


def encode_request(images: np.ndarray, parameters: Mapping[str, object] | None = None, request_id: str | None = None,
                   binary: bool = False, outputs: Sequence[str] | None = None) -> tuple[bytes, dict[str, str]]:
    """A client's request body and headers for ``images`` (B, C, H, W): float in [0, 1] as FP32, uint8 as UINT8."""
    images = np.asarray(images)
    datatype = "UINT8" if images.dtype == np.uint8 else "FP32"
    data = images.astype(DTYPES[datatype])
    tensor: dict = {"name": INPUT_NAME, "datatype": datatype, "shape": list(images.shape)}
    obj: dict = {"inputs": [tensor], "parameters": dict(parameters or {})}
    if request_id is not None:
        obj["id"] = request_id
    if outputs is not None:
        obj["outputs"] = [{"name": name} for name in outputs]
    if not binary:
        tensor["data"] = data.reshape(-1).tolist()
        return json.dumps(obj).encode(), {"content-type": "application/json"}
    raw = data.tobytes()
    tensor["parameters"] = {"binary_data_size": len(raw)}
    obj["parameters"].setdefault("binary_data_output", True)
    header = json.dumps(obj).encode()
    return header + raw, {"content-type": "application/octet-stream", HEADER_LENGTH: str(len(header))}


def decode_response(body: bytes, header_length: str | None) -> tuple[dict, dict[str, np.ndarray]]:
    """A response's JSON and its output tensors by name (JSON or binary data)."""
    header, binary = _split_body(body, header_length)
    obj = _load_json(header)
    tensors, offset = {}, 0
    for out in obj.get("outputs", []):
        dtype, shape = DTYPES[out["datatype"]], tuple(out["shape"])
        size = out.get("parameters", {}).get("binary_data_size")
        if size is None:
            tensors[out["name"]] = np.asarray(out["data"], dtype=dtype).reshape(shape)
        else:
            tensors[out["name"]] = np.frombuffer(binary[offset:offset + size], dtype=dtype).reshape(shape)
            offset += size
    return obj, tensors
