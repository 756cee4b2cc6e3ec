"""Delivery of async results to taskyard's callback URL, with retry."""

from __future__ import annotations

import asyncio
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
) -> CallbackOutcome:
    """PUT `body` to `url`, retrying connection failures, 5xx and 429 up to `retries` times."""
    headers = {"Content-Type": "application/json"}
    if token is not None:
        headers["Authorization"] = f"Bearer {token}"
    delay = retry_delay_s
    tries = 0
    status: int | None = None
    error: str | None = None
    while True:
        tries += 1
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
        await asyncio.sleep(delay)
        delay = min(delay * 2, MAX_RETRY_DELAY_S)
