"""Domain objects → wire dictionaries (the seed's field names; times in epoch ms or ISO 8601)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from taskyard.domain import stats
from taskyard.domain.models import Node, Server, ServerState, ServerStatus, Task
from taskyard.domain.waiting import Waiting


def iso(ms: int | None) -> str | None:
    if ms is None:
        return None
    return datetime.fromtimestamp(ms / 1000, tz=UTC).isoformat(timespec="milliseconds")


def task_out(
    task: Task, *, waiting: Waiting | None = None, warnings: list[str] | None = None
) -> dict[str, Any]:
    out: dict[str, Any] = {"taskId": task.id, "taskDetails": task_details(task, waiting)}
    if warnings is not None:
        out["warnings"] = warnings
    return out


def task_details(task: Task, waiting: Waiting | None = None) -> dict[str, Any]:
    details = task_summary(task)
    details["request"] = task.request
    details["result"] = task.result
    details["waiting"] = waiting_out(waiting) if waiting else None
    return details


def waiting_out(waiting: Waiting) -> dict[str, Any]:
    out: dict[str, Any] = {"reason": waiting.reason.value, "detail": waiting.detail}
    if waiting.retry_at is not None:
        out["retryAt"] = waiting.retry_at
    if waiting.position is not None:
        out["position"] = waiting.position
    return out


def task_summary(task: Task) -> dict[str, Any]:
    """A task without its request and result (a search result)."""
    return {
        "id": task.id,
        "status": task.status.value,
        "serverId": task.server_id,
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
        "endpoints": {
            "predict": server.predict_url,
            "health": server.health_url,
            "cancel": server.cancel_url,
        },
        "async": server.is_async,
        "callback": server.callback,
        "max_concurrency": server.max_concurrency,
        "models": list(server.models),
        "weight": server.weight,
        "status": server.status.value,
        "state": server.state.value,
        "maintenance": {
            "enabled": server.maintenance,
            "reason": server.maintenance_reason,
            "since": iso(server.maintenance_since),
        },
        "autoRemove": server.auto_remove,
        "lastHeartbeat": iso(server.last_heartbeat),
        "registeredAt": iso(server.registered_at),
        "inFlight": server.in_flight,
        "heldSlots": server.held,
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
            "ejected": server.ejected,
            "ejectedUntil": iso(server.ejected_until),
            "ejections": server.ejections,
            "ejectionReason": server.ejection_reason,
            "consecutiveRejections": server.consecutive_rejections,
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


# ---- statistics -------------------------------------------------------------------------


def percentiles_out(p: stats.Percentiles) -> dict[str, Any]:
    return {"p50": p.p50, "p95": p.p95, "count": p.count}


def stats_out(o: stats.Overview) -> dict[str, Any]:
    servers = [s.server for s in o.servers]
    online = [s for s in servers if s.status is ServerStatus.ONLINE]
    return {
        "generatedAt": o.generated_at,
        "tasks": {"byStatus": o.by_status},
        "queue": [
            {
                "model": m.model,
                "waiting": m.waiting,
                "due": m.due,
                "inFlight": m.in_flight,
                "capacity": m.capacity,
                "servers": m.servers,
                "serversOnline": m.servers_online,
            }
            for m in o.models
        ],
        "throughput": {
            **{
                name: {
                    "finished": t.finished,
                    "failed": t.failed,
                    "finishedPerMin": t.finished_per_min,
                    "failedPerMin": t.failed_per_min,
                }
                for name, t in o.throughput.items()
            },
            "perMinute": [
                {
                    "minute": m.minute,
                    "created": m.created,
                    "finished": m.finished,
                    "failed": m.failed,
                }
                for m in o.per_minute
            ],
        },
        "attempts": {"windowS": stats.ATTEMPTS_WINDOW_MIN * 60, "byOutcome": o.attempt_outcomes},
        "latency": {
            "windowS": stats.LATENCY_WINDOW_MIN * 60,
            "queueWaitMs": percentiles_out(o.queue_wait),
            "processingMs": percentiles_out(o.processing),
        },
        "servers": {
            "total": len(servers),
            "online": len(online),
            "offline": len(servers) - len(online),
            "busy": sum(1 for s in online if s.free_slots == 0),
            "byState": {
                state.value: sum(1 for s in servers if s.state is state) for state in ServerState
            },
        },
        "serverStats": [
            {
                "id": s.server.id,
                "status": s.server.status.value,
                "inFlight": s.server.in_flight,
                "maxConcurrency": s.server.max_concurrency,
                "attempts": s.attempts,
                "failures": s.failures,
                "p50LatencyMs": s.latency.p50,
            }
            for s in o.servers
        ],
        "modelsWithoutServer": [
            {"model": model, "waiting": n} for model, n in sorted(o.unserved.items())
        ],
    }


def hourly_out(hours: list[stats.HourCounts]) -> dict[str, Any]:
    return {
        "hours": [
            {
                "hour": h.hour,
                "created": h.created,
                "finished": h.finished,
                "failed": h.failed,
                "meanProcessingMs": h.mean_processing_ms,
            }
            for h in hours
        ]
    }


def server_stats_out(s: stats.ServerStats, recent: list[stats.RecentAttempt]) -> dict[str, Any]:
    server = s.server
    return {
        "serverId": server.id,
        "windowS": s.window_min * 60,
        "attempts": s.attempts,
        "successes": s.successes,
        "failures": s.failures,
        "latencyMs": percentiles_out(s.latency),
        "inFlight": server.in_flight,
        "maxConcurrency": server.max_concurrency,
        "status": server.status.value,
        "lastError": server.last_error,
        "lastCheckAt": iso(server.last_check_at),
        "checkedBy": server.checked_by,
        "recentAttempts": [
            {
                "taskId": r.task_id,
                "attempt": r.attempt.number,
                "startedAt": r.attempt.started_at,
                "endedAt": r.attempt.ended_at,
                "errorCode": r.attempt.error_code,
                "error": r.attempt.error,
            }
            for r in recent
        ],
    }
