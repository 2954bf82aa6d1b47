"""Webhooks: each status of an order that names a ``callback_url`` is POSTed there, signed as
the Standard Webhooks specification says (``webhook-id``, ``webhook-timestamp``,
``webhook-signature: v1,<base64 HMAC-SHA256 of id.timestamp.body>``), by the maintained
``standardwebhooks`` package, so a receiver verifies it with the same library.

Never slowing the saga: a delivery is a row written by the very statement that writes the
timeline entry (order.store, transactional-outbox style); this sender, one per replica, claims
due rows with ``FOR UPDATE SKIP LOCKED``, POSTs with a short timeout and records the outcome.
It is woken as the outbox relays are (sagakit.units): by the delivery or request of its own
process that wrote a row, once it ended; a sweep every ``sweep_seconds`` finds the rest (rows
another replica wrote, retries that fell due).
A failed attempt (no answer, or not 2xx) is retried after an exponential delay with jitter;
after ``WEBHOOK_MAX_ATTEMPTS`` the delivery is parked, where an operator lists and replays it
(GET /api/v1/orders/webhooks/failed, POST .../{id}/replay).

Order: an order's deliveries go one at a time, in timeline order (a delivery waits while an
earlier one of its order is still pending), so a receiver sees pending_payment before paid.
A parked delivery no longer holds the later ones back; a replayed one then arrives late.

Secrets: one per owner (the token's subject), random, made on first use and readable by that
owner alone at GET /api/v1/orders/webhook-secret; never logged, never in an order's JSON.
Rotation (POST .../webhook-secret/rotate) makes a new one; the one it replaces keeps signing
beside it for ``WEBHOOK_SECRET_OVERLAP_HOURS``, each delivery carrying both signatures, as the
specification allows, so a receiver switches secrets without failing a delivery.
"""

from __future__ import annotations

import asyncio
import base64
import logging
import random
import secrets
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any
from uuid import UUID

import asyncpg
import httpx
import orjson
from standardwebhooks.webhooks import Webhook

from order.callbacks import CallbackPolicy, CallbackRefused
from order.store import WEBHOOK_DELIVERIES, AccountClosed, open_account
from sagakit import logs, telemetry, units
from sagakit.backoff import Backoff
from sagakit.waits import cancelled, woken

log = logging.getLogger("order.webhooks")
EVENT_TYPE = "order.status_changed"


def new_secret() -> str:
    return "whsec_" + base64.b64encode(secrets.token_bytes(32)).decode()


# An erased account gets no secret, new or old: its token, valid until it expires, can place no
# order that would need one (store.AccountClosed).
_OPEN = open_account("$1")


async def secret_of(conn: asyncpg.Connection, owner: str) -> str:
    """The owner's signing secret, made on first use (concurrent first uses agree on one).
    Raises :class:`AccountClosed` for an erased owner."""
    read = f"SELECT secret FROM webhook_secrets WHERE owner = $1 AND {_OPEN}"
    secret: str | None = await conn.fetchval(read, owner)
    if secret is None:
        await conn.execute(f"INSERT INTO webhook_secrets (owner, secret) SELECT $1, $2"
                           f" WHERE {_OPEN} ON CONFLICT (owner) DO NOTHING", owner, new_secret())
        secret = await conn.fetchval(read, owner)
    if secret is None:
        raise AccountClosed
    return secret


async def rotate(conn: asyncpg.Connection, owner: str,
                 overlap: timedelta) -> tuple[str, datetime | None]:
    """A new secret for ``owner``; the one it replaces (if any) signs too until the returned
    time. Rotating again within the overlap retires the oldest at once: two at most.
    Raises :class:`AccountClosed` for an erased owner."""
    row = await conn.fetchrow(
        f"INSERT INTO webhook_secrets (owner, secret) SELECT $1, $2 WHERE {_OPEN}"
        " ON CONFLICT (owner) DO UPDATE SET previous_secret = webhook_secrets.secret,"
        " previous_until = now() + $3::interval, secret = EXCLUDED.secret, created_at = now()"
        " RETURNING secret, previous_until", owner, new_secret(), overlap)
    if row is None:
        raise AccountClosed
    return row["secret"], row["previous_until"]


async def previous_until(conn: asyncpg.Connection, owner: str) -> datetime | None:
    """Until when the owner's previous secret still signs (None: it does not)."""
    until: datetime | None = await conn.fetchval(
        "SELECT previous_until FROM webhook_secrets WHERE owner = $1 AND previous_until > now()",
        owner)
    return until


