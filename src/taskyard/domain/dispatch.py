"""Choosing servers for waiting tasks, and retry timing. Pure functions, no I/O."""

from __future__ import annotations

import random
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from taskyard.domain import ejection
from taskyard.domain.models import Server, Task


@dataclass(frozen=True, slots=True)
class Assignment:
    task: Task
    server: Server


def assign(
    tasks: Sequence[Task],
    servers: Iterable[Server],
    rng: random.Random | None = None,
    *,
    now: int = 0,
    max_ejected_share: float,
) -> list[Assignment]:
    """Give each task (in the order given: priority, then FIFO) the least-loaded eligible server.

    Eligible: in rotation (online, not in maintenance), serves the task's model, has not
    rejected the task, has a free slot, and is not ejected, unless more than
    `max_ejected_share` of the model's servers are (the panic threshold): then ejected ones
    take tasks too, after the others and the fewest failures first. A server the task already
    tried is used only when no untried one is eligible. Ties on load go to the higher weight,
    then to chance. Capacity taken by earlier tasks in the batch counts for later ones.
    """
    rng = rng or random.Random()
    pool = [s for s in servers if s.in_rotation]
    load = {s.id: s.in_flight for s in pool}
    out_of_routing = {s.id for s in pool if ejection.is_out(s, now=now)}
    panic: dict[str, bool] = {}
    out: list[Assignment] = []
    for task in tasks:
        serving = [s for s in pool if s.serves(task.model) and s.id not in task.rejected_by]
        if task.model not in panic:
            of_model = [s for s in pool if s.serves(task.model)]
            ejected = sum(1 for s in of_model if s.id in out_of_routing)
            panic[task.model] = bool(of_model) and ejected / len(of_model) > max_ejected_share
        candidates = [
            s
            for s in serving
            if load[s.id] < s.max_concurrency and (panic[task.model] or s.id not in out_of_routing)
        ]
        if not candidates:
            continue
        tried = task.tried_servers
        chosen = min(
            candidates,
            key=lambda s: (
                s.id in out_of_routing,  # in a panic, the ejected come last...
                (s.dispatch_failures + s.consecutive_rejections) * (s.id in out_of_routing),
                s.id in tried,  # ...the least bad first; then servers not tried yet
                load[s.id] / s.max_concurrency,
                -s.weight,
                rng.random(),
            ),
        )
        load[chosen.id] += 1
        out.append(Assignment(task, chosen))
    return out


def retry_delay_s(attempt: int, *, base_s: float, max_s: float, rng: random.Random) -> float:
    """Exponential backoff with full jitter before attempt `attempt + 1`."""
    ceiling = min(max_s, base_s * (2 ** max(0, attempt - 1)))
    return rng.uniform(ceiling / 2, ceiling)


def is_retryable_status(status: int) -> bool:
    """5xx, 408, 409 and 429 may succeed elsewhere; any other 4xx is a refusal of the task
    (retried once on another server: see `Dispatcher.record_reply`)."""
    return status >= 500 or status in (408, 409, 429)
