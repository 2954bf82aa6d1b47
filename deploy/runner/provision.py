"""Provisioning, idempotent: each service's PostgreSQL role and database (from its URL), the
RabbitMQ vhost RABBITMQ_URL names, and the identity's signing keys in the run dir."""

from __future__ import annotations

import asyncio
import concurrent.futures
import shutil
import subprocess
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

from deploy.runner.config import (
    DATABASE_URLS,
    LOCAL_HOSTS,
    StackError,
    database_url,
    say,
    stack_env,
)


@dataclass(frozen=True)
class Database:
    role: str
    password: str | None
    name: str

    @classmethod
    def from_url(cls, url: str) -> Database:
        parts = urlsplit(url)
        name = unquote(parts.path.lstrip("/"))
        if not parts.username or not name:
            raise StackError(f"database URL needs a user and a database name: {url!r}")
        password = unquote(parts.password) if parts.password is not None else None
        return cls(unquote(parts.username), password, name)


async def _ensure_databases(admin_url: str, databases: Iterable[Database]) -> None:
    import asyncpg  # only `up`/`prepare` need it; `down` and `status` stay stdlib-only

    try:
        conn = await asyncpg.connect(admin_url, timeout=10)
    except (OSError, asyncpg.PostgresError) as exc:
        raise StackError(f"cannot reach PostgreSQL with POSTGRES_ADMIN_URL: {exc}") from exc
    try:
        admin = await conn.fetchval("SELECT current_user")

        async def run(template: str, *args: str | None) -> None:
            # The server quotes identifiers (%I) and literals (%L); NULL becomes PASSWORD NULL.
            params = ", ".join(f"${i}::text" for i in range(2, len(args) + 2))
            await conn.execute(await conn.fetchval(f"SELECT format($1, {params})", template, *args))

        for db in databases:
            if db.role != admin:
                exists = await conn.fetchval("SELECT 1 FROM pg_roles WHERE rolname = $1", db.role)
                verb = "ALTER" if exists else "CREATE"
                await run(verb + " ROLE %I LOGIN PASSWORD %L", db.role, db.password)
            if await conn.fetchval("SELECT 1 FROM pg_database WHERE datname = $1", db.name):
                await run("ALTER DATABASE %I OWNER TO %I", db.name, db.role)
            else:
                await run("CREATE DATABASE %I OWNER %I", db.name, db.role)
            # Each role may open only its own database: no service reads another's tables.
            await run("REVOKE CONNECT ON DATABASE %I FROM PUBLIC", db.name)
            say(f"postgres: database {db.name} owned by {db.role}")
    finally:
        await conn.close()


def _run_coroutine(factory: Callable[[], Any]) -> Any:
    """Run a coroutine to completion even when the caller is inside an event loop (a fixture)."""
    with concurrent.futures.ThreadPoolExecutor(max_workers=1) as pool:
        return pool.submit(lambda: asyncio.run(factory())).result()


def ensure_databases(env: Mapping[str, str]) -> None:
    """Create (or converge) each service's role and database from its URL; idempotent."""
    databases = [Database.from_url(database_url(env, k)) for k in DATABASE_URLS]
    _run_coroutine(lambda: _ensure_databases(env["POSTGRES_ADMIN_URL"], databases))


def drop_service_databases(env: Mapping[str, str]) -> None:
    """Drop the services' databases (connections closed by force): a fresh start for a test or
    benchmark stack. Never used by `up`/`down`; the roles stay."""
    names = [Database.from_url(env[k]).name for k in DATABASE_URLS]

    async def drop() -> None:
        import asyncpg

        conn = await asyncpg.connect(env["POSTGRES_ADMIN_URL"], timeout=10)
        try:
            for name in names:
                await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        finally:
            await conn.close()

    _run_coroutine(drop)


def amqp_vhost(url: str) -> str:
    """The vhost an AMQP URL names, read the way aiormq reads it ("/" when the path is empty)."""
    path = urlsplit(url).path
    return "/" if path in ("", "/") else unquote(path[1:])


def ensure_vhost(url: str) -> None:
    """Create a non-default vhost named by RABBITMQ_URL; only possible on this machine."""
    vhost = amqp_vhost(url)
    if vhost == "/":
        return
    parts = urlsplit(url)
    if (parts.hostname or "") not in LOCAL_HOSTS:
        say(f"rabbitmq: broker {parts.hostname} is remote; vhost {vhost!r} must exist there")
        return
    ctl = shutil.which("rabbitmqctl") or shutil.which("rabbitmqctl", path="/usr/sbin:/sbin")
    if ctl is None:
        raise StackError(f"vhost {vhost!r} is needed but rabbitmqctl is not installed here")

    def rabbitmqctl(*args: str) -> str:
        done = subprocess.run([ctl, "-s", *args], capture_output=True, text=True, check=False)
        if done.returncode != 0:
            raise StackError(f"rabbitmqctl {' '.join(args)} failed (run as root?):\n"
                             f"{done.stdout}{done.stderr}")
        return done.stdout

    if vhost in rabbitmqctl("list_vhosts", "name").split():
        return
    user = unquote(parts.username or "guest")
    rabbitmqctl("add_vhost", vhost)
    rabbitmqctl("set_permissions", "-p", vhost, user, ".*", ".*", ".*")
    say(f"rabbitmq: created vhost {vhost!r} for {user}")


def ensure_keys(env: dict[str, str], run_dir: Path) -> None:
    """The identity's signing keys and their public set, made once per run dir unless given.

    ``IDENTITY_SIGNING_KEYS_FILE`` (private, the identity only) and ``AUTH_JWKS_FILE`` (public,
    every service) point at them; set both to use keys of your own.
    """
    if not env.get("IDENTITY_SIGNING_KEYS_FILE") and not env.get("IDENTITY_SIGNING_KEYS"):
        from identity import keys  # the installed project, as the services themselves

        directory = run_dir / "keys"
        if keys.init(directory):
            say(f"identity: made a signing key in {directory}")
        env["IDENTITY_SIGNING_KEYS_FILE"] = str(directory / keys.PRIVATE)
        env.setdefault("AUTH_JWKS_FILE", str(directory / keys.PUBLIC))
    if not env.get("AUTH_JWKS_FILE") and not env.get("AUTH_JWKS"):
        raise StackError("AUTH_JWKS_FILE (or AUTH_JWKS) must be set with IDENTITY_SIGNING_KEYS: "
                         "the services verify tokens with the public key set")


def prepare(env: Mapping[str, str] | None = None) -> None:
    """Create the databases, roles and broker vhost the services need (idempotent)."""
    full = stack_env(env)
    ensure_databases(full)
    ensure_vhost(full["RABBITMQ_URL"])
