"""The signing keys: an Ed25519 key set, newest first, and its public half for the other services.

Two files in one directory (``.run/keys`` natively, the ``auth-keys`` volume in compose):

- ``signing-keys.json``: the private JWKS, read only by the identity service;
- ``jwks.json``: the same keys without their private part, read by every other service
  (``AUTH_JWKS_FILE``, sagakit.auth) and served at ``/.well-known/jwks.json``.

``python -m identity.keys init DIR [--public DIR2]``   make both files with one key, unless
                                       they exist (``--public``: jwks.json goes to DIR2);
``python -m identity.keys rotate DIR`` add a new key in front (the identity signs with it after a
                                       restart; services accept it at once, re-reading jwks.json
                                       when they meet its kid);
``python -m identity.keys retire DIR KID`` drop an old key once the tokens it signed have expired
                                       (IDENTITY_TOKEN_TTL_SECONDS after the rotation).

Ed25519 (EdDSA in JOSE terms): small keys and signatures, fast, and no parameter choices to get
wrong. The files are written atomically and the private one with mode 0600.
"""

from __future__ import annotations

import json
import os
import secrets
import sys
import tempfile
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import jwt
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from sagakit.auth import read_secret

if TYPE_CHECKING:
    from identity.settings import IdentitySettings

PRIVATE = "signing-keys.json"
PUBLIC = "jwks.json"


def new_key() -> dict[str, Any]:
    """A fresh Ed25519 private JWK with a ``kid`` that says when it was made."""
    jwk = json.loads(jwt.algorithms.OKPAlgorithm.to_jwk(Ed25519PrivateKey.generate()))
    kid = f"{datetime.now(UTC):%Y%m%dT%H%M%S}-{secrets.token_hex(4)}"
    return {**jwk, "kid": kid, "alg": "EdDSA", "use": "sig"}


def public(keys: dict[str, Any]) -> dict[str, Any]:
    return {"keys": [{k: v for k, v in key.items() if k != "d"} for key in keys["keys"]]}


def read_key_set(config: IdentitySettings) -> dict[str, Any]:
    """The private key set: IDENTITY_SIGNING_KEYS_FILE (a path) or IDENTITY_SIGNING_KEYS."""
    if config.signing_keys_file:
        return dict(json.loads(Path(config.signing_keys_file).read_text(encoding="utf-8")))
    if text := read_secret("IDENTITY_SIGNING_KEYS"):
        return dict(json.loads(text))
    raise SystemExit("identity: no signing keys: set IDENTITY_SIGNING_KEYS_FILE (make up writes "
                     "one with: python -m identity.keys init DIR)")


def _write(path: Path, document: dict[str, Any], mode: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        json.dump(document, f, indent=2)
    Path(tmp).chmod(mode)
    Path(tmp).replace(path)


def save(directory: Path, keys: dict[str, Any], public_dir: Path | None = None) -> None:
    _write(directory / PRIVATE, keys, 0o600)
    _write((public_dir or directory) / PUBLIC, public(keys), 0o644)


def load(directory: Path) -> dict[str, Any]:
    return dict(json.loads((directory / PRIVATE).read_text(encoding="utf-8")))


def init(directory: Path, public_dir: Path | None = None) -> bool:
    """Make the key files unless they exist (the public one always rewritten); whether it made
    the keys."""
    if (directory / PRIVATE).exists():
        save(directory, load(directory), public_dir)
        return False
    save(directory, {"keys": [new_key()]}, public_dir)
    return True


def rotate(directory: Path, public_dir: Path | None = None) -> str:
    keys = load(directory)
    key = new_key()
    save(directory, {"keys": [key, *keys["keys"]]}, public_dir)
    return str(key["kid"])


def retire(directory: Path, kid: str, public_dir: Path | None = None) -> None:
    keys = load(directory)
    kept = [k for k in keys["keys"] if k["kid"] != kid]
    if len(kept) == len(keys["keys"]):
        raise SystemExit(f"no key {kid!r} in {directory / PRIVATE}")
    if not kept:
        raise SystemExit("refusing to retire the last key")
    save(directory, {"keys": kept}, public_dir)


def main(argv: list[str]) -> None:
    """``init|rotate DIR [--public DIR]``, ``retire DIR KID [--public DIR]``."""
    usage = "usage: python -m identity.keys init|rotate DIR | retire DIR KID  [--public DIR]"
    public_dir = None
    if "--public" in argv:
        at = argv.index("--public")
        public_dir, argv = Path(argv[at + 1]), argv[:at] + argv[at + 2:]
    if len(argv) < 2:
        raise SystemExit(usage)
    command, directory = argv[0], Path(argv[1])
    if command == "init" and len(argv) == 2:
        made = init(directory, public_dir)
        print(f"keys: {'made' if made else 'kept'} {directory / PRIVATE}; "
              f"public set in {(public_dir or directory) / PUBLIC}")
    elif command == "rotate" and len(argv) == 2:
        kid = rotate(directory, public_dir)
        print(f"keys: new signing key {kid} (restart the identity service to sign with it)")
    elif command == "retire" and len(argv) == 3:
        retire(directory, argv[2], public_dir)
        print(f"keys: retired {argv[2]}")
    else:
        raise SystemExit(usage)


if __name__ == "__main__":
    main(sys.argv[1:])
