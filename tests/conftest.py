"""Infrastructure for the tests: where RabbitMQ, PostgreSQL and Redis are, and isolation.

Where servers come from, in order:
1. the environment: ``TEST_RABBITMQ_URL``, ``TEST_POSTGRES_ADMIN_URL``, ``TEST_REDIS_URL``;
2. testcontainers, when a Docker engine answers (``docker info``);
3. the local default ports (127.0.0.1: 5672, 5432, 6379).

A missing server fails the run when ``CI=true`` (a skipped check is a check that cannot fail)
and skips the tests that need it otherwise.

Tests never touch the development stack: they use the RabbitMQ vhost ``saga_test``, PostgreSQL
databases with a ``_test`` suffix and Redis database 1.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from urllib.parse import urlsplit, urlunsplit

import pytest
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

TEST_VHOST = "saga_test"


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
    rabbitmq_url: str  # with the test vhost
    postgres_admin_url: str
    redis_url: str  # with the test database index
    source: str

    def postgres_url(self, database: str, user: str, password: str) -> str:
        parts = urlsplit(self.postgres_admin_url)
        netloc = f"{user}:{password}@{parts.hostname}:{parts.port or 5432}"
        return urlunsplit((parts.scheme, netloc, f"/{database}", "", ""))


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
        return subprocess.run(["docker", "info"], capture_output=True, timeout=10).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


def _with_vhost(url: str, vhost: str) -> str:
    parts = urlsplit(url)
    return urlunsplit((parts.scheme, parts.netloc, f"/{vhost}", parts.query, ""))


def _fresh_vhost(vhost: str) -> None:
    """Recreate the test vhost so every run starts with empty queues (local broker only)."""
    if not shutil.which("rabbitmqctl"):
        return
    subprocess.run(["rabbitmqctl", "delete_vhost", vhost], capture_output=True, timeout=60)
    for cmd in (["add_vhost", vhost], ["set_permissions", "-p", vhost, "guest", ".*", ".*", ".*"]):
        subprocess.run(["rabbitmqctl", *cmd], capture_output=True, timeout=60, check=True)


def _missing(what: str) -> None:
    message = f"{what} is not reachable; start it or set the TEST_* URL (see tests/conftest.py)"
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(message, pytrace=False)
    pytest.skip(message)


def _from_containers() -> Iterator[Infra]:
    from testcontainers.postgres import PostgresContainer
    from testcontainers.rabbitmq import RabbitMqContainer
    from testcontainers.redis import RedisContainer

    with (RabbitMqContainer("rabbitmq:3.13-management") as rabbit,
          PostgresContainer("postgres:16", username="postgres", password="postgres") as pg,
          RedisContainer("redis:7") as redis):
        rabbit_url = (f"amqp://guest:guest@{rabbit.get_container_host_ip()}:"
                      f"{rabbit.get_exposed_port(5672)}/")
        pg_url = (f"postgresql://postgres:postgres@{pg.get_container_host_ip()}:"
                  f"{pg.get_exposed_port(5432)}/postgres")
        redis_url = f"redis://{redis.get_container_host_ip()}:{redis.get_exposed_port(6379)}/1"
        yield Infra(rabbit_url, pg_url, redis_url, "testcontainers")


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
    vhost = urlsplit(rabbit).path.strip("/")
    if not vhost:
        _fresh_vhost(TEST_VHOST)
        rabbit = _with_vhost(rabbit, TEST_VHOST)
    yield Infra(rabbit, pg, redis, "environment or local ports")
