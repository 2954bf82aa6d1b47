"""The shop page and the operator view in a real browser (Chromium, through the gateway).

What a customer and an operator would see: Ana logs in, orders, and watches `finished` arrive
without reloading (the timeline is pushed over the order's event stream, never polled); a
declined card says why; the operator pauses the kitchen line, sees the ticket wait, resumes and
sees it done; the offline Swagger UI lists the order operations. Every tab checks at the end
that no request left the gateway's origin (no CDN, nothing from the internet).
"""

from __future__ import annotations

import re
import signal
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest

from tests.e2e.conftest import Tab, wait_for
from tests.e2e.test_dead_letters import inject_poison, wait_parked
from tests.tokens import ANA, OPERATOR

pytestmark = pytest.mark.e2e
ORDER_URL = re.compile(r"/api/v1/orders/([0-9a-f-]{36})(?:/|$|\?)")


def log_in_as_ana(tab: Tab) -> None:
    page = tab.page
    page.goto("/")
    page.get_by_label("Email").first.fill(ANA.form["username"])
    page.get_by_label("Password").first.fill(ANA.form["password"])
    page.get_by_role("button", name="Log in").click()
    page.locator("#who").filter(has_text="Logged in as Ana").wait_for()


def log_in_as_operator(tab: Tab) -> None:
    page = tab.page
    page.goto("/ops")
    page.get_by_label("Client id").fill(OPERATOR.form["client_id"])
    page.get_by_label("Client secret").fill(OPERATOR.form["client_secret"])
    page.get_by_role("button", name="Log in").click()
    page.locator("#who").filter(has_text="Operator").wait_for()


def choose(tab: Tab, quantity: int = 1) -> None:
    tab.page.locator("#menu input.qty").first.fill(str(quantity))


def placed_order_id(tab: Tab) -> str:
    tab.page.locator("#current-id").filter(has_text=re.compile(".+")).wait_for()
    order_id: str = tab.page.locator("#current-id").inner_text()
    return order_id


def test_ana_orders_and_sees_it_finish_without_reloading(tab):
    page = tab.page
    log_in_as_ana(tab)
    page.evaluate("window.sameDocument = true")  # gone if the page reloads
    choose(tab, 2)
    page.get_by_role("button", name="Place order").click()
    order_id = placed_order_id(tab)

    page.locator("#current-state").filter(has_text="finished").wait_for()
    steps = page.locator("#timeline li").evaluate_all("items => items.map(i => i.dataset.status)")
    assert steps[0] == "pending_payment" and steps[-1] == "finished", steps
    assert "Finished" in page.locator("#outcome").inner_text()
    assert page.evaluate("window.sameDocument") is True
    # Pushed, not polled: the page read this order only through its event stream.
    reads = [url for url in tab.requests if (m := ORDER_URL.search(url)) and m[1] == order_id]
    assert reads and all(url.endswith(f"/api/v1/orders/{order_id}/events") for url in reads), reads
    # And it appears in her history, finished.
    page.locator("#history li").filter(has_text="finished").first.wait_for()


def test_a_declined_card_shows_its_reason(tab):
    page = tab.page
    log_in_as_ana(tab)
    choose(tab)
    page.get_by_label("Another card").check()
    # The test card number that is always declined, tokenised by the page first.
    page.get_by_label("Card number", exact=True).fill("4000 0000 0000 0002")
    page.get_by_role("button", name="Place order").click()
    placed_order_id(tab)
    page.locator("#current-state").filter(has_text="cancelled").wait_for()
    outcome = page.locator("#outcome").inner_text()
    assert "declined" in outcome and "card_declined" in outcome, outcome
    assert "Nothing was charged" in outcome


def test_a_new_customer_signs_up_and_sees_an_empty_history(tab):
    page = tab.page
    page.goto("/")
    page.get_by_text("New here? Sign up").click()
    form = page.locator("#signup")
    form.get_by_label("Name").fill("Carla Browser")
    form.get_by_label("Email").fill(f"carla-{uuid.uuid4().hex[:12]}@example.com")
    form.get_by_label("Password").fill("a long enough password")
    form.get_by_role("button", name="Sign up and log in").click()
    page.locator("#who").filter(has_text="Logged in as Carla Browser").wait_for()
    page.locator("#history li").filter(has_text="No orders yet.").wait_for()


