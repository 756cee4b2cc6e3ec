"""Slow and greedy clients against a real node, over real sockets (issue 10, item 6): request
heads sent a byte at a time are cut off after TASKYARD_HEAD_TIMEOUT_S, and past
TASKYARD_MAX_CONNECTIONS a new connection is closed at once, until slots free up."""

from __future__ import annotations

import select
import socket
import time
from collections.abc import Iterator

import httpx
import pytest

from tests.support import Taskyard, wait_for

HEAD_TIMEOUT_S = 2.0
MAX_CONNECTIONS = 50
SLOW_CLIENTS = 40
DRIBBLE_EVERY_S = 0.2  # one header byte per client this often: never idle, never done
REQUEST = b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"


@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Taskyard]:
    workdir = tmp_path_factory.mktemp("slow-clients")
    yard = Taskyard(
        database_url=f"sqlite:///{workdir / 'taskyard.db'}",
        workdir=workdir,
        env={
            "TASKYARD_HEAD_TIMEOUT_S": str(HEAD_TIMEOUT_S),
            "TASKYARD_MAX_CONNECTIONS": str(MAX_CONNECTIONS),
        },
    )
    yard.start()
    yield yard
    yard.stop()
    yard.admin.close()


def _connect(node: Taskyard) -> socket.socket:
    return socket.create_connection(("127.0.0.1", node.port), timeout=5)


def _read_until_closed(sock: socket.socket, timeout: float = 5.0) -> bytes:
    """Everything the server sends until it closes the connection (a reset counts as closed)."""
    sock.settimeout(timeout)
    received = b""
    try:
        while chunk := sock.recv(4096):
            received += chunk
    except ConnectionResetError:
        pass
    return received


def test_headers_sent_a_byte_at_a_time_are_cut_off_after_the_head_timeout(node: Taskyard) -> None:
    """Clients that keep dribbling header bytes get 408 and a closed connection once the head
    timeout has passed, not before (and not never, as before)."""
    head = REQUEST[:-2] + b"X-Slow: " + b"a" * 10_000  # never finished
    opened = time.monotonic()
    socks = [_connect(node) for _ in range(SLOW_CLIENTS)]
    received = dict.fromkeys(socks, b"")
    closed_after: dict[socket.socket, float] = {}
    deadline = opened + HEAD_TIMEOUT_S + 15  # bounds the wait; the close is the event we want
    sent = 0
    try:
        while len(closed_after) < len(socks) and time.monotonic() < deadline:
            open_socks = [sock for sock in socks if sock not in closed_after]
            for sock in open_socks:
                try:
                    sock.send(head[sent : sent + 1])
                except OSError:  # closed under us: the read below records it
                    pass
            sent += 1
            readable, _, _ = select.select(open_socks, [], [], DRIBBLE_EVERY_S)
            for sock in readable:
                try:
                    chunk = sock.recv(4096)
                except ConnectionResetError:
                    chunk = b""
                received[sock] += chunk
                if not chunk:
                    closed_after[sock] = time.monotonic() - opened
        assert len(closed_after) == len(socks), (
            f"{len(socks) - len(closed_after)} of {len(socks)} slow connections still open"
        )
        assert min(closed_after.values()) >= HEAD_TIMEOUT_S - 0.2  # the timeout, not at once
        assert all(data.startswith(b"HTTP/1.1 408 ") for data in received.values()), {
            data[:40] for data in received.values()
        }
        assert sent > HEAD_TIMEOUT_S / DRIBBLE_EVERY_S  # they were sending all along
    finally:
        for sock in socks:
            sock.close()
    assert httpx.get(node.url + "/", timeout=5).status_code == 200  # the node is fine


def test_connections_over_the_cap_are_closed_at_once_until_slots_free_up(node: Taskyard) -> None:
    """With MAX_CONNECTIONS kept-alive connections open, one more is closed without an answer;
    once they close, a normal request works again."""
    held = [_connect(node) for _ in range(MAX_CONNECTIONS)]
    try:
        for sock in held:  # a full answer: the node has accepted and counts this connection
            sock.sendall(REQUEST)
            assert sock.recv(4096).startswith(b"HTTP/1.1 200 ")
        extra = _connect(node)
        try:
            try:
                extra.sendall(REQUEST)
            except OSError:  # already closed: refused just as well
                pass
            assert _read_until_closed(extra) == b""  # closed, no answer
        finally:
            extra.close()
    finally:
        for sock in held:
            sock.close()
    ok = wait_for(
        lambda: _status_or_none(node.url + "/") == 200, timeout=10, what="a request to work again"
    )
    assert ok


def _status_or_none(url: str) -> int | None:
    try:
        return httpx.get(url, timeout=2).status_code
    except httpx.HTTPError:
        return None


def test_a_slow_head_on_a_kept_alive_connection_is_cut_off_too(node: Taskyard) -> None:
    """The timer is armed again for each request on a connection, not only its first."""
    sock = _connect(node)
    try:
        sock.sendall(REQUEST)
        assert sock.recv(4096).startswith(b"HTTP/1.1 200 ")
        sock.sendall(b"GET / HTTP/1.1\r\n")  # the next head begins, and never ends
        rest = _read_until_closed(sock, timeout=HEAD_TIMEOUT_S + 10)  # the 200's body, a 408
        assert b"HTTP/1.1 408 " in rest
    finally:
        sock.close()


def test_the_limits_are_settings() -> None:
    """Bad values are refused at startup with the setting's name (no node needed)."""
    from pydantic import ValidationError

    from taskyard.config import Settings

    with pytest.raises(ValidationError, match="head_timeout_s"):
        Settings(head_timeout_s=0)
    with pytest.raises(ValidationError, match="max_connections"):
        Settings(max_connections=0)
    assert Settings().head_timeout_s == 10.0
    assert Settings().max_connections == 1000
