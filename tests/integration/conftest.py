"""What the integration tests share: one service as a process, a tap on ``saga.events``, and a
publisher that publishes the way the services' outbox relays do.

Each test module runs its service (``python -m <service>``) on things of its own, re-created
empty for every run, so nothing has to be created by hand first and nothing an earlier run left
counts: a RabbitMQ vhost (``rabbitmq_url``), and a PostgreSQL database or a Redis database index
from the session's ``infra``. The e2e stack runs on the vhost ``saga_test`` for the whole session
(pytest runs tests/e2e first); on a vhost of its own, a module's messages never reach its
consumers, nor theirs this module's queues.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import inspect
import os
import signal
import socket
import sys
import tempfile
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import aio_pika
import asyncpg
import httpx
import orjson
import pytest
from faststream.rabbit import RabbitBroker

from identity import keys
from identity.tokens import Signer
from sagakit import postgres
from sagakit.envelope import OutgoingEvent
from sagakit.outbox import EventPublisher
from sagakit.topology import EVENTS

if TYPE_CHECKING:
    from tests.conftest import Infra

DEADLINE = 15.0  # seconds any awaited outcome may take

Publish = Callable[[OutgoingEvent], Awaitable[None]]


@functools.cache
def signing() -> tuple[str, Signer]:
    """A key set for this test session: its public file (the services' AUTH_JWKS_FILE) and a
    signer standing in for the identity service, which the integration tests do not run."""
    directory = Path(tempfile.mkdtemp(prefix="saga-keys-"))
    keys.init(directory)
    return str(directory / keys.PUBLIC), Signer(keys.load(directory), 3600)


def operator_token() -> str:
    """What the operator console would get: scope ops (every order, the kitchen, dead letters)."""
    return str(signing()[1].issue("ops-console", ["ops"], "client")["access_token"])


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


async def until(condition: Callable[[], Any], what: str, timeout: float = DEADLINE,
                detail: Callable[[], str] = str) -> None:
    """Poll ``condition`` (plain or async) until it holds; after ``timeout`` seconds, fail
    naming ``what`` and adding ``detail()``. For what gives no event to wait on: a log file, an
    HTTP resource."""
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        result = condition()
        if inspect.isawaitable(result):
            result = await result
        if result:
            return
        if asyncio.get_running_loop().time() > deadline:
            pytest.fail(f"timed out after {timeout}s waiting for {what}{detail()}")
        await asyncio.sleep(0.05)


# --- the service under test, as a process ------------------------------------------------------


class ServiceProcess:
    """``python -m <service>`` on a free port with the given environment; its JSON log in a file.

    ``async with`` starts it (ready once ``/health/ready`` answers 200) and stops it at the end.
    """

    def __init__(self, service: str, env: Mapping[str, str], log_path: Path) -> None:
        self.service, self.log_path = service, log_path
        self.port = free_port()
        self.base_url = f"http://127.0.0.1:{self.port}"
        prefix = service.upper()
        self.env = {
            **os.environ,
            "LOG_LEVEL": "INFO",  # the tests read the service's INFO lines
            f"{prefix}_HTTP_HOST": "127.0.0.1",
            f"{prefix}_HTTP_PORT": str(self.port),
            "AUTH_JWKS_FILE": signing()[0],
            **env,
        }
        self.process: asyncio.subprocess.Process | None = None
        # As the operator: the API's authorization is the e2e tests' (tests/e2e/test_authz.py).
        self.http = httpx.AsyncClient(base_url=self.base_url, timeout=10,
                                      headers={"Authorization": f"Bearer {operator_token()}"})

    async def start(self, timeout: float = 30.0) -> ServiceProcess:
        with self.log_path.open("ab") as log:
            self.process = await asyncio.create_subprocess_exec(
                sys.executable, "-m", self.service, env=self.env, stdout=log,
                stderr=asyncio.subprocess.STDOUT,
            )
        try:
            await self._until_ready(timeout)
        except BaseException:
            await self.kill()
            raise
        return self

    async def _until_ready(self, timeout: float) -> None:
        assert self.process is not None
        deadline = asyncio.get_running_loop().time() + timeout
        last: object = None
        while True:
            if self.process.returncode is not None:
                pytest.fail(f"python -m {self.service} exited with {self.process.returncode}:\n"
                            f"{self.tail()}")
            try:
                response = await self.http.get("/health/ready")
                if response.status_code == 200:
                    return
                last = response.text
            except httpx.TransportError as exc:
                last = exc
            if asyncio.get_running_loop().time() > deadline:
                pytest.fail(f"{self.service} not ready within {timeout}s ({last!r}):\n"
                            f"{self.tail()}")
            await asyncio.sleep(0.1)  # nothing to wait on before it listens

    async def stop(self, timeout: float = 30.0) -> bool:
        """SIGTERM, as an orchestrator stops it; True when it shut down gracefully.

        (uvicorn re-raises the signal after its graceful shutdown, so the exit status is
        "killed by SIGTERM" either way; the log tells whether the lifespan completed.)
        """
        assert self.process is not None
        if self.process.returncode is None:
            self.process.send_signal(signal.SIGTERM)
        try:
            async with asyncio.timeout(timeout):
                code = await self.process.wait()
        except TimeoutError:
            await self.kill()
            return False
        await self.http.aclose()
        return code in (0, -signal.SIGTERM) and any(
            r.get("message") == "Application shutdown complete." for r in self.log_records()
        )

    async def kill(self) -> None:
        assert self.process is not None
        if self.process.returncode is None:
            self.process.kill()
        await self.process.wait()
        await self.http.aclose()

    async def __aenter__(self) -> ServiceProcess:
        return await self.start()

    async def __aexit__(self, *_: object) -> None:
        if self.running:
            await self.stop()

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.returncode is None

    def logs(self) -> str:
        return self.log_path.read_text(errors="replace")

    def tail(self, count: int = 30) -> str:
        return "\n".join(self.logs().splitlines()[-count:])

    def log_records(self) -> list[dict[str, Any]]:
        records = []
        for line in self.logs().splitlines():
            with contextlib.suppress(orjson.JSONDecodeError):
                records.append(orjson.loads(line))
        return records

    async def logged(self, event_id: object, words: str) -> None:
        """Wait until the service logs ``words`` while handling the event ``event_id``."""
        def found() -> bool:
            return any(r.get("event_id") == str(event_id) and words in r.get("message", "")
                       for r in self.log_records())

        await until(found, f"a log line '{words}' for event {event_id}",
                    detail=lambda: f"; log:\n{self.tail()}")


# --- the broker side: what the service announces, and publishing as its neighbours do ---------


@dataclass(frozen=True)
class Announced:
    """One event as it crossed ``saga.events``."""

    type: str  # the routing key, which is the CloudEvents type
    id: str  # ce-id
    subject: str  # ce-subject: the order id, or a card's token
    headers: dict[str, Any]
    body: dict[str, Any]
    message: aio_pika.abc.AbstractIncomingMessage = field(repr=False, compare=False)

    @property
    def order_id(self) -> str | None:
        order_id = self.body.get("order_id")
        return None if order_id is None else str(order_id)

    @property
    def trace_id(self) -> str | None:
        traceparent = self.headers.get("traceparent")
        return str(traceparent).split("-")[1] if traceparent else None


class EventTap:
    """An exclusive queue bound to ``saga.events`` with some routing keys; keeps all it sees."""

    def __init__(self, channel: aio_pika.abc.AbstractChannel) -> None:
        self.channel = channel
        self.seen: list[Announced] = []
        self._arrived = asyncio.Event()

    @classmethod
    @contextlib.asynccontextmanager
    async def open(cls, url: str, keys: Sequence[str]) -> AsyncIterator[EventTap]:
        connection = await aio_pika.connect(url)
        try:
            channel = await connection.channel()
            exchange = await channel.declare_exchange(  # as every service declares it
                EVENTS.name, aio_pika.ExchangeType.TOPIC, durable=True,
                arguments=EVENTS.arguments,
            )
            queue = await channel.declare_queue(exclusive=True)
            for key in keys:
                await queue.bind(exchange, routing_key=key)
            tap = cls(channel)
            await queue.consume(tap._remember, no_ack=True)
            yield tap
        finally:
            await connection.close()

    async def _remember(self, message: aio_pika.abc.AbstractIncomingMessage) -> None:
        headers = dict(message.headers)
        try:
            body = orjson.loads(message.body)
        except orjson.JSONDecodeError:
            body = {"undecodable": message.body.decode(errors="replace")}
        self.seen.append(Announced(str(message.routing_key), str(headers.get("ce-id")),
                                   str(headers.get("ce-subject")), headers, body, message))
        self._arrived.set()

    def of(self, event_type: str, subject: object) -> list[Announced]:
        return [a for a in self.seen if a.type == event_type and a.subject == str(subject)]

    def bodies(self, event_type: str, subject: object) -> list[dict[str, Any]]:
        return [a.body for a in self.of(event_type, subject)]

    def count(self, event_type: str, subject: object) -> int:
        """Distinct events (a relay may publish one twice; consumers see it once)."""
        return len({a.id for a in self.of(event_type, subject)})

    async def until(self, found: Callable[[], object], what: str,
                    timeout: float = DEADLINE) -> None:
        """Wait until ``found()`` holds, looking again as each event arrives."""
        try:
            async with asyncio.timeout(timeout):
                while not found():
                    self._arrived.clear()
                    await self._arrived.wait()
        except TimeoutError:
            recent = [(a.type, a.subject) for a in self.seen[-20:]]
            pytest.fail(f"timed out waiting for {what}; the last events seen: {recent}")

    async def until_any(self, subject: object, *event_types: str) -> None:
        """Wait until one of ``event_types`` about ``subject`` has arrived."""
        await self.until(lambda: any(self.of(t, subject) for t in event_types),
                         f"any of {event_types} for {subject}")

    async def wait_for(self, event_type: str, subject: object) -> Announced:
        """The first ``event_type`` about ``subject``, waiting for it if need be."""
        await self.until_any(subject, event_type)
        return self.of(event_type, subject)[0]

    async def next(self, event_type: str, subject: object) -> dict[str, Any]:
        """The body of the first ``event_type`` about ``subject``, waiting for it if need be."""
        return (await self.wait_for(event_type, subject)).body


@contextlib.asynccontextmanager
async def event_publisher(url: str) -> AsyncIterator[EventPublisher]:
    """The relays' publish path (sagakit's EventPublisher on a FastStream broker), for tests
    that play a neighbour of the service under test."""
    broker = RabbitBroker(url)
    await broker.connect()
    try:
        yield EventPublisher(broker)
    finally:
        await broker.stop()


# --- fixtures ------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def own_name(infra: Infra, request: pytest.FixtureRequest) -> str:
    """What this module names the vhost and database it owns: ``saga_test_payment`` for
    test_payment_service.py (after the e2e vhost, so a side-by-side session has its own)."""
    module = request.module.__name__.rpartition(".")[2]
    return f"{infra.namespace}_{module.removeprefix('test_').removesuffix('_service')}"


SERVICES = Path(__file__).parents[2] / "services"


async def _migrated_pool(infra: Infra, name: str, role: str, service: str,
                         size: int = 4) -> asyncpg.Pool:
    created = await postgres.create_pool(infra.fresh_database(name, role, role), max_size=size)
    await postgres.migrate(created, [SERVICES / service / service / "migrations"])
    return created


@pytest.fixture(scope="module")
async def order_db(infra: Infra, own_name: str) -> AsyncIterator[asyncpg.Pool]:
    """A fresh database of the order service's, migrated, for tests of its store."""
    pool = await _migrated_pool(infra, own_name, "order_svc", "order")
    yield pool
    await pool.close()