@pytest.fixture
def line_resumed_after(client) -> Iterator[None]:
    """Whatever the test does to the kitchen line, the next test finds it running."""
    yield
    assert client.put("/api/v1/production/line", json={"paused": False}).status_code == 200


def test_the_operator_pauses_the_line_and_the_ticket_waits_until_resumed(tab, ana, client,
                                                                          line_resumed_after):
    page = tab.page
    log_in_as_operator(tab)
    page.get_by_role("button", name="Pause the line").click()
    page.locator("#line-state").filter(has_text="paused").wait_for()

    response = ana.post("/api/v1/orders", json={
        "items": [{"sku": "burger-classic", "quantity": 1}], "payment_token": "tok_visa"})
    assert response.status_code == 202, response.text
    order_id = response.json()["id"]
    queued = page.locator(f'#board-queued li[data-order="{order_id}"]')
    queued.wait_for()
    assert wait_for(ana, order_id, {"received"})["status"] == "received"  # it waits

    page.get_by_role("button", name="Resume the line").click()
    page.locator("#line-state").filter(has_text="running").wait_for()
    page.locator(f'#board-done li[data-order="{order_id}"]').wait_for()
    assert queued.count() == 0
    assert wait_for(ana, order_id, {"finished"})["status"] == "finished"

    # Restock: the count the kitchen shows is the one the operator set.
    shelf = client.get("/api/v1/production/stock/truffle-risotto").json()["available"]
    row = page.locator("#stock tr").filter(has_text="truffle-risotto")
    row.get_by_role("spinbutton").fill("7")
    row.get_by_role("button", name="Restock").click()
    page.locator("#stock-status").filter(has_text="truffle-risotto: 7 on the shelf").wait_for()
    stock = client.get("/api/v1/production/stock/truffle-risotto").json()
    assert stock["available"] == 7
    client.put("/api/v1/production/stock/truffle-risotto", json={"available": shelf})

    # The operator can follow it to its trace and its logs.
    page.locator("#orders button").filter(has_text=order_id[:8]).click()
    trace = page.get_by_role("link", name="in Jaeger")
    assert "/trace/" in (trace.get_attribute("href") or "")
    for service in ("order", "payment", "production", "identity"):
        page.locator(f'#health li.ok[data-service="{service}"]').wait_for()


@pytest.fixture
def faults_off_after(client) -> Iterator[None]:
    """Whatever the test switches on, the next test finds every fault switch off."""
    yield
    for path, body in (("/api/v1/orders/faults", {"relay_paused": False}),
                       ("/api/v1/payments/faults", {"decline_rate": 0, "latency_ms": 0})):
        assert client.put(path, json=body).status_code == 200


def test_a_ticket_read_in_two_columns_of_the_board_shows_once_in_the_furthest(tab):
    """The board reads its columns one request each: a ticket that moves on between two reads
    is in both answers (CI met it: queued and done at once), and the page shows it once."""
    page = tab.page
    order_id = str(uuid.uuid4())
    ticket = {"order_id": order_id, "lines": [{"sku": "fries", "name": "Fries", "quantity": 1}],
              "created_at": "2026-12-06T10:00:00Z", "started_at": "2026-12-06T10:00:01Z",
              "finished_at": "2026-12-06T10:00:02Z", "status": "done"}
    page.route(re.compile(r".*/api/v1/production/queue\?status=(queued|done)\b.*"),
               lambda route: route.fulfill(json=[ticket]))
    log_in_as_operator(tab)
    page.locator(f'#board-done li[data-order="{order_id}"]').wait_for()
    assert page.locator(f'#board-queued li[data-order="{order_id}"]').count() == 0
    assert page.locator("#count-queued").inner_text() == "(0)"


