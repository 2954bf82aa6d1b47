"""`make demo`: one order of each outcome, each timeline shown live, with its trace and logs.

Against a running stack (``GATEWAY``, default http://127.0.0.1:8080), as the development
accounts: customer Ana places four orders and the operator console helps to provoke two of
the outcomes, the way tests/e2e provokes them:

- finished: a card that pays (``tok_visa``);
- declined: a card the bank declines (``tok_chargeDeclined``): the order is cancelled;
- refunded: one more truffle risotto than the kitchen has: paid, then refunded;
- cancelled: the operator holds the kitchen line, Ana cancels while her ticket waits in the
  queue, the line runs again: the order is cancelled and refunded.

Each timeline is read from the order's Server-Sent Events stream (GET /api/v1/orders/{id}/events)
and printed as each status commits; every POST carries an Idempotency-Key. Only the standard
library, so it runs with any Python 3.11, in native mode and, in compose mode, inside the order
service's image on the compose network (the Makefile's ``demo`` target), with only Docker on
the host. Exit status 1 if an order did not end as expected.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

CUSTOMER = {"grant_type": "password", "username": "ana@example.com",
            "password": "ana-dev-password"}
OPERATOR = {"grant_type": "client_credentials", "client_id": "ops-console",
            "client_secret": "ops-dev-secret"}
SCARCE = "truffle-risotto"  # the menu item the kitchen stocks little of
STREAM_TIMEOUT_SECONDS = 60
# No proxy: the gateway is local (a proxy from the environment would not know it).
_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))


class Api:
    """A few JSON calls through the gateway with a bearer token."""

    def __init__(self, base: str, grant: dict[str, str]) -> None:
        self.base = base.rstrip("/")
        token = self.call("POST", "/api/v1/auth/token", form=grant)["access_token"]
        self.headers = {"Authorization": f"Bearer {token}"}

    def _request(self, method: str, path: str, body: Any = None,
                 form: dict[str, str] | None = None,
                 headers: dict[str, str] | None = None) -> urllib.request.Request:
        data, kind = None, {}
        if form is not None:
            data = urllib.parse.urlencode(form).encode()
            kind = {"Content-Type": "application/x-www-form-urlencoded"}
        elif body is not None:
            data, kind = json.dumps(body).encode(), {"Content-Type": "application/json"}
        if method == "POST":  # every POST may be retried safely
            kind["Idempotency-Key"] = str(uuid.uuid4())
        return urllib.request.Request(  # noqa: S310  # the gateway's http(s) address
            self.base + path, data=data, method=method,
            headers={**getattr(self, "headers", {}), **kind, **(headers or {})})

    def call(self, method: str, path: str, body: Any = None,
             form: dict[str, str] | None = None) -> Any:
        request = self._request(method, path, body, form)
        try:
            with _OPENER.open(request, timeout=15) as response:
                return json.loads(response.read() or b"null")
        except urllib.error.HTTPError as exc:
            detail = exc.read().decode(errors="replace")
            raise SystemExit(f"demo: {method} {path}: HTTP {exc.code} {detail}") from None

    def events(self, path: str) -> Iterator[dict[str, Any]]:
        """The ``data`` of each event of a Server-Sent Events stream, as it arrives."""
        request = self._request("GET", path, headers={"Accept": "text/event-stream"})
        with _OPENER.open(request, timeout=STREAM_TIMEOUT_SECONDS) as stream:
            for raw in stream:
                line = raw.decode().rstrip("\r\n")
                if line.startswith("data:"):
                    yield json.loads(line[5:])


@dataclass
class Scenario:
    outcome: str  # what the demo calls it
    status: str  # the order's terminal status
    story: str
    items: list[tuple[str, int]]
    token: str = "tok_visa"  # noqa: S105  # a test card's token
    # Called with each status as it streams in (the cancelled scenario cancels on "received").
    on_status: Callable[[str, str], None] | None = None


def scenarios(customer: Api, operator: Api) -> list[Scenario]:
    stock = {row["sku"]: row["available"]
             for row in operator.call("GET", "/api/v1/production/stock")}

    def cancel_when_queued(order_id: str, status: str) -> None:
        if status == "received":
            print("           (Ana cancels while the ticket waits in the queue)")
            customer.call("POST", f"/api/v1/orders/{order_id}/cancel")

    return [
        Scenario("finished", "finished", "a card that pays", [("burger-classic", 1),
                                                                ("fries", 1)]),
        Scenario("declined", "cancelled", "a card the bank declines", [("lemonade", 1)],
                 token="tok_chargeDeclined"),  # noqa: S106  # a test card's token
        Scenario("refunded", "refunded",
                 f"{stock[SCARCE] + 1} x {SCARCE}, one more than the kitchen has",
                 [(SCARCE, stock[SCARCE] + 1)]),
        Scenario("cancelled", "refunded", "cancelled by Ana before the kitchen starts",
                 [("salad-caesar", 1)], on_status=cancel_when_queued),
    ]


def run(scenario: Scenario, number: int, customer: Api) -> bool:
    print(f"\n{number}/4 {scenario.outcome}: {scenario.story} ({scenario.token})")
    order = customer.call("POST", "/api/v1/orders", {
        "items": [{"sku": sku, "quantity": n} for sku, n in scenario.items],
        "payment_token": scenario.token})
    order_id, started = order["id"], time.monotonic()
    print(f"    order {order_id}")
    final = None
    for entry in customer.events(f"/api/v1/orders/{order_id}/events"):
        final = entry["status"]
        reason = f"  ({entry['reason']})" if entry.get("reason") else ""
        print(f"    +{time.monotonic() - started:5.2f}s  {final}{reason}", flush=True)
        if scenario.on_status is not None:
            scenario.on_status(order_id, final)
    order = customer.call("GET", f"/api/v1/orders/{order_id}")
    ok: bool = final == order["status"] == scenario.status
    why = f": {order['cancellation_reason']}" if order.get("cancellation_reason") else ""
    print(f"    outcome {scenario.outcome}: {order['status']}{why}"
          + ("" if ok else f"  (EXPECTED {scenario.status})"))
    links = order["links"]
    print(f"    trace   {links['trace'] or 'not exported here: grep its trace id in .run/logs'}")
    print(f"    logs    {links['logs'] or 'not exported here: grep its trace id in .run/logs'}")
    return ok


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m deploy.demo", description=__doc__.split(
        "\n")[0])
    default = os.environ.get("GATEWAY") or \
        f"http://127.0.0.1:{os.environ.get('GATEWAY_PORT', '8080')}"
    parser.add_argument("--gateway", default=default, help=f"the gateway (default {default})")
    args = parser.parse_args(argv)
    print(f"saga-shop demo against {args.gateway}: as ana@example.com, helped by ops-console")
    customer, operator = Api(args.gateway, CUSTOMER), Api(args.gateway, OPERATOR)
    results = []
    for number, scenario in enumerate(scenarios(customer, operator), start=1):
        holding = scenario.on_status is not None
        if holding:  # hold the line so the ticket waits where it can still be cancelled
            operator.call("PUT", "/api/v1/production/line", {"paused": True})
        try:
            results.append(run(scenario, number, customer))
        finally:
            if holding:
                operator.call("PUT", "/api/v1/production/line", {"paused": False})
    print(f"\n{sum(results)} of {len(results)} orders ended as expected")
    return 0 if all(results) else 1


if __name__ == "__main__":
    sys.exit(main())
