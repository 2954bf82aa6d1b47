"""Who is calling: every service verifies the bearer token itself, with the identity's public keys.

The identity service (services/identity) signs short-lived JWT access tokens (EdDSA, Ed25519) with
the newest key of its key set; every other service holds only the *public* half of that set, a
JWKS document given by ``AUTH_JWKS`` (the JSON itself) or ``AUTH_JWKS_FILE`` (a path: a Docker
secret, or the file ``make up`` writes in native mode). No service asks the identity service
anything at request time: verifying a signature needs no network, so a call that bypasses the
gateway (straight to 8001-8003) is checked exactly like one through it, and the identity service
being down never stops an order already authorised.

Rotation: a new key is added to the set (``python -m identity.keys rotate``), the identity signs
with it, and a token whose ``kid`` this process does not know makes it re-read its key file (at
most once every few seconds), so services follow a rotation without a restart. The old key stays
in the set until the tokens it signed have expired, then is retired.

Authorization is declared per route with :func:`allow`: the scopes that may call it (any one of
them suffices), written into the OpenAPI document as the operation's ``security`` requirement, so
the docs, the checks and the authorization-matrix test (tests/e2e/test_authz.py) read one source.
Scopes: ``orders`` (a customer, or a machine client placing orders for the customers it names:
their own orders, payments and cards) and ``ops`` (an operator: the kitchen, stock, every order,
dead letters). Objects carry their owner (the token's ``sub``); a caller without ``ops`` sees
only its own, and someone else's is a 404, never a 403 that would confirm it exists.

Why hand-written rather than a framework: the whole of it is "verify an EdDSA JWT against a key
set and compare scopes", which PyJWT does; what is here is the FastAPI wiring and the reload.
"""

from __future__ import annotations

import json
import os
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any

import jwt
from fastapi import Depends, FastAPI, Request
from fastapi.openapi.models import OAuthFlowClientCredentials, OAuthFlowPassword, OAuthFlows
from fastapi.openapi.utils import get_openapi
from fastapi.security import OAuth2

from sagakit.errors import ApiError

ISSUER = "saga-shop-identity"
AUDIENCE = "saga-shop"
TOKEN_URL = "/api/v1/auth/token"  # noqa: S105  # a path, not a secret
SCOPES = {
    "orders": "place orders and read your own orders, payments and cards",
    "ops": "operate the shop: the kitchen line, stock, every order, dead letters and replay",
}
SCHEME = "OAuth2"
# A token signed by a key this process does not know re-reads the key file, at most this often.
RELOAD_SECONDS = 5.0
# Verification tolerates this much clock difference between the identity and a service for a
# token's start (``iat``, ``nbf``: a token minted by a clock a little ahead is valid at once); its
# expiry is exact, as the token endpoint's ``expires_in`` promises and ``remembered`` applies.
LEEWAY_SECONDS = 10
# Tokens verified already, remembered per process (see KeySet.remembered): at most this many.
VERIFIED_TOKENS = 4096


@dataclass(frozen=True)
class Principal:
    """The verified caller."""

    subject: str  # the owner id written on what it creates
    scopes: frozenset[str]
    kind: str  # "customer" or "client"
    email: str | None = None
    name: str | None = None
    claims: Mapping[str, Any] = field(default_factory=dict, compare=False, repr=False)

    @property
    def is_operator(self) -> bool:
        return "ops" in self.scopes

    def owns(self, owner: str | None) -> bool:
        """May this caller see an object owned by ``owner``? Operators see everything."""
        return self.is_operator or (owner is not None and owner == self.subject)


def read_secret(name: str, default: str | None = None,
                environ: Mapping[str, str] | None = None) -> str | None:
    """A secret from ``NAME`` or from the file ``NAME_FILE`` (Docker secrets), in both modes."""
    env = os.environ if environ is None else environ
    if path := env.get(f"{name}_FILE"):
        return Path(path).read_text(encoding="utf-8").strip()
    return env.get(name, default)


