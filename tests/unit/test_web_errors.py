"""The shared HTTP edge: an unreachable store is a 503 to retry, never a 500."""

import asyncio
import errno
import json
import socket
from contextlib import asynccontextmanager

import asyncpg
import httpx
import redis.exceptions
import uvicorn

from sagakit.web import JsonErrorsHttpProtocol, create_app


@asynccontextmanager
async def _no_lifespan(_app):
    yield


def _app_raising(exc: Exception):
    app = create_app("probe", title="probe", description="probe", lifespan=_no_lifespan,
                     readiness=lambda _app: {})

    @app.get("/boom")
    async def boom() -> None:
        raise exc

    return app


async def _get(app) -> httpx.Response:
    # raise_app_exceptions: an error that escapes the app (Starlette's exception handler for
    # Exception answers, then raises it again) makes uvicorn close the connection, which nginx
    # may have given another client's request already: a 502 for someone else.
    transport = httpx.ASGITransport(app=app, raise_app_exceptions=True)
    async with httpx.AsyncClient(transport=transport, base_url="http://probe") as client:
        return await client.get("/boom")


async def test_out_of_connection_slots_is_503_with_retry_after():
    response = await _get(_app_raising(asyncpg.exceptions.TooManyConnectionsError("full")))
    assert response.status_code == 503
    assert response.headers["retry-after"] == "1"
    assert response.json()["title"] == "Service unavailable"


async def test_redis_down_is_503():
    response = await _get(_app_raising(redis.exceptions.ConnectionError("refused")))
    assert response.status_code == 503


async def test_a_database_whose_name_does_not_resolve_is_503():
    """In compose, a killed database's container leaves the network's DNS: asyncpg raises
    socket.gaierror, an OSError that is not a ConnectionError."""
    for error in (socket.gaierror(socket.EAI_NONAME, "Name or service not known"),
                  OSError(errno.EHOSTUNREACH, "Connect call failed")):
        response = await _get(_app_raising(error))
        assert response.status_code == 503, error
        assert response.headers["retry-after"] == "1"


async def test_a_database_session_cut_mid_statement_is_503():
    """A PostgreSQL stopping ends its sessions: asyncpg says so as 57P01, or, when the cut
    lands between two protocol messages, as an InternalClientError of its protocol state."""
    for error in (asyncpg.exceptions.AdminShutdownError("terminating connection"),
                  asyncpg.exceptions.InvalidPasswordError("password authentication failed"),
                  asyncpg.exceptions.InternalClientError(
                      "cannot switch to state 12; another operation (2) is in progress")):
        response = await _get(_app_raising(error))
        assert response.status_code == 503, error
        assert response.headers["retry-after"] == "1"


async def test_a_bug_is_still_a_json_500():
    response = await _get(_app_raising(ZeroDivisionError("oops")))
    assert response.status_code == 500 and response.json()["status"] == 500


async def test_uvicorns_own_400_is_json_too():
    """A request uvicorn's parser refuses (a control byte in a header, a raw byte above ASCII
    in the target) never reaches the app: its 400 is sagakit.web.JsonErrorsHttpProtocol's."""
    config = uvicorn.Config(_app_raising(ZeroDivisionError()), host="127.0.0.1", port=0,
                            http=JsonErrorsHttpProtocol, log_config=None, lifespan="off")
    server = uvicorn.Server(config)
    serving = asyncio.create_task(server.serve())
    for _ in range(1000):  # uvicorn says nothing when it listens but this flag
        if server.started:
            break
        await asyncio.sleep(0.01)
    else:
        raise AssertionError("uvicorn never started")
    port = server.servers[0].sockets[0].getsockname()[1]
    try:
        for request in (b"GET /health/live HTTP/1.1\r\nHost: x\r\nX-Foo: a\x01b\r\n\r\n",
                        b"GET /health/live?x=\xff HTTP/1.1\r\nHost: x\r\n\r\n"):
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(request)
            answer = await reader.read()
            writer.close()
            head, _, body = answer.partition(b"\r\n\r\n")
            assert head.startswith(b"HTTP/1.1 400"), answer
            assert b"content-type: application/json" in head.lower()
            problem = json.loads(body)
            assert problem["status"] == 400 and problem["errors"][0]["field"] == "request"
        reader, writer = await asyncio.open_connection("127.0.0.1", port)  # and a good one
        writer.write(b"GET /health/live HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        assert (await reader.read()).startswith(b"HTTP/1.1 200")
        writer.close()
    finally:
        server.should_exit = True
        await serving
