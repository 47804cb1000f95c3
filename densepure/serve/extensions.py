"""Triton's protocol extensions that tools call beside inference: model configuration, statistics, and the
model repository (index, and load/unload of the one model a server holds).

* ``GET /v2/models/{name}[/versions/1]/config``: the model in Triton's ``ModelConfig`` JSON (inputs and
  outputs without the batch dimension, ``max_batch_size``, the priority levels and queue size under
  ``dynamic_batching``, and the smoothing and its defaults as string ``parameters``).
* ``GET /v2/models[/{name}[/versions/1]]/stats``: ``{"model_stats": [...]}`` in Triton's shape. Counts and
  times are of ``/infer`` requests for the model that passed the name check (jobs are not counted):
  ``success``/``fail`` count requests and their whole duration; ``queue`` the wait from acceptance to the
  first image entering the engine; ``compute_input`` reading, parsing and checking the request;
  ``compute_infer`` from acceptance to the answer, less the queue wait; ``compute_output`` encoding the
  answer. ``inference_count`` counts images of successful requests; ``execution_count`` engine steps (one
  UNet and one classifier batch each, for every request and job in flight). ``batch_stats`` is empty: a
  step's batch mixes rows of many images (``densepure_batch_rows`` in ``/metrics`` has its sizes).
* ``POST /v2/repository/index``: ``[{"name", "version", "state", "reason"}]`` (body optional,
  ``{"ready": true}`` lists only a ready model); ``POST /v2/repository/models/{name}/load`` answers 200
  for the served model (it is loaded at start) and 400 otherwise; ``.../unload`` is 400 (stop the server).
"""

from __future__ import annotations

import json

from fastapi import FastAPI, Request

from densepure.serve.api import ApiError
from densepure.serve.params import DEFAULT_PRIORITY, PRIORITY_LEVELS
from densepure.serve.protocol import OUTPUTS
from densepure.serve.runtime import MODEL_VERSION, Runtime, state_message
from densepure.serve.schemas import ErrorResponse

_TYPES = {"FP32": "TYPE_FP32", "INT64": "TYPE_INT64", "BOOL": "TYPE_BOOL", "UINT8": "TYPE_UINT8"}


def model_config(rt: Runtime) -> dict:
    """The served model as Triton's ``ModelConfig`` JSON."""
    c, h, w = rt.image_shape
    classes = rt.num_classes if rt.num_classes is not None else -1
    outputs = [{"name": name, "data_type": _TYPES[dtype], "dims": [2, classes] if name == "counts" else [1],
                "label_filename": "", "is_shape_tensor": False} for name, dtype in OUTPUTS.items()]
    for out in outputs:
        if out["dims"] == [1]:
            out["reshape"] = {"shape": []}  # one value per image: [B] on the wire
    d, limits, run = rt.defaults, rt.limits, rt.options.job.execution
    parameters = {**rt.smoothing_parameters(), "alpha": d.alpha, "n0": d.n0, "n": d.n, "radius": d.sigma,
                  "max_n0": limits.max_n0, "max_n": limits.max_n, "max_queued_draws": limits.max_queued_draws,
                  "default_mode": "certify_radius", "modes": "certify_radius,certify,predict",
                  "input_datatypes": "FP32,UINT8", "num_classes": classes, "client_seed": limits.allow_client_seed,
                  "backend": run.backend.value, "precision": run.precision.value}
    kinds = ["KIND_CPU" if device == "cpu" else "KIND_GPU" for device in rt.devices]
    groups = [{"name": rt.model_name, "kind": kind, "count": kinds.count(kind)} for kind in dict.fromkeys(kinds)]
    return {
        "name": rt.model_name, "platform": "densepure", "backend": "densepure", "runtime": "",
        "version_policy": {"specific": {"versions": [1]}},
        "max_batch_size": limits.max_batch,
        "input": [{"name": "image", "data_type": "TYPE_FP32", "format": "FORMAT_NCHW", "dims": [c, h, w],
                   "is_shape_tensor": False, "allow_ragged_batch": False, "optional": False}],
        "output": outputs,
        "dynamic_batching": {"preferred_batch_size": [], "max_queue_delay_microseconds": 0,
                             "preserve_ordering": False, "priority_levels": PRIORITY_LEVELS,
                             "default_priority_level": DEFAULT_PRIORITY,
                             "default_queue_policy": {"timeout_action": "REJECT", "default_timeout_microseconds": 0,
                                                      "allow_timeout_override": True,
                                                      "max_queue_size": limits.max_queue}},
        "instance_group": groups,
        "parameters": {key: {"string_value": _string(value)} for key, value in parameters.items()},
    }


