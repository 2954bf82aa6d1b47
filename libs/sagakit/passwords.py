"""Random passwords for the stack's own infrastructure, made once: ``python -m sagakit.passwords``.

Compose mode's one-shot `keys` job runs it before any database starts::

    python -m sagakit.passwords /run/saga-secrets/order-db/password ...

Each path that does not exist yet gets 32 random URL-safe characters; one that exists is kept
(its database was created with it). The database image reads it as ``POSTGRES_PASSWORD_FILE``
when it creates its role, the service as ``<SERVICE>_DATABASE_PASSWORD_FILE``
(sagakit.settings.DatabaseSettings), so the compose file holds no password and no two
installations share one. Each database's password lives on a volume of its own, mounted only
into that database, its service and this job.
"""

from __future__ import annotations

import secrets
import sys
from pathlib import Path


def ensure(path: Path) -> bool:
    """Write a new random password to `path` unless it has one; True when one was made."""
    if path.exists():
        return False
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(secrets.token_urlsafe(24) + "\n", encoding="utf-8")
    # Readable by the other users of this volume (the database image reads it as its own
    # user): the volume, mounted into those containers only, is the boundary.
    tmp.chmod(0o644)
    tmp.replace(path)
    return True


def main(argv: list[str]) -> None:
    if not argv:
        raise SystemExit("usage: python -m sagakit.passwords FILE [FILE ...]")
    for name in argv:
        made = ensure(Path(name))
        print(f"passwords: {'made' if made else 'kept'} {name}")  # never the password itself


if __name__ == "__main__":
    main(sys.argv[1:])
