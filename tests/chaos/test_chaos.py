"""Faults under a steady load of orders; afterwards nothing is lost and nothing doubled.

Fast subset (every ``make test``): kill -9 one replica of each service, SIGTERM one of each,
poison messages, duplicate deliveries. The full set (``make test-chaos``, ``CHAOS_FULL=1``)
adds events out of order, a RabbitMQ restart and a PostgreSQL restart, which touch servers
shared with whatever else runs on this machine, so they are kept short.
"""

from __future__ import annotations

import asyncio
import signal
import time
import uuid
from pathlib import Path

import aio_pika
import httpx

from deploy import native
from tests.chaos.conftest import Books, ChaosStack, Load, full_only, until

GRACEFUL = "Application shutdown complete"  # uvicorn's last line after SIGTERM
SIGNALLED = "SIGTERM received: stopping"  # sagakit.runtime's line as the signal is taken
EVENT_QUEUES = ["payment.order-events", "order.payment-events", "order.production-events",
                "production.order-events"]


# --- faults --------------------------------------------------------------------------------------


async def _publish(url: str, messages: list[aio_pika.Message], keys: list[str]) -> None:
    connection = await aio_pika.connect(url)
    async with connection:
        channel = await connection.channel(publisher_confirms=True)
        exchange = await channel.get_exchange("saga.events")
        for message, key in zip(messages, keys, strict=True):
            await exchange.publish(message, routing_key=key)


def inject_poison(chaos: ChaosStack) -> dict[str, set[str]]:
    """One of each kind, to each service: not JSON, wrong schema, unknown event type."""
    cases = {  # service: (routing key, ce-type, body)
        "payment": ("order.created", "order.created", b"\xff\xfe not json"),
        "order": ("payment.processed", "payment.processed", b'{"order_id": "not-a-uuid"}'),
        "production": ("order.received", "order.mystery", b'{"order_id": 1}'),
    }
    ids = {service: str(uuid.uuid4()) for service in cases}
    messages = [aio_pika.Message(body, message_id=ids[s], delivery_mode=2,
                                 headers={"ce-id": ids[s], "ce-type": ce_type})
                for s, (_, ce_type, body) in cases.items()]
    asyncio.run(_publish(chaos.rabbitmq_url, messages, [key for key, _, _ in cases.values()]))
    return {service: {event_id} for service, event_id in ids.items()}


class Spy:
    """A queue that copies every event on saga.events, to replay them later."""

    def __init__(self, chaos: ChaosStack) -> None:
        self.url, self.name = chaos.rabbitmq_url, f"chaos-spy-{uuid.uuid4().hex[:8]}"
        asyncio.run(self._declare())

    async def _declare(self) -> None:
        connection = await aio_pika.connect(self.url)
        async with connection:
            channel = await connection.channel()
            queue = await channel.declare_queue(self.name, arguments={"x-expires": 300_000})
            await queue.bind("saga.events", routing_key="#")

    async def _drain(self) -> list[aio_pika.abc.AbstractIncomingMessage]:
        connection = await aio_pika.connect(self.url)
        async with connection:
            channel = await connection.channel()
            queue = await channel.get_queue(self.name)
            found = []
            while (message := await queue.get(fail=False, no_ack=True)) is not None:
                found.append(message)
            return found

    def replay(self, reverse: bool = False) -> int:
        """Publish every captured event again, same ids (the newest first with ``reverse``)."""
        captured = asyncio.run(self._drain())
        if reverse:
            captured.reverse()
        copies = [aio_pika.Message(m.body, headers=dict(m.headers), message_id=m.message_id,
                                   correlation_id=m.correlation_id, type=m.type,
                                   content_type=m.content_type, delivery_mode=2)
                  for m in captured]
        asyncio.run(_publish(self.url, copies, [str(m.routing_key) for m in captured]))
        return len(copies)


async def _queue_depths(url: str) -> list[int]:
    connection = await aio_pika.connect(url)
    async with connection:
        channel = await connection.channel()
        return [(await channel.declare_queue(q, passive=True)).declaration_result.message_count
                or 0 for q in EVENT_QUEUES]