def _string(value: object) -> str:
    return json.dumps(value) if isinstance(value, bool) else str(value)


def repository_index(rt: Runtime, ready_only: bool) -> list[dict]:
    if ready_only and not rt.ready:
        return []
    state = "READY" if rt.ready else ("LOADING" if not rt.loop.loaded and rt.loop.load_error is None
                                      else "UNAVAILABLE")
    reason = "" if rt.ready else state_message(rt.loop.state, rt.loop.load_error)
    return [{"name": rt.model_name, "version": MODEL_VERSION, "state": state, "reason": reason}]


def add_triton_routes(app: FastAPI, rt: Runtime, read_body, check_model) -> None:
    """The routes above; ``read_body(request)`` reads a bounded body, ``check_model(name, version)`` raises 404."""
    errors = {s: {"model": ErrorResponse} for s in (400, 404)}

    @app.get("/v2/models/{name}/config", tags=["metadata"], responses=errors)
    @app.get("/v2/models/{name}/versions/{version}/config", tags=["metadata"], responses=errors)
    async def config(name: str, version: str | None = None):
        """The model in Triton's model-configuration JSON."""
        check_model(name, version)
        return model_config(rt)

    @app.get("/v2/models/stats", tags=["statistics"])
    @app.get("/v2/models/{name}/stats", tags=["statistics"], responses=errors)
    @app.get("/v2/models/{name}/versions/{version}/stats", tags=["statistics"], responses=errors)
    async def stats(name: str | None = None, version: str | None = None):
        """Inference counts and durations in Triton's statistics shape."""
        if name is not None:
            check_model(name, version)
        return {"model_stats": [rt.stats.model_stat(rt.model_name, MODEL_VERSION, rt.metrics.steps)]}

    @app.post("/v2/repository/index", tags=["repository"], responses=errors)
    async def index(request: Request):
        """The served model and its state (body optional: {"ready": true} lists it only when ready)."""
        return repository_index(rt, _ready_only(await read_body(request)))

    @app.post("/v2/repository/models/{name}/load", tags=["repository"], responses=errors)
    async def load(name: str, request: Request):
        """The served model is loaded at start: 200 for it (no configuration override), 400 for any other."""
        body = _object(await read_body(request))
        if name != rt.model_name:
            raise ApiError(400, f"this server serves one model, {rt.model_name!r}, fixed at start; it cannot load "
                                f"{name!r}")
        if body.get("parameters"):
            raise ApiError(400, "the served model cannot be reloaded with other parameters: restart the server "
                                "with other flags")
        return {}

    @app.post("/v2/repository/models/{name}/unload", tags=["repository"], responses=errors)
    async def unload(name: str, request: Request):
        """Refused: the served model is the server's whole purpose (stop the server with SIGTERM instead)."""
        await read_body(request)
        raise ApiError(400, f"model {name!r} cannot be unloaded: this server serves {rt.model_name!r} until it "
                            "stops (SIGTERM)")


def _object(body: bytes) -> dict:
    if not body.strip():
        return {}
    try:
        obj = json.loads(body)
    except (UnicodeDecodeError, ValueError, RecursionError):
        raise ApiError(400, "the request body must be empty or a JSON object") from None
    if not isinstance(obj, dict):
        raise ApiError(400, f"the request body must be a JSON object, got {type(obj).__name__}")
    return obj


def _ready_only(body: bytes) -> bool:
    obj = _object(body)
    unknown = sorted(set(obj) - {"ready", "repository_name"})
    if unknown:
        raise ApiError(400, f"unknown field {unknown[0]!r} in the index request; allowed: ready")
    ready = obj.get("ready", False)
    if not isinstance(ready, bool):
        raise ApiError(400, f"ready must be true or false, got {ready!r}")
    return ready
