"""The coordinator's task lifecycle on `MemoryStore` and a scripted backend: no database, no
process, no loop running. Each test drives dispatcher passes by hand and runs in milliseconds;
`tests/e2e/` checks the same paths through real processes."""

from __future__ import annotations

import asyncio
from dataclasses import replace

import jwt
import pytest

from taskyard import auth, errors
from taskyard.clock import SystemClock, now_ms
from taskyard.config import Settings
from taskyard.domain.coordinator import Coordinator
from taskyard.domain.models import (
    ErrorCode,
    ServerState,
    Task,
    TaskOptions,
    TaskStatus,
)
from taskyard.domain.ports import PredictReply, ReplyKind
from taskyard.domain.registry import Registration
from taskyard.domain.reports import Report
from taskyard.domain_config import coordinator_config
from taskyard.testing import MemoryStore
from tests.unit.fakes import ScriptedBackend

SECRET = "memory-test-secret-" + "k" * 30
BASE_URL = "http://yard.test"
ALICE = auth.Principal(sub="alice", roles=frozenset({auth.USER}))
RETRYABLE = PredictReply(ReplyKind.RETRYABLE, status=503, error="HTTP 503")
ACCEPTED = PredictReply(ReplyKind.ACCEPTED, status=202)


@pytest.fixture
def backend() -> ScriptedBackend:
    return ScriptedBackend()


@pytest.fixture
def yard(backend: ScriptedBackend) -> Coordinator:
    return memory_yard(backend)


def memory_yard(backend: ScriptedBackend) -> Coordinator:
    """A coordinator on a MemoryStore, its loops not running, talking to `backend`."""
    # No retry backoff: a retried task is due again at once, for the next pass.
    settings = Settings(public_url=BASE_URL, retry_base_s=0.0, retry_max_s=0.0)
    return Coordinator(
        store=MemoryStore(),
        client=backend,
        tokens=auth.JwtIssuer(SECRET),
        config=coordinator_config(settings, "n1"),
        clock=SystemClock(),
    )


async def register(yard: Coordinator, server_id: str, *, weight: float = 1.0) -> str:
    """A server without a health URL (online at once); its predict URL."""
    url = f"http://{server_id}.test/predict"
    reg = Registration(server_id, server_id, "test", url, None, max_concurrency=2, weight=weight)
    await yard.fleet.register_server(reg)
    return url


async def create(yard: Coordinator, **options: int) -> Task:
    request = {"model": "m", "input": [1, 2]}
    return await yard.tasks.create_task(
        owner="alice", request=request, options=TaskOptions(**options)
    )


async def one_pass(yard: Coordinator, now: int | None = None) -> None:
    """What one dispatcher pass does (at `now`, by default the clock's), up to every reply
    recorded."""
    await yard.dispatcher.dispatch_due(now_ms() if now is None else now)
    await yard.dispatcher.sends_recorded()


async def read(yard: Coordinator, task: Task) -> Task:
    return await yard.reads.get_task(task.id, principal=ALICE)


async def accepted(yard: Coordinator, backend: ScriptedBackend) -> Task:
    """A task that s1 took (202) and will report on later: PROCESSING."""
    backend.script[await register(yard, "s1")].append(ACCEPTED)
    task = await create(yard)
    await one_pass(yard)
    running = await read(yard, task)
    assert running.status is TaskStatus.PROCESSING
    return running


async def test_a_task_is_sent_with_its_callback_and_finished(
    yard: Coordinator, backend: ScriptedBackend
) -> None:
    url = await register(yard, "s1")
    task = await create(yard)
    await one_pass(yard)
    done = await read(yard, task)
    assert done.status is TaskStatus.FINISHED and done.result == {"output": "done"}
    assert [(a.server_id, a.node_id, a.error) for a in done.attempts] == [("s1", "n1", None)]
    [(sent_to, payload)] = backend.sent
    assert sent_to == url and payload["request"] == task.request
    assert payload["callback_url"] == f"{BASE_URL}/api/task/{task.id}"
    holder = auth.verify(SECRET, payload["callback_token"])
    assert (holder.server_id, holder.task_id, holder.attempt) == ("s1", task.id, 1)


async def test_registration_returns_the_servers_own_token(yard: Coordinator) -> None:
    reg = Registration("s1", "s1", "test", "http://s1.test/predict", None)
    _, token = await yard.fleet.register_server(reg)
    claims = jwt.decode(token, SECRET, ["HS256"])
    assert (claims["sub"], claims["roles"], claims["srv"]) == ("server:s1", ["service"], "s1")


async def test_a_retryable_failure_is_retried_on_another_server(
    yard: Coordinator, backend: ScriptedBackend
) -> None:
    backend.always[await register(yard, "s1", weight=2.0)] = RETRYABLE  # s1 is picked first
    await register(yard, "s2")
    task = await create(yard)
    await one_pass(yard)
    retried = await read(yard, task)
    assert retried.status is TaskStatus.WAITING and retried.attempt == 1
    await one_pass(yard)
    done = await read(yard, task)
    assert done.status is TaskStatus.FINISHED
    assert [(a.server_id, a.error_code) for a in done.attempts] == [
        ("s1", ErrorCode.BACKEND_ERROR),
        ("s2", None),
    ]


