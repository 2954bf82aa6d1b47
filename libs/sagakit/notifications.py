"""PostgreSQL LISTEN/NOTIFY fanned out inside one process: one connection, many waiters.

A client following something live (an order's timeline as Server-Sent Events) must learn of a
change the moment it commits, but a database connection per client would exhaust PostgreSQL's
connection slots long before the HTTP side is busy, and polling turns idle clients into load.
So a process holds one connection that LISTENs on a channel, and hands each notification to the
subscribers of its payload (an order id). A subscriber is only woken: it reads what changed
itself, from the pool, so a notification folded away or lost costs nothing but a later read.

While the connection is down nothing is heard; once it is back every subscriber is woken, as
anything may have committed meanwhile.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any

import asyncpg

from sagakit.waits import cancelled, woken

log = logging.getLogger("sagakit.notifications")


class TooManySubscribers(Exception):
    """The process already serves as many subscribers as it allows."""


class Subscription:
    """One waiter for the notifications of one key. :meth:`close` it when done (idempotent)."""

    def __init__(self, fanout: NotificationFanout, key: str) -> None:
        self.key = key
        self._fanout = fanout
        self._woken = asyncio.Event()
        self.closed = False

    def wake(self) -> None:
        self._woken.set()

    def clear(self) -> None:
        """Forget earlier wake-ups: call it just before reading, so none that follows is lost."""
        self._woken.clear()

    async def wait(self, timeout: float) -> bool:
        """True when woken (now or since :meth:`clear`), False after ``timeout`` seconds."""
        return await woken(self._woken, timeout)

    @property
    def connection(self) -> int:
        """Which connection of its fanout listens now (a number that grows with each one): a
        subscriber that registered its interest with the database registers it again when it
        changes, as a restarted database may have forgotten it."""
        return self._fanout.connections

    @property
    def active(self) -> bool:
        """Neither closed nor its process stopping: worth waiting on again."""
        return not self.closed and not self._fanout.stopped

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            self._fanout._remove(self)


class NotificationFanout:
    """Listen on ``channel`` over one connection; wake the subscribers of each payload."""

    reconnect_seconds = 1.0

    def __init__(self, dsn: str, channel: str, max_subscribers: int) -> None:
        self.dsn, self.channel, self.max_subscribers = dsn, channel, max_subscribers
        self._by_key: dict[str, set[Subscription]] = {}
        self._count = 0
        self._connection: asyncpg.Connection | None = None
        self._task: asyncio.Task[None] | None = None
        self.stopped = False
        self.connections = 0  # connections made so far (Subscription.connection)

    @property
    def subscribers(self) -> int:
        return self._count

    @property
    def listening(self) -> bool:
        return self._connection is not None and not self._connection.is_closed()

    def subscribe(self, key: str) -> Subscription:
        """A subscription to ``key``'s notifications; :class:`TooManySubscribers` at the cap."""
        if self._count >= self.max_subscribers:
            raise TooManySubscribers(f"{self._count} subscribers already")
        subscription = Subscription(self, key)
        self._by_key.setdefault(key, set()).add(subscription)
        self._count += 1
        return subscription

    def _remove(self, subscription: Subscription) -> None:
        waiting = self._by_key.get(subscription.key)
        if waiting is not None and subscription in waiting:
            waiting.discard(subscription)
            self._count -= 1
            if not waiting:
                del self._by_key[subscription.key]

    def _on_notification(self, _conn: Any, _pid: int, _channel: str, payload: str) -> None:
        for subscription in self._by_key.get(payload, ()):
            subscription.wake()

    def _wake_all(self) -> None:
        for waiting in self._by_key.values():
            for subscription in waiting:
                subscription.wake()

    async def _connect(self) -> bool:
        try:
            connection = await asyncpg.connect(self.dsn)
            await connection.add_listener(self.channel, self._on_notification)
        except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
            log.warning("cannot listen on %s: %r; retrying", self.channel, exc)
            return False
        self._connection = connection
        self.connections += 1
        return True

    async def _keep_listening(self) -> None:
        """Reconnect when the connection is lost (a database restart), then wake everyone."""
        while not self.stopped:  # not only the cancel: asyncpg.connect may swallow one
            await asyncio.sleep(self.reconnect_seconds)
            if not self.listening and await self._connect():
                log.info("listening on %s again", self.channel)
                self._wake_all()

    async def start(self) -> None:
        await self._connect()  # a database that is away now is retried in the background
        self._task = asyncio.create_task(self._keep_listening(), name=f"listen-{self.channel}")

    async def stop(self) -> None:
        self.stopped = True
        await cancelled(self._task)
        if self._connection is not None:
            with contextlib.suppress(Exception):
                await self._connection.close()
        self._wake_all()  # a waiter still there sees the process stopping and ends
