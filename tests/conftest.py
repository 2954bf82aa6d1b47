"""Infrastructure for the tests: where RabbitMQ, PostgreSQL and Redis are, and isolation.

Where servers come from, in order:
1. the environment: ``TEST_RABBITMQ_URL``, ``TEST_POSTGRES_ADMIN_URL``, ``TEST_REDIS_URL``;
2. testcontainers, when a Docker engine answers (``docker info``);
3. the local default ports (127.0.0.1: 5672, 5432, 6379).

A missing server fails the run when ``CI=true`` (a skipped check is a check that cannot fail)
and skips the tests that need it otherwise.

Tests never touch the development stack: the e2e stack uses the RabbitMQ vhost ``saga_test``,
PostgreSQL databases with a ``_test`` suffix and Redis database 1. Integration tests get their own
pieces from :class:`Infra`: a vhost and a database per module, re-created empty each run
(``fresh_vhost``, ``fresh_database``), and a Redis database index of their own (``redis_db``).
Nothing needs to be created by hand first; vhosts are made with ``rabbitmqctl`` (on this machine,
or inside the testcontainers broker).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import os
import shutil
import socket
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from typing import Any, NoReturn
from urllib.parse import unquote, urlsplit, urlunsplit

import asyncpg
import pytest
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

TEST_VHOST = "saga_test"
LOCAL_HOSTS = {"127.0.0.1", "localhost", "::1", ""}


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--stack", choices=("native", "compose"), default=os.environ.get("SAGA_TEST_STACK",
                                                                         "native"),
        help="how the e2e and chaos tests start their stacks: native processes (default) or "
             "docker compose (tests/stacks.py; `make test-compose`)")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Tests this run cannot do are deselected: shown as such in the summary, never run, never a
    silent skip of something it could check. Natively, what only compose can build (a broker
    cluster, ``compose_only``); without ``CHAOS_FULL=1``, the chaos tests that restart the shared
    servers (``full_chaos``: ``make test-chaos``, and CI's native and compose parts, run them)."""
    def wanted(item: pytest.Item) -> bool:
        if item.get_closest_marker("compose_only") and config.getoption("--stack") != "compose":
            return False
        return not (item.get_closest_marker("full_chaos")
                    and os.environ.get("CHAOS_FULL", "") != "1")

    kept = [item for item in items if wanted(item)]
    if len(kept) != len(items):
        config.hook.pytest_deselected(items=[i for i in items if i not in kept])
        items[:] = kept


@pytest.fixture(scope="session", autouse=True)
def _test_process_spans() -> InMemorySpanExporter:
    """A tracer for the tests' own process: sagakit code run here gets real trace ids."""
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    trace.set_tracer_provider(provider)
    return exporter


@pytest.fixture
def spans(_test_process_spans: InMemorySpanExporter) -> InMemorySpanExporter:
    """The spans this test finishes in-process (cleared before it)."""
    _test_process_spans.clear()
    return _test_process_spans


@dataclass(frozen=True)
class Infra:
    rabbitmq_url: str  # with the e2e stack's vhost
    postgres_admin_url: str
    redis_url: str  # with the e2e stack's database index
    source: str
    # The testcontainers broker, when there is one: vhosts are made by rabbitmqctl inside it.
    rabbitmq_container: Any = field(default=None, repr=False, compare=False)

    @property
    def namespace(self) -> str:
        """The e2e stack's vhost; other test resources are named after it (``saga_test_order``),
        so a session run side by side with its own ``TEST_RABBITMQ_URL`` vhost gets its own."""
        return unquote(urlsplit(self.rabbitmq_url).path.strip("/")) or TEST_VHOST

    def postgres_url(self, database: str, user: str, password: str) -> str:
        parts = urlsplit(self.postgres_admin_url)
        netloc = f"{user}:{password}@{parts.hostname}:{parts.port or 5432}"
        return urlunsplit((parts.scheme, netloc, f"/{database}", "", ""))

    def fresh_vhost(self, name: str) -> str:
        """Delete and re-create the vhost ``name`` on the test broker; its AMQP URL.

        Empty each run, so nothing an earlier (or interrupted) run left behind is consumed, and
        no process on another vhost (the e2e stack on ``saga_test``) ever takes its messages.
        """
        user = unquote(urlsplit(self.rabbitmq_url).username or "guest")
        self._rabbitmqctl("delete_vhost", name, check=False)  # absent the first time
        self._rabbitmqctl("add_vhost", name)
        self._rabbitmqctl("set_permissions", "-p", name, user, ".*", ".*", ".*")
        return _with_vhost(self.rabbitmq_url, name)

    def fresh_database(self, name: str, role: str, password: str) -> str:
        """Drop the database ``name`` and create it empty, owned by ``role`` (created if missing);
        its URL, as that role."""
        _run(_recreate_database(self.postgres_admin_url, name, role, password))
        return self.postgres_url(name, role, password)

    def redis_db(self, index: int) -> str:
        """The test Redis server's database ``index``; never the e2e stack's."""
        parts = urlsplit(self.redis_url)
        url = urlunsplit((parts.scheme, parts.netloc, f"/{index}", parts.query, ""))
        if url == self.redis_url:
            raise ValueError(f"Redis database {index} belongs to the e2e stack")
        return url

    def _rabbitmqctl(self, *args: str, check: bool = True) -> None:
        if self.rabbitmq_container is not None:
            code, output = self.rabbitmq_container.exec(["rabbitmqctl", "-q", *args])
        else:
            host = urlsplit(self.rabbitmq_url).hostname or ""
            ctl = shutil.which("rabbitmqctl") or shutil.which("rabbitmqctl",
                                                              path="/usr/sbin:/sbin")
            if host not in LOCAL_HOSTS or ctl is None:
                _missing(f"rabbitmqctl for the broker at {host} (tests make their own vhosts; "
                         "run them on the broker's machine, or let testcontainers start one)")
            done = subprocess.run([ctl, "-q", *args], capture_output=True, check=False, timeout=60)
            code, output = done.returncode, done.stdout + done.stderr
        if check and code != 0:
            pytest.fail(f"rabbitmqctl {' '.join(args)} failed ({code}): "
                        f"{output.decode(errors='replace')}", pytrace=False)


