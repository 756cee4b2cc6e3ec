"""Delivery of async results to taskyard's callback URL, with retry."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from dataclasses import dataclass

import aiohttp

# Backoff doubles per try but never waits longer than this between tries.
MAX_RETRY_DELAY_S = 5.0
# One try must not block the retry loop forever if the receiver accepts and stalls.
TRY_TIMEOUT = aiohttp.ClientTimeout(total=10.0)


@dataclass(frozen=True, slots=True)
class CallbackOutcome:
    """Final result of a delivery: the last HTTP status or the last error, and tries used."""

    status: int | None
    error: str | None
    tries: int
    stopped: bool = False  # `stop` was set: no further try was made


def _retryable_status(status: int) -> bool:
    # 5xx and 429 are transient; any other answer (2xx, or 4xx such as 409) is final.
    return status >= 500 or status == 429


async def send_callback(
    session: aiohttp.ClientSession,
    url: str,
    token: str | None,
    body: bytes,
    *,
    retries: int,
    retry_delay_s: float,
    stop: asyncio.Event | None = None,
    on_try: Callable[[], None] | None = None,
    on_wait: Callable[[], None] | None = None,
) -> CallbackOutcome:
    """PUT `body` to `url`, retrying connection failures, 5xx and 429 up to `retries` times.

    Args:
        stop: once set, no further try is made (a PUT already on the wire is not recalled).
        on_try: called just before each PUT is sent.
        on_wait: called when a failed try is followed by a wait for the next one.
    """
    headers = {"Content-Type": "application/json"}
    if token is not None:
        headers["Authorization"] = f"Bearer {token}"
    delay = retry_delay_s
    tries = 0
    status: int | None = None
    error: str | None = None
    while True:
        if stop is not None and stop.is_set():
            return CallbackOutcome(status, error, tries, stopped=True)
        tries += 1
        if on_try is not None:
            on_try()
        try:
            async with session.put(url, data=body, headers=headers, timeout=TRY_TIMEOUT) as resp:
                # Drain the body so the connection can go back to the pool.
                await resp.read()
                status, error = resp.status, None
                if not _retryable_status(resp.status):
                    return CallbackOutcome(status, None, tries)
        except (aiohttp.ClientConnectionError, TimeoutError) as exc:
            status, error = None, f"{type(exc).__name__}: {exc}"
        except (aiohttp.ClientError, ValueError) as exc:
            # Bad URL or protocol misuse: retrying cannot help.
            return CallbackOutcome(None, f"{type(exc).__name__}: {exc}", tries)
        if tries > retries:
            return CallbackOutcome(status, error, tries)
        if on_wait is not None:
            on_wait()
        await _sleep_unless(stop, delay)
        delay = min(delay * 2, MAX_RETRY_DELAY_S)


async def _sleep_unless(stop: asyncio.Event | None, delay_s: float) -> None:
    if stop is None:
        await asyncio.sleep(delay_s)
        return
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(stop.wait(), delay_s)
