"""Composition root and HTTP API of the identity service.

- ``POST /api/v1/customers`` (name, email, password): sign up, 201.
- ``POST /api/v1/auth/token`` (OAuth 2.0, RFC 6749, form-encoded): ``grant_type=password`` with
  ``username`` = email for customers, ``grant_type=client_credentials`` with ``client_id`` and
  ``client_secret`` (form fields or HTTP Basic) for operators and machine clients. Errors are
  RFC 6749 §5.2 (``error``, ``error_description``) inside this project's problem JSON.
- ``GET /api/v1/customers/me``: the caller's profile (a customer token).
- ``GET /.well-known/jwks.json``: the public keys every service verifies tokens with.

- ``GET /api/v1/customers/me/data``, ``DELETE /api/v1/customers/me`` and the operator's
  equivalents: a customer's data export and erasure (identity.data_api), run by events.

Nothing in the saga waits on it, and no service calls it (tokens are verified with the public
keys alone). It takes part in the bus only for a customer's data: it announces export and
erasure requests through its outbox and gathers the services' answers (identity.handlers).
"""

from __future__ import annotations

import base64
import binascii
import ipaddress
import json
import logging
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import asyncpg
from fastapi import FastAPI, Request, Response, status
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field

from identity import customer_data, data_api, handlers, keys
from identity.settings import IdentitySettings
from identity.tokens import Signer, check_password, hash_password
from sagakit import postgres, telemetry
from sagakit.archive import archive_router
from sagakit.audit import PostgresAuditLog, audit_router
from sagakit.auth import Caller, allow, read_secret
from sagakit.deadletters import dead_letters_router
from sagakit.outbox import PostgresOutboxRelay
from sagakit.runtime import (
    Messaging,
    add_asyncapi_route,
    database_ready,
    every,
    postgres_archive,
    retention_sweep,
)
from sagakit.web import ApiError, Email, Text, create_app, problem

SERVICE = "identity"
log = logging.getLogger("identity")
settings = IdentitySettings()
messaging = Messaging(SERVICE, settings, handlers.QUEUES, customer_data.PUBLISHES)

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


def read_key_set(config: IdentitySettings) -> dict[str, Any]:
    """The private key set: IDENTITY_SIGNING_KEYS_FILE (a path) or IDENTITY_SIGNING_KEYS."""
    if config.signing_keys_file:
        return dict(json.loads(Path(config.signing_keys_file).read_text(encoding="utf-8")))
    if text := read_secret("IDENTITY_SIGNING_KEYS"):
        return dict(json.loads(text))
    raise SystemExit("identity: no signing keys: set IDENTITY_SIGNING_KEYS_FILE (make up writes "
                     "one with: python -m identity.keys init DIR)")


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


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    if settings.seed_dev_accounts and not _is_loopback(settings.gateway_bind):
        raise SystemExit(
            f"identity: refusing to start: the gateway listens on {settings.gateway_bind} and the "
            "development accounts (known passwords) are on. Set IDENTITY_SEED_DEV_ACCOUNTS=false "
            "and create real accounts, or keep GATEWAY_BIND=127.0.0.1.")
    telemetry.setup(SERVICE)
    app.state.signer = Signer(read_key_set(settings), settings.token_ttl_seconds)
    pool = await postgres.create_pool(settings.database_dsn, max_size=settings.db_pool_size)
    await postgres.migrate(pool, [Path(__file__).with_name("migrations")])
    app.state.pool, app.state.settings = pool, settings
    app.state.audit_log = PostgresAuditLog(pool, SERVICE)
    if settings.seed_dev_accounts:
        await seed(pool)
    relay = PostgresOutboxRelay(pool, settings.database_dsn, messaging.publisher)
    await messaging.start()
    await relay.start()
    sweep = retention_sweep(pool, settings, lambda pool, _: customer_data.forget_old_exports(
        pool, settings.export_retention_seconds))
    try:
        async with every(settings.retention_sweep_seconds, sweep, "retention"):
            yield
    finally:
        await messaging.stop_consuming()
        await relay.stop()
        await messaging.close()
        await pool.close()
        telemetry.shutdown()


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
handlers.register(messaging, lambda: app.state.pool)
add_asyncapi_route(app, SERVICE, messaging)


class SignUp(BaseModel):
    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True)
    name: Text = Field(min_length=1, max_length=200, examples=["Ana Souza"])
    email: Email = Field(examples=["ana@example.com"])
    password: str = Field(min_length=8, max_length=128, examples=["correct horse battery"])


class CustomerOut(BaseModel):
    id: uuid.UUID
    name: str
    email: str


class TokenOut(BaseModel):
    access_token: str
    token_type: str = Field(examples=["bearer"])
    expires_in: int
    scope: str


@app.post("/api/v1/customers", status_code=status.HTTP_201_CREATED, response_model=CustomerOut,
          tags=["customers"], summary="Sign up as a customer", **allow())
async def sign_up(body: SignUp, request: Request, response: Response) -> CustomerOut:
    customer_id = uuid.uuid4()
    hashed = await hash_password(body.password)
    try:
        async with request.app.state.pool.acquire() as conn:
            await conn.execute("INSERT INTO customers (id, name, email, password_hash)"
                               " VALUES ($1, $2, $3, $4)", customer_id, body.name, body.email,
                               hashed)
    except asyncpg.UniqueViolationError:
        raise ApiError(409, "Conflict", "A customer with this email exists; log in instead.",
                       field="email") from None
    response.headers["Location"] = "/api/v1/customers/me"
    return CustomerOut(id=customer_id, name=body.name, email=body.email)


