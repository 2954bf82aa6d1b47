"""Password guessing, slowed per account: a few free attempts, then a wait that doubles.

The gateway limits each address (``GATEWAY_RATE_LIMIT``) and the hash gate each process
(identity.tokens.HashGate), but neither stops many addresses guessing one account's password
slowly. So the identity counts the failed attempts on each account since its last success:
after ``free`` of them, the next attempt must wait ``first_wait`` seconds, doubling with each
further failure up to ``longest_wait`` (5 free, then 1 s, 2 s, 4 s ... 15 min by default). An
attempt that comes during the wait is answered 429 with ``Retry-After``, its password not even
checked and the attempt not counted, so a burst of guesses does not make the account's owner
wait longer; a success forgets the count; so do ``forget`` seconds with no failure.

This is OWASP's "progressive delay" rather than ASP.NET Identity's fixed lock-out (5 failures,
5 minutes, the owner locked out too): someone who types a password wrong a few times waits
seconds, while guessing one account's password gets about a hundred tries a day.

Only failures count, so any number of right log-ins at once (a customer's tabs, a test's
workers) never wait. The wait is read inside the hash gate's slot, just before the hash, and a
failure recorded before the slot is let go (identity.api): a burst of concurrent guesses is
checked a few at a time against the count, never all at once on one reading of it.

The count is kept for what was typed as the account, whether or not such an account exists, so
a wait tells nobody which accounts exist; the key is a SHA-256 digest of it (a customer's email
as the database lower-cases it, :func:`customer`; a client's id), so a mistyped or probed email
is not stored as typed. Times are the database's clock when each statement runs
(``clock_timestamp()``).

Written here rather than taken from a library: the rate-limiting libraries for Python (limits,
slowapi) keep counters in memory, Redis or Memcached, and this service has PostgreSQL only; the
policy is a dozen lines of SQL on one table.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass
from datetime import timedelta

import asyncpg


def customer(account: str) -> str:
    """The key of a customer's account: its email as the database lower-cases it (``lower()``,
    which sign-up's unique index and log-in's lookup use). Python's ``str.lower`` is not the
    same function (the database's follows its locale: ``İ`` is ``i`` there, ``i̇`` in Python),
    and a key from the one with a lookup by the other gave each spelling of an account its own
    count."""
    return _digest(f"customer:{account}")


def client(client_id: str) -> str:
    """The key of a client's account."""
    return _digest(f"client:{client_id}")


def _digest(account: str) -> str:
    return hashlib.sha256(account.encode()).hexdigest()


@dataclass(frozen=True)
class LoginThrottle:
    free: int = 5
    first_wait: float = 1.0
    longest_wait: float = 900.0
    forget: float = 86_400.0

    def wait_after(self, failures: int) -> float:
        """Seconds the next attempt waits after ``failures`` failures with no success."""
        if failures < self.free:
            return 0.0
        return min(self.longest_wait, self.first_wait * 2.0 ** min(failures - self.free, 30))

    async def wait_left(self, conn: asyncpg.Connection, account: str) -> int:
        """Seconds ``account`` (its key: :func:`customer`, :func:`client`) must wait before its
        next attempt is checked (at least 1), or 0: check it now."""
        left = await conn.fetchval(
            "SELECT extract(epoch FROM wait_until - clock_timestamp()) FROM login_attempts"
            " WHERE account = $1", account)
        return max(1, math.ceil(left)) if left is not None and left > 0 else 0

    async def failed(self, conn: asyncpg.Connection, account: str) -> None:
        """A wrong password (or secret) for ``account``: one more failure, and the wait it
        brings. Concurrent failures are each counted (the row is locked while it is read)."""
        async with conn.transaction():
            await conn.execute(
                "INSERT INTO login_attempts (account, failures, last_at) VALUES ($1, 0,"
                " clock_timestamp()) ON CONFLICT (account) DO NOTHING", account)
            row = await conn.fetchrow(
                "SELECT failures, last_at < clock_timestamp() - $2::interval AS forgotten"
                " FROM login_attempts WHERE account = $1 FOR UPDATE",
                account, timedelta(seconds=self.forget))
            failures = 1 + (0 if row["forgotten"] else row["failures"])
            await conn.execute(
                "UPDATE login_attempts SET failures = $2, last_at = clock_timestamp(),"
                " wait_until = CASE WHEN $3::float8 > 0"
                "  THEN clock_timestamp() + make_interval(secs => $3) END"
                " WHERE account = $1", account, failures, self.wait_after(failures))

    async def succeeded(self, conn: asyncpg.Connection, account: str) -> None:
        """The password was right: the account's count starts again."""
        await conn.execute("DELETE FROM login_attempts WHERE account = $1", account)

    async def forget_idle(self, pool: asyncpg.Pool) -> int:
        """Retention: counts with no attempt for ``forget`` seconds (and no wait left) go."""
        async with pool.acquire() as conn:
            status = await conn.execute(
                "DELETE FROM login_attempts WHERE last_at < now() - $1::interval"
                " AND (wait_until IS NULL OR wait_until < now())",
                timedelta(seconds=self.forget))
        return int(status.split()[-1])
