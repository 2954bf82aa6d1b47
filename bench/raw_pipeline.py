"""The machine's ceiling: the saga's four hops with raw aio-pika and nothing else.

Three processes, as the services are: ``order`` publishes ``order.created``; ``payment`` answers
``payment.processed``; ``order`` answers ``order.received``; ``production`` answers
``order.finished``, which completes the saga. Same broker features as sagakit: a durable topic
exchange, quorum queues, persistent messages, publisher confirms, manual ack after the next
publish is confirmed, prefetch 32. No database, no HTTP, no framework: whatever the real saga
reaches is divided by this (``efficiency``).

    python -m bench.raw_pipeline --sagas 3000 --window 64

It runs on its own vhost (``saga_bench_raw``), re-created empty each run.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import multiprocessing
import os
import shutil
import subprocess
import time
import uuid
from typing import Any
from urllib.parse import unquote, urlsplit, urlunsplit

import aio_pika

from bench import procstat

VHOST = "saga_bench_raw"
EXCHANGE = "raw.events"
PREFETCH = 32
# queue -> routing keys it takes; the process named like the queue consumes it.
QUEUES = {
    "payment": ("order.created",),
    "order": ("payment.processed", "order.finished"),
    "production": ("order.received",),
}
NEXT = {"order.created": "payment.processed", "payment.processed": "order.received",
        "order.received": "order.finished"}


def with_vhost(url: str, vhost: str) -> str:
    parts = urlsplit(url)
    return urlunsplit((parts.scheme, parts.netloc, "/" + vhost, parts.query, ""))


def fresh_vhost(url: str, vhost: str = VHOST) -> str:
    """Delete and re-create the vhost on the local broker (rabbitmqctl); its URL.

    Without rabbitmqctl here (a broker in a container), the URL's own vhost is used as it is:
    the pipeline's exchange and queues are its own (``raw.*``), and it ignores strays.
    """
    if shutil.which("rabbitmqctl") is None:
        return url
    user = unquote(urlsplit(url).username or "guest")
    for args, check in ((["delete_vhost", vhost], False), (["add_vhost", vhost], True),
                        (["set_permissions", "-p", vhost, user, ".*", ".*", ".*"], True)):
        subprocess.run(["rabbitmqctl", "-q", *args], check=check, capture_output=True,
                       timeout=60)
    return with_vhost(url, vhost)


def _body(order_id: str, step: str) -> bytes:
    # About the size of a saga event: ids, an amount, a timestamp.
    return json.dumps({"order_id": order_id, "step": step, "amount": "20.50",
                       "currency": "EUR", "at": time.time()}).encode()


def _message(order_id: str, step: str) -> aio_pika.Message:
    return aio_pika.Message(
        _body(order_id, step), delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
        message_id=str(uuid.uuid4()), correlation_id=order_id, content_type="application/json",
        headers={"ce-type": step, "ce-subject": order_id, "ce-specversion": "1.0"},
    )


_tasks: set[asyncio.Task[Any]] = set()


def _spawn(coroutine: Any) -> None:
    """Run without waiting (a confirm must not hold up the next delivery); keep a reference."""
    task = asyncio.ensure_future(coroutine)
    _tasks.add(task)
    task.add_done_callback(_tasks.discard)


async def _connect(url: str) -> tuple[Any, Any, Any]:
    connection = await aio_pika.connect_robust(url)
    channel = await connection.channel(publisher_confirms=True)
    await channel.set_qos(prefetch_count=PREFETCH)
    exchange = await channel.declare_exchange(EXCHANGE, aio_pika.ExchangeType.TOPIC,
                                              durable=True)
    return connection, channel, exchange


async def declare(url: str) -> None:
    connection, channel, exchange = await _connect(url)
    for name, keys in QUEUES.items():
        queue = await channel.declare_queue(f"raw.{name}", durable=True,
                                            arguments={"x-queue-type": "quorum"})
        for key in keys:
            await queue.bind(exchange, key)
    await connection.close()


async def _relay(url: str, name: str) -> None:
    """payment / production: answer each event with the next, ack once it is confirmed."""
    connection, channel, exchange = await _connect(url)
    queue = await channel.get_queue(f"raw.{name}")

    async def handle(message: Any) -> None:
        step = message.headers["ce-type"]
        await exchange.publish(_message(message.correlation_id, NEXT[step]), NEXT[step])
        await message.ack()

    await queue.consume(handle)  # aiormq runs each delivery in its own task: up to PREFETCH at once
    await asyncio.Future()  # until terminated
    await connection.close()


async def _relay_faststream(url: str, name: str) -> None:
    """The same relay written as a plain FastStream app: a subscriber, a publish per event.

    The step and the order id travel in the body, so the handler needs no ``message``
    parameter (which FastStream would resolve in a worker thread).
    """
    from faststream.rabbit import Channel, ExchangeType, RabbitBroker, RabbitExchange, RabbitQueue

    broker = RabbitBroker(url, default_channel=Channel(prefetch_count=PREFETCH), logger=None)
    exchange = RabbitExchange(EXCHANGE, type=ExchangeType.TOPIC, durable=True)
    queue = RabbitQueue(f"raw.{name}", durable=True, declare=False)

    @broker.subscriber(queue, exchange=exchange)
    async def handle(event: dict[str, Any]) -> None:
        step = NEXT[event["step"]]
        await broker.publish(_body(event["order_id"], step), exchange=exchange,
                             routing_key=step, persist=True, correlation_id=event["order_id"],
                             headers={"ce-type": step, "ce-subject": event["order_id"],
                                      "ce-specversion": "1.0"})

    async with broker:
        await broker.start()
        await asyncio.Future()  # until terminated


def _relay_process(url: str, name: str, framework: str = "aio-pika") -> None:
    relay = _relay_faststream if framework == "faststream" else _relay
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(relay(url, name))


async def _drive(url: str, sagas: int, window: int, timeout: float) -> dict[str, Any]:
    """order: start sagas (at most ``window`` in flight), relay payment.processed, count ends."""
    connection, channel, exchange = await _connect(url)
    queue = await channel.get_queue("raw.order")
    slots = asyncio.Semaphore(window)
    done = asyncio.Event()
    started: dict[str, float] = {}
    latencies: list[float] = []

    async def handle(message: Any) -> None:
        step = message.headers["ce-type"]
        if step == "payment.processed":
            await exchange.publish(_message(message.correlation_id, "order.received"),
                                   "order.received")
        elif (begun := started.pop(message.correlation_id, None)) is not None:
            latencies.append(time.monotonic() - begun)  # order.finished of one of ours
            slots.release()
            if len(latencies) == sagas:
                done.set()
        await message.ack()

    await queue.consume(handle)
    begin = time.monotonic()
    for _ in range(sagas):
        await slots.acquire()
        if time.monotonic() - begin > timeout:
            break
        order_id = str(uuid.uuid4())
        started[order_id] = time.monotonic()
        _spawn(exchange.publish(_message(order_id, "order.created"), "order.created"))
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(max(1.0, timeout - (time.monotonic() - begin))):
            await done.wait()
    elapsed = time.monotonic() - begin
    await connection.close()
    latencies.sort()

    def pick(q: float) -> float | None:
        if not latencies:
            return None
        return round(1000 * latencies[min(len(latencies) - 1, int(q * len(latencies)))], 2)

    return {"sagas": len(latencies), "seconds": round(elapsed, 3),
            "sagas_per_s": round(len(latencies) / elapsed, 1) if elapsed else 0.0,
            "latency_ms": {"p50": pick(0.50), "p99": pick(0.99)},
            "window": window, "hops": 4, "processes": 3}


def run(rabbitmq_url: str, sagas: int = 3000, window: int = 64, timeout: float = 60.0,
        vhost: str = VHOST, framework: str = "aio-pika") -> dict[str, Any]:
    """Measure the ceiling; returns sagas/s and latency. Child processes are always stopped.

    ``framework="faststream"`` writes payment's and production's relays with FastStream
    instead (the driver stays aio-pika): the framework's own per-message cost, measured.
    """
    # An empty vhost name: the caller made the URL's vhost fresh already (a broker in a container).
    url = fresh_vhost(rabbitmq_url, vhost) if vhost else rabbitmq_url
    asyncio.run(declare(url))
    context = multiprocessing.get_context("spawn")
    relays = [context.Process(target=_relay_process, args=(url, name, framework), daemon=True,
                              name=f"raw-{name}") for name in ("payment", "production")]
    for process in relays:
        process.start()
    try:
        time.sleep(1.0)  # let both consumers attach before the first saga
        # CPU of the pipeline's own three processes and RabbitMQ (by command name: shared with
        # whatever else uses this broker meanwhile), for CPU per saga beside the rate.
        meter = procstat.CpuMeter(groups={}, own_pids={
            "order": os.getpid(), **{p.name.removeprefix("raw-"): p.pid or 0 for p in relays}})
        meter.start()
        began = time.monotonic()
        result = asyncio.run(_drive(url, sagas, window, timeout))
        cpu = meter.stop(time.monotonic() - began)
    finally:
        for process in relays:
            process.terminate()
        for process in relays:
            process.join(5)
            if process.is_alive():
                process.kill()
    result["vhost"] = vhost
    result["relays"] = framework
    spent: dict[str, float] = cpu["cpu_seconds"]  # type: ignore[assignment]
    seconds = {k: v for k, v in spent.items()
               if k in ("order", "payment", "production", "rabbitmq")}
    if result["sagas"]:
        per = {k: round(1000 * v / result["sagas"], 3) for k, v in seconds.items()}
        result["cpu_ms_per_saga"] = {**per, "total": round(sum(per.values()), 3)}
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rabbitmq-url", default=os.environ.get(
        "BENCH_RABBITMQ_URL", "amqp://guest:guest@127.0.0.1:5672/"))
    parser.add_argument("--sagas", type=int, default=3000)
    parser.add_argument("--window", type=int, default=64, help="sagas in flight at most")
    parser.add_argument("--timeout", type=float, default=60.0)
    parser.add_argument("--relays", choices=("aio-pika", "faststream"), default="aio-pika",
                        help="what payment's and production's relays are written with")
    args = parser.parse_args()
    print(json.dumps(run(args.rabbitmq_url, args.sagas, args.window, args.timeout,
                         framework=args.relays), indent=2))


if __name__ == "__main__":
    main()
