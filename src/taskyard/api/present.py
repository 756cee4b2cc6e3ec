"""Domain objects → wire dictionaries (the seed's field names; times in epoch ms or ISO 8601)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from taskyard.domain.models import Node, Server, Task


def iso(ms: int | None) -> str | None:
    if ms is None:
        return None
    return datetime.fromtimestamp(ms / 1000, tz=UTC).isoformat(timespec="milliseconds")


def task_out(task: Task) -> dict[str, Any]:
    return {"taskId": task.id, "taskDetails": task_details(task)}


def task_details(task: Task) -> dict[str, Any]:
    return {
        "id": task.id,
        "status": task.status.value,
        "request": task.request,
        "serverId": task.server_id,
        "result": task.result,
        "createdAt": task.created_at,
        "updatedAt": task.updated_at,
        "callbackUrl": task.callback_url,
        "error": task.error,
        "errorCode": task.error_code,
        "attempts": [a.to_json() for a in task.attempts],
        "model": task.model,
        "priority": task.priority,
        "progress": task.progress,
        "owner": task.owner,
        "startedAt": task.started_at,
        "finishedAt": task.finished_at,
    }


def server_out(server: Server) -> dict[str, Any]:
    return {
        **server.extra,
        "id": server.id,
        "name": server.name,
        "provider": server.provider,
        "endpoints": {"predict": server.predict_url, "health": server.health_url},
        "async": server.is_async,
        "callback": server.callback,
        "max_concurrency": server.max_concurrency,
        "models": list(server.models),
        "weight": server.weight,
        "status": server.status.value,
        "lastHeartbeat": iso(server.last_heartbeat),
        "registeredAt": iso(server.registered_at),
        "inFlight": server.in_flight,
        "health": {
            "lastCheckAt": iso(server.last_check_at),
            "lastSuccessAt": iso(server.last_success_at),
            "consecutiveSuccesses": server.consecutive_successes,
            "consecutiveFailures": server.consecutive_failures,
            "dispatchFailures": server.dispatch_failures,
            "checkIntervalS": server.check_interval_s,
            "nextCheckAt": iso(server.next_check_at) if server.health_url else None,
            "offlineSince": iso(server.offline_since),
            "lastError": server.last_error,
        },
        "load": server.reported_load,
        "checkedBy": server.checked_by,
    }


def node_out(node: Node, *, alive: bool) -> dict[str, Any]:
    return {
        "id": node.id,
        "host": node.host,
        "startedAt": node.started_at,
        "lastSeen": node.last_seen_at,
        "alive": alive,
        "leases": list(node.leases),
    }
