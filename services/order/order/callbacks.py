"""Which callback URLs the order service may POST to: the guard against server-side request
forgery (SSRF) of webhooks (order.webhooks).

A webhook makes the service send a request wherever a customer says, from inside the network:
without a guard, ``callback_url=http://10.0.0.5:5432/`` or ``http://169.254.169.254/`` would
turn it into a probe of the internal network. So:

- only hosts on the operator's allow-list ``WEBHOOK_ALLOWED_HOSTS`` (empty by default: no
  webhooks at all), each an exact host (``hooks.example.com``, ``127.0.0.1``) or a domain and
  its subdomains (``*.example.com``);
- ``https`` only, unless the entry says ``http://`` (development: a receiver on loopback);
- no user info in the URL, no redirects followed (order.webhooks);
- after DNS resolution, every address must be public (not private, loopback, link-local,
  reserved or multicast) unless the host is named exactly on the list: a wildcard entry never
  lets a name point into the internal network (a DNS record is the customer's to change);
- checked when the order is placed (422 naming ``callback_url``) and again before each
  delivery, which connects to the very address it checked (no second lookup to rebind).
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
from dataclasses import dataclass
from urllib.parse import SplitResult, urlsplit

# How long resolving a callback host may take, at creation and before each delivery.
RESOLVE_TIMEOUT_SECONDS = 2.0
MAX_URL_LENGTH = 2048


class CallbackRefused(Exception):
    """The URL may not be called; the message says why (it is shown to the customer)."""


@dataclass(frozen=True)
class AllowedHost:
    host: str  # lower case, no port
    wildcard: bool = False  # "*.example.com": example.com and every subdomain
    http: bool = False  # "http://host": plain http allowed (development only)

    def matches(self, host: str) -> bool:
        return host == self.host or (self.wildcard and host.endswith("." + self.host))


@dataclass(frozen=True)
class Target:
    """A checked callback: where to connect (a checked address) and what to ask for."""

    url: SplitResult
    host: str
    port: int
    address: str  # the resolved address the delivery connects to

    @property
    def connect_url(self) -> str:
        """The URL with the host replaced by the checked address (the Host header and TLS name
        stay the original host: see order.webhooks)."""
        ip = ipaddress.ip_address(self.address)
        netloc = f"[{ip}]" if ip.version == 6 else str(ip)
        return self.url._replace(netloc=f"{netloc}:{self.port}").geturl()

    @property
    def host_header(self) -> str:
        default = 443 if self.url.scheme == "https" else 80
        return self.host if self.port == default else f"{self.host}:{self.port}"


def parse_allow_list(text: str) -> tuple[AllowedHost, ...]:
    """``WEBHOOK_ALLOWED_HOSTS``: entries separated by commas or spaces."""
    entries = []
    for raw in text.replace(",", " ").split():
        http = raw.lower().startswith("http://")
        host = raw[len("http://"):] if http else raw
        wildcard = host.startswith("*.")
        entries.append(AllowedHost(host.removeprefix("*.").strip("/").lower(), wildcard, http))
    return tuple(entries)


@dataclass(frozen=True)
class CallbackPolicy:
    allowed: tuple[AllowedHost, ...]

    @classmethod
    def from_setting(cls, text: str) -> CallbackPolicy:
        return cls(parse_allow_list(text))

    def entry_for(self, url: str) -> tuple[SplitResult, AllowedHost]:
        """The URL's parts and the allow-list entry that admits it, or CallbackRefused."""
        if len(url) > MAX_URL_LENGTH:
            raise CallbackRefused(f"must be at most {MAX_URL_LENGTH} characters")
        if not self.allowed:
            raise CallbackRefused("webhooks are not enabled here (WEBHOOK_ALLOWED_HOSTS is "
                                  "empty)")
        try:
            parts = urlsplit(url)
            port = parts.port
        except ValueError as exc:
            raise CallbackRefused(f"is not a valid URL: {exc}") from None
        host = (parts.hostname or "").lower()
        if parts.scheme not in ("http", "https") or not host:
            raise CallbackRefused("must be an absolute http(s) URL")
        if parts.username is not None or parts.password is not None:
            raise CallbackRefused("must not carry user info")
        if port == 0:
            raise CallbackRefused("must not name port 0")
        entry = next((e for e in self.allowed if e.matches(host)), None)
        if entry is None:
            raise CallbackRefused(f"host '{host}' is not on the webhook allow-list")
        if parts.scheme == "http" and not entry.http:
            raise CallbackRefused(f"must use https (host '{host}' is not allowed plain http)")
        return parts, entry

    async def target(self, url: str) -> Target:
        """Check ``url`` completely, DNS included: the address to deliver to."""
        parts, entry = self.entry_for(url)
        host = (parts.hostname or "").lower()
        port = parts.port or (443 if parts.scheme == "https" else 80)
        addresses = await _resolve(host, port)
        if not addresses:
            raise CallbackRefused(f"host '{host}' does not resolve")
        exact = host == entry.host  # named on the list itself, not only by a wildcard
        for address in addresses:
            if not exact and not is_public(address):
                raise CallbackRefused(f"host '{host}' resolves to a non-public address "
                                      f"({address})")
        return Target(parts, host, port, addresses[0])


def is_public(address: str) -> bool:
    """Is ``address`` on the public internet (not private, loopback, link-local, ...)?"""
    ip = ipaddress.ip_address(address)
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return ip.is_global and not ip.is_multicast


async def _resolve(host: str, port: int) -> list[str]:
    try:
        async with asyncio.timeout(RESOLVE_TIMEOUT_SECONDS):
            infos = await asyncio.get_running_loop().getaddrinfo(
                host, port, type=socket.SOCK_STREAM)
    except (OSError, TimeoutError) as exc:
        raise CallbackRefused(f"host '{host}' does not resolve: {exc}") from None
    return list(dict.fromkeys(str(info[4][0]) for info in infos))
