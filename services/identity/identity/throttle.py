"""Password guessing, slowed per account: a few free attempts, then a wait that doubles.

The gateway limits each address (``GATEWAY_RATE_LIMIT``) and the hash gate each process
(identity.tokens.HashGate), but neither stops many addresses guessing one account's password
slowly. So the identity counts the attempts on each account since its last success: the first
``free`` are checked at once; after that each one must wait ``first_wait`` seconds, doubling
with each further failure up to ``longest_wait`` (5 free, then 1 s, 2 s, 4 s ... 15 min by
default). An attempt that comes during the wait is answered 429 with ``Retry-After``, its
password not even checked and the attempt not counted, so a burst of guesses does not make
the account's owner wait longer; a success forgets the count; so do ``forget`` seconds with no
attempt. Times are the database's clock when each statement runs (``clock_timestamp()``, not the
transaction's start: an attempt that waited for the row lock would otherwise see the wait its
predecessor just set as still ahead of it).

This is OWASP's "progressive delay" rather than ASP.NET Identity's fixed lock-out (5 failures,
5 minutes, the owner locked out too): someone who types a password wrong a few times waits
seconds, while guessing one account's password gets about a hundred tries a day.

The count is kept for what was typed as the account, whether or not such an account exists, so
a wait tells nobody which accounts exist; the key is a SHA-256 digest of it (a customer's email
lower-cased, as sign-up keeps it; a client's id), so a mistyped or probed email is not stored
as typed. An attempt is counted *before* its password is checked, inside the transaction that
reads the count with the row locked: concurrent guesses are each counted, never all let
through on one reading.

Written here rather than taken from a library: the rate-limiting libraries for Python (limits,
slowapi) keep counters in memory, Redis or Memcached, and this service has PostgreSQL only; the
policy is a dozen lines of SQL on one table.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import timedelta

import asyncpg


def customer_key(sql_email: str) -> str:
    """SQL: the key of a customer's account from an SQL expression of its email."""
    return (f"encode(sha256(convert_to('customer:' || lower(trim({sql_email})), 'UTF8')),"
            " 'hex')")


def client_key(sql_client_id: str) -> str:
    """SQL: the key of a client's account from an SQL expression of its id."""
    return f"encode(sha256(convert_to('client:' || {sql_client_id}, 'UTF8')), 'hex')"


@dataclass(frozen=True)
class LoginThrottle:
    free: int = 5
    first_wait: float = 1.0
    longest_wait: float = 900.0
    forget: float = 86_400.0

    def wait_after(self, failures: int) -> float:
        """Seconds an attempt waits after ``failures`` attempts with no success."""
        if failures < self.free:
            return 0.0
        return min(self.longest_wait, self.first_wait * 2.0 ** min(failures - self.free, 30))

    async def attempt(self, conn: asyncpg.Connection, key_sql: str, account: str) -> int:
        """Count an attempt on ``account`` (``key_sql`` turns ``$1`` into its key), unless it
        must wait: then nothing is counted and the seconds left (at least 1) are returned;
        0 means check the password now."""
        key = key_sql.format("$1")
        async with conn.transaction():
            await conn.execute(
                f"INSERT INTO login_attempts (account, failures, last_at) VALUES ({key}, 0,"
                " now()) ON CONFLICT (account) DO NOTHING", account)
            row = await conn.fetchrow(
                "SELECT failures, extract(epoch FROM wait_until - clock_timestamp()) AS left,"
                " last_at < clock_timestamp() - $2::interval AS forgotten"
                f" FROM login_attempts WHERE account = {key} FOR UPDATE",
                account, timedelta(seconds=self.forget))
            left = float(row["left"] or 0)  # numeric: seconds to wait still
            if left > 0:
                return max(1, math.ceil(left))
            failures = 0 if row["forgotten"] else row["failures"]
            await conn.execute(
                "UPDATE login_attempts SET failures = $2, last_at = clock_timestamp(),"
                " wait_until = CASE WHEN $3::float8 > 0"
                "  THEN clock_timestamp() + make_interval(secs => $3) END"
                f" WHERE account = {key}", account, failures + 1, self.wait_after(failures + 1))
        return 0

    async def succeeded(self, conn: asyncpg.Connection, key_sql: str, account: str) -> None:
        """The password was right: the account's count starts again."""
        await conn.execute(f"DELETE FROM login_attempts WHERE account = {key_sql.format('$1')}",
                           account)

    async def forget_idle(self, pool: asyncpg.Pool) -> int:
        """Retention: counts with no attempt for ``forget`` seconds (and no wait left) go."""
        async with pool.acquire() as conn:
            status = await conn.execute(
                "DELETE FROM login_attempts WHERE last_at < now() - $1::interval"
                " AND (wait_until IS NULL OR wait_until < now())",
                timedelta(seconds=self.forget))
        return int(status.split()[-1])
