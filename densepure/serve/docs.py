"""``/docs`` without internet: Swagger UI from the package's assets, and an OpenAPI schema that says what
the server really answers.

The assets (``densepure/assets/swagger-ui``: swagger-ui-dist's bundle and stylesheet, Apache 2.0) are
stored gzip-compressed and sent as they are to clients that accept gzip (every browser), inflated for
the others. The schema: FastAPI's, plus the protocol's models (parsed by hand, so FastAPI does not
collect them), without the 422 validation responses FastAPI adds (this server answers 400
``{"error": ...}``) and without query parameters no route reads (a route that serves both
``/v2/models/{name}`` and ``/v2/models/{name}/versions/{version}`` would show ``version`` as a query).
"""

from __future__ import annotations

import gzip
from functools import cache
from importlib import resources

from fastapi import FastAPI, Request
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import Response

from densepure.serve.schemas import DOC_MODELS

ASSETS = {"swagger-ui-bundle.js": "text/javascript; charset=utf-8", "swagger-ui.css": "text/css; charset=utf-8"}
_NO_ICON = "data:,"  # no favicon request (FastAPI's default points to its website)


@cache
def _asset(name: str) -> bytes:
    """The gzip-compressed bytes of a shipped Swagger UI file."""
    return resources.files("densepure").joinpath("assets", "swagger-ui", f"{name}.gz").read_bytes()


def add_docs_routes(app: FastAPI) -> None:
    """``/docs`` (Swagger UI), its two assets and ``/openapi.json`` (the app is made with ``docs_url=None``)."""

    @app.get("/docs", include_in_schema=False)
    async def docs():
        return get_swagger_ui_html(openapi_url="/openapi.json", title=f"{app.title} API",
                                   swagger_js_url="/docs/swagger-ui-bundle.js", swagger_css_url="/docs/swagger-ui.css",
                                   swagger_favicon_url=_NO_ICON, swagger_ui_parameters={"validatorUrl": None})

    @app.get("/docs/{asset}", include_in_schema=False)
    async def asset(asset: str, request: Request):
        from densepure.serve.api import ApiError

        if asset not in ASSETS:
            raise ApiError(404, f"no route /docs/{asset}")
        data, headers = _asset(asset), {"cache-control": "public, max-age=86400", "vary": "accept-encoding"}
        if "gzip" in request.headers.get("accept-encoding", "").lower():
            headers["content-encoding"] = "gzip"
        else:
            data = gzip.decompress(data)
        return Response(data, media_type=ASSETS[asset], headers=headers)

    app.openapi = lambda: openapi_schema(app)


def openapi_schema(app: FastAPI) -> dict:
    """The schema (computed once): FastAPI's, with the protocol's models, without 422s and unread queries."""
    if app.openapi_schema is None:
        from fastapi.openapi.utils import get_openapi
        from pydantic.json_schema import models_json_schema

        schema = get_openapi(title=app.title, version=app.version, description=app.description, routes=app.routes)
        _, defs = models_json_schema([(m, "validation") for m in DOC_MODELS],
                                     ref_template="#/components/schemas/{model}")
        schemas = schema.setdefault("components", {}).setdefault("schemas", {})
        schemas.update(defs.get("$defs", {}))
        for name in ("HTTPValidationError", "ValidationError"):
            schemas.pop(name, None)
        for operations in schema.get("paths", {}).values():
            for operation in operations.values():
                operation.get("responses", {}).pop("422", None)
                params = [p for p in operation.get("parameters", []) if p.get("in") != "query"]
                if params:
                    operation["parameters"] = params
                else:
                    operation.pop("parameters", None)
        app.openapi_schema = schema
    return app.openapi_schema
