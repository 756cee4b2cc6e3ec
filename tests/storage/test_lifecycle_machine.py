"""A hypothesis state machine over a task's life on the real store (issue 10, item 8): create,
dispatch (the backend answers with a result, a 202, an error or nothing), callbacks for the
current attempt and late ones for superseded attempts, deadline sweeps, cancels, manual
retries and restarts of the coordinator on the same SQLite file, in any order. After every
step: no task is lost, a FINISHED task keeps its result, no task leaves a final state except
by a manual retry, attempt numbers never go back, and a late report changes nothing.

The coordinator's loops are not running: each rule does one thing, at a virtual clock that
only moves forward (deadlines are met by moving it past them)."""

from __future__ import annotations

import asyncio
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import hypothesis.strategies as st
import pytest
from hypothesis import HealthCheck, settings
from hypothesis.stateful import Bundle, RuleBasedStateMachine, invariant, rule

from taskyard import auth, errors
from taskyard.clock import SystemClock, now_ms
from taskyard.config import Settings
from taskyard.domain.coordinator import Coordinator
from taskyard.domain.models import FINAL_STATUSES, Task, TaskOptions, TaskStatus
from taskyard.domain.ports import PredictReply, ReplyKind
from taskyard.domain.registry import Registration
from taskyard.domain.reports import Report
from taskyard.domain_config import coordinator_config
from taskyard.storage.migrate import upgrade
from taskyard.storage.sql import SqlStore
from tests.unit.fakes import ScriptedBackend

SECRET = "machine-secret-" + "x" * 40
BASE_URL = "http://yard.test"
ADMIN = auth.Principal(sub="root", roles=frozenset({auth.ADMIN}))
OWNER = auth.Principal(sub="alice", roles=frozenset({auth.USER}))
SERVERS = ("s1",)  # one: a retried attempt goes back to the server of the one it replaced
TIMEOUT_S = 10.0

REPLIES = {
    "result": PredictReply(ReplyKind.OK, status=200, body={"output": "sync"}),
    "accepted": PredictReply(ReplyKind.ACCEPTED, status=202),
    "error": PredictReply(ReplyKind.RETRYABLE, status=503, error="HTTP 503"),
    "rejected": PredictReply(ReplyKind.REJECTED, status=422, error="HTTP 422"),
    "no answer": PredictReply(ReplyKind.TIMEOUT, error="no answer within 10 s"),
}


@dataclass
class Seen:
    """What the machine last saw of a task."""

    status: TaskStatus
    attempt: int
    result: Any


def service(task_id: str, server_id: str | None, attempt: int) -> auth.Principal:
    """The token a backend calls back with for `attempt` of a task on its server."""
    return auth.Principal(
        sub=f"server:{server_id}",
        roles=frozenset({auth.SERVICE}),
        server_id=server_id,
        task_id=task_id,
        attempt=attempt,
    )