class KeySet:
    """The identity's public keys (a JWKS), by ``kid``; re-read when an unknown ``kid`` shows up."""

    def __init__(self, loader: Callable[[], str | None]) -> None:
        self._loader = loader
        self._keys: dict[str, jwt.PyJWK] = {}
        self._jwks: dict[str, dict[str, Any]] = {}  # each key's JWK as last read
        self._loaded_at = float("-inf")
        self._lock = threading.Lock()
        # token -> (its principal, its expiry (epoch seconds), the kid and key that verified it)
        self._verified: dict[str, tuple[Principal, float, str, jwt.PyJWK]] = {}
        self._load()

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> KeySet:
        return cls(lambda: read_secret("AUTH_JWKS", environ=environ))

    def _load(self) -> None:
        self._loaded_at = time.monotonic()
        text = self._loader()
        if not text:
            self._keys = {}
            return
        keys, jwks = {}, {}
        for entry in json.loads(text).get("keys", []):
            public = {k: v for k, v in entry.items() if k != "d"}  # never keep a private part
            kid = str(entry["kid"])
            # An unchanged key stays the same object: the tokens it verified stay remembered.
            unchanged = kid in self._keys and self._jwks.get(kid) == public
            keys[kid] = self._keys[kid] if unchanged else jwt.PyJWK(public)
            jwks[kid] = public
        self._keys, self._jwks = keys, jwks

    def key(self, kid: str) -> jwt.PyJWK | None:
        if kid not in self._keys and time.monotonic() - self._loaded_at > RELOAD_SECONDS:
            with self._lock:
                self._load()
        return self._keys.get(kid)

    def __len__(self) -> int:
        return len(self._keys)

    def remembered(self, token: str) -> Principal | None:
        """The principal of ``token`` if this process verified it already, it has not expired
        and the key that verified it is still in the set (a key removed from the set takes its
        tokens' acceptance with it at once).

        A client sends the same token with every request until it expires (15 minutes here),
        and checking an Ed25519 signature is the dearest part of a request's own work (~4 % of
        the order service's CPU under load, docs/performance.md): so each token is verified
        once. Only tokens that passed :func:`verify` are kept, at most ``VERIFIED_TOKENS``, the
        oldest dropped first. Tokens are never revoked before their expiry in this project
        (short-lived access tokens, no revocation list); one that could be would need its
        revocation checked here.
        """
        found = self._verified.get(token)
        if found is None:
            return None
        principal, expires, kid, key = found
        if time.time() >= expires or self._keys.get(kid) is not key:
            self._verified.pop(token, None)
            return None
        return principal

    def remember(self, token: str, principal: Principal, kid: str) -> None:
        key = self._keys.get(kid)
        if key is None:
            return
        self._verified[token] = (principal, float(principal.claims["exp"]), kid, key)
        if len(self._verified) > VERIFIED_TOKENS:
            del self._verified[next(iter(self._verified))]  # dicts keep insertion order


def verify(token: str, keys: KeySet) -> Principal:
    """The principal of a valid access token; :class:`ApiError` 401 for anything else."""
    if (known := keys.remembered(token)) is not None:
        return known
    try:
        header = jwt.get_unverified_header(token)
        kid = str(header.get("kid", ""))
        key = keys.key(kid)
        if key is None:
            raise jwt.InvalidTokenError("signed by an unknown key")
        claims = jwt.decode(token, key=key, algorithms=["EdDSA"], audience=AUDIENCE,
                            issuer=ISSUER, leeway=LEEWAY_SECONDS,
                            options={"require": ["exp", "iat", "sub", "iss", "aud"]})
        if time.time() >= float(claims["exp"]):
            raise jwt.ExpiredSignatureError("Signature has expired")
    except jwt.InvalidTokenError as exc:
        raise unauthorized(f"The bearer token is not valid: {exc}.", error="invalid_token") \
            from exc
    found = Principal(
        subject=str(claims["sub"]),
        scopes=frozenset(str(claims.get("scope", "")).split()),
        kind=str(claims.get("kind", "client")),
        email=claims.get("email"),
        name=claims.get("name"),
        claims=claims,
    )
    keys.remember(token, found, kid)
    return found


