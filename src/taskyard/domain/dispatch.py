"""Choosing servers for waiting tasks, and retry timing. Pure functions, no I/O."""

from __future__ import annotations

import random
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from taskyard.domain.models import Server, ServerStatus, Task


@dataclass(frozen=True, slots=True)
class Assignment:
    task: Task
    server: Server


def assign(
    tasks: Sequence[Task], servers: Iterable[Server], rng: random.Random | None = None
) -> list[Assignment]:
    """Give each task (in the order given: priority, then FIFO) the least-loaded eligible server.

    Eligible: online, serves the task's model, has a free slot. A server the task already tried
    is used only when no untried one is eligible. Ties on load go to the higher weight, then to
    chance. Capacity taken by earlier tasks in the batch counts for later ones.
    """
    rng = rng or random.Random()
    load = {s.id: s.in_flight for s in servers if s.status is ServerStatus.ONLINE}
    by_id = {s.id: s for s in servers if s.id in load}
    out: list[Assignment] = []
    for task in tasks:
        candidates = [
            s for s in by_id.values() if load[s.id] < s.max_concurrency and s.serves(task.model)
        ]
        if not candidates:
            continue
        untried = [s for s in candidates if s.id not in task.tried_servers]
        pool = untried or candidates
        chosen = min(pool, key=lambda s: (load[s.id] / s.max_concurrency, -s.weight, rng.random()))
        load[chosen.id] += 1
        out.append(Assignment(task, chosen))
    return out


def retry_delay_s(attempt: int, *, base_s: float, max_s: float, rng: random.Random) -> float:
    """Exponential backoff with full jitter before attempt `attempt + 1`."""
    ceiling = min(max_s, base_s * (2 ** max(0, attempt - 1)))
    return rng.uniform(ceiling / 2, ceiling)


def is_retryable_status(status: int) -> bool:
    """5xx, 408, 409 and 429 may succeed elsewhere; any other 4xx is the task's own fault."""
    return status >= 500 or status in (408, 409, 429)
