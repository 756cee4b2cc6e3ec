"""`FakeClock`: time that moves only when a test moves it."""

from __future__ import annotations

DEFAULT_START_MS = 1_767_225_600_000  # 2026-01-01T00:00:00Z: a fixed, readable wall clock


class FakeClock:
    """The domain's clock port (`now_ms()`, `monotonic()`) under a test's control.

    Both readings start fixed and move together, by `advance(seconds)` only, so deadlines,
    backoffs and intervals measured against this clock pass exactly when the test says."""

    def __init__(self, start_ms: int = DEFAULT_START_MS) -> None:
        self._start_ms = start_ms
        self._elapsed = 0.0  # seconds advanced so far

    def now_ms(self) -> int:
        """Wall-clock time in milliseconds since the epoch (what tasks' timestamps hold)."""
        return self._start_ms + round(self._elapsed * 1000)

    def monotonic(self) -> float:
        """Seconds from an arbitrary start, never going back (what timeouts are measured on)."""
        return self._elapsed

    def advance(self, seconds: float) -> None:
        """Move both readings `seconds` forward."""
        if seconds < 0:
            raise ValueError("a clock does not go back: seconds must be >= 0")
        self._elapsed += seconds

    def __repr__(self) -> str:
        return f"FakeClock(now_ms={self.now_ms()}, monotonic={self._elapsed:g})"
