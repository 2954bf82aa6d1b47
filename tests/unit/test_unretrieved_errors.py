"""Errors nothing awaited: an outage's is a warning, anything else stays asyncio's ERROR."""

import asyncio
import gc
import logging
import socket

from sagakit.runtime import unretrieved_outages


def _drop_failed_future(error: BaseException) -> None:
    """What a store client's internal future does when its connection dies and nobody awaits
    it: asyncio reports it when the future is collected."""
    loop = asyncio.new_event_loop()
    try:
        loop.set_exception_handler(unretrieved_outages)
        future = loop.create_future()
        future.set_exception(error)
        del future
        gc.collect()
    finally:
        loop.close()


def test_an_outage_nobody_awaited_is_a_warning(caplog):
    caplog.set_level(logging.DEBUG)
    for error in (ConnectionError("unexpected connection_lost() call"),
                  socket.gaierror(socket.EAI_NONAME, "Name or service not known")):
        caplog.clear()
        _drop_failed_future(error)
        said = [r for r in caplog.records if "never retrieved" in r.getMessage()]
        assert [r.levelno for r in said] == [logging.WARNING], error


def test_any_other_error_nobody_awaited_stays_an_error(caplog):
    caplog.set_level(logging.DEBUG)
    _drop_failed_future(ZeroDivisionError("a bug"))
    said = [r for r in caplog.records if "never retrieved" in r.getMessage()]
    assert [r.levelno for r in said] == [logging.ERROR]


async def test_every_service_runs_its_saga_with_this_handler():
    """`running()` (every service's lifespan) installs it on the service's loop."""
    from sagakit.runtime import running

    class Part:
        async def start(self) -> None: ...
        async def stop(self) -> None: ...
        async def stop_consuming(self) -> None: ...
        async def close(self) -> None: ...

    loop = asyncio.get_running_loop()
    before = loop.get_exception_handler()
    try:
        async with running(Part(), Part()):  # type: ignore[arg-type]
            assert loop.get_exception_handler() is unretrieved_outages
    finally:
        loop.set_exception_handler(before)
