"""Composition root of the identity service: ``build(settings)`` makes the HTTP app (its API
in identity.api: sign up, the token endpoint, the public keys), the broker and the lifecycle.

- ``GET /api/v1/customers/me/data``, ``DELETE /api/v1/customers/me`` and the operator's
  equivalents: a customer's data export and erasure (identity.data_api), run by events.

Nothing in the saga waits on it, and no service calls it (tokens are verified with the public
keys alone). It takes part in the bus only for a customer's data: it announces export and
erasure requests through its outbox and gathers the services' answers (identity.handlers).
"""

from __future__ import annotations

import ipaddress
import logging
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import asyncpg
from fastapi import FastAPI

from identity import api, customer_data, data_api, handlers, keys, throttle
from identity.settings import IdentitySettings
from identity.tokens import Signer, hash_password
from sagakit.archive import archive_router
from sagakit.audit import audit_router
from sagakit.deadletters import dead_letters_router
from sagakit.runtime import (
    Messaging,
    add_asyncapi_route,
    database_ready,
    postgres_archive,
    postgres_lifespan,
)
from sagakit.web import create_app

SERVICE = "identity"
log = logging.getLogger("identity")

# The development accounts (README "Accounts"), made at start when IDENTITY_SEED_DEV_ACCOUNTS
# is on (the default for `make up` on one's own machine, refused for a public gateway).
DEV_CUSTOMERS = (("Ana Souza", "ana@example.com", "ana-dev-password"),
                 ("Bob Lima", "bob@example.com", "bob-dev-password"))
DEV_CLIENTS = (("ops-console", "operator", "The operator console (kitchen, stock, dead letters)",
                "ops-dev-secret", ["ops"]),
               ("loadgen", "machine",
                ("A machine client placing orders for named customers "
                 "(the benchmark, make demo)"), "loadgen-dev-secret", ["orders"]))


def _is_loopback(host: str) -> bool:
    if host in ("localhost", ""):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


async def seed(pool: asyncpg.Pool) -> None:
    """The development accounts, made once (a changed dev password is left as it is)."""
    async with pool.acquire() as conn:
        for name, email, password in DEV_CUSTOMERS:
            if not await conn.fetchval("SELECT 1 FROM customers WHERE lower(email) = lower($1)",
                                       email):
                await conn.execute(
                    "INSERT INTO customers (id, name, email, password_hash) VALUES ($1,$2,$3,$4)"
                    " ON CONFLICT DO NOTHING", uuid.uuid4(), name, email,
                    await hash_password(password))
        for client_id, kind, description, secret, scopes in DEV_CLIENTS:
            await conn.execute(
                "INSERT INTO clients (client_id, kind, description, secret_hash, scopes)"
                " VALUES ($1,$2,$3,$4,$5) ON CONFLICT (client_id) DO NOTHING",
                client_id, kind, description, await hash_password(secret), scopes)
    # No email in a log line (personal data): the README lists the accounts.
    log.info("development accounts present: %d customers, clients %s", len(DEV_CUSTOMERS),
             ", ".join(c[0] for c in DEV_CLIENTS))


def build(settings: IdentitySettings | None = None) -> FastAPI:
    """The identity service, built from its settings (from the environment when none are
    given). Nothing is built at import time, so a test can build one with settings of its own;
    ``python -m identity`` serves ``build()`` (uvicorn's factory mode)."""
    settings = settings or IdentitySettings()
    messaging = Messaging(SERVICE, settings, handlers.QUEUES, customer_data.PUBLISHES)
    guessing = throttle.LoginThrottle(
        settings.login_free_attempts, settings.login_first_wait_seconds,
        settings.login_longest_wait_seconds, settings.login_forget_seconds)

    async def retention(pool: asyncpg.Pool, _: int) -> None:
        await customer_data.forget_old_exports(pool, settings.export_retention_seconds)
        await guessing.forget_idle(pool)

    saga_lifespan = postgres_lifespan(
        SERVICE, settings, messaging, Path(__file__).with_name("migrations"),
        retention=retention,
        prepare=seed if settings.seed_dev_accounts else None,
    )

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        if settings.seed_dev_accounts and not _is_loopback(settings.gateway_bind):
            raise SystemExit(
                f"identity: refusing to start: the gateway listens on {settings.gateway_bind} and "
                "the development accounts (known passwords) are on. Set "
                "IDENTITY_SEED_DEV_ACCOUNTS=false and create real accounts, or keep "
                "GATEWAY_BIND=127.0.0.1.")
        app.state.signer = Signer(keys.read_key_set(settings), settings.token_ttl_seconds)
        async with saga_lifespan(app):
            yield

    app = create_app(
        SERVICE,
        title="saga-shop identity service",
        description="Sign up, log in (OAuth 2.0 token endpoint) and the public keys access tokens "
        "are verified with. Every other service checks tokens itself; none calls this one.",
        lifespan=lifespan,
        readiness=lambda app: {"database": database_ready(app), "broker": messaging.ready},
    )
    app.include_router(data_api.router)
    app.include_router(audit_router(SERVICE))
    app.include_router(archive_router(SERVICE, postgres_archive))
    app.include_router(dead_letters_router(SERVICE, settings.rabbitmq_dsn))
    handlers.router.include(messaging, app.state)  # its pool: opened by the lifespan
    add_asyncapi_route(app, SERVICE, messaging)
    app.state.settings = settings
    app.state.login_throttle = guessing
    app.include_router(api.router)
    return app