class TaskLifecycle(RuleBasedStateMachine):
    tasks = Bundle("tasks")

    def __init__(self) -> None:
        super().__init__()
        self.loop = asyncio.new_event_loop()
        self.workdir = tempfile.TemporaryDirectory(prefix="taskyard-machine-")
        self.url = f"sqlite:///{Path(self.workdir.name) / 'machine.db'}"
        self.run(upgrade(self.url))
        self.backend = ScriptedBackend()
        self.clock = now_ms()
        self.yard = self.open()
        for server_id in SERVERS:
            reg = Registration(
                server_id,
                server_id,
                "test",
                f"http://{server_id}.test/predict",
                None,
                max_concurrency=2,
                models=("m",),
                cancel_url=f"http://{server_id}.test/cancel",
            )
            self.run(self.yard.fleet.register_server(reg))
        self.seen: dict[str, Seen] = {}

    def run(self, coro: Any) -> Any:
        return self.loop.run_until_complete(coro)

    def open(self) -> Coordinator:
        settings = Settings(
            public_url=BASE_URL, retry_base_s=0.0, retry_max_s=0.0, task_timeout_s=TIMEOUT_S
        )
        return Coordinator(
            store=SqlStore.open(self.url, node_id="n1"),
            client=self.backend,
            tokens=auth.JwtIssuer(SECRET),
            config=coordinator_config(settings, "n1"),
            clock=SystemClock(),
        )

    def teardown(self) -> None:
        self.run(self.yard.store.close())
        self.loop.close()
        self.workdir.cleanup()

    def read(self, task_id: str) -> Task:
        task: Task = self.run(self.yard.reads.get_task(task_id, principal=ADMIN))
        return task

    def tick(self, ms: int = 1) -> int:
        self.clock = max(self.clock + ms, now_ms())
        return self.clock

    # ---- rules -----------------------------------------------------------------------------

    @rule(target=tasks, attempts=st.integers(1, 3))
    def create(self, attempts: int) -> str:
        options = TaskOptions(max_attempts=attempts)
        task = self.run(
            self.yard.tasks.create_task(owner="alice", request={"model": "m"}, options=options)
        )
        self.seen[task.id] = Seen(task.status, task.attempt, None)
        return str(task.id)

    @rule(reply=st.sampled_from(sorted(REPLIES)))
    def dispatch(self, reply: str) -> None:
        for server_id in SERVERS:
            self.backend.always[f"http://{server_id}.test/predict"] = REPLIES[reply]
        self.run(self.yard.dispatcher.dispatch_due(self.tick()))
        self.run(self.yard.dispatcher.sends_recorded())

    @rule(task_id=tasks, finished=st.booleans())
    def callback(self, task_id: str, finished: bool) -> None:
        """The backend running the task's current attempt reports its end."""
        task = self.read(task_id)
        if task.status is not TaskStatus.PROCESSING:
            return
        status = TaskStatus.FINISHED if finished else TaskStatus.FAILED
        report = Report(status=status, body={"output": f"callback {task.attempt}"})
        principal = service(task_id, task.server_id, task.attempt)
        self.run(self.yard.tasks.report(task_id, report, principal=principal))

    @rule(task_id=tasks, finished=st.booleans())
    def late_callback(self, task_id: str, finished: bool) -> None:
        """A backend reports on an attempt that already ended here (timed out, failed,
        cancelled, superseded): refused, and nothing changes."""
        task = self.read(task_id)
        ended = [a for a in task.attempts if a.ended_at is not None]
        if not ended:
            return
        late = ended[-1]
        status = TaskStatus.FINISHED if finished else TaskStatus.FAILED
        report = Report(status=status, body={"output": "late"})
        with pytest.raises(errors.Conflict):
            principal = service(task_id, late.server_id, late.number)
            self.run(self.yard.tasks.report(task_id, report, principal=principal))
        assert self.read(task_id) == task

    @rule()
    def deadlines_pass(self) -> None:
        now = self.tick(int(TIMEOUT_S * 1000) + 1)
        self.run(self.yard.dispatcher.sweep(now))
        self.run(self.yard.dispatcher.send_cancels(now))  # the backends let go of their slots
        self.run(self.yard.dispatcher.sends_recorded())

    @rule(task_id=tasks)
    def cancel(self, task_id: str) -> None:
        before = self.read(task_id).status
        try:
            self.run(self.yard.tasks.cancel_task(task_id, principal=OWNER))
        except errors.Conflict:
            assert before in FINAL_STATUSES
        else:
            assert before not in FINAL_STATUSES

    @rule(task_id=tasks)
    def retry(self, task_id: str) -> None:
        before = self.read(task_id).status
        try:
            self.run(self.yard.tasks.retry_task(task_id, principal=OWNER))
        except errors.Conflict:
            assert before not in (TaskStatus.FAILED, TaskStatus.CANCELLED)
        else:
            assert before in (TaskStatus.FAILED, TaskStatus.CANCELLED)
            self.seen[task_id].status = TaskStatus.WAITING  # the one way out of a final state

    @rule()
    def heartbeat(self) -> None:
        """The backend says it is alive (re-admits it if it was ejected for failing)."""
        for server_id in SERVERS:
            self.run(self.yard.fleet.heartbeat(server_id, principal=ADMIN, load=None))

    @rule()
    def restart(self) -> None:
        self.run(self.yard.store.close())
        self.yard = self.open()

    # ---- what must always hold -------------------------------------------------------------

    @invariant()
    def nothing_lost_and_nothing_regresses(self) -> None:
        for task_id, before in self.seen.items():
            now = self.read(task_id)  # raises if the task was lost
            assert now.attempt >= before.attempt
            if before.status is TaskStatus.FINISHED:
                assert (now.status, now.result) == (TaskStatus.FINISHED, before.result)
            elif before.status in FINAL_STATUSES:
                assert now.status is before.status
            self.seen[task_id] = Seen(now.status, now.attempt, now.result)


TaskLifecycle.TestCase.settings = settings(
    max_examples=40,
    stateful_step_count=30,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
test_task_lifecycle_machine = TaskLifecycle.TestCase
