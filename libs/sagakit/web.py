"""The HTTP edge every service shares: the app factory, JSON errors, health, request context.

Errors are values at the edge: a service raises :class:`ApiError` (or lets FastAPI validation
fail) and this module turns it into one JSON shape, ``{"type", "title", "status", "detail",
"errors": [{"field", "message"}]}``, so a client always learns which field was wrong.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Mapping
from contextlib import AbstractAsyncContextManager
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Receive, Scope, Send

from sagakit import logs, telemetry
from sagakit.consuming import OUTAGE

log = logging.getLogger("sagakit.web")

ReadinessCheck = Callable[[], Awaitable[Any]]

# Free text a client sends: PostgreSQL text cannot hold NUL nor most control characters make sense
# in a name, so they are refused at the edge (422 naming the field), not by the database (500).
PLAIN_TEXT = r"^[^\x00-\x08\x0b\x0c\x0e-\x1f\x7f]*$"


class ApiError(Exception):
    """A client-facing error: its status, a title, and (when one input is to blame) the field."""

    def __init__(
        self, status: int, title: str, detail: str, *, field: str | None = None, **extra: Any
    ) -> None:
        super().__init__(detail)
        self.status, self.title, self.detail, self.field, self.extra = (
            status, title, detail, field, extra,
        )


def problem(status: int, title: str, detail: str, errors: list[dict[str, str]] | None = None,
            **extra: Any) -> JSONResponse:
    body: dict[str, Any] = {"type": "about:blank", "title": title, "status": status,
                            "detail": detail, **extra}
    if errors:
        body["errors"] = errors
    if request_id := logs.request_id_var.get():
        body["request_id"] = request_id
    return JSONResponse(body, status_code=status)


def _field_name(loc: tuple[Any, ...]) -> str:
    parts = list(loc[1:] if loc and loc[0] in ("body", "query", "path", "header") else loc)
    name = ""
    for part in parts:
        name += f"[{part}]" if isinstance(part, int) else (f".{part}" if name else str(part))
    return name or (str(loc[0]) if loc else "body")


async def _on_validation_error(_: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    errors = [
        {"field": _field_name(tuple(e.get("loc", ()))), "message": e.get("msg", "invalid"),
         "type": e.get("type", "")}
        for e in exc.errors()
    ]
    if any(e["type"] == "json_invalid" for e in errors):
        return problem(400, "Malformed JSON", "The request body is not valid JSON.",
                       [{"field": "body", "message": "malformed JSON"}])
    detail = "; ".join(f"{e['field']}: {e['message']}" for e in errors)
    return problem(422, "Invalid request", detail, errors)


async def _on_api_error(_: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, ApiError)
    errors = [{"field": exc.field, "message": exc.detail}] if exc.field else None
    return problem(exc.status, exc.title, exc.detail, errors, **exc.extra)


async def _on_http_error(_: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, StarletteHTTPException)
    titles = {404: "Not found", 405: "Method not allowed"}
    return problem(exc.status_code, titles.get(exc.status_code, "HTTP error"), str(exc.detail))


# A store that cannot be reached (down, restarting, out of connection slots) makes the service
# unavailable for a moment: 503 with Retry-After tells a client to try again, a 500 would not.
_UNAVAILABLE = OUTAGE


async def _on_unexpected(_: Request, exc: Exception) -> JSONResponse:
    if isinstance(exc, _UNAVAILABLE):
        log.warning("store unavailable: %r", exc)
        response = problem(503, "Service unavailable",
                           "A backing store is unavailable; retry shortly (with the same "
                           "Idempotency-Key for an order).")
        response.headers["Retry-After"] = "1"
        return response
    log.exception("unhandled error", exc_info=exc)
    return problem(500, "Internal error", "Something went wrong; the request id identifies it.")


class RequestContext:
    """Pure ASGI middleware: tag logs with the request id (the trace is OpenTelemetry's)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = dict(scope["headers"])
        request_id = headers.get(b"x-request-id")
        logs.request_id_var.set(request_id.decode() if request_id else None)
        logs.order_id_var.set(None)
        await self.app(scope, receive, send)


def create_app(
    service: str,
    *,
    title: str,
    description: str,
    lifespan: Callable[[FastAPI], AbstractAsyncContextManager[None]],
    readiness: Callable[[FastAPI], Mapping[str, ReadinessCheck]],
) -> FastAPI:
    """A FastAPI app with the shared docs paths, error shape, health, request context and
    tracing (a server span per request, continuing a caller's ``traceparent``)."""
    app = FastAPI(
        title=title,
        description=description,
        version="1.0.0",
        lifespan=lifespan,
        docs_url=f"/docs/{service}",
        redoc_url=None,
        openapi_url=f"/docs/{service}/openapi.json",
    )
    app.add_exception_handler(RequestValidationError, _on_validation_error)
    app.add_exception_handler(ApiError, _on_api_error)
    app.add_exception_handler(StarletteHTTPException, _on_http_error)
    app.add_exception_handler(Exception, _on_unexpected)
    app.add_middleware(RequestContext)
    telemetry.instrument_app(app)

    @app.get("/health/live", tags=["health"], summary="The process is up")
    async def live() -> dict[str, str]:
        return {"status": "live", "service": service}

    @app.get("/health/ready", tags=["health"], summary="Database and broker reachable")
    async def ready() -> JSONResponse:
        checks = readiness(app)
        with telemetry.untraced():  # probes come every few seconds: not worth a trace each
            results = await asyncio.gather(
                *(asyncio.wait_for(check(), 2.0) for check in checks.values()),
                return_exceptions=True,
            )
        report = {
            name: ("ok" if not isinstance(r, BaseException) and r is not False else
                   f"failing: {r!r}" if isinstance(r, BaseException) else "failing")
            for name, r in zip(checks, results, strict=True)
        }
        ok = all(v == "ok" for v in report.values())
        return JSONResponse(
            {"status": "ready" if ok else "not ready", "service": service, "checks": report},
            status_code=200 if ok else 503,
        )

    return app
