"""Regenerate the README's screenshots of the shop page and the operator view (docs/img/).

``make screenshots`` (or ``python -m tests.e2e.screenshots``) starts the e2e stack the tests use
(tests/e2e/conftest.py: its own ports, databases and vhost; ``--stack=compose`` works too),
places a few orders of each outcome, and photographs the pages in Debian's Chromium. It is a
pytest module (not collected by ``make test``: its name has no ``test_`` prefix) so that it
starts and stops that stack exactly as the browser tests do.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import httpx
import pytest

from tests.e2e.conftest import TERMINAL, Tab, wait_for
from tests.e2e.test_browser import choose, log_in_as_ana, log_in_as_operator, placed_order_id

IMAGES = Path(__file__).resolve().parents[2] / "docs" / "img"
DESKTOP = {"width": 1280, "height": 900}
PHONE = {"width": 390, "height": 844}


def order(ana: httpx.Client, sku: str, token: str = "tok_visa") -> str:
    response = ana.post("/api/v1/orders", json={"items": [{"sku": sku, "quantity": 1}],
                                                 "payment_token": token})
    assert response.status_code == 202, response.text
    return str(response.json()["id"])


def test_screenshots(chromium, stack, ana, client):
    IMAGES.mkdir(parents=True, exist_ok=True)
    # Some history: finished, declined, and (queued behind a paused line) waiting orders.
    for sku, token in [("lemonade", "tok_visa"), ("salad-caesar", "tok_chargeDeclined"),
                       ("burger-classic", "tok_chargeDeclinedInsufficientFunds")]:
        wait_for(ana, order(ana, sku, token), TERMINAL)
    client.put("/api/v1/production/line", json={"paused": True})
    try:  # cancelled while queued: charged, then refunded
        cancelled = order(ana, "brownie")
        wait_for(ana, cancelled, {"received"})
        assert ana.post(f"/api/v1/orders/{cancelled}/cancel").status_code == 202
        wait_for(ana, cancelled, TERMINAL)
    finally:
        client.put("/api/v1/production/line", json={"paused": False})

    shop = Tab(chromium, stack.base_url, viewport=DESKTOP)
    try:
        log_in_as_ana(shop)
        choose(shop, 2)
        shop.page.get_by_role("button", name="Place order").click()
        placed_order_id(shop)
        shop.page.locator("#current-state").filter(has_text="finished").wait_for()
        shop.page.locator("#history li").nth(3).wait_for()
        shop.page.screenshot(path=IMAGES / "shop.png", full_page=True)
    finally:
        shop.context.close()

    phone = Tab(chromium, stack.base_url, viewport=PHONE, is_mobile=True, has_touch=True,
                device_scale_factor=2)
    try:
        phone.page.goto("/")  # as a new visitor sees it: logging in, then the menu
        phone.page.locator("#menu input.qty").first.wait_for()
        phone.page.screenshot(path=IMAGES / "shop-phone.png")
    finally:
        phone.context.close()

    ops = Tab(chromium, stack.base_url, viewport=DESKTOP)
    try:
        page = ops.page
        log_in_as_operator(ops)
        page.get_by_role("button", name="Pause the line").click()
        waiting = [order(ana, sku) for sku in ("burger-classic", "fries", "lemonade")]
        page.locator(f'#board-queued li[data-order="{waiting[-1]}"]').wait_for()
        time.sleep(16)  # the charts sample every 5 s: let them draw a few points
        page.locator("#orders button").first.click()
        page.locator("#order-detail a").first.wait_for()
        page.screenshot(path=IMAGES / "ops.png", full_page=True)
    finally:
        client.put("/api/v1/production/line", json={"paused": False})
        ops.context.close()
    print(f"screenshots written to {IMAGES}")


if __name__ == "__main__":
    sys.exit(pytest.main([__file__, "-q", "-s", *sys.argv[1:]]))
