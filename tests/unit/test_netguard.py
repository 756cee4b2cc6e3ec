"""The SSRF guard's rules (issue 10, item 2), in-process: which addresses a registration may
name and a connection may reach, however they are spelled. Names resolve through a stub, so
no query leaves the process; nothing here opens a connection."""

from __future__ import annotations

import socket
from ipaddress import IPv4Address, IPv6Address, ip_address

import pytest

from taskyard.config import Settings
from taskyard.netguard import (
    SETTING,
    Address,
    NetworkGuard,
    RefusedAddress,
    literal_address,
    parse_networks,
)

NAMES: dict[str, list[str]] = {
    "api.example.com": ["93.184.215.14", "2606:2800:21f:cb07:6820:80da:af6b:8b2c"],
    "metadata.google.internal": ["169.254.169.254"],
    "intranet.corp": ["10.20.30.40"],
    "split.example.com": ["93.184.215.14", "192.168.1.10"],  # one public, one private
}


async def stub_resolve(host: str, _port: int) -> list[Address]:
    if host not in NAMES:
        raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")
    return [ip_address(a) for a in NAMES[host]]


def production(allowed: str = "") -> NetworkGuard:
    return NetworkGuard.for_settings("production", allowed, resolve=stub_resolve)


@pytest.mark.parametrize(
    ("url", "rule"),
    [
        ("http://127.0.0.1:8000/predict", "loopback"),
        ("http://2130706433/", "loopback"),  # 127.0.0.1 as one decimal number
        ("http://0x7f.1/", "loopback"),  # hex, two parts
        ("http://017700000001/", "loopback"),  # octal
        ("http://0177.0.0.1/", "loopback"),
        ("http://127.1/", "loopback"),
        ("http://[::1]/", "loopback"),
        ("http://[::ffff:127.0.0.1]/", "loopback"),  # IPv4-mapped
        ("http://[::ffff:7f00:1]/", "loopback"),  # the same, in hex
        ("http://[::127.0.0.1]/", "loopback"),  # IPv4-compatible (deprecated)
        ("http://[64:ff9b::7f00:1]/", "loopback"),  # NAT64
        ("http://[2002:7f00:1::]/", "loopback"),  # 6to4
        ("http://0.0.0.0/", "unspecified"),
        ("http://0/", "unspecified"),
        ("http://[::]/", "unspecified"),
        ("http://10.1.2.3/", "private"),
        ("http://172.16.0.1/", "private"),
        ("http://192.168.1.1/", "private"),
        ("http://[fd12:3456::1]/", "private"),
        ("http://[::ffff:10.0.0.1]/", "private"),
        ("http://169.254.169.254/latest/meta-data/", "cloud metadata"),
        ("http://0xa9fea9fe/", "cloud metadata"),  # 169.254.169.254 in hex
        ("http://[fd00:ec2::254]/", "cloud metadata"),
        ("http://100.100.100.200/", "cloud metadata"),
        ("http://169.254.1.1/", "link-local"),
        ("http://[fe80::1]/", "link-local"),
        ("http://100.64.0.1/", "CGNAT"),
        ("http://224.0.0.1/", "multicast"),
        ("http://[ff02::1]/", "multicast"),
        ("http://255.255.255.255/", "reserved"),
        ("http://192.0.2.1/", "reserved"),  # documentation
        ("http://240.0.0.1/", "reserved"),
        ("http://metadata.google.internal/computeMetadata/v1/", "cloud metadata"),
        ("https://intranet.corp/predict", "private"),
        ("http://split.example.com/", "private"),  # any refused address refuses the name
    ],
)
async def test_production_refuses_inward_urls_naming_the_rule(url: str, rule: str) -> None:
    with pytest.raises(RefusedAddress) as refused:
        await production().check_url(url)
    assert rule in str(refused.value)
    assert SETTING in str(refused.value)  # and how to allow it


