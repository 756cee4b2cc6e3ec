"""The SSRF guard: which addresses taskyard's own outgoing requests may reach.

Whoever can register a server chooses URLs that taskyard then calls, from inside the network
it runs in. So a URL whose host is, or resolves to, a loopback, private, link-local, CGNAT,
multicast, cloud-metadata or otherwise non-public address is refused, unless the operator
allowed that network (`TASKYARD_ALLOWED_BACKEND_NETWORKS`; development adds loopback).

It is checked twice. At registration (`check_url`), so that the admin gets a 400 naming the
rule and no request goes out at all. And at every connection (`socket_factory`, handed to
aiohttp's connector), on the very address the socket is about to connect to: a name that
resolved to a public address at registration may resolve to 169.254.169.254 an hour later
(DNS rebinding). Redirects are never followed (`backends.py`), so a public server cannot
bounce a request inward either.

Addresses are read the way the system's resolver reads them, odd spellings included
(`2130706433`, `0x7f.1`, `017700000001` are all 127.0.0.1), and an IPv6 address that carries
an IPv4 one (mapped `::ffff:127.0.0.1`, NAT64, 6to4, Teredo) is judged by both.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import socket
from collections.abc import Awaitable, Callable, Iterable, Sequence
from ipaddress import (
    IPv4Address,
    IPv4Network,
    IPv6Address,
    IPv6Network,
    ip_address,
    ip_network,
)
from typing import Any
from urllib.parse import urlsplit

log = logging.getLogger(__name__)

Address = IPv4Address | IPv6Address
Network = IPv4Network | IPv6Network
# A name → the addresses it resolves to (port for the resolver's sake). Tests hand in a stub.
Resolve = Callable[[str, int], Awaitable[list[Address]]]

SETTING = "TASKYARD_ALLOWED_BACKEND_NETWORKS"  # named in every refusal, so the fix is obvious
RESOLVE_TIMEOUT_S = 2.0  # a registration does not wait longer on DNS than this

LOOPBACK: tuple[Network, ...] = (ip_network("127.0.0.0/8"), ip_network("::1/128"))

# The first rule that matches names the refusal. Cloud metadata comes first: it is inside
# link-local (or CGNAT, for Alibaba), and "metadata" is the more useful word.
_RULES: tuple[tuple[str, tuple[Network, ...]], ...] = (
    (
        "cloud metadata",
        tuple(
            ip_network(n)
            for n in (
                "169.254.169.254/32",  # AWS, GCP, Azure, OpenStack, DigitalOcean, Oracle
                "169.254.170.2/32",  # AWS ECS task metadata
                "100.100.100.200/32",  # Alibaba Cloud
                "168.63.129.16/32",  # Azure wire server
                "fd00:ec2::254/128",  # AWS over IPv6
            )
        ),
    ),
    ("loopback", LOOPBACK),
    ("unspecified", (ip_network("0.0.0.0/8"), ip_network("::/128"))),
    (
        "private",
        tuple(ip_network(n) for n in ("10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "fc00::/7")),
    ),
    ("link-local", (ip_network("169.254.0.0/16"), ip_network("fe80::/10"))),
    ("CGNAT shared address space", (ip_network("100.64.0.0/10"),)),
    ("multicast", (ip_network("224.0.0.0/4"), ip_network("ff00::/8"))),
)
NOT_PUBLIC = "reserved, not a public address"  # documentation, benchmarking, 240/4, …
_NAT64 = ip_network("64:ff9b::/96")
_IPV4_COMPATIBLE = ip_network("::/96")  # deprecated ::a.b.c.d


class RefusedAddress(OSError):
    """The guard refuses to connect to this address (an OSError, so that aiohttp reports it
    as the connection's failure, like any other)."""

    def __init__(self, message: str) -> None:
        super().__init__(errno.EACCES, message)
        self.message = message

    def __str__(self) -> str:
        return self.message


def parse_networks(value: str) -> tuple[Network, ...]:
    """`TASKYARD_ALLOWED_BACKEND_NETWORKS`: comma-separated CIDRs (`10.1.0.0/16,fd12::/48`) or
    single addresses; raises ValueError naming the one it cannot read."""
    networks = []
    for part in (p.strip() for p in value.split(",")):
        if not part:
            continue
        try:
            networks.append(ip_network(part, strict=False))
        except ValueError:
            raise ValueError(f"{SETTING}: not a CIDR network or address: {part!r}") from None
    return tuple(networks)


def literal_address(host: str) -> Address | None:
    """The address `host` spells, as the system's resolver reads it, or None for a name."""
    bare = host[1:-1] if host.startswith("[") and host.endswith("]") else host
    try:
        return ip_address(bare.split("%", 1)[0])  # an IPv6 zone (`%eth0`) does not matter
    except ValueError:
        pass
    # The legacy forms `inet_aton` (and so getaddrinfo) accepts: 2130706433, 0x7f.1, 0177.1.
    # Anything with a letter beyond hex digits is a name; inet_aton would stop at a space.
    if bare and all(c in "0123456789abcdefABCDEFxX." for c in bare):
        try:
            return IPv4Address(socket.inet_aton(bare))
        except OSError:
            return None
    return None


def _carried(address: Address) -> list[Address]:
    """`address`, and the IPv4 address an IPv6 one carries, if any."""
    found: list[Address] = [address]
    if isinstance(address, IPv6Address):
        inner = address.ipv4_mapped or address.sixtofour
        if inner is None and address.teredo is not None:
            inner = address.teredo[1]
        if inner is None and (address in _NAT64 or address in _IPV4_COMPATIBLE):
            inner = IPv4Address(int(address) & 0xFFFFFFFF)
        if inner is not None:
            found.append(inner)
    return found


class NetworkGuard:
    """The rules above, less the networks the operator allowed."""

    def __init__(self, allowed: Iterable[Network] = (), *, resolve: Resolve | None = None) -> None:
        self.allowed = tuple(allowed)
        self._resolve = resolve or system_resolve

    @classmethod
    def for_settings(
        cls, env: str, allowed: str, *, resolve: Resolve | None = None
    ) -> NetworkGuard:
        networks = parse_networks(allowed)
        if env == "development":
            networks = LOOPBACK + networks  # local mock backends just work in development
        return cls(networks, resolve=resolve)

    def refusal(self, address: Address) -> str | None:
        """Why `address` may not be reached (the rule, and the setting that lifts it), or None."""
        addresses = _carried(address)
        if any(a in net for a in addresses for net in self.allowed if a.version == net.version):
            return None
        # The named rules first, on the address and on what it carries; then "not public",
        # judged on the carried IPv4 address when there is one (::ffff:a.b.c.d is not a public
        # address itself, whatever it carries).
        judged = [(a, _named_rule(a)) for a in addresses]
        judged.append((addresses[-1], None if addresses[-1].is_global else NOT_PUBLIC))
        for candidate, rule in judged:
            if rule is not None:
                shown = str(address) if candidate == address else f"{address} (= {candidate})"
                return f"{shown} is {rule}; allow it with {SETTING}"
        return None

    async def check_url(self, url: str) -> None:
        """Raise RefusedAddress when `url`'s host is, or resolves to, a refused address.

        A name that does not resolve now is let through: it may be registered before its DNS
        record exists, and the connection-time check guards it whenever it does resolve."""
        parts = urlsplit(url)
        if parts.scheme.lower() not in ("http", "https"):
            raise RefusedAddress(f"{url!r}: only http and https URLs are called")
        host = parts.hostname or ""
        literal = literal_address(host)
        if literal is not None:
            addresses = [literal]
        else:
            port = parts.port or (443 if parts.scheme.lower() == "https" else 80)
            try:
                addresses = await asyncio.wait_for(self._resolve(host, port), RESOLVE_TIMEOUT_S)
            except (OSError, TimeoutError) as exc:
                log.info("%s does not resolve now (%s); checked again at connection", host, exc)
                return
        for address in addresses:
            reason = self.refusal(address)
            if reason is not None:
                spelled_as_is = literal is not None and host.strip("[]") == str(literal)
                raise RefusedAddress(reason if spelled_as_is else f"{host} → {reason}")

    def socket_factory(self, addr_info: tuple[Any, ...]) -> socket.socket:
        """aiohttp's `socket_factory`: a socket for the address about to be connected to, or
        RefusedAddress. Runs for every connection, after DNS, so rebinding cannot pass."""
        family, type_, proto, _canonname, sockaddr = addr_info
        reason = self.refusal(ip_address(sockaddr[0]))
        if reason is not None:
            raise RefusedAddress(f"taskyard's network guard refuses to connect: {reason}")
        return socket.socket(family=family, type=type_, proto=proto)


def _named_rule(address: Address) -> str | None:
    for rule, networks in _RULES:
        if any(address in net for net in networks if net.version == address.version):
            return rule
    return None


async def system_resolve(host: str, port: int) -> list[Address]:
    """The system resolver (getaddrinfo, as aiohttp's connections use it)."""
    infos: Sequence[tuple[Any, ...]] = await asyncio.get_running_loop().getaddrinfo(
        host, port, type=socket.SOCK_STREAM
    )
    return [ip_address(info[4][0]) for info in infos]
