"""Sharing work between coordinator nodes: who is alive, and which node owns which server.

Every node records itself in the `nodes` table (the chores loop renews it); a node unseen for
`node_timeout_s` is dead. Health checks are partitioned over the live nodes by rendezvous
hashing: each server goes to the node with the highest hash of (node, server). Every node
computes the same owner from the same list, and when a node joins or leaves only the servers it
gains or loses move. While views differ (for at most one chores interval), a server may be
checked by two nodes or by none for a moment; that costs one extra or one late check, never a
wrong state, since every write is a plain update of the server's health fields.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable


def _score(node_id: str, server_id: str) -> int:
    # A stable hash (Python's own hash() differs from process to process).
    digest = hashlib.blake2b(f"{node_id}\0{server_id}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big")


def owner(server_id: str, node_ids: Iterable[str]) -> str:
    """The node that health-checks `server_id` (rendezvous hashing, ties by node id)."""
    return max(node_ids, key=lambda node: (_score(node, server_id), node))


class Membership:
    """This node's view of the live nodes."""

    def __init__(self, node_id: str) -> None:
        self.node_id = node_id
        self.nodes: tuple[str, ...] = (node_id,)

    def update(self, live: Iterable[str]) -> bool:
        """Adopt a fresh list of live nodes (this one always counts); return whether it changed."""
        nodes = tuple(sorted({*live, self.node_id}))
        changed = nodes != self.nodes
        self.nodes = nodes
        return changed

    def owns(self, server_id: str) -> bool:
        return len(self.nodes) == 1 or owner(server_id, self.nodes) == self.node_id