def drained(chaos: ChaosStack) -> None:
    until(lambda: not any(asyncio.run(_queue_depths(chaos.rabbitmq_url))),
          "event queues never drained", 30)
    time.sleep(1.0)  # the last deliveries' transactions


def _blocked_in(pid: int | None) -> str:
    """Where the kernel holds a process that does not stop (e.g. ``pipe_write``: its log), and
    what it does with SIGTERM: pending (SigPnd/ShdPnd), blocked, ignored or caught, per thread
    (bit 15 of each mask; a container's PID 1 never sees a signal it does not catch)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().split()[2]
        where = f"state {state}, waiting in {Path(f'/proc/{pid}/wchan').read_text() or '-'}"
        term = 1 << (signal.SIGTERM - 1)
        threads = []
        for task in sorted(Path(f"/proc/{pid}/task").iterdir()):
            status = dict(line.split(":\t", 1) for line in
                          (task / "status").read_text().splitlines() if ":\t" in line)
            flags = [name for name in ("SigPnd", "ShdPnd", "SigBlk", "SigIgn", "SigCgt")
                     if int(status.get(name, "0"), 16) & term]
            threads.append(f"{status.get('Name', '?').strip()}[{task.name}]: "
                           f"{'/'.join(flags) or 'SIGTERM nowhere'}")
        return f"{where}; SIGTERM per thread: {', '.join(threads)}"
    except (OSError, IndexError, ValueError):
        return "not readable here"


def _lifecycle(log: str, lines: int = 40) -> str:
    """The lines of a replica's log that tell how its run went (start, stop, what a slow stop
    waits on, warnings and errors), without the saga's own traffic, which buries them."""
    kept = [line for line in log.splitlines()
            if any(f'"{key}":"{value}"' in line for key, value in (
                ("logger", "uvicorn.error"), ("logger", "sagakit.runtime"),
                ("level", "warning"), ("level", "error")))]
    return "\n".join(kept[-lines:])


def crash_one_replica_of_each(chaos: ChaosStack, sig: signal.Signals) -> dict[str, str]:
    """`sig` to the last replica of each service, from outside, as a crash comes; returns each
    one's log as its run ended.

    Natively nothing calls ``up``: supervisord must start each one again by itself (a new pid
    that answers ready) while the load goes on. Compose restarts no killed container, so there
    the test waits for them to be gone and brings them back itself (``up`` may recreate a
    container, and its log with it: the log is read before)."""
    stack = chaos.stack
    replicas = {r.name: r for s in native.SERVICES for r in [stack.replicas(s)[-1]]}
    before = {name: stack.pid(name) for name in replicas}
    for name in replicas:
        stack.crash(name, sig)
    if stack.mode == "compose":
        # A graceful stop may take its whole budget: uvicorn's 20 s for open requests, then
        # FastStream's 15 s for deliveries in hand and the relay's 5 s flush.
        until(lambda: not any(stack.running(n) for n in replicas),
              lambda: "still running after " + sig.name + ":\n" + "\n".join(
                  f"--- {n} (pid {stack.pid(n)}: {_blocked_in(stack.pid(n))})\n"
                  f"{_lifecycle(stack.log(n))}" for n in replicas if stack.running(n)),
              75)
        ended = {name: stack.log(name) for name in replicas}
        chaos.restart_missing()
        return ended
    until(lambda: all(stack.pid(n) not in (None, before[n]) for n in replicas),
          f"{list(replicas)} not started again by supervisord after {sig.name}", 60)
    until(lambda: all(_status(f"http://{r.address}/health/ready") == 200
                      for r in replicas.values()),
          f"{list(replicas)} restarted but not ready", 60)
    return {name: stack.log(name) for name in replicas}


def _status(url: str) -> int:
    try:
        return httpx.get(url, timeout=2).status_code
    except httpx.TransportError:
        return 0


def ready(client: httpx.Client, service: str) -> int:
    try:
        return client.get(f"/health/{service}/ready").status_code
    except httpx.TransportError:
        return 0


# --- fast subset ---------------------------------------------------------------------------------