async def test_a_task_fails_after_its_last_attempt(
    yard: Coordinator, backend: ScriptedBackend
) -> None:
    backend.always[await register(yard, "s1")] = RETRYABLE
    task = await create(yard, max_attempts=3)
    for _ in range(3):
        await one_pass(yard)
    failed = await read(yard, task)
    assert failed.status is TaskStatus.FAILED and failed.attempt == 3
    assert failed.error_code == ErrorCode.BACKEND_ERROR
    assert failed.error is not None and failed.error.endswith("(after 3 attempts)")
    # Three failed predicts in a row (the policy's default) also ejected the server.
    server = await yard.fleet.get_server("s1")
    assert server.state is ServerState.EJECTED and server.ejection_reason == "failing"
    assert server.last_error is not None and "3 failed dispatches" in server.last_error


async def test_a_rejected_task_fails_at_once(yard: Coordinator, backend: ScriptedBackend) -> None:
    rejected = PredictReply(ReplyKind.REJECTED, status=422, error="HTTP 422")
    backend.script[await register(yard, "s1")].append(rejected)
    task = await create(yard)
    await one_pass(yard)
    failed = await read(yard, task)
    assert (failed.status, failed.error_code, failed.attempt) == (
        TaskStatus.FAILED,
        ErrorCode.BACKEND_REJECTED,
        1,
    )


async def test_an_async_backend_reports_with_its_callback_token(
    yard: Coordinator, backend: ScriptedBackend
) -> None:
    task = await accepted(yard, backend)
    holder = auth.verify(SECRET, backend.sent[0][1]["callback_token"])
    await yard.tasks.report(task.id, Report(TaskStatus.FINISHED, {"late": True}), principal=holder)
    done = await read(yard, task)
    assert done.status is TaskStatus.FINISHED and done.result == {"late": True}


async def test_a_waiting_client_gets_the_result_as_soon_as_it_is_recorded(
    yard: Coordinator,
) -> None:
    await register(yard, "s1")
    task = await create(yard)
    waiting = asyncio.create_task(yard.reads.wait_task(task.id, principal=ALICE, wait_s=30))
    await asyncio.sleep(0)  # the waiter reads the task (WAITING) and subscribes
    await one_pass(yard)
    assert (await asyncio.wait_for(waiting, 1)).status is TaskStatus.FINISHED


async def test_an_unanswered_attempt_is_retried_after_its_deadline(
    yard: Coordinator, backend: ScriptedBackend
) -> None:
    task = await accepted(yard, backend)
    assert task.deadline_at is not None
    later = task.deadline_at + 1
    await yard.dispatcher.sweep(later)
    swept = await read(yard, task)
    assert (swept.status, swept.attempts[0].error_code) == (TaskStatus.WAITING, ErrorCode.TIMEOUT)
    await one_pass(yard, later)
    assert (await read(yard, task)).status is TaskStatus.FINISHED


async def test_cancel_stops_a_task_and_its_late_report(
    yard: Coordinator, backend: ScriptedBackend
) -> None:
    backend.script[await register(yard, "s1")].append(ACCEPTED)
    finished, running = await create(yard, priority=0), await create(yard, priority=1)
    await one_pass(yard)  # two slots: both go out, the higher priority first (and accepted)
    assert (await read(yard, running)).status is TaskStatus.PROCESSING
    cancelled = await yard.tasks.cancel_task(running.id, principal=ALICE)
    assert cancelled.status is TaskStatus.CANCELLED
    assert (await read(yard, running)).status is TaskStatus.CANCELLED
    holder = auth.verify(SECRET, backend.sent[0][1]["callback_token"])
    with pytest.raises(errors.TaskFinal):
        await yard.tasks.report(running.id, Report(TaskStatus.FINISHED, {}), principal=holder)
    with pytest.raises(errors.TaskFinal):
        await yard.tasks.cancel_task(finished.id, principal=ALICE)


async def test_a_cancelled_waiting_task_is_never_sent(
    yard: Coordinator, backend: ScriptedBackend
) -> None:
    task = await create(yard)
    await yard.tasks.cancel_task(task.id, principal=ALICE)
    await register(yard, "s1")
    await one_pass(yard)
    assert backend.sent == [] and (await read(yard, task)).status is TaskStatus.CANCELLED


class HangingBackend(ScriptedBackend):
    """Takes every predict and never answers it."""

    def __init__(self) -> None:
        super().__init__()
        self.took = asyncio.Event()

    async def predict(self, url: str, payload: dict[str, object], **_: object) -> PredictReply:
        self.took.set()
        await asyncio.Event().wait()
        raise AssertionError("unreachable")


async def test_a_second_stop_signal_cuts_a_grace_already_running_short() -> None:
    """The second SIGTERM may come while `stop` already gives the sends their grace (30 s
    here): it must end that wait, not only a grace still to come."""
    backend = HangingBackend()
    yard = memory_yard(backend)
    yard.config = replace(yard.config, shutdown_grace_s=30.0)
    await register(yard, "s1")
    task = await create(yard)
    await yard.dispatcher.dispatch_due(now_ms())
    await backend.took.wait()
    stopping = asyncio.ensure_future(yard.stop())
    await asyncio.sleep(0)  # `stop` is now waiting for the send
    assert not stopping.done()
    yard.begin_shutdown(hurry=True)
    await asyncio.wait_for(stopping, timeout=5)  # not the 30 s grace
    assert (await read(yard, task)).status is TaskStatus.PROCESSING  # recovered later