@app.get("/api/v1/customers/me", response_model=CustomerOut, tags=["customers"],
         summary="The customer the token belongs to", **allow("orders"))
async def me(caller: Caller, request: Request) -> CustomerOut:
    if caller.kind != "customer":
        raise ApiError(404, "Not found", "This token is a client's, not a customer's.")
    async with request.app.state.pool.acquire() as conn:
        row = await conn.fetchrow("SELECT id, name, email FROM customers WHERE id = $1",
                                  uuid.UUID(caller.subject))
    if row is None:
        raise ApiError(404, "Not found", "No such customer.")
    return CustomerOut(**dict(row))


def _oauth_error(status_code: int, error: str, description: str, field: str | None = None,
                 headers: dict[str, str] | None = None) -> JSONResponse:
    """RFC 6749 §5.2 error, in the project's problem shape."""
    titles = {400: "Bad Request", 401: "Unauthorized", 415: "Unsupported Media Type"}
    response = problem(status_code, titles[status_code], description,
                       [{"field": field, "message": description}] if field else None,
                       error=error, error_description=description)
    response.headers.update({"Cache-Control": "no-store", **(headers or {})})
    return response


def _basic_credentials(request: Request) -> tuple[str, str] | None:
    scheme, _, encoded = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() != "basic":
        return None
    try:
        client_id, _, secret = base64.b64decode(encoded, validate=True).decode().partition(":")
    except (binascii.Error, UnicodeDecodeError):
        return None
    return client_id, secret


@app.post("/api/v1/auth/token", response_model=TokenOut, tags=["auth"],
          summary="Get an access token (OAuth 2.0: password or client_credentials)",
          responses={400: {"description": "invalid_request, invalid_grant, invalid_scope or "
                                          "unsupported_grant_type"},
                     401: {"description": "invalid_client"}},
          openapi_extra={"security": [], "requestBody": {"required": True, "content": {
              "application/x-www-form-urlencoded": {"schema": {
                  "type": "object", "required": ["grant_type"],
                  "properties": {
                      "grant_type": {"type": "string",
                                     "enum": ["password", "client_credentials"]},
                      "username": {"type": "string", "description": "the customer's email"},
                      "password": {"type": "string"},
                      "client_id": {"type": "string"},
                      "client_secret": {"type": "string"},
                      "scope": {"type": "string", "description": "space-separated, optional: "
                                "fewer scopes than the account may have"}}}}}}})
async def token(request: Request) -> Response:
    content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if content_type != "application/x-www-form-urlencoded":
        return _oauth_error(415, "invalid_request",
                            "Send the token request form-encoded "
                            "(application/x-www-form-urlencoded).")
    form = await request.form()
    fields = {k: str(v) for k, v in form.items() if isinstance(v, str)}
    grant = fields.get("grant_type")
    requested = set(fields.get("scope", "").split())
    if not grant:
        return _oauth_error(400, "invalid_request", "grant_type is required.", "grant_type")
    pool = request.app.state.pool
    signer: Signer = request.app.state.signer
    if grant == "password":
        for name in ("username", "password"):
            if not fields.get(name):
                return _oauth_error(400, "invalid_request", f"{name} is required.", name)
        async with pool.acquire() as conn:
            row = await conn.fetchrow("SELECT id, name, email, password_hash FROM customers"
                                      " WHERE lower(email) = lower($1)", fields["username"])
        if not await check_password(row["password_hash"] if row else None, fields["password"]):
            return _oauth_error(400, "invalid_grant", "Wrong email or password.")
        assert row is not None
        allowed = {"orders"}
        if requested - allowed:
            return _oauth_error(400, "invalid_scope", "A customer may ask only for: orders.",
                                "scope")
        body = signer.issue(str(row["id"]), requested or allowed, "customer",
                            email=row["email"], name=row["name"])
    elif grant == "client_credentials":
        basic = _basic_credentials(request)
        client_id, secret = basic or (fields.get("client_id", ""), fields.get("client_secret", ""))
        async with pool.acquire() as conn:
            row = await conn.fetchrow("SELECT client_id, secret_hash, scopes FROM clients"
                                      " WHERE client_id = $1", client_id)
        if not await check_password(row["secret_hash"] if row else None, secret):
            return _oauth_error(401, "invalid_client", "Unknown client or wrong secret.",
                                headers={"WWW-Authenticate": 'Basic realm="saga-shop"'})
        assert row is not None
        allowed = set(row["scopes"])
        if requested - allowed:
            return _oauth_error(400, "invalid_scope",
                                f"This client may ask only for: {' '.join(sorted(allowed))}.",
                                "scope")
        body = signer.issue(row["client_id"], requested or allowed, "client")
    else:
        return _oauth_error(400, "unsupported_grant_type",
                            "grant_type must be password or client_credentials.", "grant_type")
    return JSONResponse(body, headers={"Cache-Control": "no-store", "Pragma": "no-cache"})


@app.get("/.well-known/jwks.json", tags=["auth"], summary="The public keys tokens are signed with",
         **allow())
async def jwks() -> dict[str, Any]:
    return keys.public(read_key_set(settings))  # read again: the set may have been rotated
