"""The webhook SSRF guard (order.callbacks) and the retry schedule (order.webhooks): pure."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from uuid import uuid4

import pytest
from standardwebhooks.webhooks import Webhook, WebhookVerificationError

from order import callbacks
from order.callbacks import CallbackPolicy, CallbackRefused, is_public
from order.webhooks import retry_delay, signed_headers

POLICY = CallbackPolicy.from_setting("hooks.example.com, *.partner.test http://127.0.0.1")


def _resolving(addresses: list[str]) -> Callable[[str, int], Awaitable[list[str]]]:
    async def resolve(host: str, port: int) -> list[str]:
        return addresses

    return resolve


def target(url: str, addresses: list[str], monkeypatch: pytest.MonkeyPatch) -> callbacks.Target:
    monkeypatch.setattr(callbacks, "_resolve", _resolving(addresses))
    return asyncio.run(POLICY.target(url))


@pytest.mark.parametrize(("url", "why"), [
    ("https://evil.example.org/x", "not on the webhook allow-list"),
    ("http://hooks.example.com/x", "must use https"),
    ("ftp://hooks.example.com/x", "absolute http"),
    ("https://u:p@hooks.example.com/x", "user info"),
    ("hooks.example.com/x", "absolute http"),
    ("https://hooks.example.com:99999/x", "not a valid URL"),
    ("https://example.com.evil.org/", "not on the webhook allow-list"),
    ("https://" + "a" * 3000, "at most"),
])
def test_urls_are_checked_before_any_lookup(url, why):
    with pytest.raises(CallbackRefused, match=why):
        POLICY.entry_for(url)


def test_an_empty_allow_list_refuses_every_webhook():
    with pytest.raises(CallbackRefused, match="not enabled"):
        CallbackPolicy.from_setting("").entry_for("https://hooks.example.com/")


def test_a_wildcard_host_must_resolve_to_public_addresses(monkeypatch):
    assert target("https://a.partner.test/h", ["93.184.215.14"], monkeypatch).address \
        == "93.184.215.14"
    for inside in ("10.1.2.3", "127.0.0.1", "169.254.169.254", "::1", "::ffff:10.0.0.1",
                   "fd00::1", "100.64.0.1"):
        with pytest.raises(CallbackRefused, match="non-public"):
            target("https://a.partner.test/h", ["93.184.215.14", inside], monkeypatch)


def test_a_wildcard_covers_its_bare_domain_only_with_public_addresses(monkeypatch):
    # "*.partner.test" admits partner.test itself, but as a wildcard: its DNS is checked too.
    with pytest.raises(CallbackRefused, match="non-public"):
        target("https://partner.test/h", ["127.0.0.1"], monkeypatch)
    assert target("https://partner.test/h", ["93.184.215.14"], monkeypatch).host == "partner.test"
    # Named exactly as well (in either order): the operator's own word, internal or not.
    for setting in ("*.partner.test partner.test", "partner.test *.partner.test"):
        both = CallbackPolicy.from_setting(setting)
        monkeypatch.setattr(callbacks, "_resolve", _resolving(["10.0.0.7"]))
        assert asyncio.run(both.target("https://partner.test/h")).address == "10.0.0.7"


def test_a_host_named_exactly_may_be_internal_and_plain_http(monkeypatch):
    checked = target("http://127.0.0.1:9000/hook?x=1", ["127.0.0.1"], monkeypatch)
    assert checked.connect_url == "http://127.0.0.1:9000/hook?x=1"
    assert checked.host_header == "127.0.0.1:9000"


def test_the_delivery_connects_to_the_checked_address_with_the_original_host(monkeypatch):
    checked = target("https://hooks.example.com/h", ["2606:2800::1"], monkeypatch)
    assert checked.connect_url == "https://[2606:2800::1]:443/h"
    assert checked.host_header == "hooks.example.com"


def test_public_addresses():
    assert is_public("8.8.8.8") and is_public("2001:4860:4860::8888")
    assert not any(is_public(a) for a in ("192.168.1.1", "0.0.0.0", "224.0.0.1", "fe80::1"))


@pytest.mark.parametrize("carrier", [
    "64:ff9b::a00:1",  # NAT64 of 10.0.0.1 (Python alone calls it global)
    "64:ff9b::a9fe:a9fe",  # NAT64 of 169.254.169.254, the cloud metadata address
    "2002:a00:1::1",  # 6to4 of 10.0.0.1
    "2001:0:4136:e378:8000:63bf:f5ff:fffe",  # Teredo of a client at 10.0.0.1
])
def test_an_ipv6_address_carrying_an_internal_ipv4_is_not_public(carrier):
    assert not is_public(carrier)


def test_nat64_of_a_public_address_stays_public():
    assert is_public("64:ff9b::808:808")  # 8.8.8.8


def test_a_refusal_names_no_internal_address(monkeypatch):
    with pytest.raises(CallbackRefused) as refused:
        target("https://a.partner.test/h", ["10.9.8.7"], monkeypatch)
    assert "10.9.8.7" not in str(refused.value)


def test_an_entry_with_a_port_admits_that_port_only():
    pinned = CallbackPolicy.from_setting("hooks.example.com:8443 http://[::1]:9000 *.p.test:443")
    assert pinned.entry_for("https://hooks.example.com:8443/x")[1].port == 8443
    assert pinned.entry_for("http://[::1]:9000/x")[1].host == "::1"
    assert pinned.entry_for("https://a.p.test/x")[1].wildcard  # 443 by default
    for url in ("https://hooks.example.com/x", "https://hooks.example.com:22/x",
                "http://[::1]:5432/x", "https://a.p.test:8443/x"):
        with pytest.raises(CallbackRefused, match="not on the webhook allow-list"):
            pinned.entry_for(url)
    assert CallbackPolicy.from_setting("::1").entry_for("https://[::1]:1/x")[1].port is None


def test_retries_back_off_exponentially_with_bounded_jitter():
    low = [retry_delay(n, 2.0, 60.0, 0.0) for n in range(1, 8)]
    high = [retry_delay(n, 2.0, 60.0, 0.999999) for n in range(1, 8)]
    assert low == [1.0, 2.0, 4.0, 8.0, 16.0, 30.0, 30.0]
    assert [round(h) for h in high] == [2, 4, 8, 16, 32, 60, 60]


def test_signatures_verify_with_the_standard_webhooks_library():
    key = "whsec_" + "MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
    body = b'{"type":"order.status_changed"}'
    headers = signed_headers([key], uuid4(), body, datetime.now(UTC))
    assert headers["webhook-signature"].startswith("v1,")
    assert " " not in headers["webhook-signature"]
    assert Webhook(key).verify(body, headers) == {"type": "order.status_changed"}


def test_during_a_rotation_a_delivery_verifies_with_either_secret():
    new, old, other = (f"whsec_{c * 32}" for c in "ABC")
    body = b'{"type":"order.status_changed"}'
    headers = signed_headers([new, old], uuid4(), body, datetime.now(UTC))
    assert len(headers["webhook-signature"].split(" ")) == 2
    for key in (new, old):
        assert Webhook(key).verify(body, headers) == {"type": "order.status_changed"}
    with pytest.raises(WebhookVerificationError):
        Webhook(other).verify(body, headers)
