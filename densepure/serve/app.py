"""The HTTP routes: Open Inference Protocol v2, the jobs API, metrics and docs, over one :class:`Runtime`.

Every error is JSON ``{"error": "..."}`` with a status that says whose problem it is: 400 (a malformed
request, named), 404 (unknown model, job or path), 405, 408 (the body did not arrive within
``--read-timeout``), 413 (body over ``--max-body-bytes``, before or after decompression), 415 (an
unknown Content-Encoding), 503 with Retry-After (queue full, loading, draining), 504 (the deadline
passed), 500 only for the server's own failures (a model's NaN, a bug), never with a traceback. A
client that disconnects is logged as 499 and its work is cancelled. While the server drains (SIGTERM)
every answer carries ``Connection: close``. Below the routes, :mod:`densepure.serve.http11` answers
what never reaches them (malformed HTTP, slow requests, too many connections).
"""

from __future__ import annotations

import asyncio
import inspect
import json
import logging
import re
import time
import uuid
from contextlib import asynccontextmanager
from datetime import datetime, timezone

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import ClientDisconnect

from densepure.errors import DensePureError
from densepure.serve.api import ApiError, error_response
from densepure.serve.body import read_body
from densepure.serve.docs import add_docs_routes
from densepure.serve.extensions import add_triton_routes
from densepure.serve.jobs import Job
from densepure.serve.loop import FailKind, LoopState, NotAccepting, QueueFull, WorkFailed
from densepure.serve.protocol import HEADER_LENGTH, ProtocolError, encode_response, parse_infer_request, response_object
from densepure.serve.runtime import Prepared, Runtime, state_message
from densepure.serve.schemas import ErrorResponse, InferenceResponse, JobState

access_log = logging.getLogger("densepure.serve.access")
log = logging.getLogger("densepure.serve")

_FAIL_STATUS = {FailKind.BAD_INPUT: 400, FailKind.SHUTDOWN: 503, FailKind.CANCELLED: 503,
                FailKind.MODEL_ERROR: 500, FailKind.INTERNAL: 500, FailKind.UNAVAILABLE: 503}
_ENDPOINTS = [(m, re.compile(p), name) for m, p, name in (
    ("GET", r"/v2/health/live", "health_live"), ("GET", r"/v2/health/ready", "health_ready"),
    ("GET", r"/v2", "server_metadata"), ("GET", r"/v2/models(/[^/]+(/versions/[^/]+)?)?/stats", "model_stats"),
    ("GET", r"/v2/models/[^/]+(/versions/[^/]+)?/config", "model_config"),
    ("GET", r"/v2/models/[^/]+(/versions/[^/]+)?", "model_metadata"),
    ("GET", r"/v2/models/[^/]+(/versions/[^/]+)?/ready", "model_ready"),
    ("POST", r"/v2/models/[^/]+(/versions/[^/]+)?/infer", "infer"), ("POST", r"/v2/repository/.*", "repository"),
    ("POST", r"/v1/jobs", "job_create"), ("GET", r"/v1/jobs/[^/]+", "job_get"),
    ("DELETE", r"/v1/jobs/[^/]+", "job_delete"), ("GET", r"/metrics", "metrics"),
    ("GET", r"/docs(/[^/]+)?|/openapi\.json", "docs"))]


def endpoint_of(method: str, path: str) -> str:
    """The metrics label of a request (a bounded set: route templates, not paths)."""
    for m, pattern, name in _ENDPOINTS:
        if m == method and pattern.fullmatch(path):
            return name
    return "other"


def outcome_of(status: int) -> str:
    if status < 400:
        return "success"
    if status in (429, 503):
        return "rejected"
    return {499: "disconnected", 504: "deadline_exceeded"}.get(status, "client_error" if status < 500 else
                                                                 "server_error")


