"""Helpers shared by the background loops: wake-or-timeout waits and crash-proof iterations."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from taskyard.domain.clock import Clock
from taskyard.domain.ports import NullObserver, Observer

log = logging.getLogger(__name__)

FAILURE_REPORT_S = 60.0  # a loop that keeps failing is reported again this often


class FailureLog:
    """Report a repeating job's failures without a traceback per iteration: the first failure
    with its traceback, then one summary (with the latest traceback) at most every `every_s`
    while it keeps failing, and one line when it works again."""

    def __init__(
        self,
        name: str,
        *,
        clock: Clock,
        every_s: float = FAILURE_REPORT_S,
        logger: logging.Logger = log,
    ) -> None:
        self.name, self.every_s, self.clock, self.log = name, every_s, clock, logger
        self.failures = 0  # in a row
        self._first_at = 0.0
        self._reported_at = 0.0

    def failed(self, **extra: Any) -> None:
        """Call from an `except` block; `extra` ids go on the line if it is written."""
        now = self.clock.monotonic()
        self.failures += 1
        if self.failures == 1:
            self._first_at = self._reported_at = now
            self.log.error("%s failed; retrying", self.name, exc_info=True, extra=extra)
        elif now - self._reported_at >= self.every_s:
            self._reported_at = now
            self.log.error(
                "%s keeps failing: %d times in a row over %.0f s; retrying",
                self.name,
                self.failures,
                now - self._first_at,
                exc_info=True,
                extra=extra,
            )

    def succeeded(self) -> None:
        if self.failures:
            self.log.warning(
                "%s works again after %d failures in a row over %.0f s",
                self.name,
                self.failures,
                self.clock.monotonic() - self._first_at,
            )
            self.failures = 0


class Wakeable:
    """A loop that sleeps until woken, its interval passes, or it is told to stop."""

    def __init__(self, clock: Clock) -> None:
        self.clock = clock
        self._wake = asyncio.Event()
        self._stopping = asyncio.Event()
        self.failure_pause_s = 1.0  # after a failed iteration
        self.observer: Observer = NullObserver()  # told how each iteration ended
        # For /ready: how many iterations in a row failed, and the last one's error type
        # (its type only: /ready is public, and a message can carry anything).
        self.failures_in_a_row = 0
        self.last_error: str | None = None

    def wake(self) -> None:
        self._wake.set()

    def stop(self) -> None:
        self._stopping.set()
        self._wake.set()

    @property
    def stopping(self) -> bool:
        return self._stopping.is_set()

    async def sleep(self, seconds: float) -> None:
        """Return after `seconds`, or earlier when woken or stopped."""
        if seconds > 0 and not self._wake.is_set():
            try:
                await asyncio.wait_for(self._wake.wait(), timeout=seconds)
            except TimeoutError:
                pass
        self._wake.clear()

    async def repeat(self, name: str, step: Callable[[], Awaitable[float]]) -> None:
        """Run `step` until stopped; it returns how long to sleep. A failed step is retried
        after `failure_pause_s`; it never kills the loop, and a loop that keeps failing is
        reported now and then (`FailureLog`), not once per iteration."""
        failures = FailureLog(f"{name} loop", clock=self.clock)
        while not self.stopping:
            try:
                pause = await step()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                failures.failed()
                self.failures_in_a_row, self.last_error = failures.failures, type(exc).__name__
                self.observer.loop_ran(name, ok=False)
                pause = self.failure_pause_s
            else:
                failures.succeeded()
                self.failures_in_a_row = 0
                self.observer.loop_ran(name, ok=True)
            await self.sleep(pause)