def _reachable(url: str, default_port: int) -> bool:
    parts = urlsplit(url)
    try:
        with socket.create_connection((parts.hostname or "127.0.0.1", parts.port or default_port),
                                      timeout=2):
            return True
    except OSError:
        return False


def _docker_answers() -> bool:
    if not shutil.which("docker"):
        return False
    try:
        done = subprocess.run(["docker", "info"], capture_output=True, check=False, timeout=10)
        return done.returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


def _with_vhost(url: str, vhost: str) -> str:
    parts = urlsplit(url)
    return urlunsplit((parts.scheme, parts.netloc, f"/{vhost}", parts.query, ""))


async def _recreate_database(admin_url: str, name: str, role: str, password: str) -> None:
    conn = await asyncpg.connect(admin_url, timeout=10)
    try:
        async def run(template: str, *args: str) -> None:
            # The server quotes identifiers (%I) and literals (%L).
            params = ", ".join(f"${i}::text" for i in range(2, len(args) + 2))
            await conn.execute(await conn.fetchval(f"SELECT format($1, {params})", template, *args))

        exists = await conn.fetchval("SELECT 1 FROM pg_roles WHERE rolname = $1", role)
        await run(("ALTER" if exists else "CREATE") + " ROLE %I LOGIN PASSWORD %L", role, password)
        await run("DROP DATABASE IF EXISTS %I WITH (FORCE)", name)
        await run("CREATE DATABASE %I OWNER %I", name, role)
    finally:
        await conn.close()


def _run(coroutine: Any) -> Any:
    """Run a coroutine to completion from sync code, even inside the tests' event loop."""
    with concurrent.futures.ThreadPoolExecutor(max_workers=1) as worker:
        return worker.submit(asyncio.run, coroutine).result()


def _missing(what: str) -> NoReturn:
    message = f"{what} is not reachable; start it or set the TEST_* URL (see tests/conftest.py)"
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(message, pytrace=False)
    pytest.skip(message)


def _from_containers() -> Iterator[Infra]:
    from testcontainers.community.postgres import PostgresContainer
    from testcontainers.community.rabbitmq import RabbitMqContainer
    from testcontainers.community.redis import RedisContainer

    with (RabbitMqContainer("rabbitmq:3.13-management") as rabbit,
          PostgresContainer("postgres:16", username="postgres", password="postgres") as pg,
          RedisContainer("redis:7") as redis):
        rabbit_url = (f"amqp://guest:guest@{rabbit.get_container_host_ip()}:"
                      f"{rabbit.get_exposed_port(5672)}/")
        pg_url = (f"postgresql://postgres:postgres@{pg.get_container_host_ip()}:"
                  f"{pg.get_exposed_port(5432)}/postgres")
        redis_url = f"redis://{redis.get_container_host_ip()}:{redis.get_exposed_port(6379)}/1"
        infra = Infra(rabbit_url, pg_url, redis_url, "testcontainers", rabbitmq_container=rabbit)
        yield replace(infra, rabbitmq_url=infra.fresh_vhost(TEST_VHOST))


@pytest.fixture(scope="session")
def infra() -> Iterator[Infra]:
    env = os.environ
    if not any(k in env for k in ("TEST_RABBITMQ_URL", "TEST_POSTGRES_ADMIN_URL",
                                  "TEST_REDIS_URL")) and _docker_answers():
        yield from _from_containers()
        return
    rabbit = env.get("TEST_RABBITMQ_URL", "amqp://guest:guest@127.0.0.1:5672/")
    pg = env.get("TEST_POSTGRES_ADMIN_URL", "postgresql://postgres@127.0.0.1:5432/postgres")
    redis = env.get("TEST_REDIS_URL", "redis://127.0.0.1:6379/1")
    for name, url, port in (("RabbitMQ", rabbit, 5672), ("PostgreSQL", pg, 5432),
                            ("Redis", redis, 6379)):
        if not _reachable(url, port):
            _missing(f"{name} at {url}")
    infra = Infra(rabbit, pg, redis, "environment or local ports")
    if not urlsplit(rabbit).path.strip("/"):
        infra = replace(infra, rabbitmq_url=infra.fresh_vhost(TEST_VHOST))
    yield infra  # noqa: PT022  # a generator all the same: the containers' branch tears down
