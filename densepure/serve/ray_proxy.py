"""Ray Serve's HTTP proxy, made to answer 503 for a replica lost mid-request.

When a replica dies while it holds a request (killed, out of memory, its node gone), Serve's proxy (Ray
2.60) ends the request without an answer, which its HTTP server turns into a plain-text 500. A client
should instead retry: nothing of the request was decided or recorded (an infer answer is one message,
sent whole or not at all; a job's result reaches the job board in one call). :func:`proxy_middlewares` is
the proxy callback (``RAY_SERVE_HTTP_PROXY_CALLBACK_IMPORT_PATH=densepure.serve.ray_proxy.proxy_middlewares``
in the environment of the Ray nodes: ``densepure serve --ray local`` sets it) that wraps the proxy in
:class:`LostReplica`: a request that ends with no answer started gets densepure's JSON 503 with
``Retry-After: 1``. Starlette only: the proxy imports no torch.
"""

from __future__ import annotations

import json

CALLBACK = "densepure.serve.ray_proxy.proxy_middlewares"
CALLBACK_VARIABLE = "RAY_SERVE_HTTP_PROXY_CALLBACK_IMPORT_PATH"
LOST = "the replica serving this request was lost before it answered; nothing of it was recorded: retry"


class LostReplica:
    """ASGI middleware: an HTTP request that ends (or fails) before its answer started is answered 503."""

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        started = False

        async def tracking(message):
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, receive, tracking)
        except Exception:  # noqa: BLE001  (the proxy's own failure: still no answer for the client)
            if started:
                raise
        if not started:
            body = json.dumps({"error": LOST}).encode()
            await send({"type": "http.response.start", "status": 503,
                        "headers": [(b"content-type", b"application/json"), (b"retry-after", b"1"),
                                    (b"content-length", str(len(body)).encode())]})
            await send({"type": "http.response.body", "body": body})


def proxy_middlewares() -> list:
    """The proxy callback: Serve wraps its proxy in these (Starlette ``Middleware`` objects)."""
    from starlette.middleware import Middleware

    return [Middleware(LostReplica)]