def unauthorized(detail: str, *, error: str | None = None) -> ApiError:
    challenge = "Bearer" + (f' error="{error}"' if error else "")
    return ApiError(401, "Unauthorized", detail, field="Authorization",
                    headers={"WWW-Authenticate": challenge})


# The OpenAPI security scheme: both grants of the one token endpoint. auto_error=False: a missing
# token is this module's JSON 401, not FastAPI's plain one.
oauth2 = OAuth2(
    flows=OAuthFlows(
        password=OAuthFlowPassword(tokenUrl=TOKEN_URL, scopes=SCOPES),
        clientCredentials=OAuthFlowClientCredentials(tokenUrl=TOKEN_URL, scopes=SCOPES),
    ),
    scheme_name=SCHEME,
    description="Customers: grant_type=password (username = email). Operators and machine "
    "clients: grant_type=client_credentials. Send the access token as Authorization: Bearer.",
    auto_error=False,
)


def _keys(request: Request) -> KeySet:
    keys = getattr(request.app.state, "auth_keys", None)
    if keys is None:
        keys = request.app.state.auth_keys = KeySet.from_env()
    return keys


async def principal(request: Request,
                    authorization: Annotated[str | None, Depends(oauth2)]) -> Principal:
    """The caller, verified; 401 without a valid bearer token."""
    cached = getattr(request.state, "principal", None)
    if cached is not None:
        return cached  # type: ignore[no-any-return]
    if not authorization:
        raise unauthorized("This operation needs a bearer token: POST /api/v1/auth/token, then "
                           "send Authorization: Bearer <access_token>.")
    scheme, _, token = authorization.partition(" ")
    if scheme.lower() != "bearer" or not token:
        raise unauthorized("Send the token as Authorization: Bearer <access_token>.",
                           error="invalid_request")
    found = verify(token.strip(), _keys(request))
    request.state.principal = found
    return found


# The verified caller, for a handler that needs to know who: ``caller: Caller``.
Caller = Annotated[Principal, Depends(principal)]


def allow(*scopes: str) -> dict[str, Any]:
    """Route keyword arguments declaring who may call: any one of ``scopes``; none = anyone.

    ``@router.get("/x", **allow("orders", "ops"))``. The check runs as a dependency; the handler
    takes ``caller: Caller`` when it needs to know who (cached per request).
    """
    unknown = set(scopes) - SCOPES.keys()
    if unknown:
        raise ValueError(f"unknown scopes {sorted(unknown)}")
    if not scopes:
        return {"openapi_extra": {"security": []}}

    challenge = f'Bearer error="insufficient_scope" scope="{" ".join(scopes)}"'

    async def check(caller: Caller) -> None:
        if not caller.scopes & set(scopes):
            raise ApiError(403, "Forbidden",
                           f"This operation needs one of the scopes: {', '.join(scopes)}.",
                           field="Authorization", headers={"WWW-Authenticate": challenge})

    return {"dependencies": [Depends(check)],
            "openapi_extra": {"security": [{SCHEME: [s]} for s in scopes]}}


def document(app: FastAPI) -> None:
    """The app's OpenAPI with the OAuth2 scheme and, per operation, exactly who may call it.

    FastAPI adds a scope-less ``{"OAuth2": []}`` for the token dependency itself; the
    alternatives :func:`allow` wrote are the truth, so that entry is dropped where they exist.
    """
    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            schema = get_openapi(title=app.title, version=app.version,
                                 description=app.description, routes=app.routes)
            schema.setdefault("components", {}).setdefault("securitySchemes", {})[SCHEME] = (
                oauth2.model.model_dump(mode="json", by_alias=True, exclude_none=True))
            for path in schema.get("paths", {}).values():
                for operation in path.values():
                    security = operation.get("security")
                    if security and any(any(s.values()) for s in security):
                        operation["security"] = [s for s in security if any(s.values())]
            app.openapi_schema = schema
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
