"""Webhooks as a customer's server sees them: each status POSTed, signed per Standard Webhooks
(verified here with the same library), in order, retried after errors, parked after the last
attempt where an operator replays it; and callback hosts off the allow-list refused."""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import httpx
import pytest
from standardwebhooks.webhooks import Webhook, WebhookVerificationError

from tests.e2e.conftest import TERMINAL, order_body, wait_for
from tests.stacks import stack_mode

MAX_ATTEMPTS = 3  # WEBHOOK_MAX_ATTEMPTS in tests/e2e/conftest.py KNOBS

# One POST the receiver got: its headers and its body.
Delivery = tuple[dict[str, str], bytes]


class Receiver:
    """A customer's webhook endpoint on this machine (allow-listed for plain http in the test
    stack). Per path: every request received, and how many to answer 500 before a 204.

    Natively the services reach it on 127.0.0.1; in compose mode the order containers reach the
    host as ``host.docker.internal`` (Docker's ``host-gateway``, docker-compose.yml),
    so there it listens on every interface."""

    def __init__(self, listen: str = "127.0.0.1", host: str = "127.0.0.1") -> None:
        self.host = host
        self.received: dict[str, list[Delivery]] = {}
        self.failures: dict[str, int] = {}
        self.lock = threading.Lock()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("content-length", 0)))
                with receiver.lock:
                    receiver.received.setdefault(self.path, []).append(
                        ({k.lower(): v for k, v in self.headers.items()}, body))
                    failing = receiver.failures.get(self.path, 0)
                    if failing > 0:
                        receiver.failures[self.path] = failing - 1
                self.send_response(500 if failing else 204)
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer((listen, 0), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def url(self, path: str) -> str:
        return f"http://{self.host}:{self.server.server_address[1]}{path}"

    def wait(self, path: str, count: int, timeout: float = 20.0) -> list[Delivery]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self.lock:
                got = list(self.received.get(path, []))
            if len(got) >= count:
                return got
            time.sleep(0.05)
        raise AssertionError(f"{path}: {len(got)} of {count} deliveries")


@pytest.fixture(scope="module")
def receiver(request: pytest.FixtureRequest) -> Iterator[Receiver]:
    running = (Receiver("0.0.0.0", "host.docker.internal")
               if stack_mode(request.config) == "compose" else Receiver())
    yield running
    running.server.shutdown()


def secret(client: httpx.Client) -> str:
    response = client.get("/api/v1/orders/webhook-secret")
    assert response.status_code == 200, response.text
    key: str = response.json()["secret"]
    return key


def place_with_callback(client: httpx.Client, url: str, **kwargs: Any) -> httpx.Response:
    body = {**order_body([("fries", 1)]), "callback_url": url}
    body.pop("customer")  # a customer's token names them
    return client.post("/api/v1/orders", json=body, **kwargs)


def verified(key: str, deliveries: list[Delivery]) -> list[dict[str, Any]]:
    return [Webhook(key).verify(body, headers) for headers, body in deliveries]


def first_attempts(deliveries: list[Delivery]) -> list[Delivery]:
    seen: dict[str, Delivery] = {}
    for headers, body in deliveries:
        seen.setdefault(headers["webhook-id"], (headers, body))
    return list(seen.values())


def test_each_status_is_posted_signed_and_in_order(ana, bob, receiver):
    path = f"/hooks/{uuid.uuid4()}"
    other = bob.post("/api/v1/orders", json={"items": [{"sku": "fries", "quantity": 1}],
                                             "payment_token": "tok_visa"})
    assert other.status_code == 202, other.text  # the shop's timeline is past Ana's first entry
    response = place_with_callback(ana, receiver.url(path))
    assert response.status_code == 202, response.text
    assert response.json()["callback_url"] == receiver.url(path)
    order = wait_for(ana, response.json()["id"], TERMINAL)
    statuses = [s["status"] for s in order["timeline"]]
    deliveries = receiver.wait(path, len(statuses))
    payloads = verified(secret(ana), deliveries)
    assert [p["data"]["status"] for p in payloads] == statuses
    assert {p["data"]["order_id"] for p in payloads} == {order["id"]}
    # Each entry's place in the order's timeline, not a shop-wide count.
    assert [p["data"]["sequence"] for p in payloads] == list(range(1, len(statuses) + 1))
    assert {p["type"] for p in payloads} == {"order.status_changed"}
    assert len({h["webhook-id"] for h, _ in deliveries}) == len(statuses)
    with pytest.raises(WebhookVerificationError):  # signed with Ana's secret, not Bob's
        Webhook(secret(bob)).verify(deliveries[0][1], deliveries[0][0])


def test_each_customer_has_a_secret_of_their_own(ana, bob, anonymous):
    assert secret(ana) == secret(ana)
    assert secret(ana) != secret(bob)
    assert secret(ana).startswith("whsec_")
    assert anonymous.get("/api/v1/orders/webhook-secret").status_code == 401


def test_a_rotated_secret_signs_beside_the_new_one_until_the_next_rotation(
    signed_up, anonymous, receiver
):
    first = secret(signed_up)
    assert signed_up.get("/api/v1/orders/webhook-secret").json()["previous_valid_until"] is None
    rotated = signed_up.post("/api/v1/orders/webhook-secret/rotate")
    assert rotated.status_code == 200, rotated.text
    second, until = rotated.json()["secret"], rotated.json()["previous_valid_until"]
    assert second.startswith("whsec_") and second != first
    hours = (datetime.fromisoformat(until) - datetime.now(UTC)).total_seconds() / 3600
    assert 23 < hours <= 24  # WEBHOOK_SECRET_OVERLAP_HOURS' default
    assert signed_up.get("/api/v1/orders/webhook-secret").json() == rotated.json()

    def deliveries_of_a_new_order() -> list[Delivery]:
        path = f"/hooks/{uuid.uuid4()}"
        placed = place_with_callback(signed_up, receiver.url(path))
        assert placed.status_code == 202, placed.text
        order = wait_for(signed_up, placed.json()["id"], TERMINAL)
        got: list[Delivery] = receiver.wait(path, len(order["timeline"]))
        return got

    # During the overlap each delivery is signed by both: a receiver still on the old secret,
    # and one already on the new, both verify it.
    during = deliveries_of_a_new_order()
    assert verified(first, during) == verified(second, during)
    assert {len(h["webhook-signature"].split(" ")) for h, _ in during} == {2}

    # Rotating again retires the first at once; the second now signs beside the third.
    third = signed_up.post("/api/v1/orders/webhook-secret/rotate").json()["secret"]
    after = deliveries_of_a_new_order()
    assert verified(second, after) == verified(third, after)
    with pytest.raises(WebhookVerificationError):
        verified(first, after)
    assert anonymous.post("/api/v1/orders/webhook-secret/rotate").status_code == 401


def test_a_receiver_error_is_retried_with_the_same_webhook_id(ana, receiver):
    path = f"/hooks/{uuid.uuid4()}"
    receiver.failures[path] = MAX_ATTEMPTS - 1  # the first delivery succeeds at its last try
    order = wait_for(ana, place_with_callback(ana, receiver.url(path)).json()["id"], TERMINAL)
    statuses = [s["status"] for s in order["timeline"]]
    deliveries = receiver.wait(path, len(statuses) + MAX_ATTEMPTS - 1)
    ids = [h["webhook-id"] for h, _ in deliveries]
    assert ids[:MAX_ATTEMPTS] == [ids[0]] * MAX_ATTEMPTS  # retried, same id, nothing overtook
    payloads = verified(secret(ana), first_attempts(deliveries))
    assert [p["data"]["status"] for p in payloads] == statuses


def test_a_delivery_is_parked_after_its_last_attempt_and_replayed(ana, client, receiver):
    path = f"/hooks/{uuid.uuid4()}"
    receiver.failures[path] = 10 ** 6  # the receiver is down
    order_id = place_with_callback(ana, receiver.url(path)).json()["id"]
    wait_for(ana, order_id, TERMINAL)
    parked = _wait_parked(client, order_id)
    assert parked["attempts"] == MAX_ATTEMPTS
    assert parked["status"] == "pending_payment" and parked["last_error"] == "HTTP 500"
    assert ana.get("/api/v1/orders/webhooks/failed").status_code == 403
    assert ana.post(f"/api/v1/orders/webhooks/failed/{parked['id']}/replay").status_code == 403

    receiver.failures[path] = 0  # back up
    response = client.post(f"/api/v1/orders/webhooks/failed/{parked['id']}/replay")
    assert response.status_code == 202, response.text
    replayed = _wait_attempts(receiver, path, parked["id"], MAX_ATTEMPTS + 1)
    assert verified(secret(ana), replayed[-1:])[0]["data"]["status"] == "pending_payment"
    again = client.post(f"/api/v1/orders/webhooks/failed/{parked['id']}/replay")
    assert again.status_code == 404 and again.json()["errors"][0]["field"] == "delivery_id"
    # Both replays are in the order service's operator audit, the refused one as failed.
    records = [r for r in client.get("/api/v1/ops/order/audit",
                                     params={"action": "webhook.replay"}).json()["records"]
               if r["target"] == parked["id"]]
    assert [r["outcome"] for r in records] == ["failed", "succeeded"], records
    assert records[0]["actor"] == "ops-console"


def _wait_attempts(receiver: Receiver, path: str, webhook_id: str,
                   count: int, timeout: float = 10.0) -> list[Delivery]:
    deadline = time.monotonic() + timeout
    while True:
        with receiver.lock:
            got = [d for d in receiver.received[path] if d[0]["webhook-id"] == webhook_id]
        if len(got) >= count or time.monotonic() > deadline:
            assert len(got) == count, f"{len(got)} attempts of {webhook_id}, want {count}"
            return got
        time.sleep(0.05)


def _wait_parked(client: httpx.Client, order_id: str, timeout: float = 20.0) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        rows = client.get("/api/v1/orders/webhooks/failed", params={"limit": 500}).json()
        mine = [r for r in rows if r["order_id"] == order_id]
        if mine:
            return min(mine, key=lambda r: r["created_at"])
        time.sleep(0.1)
    raise AssertionError(f"no parked delivery of {order_id}")


@pytest.mark.parametrize("url", [
    "https://hooks.example.com/saga",  # not on the allow-list
    "http://localhost/hook",  # loopback by another name: not listed
    "http://169.254.169.254/latest/meta-data",  # the cloud metadata address
    "http://10.0.0.5:5432/",
    "ftp://127.0.0.1/hook",
    "http://user:secret@127.0.0.1/hook",
    "127.0.0.1/hook",
    "http://[::1]/hook",
])
def test_callback_hosts_off_the_allow_list_are_refused(ana, url):
    response = place_with_callback(ana, url)
    assert response.status_code == 422, response.text
    assert [e["field"] for e in response.json()["errors"]] == ["callback_url"]


def test_a_refused_callback_creates_no_order(ana):
    before = {o["id"] for o in ana.get("/api/v1/orders", params={"limit": 500}).json()}
    assert place_with_callback(ana, "https://hooks.example.com/x").status_code == 422
    after = {o["id"] for o in ana.get("/api/v1/orders", params={"limit": 500}).json()}
    assert after == before
