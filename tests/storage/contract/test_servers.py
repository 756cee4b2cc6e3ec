"""Servers: registrations upserted and read with their in-flight counts, conditional updates
(on a registration, on expected values), atomic counters, removal."""

from __future__ import annotations

import asyncio
from dataclasses import replace

import pytest

from taskyard.domain.changes import ServerPatch, evolve_server
from taskyard.domain.models import ServerStatus
from taskyard.domain.ports import Store
from tests.storage.contract.support import covers, hold, start
from tests.unit.factories import make_server, make_task


@covers("put_server", "get_server", "list_servers", "update_server", "delete_servers")
async def test_servers_are_upserted_listed_by_id_updated_and_deleted(store: Store) -> None:
    assert await store.list_servers() == []
    registered = make_server("s2", models=("m", "x"), extra={"region": "eu"})
    await store.put_server(registered)
    await store.put_server(make_server("s1"))
    assert await store.get_server("s2") == registered
    assert [s.id for s in await store.list_servers()] == ["s1", "s2"]
    assert await store.get_server("missing") is None
    await store.put_server(replace(registered, weight=3.0, models=()))  # a new registration
    replaced = await store.get_server("s2")
    assert replaced is not None and (replaced.weight, replaced.models) == (3.0, ())

    patch = ServerPatch(
        status=ServerStatus.OFFLINE,
        offline_since=1_000,
        reported_load={"gpu": 0.5, "queue": [1, None]},
        last_error=None,
    )
    assert await store.update_server("s2", patch)
    assert not await store.update_server("missing", ServerPatch(dispatch_failures=1))
    assert await store.get_server("s2") == evolve_server(replaced, patch)

    assert sorted(await store.delete_servers(["s2", "missing", "s1"])) == ["s1", "s2"]
    assert await store.delete_servers(["s1"]) == []
    assert await store.delete_servers([]) == []
    assert await store.list_servers() == []


@covers("offline_servers")
async def test_offline_servers_are_those_offline_since_before_a_time(store: Store) -> None:
    await store.put_server(make_server("b", status=ServerStatus.OFFLINE, offline_since=1_000))
    await store.put_server(make_server("a", status=ServerStatus.OFFLINE, offline_since=500))
    await store.put_server(make_server("later", status=ServerStatus.OFFLINE, offline_since=5_000))
    await store.put_server(make_server("unknown", status=ServerStatus.OFFLINE, offline_since=None))
    await store.put_server(make_server("online", offline_since=100))  # not offline
    await start(store, make_task(id="t1"), server="a")
    offline = await store.offline_servers(since_before=1_001)
    assert [(s.id, s.in_flight) for s in offline] == [("a", 1), ("b", 0)]  # as list_servers
    assert [s.id for s in await store.offline_servers(since_before=1_000)] == ["a"]


@covers("get_servers")
async def test_get_servers_reads_those_that_exist_with_their_in_flight_counts(
    store: Store,
) -> None:
    await store.put_server(make_server("a", max_concurrency=3))
    await store.put_server(make_server("b"))
    await store.put_server(make_server("c"))
    await start(store, make_task(id="t1"), server="a")
    await hold(store, "t2", server="a")
    found = await store.get_servers(["b", "a", "missing", "a"])
    assert sorted((s.id, s.in_flight, s.held) for s in found) == [("a", 2, 1), ("b", 0, 0)]
    assert sorted(found, key=lambda s: s.id) == [
        await store.get_server("a"),
        await store.get_server("b"),
    ]
    assert await store.get_servers([]) == []


@covers("update_server", "get_server")
async def test_a_server_update_applies_only_to_its_registration_and_expected_values(
    store: Store,
) -> None:
    await store.put_server(make_server("s1", revision="r1"))
    ejected = ServerPatch(ejected=True, ejections=1)
    not_ejected = ServerPatch(ejected=False)
    assert not await store.update_server("s1", ejected, revision="r0")  # replaced since
    assert not await store.update_server("missing", ejected, revision="r1")
    assert await store.update_server("s1", ejected, revision="r1", expect=not_ejected)
    # One ejection only: a second writer expected it not ejected yet.
    assert not await store.update_server("s1", ServerPatch(ejections=2), expect=not_ejected)
    assert await store.update_server(
        "s1", ServerPatch(last_error="x"), expect=ServerPatch(ejected=True, maintenance=False)
    )
    # An expected None is a value like any other.
    assert await store.update_server(
        "s1", ServerPatch(checked_by="n1"), expect=ServerPatch(maintenance_reason=None)
    )
    assert not await store.update_server(
        "s1", ServerPatch(checked_by="n2"), expect=ServerPatch(last_error=None)
    )
    server = await store.get_server("s1")
    assert server is not None
    assert (server.ejected, server.ejections, server.last_error, server.checked_by) == (
        True,
        1,
        "x",
        "n1",
    )


@covers("update_server", "get_server")
async def test_a_server_update_that_changes_nothing_still_tells_whether_it_matched(
    store: Store,
) -> None:
    server = make_server("s1", revision="r1")
    await store.put_server(server)
    assert await store.update_server("s1", ServerPatch(), revision="r1")
    assert not await store.update_server("s1", ServerPatch(), revision="r0")
    assert not await store.update_server("missing", ServerPatch())
    assert await store.get_server("s1") == server


@covers("increment_server", "get_server")
async def test_server_counters_count_every_increment_on_the_registration(store: Store) -> None:
    await store.put_server(make_server("s1", revision="r1", dispatch_failures=2))
    assert await store.increment_server("s1", "dispatch_failures", revision="r1") == 3
    counted = await asyncio.gather(
        *(store.increment_server("s1", "dispatch_failures", revision="r1") for _ in range(5))
    )
    assert sorted(n or 0 for n in counted) == [4, 5, 6, 7, 8]  # none lost, none counted twice
    assert await store.increment_server("s1", "consecutive_rejections", revision="r1") == 1
    assert await store.increment_server("s1", "dispatch_failures", revision="r0") is None
    assert await store.increment_server("missing", "dispatch_failures", revision="r1") is None
    with pytest.raises(ValueError, match="not a counter"):
        await store.increment_server("s1", "weight", revision="r1")  # type: ignore[arg-type]
    server = await store.get_server("s1")
    assert server is not None
    assert (server.dispatch_failures, server.consecutive_rejections) == (8, 1)