class AccessLog:
    """ASGI middleware: a request id (``X-Request-ID``, the client's or new), one JSON access-log line per
    request, the request metrics, and ``Connection: close`` on every answer while draining."""

    def __init__(self, app, runtime: Runtime):
        self.app, self.runtime = app, runtime

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        start, status = time.perf_counter(), [0]
        headers = dict(scope.get("headers") or [])
        request_id = headers.get(b"x-request-id", b"").decode("latin-1")[:128] or uuid.uuid4().hex
        scope.setdefault("state", {})["request_id"] = request_id

        async def send_wrapper(message):
            if message["type"] == "http.response.start":
                status[0] = message["status"]
                headers = list(message.get("headers", []))
                if self.runtime.replica is None:
                    headers.append((b"x-request-id", request_id.encode("latin-1")))
                else:  # on Ray Serve: which replica answered (the proxy adds X-Request-ID, the id passed on here)
                    headers.append((b"x-densepure-replica", self.runtime.replica.encode("latin-1")))
                draining = self.runtime.loop.state is not LoopState.READY and self.runtime.loop.loaded
                if draining and all(k.lower() != b"connection" for k, _ in headers):
                    headers.append((b"connection", b"close"))  # the client should reconnect elsewhere
                message = {**message, "headers": headers}
            await send(message)

        try:
            await self.app(scope, receive, send_wrapper)
        finally:
            self._record(scope, status[0] or 500, time.perf_counter() - start, request_id)

    def _record(self, scope, status: int, seconds: float, request_id: str) -> None:
        method, path = scope["method"], scope["path"]
        endpoint, outcome = endpoint_of(method, path), outcome_of(status)
        self.runtime.metrics.request(endpoint, outcome, seconds)
        if self.runtime.options.access_log:
            client = scope.get("client")
            line = {"ts": datetime.now(timezone.utc).isoformat(timespec="milliseconds"), "request_id": request_id,
                    "client": f"{client[0]}:{client[1]}" if client else None, "method": method, "path": path,
                    "status": status, "endpoint": endpoint, "outcome": outcome, "duration_s": round(seconds, 6),
                    **scope["state"].get("log", {})}
            access_log.info(json.dumps(line, separators=(",", ":")))


async def _disconnected(request: Request) -> None:
    """Returns when the client goes away (the body has been read: the next ASGI message is the disconnect)."""
    while (await request.receive())["type"] != "http.disconnect":
        pass


def create_app(runtime: Runtime) -> FastAPI:
    """The FastAPI application of ``runtime``; its lifespan starts and stops the engine loop."""
    rt = runtime

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        rt.loop.start()
        await rt.jobs.start()
        try:
            yield
        finally:
            rt.loop.drain()
            await rt.jobs.close(rt.limits.grace_s)
            await run_in_threadpool(rt.loop.stop)

    app = FastAPI(title="densepure", version=rt.server_metadata()["version"], lifespan=lifespan,
                  docs_url=None, redoc_url=None,
                  description="Certified predictions (randomized smoothing with diffusion purification) over the "
                              "Open Inference Protocol v2, and a jobs API for long certifications. Every error is "
                              '`{"error": "..."}`.')
    app.add_middleware(AccessLog, runtime=rt)
    _add_error_handlers(app)
    # before the OIP routes: /v2/models/stats is not the metadata of a model named "stats"
    add_triton_routes(app, rt, lambda request: _read(rt, request),
                      lambda name, version: _check_model(rt, name, version))
    _add_oip_routes(app, rt)
    _add_job_routes(app, rt)
    add_docs_routes(app)

    @app.get("/metrics", include_in_schema=False)
    async def metrics() -> Response:
        body, content_type = rt.metrics.render()
        return Response(body, media_type=content_type)

    return app


def _add_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(ApiError)
    async def api_error(request: Request, exc: ApiError):
        if exc.status == 499:
            return Response(status_code=499)  # nobody is listening
        return error_response(exc.status, exc.message, exc.retry_after, exc.close)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException):
        message = {404: f"no route {request.url.path}", 405: f"method {request.method} not allowed on "
                   f"{request.url.path}"}.get(exc.status_code, str(exc.detail))
        return error_response(exc.status_code, message)

    @app.exception_handler(ClientDisconnect)
    async def disconnect(request: Request, exc: ClientDisconnect):
        return Response(status_code=499)

    @app.exception_handler(Exception)
    async def internal(request: Request, exc: Exception):
        request_id = request.scope.get("state", {}).get("request_id")
        log.error("internal error in request %s", request_id, exc_info=exc)
        return error_response(500, f"internal error (request id {request_id}); the server log has the details")


def _check_model(rt: Runtime, name: str, version: str | None = None) -> None:
    if name != rt.model_name:
        raise ApiError(404, f"unknown model {name!r}; this server serves {rt.model_name!r}")
    if version is not None and version != "1":
        raise ApiError(404, f"unknown version {version!r} of model {name!r}; versions: 1")


def _check_ready(rt: Runtime) -> None:
    if not rt.ready:
        raise ApiError(503, state_message(rt.loop.state, rt.loop.load_error), retry_after=1)


