"""Which callback URLs the order service may POST to: the guard against server-side request
forgery (SSRF) of webhooks (order.webhooks).

A webhook makes the service send a request wherever a customer says, from inside the network:
without a guard, ``callback_url=http://10.0.0.5:5432/`` or ``http://169.254.169.254/`` would
turn it into a probe of the internal network. So:

- only hosts on the operator's allow-list ``WEBHOOK_ALLOWED_HOSTS`` (empty by default: no
  webhooks at all), each an exact host (``hooks.example.com``, ``127.0.0.1``) or a domain and
  its subdomains (``*.example.com``), optionally with the one port it may be called on
  (``hooks.example.com:8443``; an entry without a port admits any);
- ``https`` only, unless the entry says ``http://`` (development: a receiver on loopback);
- no user info in the URL, no redirects followed (order.webhooks);
- after DNS resolution, every address must be public (not private, loopback, link-local,
  reserved or multicast, nor an IPv6 address that carries such an IPv4 one) unless the host is
  named exactly on the list: a wildcard entry never lets a name point into the internal
  network (a DNS record is the customer's to change); a refusal does not say which address
  or resolver error it met (the log does), so it maps no internal DNS for the customer;
- checked when the order is placed (422 naming ``callback_url``) and again before each
  delivery, which connects to the very address it checked (no second lookup to rebind).
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import socket
from dataclasses import dataclass
from urllib.parse import SplitResult, urlsplit

# How long resolving a callback host may take, at creation and before each delivery.
RESOLVE_TIMEOUT_SECONDS = 2.0
log = logging.getLogger("order.callbacks")
MAX_URL_LENGTH = 2048


class CallbackRefused(Exception):
    """The URL may not be called; the message says why (it is shown to the customer)."""


@dataclass(frozen=True)
class AllowedHost:
    host: str  # lower case, no port
    wildcard: bool = False  # "*.example.com": example.com and every subdomain
    http: bool = False  # "http://host": plain http allowed (development only)
    port: int | None = None  # "host:8443": that port only; none named: any port

    def matches(self, host: str, port: int) -> bool:
        return (host == self.host or (self.wildcard and host.endswith("." + self.host))) and (
            self.port is None or port == self.port)


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
        host = (raw[len("http://"):] if http else raw).strip("/").lower()
        wildcard = host.startswith("*.")
        host = host.removeprefix("*.")
        port = None
        name, colon, digits = host.rpartition(":")
        if colon and digits.isdigit() and not name.endswith(":"):  # "host:port", not "::1"
            host, port = name, int(digits)
        entries.append(AllowedHost(host.strip("[]"), wildcard, http, port))
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
        default_port = 443 if parts.scheme == "https" else 80
        entries = [e for e in self.allowed if e.matches(host, port or default_port)]
        # An entry naming the host itself wins over a wildcard that covers it too.
        entry = next((e for e in entries if not e.wildcard), entries[0] if entries else None)
        if entry is None:
            raise CallbackRefused(f"host '{host}' (port {port or default_port}) is not on the "
                                  "webhook allow-list")
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
        # Named on the list itself, not only by a wildcard ("*.example.com" covers the bare
        # example.com too, and its DNS is the customer's to point anywhere just the same).
        exact = not entry.wildcard
        for address in addresses:
            if not exact and not is_public(address):
                # Not which address: the answer would map the shop's internal DNS for anyone.
                log.info("callback host %s resolves to non-public %s", host, address)
                raise CallbackRefused(f"host '{host}' resolves to a non-public address")
        return Target(parts, host, port, addresses[0])


NAT64 = ipaddress.ip_network("64:ff9b::/96")  # RFC 6052's well-known prefix


def is_public(address: str) -> bool:
    """Is ``address`` on the public internet (not private, loopback, link-local, ...)?

    An IPv6 address that carries an IPv4 one (mapped, NAT64, 6to4, Teredo) is judged by the
    IPv4 address it reaches: Python calls ``64:ff9b::a00:1`` global, but on a NAT64 network
    it is 10.0.0.1.
    """
    ip: ipaddress.IPv4Address | ipaddress.IPv6Address = ipaddress.ip_address(address)
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped is not None:
            ip = ip.ipv4_mapped
        elif ip in NAT64:
            ip = ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
        elif ip.sixtofour is not None:
            ip = ip.sixtofour
        elif ip.teredo is not None:
            ip = ip.teredo[1]  # the client behind the Teredo relay
    return ip.is_global and not ip.is_multicast


async def _resolve(host: str, port: int) -> list[str]:
    try:
        async with asyncio.timeout(RESOLVE_TIMEOUT_SECONDS):
            infos = await asyncio.get_running_loop().getaddrinfo(
                host, port, type=socket.SOCK_STREAM)
    except (OSError, TimeoutError) as exc:
        log.info("callback host %s does not resolve: %r", host, exc)
        raise CallbackRefused(f"host '{host}' does not resolve") from None
    return list(dict.fromkeys(str(info[4][0]) for info in infos))
