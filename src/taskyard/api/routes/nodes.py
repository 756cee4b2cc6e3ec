"""The coordinator nodes sharing the database (admin only): who is alive, who holds what."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter

from taskyard.api import present
from taskyard.api.deps import AdminDep, CoordinatorDep
from taskyard.api.errors import documented
from taskyard.api.schemas import NodesOut

router = APIRouter(prefix="/api/nodes", tags=["nodes"])


@router.get("", response_model=NodesOut, responses=documented(e403="Not an admin"))
async def list_nodes(coordinator: CoordinatorDep, _admin: AdminDep) -> dict[str, Any]:
    """Every coordinator node recorded in the database, oldest first."""
    nodes = await coordinator.reads.list_nodes()
    return {"nodes": [present.node_out(node, alive=alive) for node, alive in nodes]}
