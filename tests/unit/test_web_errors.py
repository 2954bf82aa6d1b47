"""The shared HTTP edge: an unreachable store is a 503 to retry, never a 500."""

from contextlib import asynccontextmanager

import asyncpg
import httpx
import redis.exceptions

from sagakit.web import create_app


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
    transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
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


async def test_a_bug_is_still_a_json_500():
    response = await _get(_app_raising(ZeroDivisionError("oops")))
    assert response.status_code == 500 and response.json()["status"] == 500
