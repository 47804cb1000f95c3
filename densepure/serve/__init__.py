"""The certified-prediction server: Open Inference Protocol v2 over FastAPI, one engine for all clients.

Layout: :mod:`.settings` (limits and options), :mod:`.params` (a request's parameters and the task they
make), :mod:`.protocol` (OIP v2 tensors in and out, JSON and binary), :mod:`.loop` (the one thread that
owns the engine), :mod:`.jobs` (long certifications), :mod:`.metrics`, :mod:`.stats` (Triton's
statistics), :mod:`.app` (routes), :mod:`.extensions` (Triton's configuration, statistics and repository
routes), :mod:`.body` (bounded, decompressed request bodies), :mod:`.api` (the error shape),
:mod:`.docs` (offline Swagger UI, the OpenAPI schema), :mod:`.http11` (the HTTP layer's bounds and JSON
errors), :mod:`.server` (uvicorn, drain, logs), :mod:`.client` (a small Python client).
docs/serving.md is the user's guide.

FastAPI, uvicorn and prometheus-client are the ``serve`` extra: nothing here imports them at
``densepure`` import time, and :func:`require_extra` turns their absence into one line.
"""

from __future__ import annotations

from densepure.errors import ConfigError, install_hint

SERVER_MODULES = ("fastapi", "uvicorn", "prometheus_client")


def require_extra(modules: tuple[str, ...] = SERVER_MODULES) -> None:
    """Raise a one-line :class:`ConfigError` saying how to install the serve extra if one of ``modules`` (the
    server's, by default; the client needs ``httpx``) is missing."""
    import importlib

    for name in modules:
        try:
            importlib.import_module(name)
        except ImportError as exc:
            raise ConfigError(f"densepure serve needs the serve extra ({name} is missing): "
                              f"{install_hint('serve')}") from exc