async def signing_secrets(conn: asyncpg.Connection, owners: Sequence[str]) -> dict[str, list[str]]:
    """Each owner's secrets that sign now: the current one, then the previous one while its
    overlap lasts. An owner with none yet (an order from before webhooks) gets one; an erased
    owner with none gets none (nothing is sent for it), never an error that would fail the
    batch of every other owner."""
    rows = await conn.fetch(
        "SELECT owner, secret, CASE WHEN previous_until > now() THEN previous_secret END AS old"
        " FROM webhook_secrets WHERE owner = ANY($1)", list(owners))
    found = {r["owner"]: [r["secret"], *([r["old"]] if r["old"] else [])] for r in rows}
    for owner in set(owners) - found.keys():
        try:
            found[owner] = [await secret_of(conn, owner)]
        except AccountClosed:
            found[owner] = []
    return found


def retry_delay(attempt: int, base: float, cap: float, roll: float) -> float:
    """Seconds before attempt ``attempt + 1``: doubling from ``base``, at most ``cap``, and
    "equal jitter" (half fixed, half random by ``roll`` in [0, 1)) so receivers that failed
    together are not retried together."""
    delay: float = min(cap, base * 2 ** (attempt - 1))
    return delay / 2 + roll * delay / 2


def payload(row: asyncpg.Record) -> bytes:
    """The body, the same bytes on every attempt (it is built from the same rows). Its
    ``sequence`` is the entry's position in the order's timeline (1, 2, ...), as the live
    stream's event ids are: the shop-wide ``seq`` would tell every receiver how many orders
    the shop takes."""
    return orjson.dumps({
        "type": EVENT_TYPE,
        "timestamp": row["at"].isoformat(),
        "data": {"order_id": str(row["order_id"]), "status": row["status"],
                 "reason": row["reason"], "sequence": row["position"]},
    })


def signed_headers(secrets: Sequence[str], delivery_id: UUID, body: bytes,
                   now: datetime) -> dict[str, str]:
    """The specification's headers; one ``v1,<signature>`` per secret, space separated."""
    text = body.decode()
    return {
        "webhook-id": str(delivery_id),
        "webhook-timestamp": str(int(now.timestamp())),
        "webhook-signature": " ".join(
            Webhook(secret).sign(str(delivery_id), now, text) for secret in secrets),
    }


# Claim: due, pending, and the first pending one of its order; the claim itself is a lease
# (next_attempt_at moves past the attempt's timeout), so a sender that dies mid-POST leaves the
# row to be tried again, and no transaction stays open during the POST.
_CLAIM = """
WITH due AS (
    SELECT d.id FROM webhook_deliveries d
    WHERE d.state = 'pending' AND d.next_attempt_at <= now()
      AND NOT EXISTS (SELECT 1 FROM webhook_deliveries e WHERE e.order_id = d.order_id
                      AND e.state = 'pending' AND e.timeline_seq < d.timeline_seq)
    ORDER BY d.next_attempt_at LIMIT $1
    FOR UPDATE OF d SKIP LOCKED)
UPDATE webhook_deliveries w
SET attempts = w.attempts + 1, next_attempt_at = now() + make_interval(secs => $2)
FROM due, order_timeline t, orders o
WHERE w.id = due.id AND t.seq = w.timeline_seq AND o.id = w.order_id
RETURNING w.id, w.order_id, w.timeline_seq, w.url, w.attempts, t.status, t.reason, t.at,
          coalesce(o.owner, '') AS owner, o.trace_id,
          (SELECT count(*) FROM order_timeline x WHERE x.order_id = w.order_id
           AND x.seq <= w.timeline_seq) AS position
"""


@dataclass(frozen=True)
class SenderSettings:
    max_attempts: int
    backoff_seconds: float
    backoff_max_seconds: float
    timeout_seconds: float
    batch_size: int = 20
    sweep_seconds: float = 0.5


