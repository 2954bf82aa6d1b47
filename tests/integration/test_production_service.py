"""The production service against a real RabbitMQ and Redis, run as ``python -m production``.

The tests talk to it as the saga does: they publish the order service's events to
``saga.events`` and watch what production announces on a queue of their own, and they use its
HTTP API as the kitchen manager would.

It gets a RabbitMQ vhost (``saga_test_production``, re-created each run) and a Redis database
(``TEST_PRODUCTION_REDIS_DB``, default 3) of its own, so no other process (the e2e stack, a
developer's ``make up``, another session's run of these tests) takes its messages or touches its
keys (see tests/integration/conftest.py). The tests own that Redis database: it is flushed, so
never point them at one holding real data.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator, Callable, Sequence
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any
from uuid import UUID, uuid4

import orjson
import pytest
from redis.asyncio import Redis

from production import service as kitchen_service
from production.domain import (
    CancelAnswer,
    Step,
    TicketStatus,
    answer_cancel_request,
    next_status,
    releases_stock,
)
from production.store import KitchenEntry, ProductionStore
from sagakit import telemetry
from sagakit.envelope import EventMeta, OutgoingEvent
from sagakit.events import (
    OrderCancellationRequested,
    OrderCancelled,
    OrderLine,
    OrderReceived,
    ProductionCancelled,
    ProductionCancelRefused,
)
from tests.conftest import Infra
from tests.integration.conftest import Announced, EventTap, Publish, ServiceProcess, until

REDIS_DB = int(os.environ.get("TEST_PRODUCTION_REDIS_DB", "3"))


def production(log_path: Path, rabbitmq_url: str, redis_url: str,
               **settings: Any) -> ServiceProcess:
    """One ``python -m production`` process with its own settings (``PRODUCTION_<name>``)."""
    return ServiceProcess("production", {
        "RABBITMQ_URL": rabbitmq_url,
        "PRODUCTION_REDIS_URL": redis_url,
        "PRODUCTION_PREPARATION_SECONDS": "0",
        **{f"PRODUCTION_{k.upper()}": str(v) for k, v in settings.items()},
    }, log_path)


# --- the broker side: publish as the order service, watch what production announces ---------


class Saga:
    """The order service's side: its events published, production's read back by order id."""

    def __init__(self, tap: EventTap, publish: Publish) -> None:
        self.tap = tap
        self.deliver = publish  # exactly as the order service's relay (a redelivery re-sends)

    @property
    def seen(self) -> list[Announced]:
        return self.tap.seen

    async def publish(self, event: OrderReceived | OrderCancelled) -> OutgoingEvent:
        with telemetry.span("order service (stand-in)"):  # the trace the order would be in
            outgoing = OutgoingEvent.build(event, source="saga-shop/order",
                                           subject=str(event.order_id))
        await self.deliver(outgoing)
        return outgoing

    def of(self, order_id: UUID, type_: str) -> list[Announced]:
        return self.tap.of(type_, order_id)

    def count(self, order_id: UUID, type_: str) -> int:
        """Distinct events (a relay may publish one twice; consumers see it once)."""
        return self.tap.count(type_, order_id)

    async def wait_for(self, order_id: UUID, type_: str) -> Announced:
        return await self.tap.wait_for(type_, order_id)

    async def outcome(self, order_id: UUID) -> str:
        """production.queued or production.failed, whichever the order got."""
        kinds = ("production.queued", "production.failed")
        await self.tap.until_any(order_id, *kinds)
        return next(k for k in kinds if self.of(order_id, k))


def order(*lines: tuple[str, int], order_id: UUID | None = None) -> OrderReceived:
    return OrderReceived(
        order_id=order_id or uuid4(),
        lines=tuple(OrderLine(sku=sku, name=sku.title(), quantity=quantity,
                              unit_price=Decimal("1.00")) for sku, quantity in lines),
    )


def cancellation(order_id: UUID) -> OrderCancelled:
    return OrderCancelled(order_id=order_id, reason="cancelled by the customer",
                          requested_by="customer")


# --- fixtures ----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def redis_url(infra: Infra) -> str:
    return infra.redis_db(REDIS_DB)


@pytest.fixture(scope="module")
async def redis(redis_url: str) -> AsyncIterator[Redis]:
    client = Redis.from_url(redis_url, decode_responses=True)
    await client.flushdb()  # fails the run when Redis is not there
    yield client
    await client.aclose()


@pytest.fixture(scope="module")
def tap_keys() -> Sequence[str]:
    return ("production.#", "order.finished")


@pytest.fixture(scope="module")
def saga(redis: Redis, tap: EventTap, publish: Publish) -> Saga:
    return Saga(tap, publish)


@pytest.fixture
async def services(
    saga: Saga, redis: Redis, rabbitmq_url: str, redis_url: str, tmp_path: Path
) -> AsyncIterator[Callable[..., Any]]:
    """Start services with given settings; whatever is still running is stopped afterwards.

    Each test's services start on an empty Redis database: an outbox entry a killed process
    held unconfirmed (re-published only after ``claim_idle_ms``) is not the next test's.
    """
    await redis.flushdb()
    started: list[ServiceProcess] = []

    async def start(**settings: Any) -> ServiceProcess:
        service = production(tmp_path / f"production-{len(started)}.log", rabbitmq_url,
                             redis_url, **settings)
        started.append(service)
        return await service.start()

    yield start
    for service in started:
        if service.running:
            await service.stop()


@pytest.fixture(scope="class")
async def kitchen(saga: Saga, rabbitmq_url: str, redis_url: str,
                  tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[ServiceProcess]:
    """The service at full speed (no preparation time), as in benchmarks (with fewer cooks)."""
    service = await production(tmp_path_factory.mktemp("kitchen") / "production.log",
                               rabbitmq_url, redis_url, kitchen_workers=4).start()
    yield service
    assert await service.stop(), service.logs()


async def available(service: ServiceProcess, sku: str) -> int:
    response = await service.http.get(f"/api/v1/production/stock/{sku}")
    assert response.status_code == 200, response.text
    units: int = response.json()["available"]
    return units


async def set_stock(service: ServiceProcess, sku: str, units: int) -> None:
    response = await service.http.put(f"/api/v1/production/stock/{sku}", json={"available": units})
    assert response.status_code == 200, response.text


async def ticket_of(service: ServiceProcess, ticket_id: str) -> dict[str, Any]:
    response = await service.http.get(f"/api/v1/production/tickets/{ticket_id}")
    assert response.status_code == 200, response.text
    ticket: dict[str, Any] = response.json()
    return ticket


# --- the saga at full speed ---------------------------------------------------------------------


class TestKitchenAtFullSpeed:
    async def test_a_paid_order_is_queued_started_and_finished(
        self, kitchen: ServiceProcess, saga: Saga
    ) -> None:
        fries, lemonade = await available(kitchen, "fries"), await available(kitchen, "lemonade")
        received = order(("fries", 2), ("lemonade", 1), ("fries", 1))

        await saga.publish(received)

        queued = await saga.wait_for(received.order_id, "production.queued")
        started = await saga.wait_for(received.order_id, "production.started")
        finished = await saga.wait_for(received.order_id, "order.finished")
        ticket_id = queued.body["ticket_id"]
        assert started.body["ticket_id"] == finished.body["ticket_id"] == ticket_id
        assert saga.seen.index(queued) < saga.seen.index(started) < saga.seen.index(finished)
        assert await available(kitchen, "fries") == fries - 3
        assert await available(kitchen, "lemonade") == lemonade - 1
        ticket = await ticket_of(kitchen, ticket_id)
        assert ticket["status"] == "done"
        assert ticket["order_id"] == str(received.order_id)
        assert [line["quantity"] for line in ticket["lines"]] == [2, 1, 1]
        assert ticket["created_at"] <= ticket["started_at"] <= ticket["finished_at"]

    async def test_its_events_continue_the_orders_trace(
        self, kitchen: ServiceProcess, saga: Saga
    ) -> None:
        received = order(("brownie", 1))
        outgoing = await saga.publish(received)
        trace_id = outgoing.headers["traceparent"].split("-")[1]

        await saga.wait_for(received.order_id, "order.finished")

        announced = [s for s in saga.seen if s.order_id == str(received.order_id)]
        assert {s.type for s in announced} == {
            "production.queued", "production.started", "order.finished"}
        assert {s.trace_id for s in announced} == {trace_id}
        records = [r for r in kitchen.log_records() if r.get("order_id") == str(received.order_id)]
        assert records and {r.get("trace_id") for r in records} == {trace_id}

    async def test_an_order_the_stock_cannot_cover_fails_and_reserves_nothing(
        self, kitchen: ServiceProcess, saga: Saga
    ) -> None:
        before = {sku: await available(kitchen, sku) for sku in ("brownie", "truffle-risotto")}
        received = order(("brownie", 1), ("truffle-risotto", before["truffle-risotto"] + 1),
                         ("caviar", 2))

        await saga.publish(received)

        failed = await saga.wait_for(received.order_id, "production.failed")
        assert failed.body["reason"] == "out of stock: truffle-risotto, caviar"
        assert failed.body["missing"] == [
            {"sku": "truffle-risotto", "requested": before["truffle-risotto"] + 1,
             "available": before["truffle-risotto"]},
            {"sku": "caviar", "requested": 2, "available": 0},
        ]
        for sku, units in before.items():
            assert await available(kitchen, sku) == units  # all or nothing: brownie untouched
        assert not saga.of(received.order_id, "production.queued")

    async def test_a_redelivered_order_makes_one_ticket(
        self, kitchen: ServiceProcess, saga: Saga
    ) -> None:
        fries = await available(kitchen, "fries")
        received = order(("fries", 4))
        outgoing = await saga.publish(received)
        await saga.wait_for(received.order_id, "order.finished")

        await saga.deliver(outgoing)  # the same event again, as after a lost ack

        await kitchen.logged(outgoing.id, "order.received: duplicate")
        assert saga.count(received.order_id, "production.queued") == 1
        assert await available(kitchen, "fries") == fries - 4
        queue = (await kitchen.http.get("/api/v1/production/queue?limit=500")).json()
        assert sum(t["order_id"] == str(received.order_id) for t in queue) == 1

    async def test_a_redelivered_failure_is_announced_once(
        self, kitchen: ServiceProcess, saga: Saga
    ) -> None:
        received = order(("caviar", 1))
        outgoing = await saga.publish(received)
        await saga.wait_for(received.order_id, "production.failed")

        await saga.deliver(outgoing)

        await kitchen.logged(outgoing.id, "order.received: duplicate")
        assert saga.count(received.order_id, "production.failed") == 1

    async def test_concurrent_orders_never_oversell_the_last_units(
        self, kitchen: ServiceProcess, saga: Saga
    ) -> None:
        await set_stock(kitchen, "truffle-risotto", 5)
        orders = [order(("truffle-risotto", 1)) for _ in range(25)]

        await asyncio.gather(*(saga.publish(o) for o in orders))

        outcomes = [await saga.outcome(o.order_id) for o in orders]
        assert outcomes.count("production.queued") == 5
        assert outcomes.count("production.failed") == 20
        assert await available(kitchen, "truffle-risotto") == 0

    async def test_an_order_cancelled_before_it_arrives_is_never_made(
        self, kitchen: ServiceProcess, saga: Saga
    ) -> None:
        fries = await available(kitchen, "fries")
        received = order(("fries", 1))
        cancelled = await saga.publish(cancellation(received.order_id))
        await kitchen.logged(cancelled.id, "order.cancelled: no_ticket")

        late = await saga.publish(received)  # overtaken, e.g. by a retry

        await kitchen.logged(late.id, "order.received: cancelled")
        assert await available(kitchen, "fries") == fries
        assert not saga.of(received.order_id, "production.queued")
        assert not saga.of(received.order_id, "production.failed")

    async def test_cancelling_a_finished_order_changes_nothing(
        self, kitchen: ServiceProcess, saga: Saga
    ) -> None:
        received = order(("brownie", 2))
        await saga.publish(received)
        finished = await saga.wait_for(received.order_id, "order.finished")
        brownies = await available(kitchen, "brownie")

        cancelled = await saga.publish(cancellation(received.order_id))

        await kitchen.logged(cancelled.id, "order.cancelled: done")
        assert (await ticket_of(kitchen, finished.body["ticket_id"]))["status"] == "done"
        assert await available(kitchen, "brownie") == brownies

    async def test_a_paused_line_holds_tickets_which_can_then_be_cancelled(
        self, kitchen: ServiceProcess, saga: Saga, redis: Redis
    ) -> None:
        brownies = await available(kitchen, "brownie")
        held, later = order(("brownie", 2)), order(("brownie", 1))
        assert (await kitchen.http.put("/api/v1/production/line", json={"paused": True})).json() \
            == {"paused": True}
        try:
            await saga.publish(held)
            queued = await saga.wait_for(held.order_id, "production.queued")
            await asyncio.sleep(0.5)  # four idle cooks would have started it within milliseconds
            assert (await ticket_of(kitchen, queued.body["ticket_id"]))["status"] == "queued"
            assert not saga.of(held.order_id, "production.started")
            assert await available(kitchen, "brownie") == brownies - 2

            cancelled = await saga.publish(cancellation(held.order_id))
            await kitchen.logged(cancelled.id, "order.cancelled: released")
            assert await available(kitchen, "brownie") == brownies
        finally:
            response = await kitchen.http.put("/api/v1/production/line", json={"paused": False})
            assert response.json() == {"paused": False}
        assert (await kitchen.http.get("/api/v1/production/line")).json() == {"paused": False}

        await saga.publish(later)
        await saga.wait_for(later.order_id, "order.finished")
        assert (await ticket_of(kitchen, queued.body["ticket_id"]))["status"] == "cancelled"
        assert not saga.of(held.order_id, "production.started")

        async def kitchen_queue_empty() -> bool:
            return not (await redis.xpending("kitchen", "cooks"))["pending"]

        await until(kitchen_queue_empty, "the kitchen's stream to have nothing pending")

    async def test_the_kitchen_view_lists_tickets_newest_first_and_by_status(
        self, kitchen: ServiceProcess, saga: Saga
    ) -> None:
        first, second = order(("fries", 1)), order(("lemonade", 1))
        for received in (first, second):
            await saga.publish(received)
            await saga.wait_for(received.order_id, "order.finished")

        queue = (await kitchen.http.get("/api/v1/production/queue", params={"limit": 2})).json()
        assert [t["order_id"] for t in queue] == [str(second.order_id), str(first.order_id)]
        assert set(queue[0]) == {"ticket_id", "order_id", "status", "lines", "created_at",
                                 "started_at", "finished_at", "cancelled_at"}
        done = (await kitchen.http.get("/api/v1/production/queue?status=done&limit=500")).json()
        assert done and all(t["status"] == "done" for t in done)
        assert str(first.order_id) in {t["order_id"] for t in done}
        queued = (await kitchen.http.get("/api/v1/production/queue?status=queued")).json()
        assert str(first.order_id) not in {t["order_id"] for t in queued}

    async def test_stock_is_listed_by_sku_and_restocked_by_count(
        self, kitchen: ServiceProcess
    ) -> None:
        stock = (await kitchen.http.get("/api/v1/production/stock")).json()
        skus = [item["sku"] for item in stock]
        assert skus == sorted(skus)
        assert {"burger-classic", "fries", "truffle-risotto"} <= set(skus)
        assert all(set(item) == {"sku", "available"} for item in stock)

        response = await kitchen.http.put("/api/v1/production/stock/salad-caesar",
                                          json={"available": 1234})
        assert response.status_code == 200
        assert response.json() == {"sku": "salad-caesar", "available": 1234}
        assert await available(kitchen, "salad-caesar") == 1234

    @pytest.mark.parametrize(
        ("method", "path", "body", "status", "field"),
        [
            ("GET", "/stock/caviar", None, 404, "sku"),
            ("PUT", "/stock/caviar", {"available": 1}, 404, "sku"),
            ("PUT", "/stock/fries", {"available": -1}, 422, "available"),
            ("PUT", "/stock/fries", {"available": 1_000_001}, 422, "available"),
            ("PUT", "/stock/fries", {"available": "12"}, 422, "available"),
            ("PUT", "/stock/fries", {"available": 1.5}, 422, "available"),
            ("PUT", "/stock/fries", {}, 422, "available"),
            ("PUT", "/stock/fries", {"available": 1, "price": 2}, 422, "price"),
            ("GET", "/queue?status=burnt", None, 422, "status"),
            ("GET", "/queue?limit=0", None, 422, "limit"),
            ("GET", f"/tickets/{uuid4()}", None, 404, "ticket_id"),
            ("GET", "/tickets/not-a-uuid", None, 422, "ticket_id"),
            ("PUT", "/line", {"paused": "yes"}, 422, "paused"),
            ("PUT", "/line", {"paused": True, "for": 5}, 422, "for"),
        ],
    )
    async def test_errors_name_the_field_to_blame(
        self, kitchen: ServiceProcess, method: str, path: str, body: Any, status: int, field: str
    ) -> None:
        response = await kitchen.http.request(method, f"/api/v1/production{path}", json=body)
        assert response.status_code == status, response.text
        problem = response.json()
        assert problem["status"] == status
        assert field in {error["field"] for error in problem["errors"]}

    async def test_health_and_docs(self, kitchen: ServiceProcess) -> None:
        ready = (await kitchen.http.get("/health/ready")).json()
        assert ready["checks"] == {"redis": "ok", "broker": "ok"}
        openapi = (await kitchen.http.get("/docs/production/openapi.json")).json()
        assert {"/api/v1/production/stock", "/api/v1/production/stock/{sku}",
                "/api/v1/production/queue", "/api/v1/production/tickets/{ticket_id}"} <= set(
            openapi["paths"])
        asyncapi = (await kitchen.http.get("/docs/production/asyncapi.json")).json()
        assert "OrderReceived" in str(asyncapi) and "OrderCancelled" in str(asyncapi)


# --- kitchens that take their time, stop, crash, restart, or run twice ----------------------------


class TestKitchenProcesses:
    async def test_cancel_gives_back_a_queued_tickets_stock_but_not_a_started_ones(
        self, services: Callable[..., Any], saga: Saga
    ) -> None:
        kitchen: ServiceProcess = await services(preparation_seconds=2, kitchen_workers=1)
        fries, brownies = await available(kitchen, "fries"), await available(kitchen, "brownie")
        cooking, waiting, sentinel = order(("fries", 2)), order(("brownie", 3)), order(("fries", 1))
        await saga.publish(cooking)
        await saga.wait_for(cooking.order_id, "production.started")
        await saga.publish(waiting)
        queued = await saga.wait_for(waiting.order_id, "production.queued")
        assert await available(kitchen, "brownie") == brownies - 3

        await saga.publish(cancellation(waiting.order_id))
        await saga.publish(cancellation(cooking.order_id))

        waiting_ticket = queued.body["ticket_id"]
        await _poll_status(kitchen, waiting_ticket, "cancelled")
        cooking_ticket = (await saga.wait_for(cooking.order_id, "production.started")).body
        await _poll_status(kitchen, cooking_ticket["ticket_id"], "cancelled")
        assert await available(kitchen, "brownie") == brownies  # given back
        assert await available(kitchen, "fries") == fries - 2  # already in the pan

        # The one cook takes tickets in order: once the sentinel is done, the others were seen.
        await saga.publish(sentinel)
        await saga.wait_for(sentinel.order_id, "order.finished")
        assert not saga.of(cooking.order_id, "order.finished")
        assert not saga.of(waiting.order_id, "production.started")
        assert not saga.of(waiting.order_id, "order.finished")
        assert (await ticket_of(kitchen, waiting_ticket))["started_at"] is None
        assert await kitchen.stop()

    async def test_a_ticket_whose_cook_was_killed_is_finished_once_by_another(
        self, services: Callable[..., Any], saga: Saga
    ) -> None:
        first = await services(preparation_seconds=3, kitchen_workers=1,
                               kitchen_reclaim_seconds=1)
        received = order(("pizza-margherita", 1))
        await saga.publish(received)
        started = await saga.wait_for(received.order_id, "production.started")

        await first.kill()  # kill -9 in the middle of the preparation
        second = await services(kitchen_workers=2, kitchen_reclaim_seconds=1)

        finished = await saga.wait_for(received.order_id, "order.finished")
        assert finished.body["ticket_id"] == started.body["ticket_id"]
        assert (await ticket_of(second, started.body["ticket_id"]))["status"] == "done"
        assert saga.count(received.order_id, "production.queued") == 1
        assert saga.count(received.order_id, "production.started") == 1  # resumed, not restarted
        assert saga.count(received.order_id, "order.finished") == 1

    async def test_a_stop_lets_the_cook_finish_a_quick_ticket_and_announces_it(
        self, services: Callable[..., Any], saga: Saga, redis: Redis
    ) -> None:
        kitchen = await services(preparation_seconds=1, kitchen_workers=1)
        received = order(("lemonade", 1))
        await saga.publish(received)
        started = await saga.wait_for(received.order_id, "production.started")

        assert await kitchen.stop(), kitchen.logs()

        # Finished while stopping, and published by the outbox flush before the process ended.
        assert await redis.hget(f"ticket:{started.body['ticket_id']}", "status") == "done"
        assert await redis.xlen("outbox") == 0
        await saga.wait_for(received.order_id, "order.finished")

    async def test_a_ticket_too_long_to_finish_at_stop_is_finished_after_the_restart(
        self, services: Callable[..., Any], saga: Saga, redis: Redis
    ) -> None:
        first = await services(preparation_seconds=8, kitchen_workers=1,
                               kitchen_reclaim_seconds=1)
        received = order(("salad-caesar", 1))
        await saga.publish(received)
        started = await saga.wait_for(received.order_id, "production.started")

        assert await first.stop(), first.logs()  # the cook lets go after the stop's grace
        ticket_id = started.body["ticket_id"]
        assert await redis.hget(f"ticket:{ticket_id}", "status") == "in_progress"
        second = await services(kitchen_reclaim_seconds=1)

        await saga.wait_for(received.order_id, "order.finished")
        assert (await ticket_of(second, ticket_id))["status"] == "done"
        assert saga.count(received.order_id, "production.started") == 1
        assert saga.count(received.order_id, "order.finished") == 1

    async def test_two_replicas_never_oversell_and_make_each_ticket_once(
        self, services: Callable[..., Any], saga: Saga
    ) -> None:
        first = await services(kitchen_workers=2)
        await services(kitchen_workers=2)  # a second replica on the same queue and Redis
        await set_stock(first, "truffle-risotto", 10)
        orders = [order(("truffle-risotto", 1)) for _ in range(40)]

        await asyncio.gather(*(saga.publish(o) for o in orders))

        outcomes = {o.order_id: await saga.outcome(o.order_id) for o in orders}
        made = [oid for oid, outcome in outcomes.items() if outcome == "production.queued"]
        assert len(made) == 10
        for order_id in made:
            await saga.wait_for(order_id, "order.finished")
            assert saga.count(order_id, "production.started") == 1
            assert saga.count(order_id, "order.finished") == 1
        assert await available(first, "truffle-risotto") == 0

    async def test_a_kitchen_entry_reserve_lua_did_not_write_is_dropped(
        self, services: Callable[..., Any], saga: Saga, redis: Redis
    ) -> None:
        """An entry must carry its ticket, order and trace (as reserve.lua writes it): one with
        the ticket id alone is not cooked but taken off the stream, and the ticket stays."""
        kitchen = await services()
        order_id, ticket_id = uuid4(), uuid4()
        await _seed_ticket(redis, ticket_id, order_id, TicketStatus.QUEUED, "fries", 1)

        await redis.xadd("kitchen", {"ticket_id": str(ticket_id)})

        async def taken_off() -> bool:
            return bool(await redis.xlen("kitchen") == 0)

        await until(taken_off, "the entry taken off the kitchen stream")
        assert (await ticket_of(kitchen, str(ticket_id)))["status"] == "queued"
        assert saga.count(order_id, "production.started") == 0
        await redis.delete(f"ticket:{ticket_id}", f"order-ticket:{order_id}")
        await redis.zrem("tickets:queued", str(ticket_id))

    async def test_a_restart_keeps_the_stock_counts(
        self, services: Callable[..., Any], saga: Saga
    ) -> None:
        first = await services()
        await set_stock(first, "burger-veggie", 7)
        received = order(("burger-veggie", 2))
        await saga.publish(received)
        await saga.wait_for(received.order_id, "order.finished")
        assert await first.stop()

        second = await services()

        assert await available(second, "burger-veggie") == 5  # not seeded again


async def _poll_status(service: ServiceProcess, ticket_id: str, status: str) -> None:
    async def reached() -> bool:
        return bool((await ticket_of(service, ticket_id))["status"] == status)

    await until(reached, f"ticket {ticket_id} {status}")


async def _seed_ticket(redis: Redis, ticket_id: UUID, order_id: UUID, status: TicketStatus,
                       sku: str, quantity: int, traceparent: str = "") -> None:
    """A ticket as reserve.lua leaves it, in ``status``, with no kitchen entry."""
    await redis.hset(f"ticket:{ticket_id}", mapping={
        "id": str(ticket_id), "order_id": str(order_id), "status": str(status),
        "lines": orjson.dumps([{"sku": sku, "name": "Test", "quantity": quantity}]).decode(),
        "created_at": datetime.now(UTC).isoformat(), "traceparent": traceparent,
    })
    await redis.set(f"order-ticket:{order_id}", str(ticket_id))
    await redis.zadd(f"tickets:{status}", {str(ticket_id): 1})


# --- the scripts apply the domain's transition table ---------------------------------------------


@pytest.mark.parametrize("status", list(TicketStatus))
@pytest.mark.parametrize("step", list(Step))
async def test_the_scripts_follow_the_transition_table(
    redis: Redis, status: TicketStatus, step: Step
) -> None:
    """A ticket seeded in each state, each step's script applied: as domain.TRANSITIONS says.

    Runs with no service up; the outbox entries it writes are removed so none is ever relayed.
    """
    store = ProductionStore(redis, inbox_ttl_seconds=60)
    order_id, ticket_id, sku = uuid4(), uuid4(), f"test-sku-{uuid4()}"
    keys = [f"ticket:{ticket_id}", f"order-ticket:{order_id}", f"cancelled:{order_id}"]
    await redis.hset("stock", sku, 7)
    await _seed_ticket(redis, ticket_id, order_id, status, sku, 3)
    last = await redis.xrevrange("outbox", count=1)
    announcement = OutgoingEvent.build(order((sku, 3), order_id=order_id), source="test",
                                       subject=str(order_id))
    kitchen_entry = await redis.xadd("kitchen", {"ticket_id": str(ticket_id)})
    assert isinstance(kitchen_entry, str)  # decode_responses
    try:
        if step is Step.START:
            await store.start(ticket_id, announcement, datetime.now(UTC))
        elif step is Step.FINISH:
            await store.ensure_kitchen_group()
            await store.finish(KitchenEntry(kitchen_entry, ticket_id), ticket_id, announcement,
                               datetime.now(UTC))
            # finish.lua is done with the kitchen entry whatever the ticket's state was
            assert not await redis.xrange("kitchen", kitchen_entry, kitchen_entry)
        else:
            await store.cancel(event_id=uuid4(), order_id=order_id, at=datetime.now(UTC))

        after = TicketStatus(str(await redis.hget(keys[0], "status")))
        assert after is (next_status(status, step) or status)
        given_back = step is Step.CANCEL and releases_stock(status)
        assert await redis.hget("stock", sku) == ("10" if given_back else "7")
        assert await redis.zscore(f"tickets:{after}", str(ticket_id)) is not None
    finally:
        added: Any = await redis.xrange("outbox", min=f"({last[0][0]!s}" if last else "-")
        if added:
            await redis.xdel("outbox", *(entry_id for entry_id, _ in added))
        await redis.xdel("kitchen", kitchen_entry)
        await redis.hdel("stock", sku)
        await redis.delete(*keys)
        for state in TicketStatus:
            await redis.zrem(f"tickets:{state}", str(ticket_id))


@pytest.mark.parametrize("status", [None, *TicketStatus])
async def test_a_cancel_request_is_answered_as_the_kitchens_rule_says(
    redis: Redis, status: TicketStatus | None
) -> None:
    """request_cancel.lua, for a ticket in each state (or none yet), does what
    domain.answer_cancel_request says: the same answer, the matching event in the outbox, stock
    back only for a released ticket, the ticket cancelled only when the answer grants it."""
    store = ProductionStore(redis, inbox_ttl_seconds=60)
    order_id, ticket_id, sku = uuid4(), uuid4(), f"test-sku-{uuid4()}"
    keys = [f"ticket:{ticket_id}", f"order-ticket:{order_id}", f"cancelled:{order_id}"]
    await redis.hset("stock", sku, 7)
    if status is not None:
        await _seed_ticket(redis, ticket_id, order_id, status, sku, 3)
    last = await redis.xrevrange("outbox", count=1)
    accepted = OutgoingEvent.build(ProductionCancelled(order_id=order_id, ticket_id=ticket_id),
                                   source="test", subject=str(order_id))
    refused = OutgoingEvent.build(ProductionCancelRefused(
        order_id=order_id, ticket_id=ticket_id, reason="started"), source="test",
        subject=str(order_id))
    try:
        outcome = await store.request_cancel(
            event_id=uuid4(), order_id=order_id, ticket_id=None if status is None else ticket_id,
            at=datetime.now(UTC), accepted=accepted, refused=refused)
        expected = answer_cancel_request(status)
        assert CancelAnswer(outcome) is expected
        added: Any = await redis.xrange("outbox", min=f"({last[0][0]!s}" if last else "-")
        announced = [fields["id"] for _, fields in added if fields["subject"] == str(order_id)]
        granted = expected is not CancelAnswer.REFUSED
        assert announced == [str((accepted if granted else refused).id)]
        given_back = expected is CancelAnswer.RELEASED
        assert await redis.hget("stock", sku) == ("10" if given_back else "7")
        if status is not None:
            after = TicketStatus(str(await redis.hget(keys[0], "status")))
            assert after is (TicketStatus.CANCELLED if granted else status)
        # a granted request leaves the tombstone a late order.received must find
        assert bool(await redis.exists(keys[2])) == (
            expected in (CancelAnswer.NO_TICKET, CancelAnswer.RELEASED))
    finally:
        await _forget_cancel_request(redis, f"({last[0][0]!s}" if last else "-", order_id,
                                     ticket_id, sku, keys)


async def test_a_cancel_answer_names_the_ticket_the_order_has_when_it_is_decided(
    redis: Redis,
) -> None:
    """The answers to a cancel request are built before request_cancel.lua runs, naming the
    ticket read just before. If the order's order.received is applied in between, the script
    does nothing ("moved": no inbox record, no answer, the ticket untouched), and the service
    reads the ticket again: production.cancelled names the ticket it released."""
    store = ProductionStore(redis, inbox_ttl_seconds=60)
    order_id, ticket_id, sku = uuid4(), uuid4(), f"test-sku-{uuid4()}"
    event_id = uuid4()
    keys = [f"ticket:{ticket_id}", f"order-ticket:{order_id}", f"cancelled:{order_id}",
            f"inbox:{event_id}"]
    await redis.hset("stock", sku, 7)
    await _seed_ticket(redis, ticket_id, order_id, TicketStatus.QUEUED, sku, 3)
    last = await redis.xrevrange("outbox", count=1)
    since = f"({last[0][0]!s}" if last else "-"

    async def mine() -> list[dict[str, str]]:
        added: Any = await redis.xrange("outbox", min=since)
        return [fields for _, fields in added if fields["subject"] == str(order_id)]

    stale = OutgoingEvent.build(ProductionCancelled(order_id=order_id, ticket_id=None),
                                source="test", subject=str(order_id))
    try:
        moved = await store.request_cancel(event_id=event_id, order_id=order_id, ticket_id=None,
                                           at=datetime.now(UTC), accepted=stale, refused=stale)
        assert moved == "moved"
        assert await mine() == []
        assert not await redis.exists(f"inbox:{event_id}")
        assert await redis.hget(keys[0], "status") == str(TicketStatus.QUEUED)
        assert await redis.hget("stock", sku) == "7"

        reads = 0
        read_ticket = store.ticket_of

        async def read_before_the_ticket_was_queued(order: UUID) -> UUID | None:
            nonlocal reads
            reads += 1
            return None if reads == 1 else await read_ticket(order)

        store.ticket_of = read_before_the_ticket_was_queued  # type: ignore[method-assign,assignment]
        request = OrderCancellationRequested(order_id=order_id, reason="changed my mind")
        meta = EventMeta(id=event_id, type=str(request.type), subject=str(order_id), attempt=1)
        outcome = await kitchen_service.request_cancel(store, request, meta)
        assert (outcome, reads) == ("released", 2)
        [answer] = await mine()
        assert answer["type"] == "production.cancelled"
        assert orjson.loads(answer["body"])["ticket_id"] == str(ticket_id)
        assert await redis.hget("stock", sku) == "10"
    finally:
        await _forget_cancel_request(redis, since, order_id, ticket_id, sku, keys)


async def _forget_cancel_request(redis: Redis, since: str, order_id: UUID, ticket_id: UUID,
                                 sku: str, keys: Sequence[str]) -> None:
    """Take back what a cancel request test left: the order's answers in the outbox since
    ``since``, the stock line, ``keys`` and the ticket in any status."""
    added: Any = await redis.xrange("outbox", min=since)
    mine = [entry_id for entry_id, fields in added if fields["subject"] == str(order_id)]
    if mine:
        await redis.xdel("outbox", *mine)
    await redis.hdel("stock", sku)
    await redis.delete(*keys)
    for state in TicketStatus:
        await redis.zrem(f"tickets:{state}", str(ticket_id))


@pytest.mark.parametrize("paused", [False, True])
@pytest.mark.parametrize("status", list(TicketStatus))
async def test_starting_and_finishing_at_once_is_start_then_finish(
    redis: Redis, status: TicketStatus, paused: bool
) -> None:
    """start_finish.lua (no preparation time): start.lua's outcome, and if it started or resumed
    the ticket, finish.lua's, in one step: both events appended in order, the entry done with."""
    store = ProductionStore(redis, inbox_ttl_seconds=60)
    order_id, ticket_id = uuid4(), uuid4()
    await _seed_ticket(redis, ticket_id, order_id, status, "fries", 1)
    await store.ensure_kitchen_group()
    entry_id = await redis.xadd("kitchen", {"ticket_id": str(ticket_id)})
    assert isinstance(entry_id, str)  # decode_responses
    await redis.xreadgroup("cooks", "test-cook", {"kitchen": ">"})
    last = await redis.xrevrange("outbox", count=1)
    started, finished = (
        OutgoingEvent.build(order(("fries", 1), order_id=order_id), source=f"test-{step}",
                            subject=str(order_id)) for step in ("started", "finished"))
    if paused:
        await redis.set("kitchen:paused", "1")
    try:
        outcome = await store.start_and_finish(KitchenEntry(entry_id, ticket_id), ticket_id,
                                               started, finished, datetime.now(UTC))

        added: Any = await redis.xrange("outbox", min=f"({last[0][0]!s}" if last else "-")
        announced = [fields["id"] for _, fields in added]
        after = TicketStatus(str(await redis.hget(f"ticket:{ticket_id}", "status")))
        entry_left = bool(await redis.xrange("kitchen", entry_id, entry_id))
        if status is TicketStatus.QUEUED and not paused:
            assert (outcome, after) == ("finished", TicketStatus.DONE)
            assert announced == [str(started.id), str(finished.id)]  # in this order
        elif status is TicketStatus.IN_PROGRESS:  # resumed: started was announced before
            assert (outcome, after) == ("finished", TicketStatus.DONE)
            assert announced == [str(finished.id)]
        else:  # held by the paused line, or nothing to make: untouched, the entry kept
            assert outcome == ("paused" if status is TicketStatus.QUEUED else "skip")
            assert (after, announced) == (status, [])
        assert entry_left is (outcome != "finished")
    finally:
        await redis.delete("kitchen:paused", "kitchen", "outbox", f"ticket:{ticket_id}",
                           f"order-ticket:{order_id}")
        for state in TicketStatus:
            await redis.zrem(f"tickets:{state}", str(ticket_id))
