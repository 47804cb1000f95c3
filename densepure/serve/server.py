"""``densepure serve``: uvicorn around the app, with a graceful SIGTERM and structured logs.

Startup: uvicorn listens at once (``/v2/health/live`` answers), the engine loop loads and warms the
models (``/v2/health/ready`` turns 200). If they cannot be loaded the server stops and :func:`run_server`
raises the loading error (the CLI prints it on one line, exit 2).

SIGTERM or SIGINT: the engine loop stops accepting work (new requests: 503), uvicorn closes the
listening socket and waits up to ``grace_s`` for the requests in flight, which the engine keeps
running; past it their handlers are cancelled (their work with them). Jobs are cancelled, the engine
loop ends, and :func:`run_server` returns 0. A second SIGINT forces the exit.
"""

from __future__ import annotations

import contextlib
import logging
import signal
import socket
import sys

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

    class Server(uvicorn.Server):
        @contextlib.contextmanager
        def capture_signals(self):
            # uvicorn's own re-raises the signal after shutdown (exit status 143); a drained SIGTERM exits 0
            def handle(sig, frame):
                if self.should_exit and sig == signal.SIGINT:
                    self.force_exit = True
                log.info("signal %s: draining (grace period %.0f s)", signal.Signals(sig).name, options.limits.grace_s)
                runtime.loop.drain()
                self.should_exit = True

            previous = {sig: signal.signal(sig, handle) for sig in (signal.SIGINT, signal.SIGTERM)}
            try:
                yield
            finally:
                for sig, handler in previous.items():
                    signal.signal(sig, handler)

    config = uvicorn.Config(create_app(runtime), host=options.host, port=options.port, access_log=False,
                            log_config=_logging(options.log_level), timeout_graceful_shutdown=options.limits.grace_s,
                            lifespan="on", server_header=False)
    server = Server(config)

    def fatal(exc: BaseException) -> None:
        server.should_exit = True

    runtime.on_fatal = fatal
    return server
