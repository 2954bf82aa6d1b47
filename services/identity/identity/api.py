"""The identity service's HTTP API: sign up, the OAuth 2.0 token endpoint, the caller's
profile and the public keys (identity.app builds the service around it).

- ``POST /api/v1/customers`` (name, email, password): sign up, 201.
- ``POST /api/v1/auth/token`` (OAuth 2.0, RFC 6749, form-encoded): ``grant_type=password`` with
  ``username`` = email for customers, ``grant_type=client_credentials`` with ``client_id`` and
  ``client_secret`` (form fields or HTTP Basic) for operators and machine clients. Errors are
  RFC 6749 §5.2 (``error``, ``error_description``) inside this project's problem JSON; a
  parameter given more than once is ``invalid_request`` (§3.1), never a pick of one copy.
- ``GET /api/v1/customers/me``: the caller's profile (a customer token).
- ``GET /.well-known/jwks.json``: the public keys every service verifies tokens with.

Password guessing is slowed per account (identity.throttle): past a few failed attempts on an
account, the next must wait (429, ``Retry-After``), for customers and clients alike.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import uuid
from collections import Counter
from typing import Annotated, Any

import asyncpg
from fastapi import APIRouter, Request, Response, status
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field, StringConstraints

from identity import keys, throttle
from identity.settings import IdentitySettings
from identity.tokens import GATE, Signer, hash_password, verify_password
from sagakit.auth import Caller, allow
from sagakit.errors import ApiError
from sagakit.text import Email, Text
from sagakit.web import JsonRoute, problem

router = APIRouter(route_class=JsonRoute)


class SignUp(BaseModel):
    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True)
    name: Text = Field(min_length=1, max_length=200, examples=["Ana Souza"])
    email: Email = Field(examples=["ana@example.com"])
    # Kept as typed, spaces included: the token endpoint compares what is typed there.
    password: Annotated[str, StringConstraints(strip_whitespace=False)] = Field(
        min_length=8, max_length=128, examples=["correct horse battery"])


class CustomerOut(BaseModel):
    id: uuid.UUID
    name: str
    email: str


class TokenOut(BaseModel):
    access_token: str
    token_type: str = Field(examples=["bearer"])
    expires_in: int
    scope: str


async def insert_customer(conn: asyncpg.Connection, customer_id: uuid.UUID, name: str,
                          email: str, password_hash: str) -> bool:
    """Add the customer; False if one with this email (as the database lower-cases it) exists.

    ``ON CONFLICT DO NOTHING`` rather than catching the unique violation: PostgreSQL logs every
    statement that fails with the offending key (``DETAIL: Key (lower(email))=(...)``), so each
    sign-up with a taken email wrote that email into the database server's log, beyond the
    reach of an erasure. Two sign-ups racing for one email: one inserts, the other waits for
    its commit and inserts nothing."""
    return await conn.fetchval(
        "INSERT INTO customers (id, name, email, password_hash) VALUES ($1, $2, $3, $4)"
        " ON CONFLICT DO NOTHING RETURNING true", customer_id, name, email, password_hash,
    ) is not None


@router.post("/api/v1/customers", status_code=status.HTTP_201_CREATED, response_model=CustomerOut,
             tags=["customers"], summary="Sign up as a customer", **allow())
async def sign_up(body: SignUp, request: Request, response: Response) -> CustomerOut:
    customer_id = uuid.uuid4()
    hashed = await hash_password(body.password)
    async with request.app.state.pool.acquire() as conn:
        created = await insert_customer(conn, customer_id, body.name, body.email, hashed)
    if not created:
        raise ApiError(409, "Conflict", "A customer with this email exists; log in instead.",
                       field="email")
    response.headers["Location"] = "/api/v1/customers/me"
    return CustomerOut(id=customer_id, name=body.name, email=body.email)


@router.get("/api/v1/customers/me", response_model=CustomerOut, tags=["customers"],
            summary="The customer the token belongs to", **allow("orders"))
async def me(caller: Caller, request: Request) -> CustomerOut:
    if caller.kind != "customer":
        raise ApiError(404, "Not found", "This token is a client's, not a customer's.",
                       field="Authorization")
    async with request.app.state.pool.acquire() as conn:
        row = await conn.fetchrow("SELECT id, name, email FROM customers WHERE id = $1",
                                  uuid.UUID(caller.subject))
    if row is None:
        raise ApiError(404, "Not found", "No such customer.", field="Authorization")
    return CustomerOut(**dict(row))


def _oauth_error(status_code: int, error: str, description: str,
                 field: str | tuple[str, ...] | None = None,
                 headers: dict[str, str] | None = None) -> JSONResponse:
    """RFC 6749 §5.2 error, in the project's problem shape; ``field``: the one to blame, or
    the pair a wrong credential leaves open (never telling which of the two was wrong)."""
    titles = {400: "Bad Request", 401: "Unauthorized", 415: "Unsupported Media Type",
              429: "Too Many Requests"}
    fields = (field,) if isinstance(field, str) else field or ()
    response = problem(status_code, titles[status_code], description,
                       [{"field": f, "message": description} for f in fields] or None,
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


def _wait(seconds: int, error: str, field: str) -> JSONResponse:
    """An attempt on an account that must wait (identity.throttle): its password unchecked."""
    return _oauth_error(429, error, f"Too many failed attempts on this account: try again in "
                        f"{seconds} s.", field, headers={"Retry-After": str(seconds)})


async def _guarded_check(request: Request, account: str, hashed: str | None,
                         password: str) -> tuple[bool, int]:
    """Whether ``password`` is right for ``account`` and, if it may not be checked yet, the
    seconds to wait (identity.throttle). The wait is read in the hash gate's slot, just before
    the hash, and a failure recorded before the slot is let go: concurrent guesses are checked
    a few at a time against the count, never all on one reading of it."""
    guessing: throttle.LoginThrottle = request.app.state.login_throttle
    pool: asyncpg.Pool = request.app.state.pool
    async with GATE.slot():
        async with pool.acquire() as conn:
            if wait := await guessing.wait_left(conn, account):
                return False, wait
        right = await asyncio.to_thread(verify_password, hashed, password)
        async with pool.acquire() as conn:
            if right:
                await guessing.succeeded(conn, account)
            else:
                await guessing.failed(conn, account)
    return right, 0


def _with_nul(fields: dict[str, str]) -> str | None:
    """The first field holding a NUL character, which no PostgreSQL text can hold."""
    return next((name for name, value in fields.items() if "\x00" in value), None)


@router.post("/api/v1/auth/token", response_model=TokenOut, tags=["auth"],
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
                            "(application/x-www-form-urlencoded).", "Content-Type")
    form = await request.form()
    # RFC 6749 §3.1: a parameter sent twice is an invalid request, not a choice between two
    # values (which copy wins is where two parsers disagree; JSON bodies refuse it too).
    if repeated := next((k for k, n in Counter(k for k, _ in form.multi_items()).items()
                         if n > 1), None):
        return _oauth_error(400, "invalid_request", f"{repeated} is sent more than once.",
                            repeated)
    fields = {k: str(v) for k, v in form.items() if isinstance(v, str)}
    if unreadable := _with_nul(fields):  # PostgreSQL stores no NUL: a 400, not its error
        return _oauth_error(400, "invalid_request", f"{unreadable} holds a NUL character.",
                            unreadable)
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
        email = fields["username"].strip()  # as sign-up keeps it
        async with pool.acquire() as conn:
            # The account as the database tells emails apart (lower(), as its unique index),
            # found or not: every spelling that opens an account counts on that account.
            row = await conn.fetchrow(
                "SELECT typed.account, c.id, c.name, c.email, c.password_hash"
                " FROM (SELECT lower($1) AS account) AS typed"
                " LEFT JOIN customers c ON lower(c.email) = typed.account", email)
        right, wait = await _guarded_check(request, throttle.customer(row["account"]),
                                           row["password_hash"], fields["password"])
        if wait:
            return _wait(wait, "invalid_grant", "username")
        if not right:
            return _oauth_error(400, "invalid_grant", "Wrong email or password.",
                                ("username", "password"))
        assert row["id"] is not None
        allowed = {"orders"}
        if requested - allowed:
            return _oauth_error(400, "invalid_scope", "A customer may ask only for: orders.",
                                "scope")
        body = signer.issue(str(row["id"]), requested or allowed, "customer",
                            email=row["email"], name=row["name"])
    elif grant == "client_credentials":
        basic = _basic_credentials(request)
        if basic and ("client_secret" in fields or fields.get("client_id", basic[0]) != basic[0]):
            # RFC 6749 §2.3: one way of authenticating per request, never two to choose from.
            return _oauth_error(400, "invalid_request", "Send the client's credentials once: in "
                                "HTTP Basic or in the form, not both.", "client_secret")
        client_id, secret = basic or (fields.get("client_id", ""), fields.get("client_secret", ""))
        if unreadable := _with_nul({"client_id": client_id, "client_secret": secret}):
            return _oauth_error(400, "invalid_request", f"{unreadable} holds a NUL character.",
                                unreadable)
        async with pool.acquire() as conn:
            row = await conn.fetchrow("SELECT client_id, secret_hash, scopes FROM clients"
                                      " WHERE client_id = $1", client_id)
        right, wait = await _guarded_check(request, throttle.client(client_id),
                                           row["secret_hash"] if row else None, secret)
        if wait:
            return _wait(wait, "invalid_client", "client_id")
        if not right:
            # RFC 6749 §5.2: the Basic challenge answers a client that authenticated with HTTP
            # Basic. To one that sent its secret in the form it would be an invitation to try
            # Basic instead, and a browser takes it as one: a page's fetch() with a wrong
            # secret made Chromium ask for a user name and password itself (the operator view).
            challenge = {"WWW-Authenticate": 'Basic realm="saga-shop"'} if basic else None
            return _oauth_error(401, "invalid_client", "Unknown client or wrong secret.",
                                ("client_id", "client_secret"), headers=challenge)
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


@router.get("/.well-known/jwks.json", tags=["auth"],
            summary="The public keys tokens are signed with", **allow())
async def jwks(request: Request) -> dict[str, Any]:
    settings: IdentitySettings = request.app.state.settings
    return keys.public(keys.read_key_set(settings))  # read again: the set may have been rotated
