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
import time
import uuid
from collections.abc import Iterable
from typing import Any

import jwt
from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError

from sagakit.auth import AUDIENCE, ISSUER

HASHER = PasswordHasher()
_DUMMY = HASHER.hash("not a password anyone has")


async def hash_password(password: str) -> str:
    return await asyncio.to_thread(HASHER.hash, password)


async def check_password(hashed: str | None, password: str) -> bool:
    def check() -> bool:
        try:
            return HASHER.verify(hashed or _DUMMY, password) and hashed is not None
        except (VerificationError, InvalidHashError):
            return False

    return await asyncio.to_thread(check)


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
