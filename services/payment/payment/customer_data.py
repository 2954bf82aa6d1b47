"""The payment service's part of a customer's data: export it, and erase it.

What is personal here is a card's holder name. Erasure replaces it with :data:`ERASED`; the
ledger (charges, refunds, amounts, outcomes) stays as the bookkeeping law wants it, its rows
keeping the owner's id, a pseudonym that names nobody once the identity service has erased the
account. A card holder plays no part in a saga (a charge uses the token), so payment erases at
once; the order service is the one that waits for sagas in flight. Retention
(:func:`anonymise_older_than`) does the same to cards older than the retention period.
"""

from __future__ import annotations

import logging
from datetime import timedelta
from typing import Any

import asyncpg

from payment import store
from sagakit.envelope import EventMeta, EventSource
from sagakit.events import (
    CustomerDataRequested,
    CustomerErasureRequested,
    PaymentCustomerData,
    PaymentCustomerErased,
)
from sagakit.postgres import add_to_outbox, first_delivery

log = logging.getLogger("payment.customer_data")
SOURCE = EventSource("payment")
SERVICE = "payment"
ERASED = "[erased]"
PUBLISHES = (PaymentCustomerData, PaymentCustomerErased)


def _json(row: asyncpg.Record) -> dict[str, Any]:
    return {k: (v.isoformat() if hasattr(v, "isoformat") else
                str(v) if not isinstance(v, int | str | None) else v) for k, v in row.items()}


async def export(pool: asyncpg.Pool, event: CustomerDataRequested, meta: EventMeta) -> None:
    """Announce the customer's cards (as stored: token, brand, last four, expiry, holder; the
    number and CVC never were) and ledger. The token is theirs, as their card list shows it."""
    async with pool.acquire() as conn, conn.transaction():
        if not await first_delivery(conn, meta):
            return
        cards = await conn.fetch(
            "SELECT token, brand, last4, exp_month, exp_year, holder, created_at FROM cards"
            " WHERE owner = $1 ORDER BY created_at", event.customer_id)
        ledger = await conn.fetch(
            "SELECT id, order_id, kind, status, amount, currency, reason, refund_of, created_at"
            " FROM payments WHERE order_id IN (SELECT order_id FROM payments WHERE owner = $1)"
            " ORDER BY created_at, kind", event.customer_id)
        await add_to_outbox(conn, SOURCE.event(PaymentCustomerData(
            export_id=event.export_id, customer_id=event.customer_id, service=SERVICE,
            data={"cards": [_json(c) for c in cards], "ledger": [_json(p) for p in ledger]},
        ), event.customer_id))
    log.info("exported %d cards and %d ledger rows for a data export", len(cards), len(ledger))


async def erase(pool: asyncpg.Pool, event: CustomerErasureRequested, meta: EventMeta) -> None:
    """Anonymise the holder of the customer's cards; announce payment.customer_erased."""
    async with pool.acquire() as conn, conn.transaction():
        if not await first_delivery(conn, meta):
            return
        # First close the account: a token issued before the erasure tokenizes no more cards
        # (payment.store.insert_card), and one tokenized just now is committed, and erased here.
        await store.close_account(conn, event.customer_id)
        status = await conn.execute(
            "UPDATE cards SET holder = $2 WHERE owner = $1 AND holder <> $2",
            event.customer_id, ERASED)
        erased = int(status.split()[-1])
        await add_to_outbox(conn, SOURCE.event(PaymentCustomerErased(
            erasure_id=event.erasure_id, customer_id=event.customer_id, service=SERVICE,
            erased={"cards": erased},
        ), event.customer_id))
    log.info("erased the holder of %d card(s)", erased)


async def anonymise_older_than(pool: asyncpg.Pool, days: int) -> int:
    """Retention: the holder of cards tokenized more than ``days`` ago; returns how many."""
    async with pool.acquire() as conn:
        status = await conn.execute(
            "UPDATE cards SET holder = $2 WHERE created_at < now() - $1::interval"
            " AND holder <> $2", timedelta(days=days), ERASED)
    count = int(status.split()[-1])
    if count:
        log.info("retention: anonymised the holder of %d cards older than %d days", count, days)
    return count
