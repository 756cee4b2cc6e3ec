"""The system clock, as the domain's `Clock` port reads it (`domain/clock.py`)."""

from __future__ import annotations

import time


def now_ms() -> int:
    """Wall-clock time in epoch milliseconds (the seed's time unit on the wire)."""
    return int(time.time() * 1000)


class SystemClock:
    """The machine's clocks: `time.time` for wall time, `time.monotonic` for intervals."""

    def now_ms(self) -> int:
        return now_ms()

    def monotonic(self) -> float:
        return time.monotonic()
