"""The HTTP/1.1 layer under the app: uvicorn's h11 protocol, bounded, with JSON errors.

What a client can see here, before any route runs (every body is ``{"error": "..."}``, and the
connection is closed after it):

* a connection past ``max_connections``: 503 with ``Retry-After: 1``;
* a malformed request line, header line, chunk header or Content-Length, or a request without
  ``Host``: 400 naming what h11 refused (431 when the request line and headers pass h11's 16 KiB);
* a request whose line and headers have not all arrived ``read_timeout_s`` after its first byte:
  408. A body that is late is the app's to answer (:func:`densepure.serve.body.read_body`, 408 at the
  same deadline); if the app has answered or does not answer within a second more, the connection
  is closed without another response;
* a connection that sends nothing, or nothing more after a response, for ``keep_alive_s``: closed.

uvicorn 0.55 has no read timeout (its keep-alive timer starts only after a response, and any byte
cancels it), answers parse errors in plain text and its ``limit_concurrency`` in plain text without
Retry-After, and only once a request's headers are complete: hence this subclass. It relies on
``H11Protocol``'s attributes ``conn``, ``cycle``, ``connections``, ``transport``, ``loop`` and
``timeout_keep_alive_task``/``timeout_keep_alive_handler`` (checked with uvicorn 0.30 to 0.55).
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from http import HTTPStatus

import h11
from uvicorn.protocols.http.h11_impl import H11Protocol

log = logging.getLogger("densepure.serve")

DEADLINE_KEY = "densepure.read_deadline"  # scope["extensions"]: the monotonic time a request must be read by
APP_GRACE_S = 1.0  # past the read deadline, what a route reading the body has to answer its own 408
LINGER_S = 1.0  # a refused connection is read (and discarded) this long, so that our 503 is not lost to a reset


def error_bytes(status: int, message: str, headers: tuple[tuple[str, str], ...] = ()) -> bytes:
    """A whole HTTP/1.1 response ``{"error": message}`` that closes the connection."""
    body = json.dumps({"error": message}).encode()
    lines = [f"HTTP/1.1 {status} {HTTPStatus(status).phrase}", "content-type: application/json",
             f"content-length: {len(body)}", "connection: close", *(f"{k}: {v}" for k, v in headers)]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body


class _Connection(h11.Connection):
    """h11's connection, keeping the parse error that uvicorn's handler does not pass on."""

    remote_error: h11.RemoteProtocolError | None = None

    def next_event(self):
        try:
            return super().next_event()
        except h11.RemoteProtocolError as exc:
            self.remote_error = exc
            raise


class BoundedH11Protocol(H11Protocol):
    """uvicorn's h11 protocol with a connection cap, a read deadline per request and JSON errors.

    Use :func:`protocol_class` to bind the limits; ``on_reject(reason)`` counts what this layer refused
    (``connection_limit``, ``read_timeout``, ``malformed``).
    """

    max_connections: int = 512
    read_timeout_s: float = 30.0
    on_reject: Callable[[str], None] | None = None

    def __init__(self, config, server_state, app_state, _loop=None):
        super().__init__(config, server_state, app_state, _loop)
        size = config.h11_max_incomplete_event_size
        self.conn = _Connection(h11.SERVER) if size is None else _Connection(h11.SERVER, size)
        self._read_timer = None
        self._deadline = 0.0
        self._app_grace = False
        self._refused = False

    # -- connections ----------------------------------------------------------------------------
    def connection_made(self, transport) -> None:
        super().connection_made(transport)
        if len(self.connections) > self.max_connections:
            self._refuse()
            return
        # a new connection that sends nothing is idle: the keep-alive timer closes it
        self.timeout_keep_alive_task = self.loop.call_later(self.timeout_keep_alive, self.timeout_keep_alive_handler)

    def _refuse(self) -> None:
        self._refused = True
        self.connections.discard(self)  # it does not count against the cap while it lingers
        self._count("connection_limit")
        message = f"the server has {self.max_connections} connections open (--max-connections); retry"
        self.transport.write(error_bytes(503, message, (("retry-after", "1"),)))
        if self.transport.can_write_eof():
            self.transport.write_eof()
        self.loop.call_later(LINGER_S, self.transport.close)

    def connection_lost(self, exc) -> None:
        self._cancel_read_timer()
        super().connection_lost(exc)

    def shutdown(self) -> None:
        if not self._refused:
            super().shutdown()

    # -- reading --------------------------------------------------------------------------------
    def data_received(self, data: bytes) -> None:
        if self._refused:
            return
        if self._read_timer is None and self._receiving():
            self._deadline = time.monotonic() + self.read_timeout_s
            self._app_grace = False
            self._read_timer = self.loop.call_later(self.read_timeout_s, self._read_timeout)
        super().data_received(data)
        cycle = self.cycle
        if cycle is not None and not cycle.response_started:  # before the route's task first runs
            cycle.scope.setdefault("extensions", {})[DEADLINE_KEY] = self._deadline
        if self._read_timer is not None and not self._partial():
            self._cancel_read_timer()

    def _receiving(self) -> bool:
        """A request is (or starts) arriving: not while one is being answered (a pipelined one waits)."""
        return self.conn.their_state in (h11.IDLE, h11.SEND_BODY)

    def _partial(self) -> bool:
        """Part of a request has arrived and the rest has not."""
        state = self.conn.their_state
        return state is h11.SEND_BODY or (state is h11.IDLE and bool(self.conn.trailing_data[0]))

    def _cancel_read_timer(self) -> None:
        if self._read_timer is not None:
            self._read_timer.cancel()
            self._read_timer = None

    def _read_timeout(self) -> None:
        self._read_timer = None
        if self.transport.is_closing() or not self._partial():
            return
        cycle = self.cycle
        if self.conn.their_state is h11.SEND_BODY and cycle is not None and not cycle.response_started \
                and not self._app_grace:
            self._app_grace = True  # the route reading the body answers 408 itself at the same deadline
            self._read_timer = self.loop.call_later(APP_GRACE_S, self._read_timeout)
            return
        self._count("read_timeout")
        if self.conn.their_state is h11.IDLE:  # the request line and headers never completed
            self.transport.write(error_bytes(408, f"the request did not arrive within {self.read_timeout_s:g} s "
                                                  "(--read-timeout)"))
        self.transport.close()

    # -- parse errors ---------------------------------------------------------------------------
    def send_400_response(self, msg: str) -> None:
        exc = self.conn.remote_error
        status = getattr(exc, "error_status_hint", 400) if exc is not None else 400
        self._count("malformed")
        cycle = self.cycle
        if cycle is None or cycle.response_complete or not cycle.response_started:
            detail = str(exc)[:300] if exc is not None else msg
            self.transport.write(error_bytes(status, f"malformed HTTP request: {detail}"))
        self.transport.close()

    def _count(self, reason: str) -> None:
        if self.on_reject is not None:
            self.on_reject(reason)
        client = f"{self.client[0]}:{self.client[1]}" if self.client else "?"
        log.info("HTTP layer: %s from %s", reason.replace("_", " "), client)


def protocol_class(max_connections: int, read_timeout_s: float,
                   on_reject: Callable[[str], None] | None = None) -> type[BoundedH11Protocol]:
    """:class:`BoundedH11Protocol` bound to a server's limits (uvicorn's ``http`` option takes a class)."""
    return type("ServerH11Protocol", (BoundedH11Protocol,), {
        "max_connections": int(max_connections), "read_timeout_s": float(read_timeout_s),
        "on_reject": staticmethod(on_reject) if on_reject is not None else None})