def test_a_slow_first_load_of_the_switches_never_undoes_the_operators_change(tab, client,
                                                                           faults_off_after):
    """The panel reads every form's switches when it opens, one after another; an operator
    quicker than that read must keep what they set, on screen and in the form."""
    page = tab.page
    held: list[Any] = []
    page.route("**/api/v1/orders/faults",
               lambda route: held.append(route) if route.request.method == "GET"
               else route.continue_())
    log_in_as_operator(tab)
    relay = page.locator("#faults-order")
    until_held = time.monotonic() + 20
    while not held and time.monotonic() < until_held:
        page.wait_for_timeout(50)
    assert held, "the panel never read the order service's switches"
    relay.get_by_label("Pause the outbox relay").check()
    relay.get_by_role("button", name="Set relay").click()
    relay.locator(".status").filter(has_text="relay_paused true").wait_for()
    for route in held:  # the first read's answer arrives now, older than the change
        route.fulfill(json={"relay_paused": False, "changed_by": None, "changed_at": None})
    page.wait_for_timeout(500)
    assert "Set by ops-console" in relay.locator(".status").inner_text()
    assert relay.get_by_label("Pause the outbox relay").is_checked()
    assert client.get("/api/v1/orders/faults").json()["relay_paused"] is True


def test_the_operator_pauses_the_relay_from_the_panel_and_orders_wait(tab, ana, client,
                                                                      faults_off_after):
    page = tab.page
    log_in_as_operator(tab)
    relay = page.locator("#faults-order")
    relay.get_by_label("Pause the outbox relay").check()
    relay.get_by_role("button", name="Set relay").click()
    relay.locator(".status").filter(has_text="Set by ops-console").wait_for()
    assert "relay_paused true" in relay.locator(".status").inner_text()
    assert client.get("/api/v1/orders/faults").json()["relay_paused"] is True

    response = ana.post("/api/v1/orders", json={
        "items": [{"sku": "burger-classic", "quantity": 1}], "payment_token": "tok_visa"})
    assert response.status_code == 202, response.text
    order_id = response.json()["id"]
    page.wait_for_timeout(1500)  # the relay would have published it by now
    assert ana.get(f"/api/v1/orders/{order_id}").json()["status"] == "pending_payment"

    relay.get_by_label("Pause the outbox relay").uncheck()
    relay.get_by_role("button", name="Set relay").click()
    relay.locator(".status").filter(has_text="relay_paused false").wait_for()
    assert wait_for(ana, order_id, {"finished"})["status"] == "finished"

    # A value out of range is refused in the page, naming the field, and changes nothing.
    payment = page.locator("#faults-payment")
    payment.get_by_label("Decline rate (0 to 1)").evaluate("input => input.removeAttribute('max')")
    payment.get_by_label("Decline rate (0 to 1)").fill("2")
    payment.get_by_role("button", name="Set payment faults").click()
    payment.locator(".status").filter(has_text="Refused").wait_for()
    assert "decline_rate" in payment.locator(".status").inner_text()
    assert client.get("/api/v1/payments/faults").json()["decline_rate"] == 0


@pytest.fixture
def waiting_in_the_page(tab, client, line_resumed_after) -> str:
    """Ana's order, placed in the page, waiting in the kitchen's queue behind a paused line."""
    assert client.put("/api/v1/production/line", json={"paused": True}).status_code == 200
    log_in_as_ana(tab)
    choose(tab)
    tab.page.get_by_role("button", name="Place order").click()
    order_id = placed_order_id(tab)
    tab.page.locator('#timeline li[data-status="received"]').wait_for()
    return order_id


def test_ana_cancels_a_queued_order_and_is_told_it_was_refunded(tab, waiting_in_the_page):
    page = tab.page
    page.get_by_role("button", name="Cancel this order").click()
    page.locator("#current-state").filter(has_text="refunded").wait_for()
    outcome = page.locator("#outcome").inner_text()
    assert outcome.startswith("Refunded") and "because" in outcome, outcome
    assert page.get_by_role("button", name="Cancel this order").is_hidden()


