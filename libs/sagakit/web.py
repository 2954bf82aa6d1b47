"""The HTTP edge every service shares: the app factory, JSON errors, health, request context,
and the input rules every service's models use.

Errors are values at the edge: a service raises :class:`ApiError` (or lets FastAPI validation
fail) and this module turns it into one JSON shape, ``{"type", "title", "status", "detail",
"errors": [{"field", "message"}]}``, so a client always learns which field was wrong.

Input hygiene, the same in every service: text a person typed is :data:`sagakit.text.Text`
(no control or format characters: no line breaks, bidi overrides or zero-width characters in a
name); a JSON body is read by :class:`JsonRoute`, which refuses another media type or an encoded
body (415 naming the header), a body that is not UTF-8, a key given twice and the non-JSON
numbers ``NaN``/``Infinity`` (400 naming them) instead of guessing.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Awaitable, Callable, Coroutine, Mapping
from contextlib import AbstractAsyncContextManager
from email.message import Message
from typing import Any

import asyncpg
from fastapi import FastAPI, Request, Response, params
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fastapi.routing import APIRoute
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import Match, Mount
from starlette.types import ASGIApp, Receive, Scope, Send
from starlette.types import Message as AsgiMessage
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from sagakit import auth, logs, telemetry, units
from sagakit.consuming import is_outage
from sagakit.docs import add_swagger_ui, docs_paths
from sagakit.errors import ApiError
from sagakit.waits import within

log = logging.getLogger("sagakit.web")

ReadinessCheck = Callable[[], Awaitable[Any]]


# --- JSON bodies -------------------------------------------------------------------------------


def _no_duplicate_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    seen: dict[str, Any] = {}
    for key, value in pairs:
        if key in seen:
            raise ApiError(400, "Duplicate key", f"The key {key!r} is given twice in one JSON "
                           "object; send it once.", field=key)
        seen[key] = value
    return seen


def _no_constant(name: str) -> Any:
    raise ApiError(400, "Not a JSON number", f"{name} is not a JSON number (RFC 8259); send a "
                   "finite number.", field="body")


def parse_json(body: bytes) -> Any:
    """A JSON body, strictly: a repeated key or NaN/Infinity is an :class:`ApiError` (400).

    Python's json module (and so Starlette's) keeps the last of two equal keys and reads NaN and
    Infinity; two parsers (a proxy, a service) disagreeing on such a body is how a checked value
    and a used value come apart, so neither is accepted. Malformed JSON is left to FastAPI's own
    400 (:func:`_on_validation_error`); a body that is not UTF-8 is :class:`JsonRoute`'s.
    """
    return json.loads(body, object_pairs_hook=_no_duplicate_keys, parse_constant=_no_constant)


def _is_json(content_type: str) -> bool:
    message = Message()
    message["content-type"] = content_type
    subtype = message.get_content_subtype()
    return message.get_content_maintype() == "application" and (
        subtype == "json" or subtype.endswith("+json"))


class JsonRoute(APIRoute):
    """A route whose body (if it declares one) is JSON, read by :func:`parse_json`.

    A body of another media type, or encoded (``Content-Encoding``), is 415 (FastAPI would try
    to validate its bytes: a 422 that blames the fields); one that is not UTF-8 is a 400 naming
    ``body`` (FastAPI's names nothing); form routes and routes reading the request themselves
    (the OAuth token endpoint) are left as they are. Every router of every service uses this
    class.
    """

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()
        if self.body_field is None:
            return handler
        if isinstance(self.body_field.field_info, params.Form):
            async def whole_form(request: Request) -> Response:
                # Read here, so that a body past its deadline is the 408 it is (RequestContext),
                # not the 400 FastAPI makes of any error while it parses a form.
                await request.body()
                return await handler(request)

            return whole_form

        async def strict_json(request: Request) -> Response:
            if body := await request.body():
                content_type = request.headers.get("content-type", "")
                if not _is_json(content_type):
                    raise ApiError(415, "Unsupported Media Type",
                                   f"This endpoint takes application/json, not "
                                   f"{content_type or 'a body without a Content-Type'}.",
                                   field="Content-Type", headers={"Accept": "application/json"})
                coding = request.headers.get("content-encoding", "").strip().lower()
                if coding not in ("", "identity"):  # RFC 9110 §15.5.16: 415, and what would do
                    raise ApiError(415, "Unsupported Media Type",
                                   f"This endpoint takes its JSON as it is, not {coding}-encoded.",
                                   field="Content-Encoding",
                                   headers={"Accept-Encoding": "identity"})
                # What FastAPI's request.json() returns; if the body is no JSON, FastAPI parses it
                # again and answers its malformed-JSON 400.
                try:
                    request._json = parse_json(body)
                except json.JSONDecodeError:
                    pass
                except UnicodeDecodeError:  # FastAPI's answer would name no field
                    raise ApiError(400, "Malformed JSON", "The request body is not UTF-8, as "
                                   "JSON must be (RFC 8259).", field="body") from None
                # FastAPI's own parse would fail the same way, as a 500: a body nested too
                # deeply, or an integer of more digits than Python converts (4300).
                except RecursionError:
                    raise ApiError(400, "Malformed JSON", "The request body is nested too "
                                   "deeply to be read.", field="body") from None
                except ValueError:  # Python's own message tells of sys.set_int_max_str_digits
                    raise ApiError(400, "Malformed JSON", "The request body cannot be read: a "
                                   "number in it has too many digits.", field="body") from None
            return await handler(request)

        return strict_json

    # HEAD (RFC 9110 §9.3.2: every general-purpose server supports GET and HEAD): a GET route
    # takes it too, runs as for GET and sends only the head. Starlette's own routes do so;
    # FastAPI's leave HEAD out, and adding it to ``methods`` would put a HEAD operation of
    # every GET into the OpenAPI documents.
    def matches(self, scope: Scope) -> tuple[Match, Scope]:
        if _head_of_get(self, scope):
            return super().matches({**scope, "method": "GET"})
        return super().matches(scope)

    async def handle(self, scope: Scope, receive: Receive, send: Send) -> None:
        if not _head_of_get(self, scope):
            await super().handle(scope, receive, send)
            return
        done = False

        async def head_only(message: AsgiMessage) -> None:
            # The status and headers (Content-Length included), then the end at once: uvicorn
            # writes no body for HEAD, and a response ended is a disconnect to the endpoint's
            # receive(), so a live event stream stops instead of running for nobody.
            nonlocal done
            if done:
                return
            if message["type"] == "http.response.start":
                await send(message)
                await send({"type": "http.response.body", "body": b"", "more_body": False})
                done = True

        await self.app(scope, receive, head_only)


def _head_of_get(route: APIRoute, scope: Scope) -> bool:
    return (scope["type"] == "http" and scope["method"] == "HEAD"
            and "GET" in (route.methods or ()))


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
    response = problem(exc.status, exc.title, exc.detail, errors, **exc.extra)
    response.headers.update(exc.headers)
    return response


def allowed_methods(request: Request) -> str:
    """Every method some route of the app takes on this request's path, for a 405's ``Allow``.

    Starlette's router answers a 405 with the methods of the first route whose path matched, so
    a path with a GET route and a PUT route of its own would name only GET (RFC 9110 asks for
    all of them).
    """
    routes = [r for r in request.app.router.routes if not isinstance(r, Mount)]  # any method
    return ", ".join(
        method for method in _METHODS
        if any(route.matches({**request.scope, "method": method})[0] is Match.FULL
               for route in routes))


_METHODS = ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE")


async def _on_http_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, StarletteHTTPException)
    titles = {404: "Not Found", 405: "Method Not Allowed"}  # RFC 9110's, as the gateway's
    blamed = {404: "path", 405: "method"}.get(exc.status_code)
    response = problem(exc.status_code, titles.get(exc.status_code, "HTTP error"),
                       str(exc.detail),
                       [{"field": blamed, "message": str(exc.detail)}] if blamed else None)
    response.headers.update(exc.headers or {})
    if exc.status_code == 405:  # RFC 9110: a 405 must name what the path takes
        response.headers["Allow"] = allowed_methods(request) or response.headers.get("Allow", "")
    return response


def _unexpected(exc: Exception) -> JSONResponse:
    # A store that cannot be reached (down, restarting, out of connection slots, its name gone
    # from DNS) makes the service unavailable for a moment: 503 with Retry-After tells a client
    # to try again, a 500 would not.
    outage = is_outage(exc)
    if outage or isinstance(exc, asyncpg.exceptions.InternalClientError):
        # asyncpg's InternalClientError is its protocol's state gone wrong, seen when a
        # database stops mid-statement (sqlalchemy#13241 counts it in ~4 % of such cuts): the
        # same retry helps. Logged with its traceback, in case it ever is a bug of ours. Not
        # an outage for the consumers (sagakit.consuming.OUTAGE): there a retry comes anyway,
        # and a bug that raises it every time is parked after the last, not retried for ever.
        log.warning("store unavailable: %r", exc, exc_info=None if outage else exc)
        response = problem(503, "Service unavailable",
                           "A backing store is unavailable; retry shortly (with the same "
                           "Idempotency-Key for an order).")
        response.headers["Retry-After"] = "1"
        return response
    log.error("unhandled error", exc_info=exc)
    return problem(500, "Internal error", "Something went wrong; the request id identifies it.")


class JsonErrorsHttpProtocol(HttpToolsProtocol):
    """uvicorn's HTTP protocol, with its one plain-text answer in the JSON shape of every other.

    A request uvicorn's parser refuses (a control byte in a header value, a raw non-ASCII byte
    in the target: nginx passes both on) never reaches the app; uvicorn answers it with a
    ``text/plain`` 400 of its own. This is that 400, as a problem document. Which header or
    byte was to blame the parser does not say, so the field is the request itself.
    """

    def send_400_response(self, msg: str) -> None:
        body = json.dumps({"type": "about:blank", "title": "Bad Request", "status": 400,
                           "detail": f"{msg} A header holds a control character, or the "
                           "target a byte outside ASCII (percent-encode it).",
                           "errors": [{"field": "request", "message": msg}]}).encode()
        content = [b"HTTP/1.1 400 Bad Request\r\n"]
        for name, value in self.server_state.default_headers:
            content.extend([name, b": ", value, b"\r\n"])
        content.extend([b"content-type: application/json\r\n",
                        b"content-length: " + str(len(body)).encode("ascii") + b"\r\n",
                        b"connection: close\r\n\r\n", body])
        self.transport.write(b"".join(content))
        self.transport.close()


# A request's whole body must have arrived this long after its headers did (a body trickled a
# byte every few seconds would hold a connection and a task for as long as the client likes):
# then the answer is 408, as JSON. Bodies here are small (64 KiB at most, at the gateway). Below
# the gateway's default pause limit (GATEWAY_CLIENT_TIMEOUT, 10 s), so that a body that stops
# altogether is answered too, before nginx would close the connection without a word.
BODY_SECONDS = 8.0


def _body_within(receive: Receive, seconds: float) -> Receive:
    """``receive``, with a deadline on the request body: :class:`ApiError` 408 once it passes.
    After the body's last part, messages (a disconnect an event stream waits for) are not
    timed."""
    deadline = asyncio.get_running_loop().time() + seconds
    whole = False

    async def receiving() -> AsgiMessage:
        nonlocal whole
        if whole:
            return await receive()
        try:
            async with asyncio.timeout_at(deadline):
                message = await receive()
        except TimeoutError:
            raise ApiError(408, "Request Timeout", f"The request body did not arrive within "
                           f"{seconds:g} s of its headers.", field="body",
                           headers={"Connection": "close"}) from None
        whole = message["type"] != "http.request" or not message.get("more_body", False)
        return message

    return receiving


class RequestContext:
    """Pure ASGI middleware: tag logs with the request id (the trace is OpenTelemetry's); the
    request is a unit of work (sagakit.units); its body must arrive within
    :data:`BODY_SECONDS`.

    The gateway passes a body on as it arrives (``proxy_request_buffering off``), so that this
    deadline, not nginx's pause between two reads (which ends a connection with no answer at
    all), is what a slow body meets: a total, answered with a JSON 408, on every path to the
    service."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        receive = _body_within(receive, BODY_SECONDS)
        headers = dict(scope["headers"])
        request_id = headers.get(b"x-request-id")
        logs.request_id_var.set(request_id.decode() if request_id else None)
        logs.order_id_var.set(None)
        started = False

        async def sending(message: AsgiMessage) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        with units.unit_of_work():  # events the request wrote wake the relay once it is done
            try:
                await self.app(scope, receive, sending)
            except Exception as exc:
                # Answered here, not by an exception handler: Starlette answers those from its
                # outermost middleware and then raises the error again, and uvicorn closes the
                # connection for it; nginx may have sent another client's request on that
                # keep-alive connection already, which then gets a 502.
                if started:
                    raise  # half an answer is out: only closing the connection says so
                await _unexpected(exc)(scope, receive, send)


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
    paths = docs_paths(service)
    app = FastAPI(
        # Strict JSON bodies (JsonRoute), and no redirect for a trailing slash: Starlette's is
        # an absolute URL built from the client's Host header (the gateway redirects relatively).
        redirect_slashes=False,
        title=title,
        description=f"{description}\n\nIts events (consumed and published): "
        f"[AsyncAPI]({paths['asyncapi_html']}) ([JSON]({paths['asyncapi']})).",
        version="1.0.0",
        lifespan=lifespan,
        docs_url=None,  # FastAPI's page loads Swagger UI from a CDN: add_swagger_ui's does not
        redoc_url=None,
        openapi_url=paths["openapi"],
    )
    app.router.route_class = JsonRoute
    add_swagger_ui(app, service)
    app.add_exception_handler(RequestValidationError, _on_validation_error)
    app.add_exception_handler(ApiError, _on_api_error)
    app.add_exception_handler(StarletteHTTPException, _on_http_error)
    app.add_middleware(RequestContext)
    telemetry.instrument_app(app)
    auth.document(app)

    @app.get("/health/live", tags=["health"], summary="The process is up",
             openapi_extra={"security": []})
    async def live() -> dict[str, str]:
        return {"status": "live", "service": service}

    @app.get("/health/ready", tags=["health"], summary="Database and broker reachable",
             openapi_extra={"security": []})
    async def ready() -> JSONResponse:
        checks = readiness(app)
        with telemetry.untraced():  # probes come every few seconds: not worth a trace each
            results = await asyncio.gather(
                *(within(2.0, check()) for check in checks.values()),
                return_exceptions=True,
            )
        # The probe is public (through the gateway too): the error's kind, not its text, which
        # may name hosts and addresses; the text goes to the log.
        report = {}
        for name, r in zip(checks, results, strict=True):
            if isinstance(r, BaseException):
                log.warning("readiness check %s failing: %r", name, r)
                report[name] = f"failing: {type(r).__name__}"
            else:
                report[name] = "ok" if r is not False else "failing"
        ok = all(v == "ok" for v in report.values())
        return JSONResponse(
            {"status": "ready" if ok else "not ready", "service": service, "checks": report},
            status_code=200 if ok else 503,
        )

    return app
