"""Outlier ejection, as Envoy does it: a server whose dispatches keep failing (connect errors,
timeouts, 5xx) or that keeps refusing tasks others run is taken out of rotation even while its
`/health` passes, for a time that doubles with each ejection in a row (capped) and resets after
a healthy stretch. Its health checks go on; the first that passes after that time re-admits it.
A model never loses more than `max_share` of its servers to ejection for routing: past it (the
panic threshold) ejected servers take tasks again, the least bad first. Pure rules.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from typing import Final

from taskyard.domain.changes import ServerPatch
from taskyard.domain.models import Server


class EjectionReason(StrEnum):
    FAILING = "failing"  # consecutive connect errors, timeouts or 5xx
    REJECTING = "rejecting"  # refused (4xx) several different tasks that others ran


@dataclass(frozen=True, slots=True, kw_only=True)
class EjectionPolicy:
    """The settings `eject_*` (their defaults are `Settings`')."""

    after_failures: int  # consecutive failed dispatches that eject
    after_rejections: int  # consecutive rejected tasks that eject (if others succeed)
    base_s: float  # the first ejection's length; each one in a row doubles it...
    max_s: float  # ...up to this
    reset_s: float  # this long in rotation since the last ejection ended: start over
    max_share: float  # at most this share of a model's servers is left out for ejection


@dataclass(frozen=True, slots=True)
class Ejection:
    """An ejection decided now: until when, and its place in a row of them."""

    until: int  # epoch ms
    in_a_row: int
    reason: EjectionReason

    @property
    def patch(self) -> ServerPatch:
        """The server's new fields."""
        return ServerPatch(
            ejected=True,
            ejected_until=self.until,
            ejections=self.in_a_row,
            ejection_reason=self.reason.value,
        )

    def length_s(self, *, now: int) -> float:
        return (self.until - now) / 1000


def eject(server: Server, reason: EjectionReason, *, now: int, policy: EjectionPolicy) -> Ejection:
    """The server's ejection, if it is ejected now."""
    in_a_row = server.ejections + 1
    if server.ejected_until is None or now - server.ejected_until > policy.reset_s * 1000:
        in_a_row = 1  # a healthy stretch since the last one: start over
    length_s = min(policy.max_s, policy.base_s * 2 ** (in_a_row - 1))
    return Ejection(now + int(length_s * 1000), in_a_row, reason)


READMITTED: Final = ServerPatch(
    ejected=False,
    ejection_reason=None,
    dispatch_failures=0,
    consecutive_rejections=0,
)


def may_readmit(server: Server, *, now: int) -> bool:
    """Ejected, and its time is over: the next passing check (or, without a health URL,
    the next dispatch) brings it back."""
    return server.ejected and (server.ejected_until or 0) <= now


def is_out(server: Server, *, now: int) -> bool:
    """Left out of routing for ejection. A server without health checks has nothing to
    re-admit it but a dispatch, so its time being over is enough."""
    if not server.ejected:
        return False
    return bool(server.health_url) or not may_readmit(server, now=now)
