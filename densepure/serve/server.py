"""``densepure serve``: uvicorn around the app, with a graceful SIGTERM and structured logs.

Startup: uvicorn listens at once (``/v2/health/live`` answers), the engine loop loads and warms the
models (``/v2/health/ready`` turns 200). If they cannot be loaded the server stops and :func:`run_server`
raises the loading error (the CLI prints it on one line, exit 2).

SIGTERM or SIGINT: the engine loop stops accepting work and the server drains. It keeps listening
while requests are in flight, up to ``grace_s``: new requests (and ``/v2/health/ready``) are
answered 503 with Retry-After, every answer says ``Connection: close``, and the engine keeps running
the requests it accepted. When none is left, or the grace period is over, uvicorn closes the
listening socket and cancels what is still running (a 503 for each). Jobs are cancelled, the engine
loop ends, and :func:`run_server` returns 0. A second SIGINT forces the exit.

The HTTP layer (:mod:`densepure.serve.http11`) bounds connections, read time and keep-alive, and answers
malformed HTTP with the same JSON errors as the routes.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import socket
import sys
import time

from densepure.errors import ConfigError, DensePureError
from densepure.serve import require_extra
from densepure.serve.settings import ServeOptions

log = logging.getLogger("densepure.serve")


def _logging(level: str) -> dict:
    """Log records on stderr: densepure's access log as one JSON object a line, the rest as plain lines."""
    return {
        "version": 1, "disable_existing_loggers": False,
        "formatters": {"plain": {"format": "%(asctime)s %(levelname)s %(name)s: %(message)s"},
                       "json": {"format": "%(message)s"}},
        "handlers": {"plain": {"class": "logging.StreamHandler", "formatter": "plain", "stream": "ext://sys.stderr"},
                     "json": {"class": "logging.StreamHandler", "formatter": "json", "stream": "ext://sys.stderr"}},
        "loggers": {"uvicorn": {"handlers": ["plain"], "level": level.upper(), "propagate": False},
                    "uvicorn.error": {"level": level.upper()},
                    "densepure.serve": {"handlers": ["plain"], "level": level.upper(), "propagate": False},
                    "densepure.serve.access": {"handlers": ["json"], "level": "INFO", "propagate": False}},
    }


def _listen(host: str, port: int) -> socket.socket:
    """The listening socket, bound here so that a taken port is a one-line error (uvicorn would exit 1)."""
    try:
        family, kind, proto, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
        sock = socket.socket(family, kind, proto)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
    except OSError as exc:
        raise ConfigError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from None
    return sock


def run_server(options: ServeOptions) -> int:
    """Serve until SIGTERM/SIGINT; 0 after a graceful drain. Raises the error that kept the models from loading."""
    require_extra()
    from densepure.serve.runtime import Runtime

    with _listen(options.host, options.port) as sock:
        runtime = Runtime(options)
        server = _server(options, runtime)
        host, port = sock.getsockname()[:2]
        print(f"densepure serve: http://{host}:{port} model {options.model_name} (loading; ready at "
              "/v2/health/ready)", file=sys.stderr, flush=True)
        server.run(sockets=[sock])
    error = runtime.loop.load_error
    if error is not None and not runtime.loop.loaded:
        if isinstance(error, DensePureError):
            raise error
        raise DensePureError(f"the models could not be loaded: {type(error).__name__}: {error}") from error
    return 0


def _server(options: ServeOptions, runtime):
    """uvicorn's server for the app of ``runtime``, with our signal handling; a load failure stops it."""
    import uvicorn

    from densepure.serve.app import create_app
    from densepure.serve.http11 import protocol_class

    grace = options.limits.grace_s

    class Server(uvicorn.Server):
        drain_started: float | None = None

        @contextlib.contextmanager
        def capture_signals(self):
            # uvicorn's own re-raises the signal after shutdown (exit status 143); a drained SIGTERM exits 0
            def handle(sig, frame):
                if self.should_exit and sig == signal.SIGINT:
                    self.force_exit = True
                log.info("signal %s: draining (grace period %.0f s)", signal.Signals(sig).name, grace)
                runtime.loop.drain()
                if self.drain_started is None:
                    self.drain_started = time.monotonic()
                self.should_exit = True

            previous = {sig: signal.signal(sig, handle) for sig in (signal.SIGINT, signal.SIGTERM)}
            try:
                yield
            finally:
                for sig, handler in previous.items():
                    signal.signal(sig, handler)

        async def shutdown(self, sockets=None):
            """Still listening, answer 503 until the requests in flight are done or the grace period is over;
            then uvicorn's shutdown (closes the socket, cancels what is left) with the time that remains."""
            started = self.drain_started or time.monotonic()
            while self.server_state.tasks and not self.force_exit and time.monotonic() - started < grace:
                await asyncio.sleep(0.05)
            self.config.timeout_graceful_shutdown = max(0.1, grace - (time.monotonic() - started))
            await super().shutdown(sockets)

    limits = options.limits
    http = protocol_class(limits.max_connections, limits.read_timeout_s, runtime.metrics.http_refused)
    config = uvicorn.Config(create_app(runtime), host=options.host, port=options.port, access_log=False,
                            log_config=_logging(options.log_level), timeout_graceful_shutdown=grace,
                            timeout_keep_alive=limits.keep_alive_s, http=http, lifespan="on", server_header=False)
    server = Server(config)

    def fatal(exc: BaseException) -> None:
        server.should_exit = True

    runtime.on_fatal = fatal
    return server
