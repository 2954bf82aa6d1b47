"""Passwords and access tokens: the two things the identity service is trusted with.

Passwords are hashed with Argon2id (argon2-cffi's defaults, RFC 9106's low-memory profile: 64 MiB,
3 passes, 4 lanes): memory-hard, so guessing costs memory as well as time. A hash is checked in a
worker thread (argon2 releases the GIL), never on the event loop; an unknown email is checked
against a dummy hash, so a wrong email and a wrong password take the same time.

Access tokens are JWTs signed with the newest key of the set (its ``kid`` in the header), valid
``IDENTITY_TOKEN_TTL_SECONDS``; their claims are what sagakit.auth reads: ``sub`` (the owner id
written on orders, payments and cards), ``scope``, ``kind`` and, for a customer, ``email`` and
``name``. There are no refresh tokens: a customer logs in again, a client asks again.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterable
from typing import Any, TypeVar

import jwt
from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError

from sagakit.auth import AUDIENCE, ISSUER
from sagakit.errors import ApiError

T = TypeVar("T")

HASHER = PasswordHasher()
_DUMMY = HASHER.hash("not a password anyone has")


class HashGate:
    """At most ``at_once`` Argon2 runs in a process, and at most ``waiting`` requests queued
    behind them; past that, a 503 with Retry-After.

    Each run costs tens of milliseconds of a core and 64 MiB, and the token and sign-up
    endpoints are public: without a bound, a few addresses posting wrong passwords as fast as
    the gateway's per-address limit lets them would take every core of the machine from the
    saga. With it, guessing is as slow as the gate and the rest of the stack keeps its CPU.
    """

    def __init__(self, at_once: int = 2, waiting: int = 32) -> None:
        self.at_once, self.waiting = at_once, waiting
        self._slots = asyncio.Semaphore(at_once)
        self._queued = 0

    @contextlib.asynccontextmanager
    async def slot(self) -> AsyncIterator[None]:
        """One of the ``at_once`` slots, waited for (or the 503 when too many wait)."""
        if self._queued >= self.at_once + self.waiting:
            raise ApiError(503, "Service unavailable", "Too many sign-ins at once; retry "
                           "shortly.", headers={"Retry-After": "1"},
                           error="temporarily_unavailable")
        self._queued += 1
        try:
            async with self._slots:
                yield
        finally:
            self._queued -= 1

    async def run(self, work: Callable[[], T]) -> T:
        async with self.slot():
            return await asyncio.to_thread(work)


GATE = HashGate()


async def hash_password(password: str) -> str:
    return await GATE.run(lambda: HASHER.hash(password))


def verify_password(hashed: str | None, password: str) -> bool:
    """Blocking (tens of milliseconds): run it in a thread, in a slot of :data:`GATE`."""
    try:
        return HASHER.verify(hashed or _DUMMY, password) and hashed is not None
    except (VerificationError, InvalidHashError):
        return False


class Signer:
    """Signs access tokens with the first (newest) key of a private key set."""

    def __init__(self, keys: dict[str, Any], ttl_seconds: int) -> None:
        if not keys.get("keys"):
            raise ValueError("the signing key set is empty")
        newest = keys["keys"][0]
        self.kid = str(newest["kid"])
        self._key = jwt.PyJWK(newest)
        self.ttl = ttl_seconds

    def issue(self, subject: str, scopes: Iterable[str], kind: str,
              **claims: Any) -> dict[str, Any]:
        """An OAuth 2.0 token response (RFC 6749 §5.1) for ``subject``."""
        now = int(time.time())
        scope = " ".join(sorted(set(scopes)))
        payload = {"iss": ISSUER, "aud": AUDIENCE, "sub": subject, "iat": now, "nbf": now,
                   "exp": now + self.ttl, "jti": uuid.uuid4().hex, "scope": scope,
                   "kind": kind, **{k: v for k, v in claims.items() if v is not None}}
        token = jwt.encode(payload, self._key, algorithm="EdDSA", headers={"kid": self.kid})
        return {"access_token": token, "token_type": "bearer", "expires_in": self.ttl,
                "scope": scope}
