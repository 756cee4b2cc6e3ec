"""Why a WAITING task is still waiting, and what a create should warn about. Pure rules."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from enum import StrEnum

from taskyard.domain.models import Server, Task

POSITION_LIMIT = 10_000  # a position is counted up to this many tasks ahead


class WaitingReason(StrEnum):
    BACKOFF = "backoff"  # an attempt failed; the next is not due yet
    NO_SERVER_FOR_MODEL = "no_server_for_model"  # no registered server serves the model
    MAINTENANCE = "maintenance"  # every server of the model is in maintenance
    NO_SERVER_ONLINE = "no_server_online"  # servers of the model exist, none is online
    ALL_BUSY = "all_busy"  # every online server of the model has no free slot
    QUEUED = "queued"  # a server is free: the task goes with the next dispatch pass


@dataclass(frozen=True, slots=True)
class Waiting:
    reason: WaitingReason
    detail: str
    retry_at: int | None = None  # epoch ms, for `backoff`
    position: int | None = None  # WAITING tasks of its model ahead of it (up to the limit)


def why_waiting(task: Task, servers: Sequence[Server], *, now: int) -> Waiting:
    """The first thing that holds the task back (a backoff first: it holds the task even when
    servers are free)."""
    if task.next_attempt_at > now:
        last = task.attempts[-1] if task.attempts else None
        cause = f": {last.error}" if last and last.error else ""
        return Waiting(
            WaitingReason.BACKOFF,
            f"attempt {task.attempt} of {task.max_attempts} failed{cause}; retrying after "
            f"{(task.next_attempt_at - now) / 1000:.1f} s",
            retry_at=task.next_attempt_at,
        )
    serving = [s for s in servers if s.serves(task.model)]
    if not serving:
        return Waiting(
            WaitingReason.NO_SERVER_FOR_MODEL,
            f"no registered server serves model {task.model!r}",
        )
    if all(s.maintenance for s in serving):
        reasons = sorted({s.maintenance_reason for s in serving if s.maintenance_reason})
        return Waiting(
            WaitingReason.MAINTENANCE,
            f"every server of model {task.model!r} ({len(serving)}) is in maintenance"
            + (f": {'; '.join(reasons[:3])}" if reasons else ""),
        )
    online = [s for s in serving if s.in_rotation]
    if not online:
        return Waiting(
            WaitingReason.NO_SERVER_ONLINE,
            f"{len(serving)} server(s) serve model {task.model!r}, none is online: "
            + "; ".join(_why_offline(s) for s in serving[:3]),
        )
    if all(s.free_slots == 0 for s in online):
        used = sum(s.in_flight for s in online)
        slots = sum(s.max_concurrency for s in online)
        return Waiting(
            WaitingReason.ALL_BUSY,
            f"all {len(online)} online server(s) of model {task.model!r} are busy "
            f"({used}/{slots} slots in use)",
        )
    return Waiting(WaitingReason.QUEUED, "a server is free: the next dispatch pass takes it")


def needs_position(waiting: Waiting) -> bool:
    """Whether the queue position means something for this reason."""
    return waiting.reason in (WaitingReason.ALL_BUSY, WaitingReason.QUEUED)


def unserved_models(models: Iterable[str], servers: Sequence[Server]) -> list[str]:
    """The models that no registered server serves."""
    return sorted(m for m in set(models) if not any(s.serves(m) for s in servers))


def _why_offline(server: Server) -> str:
    return f"{server.id} {server.state.value}" + (
        f" ({server.last_error})" if server.last_error else ""
    )