def test_the_timeline_resumes_where_it_broke_off(tab, client, stack, waiting_in_the_page):
    """The stream breaks (every order replica is killed); the page reconnects with
    Last-Event-ID once one is back, and shows every later step exactly once."""
    page = tab.page
    resumed_from: list[str] = []
    page.on("request", lambda request: resumed_from.append(request.headers["last-event-id"])
            if "last-event-id" in request.headers else None)

    try:
        for replica in stack.replicas("order"):
            stack.kill(replica.name, signal.SIGKILL)
        page.locator("#stream-state").filter(has_text="reconnecting").wait_for()
    finally:
        stack.restart_missing()
    page.locator("#stream-state").filter(has_text="live").wait_for(timeout=60_000)
    assert client.put("/api/v1/production/line", json={"paused": False}).status_code == 200

    page.locator("#current-state").filter(has_text="finished").wait_for()
    steps = page.locator("#timeline li").evaluate_all("items => items.map(i => i.dataset.status)")
    assert steps == ["pending_payment", "paid", "received", "in_production", "finished"], steps
    assert resumed_from, "the page reconnected without Last-Event-ID"


def test_the_operator_replays_a_dead_letter(tab, client, stack):
    # Poison for the payment service: it fails at once and is parked (tests/e2e/test_dead_letters)
    # From another thread: Playwright's sync API holds this one's event loop.
    with ThreadPoolExecutor(max_workers=1) as thread:
        event_id = thread.submit(inject_poison, stack.rabbitmq_url, "order.created").result()
    wait_parked(client, "payment", event_id)
    page = tab.page
    log_in_as_operator(tab)
    parked = page.locator(f'#dead-letters li[data-event="{event_id}"]')
    try:
        # every service's dead letters, the identity's too, and saga.unrouted
        for queue in ("order", "payment", "production", "identity", "unrouted"):
            page.locator(f'#dead-letters [data-queue="{queue}"] h3').filter(
                has_text=f"{queue}: ").wait_for()
        parked.get_by_role("button", name="Replay").click()
        page.locator("#dlq-status").filter(has_text="Replayed 1 message(s) of payment").wait_for()
        wait_parked(client, "payment", event_id)  # still poison: back in the dead letters
    finally:
        client.delete(f"/api/v1/ops/payment/dead-letters/{event_id}")


# Chunks as a network may cut them: mid-field, mid-line, a CRLF split in two, a heartbeat.
SSE_CHUNKS = ["retry: 2000\n\n: heart", "beat\n\nid: 1\nevent: status\ndata: {\"a\"",
              ":1}\n\nid: 2\r", "\nevent: status\r\ndata: x\r\ndata: y\r\n\r\n", "data: half"]
HISTOGRAM = """# TYPE saga_duration_seconds histogram
saga_duration_seconds_bucket{outcome="finished",le="0.1"} 0.0
saga_duration_seconds_bucket{outcome="finished",le="0.25"} 4.0
saga_duration_seconds_bucket{outcome="finished",le="0.5"} 8.0
saga_duration_seconds_bucket{outcome="finished",le="+Inf"} 8.0
saga_duration_seconds_bucket{outcome="refunded",le="0.1"} 0.0
saga_duration_seconds_bucket{outcome="refunded",le="0.25"} 1.0
saga_duration_seconds_bucket{outcome="refunded",le="0.5"} 2.0
saga_duration_seconds_bucket{outcome="refunded",le="+Inf"} 2.0
saga_orders{status="finished"} 8.0
"""


