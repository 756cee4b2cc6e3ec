"""Steering the fleet, in-process on the MemoryStore: manual and bulk retry, rejections retried
once elsewhere, outlier ejection and its panic threshold, maintenance, held slots and the
cancels owed to backends, backend credentials."""

from __future__ import annotations

from dataclasses import replace

import pytest

from taskyard import auth, errors
from taskyard.clock import now_ms
from taskyard.config import Settings
from taskyard.domain import ejection
from taskyard.domain.changes import UNSET, ServerPatch, evolve_server
from taskyard.domain.coordinator import Coordinator
from taskyard.domain.ejection import EjectionReason
from taskyard.domain.models import ErrorCode, ServerState, ServerStatus, Task, TaskStatus
from taskyard.domain.ports import CancelReply, HealthReply, PredictReply, ReplyKind, TaskQuery
from taskyard.domain.registry import Registration
from taskyard.domain.reports import Report
from taskyard.domain.tasks import BulkAction
from taskyard.domain_config import coordinator_config
from tests.unit.factories import make_server
from tests.unit.fakes import ScriptedBackend
from tests.unit.test_coordinator_memory import (
    ACCEPTED,
    ALICE,
    RETRYABLE,
    create,
    memory_yard,
    one_pass,
    read,
)

ADMIN = auth.Principal(sub="root", roles=frozenset({auth.ADMIN}))
REJECTED = PredictReply(ReplyKind.REJECTED, status=422, error="HTTP 422: bad input")
HANGS = PredictReply(ReplyKind.TIMEOUT, error="no answer within 10 s")


@pytest.fixture
def backend() -> ScriptedBackend:
    return ScriptedBackend()


@pytest.fixture
def yard(backend: ScriptedBackend) -> Coordinator:
    return memory_yard(backend)


async def add(
    yard: Coordinator,
    server_id: str,
    *,
    slots: int = 2,
    cancel: bool = False,
    api_key: str | None = None,
    health: bool = False,
) -> str:
    """A server of model m (online at once unless it has a health URL); its predict URL."""
    url = f"http://{server_id}.test/predict"
    reg = Registration(
        server_id,
        server_id,
        "test",
        url,
        f"http://{server_id}.test/health" if health else None,
        max_concurrency=slots,
        models=("m",),
        cancel_url=f"http://{server_id}.test/cancel" if cancel else None,
        api_key=api_key,
    )
    await yard.fleet.register_server(reg)
    return url


async def failed_task(yard: Coordinator, backend: ScriptedBackend, url: str) -> str:
    backend.script[url].append(PredictReply(ReplyKind.TOO_LARGE, status=200, error="too big"))
    task = await create(yard, max_attempts=2)
    await one_pass(yard)
    assert (await read(yard, task)).status is TaskStatus.FAILED
    return task.id


async def statuses(yard: Coordinator, tasks: list[Task]) -> set[TaskStatus]:
    return {(await read(yard, t)).status for t in tasks}


# ---- manual retry ----------------------------------------------------------------------------


async def test_a_failed_task_is_retried_by_hand_with_its_history_and_a_fresh_budget(
    yard: Coordinator, backend: ScriptedBackend
) -> None:
    url = await add(yard, "s1")
    backend.always[url] = RETRYABLE
    task = await create(yard, max_attempts=2)
    await one_pass(yard)
    await one_pass(yard)
    failed = await read(yard, task)
    assert failed.status is TaskStatus.FAILED and failed.attempts_left == 0
    retried = await yard.tasks.retry_task(task.id, principal=ALICE)
    assert (retried.id, retried.status, retried.error, retried.attempts_left) == (
        task.id,
        TaskStatus.WAITING,
        None,
        2,
    )
    del backend.always[url]
    await one_pass(yard)
    done = await read(yard, task)
    assert done.status is TaskStatus.FINISHED and done.attempt == 3
    assert [a.error_code for a in done.attempts] == ["backend_error", "backend_error", None]


