"""The clock port: the domain reads time only through it, so that tests can drive time by hand
(`taskyard.testing.clock.FakeClock`) and the system clock stays an adapter
(`taskyard.clock.SystemClock`). asyncio's own timeouts and sleeps keep the event loop's time."""

from __future__ import annotations

from typing import Protocol


class Clock(Protocol):
    def now_ms(self) -> int:
        """Wall-clock time in epoch milliseconds (the unit stored and sent on the wire)."""
        ...

    def monotonic(self) -> float:
        """Seconds on a clock that never goes back, for deadlines and intervals."""
        ...
