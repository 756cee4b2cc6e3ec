"""The seed's adaptive health interval and registration rules (pure functions)."""

from __future__ import annotations

from dataclasses import replace

from taskyard.config import Settings
from taskyard.domain import registry
from taskyard.domain.changes import UNSET, evolve_server
from taskyard.domain.health import next_state
from taskyard.domain.models import ServerStatus
from taskyard.domain.ports import HealthReply
from taskyard.domain_config import coordinator_config
from tests.unit.factories import make_server

DEFAULTS = coordinator_config(Settings(), "n1").health
POLICY = replace(DEFAULTS, interval_min_s=10, interval_max_s=60, backoff_after=5, growth=1.5)
OK = HealthReply(healthy=True, network_error=False)
DOWN = HealthReply(healthy=False, network_error=False, detail="health HTTP 503")


def _run_checks(replies: list[HealthReply]) -> list[float]:
    server = make_server(check_interval_s=10.0)
    intervals = []
    for i, reply in enumerate(replies):
        values = next_state(server, reply, now=1_000 * i, policy=POLICY)
        server = evolve_server(server, values)
        intervals.append(server.check_interval_s)
    return intervals


def test_interval_grows_after_more_than_five_successes() -> None:
    """Five successes keep 10 s; the sixth and later grow it x1.5."""
    intervals = _run_checks([OK] * 8)
    assert intervals[:5] == [10.0] * 5
    assert intervals[5:] == [15.0, 22.5, 33.75]


def test_interval_is_capped_at_the_maximum() -> None:
    """Growth stops at the maximum interval."""
    assert _run_checks([OK] * 30)[-1] == 60.0


def test_failure_resets_interval_and_goes_offline() -> None:
    """A failed check resets the interval to the minimum and marks the server offline."""
    intervals = _run_checks([OK] * 10 + [DOWN])
    assert intervals[-1] == 10.0
    values = next_state(make_server(check_interval_s=40.0), DOWN, now=5, policy=POLICY)
    assert values.status is ServerStatus.OFFLINE
    assert values.offline_since == 5
    assert values.last_error == "health HTTP 503"


def test_offline_since_is_kept_across_failures() -> None:
    """Repeated failures keep the first offline time (removal counts from it)."""
    server = make_server(status=ServerStatus.OFFLINE, offline_since=100)
    assert next_state(server, DOWN, now=9_000, policy=POLICY).offline_since == 100


def test_success_brings_a_server_online() -> None:
    """A passing check makes an offline server online and clears its offline time."""
    server = make_server(status=ServerStatus.OFFLINE, offline_since=100, dispatch_failures=3)
    values = next_state(server, OK, now=200, policy=POLICY)
    assert values.status is ServerStatus.ONLINE
    assert values.offline_since is None
    # Dispatch failures count on: only a dispatch that works (or a re-admission) resets them,
    # so a server that fails every task but passes its checks is still ejected.
    assert values.dispatch_failures is UNSET
    assert values.next_check_at == 200 + 10_000


def test_new_server_with_health_url_starts_offline() -> None:
    """A fresh registration with a health URL is offline until its first check passes."""
    reg = registry.Registration(
        id="s", name="s", provider="p", predict_url="http://x/p", health_url="http://x/h"
    )
    server = registry.new_server(reg, now=1, interval_s=10)
    assert server.status is ServerStatus.OFFLINE
    assert server.next_check_at == 1


def test_new_server_without_health_url_is_online() -> None:
    """Without a health URL there is nothing to check: the server starts online."""
    reg = registry.Registration(
        id="s", name="s", provider="p", predict_url="http://x/p", health_url=None
    )
    assert registry.new_server(reg, now=1, interval_s=10).status is ServerStatus.ONLINE


def test_heartbeat_revives_a_server_without_health_url() -> None:
    """A heartbeat brings back a check-less server that dispatch failures took offline."""
    server = make_server(health_url=None, status=ServerStatus.OFFLINE, offline_since=1)
    values = registry.heartbeat_values(server, now=50, load={"queue": 2})
    assert values.status is ServerStatus.ONLINE
    assert values.last_heartbeat == 50
    assert values.reported_load == {"queue": 2}
    checked = make_server(status=ServerStatus.OFFLINE)
    assert registry.heartbeat_values(checked, now=50, load=None).status is UNSET


def test_staleness_uses_the_latest_sign_of_life() -> None:
    """Stale means no heartbeat, passed check or registration within the window."""
    server = make_server(registered_at=0, last_heartbeat=1_000, last_success_at=5_000)
    assert not registry.is_stale(server, now=6_000, max_age_ms=2_000)
    assert registry.is_stale(server, now=8_000, max_age_ms=2_000)