async def test_a_cancelled_task_is_retried_and_other_states_refuse(
    yard: Coordinator, backend: ScriptedBackend
) -> None:
    task = await create(yard)
    with pytest.raises(errors.Conflict, match="WAITING"):
        await yard.tasks.retry_task(task.id, principal=ALICE)
    await yard.tasks.cancel_task(task.id, principal=ALICE)
    assert (await yard.tasks.retry_task(task.id, principal=ALICE)).status is TaskStatus.WAITING
    await add(yard, "s1")
    await one_pass(yard)
    assert (await read(yard, task)).status is TaskStatus.FINISHED
    with pytest.raises(errors.Conflict, match="FINISHED"):
        await yard.tasks.retry_task(task.id, principal=ALICE)
    bob = auth.Principal(sub="bob", roles=frozenset({auth.USER}))
    with pytest.raises(errors.TaskNotFound):
        await yard.tasks.retry_task(task.id, principal=bob)


async def test_a_retried_task_gets_its_queue_timeout_again(yard: Coordinator) -> None:
    task = await create(yard, queue_timeout_s=5)
    await yard.tasks.cancel_task(task.id, principal=ALICE)
    retried = await yard.tasks.retry_task(task.id, principal=ALICE)
    assert retried.queue_deadline_at is not None
    assert retried.queue_deadline_at - retried.updated_at == 5_000


async def test_bulk_retry_and_cancel_take_the_search_filters_and_a_limit(
    yard: Coordinator, backend: ScriptedBackend
) -> None:
    url = await add(yard, "s1", slots=10)
    failed = [await failed_task(yard, backend, url) for _ in range(3)]
    query = TaskQuery(limit=2, error_code="response_too_large")
    changed, more = await yard.tasks.bulk_change(BulkAction.RETRY, query, principal=ADMIN)
    assert set(changed) < set(failed) and len(changed) == 2 and more
    changed2, more2 = await yard.tasks.bulk_change(BulkAction.RETRY, query, principal=ADMIN)
    assert set(changed + changed2) == set(failed) and not more2
    # Cancel: only open tasks are touched, whatever the status filter asks.
    open_query = TaskQuery(limit=100, statuses=(TaskStatus.WAITING, TaskStatus.FINISHED))
    cancelled, _ = await yard.tasks.bulk_change(BulkAction.CANCEL, open_query, principal=ADMIN)
    assert set(cancelled) == set(failed)
    for task_id in failed:
        assert (await yard.reads.get_task(task_id, principal=ALICE)).status is TaskStatus.CANCELLED
    with pytest.raises(errors.Forbidden):
        await yard.tasks.bulk_change(BulkAction.CANCEL, open_query, principal=ALICE)


# ---- rejections --------------------------------------------------------------------------


async def test_a_rejected_task_is_retried_once_on_another_server(
    yard: Coordinator, backend: ScriptedBackend
) -> None:
    good = await add(yard, "good", slots=1)
    backend.script[good].append(ACCEPTED)  # "good" is busy with a task that stays running
    busy = await create(yard)
    await one_pass(yard)
    bad = await add(yard, "bad", slots=5)
    backend.always[bad] = REJECTED
    task = await create(yard)
    await one_pass(yard)
    rejected_once = await read(yard, task)
    assert rejected_once.status is TaskStatus.WAITING and rejected_once.rejected_by == {"bad"}
    assert rejected_once.next_attempt_at <= now_ms()  # no backoff: it is the server's refusal
    # With "bad" free and "good" full, it is not sent to "bad" again: it waits for "good".
    await one_pass(yard)
    assert [u for u, _ in backend.sent].count(bad) == 1
    await yard.tasks.report(busy.id, _finished_report(), principal=ADMIN)
    await one_pass(yard)
    done = await read(yard, task)
    assert done.status is TaskStatus.FINISHED
    assert [(a.server_id, a.error_code) for a in done.attempts] == [
        ("bad", "backend_rejected"),
        ("good", None),
    ]


