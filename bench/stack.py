"""The stack under test: an isolated native stack of its own, or one already running (``--url``).

The own stack follows tests/e2e/conftest.py's recipe on the benchmark's reserved resources: ports
58500s (gateway 58580, services 58501-58503, replicas +10), databases ``*_bench`` (dropped and
re-created each run), RabbitMQ vhost ``saga_bench``, Redis database 9, kitchen preparation 0 and a
gateway rate limit no benchmark reaches. ``BENCH_PORT_BASE``, ``BENCH_DB_SUFFIX``, ``BENCH_VHOST``
and ``BENCH_REDIS_DB`` move it elsewhere.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import redis

from bench.raw_pipeline import fresh_vhost
from deploy import native

# Overridable, so that two benchmarks (say, two branches being compared) can run side by side.
PORT_BASE = int(os.environ.get("BENCH_PORT_BASE", "58500"))
DB_SUFFIX = os.environ.get("BENCH_DB_SUFFIX", "_bench")
VHOST = os.environ.get("BENCH_VHOST", "saga_bench")
REDIS_DB = int(os.environ.get("BENCH_REDIS_DB", "9"))
# The operator console of the development accounts: it restocks, and places orders for the
# customers it names (a token per run, from the stack's own token endpoint).
CLIENT = ("ops-console", "ops-dev-secret")


@dataclass(frozen=True)
class Target:
    url: str
    credentials: tuple[str, str]  # an OAuth client: client_id, client_secret
    run_dir: Path | None  # whose supervisord knows the pids, for CPU per process
    rabbitmq_url: str  # the broker's URL (any vhost): the ceiling runs on its own


def _with_path(url: str, path: str) -> str:
    parts = urlsplit(url)
    return urlunsplit((parts.scheme, parts.netloc, path, parts.query, ""))


def _postgres_url(admin_url: str, database: str, role: str) -> str:
    parts = urlsplit(admin_url)
    netloc = f"{role}:{role}@{parts.hostname}:{parts.port or 5432}"
    return urlunsplit((parts.scheme, netloc, f"/{database}", "", ""))


def bench_env(base: Mapping[str, str], *, replicas: int,
              extra: Mapping[str, str]) -> dict[str, str]:
    rabbitmq = base.get("BENCH_RABBITMQ_URL", "amqp://guest:guest@127.0.0.1:5672/")
    admin = base.get("BENCH_POSTGRES_ADMIN_URL", "postgresql://postgres@127.0.0.1:5432/postgres")
    redis_url = base.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379/")
    return {
        **base,
        "GATEWAY_PORT": str(PORT_BASE + 80), "ORDER_HTTP_PORT": str(PORT_BASE + 1),
        "PAYMENT_HTTP_PORT": str(PORT_BASE + 2), "PRODUCTION_HTTP_PORT": str(PORT_BASE + 3),
        "IDENTITY_HTTP_PORT": str(PORT_BASE + 4),
        "IDENTITY_DATABASE_URL": _postgres_url(admin, f"identity{DB_SUFFIX}", "identity_svc"),
        "RABBITMQ_URL": _with_path(rabbitmq, "/" + VHOST),
        "POSTGRES_ADMIN_URL": admin,
        "ORDER_DATABASE_URL": _postgres_url(admin, f"orders{DB_SUFFIX}", "order_svc"),
        "PAYMENT_DATABASE_URL": _postgres_url(admin, f"payments{DB_SUFFIX}", "payment_svc"),
        "PRODUCTION_REDIS_URL": _with_path(redis_url, f"/{REDIS_DB}"),
        "PRODUCTION_PREPARATION_SECONDS": "0",
        "IDENTITY_TOKEN_TTL_SECONDS": "7200",
        # The benchmark is one client sending as fast as the stack takes: no limit in its way.
        "GATEWAY_RATE_LIMIT": "100000r/s",
        "GATEWAY_RATE_BURST": "100000",
        "GATEWAY_LIST_RATE_LIMIT": "100000r/s",
        "GATEWAY_LIST_RATE_BURST": "100000",
        "GATEWAY_CONN_LIMIT": "10000",
        "LOG_LEVEL": base.get("LOG_LEVEL", "WARNING"),
        **{f"{service.upper()}_REPLICAS": str(replicas) for service in native.SERVICES},
        **extra,
    }


@contextmanager
def own_stack(run_dir: Path, *, replicas: int = 1,
              extra: Mapping[str, str] | None = None) -> Iterator[Target]:
    """Start a fresh isolated stack; stop it on the way out, whatever happened."""
    env = bench_env(os.environ, replicas=replicas, extra=extra or {})
    env["SAGA_RUN_DIR"] = str(run_dir)
    native.down(run_dir)
    native.drop_service_databases(env)
    redis.Redis.from_url(env["PRODUCTION_REDIS_URL"]).flushdb()
    fresh_vhost(env["RABBITMQ_URL"], VHOST)  # nothing an earlier run left in a queue
    try:
        native.up(env, run_dir, timeout=120)
        yield Target(f"http://127.0.0.1:{env['GATEWAY_PORT']}", CLIENT, run_dir,
                     env["RABBITMQ_URL"])
    finally:
        native.down(run_dir)


def pid_groups(run_dir: Path | None) -> dict[str, int]:
    """Process-group id of each program a run dir's supervisord runs (gateway and replicas)."""
    if run_dir is None:
        return {}
    groups = {}
    for name in native.recorded(run_dir):
        pid = native.read_pid(run_dir, name)
        if pid is not None:
            groups[name] = pid
    return groups