def test_the_pages_read_event_streams_and_metrics_as_sent(tab):
    """The page's own parsers, run in the browser: SSE (sse.js) and Prometheus (metrics.js)."""
    page = tab.page
    page.goto("/")
    sse = page.evaluate("""async (chunks) => {
        const { SseParser } = await import("/assets/js/sse.js");
        const events = [];
        const parser = new SseParser((event) => events.push(event));
        chunks.forEach((chunk) => parser.push(chunk));
        return { events, lastEventId: parser.lastEventId, retryMs: parser.retryMs };
    }""", SSE_CHUNKS)
    assert sse == {"events": [{"type": "status", "data": '{"a":1}', "id": "1"},
                              {"type": "status", "data": "x\ny", "id": "2"}],
                   "lastEventId": "2", "retryMs": 2000}
    metrics = page.evaluate("""async (text) => {
        const m = await import("/assets/js/metrics.js");
        const samples = m.parse(text);
        return { p50: m.quantile(samples, "saga_duration_seconds", 0.5),
                 p99: m.quantile(samples, "saga_duration_seconds", 0.99),
                 none: m.quantile(samples, "nothing_here", 0.5),
                 finished: m.sum(samples, "saga_orders", { status: "finished" }) };
    }""", HISTOGRAM)
    # 10 sagas, 5 by 0.25 s, 10 by 0.5 s: the median is at 0.25, p99 near the 0.5 bound.
    assert metrics["p50"] == pytest.approx(0.25)
    assert metrics["p99"] == pytest.approx(0.25 + 0.25 * (9.9 - 5) / 5)
    assert metrics["none"] is None and metrics["finished"] == 8


def test_the_order_docs_list_the_order_operations_offline(tab):
    page = tab.page
    page.goto("/docs/order")
    paths = page.locator(".opblock-summary-path")
    paths.first.wait_for()
    shown = set(paths.all_inner_texts())
    assert {"/api/v1/orders", "/api/v1/orders/{order_id}", "/api/v1/orders/{order_id}/cancel",
            "/api/v1/orders/{order_id}/events", "/api/v1/products"} <= {
        p.replace("\u200b", "") for p in shown}, shown


def test_the_shop_works_by_keyboard_on_a_phone(chromium, stack):
    tab = Tab(chromium, stack.base_url, viewport={"width": 390, "height": 844},
              is_mobile=True, has_touch=True)
    try:
        page = tab.page
        page.goto("/")
        page.locator("#menu input.qty").first.wait_for()
        # Nothing wider than the phone: no sideways scrolling.
        assert page.evaluate("document.documentElement.scrollWidth") <= 390
        # Log in with the keyboard alone: focus the email field, type, Tab, type, Enter.
        page.get_by_label("Email").first.focus()
        page.keyboard.type(ANA.form["username"])
        page.keyboard.press("Tab")
        page.keyboard.type(ANA.form["password"])
        page.keyboard.press("Enter")
        page.locator("#who").filter(has_text="Logged in as Ana").wait_for()
        assert tab.foreign_requests() == []
    finally:
        tab.context.close()


def test_an_expired_session_takes_the_shop_back_to_its_log_in(tab):
    """A tab left open past its token's life still shows the account; the next action must
    bring the log-in back, not leave the page stuck behind a 401 it cannot answer."""
    page = tab.page
    log_in_as_ana(tab)
    page.evaluate("""() => {
        const saved = JSON.parse(sessionStorage.getItem("saga-shop.session"));
        sessionStorage.setItem("saga-shop.session",
                               JSON.stringify({...saved, expiresAt: Date.now() - 1000}));
    }""")
    choose(tab)
    page.get_by_role("button", name="Place order").click()
    page.get_by_role("button", name="Log in").wait_for(state="visible")
    assert "Logged in as" not in page.locator("#who").inner_text()


def test_a_wrong_operator_secret_is_said_by_the_page(tab):
    """No Basic challenge for a secret sent in the form: the browser would ask for a user name
    and password itself, and the page would wait for ever on its log-in."""
    page = tab.page
    page.goto("/ops")
    page.get_by_label("Client id").fill(OPERATOR.form["client_id"])
    page.get_by_label("Client secret").fill("not the secret")
    page.get_by_role("button", name="Log in").click()
    page.get_by_text("Could not log in").wait_for(timeout=10_000)


def test_the_operator_view_fits_a_phone(chromium, stack):
    tab = Tab(chromium, stack.base_url, viewport={"width": 390, "height": 844},
              is_mobile=True, has_touch=True)
    try:
        log_in_as_operator(tab)
        tab.page.locator("#stock tr").first.wait_for()
        assert tab.page.evaluate("document.documentElement.scrollWidth") <= 390
    finally:
        tab.context.close()
