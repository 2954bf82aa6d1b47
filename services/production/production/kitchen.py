"""The kitchen line: cooks that take tickets from the kitchen queue and make them, one each.

Tickets wait in the Redis stream ``kitchen``, read through the consumer group ``cooks``, so the
cooks of every replica share one queue and each ticket goes to one cook. An entry leaves the
stream in the script that finishes its ticket (or once it turned out not to need making); one
whose cook died with it is taken over by another cook once it sat idle longer than any cook
could need. The entry carries the ticket's order and trace context, so a cook's round trips per
ticket are: the read, the fault switches, the start script, the finish script; with no
preparation time the last two are one script (start_finish.lua), both events still announced,
in order.
While the kitchen manager pauses the line, a cook holds the ticket it took, unstarted.

A ticket is made inside a span of its order's trace (the ticket keeps the trace context of the
``order.received`` it came from), so ``production.started`` and ``order.finished`` stay in that
trace; the cooks' waiting for work is not traced.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
from uuid import UUID

from production import service
from production.store import KitchenEntry, ProductionStore
from sagakit import logs, telemetry
from sagakit.backoff import Backoff
from sagakit.consuming import is_outage
from sagakit.faults import FaultStore

log = logging.getLogger("production.kitchen")

# A cook waits this long for work before it looks again (for a stop, or a ticket to reclaim).
READ_BLOCK_MS = 1_000
# How often a cook holding a ticket looks whether the paused line runs again.
PAUSE_POLL_SECONDS = 0.2
# How often one ticket in hand is retried after a Redis error before the cook lets go of it
# (it stays pending in the stream, and a cook takes it over after the reclaim idle time).
ATTEMPTS_PER_TICKET = 3


class KitchenLine:
    def __init__(
        self, store: ProductionStore, *, cooks: int, preparation_seconds: float,
        reclaim_seconds: float, faults: FaultStore,
    ) -> None:
        self.store = store
        self.faults = faults  # slowness_ms: added to each ticket's preparation
        self.preparation_seconds = preparation_seconds
        # Never take a ticket from a cook who may still be making it: a cook takes its
        # preparation plus the slowness fault (10 s at most), so keep the reclaim time (30 s by
        # default) above both; below, a slow ticket would be taken over and made twice
        # (finish.lua still announces it once).
        self.reclaim_idle_ms = int(max(reclaim_seconds, 3 * preparation_seconds) * 1000)
        self._reclaim_every = min(5.0, self.reclaim_idle_ms / 2000)
        self._next_reclaim = 0.0
        prefix = f"{socket.gethostname()}-{os.getpid()}"
        self.cooks = [f"{prefix}-cook-{n}" for n in range(1, cooks + 1)]
        self._tasks: list[asyncio.Task[None]] = []
        self._stopping = False

    async def start(self) -> None:
        await self.store.ensure_kitchen_group()
        with telemetry.untraced():  # the cooks' tasks start in this context: polling is quiet
            self._tasks = [asyncio.create_task(self._work(cook), name=cook)
                           for cook in self.cooks]

    async def stop(self, grace_seconds: float = 5.0) -> None:
        """Take no more tickets. A cook with one in hand has ``grace_seconds`` to finish it;
        if it cannot, the ticket stays pending in the stream for another cook to take over.

        Idle cooks are not cancelled but let their read run out (READ_BLOCK_MS): a read
        cancelled just as Redis served it would leave a ticket pending that no cook saw.
        """
        self._stopping = True
        if self._tasks:
            _, late = await asyncio.wait(self._tasks, timeout=grace_seconds)
            for task in late:
                task.cancel()
            await asyncio.gather(*self._tasks, return_exceptions=True)
        for cook in self.cooks:
            with contextlib.suppress(Exception):
                await self.store.retire_cook(cook)

    async def _work(self, cook: str) -> None:
        backoff, attempts = Backoff(), 0
        in_hand: KitchenEntry | None = None
        while not self._stopping:
            try:
                if in_hand is None:
                    in_hand, attempts = await self._next(cook), 0
                    if in_hand is None:
                        continue
                attempts += 1
                await self._make(cook, in_hand)
                in_hand = None
                backoff.reset()
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # Redis away or restarted: keep the ticket, try again
                log.warning("%s: %s; retrying in %.1fs", cook, exc, backoff.delay)
                if in_hand is not None and attempts >= ATTEMPTS_PER_TICKET:
                    # The warning above has the cause: no traceback for each letting go. Redis
                    # away is no one's fault (the ticket stays pending: a cook takes it over
                    # once Redis is back); anything else may be a bug.
                    (log.warning if is_outage(exc) else log.error)(
                        "%s lets go of kitchen entry %s", cook, in_hand.entry_id)
                    in_hand = None
                if "NOGROUP" in str(exc):  # the stream was deleted: recreate the queue
                    with contextlib.suppress(Exception):
                        await self.store.ensure_kitchen_group()
                await backoff.pause()

    async def _next(self, cook: str) -> KitchenEntry | None:
        """A ticket a dead cook left behind, if one is due, else the next one in the queue."""
        loop = asyncio.get_running_loop()
        if loop.time() >= self._next_reclaim:
            self._next_reclaim = loop.time() + self._reclaim_every
            entry = await self.store.reclaim_ticket(cook, self.reclaim_idle_ms)
            if entry is not None:
                self._next_reclaim = 0.0  # there may be more
                log.warning("%s took over kitchen entry %s", cook, entry.entry_id)
                return entry
        return await self.store.next_ticket(cook, READ_BLOCK_MS)

    async def _make(self, cook: str, entry: KitchenEntry) -> None:
        logs.order_id_var.set(None)
        context = self._context(entry)
        if entry.ticket_id is None or context is None:
            log.error("kitchen entry %s is not a ticket reserve.lua queued: dropped",
                      entry.entry_id)
            await self.store.done_with(entry)  # nothing to make
            return
        order_id, traceparent = context
        logs.order_id_var.set(str(order_id))
        with telemetry.span("kitchen cook", parent={"traceparent": traceparent or ""},
                            attributes={"saga.order_id": str(order_id),
                                        "saga.ticket_id": str(entry.ticket_id)}):
            await self._cook(cook, entry, entry.ticket_id, order_id)

    @staticmethod
    def _context(entry: KitchenEntry) -> tuple[UUID, str | None] | None:
        """(order id, traceparent) of the entry's ticket, as reserve.lua wrote them with it."""
        if entry.ticket_id is None or entry.order_id is None:
            return None
        return entry.order_id, entry.traceparent

    async def _cook(self, cook: str, entry: KitchenEntry, ticket_id: UUID, order_id: UUID) -> None:
        """Start, prepare and finish the ticket. Its entry leaves the stream with the finish
        (finish.lua), or at once when there is nothing to make; it stays pending when a stop
        comes while the line is paused, for the next cook to run to take over."""
        preparation = self.preparation_seconds + (
            (await self.faults.read()).values["slowness_ms"] / 1000)
        outcome = await self._start(entry, ticket_id, order_id, preparation)
        while outcome == "paused":  # hold the ticket, in its place, until the line runs
            if self._stopping:
                return
            with telemetry.untraced():  # waiting is not cooking: no span per look
                await self.store.keep(cook, entry)
                await asyncio.sleep(PAUSE_POLL_SECONDS)
                outcome = await self._start(entry, ticket_id, order_id, preparation)
        if outcome in ("started", "resumed"):
            await asyncio.sleep(preparation)
            await service.finish_cooking(self.store, entry, ticket_id, order_id)
        elif outcome != "finished":  # cancelled or done already
            await self.store.done_with(entry)

    async def _start(self, entry: KitchenEntry, ticket_id: UUID, order_id: UUID,
                     preparation: float) -> str:
        """Start the ticket; with no preparation time to wait, finish it in the same step."""
        if preparation > 0:
            return await service.start_cooking(self.store, ticket_id, order_id)
        return await service.cook_at_once(self.store, entry, ticket_id, order_id)
