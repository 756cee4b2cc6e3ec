"""Sharing health checks between nodes: rendezvous ownership and the membership view."""

from __future__ import annotations

from collections import Counter

from taskyard.domain.cluster import Membership, owner

SERVERS = [f"gpu-{i}" for i in range(300)]


def test_every_node_computes_the_same_owner_whatever_the_order() -> None:
    nodes = ["n1", "n2", "n3"]
    for server in SERVERS[:50]:
        assert owner(server, nodes) == owner(server, reversed(nodes)) in nodes


def test_servers_spread_over_nodes() -> None:
    counts = Counter(owner(server, ["n1", "n2", "n3"]) for server in SERVERS)
    assert set(counts) == {"n1", "n2", "n3"}
    assert min(counts.values()) > len(SERVERS) / 3 * 0.7, counts


def test_only_the_departed_nodes_servers_move() -> None:
    before = {server: owner(server, ["n1", "n2", "n3"]) for server in SERVERS}
    after = {server: owner(server, ["n1", "n2"]) for server in SERVERS}
    moved = {server for server in SERVERS if before[server] != after[server]}
    assert moved == {server for server in SERVERS if before[server] == "n3"}


def test_a_node_alone_owns_everything() -> None:
    alone = Membership("n1")
    assert all(alone.owns(server) for server in SERVERS)


def test_membership_update_reports_changes_and_always_counts_itself() -> None:
    view = Membership("n2")
    assert view.update(["n1", "n3"]) is True
    assert view.nodes == ("n1", "n2", "n3")
    assert view.update(["n3", "n1", "n2"]) is False
    mine = [server for server in SERVERS if view.owns(server)]
    assert mine == [server for server in SERVERS if owner(server, ["n1", "n2", "n3"]) == "n2"]
    assert view.update(["n2"]) is True
    assert all(view.owns(server) for server in SERVERS)