def _read(rt: Runtime, request: Request):
    return read_body(request, rt.limits.max_body_bytes, rt.limits.read_timeout_s)


async def _parse(rt: Runtime, request: Request, job: bool):
    body = await _read(rt, request)
    try:
        parsed = await run_in_threadpool(parse_infer_request, body, request.headers.get(HEADER_LENGTH),
                                         rt.image_shape, rt.limits.max_batch, job)
        if job and parsed.model is not None:
            _check_model(rt, parsed.model)
        prepared, policies = rt.prepare(parsed, job=job)
    except ProtocolError as exc:
        raise ApiError(exc.status, str(exc)) from None
    except DensePureError as exc:  # parameters, tasks and plans: the client's choice
        raise ApiError(400, str(exc)) from None
    request.scope["state"]["log"] = {"mode": prepared.params.mode.value, "images": int(parsed.images.shape[0])}
    return prepared, policies


async def _submit(rt: Runtime, work) -> None:
    """Queue ``work`` (in a worker thread: splitting a large request across devices takes the policies' draws
    one by one, which must not hold up the event loop)."""
    try:
        await run_in_threadpool(rt.loop.submit, work)
    except QueueFull as exc:
        raise ApiError(503, str(exc), retry_after=exc.retry_after) from None
    except NotAccepting:
        raise ApiError(503, state_message(rt.loop.state, rt.loop.load_error), retry_after=1) from None


