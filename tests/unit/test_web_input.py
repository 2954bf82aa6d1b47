"""The shared input rules (sagakit.web): visible text only, strict JSON bodies, JSON media types.

Each runs against a small app made by the same ``create_app`` every service uses, through an
in-process ASGI transport: no server, milliseconds.
"""

from __future__ import annotations

import asyncio
import gzip
import importlib
import json
import re
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from typing import Any

import httpx
import pytest
from fastapi import APIRouter, FastAPI, Form, params
from fastapi.responses import StreamingResponse
from fastapi.routing import APIRoute
from pydantic import BaseModel, ConfigDict, Field

from sagakit import web
from sagakit.text import VISIBLE_TEXT, Email, Text, visible
from sagakit.web import JsonRoute, create_app, parse_json


@asynccontextmanager
async def _no_lifespan(_app: FastAPI) -> AsyncIterator[None]:
    yield


class Person(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: Text = Field(min_length=1, max_length=50)
    email: Email
    score: float = 0.0


def _app() -> FastAPI:
    app = create_app("probe", title="probe", description="probe", lifespan=_no_lifespan,
                     readiness=lambda _app: {})
    router = APIRouter(prefix="/api", route_class=JsonRoute)

    @router.post("/people")
    async def add(person: Person) -> Person:
        return person

    @router.post("/login")
    async def login(username: str = Form()) -> dict[str, str]:
        return {"username": username}

    @router.get("/people")
    async def people() -> list[Person]:
        return [Person.model_validate_json(GOOD)]

    @router.get("/ticks")  # a stream that never ends by itself, as an order's live events
    async def ticks() -> StreamingResponse:
        async def forever() -> AsyncIterator[bytes]:
            while True:
                yield b"tick\n"
                await asyncio.sleep(0.01)

        return StreamingResponse(forever(), media_type="text/plain")

    app.include_router(router)

    @app.post("/direct")  # a route on the app itself: create_app makes it a JsonRoute too
    async def direct(person: Person) -> Person:
        return person

    return app


APP = _app()


async def _post(path: str, content: bytes | str, content_type: str | None = "application/json",
                ) -> httpx.Response:
    transport = httpx.ASGITransport(app=APP, raise_app_exceptions=False)
    headers = {"content-type": content_type} if content_type else {}
    async with httpx.AsyncClient(transport=transport, base_url="http://probe") as client:
        return await client.post(path, content=content, headers=headers)


def _fields(response: httpx.Response) -> list[str]:
    return [e["field"] for e in response.json().get("errors", [])]


GOOD = '{"name": "Ana Souza", "email": "ana@example.com"}'


async def test_a_good_body_passes() -> None:
    response = await _post("/api/people", GOOD)
    assert response.status_code == 200, response.text
    assert response.json()["name"] == "Ana Souza"


# --- Visible text --------------------------------------------------------------------------------

INVISIBLE = {
    "NUL": "\u0000", "CR": "\r", "LF": "\n", "TAB": "\t", "DEL": "\u007f", "C1 NEL": "\u0085",
    "soft hyphen": "\u00ad", "right-to-left override": "\u202e", "left-to-right mark": "\u200e",
    "right-to-left isolate": "\u2067", "arabic letter mark": "\u061c",
    "zero-width space": "\u200b", "zero-width joiner": "\u200d", "word joiner": "\u2060",
    "byte order mark": "\ufeff", "line separator": "\u2028", "paragraph separator": "\u2029",
    "tag character": "\U000e0041",
}


@pytest.mark.parametrize("char", INVISIBLE.values(), ids=INVISIBLE.keys())
async def test_control_and_format_characters_in_a_name_are_422_naming_the_field(char: str) -> None:
    # ensure_ascii: each as a \u escape (a pair of them beyond the BMP), as a client sends it.
    body = json.dumps({"name": f"Ana{char}Souza", "email": "ana@example.com"}, ensure_ascii=True)
    response = await _post("/api/people", body)
    assert response.status_code == 422, response.text
    assert _fields(response) == ["name"]
    assert f"U+{ord(char):04X}" in response.json()["errors"][0]["message"]


async def test_a_lone_surrogate_is_refused() -> None:
    response = await _post("/api/people", GOOD.replace("Ana Souza", "Ana\\ud800"))
    assert response.status_code == 422, response.text
    assert _fields(response) == ["name"]


async def test_an_invisible_character_in_an_email_is_refused_too() -> None:
    response = await _post("/api/people", GOOD.replace("ana@", "ana\\u200b@"))
    assert response.status_code == 422 and _fields(response) == ["email"]


@pytest.mark.parametrize("name", ["Ana Souza", "José Ñúñez", "Zoë O'Brien-Łukasz", "山田太郎",
                                  "محمد", "Ἀλέξανδρος", "Ana 😀"])
def test_letters_of_every_script_are_visible(name: str) -> None:
    assert visible(name) == name
    assert re.fullmatch(VISIBLE_TEXT, name)


def test_the_documented_pattern_refuses_what_the_validator_refuses_in_the_bmp() -> None:
    pattern = re.compile(VISIBLE_TEXT)
    for char in INVISIBLE.values():
        if ord(char) <= 0xFFFF:
            assert not pattern.fullmatch(f"a{char}b"), f"U+{ord(char):04X}"
            with pytest.raises(ValueError, match=f"U\\+{ord(char):04X}"):
                visible(f"a{char}b")


def test_the_openapi_document_carries_the_pattern() -> None:
    schema = APP.openapi()["components"]["schemas"]["Person-Input"]["properties"]
    assert schema["name"]["pattern"] == VISIBLE_TEXT
    assert schema["name"]["maxLength"] == 50


# --- Strict JSON -----------------------------------------------------------------------------


async def test_a_duplicate_key_is_400_naming_the_key() -> None:
    response = await _post("/api/people", '{"name": "Ana", "name": "Eve", '
                                          '"email": "ana@example.com"}')
    assert response.status_code == 400, response.text
    assert _fields(response) == ["name"]
    assert response.json()["title"] == "Duplicate key"


async def test_a_duplicate_key_in_a_nested_object_is_400_too() -> None:
    with pytest.raises(Exception, match="'sku'"):
        parse_json(b'{"items": [{"sku": "a", "sku": "b"}]}')


@pytest.mark.parametrize("constant", ["NaN", "Infinity", "-Infinity"])
async def test_nan_and_infinity_are_not_json_numbers(constant: str) -> None:
    response = await _post("/api/people", GOOD[:-1] + f', "score": {constant}}}')
    assert response.status_code == 400, response.text
    assert _fields(response) == ["body"]
    assert constant.lstrip("-") in response.json()["detail"]


async def test_malformed_json_stays_a_400_naming_the_body() -> None:
    response = await _post("/api/people", '{"name": ')
    assert response.status_code == 400 and _fields(response) == ["body"]


@pytest.mark.parametrize("path", ["/api/people", "/direct"])
async def test_a_body_that_is_not_utf8_is_a_400_naming_the_body(path: str) -> None:
    # (A body in UTF-16 or -32 with its byte order mark Python's parser reads, as RFC 8259
    # lets a parser do: the same text, nothing two parsers could read differently.)
    response = await _post(path, b'{"name": "Ana \xff", "email": "ana@example.com"}')
    assert response.status_code == 400, response.text
    assert _fields(response) == ["body"] and "UTF-8" in response.json()["detail"]


async def test_an_encoded_body_is_a_415_naming_the_content_encoding() -> None:
    transport = httpx.ASGITransport(app=APP, raise_app_exceptions=False)
    async with httpx.AsyncClient(transport=transport, base_url="http://probe") as client:
        gzipped = await client.post("/api/people", content=gzip.compress(GOOD.encode()), headers={
            "content-type": "application/json", "content-encoding": "gzip"})
        plain = await client.post("/api/people", content=GOOD, headers={
            "content-type": "application/json", "content-encoding": "identity"})
    assert gzipped.status_code == 415, gzipped.text
    assert _fields(gzipped) == ["Content-Encoding"]
    assert gzipped.headers["accept-encoding"] == "identity"
    assert plain.status_code == 200, plain.text


@pytest.mark.parametrize("path", ["/api/people", "/direct"])
async def test_json_nested_past_the_parsers_depth_is_a_400_not_a_500(path: str) -> None:
    # 10 kB, far below the body limit: Python's parser gives up on the depth (RecursionError),
    # which FastAPI's own parse would let through as a 500.
    response = await _post(path, "[" * 5000 + "]" * 5000)
    assert response.status_code == 400, response.text
    assert _fields(response) == ["body"]


@pytest.mark.parametrize("path", ["/api/people", "/direct"])
async def test_an_integer_of_more_digits_than_python_reads_is_a_400_not_a_500(path: str) -> None:
    body = '{"name": "Ana Souza", "email": "ana@example.com", "score": 1' + "1" * 4400 + "}"
    response = await _post(path, body)
    assert response.status_code == 400, response.text
    assert _fields(response) == ["body"]
    assert "too many digits" in response.json()["detail"]
    assert "sys." not in response.text  # no advice on Python's settings to a client


def _routes(routes: list[Any], prefix: str = "") -> Iterator[tuple[str, APIRoute]]:
    for route in routes:
        included = getattr(route, "original_router", None)  # FastAPI keeps included routers
        if included is not None:
            yield from _routes(included.routes, prefix + route.include_context.prefix)
        elif isinstance(route, APIRoute):
            yield prefix + route.path, route


def test_every_route_of_every_service_that_takes_a_body_reads_it_strictly() -> None:
    # A router made without route_class=JsonRoute is a plain APIRoute: a repeated key passes
    # and a text/plain body is a 422 instead of a 415 (the fault switches and sign-up once were).
    with_body = []
    for service in ("order", "payment", "production", "identity"):
        app = importlib.import_module(f"{service}.app").build()
        for path, route in _routes(app.routes):
            if route.body_field is None or isinstance(route.body_field.field_info, params.Form):
                continue
            with_body.append(path)
            assert isinstance(route, JsonRoute), f"{service} {path} is a {type(route).__name__}"
    assert {"/api/v1/orders", "/api/v1/customers", "/api/v1/payments/faults",
            "/api/v1/production/stock/{sku}"} <= set(with_body)


# --- Media types -----------------------------------------------------------------------------


@pytest.mark.parametrize("content_type", ["text/plain", "application/x-www-form-urlencoded",
                                          "multipart/form-data; boundary=x", "application/xml",
                                          None])
async def test_a_json_endpoint_refuses_other_media_types_with_415(content_type: str | None,
                                                                   ) -> None:
    for path in ("/api/people", "/direct"):
        response = await _post(path, GOOD, content_type)
        assert response.status_code == 415, (path, response.text)
        assert _fields(response) == ["Content-Type"]
        assert response.headers["content-type"].startswith("application/json")


@pytest.mark.parametrize("content_type", ["application/json", "application/json; charset=utf-8",
                                          "application/merge-patch+json"])
async def test_json_media_types_are_accepted(content_type: str) -> None:
    assert (await _post("/api/people", GOOD, content_type)).status_code == 200


async def test_a_form_endpoint_stays_a_form_endpoint() -> None:
    response = await _post("/api/login", "username=ana", "application/x-www-form-urlencoded")
    assert response.status_code == 200 and response.json() == {"username": "ana"}


async def test_no_redirect_is_built_from_the_host_header() -> None:
    transport = httpx.ASGITransport(app=APP, raise_app_exceptions=False)
    async with httpx.AsyncClient(transport=transport, base_url="http://evil.example") as client:
        response = await client.get("/health/live/")
    assert response.status_code == 404
    assert "location" not in response.headers


async def test_a_failing_readiness_check_names_its_kind_not_its_addresses() -> None:
    async def database() -> bool:
        raise ConnectionRefusedError("connect call failed ('10.1.2.3', 5432)")

    app = create_app("probe", title="probe", description="probe", lifespan=_no_lifespan,
                     readiness=lambda _app: {"database": database})
    transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
    async with httpx.AsyncClient(transport=transport, base_url="http://probe") as client:
        response = await client.get("/health/ready")
    assert response.status_code == 503
    assert response.json()["checks"] == {"database": "failing: ConnectionRefusedError"}
    assert "10.1.2.3" not in response.text


@pytest.mark.parametrize("path", ["/api/people", "/api/login"])
async def test_a_body_still_coming_at_the_deadline_is_a_408_naming_the_body(
    path: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(web, "BODY_SECONDS", 0.3)

    async def trickle() -> AsyncIterator[bytes]:
        for byte in GOOD.encode():
            await asyncio.sleep(0.05)  # each byte in time; the whole body, not
            yield bytes([byte])

    transport = httpx.ASGITransport(app=APP, raise_app_exceptions=True)
    content_type = "application/json" if path == "/api/people" else \
        "application/x-www-form-urlencoded"
    async with httpx.AsyncClient(transport=transport, base_url="http://probe") as client:
        response = await client.post(path, content=trickle(),
                                     headers={"content-type": content_type})
    assert response.status_code == 408, response.text
    assert _fields(response) == ["body"]
    assert response.headers["connection"] == "close"


async def test_a_body_in_time_is_read_whole() -> None:
    async def quick() -> AsyncIterator[bytes]:
        for part in (GOOD[:10], GOOD[10:]):
            yield part.encode()

    transport = httpx.ASGITransport(app=APP, raise_app_exceptions=True)
    async with httpx.AsyncClient(transport=transport, base_url="http://probe") as client:
        response = await client.post("/api/people", content=quick(),
                                     headers={"content-type": "application/json"})
    assert response.status_code == 200, response.text


async def test_a_405_names_every_method_of_the_path_not_only_the_first_routes() -> None:
    transport = httpx.ASGITransport(app=APP, raise_app_exceptions=True)
    async with httpx.AsyncClient(transport=transport, base_url="http://probe") as client:
        two_routes = await client.patch("/api/people")
        one_route = await client.get("/api/login")
    assert two_routes.status_code == 405 and two_routes.json()["status"] == 405
    assert two_routes.headers.get_list("allow") == ["GET, HEAD, POST"]
    assert two_routes.json()["errors"][0]["field"] == "method"
    assert two_routes.json()["title"] == "Method Not Allowed"  # RFC 9110's, as the gateway's
    assert one_route.status_code == 405 and one_route.headers["allow"] == "POST"


async def test_head_is_a_get_without_its_body() -> None:
    transport = httpx.ASGITransport(app=APP, raise_app_exceptions=True)
    async with httpx.AsyncClient(transport=transport, base_url="http://probe") as client:
        got, head = await client.get("/api/people"), await client.head("/api/people")
        assert head.status_code == got.status_code == 200 and got.json()
        assert head.content == b"" and head.headers["content-length"] == \
            got.headers["content-length"] == str(len(got.content))
        assert (await client.head("/api/login")).status_code == 405  # POST only: no HEAD
        assert "head" not in APP.openapi()["paths"]["/api/people"]  # nor in the documents
        async with asyncio.timeout(5):  # a stream ends once its head is sent
            stream = await client.head("/api/ticks")
        assert stream.status_code == 200 and stream.content == b""
