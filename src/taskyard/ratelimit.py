"""Request rate limits and open long polls per principal (`sub`), on the `limits` library.

Two buckets per user: creates (`POST /api/task`) and every other `/api` request, each a
`limits` rate string ("100/second", "100/second;2000/minute"; empty = no limit). Admins and
backends (role `service`) are never limited, so users cannot starve the fleet's own traffic.

The counters live in `TASKYARD_RATE_LIMIT_STORAGE`: `memory://` (the default) keeps them per
node, so with N nodes behind a balancer a user gets up to N times the rate; a shared store
(`redis://host:6379`) makes the limit cluster-wide. The cap on unfinished tasks is not here:
it is counted in the database, in the same transaction as the insert (`Store.add_tasks`).
Open long polls are counted per node (each holds a connection of that node).

The sliding-window counter is used: constant memory per user and bucket, and no burst of
twice the rate at a window's edge as a fixed window allows.
"""

from __future__ import annotations

import contextlib
import logging
import math
import time
from collections.abc import Iterator

from limits import RateLimitItem, parse_many
from limits.aio.storage import Storage
from limits.aio.strategies import SlidingWindowCounterRateLimiter
from limits.storage import storage_from_string

from taskyard import errors
from taskyard.domain.principal import Principal
from taskyard.roles import ADMIN, SERVICE

CREATE_ROUTES = frozenset({("POST", "/api/task")})  # the routes that count as creates
BATCH_ROUTES = frozenset({("POST", "/api/tasks/batch")})  # ...as many creates as they hold
UNLIMITED_ROLES = (ADMIN, SERVICE)  # the fleet's own traffic is never starved by users
UNAVAILABLE_LOG_S = 60.0

log = logging.getLogger(__name__)


def parse_rates(value: str, setting: str) -> list[RateLimitItem]:
    """A `limits` rate string, or "" for none; raises ValueError naming the setting."""
    if not value.strip():
        return []
    try:
        return parse_many(value)
    except ValueError:
        raise ValueError(
            f"{setting}: not a rate limit like '100/second' or '100/second;2000/minute': {value!r}"
        ) from None


def async_storage_url(url: str) -> str:
    """`memory://`, `redis://…` as `limits` names its asyncio storages (`async+redis://…`)."""
    return url if url.startswith("async+") else f"async+{url}"


def limited(principal: Principal) -> bool:
    return not principal.has_any(*UNLIMITED_ROLES)


class RateLimiter:
    """The two request buckets; `check` raises `errors.RateLimited` when one is exhausted."""

    def __init__(self, *, creates: str, requests: str, storage_url: str) -> None:
        self.creates = parse_rates(creates, "TASKYARD_RATE_LIMIT_CREATES")
        self.requests = parse_rates(requests, "TASKYARD_RATE_LIMIT_REQUESTS")
        url = async_storage_url(storage_url)
        options = {"implementation": "redispy"} if "redis" in url else {}
        storage = storage_from_string(url, **options)
        assert isinstance(storage, Storage)  # an async+ URL gives an asyncio storage
        self._storage = storage
        self._limiter = SlidingWindowCounterRateLimiter(self._storage)
        self._last_warning = -UNAVAILABLE_LOG_S

    async def check(self, principal: Principal, *, method: str, route: str) -> None:
        """Count one request of `principal` on `route`; a batch of creates is counted by its
        route, which knows how many it holds (`check_creates`)."""
        if not limited(principal) or (method, route) in BATCH_ROUTES:
            return
        if (method, route) in CREATE_ROUTES:
            await self._hit(principal, "creates", self.creates, cost=1)
        else:
            await self._hit(principal, "requests", self.requests, cost=1)

    async def check_creates(self, principal: Principal, count: int) -> None:
        """Count `count` creates at once (a batch): all of them fit, or none is counted."""
        if not limited(principal):
            return
        for item in self.creates:
            if count > item.amount:
                # A 429 as for any create over the rate (the request itself is valid), but
                # one that waiting cannot cure: the message says what will.
                raise errors.RateLimited(
                    f"A batch of {count} tasks is more than the rate limit of {item} on"
                    f" creates allows at once; send at most {item.amount} per call",
                    limit=item.amount,
                    window_s=item.get_expiry(),
                    retry_after_s=item.get_expiry(),
                )
        await self._hit(principal, "creates", self.creates, cost=count)

    async def _hit(
        self, principal: Principal, bucket: str, items: list[RateLimitItem], *, cost: int
    ) -> None:
        for item in items:
            try:
                allowed = await self._limiter.hit(item, bucket, principal.sub, cost=cost)
            except Exception as exc:  # the shared store is down: serve, and say so
                self._unavailable(exc)
                return
            if not allowed:
                stats = await self._limiter.get_window_stats(item, bucket, principal.sub)
                reset_s = max(1, math.ceil(stats.reset_time - time.time()))
                raise errors.RateLimited(
                    f"Rate limit of {item} on {bucket} exceeded; try again in {reset_s} s",
                    limit=item.amount,
                    window_s=item.get_expiry(),
                    retry_after_s=reset_s,
                )

    def _unavailable(self, exc: Exception) -> None:
        """Fail open: a rate-limit store that cannot be reached must not take the API down
        with it. Logged at most once per `UNAVAILABLE_LOG_S`."""
        now = time.monotonic()
        if now - self._last_warning >= UNAVAILABLE_LOG_S:
            self._last_warning = now
            log.warning("rate-limit storage unavailable, requests not limited: %r", exc)


class OpenWaits:
    """How many long polls each user holds open on this node; past `cap`, a 429."""

    def __init__(self, cap: int) -> None:
        self.cap = cap  # 0: no cap
        self._open: dict[str, int] = {}

    def open(self, sub: str) -> int:
        """The long polls `sub` holds open on this node now."""
        return self._open.get(sub, 0)

    @contextlib.contextmanager
    def hold(self, principal: Principal) -> Iterator[None]:
        if not self.cap or not limited(principal):
            yield
            return
        sub = principal.sub
        count = self._open.get(sub, 0)
        if count >= self.cap:
            raise errors.RateLimited(
                f"{count} long polls already open for {sub!r} on this node (cap"
                f" {self.cap}, TASKYARD_MAX_OPEN_WAITS); wait for one to answer",
                limit=self.cap,
                window_s=None,
                retry_after_s=1,
            )
        self._open[sub] = count + 1
        try:
            yield
        finally:
            left = self._open[sub] - 1
            if left:
                self._open[sub] = left
            else:
                del self._open[sub]