async def _run(rt: Runtime, request: Request, prepared: Prepared, policies, started: float):
    """Run a request on the engine and wait; a disconnect or the deadline cancels its work."""
    loop = asyncio.get_running_loop()
    future = loop.create_future()

    def settle(outcome) -> None:
        if not future.done():
            future.set_result(outcome)

    work = rt.work(prepared, policies, lambda outcome: loop.call_soon_threadsafe(settle, outcome))
    await _submit(rt, work)
    deadline = prepared.params.deadline_ms
    timeout = None if deadline is None else max(0.0, deadline / 1000 - (time.monotonic() - started))
    watcher = asyncio.ensure_future(_disconnected(request))
    try:
        done, _ = await asyncio.wait({future, watcher}, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
    except asyncio.CancelledError:  # uvicorn cancels what is left when the shutdown grace period is over
        rt.loop.cancel(work.id)
        raise ApiError(503, "the server shut down before the answer was decided (its grace period was over)",
                       retry_after=1) from None
    finally:
        watcher.cancel()
    if future in done:
        return future.result()
    rt.loop.cancel(work.id)
    if watcher in done:
        raise ApiError(499, "the client disconnected")
    raise ApiError(504, f"deadline_ms={deadline:g} passed before the answer was decided; the work was cancelled")


def _add_oip_routes(app: FastAPI, rt: Runtime) -> None:
    errors = {s: {"model": ErrorResponse} for s in (400, 404, 408, 413, 415, 503, 504)}
    unready = {503: {"model": ErrorResponse}}

    @app.get("/v2/health/live", tags=["health"], responses=unready)
    async def live():
        if rt.loop.state is LoopState.FAILED:
            raise ApiError(503, state_message(rt.loop.state, rt.loop.load_error))
        return {"live": True}

    @app.get("/v2/health/ready", tags=["health"], responses=unready)
    async def ready():
        _check_ready(rt)
        return {"ready": True}

    @app.get("/v2", tags=["metadata"])
    async def server_metadata():
        return rt.server_metadata()

    @app.get("/v2/models/{name}", tags=["metadata"], responses={404: errors[404]})
    @app.get("/v2/models/{name}/versions/{version}", tags=["metadata"], responses={404: errors[404]})
    async def model_metadata(name: str, version: str | None = None):
        _check_model(rt, name, version)
        return rt.model_metadata()

    @app.get("/v2/models/{name}/ready", tags=["health"], responses={404: errors[404], **unready})
    @app.get("/v2/models/{name}/versions/{version}/ready", tags=["health"], responses={404: errors[404], **unready})
    async def model_ready(name: str, version: str | None = None):
        _check_model(rt, name, version)
        _check_ready(rt)
        return {"name": name, "ready": True}

    infer_doc = {"requestBody": {"required": True, "content": {
        "application/json": {"schema": {"$ref": "#/components/schemas/InferenceRequest"}},
        "application/octet-stream": {"schema": {"type": "string", "format": "binary"},
                                     "description": "binary tensor extension: JSON header, then tensor bytes"}}}}

    @app.post("/v2/models/{name}/infer", tags=["inference"], openapi_extra=infer_doc,
              responses={200: {"model": InferenceResponse}, **errors})
    @app.post("/v2/models/{name}/versions/{version}/infer", tags=["inference"], openapi_extra=infer_doc,
              responses={200: {"model": InferenceResponse}, **errors})
    async def infer(name: str, request: Request, version: str | None = None):
        """Certify or predict a batch of images (parameters: mode, alpha, n0, n, radius, deadline_ms or timeout,
        priority)."""
        started, t0 = time.monotonic(), time.perf_counter_ns()
        _check_model(rt, name, version)
        try:
            _check_ready(rt)
            prepared, policies = await _parse(rt, request, job=False)
            t1 = time.perf_counter_ns()
            outcome = await _run(rt, request, prepared, policies, started)
            t2 = time.perf_counter_ns()
            if isinstance(outcome, WorkFailed):
                status = _FAIL_STATUS[outcome.kind]
                raise ApiError(status, outcome.message, retry_after=1 if outcome.kind is FailKind.UNAVAILABLE else None)
            body, tensors = rt.response(prepared, outcome)
            request.scope["state"]["log"].update(draws=int(sum(o.draws for o in outcome.images)),
                                                 queue_wait_s=round(outcome.queue_wait_s, 6))
            content, headers = encode_response(body, tensors, {n for n, binary in prepared.outputs.items() if binary})
        except BaseException:
            rt.stats.fail(time.perf_counter_ns() - t0)
            raise
        t3, queue_ns = time.perf_counter_ns(), int(outcome.queue_wait_s * 1e9)
        rt.stats.success(len(outcome.images), t3 - t0, queue_ns, t1 - t0, t2 - t1 - queue_ns, t3 - t2)
        return Response(content, headers=headers)


def _add_job_routes(app: FastAPI, rt: Runtime) -> None:
    errors = {s: {"model": ErrorResponse} for s in (400, 404, 408, 413, 415, 503)}
    job_doc = {"requestBody": {"required": True, "content": {
        "application/json": {"schema": {"$ref": "#/components/schemas/InferenceRequest"}}}}}

    @app.post("/v1/jobs", tags=["jobs"], status_code=202, openapi_extra=job_doc,
              responses={202: {"model": JobState}, **errors})
    async def create_job(request: Request):
        """Start a long certification (an inference request; optional "model"); poll GET /v1/jobs/{id}."""
        _check_ready(rt)
        retained = await _maybe(rt.jobs.count())
        if retained >= rt.limits.max_jobs:
            raise ApiError(503, f"{retained} jobs are retained (--max-jobs {rt.limits.max_jobs}): fetch or "
                                "delete finished ones", retry_after=10)
        prepared, policies = await _parse(rt, request, job=True)
        loop, job_id = asyncio.get_running_loop(), rt.jobs.new_id()
        work = rt.work(prepared, policies, lambda outcome: loop.call_soon_threadsafe(rt.jobs.finish, job_id, outcome))
        job = Job(job_id, work.id, len(policies), render=lambda result: response_object(*rt.response(prepared, result)))
        await _maybe(rt.jobs.add(job))  # before the work is queued: its outcome may come back at once
        accepted = rt.jobs.peek(job_id)
        try:
            await _submit(rt, work)
        except BaseException:
            rt.jobs.discard(job_id)
            raise
        request.scope["state"]["log"]["job"] = job_id
        return JSONResponse(accepted, status_code=202, headers={"location": f"/v1/jobs/{job_id}"})

    @app.get("/v1/jobs/{job_id}", tags=["jobs"], responses={200: {"model": JobState}, 404: errors[404]})
    async def get_job(job_id: str):
        """A job's state; a final result is returned once, then forgotten."""
        view = await _maybe(rt.jobs.view(job_id))
        if view is None:
            raise ApiError(404, f"no job {job_id!r} (unknown, already fetched, or expired)")
        return view

    @app.delete("/v1/jobs/{job_id}", tags=["jobs"], responses={200: {"model": JobState}, 404: errors[404]})
    async def delete_job(job_id: str):
        """Cancel a job (its engine slots are freed) and forget it."""
        view = await _maybe(rt.jobs.delete(job_id))
        if view is None:
            raise ApiError(404, f"no job {job_id!r} (unknown, already fetched, or expired)")
        return view


async def _maybe(value):
    """``value``, awaited if it is awaitable (a Ray replica's job store answers through the job board)."""
    return await value if inspect.isawaitable(value) else value
