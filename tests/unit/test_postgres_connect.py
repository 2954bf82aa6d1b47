"""Opening a database connection has a deadline of its own: a database that does not answer
(a container gone, an address nobody serves) is an outage in seconds, not after a minute."""

import asyncio
import time

import pytest

from sagakit import postgres
from sagakit.consuming import is_outage


async def test_a_database_that_never_answers_is_an_outage_within_the_connect_timeout(
        monkeypatch):
    silent = await asyncio.start_server(lambda reader, writer: None, "127.0.0.1", 0)
    port = silent.sockets[0].getsockname()[1]
    monkeypatch.setattr(postgres, "CONNECT_TIMEOUT_SECONDS", 0.5)
    started = time.monotonic()
    try:
        with pytest.raises(Exception) as caught:  # noqa: PT011 (which one is the point below)
            await postgres.create_pool(f"postgresql://nobody@127.0.0.1:{port}/none", min_size=1)
    finally:
        silent.close()
    assert time.monotonic() - started < 5  # asyncpg's own default would wait 60 s
    assert is_outage(caught.value), repr(caught.value)