async def test_a_task_rejected_by_two_servers_fails_as_rejected_with_both_answers(
    yard: Coordinator, backend: ScriptedBackend
) -> None:
    for name in ("a", "b", "c"):
        backend.always[await add(yard, name)] = REJECTED
    task = await create(yard, max_attempts=5)
    await one_pass(yard)
    await one_pass(yard)
    failed = await read(yard, task)
    assert (failed.status, failed.error_code, failed.attempt) == (
        TaskStatus.FAILED,
        ErrorCode.REJECTED,
        2,
    )
    assert failed.error is not None and failed.error.count("HTTP 422") == 2
    assert [a.error_code for a in failed.attempts] == ["backend_rejected", "backend_rejected"]


async def test_a_server_that_rejects_what_others_run_is_ejected_as_rejecting(
    yard: Coordinator, backend: ScriptedBackend
) -> None:
    bad = await add(yard, "bad", slots=10)
    await add(yard, "good", slots=10)
    backend.always[bad] = REJECTED
    tasks = [await create(yard) for _ in range(8)]
    for _ in range(4):
        await one_pass(yard)
    assert await statuses(yard, tasks) == {TaskStatus.FINISHED}
    server = await yard.fleet.get_server("bad")
    assert (server.state, server.ejection_reason) == (ServerState.EJECTED, "rejecting")
    assert server.last_error is not None and "refused 3 different tasks" in server.last_error
    assert (await yard.fleet.get_server("good")).state is ServerState.ONLINE


# ---- outlier ejection --------------------------------------------------------------------


def test_each_ejection_in_a_row_lasts_twice_as_long_up_to_the_cap() -> None:
    defaults = coordinator_config(Settings(), "n1").dispatch.ejection
    policy = replace(defaults, base_s=10, max_s=35, reset_s=100)
    server = make_server()
    lengths = []
    now = 1_000_000
    for _ in range(4):
        ejected = ejection.eject(server, EjectionReason.FAILING, now=now, policy=policy)
        lengths.append(ejected.length_s(now=now))
        server = evolve_server(server, ejected.patch)
        now = ejected.until + 5_000  # re-admitted, fails again soon
    assert lengths == [10, 20, 35, 35]
    # After a healthy stretch longer than reset_s it starts over.
    later = server.ejected_until + 101_000  # type: ignore[operator]
    ejected = ejection.eject(server, EjectionReason.FAILING, now=later, policy=policy)
    assert ejected.length_s(now=later) == 10 and ejected.in_a_row == 1


async def test_a_failing_server_is_ejected_and_its_tasks_finish_elsewhere(
    yard: Coordinator, backend: ScriptedBackend
) -> None:
    bad = await add(yard, "bad", slots=10)
    await add(yard, "good", slots=10)
    await add(yard, "spare", slots=10)
    backend.always[bad] = RETRYABLE
    tasks = [await create(yard) for _ in range(12)]
    for _ in range(4):
        await one_pass(yard)
    assert await statuses(yard, tasks) == {TaskStatus.FINISHED}
    server = await yard.fleet.get_server("bad")
    assert server.state is ServerState.EJECTED and server.ejection_reason == "failing"
    sent_to_bad = [u for u, _ in backend.sent].count(bad)
    more = [await create(yard) for _ in range(10)]
    for _ in range(2):
        await one_pass(yard)
    assert await statuses(yard, more) == {TaskStatus.FINISHED}
    assert [u for u, _ in backend.sent].count(bad) == sent_to_bad  # none while ejected


async def test_past_the_panic_threshold_ejected_servers_take_tasks_the_least_bad_first(
    yard: Coordinator, backend: ScriptedBackend
) -> None:
    for name in ("a", "b"):
        backend.always[await add(yard, name, slots=5)] = RETRYABLE
    tasks = [await create(yard, max_attempts=6) for _ in range(4)]
    for _ in range(8):
        await one_pass(yard)
    servers = [await yard.fleet.get_server(n) for n in ("a", "b")]
    assert all(s.state is ServerState.EJECTED for s in servers)
    # Every server of the model is ejected: the tasks were still tried, to their last attempt.
    for task in tasks:
        failed = await read(yard, task)
        assert failed.status is TaskStatus.FAILED and failed.attempt == 6


