"""Statistics (`/api/stats`, `/api/stats/hourly`, `/api/stats/servers/{id}`, issue 8 item 2)
end to end: a scripted run through real mock backends (tasks that finish, fail with known
codes, time out, are cancelled, wait with no server), then exact counts, on SQLite and on
PostgreSQL. On PostgreSQL the run goes through two nodes sharing the database, which must give
the same answer."""

from __future__ import annotations

import time
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests import pg
from tests.cluster import running_cluster
from tests.support import MockBackend, Taskyard, mock_info, shared_taskyard, token, wait_for

HOUR_MS = 3_600_000
MINUTE_MS = 60_000
# Servers stay in rotation however often they fail (their failures are the point), so the
# run never waits for a server to come back online.
# Timed-out attempts hold their slot only briefly: the test waits for every server idle.
ENV = {"eject_after_failures": 1000, "eject_after_rejections": 1000, "slot_grace_s": 1}

M_OK, M_BAD, M_SLOW, M_HANG = "m-ok", "m-bad", "m-slow", "m-hang"
M_SHARED = "m-shared"  # served by the bad server (preferred: weight) and the ok one
M_GONE = "m-gone"  # no server: its tasks time out in the queue or are cancelled
M_ORPHAN = "m-orphan"  # no server: its tasks are left WAITING

# What the scripted run must leave behind, counted by hand.
MOVED = 1  # M_SHARED, max_attempts=2: fails on the bad server, then finishes on the ok one
FINISHED_OK = 5 + MOVED  # on the ok server
FAILED_BAD = 3  # backend_error: two with max_attempts=1, one with max_attempts=2 (2 attempts)
BAD_ATTEMPTS = 4 + MOVED
TIMED_OUT = 2  # timeout, on the slow server, max_attempts=1
QUEUE_TIMED_OUT = 2  # no_capacity_deadline, never started
CANCELLED_WAITING = 1
CANCELLED_RUNNING = 1  # on the hanging server
ORPHANS = 3
CREATED = (
    FINISHED_OK
    + FAILED_BAD
    + TIMED_OUT
    + QUEUE_TIMED_OUT
    + CANCELLED_WAITING
    + CANCELLED_RUNNING
    + ORPHANS
)
FAILED = FAILED_BAD + TIMED_OUT + QUEUE_TIMED_OUT
BY_STATUS = {
    "WAITING": ORPHANS,
    "PROCESSING": 0,
    "FINISHED": FINISHED_OK,
    "FAILED": FAILED,
    "CANCELLED": CANCELLED_WAITING + CANCELLED_RUNNING,
}
BY_OUTCOME = {
    "backend_error": BAD_ATTEMPTS,
    "cancelled": CANCELLED_RUNNING,
    "ok": FINISHED_OK,
    "timeout": TIMED_OUT,
}
STARTED_ATTEMPTS = FINISHED_OK + BAD_ATTEMPTS + TIMED_OUT + CANCELLED_RUNNING
PROCESSED = FINISHED_OK + FAILED_BAD + TIMED_OUT  # started, then FINISHED or FAILED