class WebhookSender:
    """The background worker of one replica: claim, POST, record; woken by the unit of work
    that wrote a delivery (sagakit.units), or by its sweep."""

    def __init__(self, pool: asyncpg.Pool, policy: CallbackPolicy,
                 settings: SenderSettings) -> None:
        self.pool, self.policy, self.settings = pool, policy, settings
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._stopping = False
        self._http = httpx.AsyncClient(timeout=settings.timeout_seconds, follow_redirects=False,
                                       trust_env=False,
                                       headers={"user-agent": "saga-shop-webhooks/1"})

    async def start(self) -> None:
        units.register(self._wake, WEBHOOK_DELIVERIES)
        self._task = asyncio.create_task(self._run(), name="webhook-sender")

    async def stop(self) -> None:
        self._stopping = True
        units.unregister(self._wake, WEBHOOK_DELIVERIES)
        await cancelled(self._task)
        await self._http.aclose()

    async def _run(self) -> None:
        backoff = Backoff()
        with telemetry.untraced():  # the sweeps are not traced
            while not self._stopping:  # not only the cancel (sagakit.waits says why)
                try:
                    if await self.deliver_due() < self.settings.batch_size:
                        await self._wait()
                    backoff.reset()
                except asyncio.CancelledError:
                    raise
                except Exception as exc:  # the database is away: the rows wait
                    log.warning("webhook sender: %s; retrying in %.1fs", exc, backoff.delay)
                    await backoff.pause()

    async def _wait(self) -> None:
        await woken(self._wake, self.settings.sweep_seconds)
        self._wake.clear()

    async def deliver_due(self) -> int:
        """One batch: claim what is due and attempt each (concurrently); how many were due."""
        lease = self.settings.timeout_seconds * 2 + 5
        async with self.pool.acquire() as conn:
            rows = await conn.fetch(_CLAIM, self.settings.batch_size, lease)
            if not rows:
                return 0
            keys = await signing_secrets(conn, [r["owner"] for r in rows])
        await asyncio.gather(*(self._attempt(row, keys[row["owner"]]) for row in rows))
        return len(rows)

    async def _attempt(self, row: asyncpg.Record, secrets: list[str]) -> None:
        # Its log lines are the order's (its id, its trace id), as every line of a saga step is,
        # so the order's log link in Seq shows its webhooks too. Each attempt is a task of its
        # own (gather), so the id set here is this attempt's only.
        logs.order_id_var.set(str(row["order_id"]))
        with telemetry.in_trace(row["trace_id"]):
            await self._attempt_in_trace(row, secrets)

    async def _attempt_in_trace(self, row: asyncpg.Record, secrets: list[str]) -> None:
        if not secrets:  # signing_secrets: an erased owner's, nothing to sign it with
            await self._record(row["id"], "parked", "refused: the owner's account was erased")
            return
        try:
            error = await self._post(row, secrets)
        except CallbackRefused as exc:  # the allow-list changed, or DNS now points inside
            await self._record(row["id"], "parked", f"refused: callback_url {exc}")
            return
        if error is None:
            await self._record(row["id"], "delivered", None)
        elif row["attempts"] >= self.settings.max_attempts:
            log.warning("webhook %s parked after %d attempts: %s", row["id"], row["attempts"],
                        error)
            await self._record(row["id"], "parked", error)
        else:
            delay = retry_delay(row["attempts"], self.settings.backoff_seconds,
                                self.settings.backoff_max_seconds, random.random())
            await self._record(row["id"], "pending", error, retry_in=delay)

    async def _post(self, row: asyncpg.Record, secrets: list[str]) -> str | None:
        """POST once to the checked address; None on a 2xx, else what went wrong.

        The receiver is someone else's server: the whole attempt (the address check, connect,
        send, the answer's head) has one deadline, ``timeout_seconds`` (httpx's timeout bounds
        each read, so a receiver sending a byte now and then would hold it for ever), and only
        the status is read: the body is never, however large, and the connection is closed."""
        try:
            async with asyncio.timeout(self.settings.timeout_seconds):
                target = await self.policy.target(row["url"])
                body = payload(row)
                headers = {**signed_headers(secrets, row["id"], body, datetime.now(UTC)),
                           "content-type": "application/json", "host": target.host_header}
                extensions: dict[str, Any] = (
                    {"sni_hostname": target.host} if target.url.scheme == "https" else {})
                async with self._http.stream("POST", target.connect_url, content=body,
                                             headers=headers, extensions=extensions) as response:
                    status = response.status_code
        except TimeoutError:
            return f"no answer within {self.settings.timeout_seconds:g} s"
        except httpx.HTTPError as exc:
            return f"{type(exc).__name__}: {exc}"[:500]
        if 200 <= status < 300:
            return None
        return f"HTTP {status}"

    async def _record(self, delivery_id: UUID, state: str, error: str | None,
                      retry_in: float = 0.0) -> None:
        async with self.pool.acquire() as conn:
            await conn.execute(
                "UPDATE webhook_deliveries SET state = $2, last_error = $3,"
                " next_attempt_at = now() + make_interval(secs => $4),"
                " delivered_at = CASE WHEN $2 = 'delivered' THEN now() END WHERE id = $1",
                delivery_id, state, error, retry_in)


# --- What operators see and do -------------------------------------------------------------------

async def parked(conn: asyncpg.Connection, limit: int) -> list[asyncpg.Record]:
    rows: list[asyncpg.Record] = await conn.fetch(
        "SELECT d.id, d.order_id, d.url, d.attempts, d.last_error, d.created_at, t.status"
        " FROM webhook_deliveries d JOIN order_timeline t ON t.seq = d.timeline_seq"
        " WHERE d.state = 'parked' ORDER BY d.created_at DESC LIMIT $1", limit)
    return rows


async def replay(conn: asyncpg.Connection, delivery_id: UUID) -> bool:
    """Make a parked delivery due again, with a fresh set of attempts; False if none such."""
    async with conn.transaction():
        found = await conn.fetchval(
            "UPDATE webhook_deliveries SET state = 'pending', attempts = 0, last_error = NULL,"
            " next_attempt_at = now() WHERE id = $1 AND state = 'parked' RETURNING id",
            delivery_id)
        if found:
            units.written(WEBHOOK_DELIVERIES)  # the request's end wakes this replica's sender
    return found is not None
