"""The change notices between the workers of one machine on SQLite (`storage/peerbus.py`),
in-process with real Unix datagram sockets: what one worker publishes reaches every other
(merged per loop tick, many final ids in chunks), never itself, and a departed worker's
socket costs nothing."""

from __future__ import annotations

import asyncio
from pathlib import Path

from taskyard.domain.ports import ClusterHandlers
from taskyard.storage.peerbus import SocketBus


class Seen:
    def __init__(self) -> None:
        self.final: list[str] = []
        self.kinds: list[str] = []
        self.arrived = asyncio.Event()

    def handlers(self) -> ClusterHandlers:
        def kind(name: str) -> None:
            self.kinds.append(name)
            self.arrived.set()

        def final(ids: list[str]) -> None:
            self.final += ids
            self.arrived.set()

        return ClusterHandlers(
            tasks_final=final,
            work=lambda: kind("work"),
            servers=lambda: kind("servers"),
            nodes=lambda: kind("nodes"),
        )


async def settle(seen: Seen, predicate: object) -> None:
    async with asyncio.timeout(5):
        while not predicate():  # type: ignore[operator]
            seen.arrived.clear()
            await seen.arrived.wait()


async def test_a_notice_reaches_every_other_worker_and_not_the_sender(tmp_path: Path) -> None:
    seen = {name: Seen() for name in ("w0", "w1", "w2")}
    buses = {name: SocketBus(str(tmp_path), node_id=name) for name in seen}
    for name, bus in buses.items():
        await bus.start(seen[name].handlers())
    try:
        ids = [f"task-{i:05d}-{'x' * 30}" for i in range(600)]  # more than one datagram
        buses["w0"].tasks_final(ids)
        buses["w0"].work()
        buses["w0"].work()  # merged with the one before
        for name in ("w1", "w2"):
            await settle(seen[name], lambda n=name: len(seen[n].final) == len(ids))
            await settle(seen[name], lambda n=name: "work" in seen[n].kinds)
            assert sorted(seen[name].final) == ids
            assert seen[name].kinds == ["work"]
        buses["w1"].servers()
        await settle(seen["w2"], lambda: "servers" in seen["w2"].kinds)
        await settle(seen["w0"], lambda: "servers" in seen["w0"].kinds)
        assert seen["w0"].final == [] and "work" not in seen["w0"].kinds  # not its own
    finally:
        for bus in buses.values():
            await bus.close()
    assert list(tmp_path.iterdir()) == []  # each removed its socket


async def test_a_departed_workers_socket_is_harmless(tmp_path: Path) -> None:
    seen = Seen()
    alive = SocketBus(str(tmp_path), node_id="alive")
    gone = SocketBus(str(tmp_path), node_id="gone")
    talker = SocketBus(str(tmp_path), node_id="talker")
    await alive.start(seen.handlers())
    await gone.start(Seen().handlers())
    await talker.start(Seen().handlers())
    try:
        gone_path = tmp_path / "gone.sock"
        await gone.close()
        gone_path.touch()  # as if killed: a file left where a socket was, nobody reading it
        talker.nodes()
        await settle(seen, lambda: seen.kinds == ["nodes"])
    finally:
        await alive.close()
        await talker.close()