def test_kill_9_of_each_service_under_load(client, chaos, books: Books):
    """Each killed replica comes back by itself (no ``up``), and the books still balance."""
    load = Load(client).start()
    load.wait_started()
    crash_one_replica_of_each(chaos, signal.SIGKILL)
    books.settle("kill -9 each service", load.join())


def test_sigterm_finishes_in_flight_work_and_flushes_the_outbox(client, chaos, books: Books):
    load = Load(client).start()
    load.wait_started()
    names = [chaos.stack.replicas(s)[-1].name for s in native.SERVICES]
    before = {name: chaos.log(name) for name in names}
    ended = crash_one_replica_of_each(chaos, signal.SIGTERM)
    for name in names:  # the run before the restart took the signal and ended gracefully
        for line in (SIGNALLED, GRACEFUL):
            assert ended[name].count(line) > before[name].count(line), \
                f"{name}: no new {line!r}:\n{_lifecycle(ended[name])}"
    books.settle("SIGTERM each service", load.join())


def test_poison_is_parked_and_nothing_else(client, chaos, books: Books):
    load = Load(client, count=30).start()
    load.wait_started()
    poison = inject_poison(chaos)
    books.settle("poison", load.join(), poison=poison)


def test_duplicate_deliveries_change_nothing(client, chaos, books: Books):
    spy = Spy(chaos)
    load = Load(client, count=30).start()
    orders = load.join()
    books.settle("load before duplicates", orders)
    assert spy.replay() >= len(orders)
    drained(chaos)
    books.settle("duplicates", orders)


def test_competing_payment_replicas_share_the_work(client, chaos, books: Books):
    def charged() -> dict[str, int]:
        return {name: chaos.log(name).count('"charge approved"') + chaos.log(name).count(
            '"charge declined"') for name in replica_names_of(chaos, "payment")}

    before = charged()
    books.settle("load for the payment replicas", Load(client, count=30).start().join())
    after = charged()
    shares = {name: after[name] - before.get(name, 0) for name in after}
    assert len(shares) == 3 and all(shares.values()), shares


def replica_names_of(chaos: ChaosStack, service: str) -> list[str]:
    return [r.name for r in chaos.stack.replicas(service)]


# --- full set ------------------------------------------------------------------------------------


@full_only
def test_events_out_of_order_change_nothing(client, chaos, books: Books):
    spy = Spy(chaos)
    orders = Load(client, count=30).start().join()
    books.settle("load before out of order", orders)
    spy.replay(reverse=True)  # order.finished before payment.processed, and so on
    drained(chaos)
    books.settle("out of order", orders)


@full_only
def test_rabbitmq_restart_under_load(client, chaos, books: Books):
    load = Load(client, seconds=8).start()
    load.wait_started()
    started = time.monotonic()
    chaos.stack.stop_broker()
    try:
        time.sleep(2)
    finally:
        chaos.stack.start_broker()
    for service in native.SERVICES:  # consumers and relays reconnected by themselves
        until(lambda s=service: ready(client, s) == 200, f"{service} ready again", 90)
    print(f"\nRabbitMQ restart: every service ready again {time.monotonic() - started:.1f} s "
          "after the broker stopped")
    books.settle("rabbitmq restart", load.join())


# Which services' readiness a database outage turns red.
USERS = {"postgresql": ("order", "payment"), "order-db": ("order",),
         "payment-db": ("payment",), "redis": ("production",)}


@full_only
def test_a_database_restart_under_load(client, chaos, books: Books, database: str):
    """Each database server of the run mode (conftest.pytest_generate_tests), restarted."""
    assert database in chaos.stack.databases()
    load = Load(client, seconds=8).start()
    load.wait_started()
    chaos.stack.stop_database(database)
    try:
        for service in USERS[database]:  # readiness tells the truth while it is down
            until(lambda s=service: ready(client, s) == 503,
                  f"{service} still ready while {database} is down", 15)
    finally:
        chaos.stack.start_database(database)
    for service in USERS[database]:
        until(lambda s=service: ready(client, s) == 200, f"{service} ready again", 90)
    books.settle(f"{database} restart", load.join())
