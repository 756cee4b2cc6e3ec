"""Tallies: what each state change counts for the statistics, recorded with it.

A `Tally` rides on the `TaskUpdate` (or the create) that causes it, and the store adds it to a
per-minute rollup in the same transaction, only if the update matched. So the counters are
exact (a lost race counts nothing, a crash loses nothing that was acknowledged), the same on
every node (they live in the database), and cheap: a group-commit batch of hundreds of changes
writes a handful of rollup rows.

Durations go into log-scale histogram buckets (`bucket_of`): four per doubling, so a
percentile read back from them (`percentile`) is within about 10% of the true value, whatever
the range (1 ms to days) and whatever the number of observations.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from enum import StrEnum

MINUTE_MS = 60_000
HOUR_MS = 3_600_000
BUCKETS_PER_DOUBLING = 4
NO_BUCKET = -1  # a tally that counts, with no duration
OK = "ok"  # the outcome code of an attempt that returned a result
CANCELLED = "cancelled"  # ... of an attempt cut short by a cancel


class Event(StrEnum):
    CREATED = "created"  # a task was stored (model)
    FINISHED = "finished"  # a task ended FINISHED (model)
    FAILED = "failed"  # a task ended FAILED (model, code = its errorCode)
    CANCELLED = "cancelled"  # a task was cancelled (model)
    RETRIED = "retried"  # a FAILED or CANCELLED task was sent back to the queue by hand (model)
    ATTEMPT = "attempt"  # an attempt ended (model, server, code = ok | errorCode | cancelled;
    # its duration)
    QUEUE_WAIT = "queue_wait"  # an attempt started: time the task had waited for it (model)
    PROCESSING = "processing"  # a task that had started ended FINISHED or FAILED: time from
    # its first start to then (model)


@dataclass(frozen=True, slots=True)
class Tally:
    """One count (and maybe one duration) for the minute that contains `at`."""

    event: Event
    at: int  # epoch ms
    model: str = ""
    server_id: str = ""
    code: str = ""
    ms: int | None = None  # a duration; None for a plain count

    @property
    def minute(self) -> int:
        return self.at - self.at % MINUTE_MS

    @property
    def bucket(self) -> int:
        return NO_BUCKET if self.ms is None else bucket_of(self.ms)


@dataclass(frozen=True, slots=True)
class TallySum:
    """Tallies summed over a group: whatever the query grouped by is set, the rest is blank."""

    count: int
    total_ms: int = 0
    period: int = 0  # start of the period (epoch ms), when grouped by period
    event: str = ""
    model: str = ""
    server_id: str = ""
    code: str = ""
    bucket: int = NO_BUCKET


GROUPABLE = frozenset({"period", "event", "model", "server_id", "code", "bucket"})


def bucket_of(ms: int) -> int:
    """The histogram bucket of a duration: 0 below 1 ms, then four per doubling."""
    if ms < 1:
        return 0
    return 1 + int(math.log2(ms) * BUCKETS_PER_DOUBLING)


def bucket_value(bucket: int) -> float:
    """The duration a bucket stands for: the geometric middle of its range, in ms."""
    if bucket <= 0:
        return 0.5
    return float(2 ** ((bucket - 1 + 0.5) / BUCKETS_PER_DOUBLING))


def percentile(histogram: Mapping[int, int], q: float) -> float | None:
    """The `q` quantile (0 < q ≤ 1) of a bucket → count histogram, or None when empty."""
    total = sum(histogram.values())
    if total == 0:
        return None
    rank = q * total
    seen = 0
    for bucket in sorted(histogram):
        seen += histogram[bucket]
        if seen >= rank:
            return round(bucket_value(bucket), 1)
    return round(bucket_value(max(histogram)), 1)  # pragma: no cover - rank <= total


def histogram(sums: Iterable[TallySum]) -> dict[int, int]:
    """bucket → count, summed over `sums` (which must be grouped by bucket)."""
    buckets: dict[int, int] = {}
    for item in sums:
        if item.bucket != NO_BUCKET:
            buckets[item.bucket] = buckets.get(item.bucket, 0) + item.count
    return buckets
