"""Helpers shared by the background loops: wake-or-timeout waits and crash-proof iterations."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

log = logging.getLogger(__name__)


class Wakeable:
    """A loop that sleeps until woken, its interval passes, or it is told to stop."""

    def __init__(self) -> None:
        self._wake = asyncio.Event()
        self._stopping = asyncio.Event()

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
        """Run `step` until stopped; it returns how long to sleep. A failed step is logged and
        retried after a second; it never kills the loop."""
        while not self.stopping:
            try:
                pause = await step()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("%s: iteration failed; continuing", name)
                pause = 1.0
            await self.sleep(pause)