@pytest.fixture(scope="module")
async def payment_db(infra: Infra, own_name: str) -> AsyncIterator[asyncpg.Pool]:
    """A fresh database of the payment service's, migrated, for tests of its store."""
    pool = await _migrated_pool(infra, f"{own_name}_payment", "payment_svc", "payment")
    yield pool
    await pool.close()


@pytest.fixture(scope="module")
async def identity_db(infra: Infra, own_name: str) -> AsyncIterator[asyncpg.Pool]:
    """A fresh database of the identity service's, migrated; room for 25 requests at once."""
    pool = await _migrated_pool(infra, f"{own_name}_identity", "identity_svc", "identity", 25)
    yield pool
    await pool.close()


@pytest.fixture(scope="module")
def rabbitmq_url(infra: Infra, own_name: str) -> str:
    """A vhost of this module's own, re-created empty."""
    return infra.fresh_vhost(own_name)


@pytest.fixture(scope="module")
async def tap(rabbitmq_url: str, tap_keys: Sequence[str]) -> AsyncIterator[EventTap]:
    """What the service announces: ``saga.events`` with the routing keys the module's
    ``tap_keys`` fixture names."""
    async with EventTap.open(rabbitmq_url, tap_keys) as tapped:
        yield tapped


@pytest.fixture(scope="module")
async def publish(rabbitmq_url: str) -> AsyncIterator[Publish]:
    """Publish an :class:`OutgoingEvent` as its real publisher's relay would."""
    async with event_publisher(rabbitmq_url) as publisher:
        yield publisher.publish


# A module that runs one service provides it as its ``service`` fixture; these build on it.


@pytest.fixture(scope="module")
def http(service: ServiceProcess) -> httpx.AsyncClient:
    return service.http


@pytest.fixture
async def dead_letters(service: ServiceProcess, tap: EventTap) -> aio_pika.abc.AbstractQueue:
    """The service's parking queue, emptied of what earlier tests left in it."""
    queue = await tap.channel.get_queue(f"{service.service}.dead-letters")
    await queue.purge()
    return queue