@pytest.mark.parametrize(
    "url",
    [
        "https://93.184.215.14/predict",
        "http://[2606:2800:21f:cb07:6820:80da:af6b:8b2c]:8080/",
        "https://api.example.com/v1/predict",
        "http://gone.example.com/",  # does not resolve now: checked again at connection
    ],
)
async def test_public_addresses_and_names_pass(url: str) -> None:
    await production().check_url(url)


async def test_names_resolve_through_the_system_resolver() -> None:
    """`localhost` comes from /etc/hosts (no DNS query): the default resolver is used."""
    with pytest.raises(RefusedAddress, match="loopback"):
        await NetworkGuard.for_settings("production", "").check_url("http://localhost:1/")


async def test_allowed_networks_lift_the_rules_for_exactly_those_addresses() -> None:
    guard = production("10.20.0.0/16, 127.0.0.1")
    await guard.check_url("http://intranet.corp/")  # 10.20.30.40
    await guard.check_url("http://10.20.0.1/")
    await guard.check_url("http://2130706433/")  # 127.0.0.1, spelled oddly
    await guard.check_url("http://[::ffff:127.0.0.1]/")  # judged by the address it carries
    with pytest.raises(RefusedAddress, match="private"):
        await guard.check_url("http://10.21.0.1/")
    with pytest.raises(RefusedAddress, match="loopback"):
        await guard.check_url("http://127.0.0.2/")


async def test_development_allows_loopback_and_nothing_more() -> None:
    guard = NetworkGuard.for_settings("development", "", resolve=stub_resolve)
    await guard.check_url("http://127.0.0.1:8000/predict")
    await guard.check_url("http://[::1]:8000/predict")
    for url in ("http://10.0.0.1/", "http://169.254.169.254/", "http://metadata.google.internal/"):
        with pytest.raises(RefusedAddress):
            await guard.check_url(url)


async def test_only_http_and_https_are_called() -> None:
    with pytest.raises(RefusedAddress, match="only http and https"):
        await production().check_url("file:///etc/passwd")


def test_connection_time_check_refuses_before_a_socket_exists() -> None:
    guard = production("127.0.0.2/32")
    refused = (socket.AF_INET, socket.SOCK_STREAM, 6, "", ("127.0.0.1", 80))
    with pytest.raises(RefusedAddress) as loopback:
        guard.socket_factory(refused)
    assert "network guard refuses to connect: 127.0.0.1 is loopback" in str(loopback.value)
    mapped = (socket.AF_INET6, socket.SOCK_STREAM, 6, "", ("::ffff:169.254.169.254", 80, 0, 0))
    with pytest.raises(RefusedAddress, match="cloud metadata"):
        guard.socket_factory(mapped)
    allowed = guard.socket_factory((socket.AF_INET, socket.SOCK_STREAM, 6, "", ("127.0.0.2", 80)))
    try:
        assert allowed.family == socket.AF_INET
    finally:
        allowed.close()


@pytest.mark.parametrize(
    ("host", "expected"),
    [
        ("2130706433", IPv4Address("127.0.0.1")),
        ("0x7f.1", IPv4Address("127.0.0.1")),
        ("[::ffff:127.0.0.1]", IPv6Address("::ffff:127.0.0.1")),
        ("example.com", None),
        ("deadbeef", None),  # hex digits without 0x: a name
        ("1e100.net", None),
    ],
)
def test_literal_addresses_are_read_as_the_resolver_reads_them(
    host: str, expected: Address | None
) -> None:
    assert literal_address(host) == expected


def test_allowed_networks_setting_is_checked_at_start() -> None:
    assert [str(n) for n in parse_networks("10.0.0.0/8,fd00::/8, 192.168.1.7")] == [
        "10.0.0.0/8",
        "fd00::/8",
        "192.168.1.7/32",
    ]
    with pytest.raises(ValueError, match="not a CIDR"):
        Settings(allowed_backend_networks="10.0.0.0/8,intranet")