async def test_a_passing_check_readmits_an_ejected_server_only_after_its_time(
    yard: Coordinator, backend: ScriptedBackend
) -> None:
    from taskyard.domain.health import next_state
    from taskyard.domain.ports import HealthReply

    healthy = HealthReply(healthy=True, network_error=False)
    server = make_server(ejected=True, ejected_until=5_000, ejections=1, last_error="ejected")
    policy = yard.config.health
    early = next_state(server, healthy, now=4_000, policy=policy)
    assert early.ejected is UNSET and early.last_error is UNSET  # stays out, reason shown
    late = next_state(server, healthy, now=5_000, policy=policy)
    assert late.ejected is False and late.dispatch_failures == 0


# ---- maintenance -------------------------------------------------------------------------


async def test_maintenance_drains_then_returns_after_a_passing_check(
    yard: Coordinator, backend: ScriptedBackend
) -> None:
    url = await add(yard, "s1", slots=5)
    backend.script[url].append(ACCEPTED)
    running = await create(yard)
    await one_pass(yard)
    server = await yard.fleet.set_maintenance("s1", enabled=True, reason="driver upgrade")
    assert (server.state, server.maintenance_reason) == (ServerState.DRAINING, "driver upgrade")
    waiting = await create(yard)
    await one_pass(yard)
    assert (await read(yard, waiting)).status is TaskStatus.WAITING
    why = await yard.reads.why_waiting(await read(yard, waiting))
    assert why is not None and why.reason == "maintenance"
    report = _finished_report()
    await yard.tasks.report(running.id, report, principal=ADMIN)
    assert (await yard.fleet.get_server("s1")).state is ServerState.MAINTENANCE
    # Re-registering (the backend restarted) keeps it in maintenance.
    await add(yard, "s1", slots=5)
    assert (await yard.fleet.get_server("s1")).state is ServerState.MAINTENANCE
    back = await yard.fleet.set_maintenance("s1", enabled=False, reason=None)
    assert back.state is ServerState.ONLINE  # no health URL: back at once
    await one_pass(yard)
    assert (await read(yard, waiting)).status is TaskStatus.FINISHED


async def test_out_of_maintenance_a_checked_server_waits_for_its_next_check(
    yard: Coordinator,
) -> None:
    await add(yard, "s1", health=True)
    await yard.store.update_server("s1", ServerPatch(status=ServerStatus.ONLINE))
    await yard.fleet.set_maintenance("s1", enabled=True, reason=None)
    back = await yard.fleet.set_maintenance("s1", enabled=False, reason=None)
    assert back.state is ServerState.OFFLINE and back.next_check_at <= now_ms()
    await yard.health.check("s1")
    assert (await yard.fleet.get_server("s1")).state is ServerState.ONLINE