@pytest.fixture(scope="module")
def nodes(db_kind: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[list[Taskyard]]:
    """SQLite: one node. PostgreSQL: two nodes on one database."""
    workdir = tmp_path_factory.mktemp(f"stats-{db_kind}")
    if db_kind == "sqlite":
        with shared_taskyard(db_kind, workdir, **ENV) as node:
            yield [node]
    else:
        with pg.fresh_database() as url, running_cluster(url, workdir, size=2, **ENV) as cluster:
            yield cluster.nodes


MOCKS = {
    M_OK: ("ok", "--delay-ms", "20"),
    M_BAD: ("bad", "--error-rate", "1"),
    M_SLOW: ("slow", "--delay-ms", "1200"),
    M_HANG: ("hang",),
}


@pytest.fixture(scope="module")
def mocks(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Future[dict[str, MockBackend]]]:
    """The run's mock backends (model → mock), started in the background while the first
    nodes start (`run` asks for this fixture first, so it is set up before them). Both
    databases' runs use them: they keep no state that a run's checks read."""
    workdir: Path = tmp_path_factory.mktemp("mocks")
    started: list[MockBackend] = []

    def start(spec: tuple[str, ...]) -> MockBackend:
        name, *extra = spec
        backend = MockBackend(name, workdir=workdir, extra=extra)
        started.append(backend)
        return backend.start("/health")

    def start_all() -> dict[str, MockBackend]:
        with ThreadPoolExecutor(max_workers=len(MOCKS)) as pool:
            return dict(zip(MOCKS, pool.map(start, MOCKS.values()), strict=True))

    pool = ThreadPoolExecutor(max_workers=1)
    future = pool.submit(start_all)
    try:
        yield future
    finally:
        pool.shutdown(wait=True)
        for backend in started:
            backend.stop()


@dataclass
class Run:
    nodes: list[Taskyard]
    started_at: int  # epoch ms, before the first create
    servers: dict[str, MockBackend]  # model → its server's mock
    tasks: dict[str, list[str]] = field(default_factory=dict)  # kind → task ids
    ended_at: int = 0

    def server_id(self, model: str) -> str:
        return self.servers[model].server_id


def create(node: Taskyard, model: str, **params: Any) -> str:
    response = node.admin.post("/api/task", json={"model": model}, params=params)
    assert response.status_code == 200, response.text
    task_id: str = response.json()["taskId"]
    return task_id


@pytest.fixture(scope="module")
def run(mocks: Future[dict[str, MockBackend]], nodes: list[Taskyard]) -> Run:
    """The scripted run, through every node in turn; returns once everything has settled."""
    servers = mocks.result(timeout=60)
    servers[M_HANG].control(hang=True)
    first = nodes[0]
    for model, backend in servers.items():
        fields: dict[str, Any] = {"models": [model], "max_concurrency": 4}
        if model in (M_OK, M_BAD):
            fields = {"models": [model, M_SHARED], "max_concurrency": 4}
        if model == M_BAD:
            fields["weight"] = 10  # an idle bad server is chosen before an idle ok one
        first.register_online(backend, **fields)
    r = Run(nodes=nodes, started_at=int(time.time() * 1000), servers=servers)
    turn = iter(range(10_000))

    def node() -> Taskyard:
        return nodes[next(turn) % len(nodes)]

    def make(kind: str, model: str, n: int, **params: Any) -> list[str]:
        made = [create(node(), model, **params) for _ in range(n)]
        r.tasks.setdefault(kind, []).extend(made)
        return made

    # First, while every server is idle: the bad server wins the first attempt, the ok one
    # (untried) the second.
    (moved,) = make("moved", M_SHARED, MOVED, max_attempts=2)
    first.wait_status(moved, "FINISHED")
    make("finished", M_OK, FINISHED_OK - MOVED)
    make("backend_error", M_BAD, FAILED_BAD - 1, max_attempts=1)
    make("backend_error", M_BAD, 1, max_attempts=2)
    make("timeout", M_SLOW, TIMED_OUT, timeout_s=0.5, max_attempts=1)
    make("no_capacity", M_GONE, QUEUE_TIMED_OUT, queue_timeout_s=0.3)
    make("orphan", M_ORPHAN, ORPHANS)
    (waiting,) = make("cancelled", M_GONE, CANCELLED_WAITING)
    cancel(node(), waiting)
    (running,) = make("cancelled", M_HANG, CANCELLED_RUNNING, timeout_s=60)
    first.wait_status(running, "PROCESSING")
    wait_for(lambda: mock_info(servers[M_HANG])["in_flight"] == 1, what="the hanging predict")
    cancel(node(), running)
    servers[M_HANG].control(hang=False)  # its late answer must count for nothing

    expected = {
        "finished": ("FINISHED", None),
        "moved": ("FINISHED", None),
        "backend_error": ("FAILED", "backend_error"),
        "timeout": ("FAILED", "timeout"),
        "no_capacity": ("FAILED", "no_capacity_deadline"),
        "cancelled": ("CANCELLED", None),
        "orphan": ("WAITING", None),
    }
    for kind, task_ids in r.tasks.items():
        status, code = expected[kind]
        for task_id in task_ids:
            task = first.wait_status(task_id, status)
            assert task["errorCode"] == code, task
    # Settled: the late answers are in (the hanging one, the slow ones) and every server is
    # back to idle, as every node sees it.
    for backend in servers.values():
        wait_for(partial(mock_idle, backend), what=f"{backend.server_id} idle")
    for each in nodes:
        wait_for(partial(idle, each), what="every server online and idle")
    r.ended_at = int(time.time() * 1000)
    return r


def cancel(node: Taskyard, task_id: str) -> None:
    response = node.admin.post(f"/api/task/{task_id}/cancel")
    assert response.status_code == 200, response.text


def mock_idle(backend: MockBackend) -> bool:
    return bool(mock_info(backend)["in_flight"] == 0)


def idle(node: Taskyard) -> bool:
    servers = get(node, "/api/stats")["serverStats"]
    return len(servers) == 4 and all(
        s["status"] == "online" and s["inFlight"] == 0 for s in servers
    )


def get(node: Taskyard, path: str, **params: Any) -> dict[str, Any]:
    response = node.admin.get(path, params=params)
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


def test_overview_counts_exactly_what_happened(run: Run) -> None:
    """/api/stats after the run: counts by status, throughput, attempt outcomes, latency
    counts, queues and capacity per model, servers, models that wait with no server."""
    for node in run.nodes:
        stats = get(node, "/api/stats")
        assert stats["generatedAt"] >= run.ended_at
        assert stats["tasks"]["byStatus"] == BY_STATUS

        throughput = stats["throughput"]
        for window in ("15m", "1h"):  # the run took well under 15 minutes
            assert throughput[window]["finished"] == FINISHED_OK, window
            assert throughput[window]["failed"] == FAILED, window
        assert throughput["1h"]["finishedPerMin"] == round(FINISHED_OK / 60, 2)
        assert throughput["1h"]["failedPerMin"] == round(FAILED / 60, 2)
        assert throughput["15m"]["failedPerMin"] == round(FAILED / 15, 2)
        per_minute = throughput["perMinute"]
        assert len(per_minute) == 60
        assert [m["minute"] for m in per_minute] == sorted(m["minute"] for m in per_minute)
        assert per_minute[-1]["minute"] == stats["generatedAt"] // MINUTE_MS * MINUTE_MS
        assert sum(m["created"] for m in per_minute) == CREATED
        assert sum(m["finished"] for m in per_minute) == FINISHED_OK
        assert sum(m["failed"] for m in per_minute) == FAILED
        assert 0 <= throughput["1m"]["finished"] <= FINISHED_OK

        assert stats["attempts"] == {"windowS": 3600, "byOutcome": BY_OUTCOME}

        latency = stats["latency"]
        assert latency["windowS"] == 900
        assert latency["queueWaitMs"]["count"] == STARTED_ATTEMPTS
        assert latency["processingMs"]["count"] == PROCESSED
        for p in (latency["queueWaitMs"], latency["processingMs"]):
            assert p["p50"] is not None and p["p95"] is not None
            assert 0 < p["p50"] <= p["p95"]
        # The slow server held its two tasks for 0.5 s before they timed out: the slowest
        # twentieth of the processing times is at least that (log buckets: within ~10%).
        assert latency["processingMs"]["p95"] >= 0.5 * 1000 * 0.9

        queue = {q["model"]: q for q in stats["queue"]}
        assert set(queue) == {M_OK, M_BAD, M_SHARED, M_SLOW, M_HANG, M_ORPHAN}
        assert queue[M_ORPHAN] == {
            "model": M_ORPHAN,
            "waiting": ORPHANS,
            "due": ORPHANS,
            "inFlight": 0,
            "capacity": 0,
            "servers": 0,
            "serversOnline": 0,
        }
        for model in (M_OK, M_BAD, M_SLOW, M_HANG):
            assert queue[model] == {
                "model": model,
                "waiting": 0,
                "due": 0,
                "inFlight": 0,
                "capacity": 4,
                "servers": 1,
                "serversOnline": 1,
            }
        assert queue[M_SHARED] == {
            "model": M_SHARED,
            "waiting": 0,
            "due": 0,
            "inFlight": 0,
            "capacity": 8,
            "servers": 2,
            "serversOnline": 2,
        }

        by_state = {"online": 4, "offline": 0, "ejected": 0, "draining": 0, "maintenance": 0}
        assert stats["servers"] == {
            "total": 4,
            "online": 4,
            "offline": 0,
            "busy": 0,
            "byState": by_state,
        }
        per_server = {s["id"]: s for s in stats["serverStats"]}
        attempts = {
            M_OK: (FINISHED_OK, 0),
            M_BAD: (BAD_ATTEMPTS, BAD_ATTEMPTS),
            M_SLOW: (TIMED_OUT, TIMED_OUT),
            M_HANG: (CANCELLED_RUNNING, CANCELLED_RUNNING),
        }
        assert set(per_server) == {run.server_id(m) for m in attempts}
        for model, (total, failures) in attempts.items():
            s = per_server[run.server_id(model)]
            assert (s["attempts"], s["failures"]) == (total, failures), model
            assert s["status"] == "online" and s["inFlight"] == 0 and s["maxConcurrency"] == 4
            assert (s["p50LatencyMs"] is not None) == (model == M_OK), model

        assert stats["modelsWithoutServer"] == [{"model": M_ORPHAN, "waiting": ORPHANS}]


def test_hourly_counts_the_run_in_its_hour(run: Run) -> None:
    """/api/stats/hourly: 24 hours, oldest first; the run's tasks in the hour they happened."""
    for node in run.nodes:
        hours = get(node, "/api/stats/hourly")["hours"]
        now = int(time.time() * 1000)
        assert len(hours) == 24
        starts = [h["hour"] for h in hours]
        assert starts == list(range(starts[0], starts[0] + 24 * HOUR_MS, HOUR_MS))
        assert starts[-1] in (now // HOUR_MS * HOUR_MS, (now // HOUR_MS - 1) * HOUR_MS)
        totals = {k: sum(h[k] for h in hours) for k in ("created", "finished", "failed")}
        assert totals == {"created": CREATED, "finished": FINISHED_OK, "failed": FAILED}
        if run.started_at // HOUR_MS == now // HOUR_MS:  # the run did not straddle an hour
            last = hours[-1]
            assert (last["created"], last["finished"], last["failed"]) == (
                CREATED,
                FINISHED_OK,
                FAILED,
            )
            assert last["meanProcessingMs"] is not None and last["meanProcessingMs"] > 0
            assert all(h["meanProcessingMs"] is None for h in hours[:-1])
        for h in hours:  # a mean needs a task that started and ended in that hour
            if h["finished"] + h["failed"] == 0:
                assert h["meanProcessingMs"] is None, h


def test_each_server_counts_its_own_attempts(run: Run) -> None:
    """/api/stats/servers/{id}: attempts, successes, failures by code, latency, state, and the
    recent attempts with their outcome, for each server of the run."""
    moved = set(run.tasks["moved"])  # its first attempt on the bad server, its second on ok
    bad_ids = set(run.tasks["backend_error"]) | moved
    expected = {
        M_OK: (FINISHED_OK, FINISHED_OK, {}, set(run.tasks["finished"]) | moved),
        M_BAD: (BAD_ATTEMPTS, 0, {"backend_error": BAD_ATTEMPTS}, bad_ids),
        M_SLOW: (TIMED_OUT, 0, {"timeout": TIMED_OUT}, set(run.tasks["timeout"])),
        M_HANG: (1, 0, {"cancelled": 1}, {run.tasks["cancelled"][-1]}),
    }
    for node in run.nodes:
        for model, (attempts, successes, failures, task_ids) in expected.items():
            server_id = run.server_id(model)
            s = get(node, f"/api/stats/servers/{server_id}")
            assert s["serverId"] == server_id
            assert s["windowS"] == 3600
            assert (s["attempts"], s["successes"], s["failures"]) == (
                attempts,
                successes,
                failures,
            ), model
            assert s["latencyMs"]["count"] == successes, model
            assert (s["latencyMs"]["p50"] is None) == (successes == 0), model
            assert s["inFlight"] == 0 and s["maxConcurrency"] == 4
            assert s["status"] == "online"
            assert s["lastCheckAt"] is not None

            recent = s["recentAttempts"]
            assert len(recent) == attempts, model
            assert {a["taskId"] for a in recent} == task_ids, model
            assert all(a["endedAt"] is not None for a in recent), model
            started = [a["startedAt"] for a in recent]
            assert started == sorted(started, reverse=True), "newest first"
            codes = sorted(str(a["errorCode"]) for a in recent)
            if model == M_OK:
                assert codes == ["None"] * attempts and all(a["error"] is None for a in recent)
            elif model == M_HANG:
                assert codes == ["None"] and recent[0]["error"] == "cancelled"
            else:
                assert codes == sorted(failures) * attempts
            numbers = sorted(a["attempt"] for a in recent)
            if model == M_BAD:  # the retried task's attempts 1 and 2, the moved task's 1
                assert numbers == [1] * (attempts - 1) + [2], numbers
            if model == M_OK:  # the moved task's second attempt
                assert numbers == [1] * (attempts - 1) + [2], numbers

        # A narrower window counts the same run (it happened within the last few minutes).
        narrow = get(node, f"/api/stats/servers/{run.server_id(M_OK)}", window_min=15)
        assert narrow["windowS"] == 900 and narrow["attempts"] == FINISHED_OK


def test_unknown_server_and_bad_window(run: Run) -> None:
    for node in run.nodes:
        response = node.admin.get("/api/stats/servers/no-such-server")
        assert response.status_code == 404, response.text
        assert "error" in response.json()
        server = f"/api/stats/servers/{run.server_id(M_OK)}"
        for window in (0, -1, 24 * 60 + 1, "abc"):
            response = node.admin.get(server, params={"window_min": window})
            assert response.status_code == 400, (window, response.text)
        response = node.admin.get("/api/stats/servers/bad%20id")
        assert response.status_code in (400, 404), response.text


def test_stats_are_for_admins_only(run: Run) -> None:
    """A user's token is 403 on all three routes (and a service's); no token is 401."""
    node = run.nodes[0]
    paths = ["/api/stats", "/api/stats/hourly", f"/api/stats/servers/{run.server_id(M_OK)}"]
    for roles in (["user"], ["service"]):
        headers = {"Authorization": f"Bearer {token(roles, 'someone')}"}
        for path in paths:
            response = httpx.get(node.url + path, headers=headers)
            assert response.status_code == 403, (roles, path, response.text)
    for path in paths:
        assert httpx.get(node.url + path).status_code == 401, path


def comparable(body: dict[str, Any]) -> dict[str, Any]:
    """A stats answer without what changes on its own between two reads: the time it was
    made, and a server's last health check (every second or so)."""
    return {k: v for k, v in body.items() if k not in ("generatedAt", "lastCheckAt")}


def test_every_node_gives_the_same_answer(run: Run) -> None:
    """Every node answers the same statistics, read from the database (with one node, two
    reads agree: the answer is the database's, not a process's)."""
    nodes = run.nodes if len(run.nodes) > 1 else run.nodes * 2
    paths = ["/api/stats", "/api/stats/hourly"] + [
        f"/api/stats/servers/{run.server_id(m)}" for m in (M_OK, M_BAD, M_SLOW, M_HANG)
    ]

    def same_minute_reads() -> list[list[dict[str, Any]]] | None:
        # The windows are whole minutes: reads on both sides of a minute's end may differ.
        before = time.time() // 60
        answers = [[get(node, path) for node in nodes] for path in paths]
        return answers if time.time() // 60 == before else None

    answers = wait_for(same_minute_reads, what="reads within one minute")
    for path, per_node in zip(paths, answers, strict=True):
        first, *others = [comparable(a) for a in per_node]
        for other in others:
            assert other == first, path