async def test_a_check_read_in_maintenance_does_not_undo_its_end(
    yard: Coordinator, backend: ScriptedBackend, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A check in flight when maintenance ends was judged on the registration in maintenance
    (offline for ages, kept); its failed outcome must not write that old `offline_since` back
    onto the server now out of maintenance, or the removal sweep takes it before its next check
    (the CI failure of test_drain_restart_never_removed_and_back on PostgreSQL)."""
    from taskyard.domain.registry import offline_too_long

    await add(yard, "s1", health=True)
    await yard.store.update_server("s1", ServerPatch(status=ServerStatus.OFFLINE, offline_since=1))
    await yard.fleet.set_maintenance("s1", enabled=True, reason=None)
    read_in_maintenance = await yard.fleet.get_server("s1")
    back = await yard.fleet.set_maintenance("s1", enabled=False, reason=None)

    async def fails(url: str, *, timeout_s: float, api_key: str | None = None) -> HealthReply:
        return HealthReply(healthy=False, network_error=False, detail="HTTP 503")

    monkeypatch.setattr(backend, "health", fails)
    await yard.health.check("s1", read_in_maintenance)
    server = await yard.fleet.get_server("s1")
    assert (server.maintenance, server.consecutive_failures) == (False, 1)  # judged again
    assert server.offline_since == back.offline_since != 1
    assert not offline_too_long(server, now=now_ms(), limit_ms=60_000)


def test_servers_in_maintenance_or_not_auto_removable_are_never_removed() -> None:
    from taskyard.domain.registry import offline_too_long

    offline = make_server(status=ServerStatus.OFFLINE, offline_since=0)
    assert offline_too_long(offline, now=10_000, limit_ms=1_000)
    assert not offline_too_long(replace(offline, maintenance=True), now=10_000, limit_ms=1_000)
    assert not offline_too_long(replace(offline, auto_remove=False), now=10_000, limit_ms=1_000)
    assert not offline_too_long(offline, now=10_000, limit_ms=0)  # removal switched off


# ---- held slots and cancels --------------------------------------------------------------


async def test_a_cancelled_attempt_holds_its_slot_until_the_backend_lets_go(
    yard: Coordinator, backend: ScriptedBackend
) -> None:
    url = await add(yard, "s1", slots=1, cancel=True)
    backend.script[url].append(ACCEPTED)
    running = await create(yard)
    await one_pass(yard)
    backend.cancel_replies.append(CancelReply(let_go=False, error="cancel HTTP 503"))
    await yard.tasks.cancel_task(running.id, principal=ALICE)
    nxt = await create(yard)
    server = await yard.fleet.get_server("s1")
    assert (server.in_flight, server.held) == (1, 1)
    await yard.dispatcher.send_cancels(now_ms())
    await yard.dispatcher.sends_recorded()
    assert backend.cancels == [("http://s1.test/cancel", {"task_id": running.id, "attempt": 1})]
    await one_pass(yard)
    assert (await read(yard, nxt)).status is TaskStatus.WAITING  # the slot is still held
    # The failed cancel is tried again later; the second one is answered.
    await yard.dispatcher.send_cancels(now_ms() + 60_000)
    await yard.dispatcher.sends_recorded()
    assert len(backend.cancels) == 2 and (await yard.fleet.get_server("s1")).held == 0
    await one_pass(yard)
    assert (await read(yard, nxt)).status is TaskStatus.FINISHED


async def test_a_late_final_report_releases_a_held_slot(
    yard: Coordinator, backend: ScriptedBackend
) -> None:
    url = await add(yard, "s1", slots=1)  # no cancel endpoint: only the backend can free it
    backend.script[url].append(ACCEPTED)
    running = await create(yard)
    await one_pass(yard)
    await yard.tasks.cancel_task(running.id, principal=ALICE)
    assert (await yard.fleet.get_server("s1")).held == 1
    token = auth.Principal(
        sub="server:s1",
        roles=frozenset({auth.SERVICE}),
        server_id="s1",
        task_id=running.id,
        attempt=1,
    )
    with pytest.raises(errors.TaskFinal):
        await yard.tasks.report(running.id, _finished_report(), principal=token)
    assert (await yard.fleet.get_server("s1")).held == 0


async def test_a_timed_out_attempt_holds_its_slot_for_the_grace(
    yard: Coordinator, backend: ScriptedBackend
) -> None:
    url = await add(yard, "s1", slots=1, cancel=True)
    backend.script[url].append(HANGS)
    task = await create(yard)
    await one_pass(yard)
    again = await read(yard, task)
    assert again.status is TaskStatus.WAITING
    assert (await yard.fleet.get_server("s1")).held == 1
    backend.cancel_replies.append(CancelReply(let_go=False, error="down"))
    await yard.dispatcher.send_cancels(now_ms())
    await yard.dispatcher.sends_recorded()
    # Past the grace the hold lapses, answered or not.
    grace_ms = int(yard.dispatcher.policy.slot_grace_s * 1000)
    assert await yard.store.prune_holds(now=now_ms() + grace_ms + 1_000) == 1
    assert (await yard.fleet.get_server("s1")).held == 0


@pytest.mark.parametrize(
    ("late", "still_held"),
    [
        (HANGS, True),
        (ACCEPTED, True),
        (RETRYABLE, False),
        (PredictReply(ReplyKind.OK, 200, {}), False),
    ],
    ids=["client-timeout", "accepted", "error-answer", "result"],
)
async def test_a_late_reply_to_a_swept_attempt_frees_its_slot_only_if_the_backend_let_go(
    yard: Coordinator, backend: ScriptedBackend, late: PredictReply, still_held: bool
) -> None:
    url = await add(yard, "s1", slots=1, cancel=True)
    backend.script[url].append(ACCEPTED)
    task = await create(yard)
    await one_pass(yard)
    sent = await read(yard, task)
    assert sent.status is TaskStatus.PROCESSING and sent.deadline_at is not None
    await yard.dispatcher.sweep(sent.deadline_at + 1)  # the deadline sweep comes first
    assert (await yard.fleet.get_server("s1")).held == 1
    # Then the send's own reply: a client that gave up, or a 202, says the backend may still
    # be computing, so the slot stays held until its cancel is answered.
    server = await yard.store.get_server("s1")
    assert server is not None
    await yard.dispatcher.record_reply(sent, server, late)
    assert (await yard.fleet.get_server("s1")).held == (1 if still_held else 0)


async def test_the_api_key_goes_with_every_call_to_its_backend(
    yard: Coordinator, backend: ScriptedBackend
) -> None:
    url = await add(yard, "s1", cancel=True, api_key="sk-backend-secret")
    backend.script[url].append(ACCEPTED)
    task = await create(yard)
    await one_pass(yard)
    await yard.tasks.cancel_task(task.id, principal=ALICE)
    await yard.dispatcher.send_cancels(now_ms())
    await yard.dispatcher.sends_recorded()
    assert backend.api_keys == ["sk-backend-secret", "sk-backend-secret"]
    assert "sk-backend-secret" not in repr(await yard.fleet.get_server("s1"))


def _finished_report() -> Report:
    return Report(status=TaskStatus.FINISHED, body={"output": "late"})


# ---- server rows: a health result belongs to the registration it checked ------------------


class ReRegisteringHealth(ScriptedBackend):
    """Every health check passes, but while it is in flight the server is registered anew
    (or deleted): the result must not land on the new registration."""

    def __init__(self, yard_ref: list[Coordinator], *, delete: bool) -> None:
        super().__init__()
        self.yard_ref = yard_ref
        self.delete = delete

    async def health(
        self, url: str, *, timeout_s: float, api_key: str | None = None
    ) -> HealthReply:
        yard = self.yard_ref[0]
        if self.delete:
            await yard.store.delete_servers(["s1"])
        else:
            await yard.fleet.register_server(
                Registration("s1", "s1", "test", "http://s1.test/p", "http://s1.test/h")
            )
        return HealthReply(healthy=True, network_error=False)


@pytest.mark.parametrize("delete", [False, True], ids=["re-registered", "deleted"])
async def test_a_health_result_for_a_replaced_registration_changes_nothing(
    delete: bool,
) -> None:
    ref: list[Coordinator] = []
    yard = memory_yard(ReRegisteringHealth(ref, delete=delete))
    ref.append(yard)
    await yard.fleet.register_server(
        Registration("s1", "s1", "test", "http://s1.test/p", "http://s1.test/h")
    )
    before = await yard.store.get_server("s1")
    await yard.health.check("s1")
    after = await yard.store.get_server("s1")
    if delete:
        assert after is None
    else:
        assert after is not None and before is not None and after.revision != before.revision
        assert (after.status, after.last_check_at) == (ServerStatus.OFFLINE, None)
