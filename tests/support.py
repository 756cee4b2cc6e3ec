"""Test helpers: real taskyard and mock-backend processes on 127.0.0.1, and polling."""

from __future__ import annotations

import contextlib
import os
import re
import signal
import socket
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from functools import partial
from pathlib import Path
from typing import Any, Generic, Protocol, Self, TypeVar

import httpx
import jwt
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy.engine import make_url

from tests import pg

SECRET = "test-secret-" + "x" * 40
REPO = Path(__file__).resolve().parent.parent

# Short intervals so the loops act within a test's patience.
FAST_ENV = {
    "TASKYARD_HEALTH_TIMEOUT_S": "1",
    "TASKYARD_HEALTH_INTERVAL_MIN_S": "0.2",
    "TASKYARD_HEALTH_INTERVAL_MAX_S": "1",
    "TASKYARD_HEALTH_RETRIES": "1",
    "TASKYARD_HEALTH_RETRY_DELAY_S": "0.1",
    "TASKYARD_RETRY_BASE_S": "0.05",
    "TASKYARD_RETRY_MAX_S": "0.2",
    "TASKYARD_DISPATCH_POLL_S": "0.1",
    "TASKYARD_CHORES_INTERVAL_S": "0.3",
    "TASKYARD_NODE_TIMEOUT_S": "2",
    "TASKYARD_TASK_TIMEOUT_S": "10",
}


# ---- Databases: every coordinator test runs on both -------------------------------------------

DATABASES = ["sqlite", "postgresql"]  # the `database_url` / `db_kind` fixture params (and ids)


@contextlib.contextmanager
def fresh_database(kind: str, workdir: Path) -> Iterator[str]:
    """The URL of a new empty database of `kind`: a SQLite file in `workdir` (which must not
    hold one yet), or a PostgreSQL database dropped afterwards (see `tests.pg`)."""
    if kind == "sqlite":
        path = workdir / "taskyard.db"
        assert not path.exists(), f"{path} already exists"
        yield f"sqlite:///{path}"
    elif kind == "postgresql":
        with pg.fresh_database() as url:
            yield url
    else:
        raise ValueError(f"unknown database kind {kind!r}")


def query(database_url: str, sql: str) -> list[tuple[Any, ...]]:
    """Rows of a read-only query, straight from the database (not through taskyard)."""
    url = make_url(database_url)
    backend = url.get_backend_name()
    if backend == "sqlite":
        db = sqlite3.connect(f"file:{url.database}?mode=ro", uri=True)
        try:
            return [tuple(row) for row in db.execute(sql)]
        finally:
            db.close()
    if backend == "postgresql":
        return pg.fetch(database_url, sql)
    raise ValueError(f"unsupported database URL {url.drivername!r}")


def count_rows(database_url: str, table: str) -> int:
    """Rows in `table` of the database at `database_url` (SQLite or PostgreSQL)."""
    if not table.isidentifier():
        raise ValueError(f"not a table name: {table!r}")
    return int(query(database_url, f"SELECT COUNT(*) FROM {table}")[0][0])


@contextlib.contextmanager
def writes_blocked(database_url: str, table: str) -> Iterator[None]:
    """While the block runs, no write to `table` gets through (SQLite: to the whole file): a
    database that hangs, from the node's point of view, until the block ends."""
    url = make_url(database_url)
    if url.get_backend_name() == "sqlite":
        db = sqlite3.connect(str(url.database), isolation_level=None)
        try:
            db.execute("BEGIN EXCLUSIVE")
            yield
        finally:
            db.close()  # rolls back
        return
    with pg.locked(database_url, table):
        yield


def table_names(database_url: str) -> set[str]:
    """The tables in the database at `database_url` (PostgreSQL: schema `public`)."""
    if make_url(database_url).get_backend_name() == "sqlite":
        sql = "SELECT name FROM sqlite_master WHERE type = 'table'"
    else:
        sql = "SELECT tablename FROM pg_tables WHERE schemaname = 'public'"
    return {row[0] for row in query(database_url, sql)}


# ---- Processes ---------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def clean_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("TASKYARD_")}
    env.update(extra)
    return env


def wait_for(
    check: Callable[[], Any], *, timeout: float = 15.0, interval: float = 0.05, what: str = ""
) -> Any:
    """Poll `check` until it returns something truthy; fail the test after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        last = check()
        if last:
            return last
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what or check}: last={last!r}")


def last_loop_pass(node: YardCalls, loop: str) -> float:
    """When `loop` ("dispatcher", "chores", "health monitor") last finished an iteration on
    `node` (its /metrics gauge; wall-clock seconds), 0 if never."""
    text = node.admin.get("/metrics").text
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if (
                sample.name == "taskyard_loop_last_success_timestamp_seconds"
                and sample.labels.get("loop") == loop
            ):
                return float(sample.value)
    return 0.0


def long_polls_open(node: YardCalls) -> int:
    """Long polls `node` holds open (its `taskyard_long_polls_open` gauge)."""
    text = node.admin.get("/metrics").text
    found = re.search(r"^taskyard_long_polls_open\{[^}]*\} (\d+)", text, re.MULTILINE)
    return int(found.group(1)) if found else 0


def wait_loop_passes(node: YardCalls, loop: str, passes: int = 2) -> None:
    """Return once `loop` has run `passes` whole iterations that began after this call: the
    positive event a check that something did *not* happen waits for. (The first iteration to
    end may have begun before the call; each later one began after the one before ended.)"""

    def ended_after(since: float) -> float:
        at = last_loop_pass(node, loop)
        return at if at > since else 0.0

    mark = time.time()
    for _ in range(passes + 1):
        mark = wait_for(partial(ended_after, mark), what=f"a {loop} pass")


def until_clear_of_window_edge(window_s: int = 60, margin_s: float = 10.0) -> float:
    """Seconds to wait so that a test's requests fall in one window of a `window_s` rate.

    The sliding-window counter weighs the previous window by how much of it is left and
    floors the sum, so in the first moments of a new window one hit more than the limit is
    admitted (`limits`' documented approximation). A test counting exact admissions starts
    its requests at least `margin_s` before the windows' edge (they align to the epoch)."""
    into = time.time() % window_s
    return 0.0 if into < window_s - margin_s else window_s - into + 0.05


def token(roles: list[str], sub: str = "alice", *, secret: str = SECRET, **claims: Any) -> str:
    payload = {"sub": sub, "roles": roles, "exp": int(time.time()) + 3600, **claims}
    return jwt.encode(payload, secret, algorithm="HS256")


def bearer(tok: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {tok}"}


class Proc:
    """A child process serving HTTP on 127.0.0.1:port."""

    def __init__(self, args: list[str], *, port: int, env: dict[str, str], log: Path) -> None:
        self.args, self.port, self.env, self.log = args, port, env, log
        self.url = f"http://127.0.0.1:{port}"
        self.popen: subprocess.Popen[bytes] | None = None

    def start(self, ready_path: str = "/", timeout: float = 60.0) -> Self:
        with open(self.log, "ab") as out:
            self.popen = subprocess.Popen(
                self.args, env=self.env, stdout=out, stderr=subprocess.STDOUT, cwd=self.log.parent
            )

        def ready() -> bool:
            assert self.popen is not None
            if self.popen.poll() is not None:
                raise AssertionError(f"{self.args} exited early:\n{self.log_tail()}")
            try:
                return httpx.get(self.url + ready_path, timeout=1).status_code < 500
            except httpx.HTTPError:
                return False

        wait_for(ready, timeout=timeout, interval=0.1, what=f"{self.args[2:4]} to listen")
        return self

    def log_tail(self, chars: int = 3000) -> str:
        """The end of the process's output, for an assertion message."""
        return self.log.read_text(errors="replace")[-chars:]

    def kill9(self) -> None:
        if self.popen and self.popen.poll() is None:
            self.popen.send_signal(signal.SIGKILL)
            self.popen.wait(10)

    def stop(self) -> None:
        if self.popen and self.popen.poll() is None:
            self.popen.terminate()
            try:
                self.popen.wait(10)
            except subprocess.TimeoutExpired:
                self.kill9()

    @property
    def running(self) -> bool:
        return self.popen is not None and self.popen.poll() is None


class Backend(Protocol):
    """What a registration needs of a backend: a `MockBackend`, or an in-process `FakeBackend`
    (`tests.inprocess`)."""

    server_id: str
    url: str


class YardCalls:
    """What tests do through a node's API, whether the node is a real process (`Taskyard`) or
    the app in this process (`tests.inprocess.InProcessYard`)."""

    admin: httpx.Client

    def task(self, task_id: str) -> dict[str, Any]:
        response = self.admin.get(f"/api/task/{task_id}")
        assert response.status_code == 200, response.text
        details: dict[str, Any] = response.json()["taskDetails"]
        return details

    def wait_status(self, task_id: str, *statuses: str, timeout: float = 15.0) -> dict[str, Any]:
        def reached() -> dict[str, Any] | None:
            task = self.task(task_id)
            return task if task["status"] in statuses else None

        result: dict[str, Any] = wait_for(reached, timeout=timeout, what=f"{task_id} {statuses}")
        return result

    def server(self, server_id: str) -> dict[str, Any] | None:
        response = self.admin.get(f"/api/servers/{server_id}")
        if response.status_code == 404:
            return None
        assert response.status_code == 200, response.text
        body: dict[str, Any] = response.json()
        return body

    def register(self, backend: Backend, **fields: Any) -> dict[str, Any]:
        body = {
            "id": backend.server_id,
            "endpoints": {"predict": backend.url + "/predict", "health": backend.url + "/health"},
            "provider": "test",
            "name": backend.server_id,
            "max_concurrency": 4,
            **fields,
        }
        response = self.admin.post("/api/servers", json=body)
        assert response.status_code == 200, response.text
        result: dict[str, Any] = response.json()
        return result

    def register_online(self, backend: Backend, **fields: Any) -> dict[str, Any]:
        result = self.register(backend, **fields)
        wait_for(
            lambda: (self.server(backend.server_id) or {}).get("status") == "online",
            what=f"{backend.server_id} online",
        )
        return result

    def submit(self, request: dict[str, Any] | None = None, **params: Any) -> str:
        response = self.admin.post("/api/task", json=request or {"model": "m"}, params=params)
        assert response.status_code == 200, response.text
        task_id: str = response.json()["taskId"]
        return task_id


class Taskyard(Proc, YardCalls):
    """A taskyard coordinator process, with clients for each role."""

    def __init__(
        self, *, database_url: str, workdir: Path, env: dict[str, str], log_level: str = "warning"
    ) -> None:
        port = free_port()
        self.database_url = database_url
        full_env = clean_env(
            TASKYARD_JWT_SECRET=SECRET,
            TASKYARD_DATABASE_URL=database_url,
            TASKYARD_PORT=str(port),
            # One process (the one `popen` is), unless a test asks for workers.
            **{"TASKYARD_WORKERS": "1", **FAST_ENV, **env},
        )
        args = [sys.executable, "-m", "taskyard", "serve", "--log-level", log_level]
        super().__init__(args, port=port, env=full_env, log=workdir / f"taskyard-{port}.log")
        self.admin = httpx.Client(base_url=self.url, headers=bearer(token(["admin"], "root")))

    def client(self, roles: list[str], sub: str = "alice", **claims: Any) -> httpx.Client:
        return httpx.Client(base_url=self.url, headers=bearer(token(roles, sub, **claims)))

    def count_rows(self, table: str) -> int:
        """Rows in `table`, read straight from the database."""
        return count_rows(self.database_url, table)


class MockBackend(Proc):
    """A `taskyard mock-backend` process; `extra` are more CLI args (e.g. `--delay-ms 100`)."""

    def __init__(
        self,
        server_id: str,
        *,
        workdir: Path,
        extra: list[str] | None = None,
        api_key: str | None = None,
    ) -> None:
        port = free_port()
        self.server_id = server_id
        extra = [*(extra or []), *(["--api-key", api_key] if api_key is not None else [])]
        # The key it was started with, however it was given (`api_key=` or in `extra`).
        self.api_key: str | None = None
        if "--api-key" in extra[:-1]:
            self.api_key = extra[extra.index("--api-key") + 1]
        args = [
            sys.executable,
            "-m",
            "taskyard",
            "mock-backend",
            "--port",
            str(port),
            "--server-id",
            server_id,
            *(extra or []),
        ]
        super().__init__(args, port=port, env=clean_env(), log=workdir / f"mock-{server_id}.log")

    def control(self, **controls: Any) -> dict[str, Any]:
        response = httpx.post(self.url + "/control", json=controls, timeout=5)
        assert response.status_code == 200, response.text
        result: dict[str, Any] = response.json()
        return result

    def received(self) -> list[dict[str, Any]]:
        response = httpx.get(self.url + "/received", timeout=5)
        items: list[dict[str, Any]] = response.json()["received"]
        return items

    def cancels(self) -> list[dict[str, Any]]:
        """Every `POST /cancel` it got: task_id, attempt, matched, stopped, status, auth_*."""
        response = httpx.get(self.url + "/cancels", timeout=5)
        assert response.status_code == 200, response.text
        items: list[dict[str, Any]] = response.json()["cancels"]
        return items

    def health_checks(self) -> list[dict[str, Any]]:
        response = httpx.get(self.url + "/health-checks", timeout=5)
        assert response.status_code == 200, response.text
        items: list[dict[str, Any]] = response.json()["checks"]
        return items

    def reset(self) -> dict[str, Any]:
        """Clear the records and put the controls back to the start-up values."""
        response = httpx.post(self.url + "/control/reset", timeout=5)
        assert response.status_code == 200, response.text
        result: dict[str, Any] = response.json()
        return result

    def endpoints(self) -> dict[str, str]:
        """Registration `endpoints` with the cancel URL too (`Taskyard.register` sends only
        predict and health)."""
        return {
            "predict": self.url + "/predict",
            "health": self.url + "/health",
            "cancel": self.url + "/cancel",
        }


# ---- Shared coordinators: one per test module, each test in its own namespace ----------------


def start_taskyard(
    workdir: Path, *, database_url: str | None = None, log_level: str = "warning", **env: Any
) -> Taskyard:
    """Start a coordinator on `database_url` (default: a SQLite file in `workdir`); `env` keys
    as in `taskyard_factory` (e.g. `health_interval_min_s=30`). The caller stops it."""
    node = Taskyard(
        database_url=database_url or f"sqlite:///{workdir / 'taskyard.db'}",
        workdir=workdir,
        env={f"TASKYARD_{k.upper()}": str(v) for k, v in env.items()},
        log_level=log_level,
    )
    try:
        node.start(timeout=60)  # a loaded machine can take long to import everything
    except BaseException:
        node.stop()  # never leave a half-started process behind
        node.admin.close()
        raise
    return node


Y = TypeVar("Y", bound=YardCalls)
B = TypeVar("B", bound=Backend)


class BaseFleet(Generic[Y, B]):
    """One test's servers and tasks on a coordinator that other tests share (`Fleet`: a real
    node and `MockBackend`s; `tests.inprocess.InProcessFleet`: the app in-process and
    `FakeBackend`s).

    Every server it registers serves only `self.model` (unless told otherwise), and its ids
    carry a random tag, so tests sharing the coordinator never take each other's tasks.
    `close()` deletes the servers it registered.
    """

    def __init__(self, yard: Y, mock_factory: Callable[..., B]) -> None:
        import uuid

        self.yard = yard
        self._mock_factory = mock_factory
        self.tag = uuid.uuid4().hex[:8]
        self.model = f"model-{self.tag}"
        self.server_ids: list[str] = []

    def sid(self, name: str) -> str:
        """A server id unique to this test."""
        return f"{name}-{self.tag}"

    def mocks(self, *specs: str | tuple[str, ...]) -> list[B]:
        """Start mock backends in parallel; a spec is a name or (name, *CLI args)."""
        from concurrent.futures import ThreadPoolExecutor

        def start(spec: str | tuple[str, ...]) -> B:
            name, *args = (spec,) if isinstance(spec, str) else spec
            return self._mock_factory(self.sid(name), *args)

        with ThreadPoolExecutor(max_workers=max(1, len(specs))) as pool:
            return list(pool.map(start, specs))

    def _fields(self, backend: B, fields: dict[str, Any]) -> dict[str, Any]:
        fields.setdefault("models", [self.model])
        self.server_ids.append(fields.get("id", backend.server_id))
        return fields

    def register(self, backend: B, **fields: Any) -> dict[str, Any]:
        return self.yard.register(backend, **self._fields(backend, fields))

    def register_online(self, backend: B, **fields: Any) -> dict[str, Any]:
        return self.yard.register_online(backend, **self._fields(backend, fields))

    def register_raw(self, body: dict[str, Any]) -> dict[str, Any]:
        """Register any body (e.g. URLs where nothing listens); `models` defaults to ours."""
        body = {"provider": "test", "name": body["id"], "models": [self.model], **body}
        response = self.yard.admin.post("/api/servers", json=body)
        assert response.status_code == 200, response.text
        self.server_ids.append(body["id"])
        result: dict[str, Any] = response.json()
        return result

    def submit(self, request: dict[str, Any] | None = None, **params: Any) -> str:
        return self.yard.submit(request or {"model": self.model}, **params)

    def close(self) -> None:
        for server_id in dict.fromkeys(self.server_ids):
            self.yard.admin.delete(f"/api/servers/{server_id}")


class Fleet(BaseFleet[Taskyard, MockBackend]):
    """A `BaseFleet` of `MockBackend` processes on a real node."""


def mock_info(backend: MockBackend) -> dict[str, Any]:
    """The mock backend's counters (`GET /info`): in_flight, max_in_flight, completed..."""
    response = httpx.get(backend.url + "/info", timeout=5)
    assert response.status_code == 200, response.text
    info: dict[str, Any] = response.json()
    return info


@contextlib.contextmanager
def running_taskyard(
    workdir: Path, *, database_url: str | None = None, **env: Any
) -> Iterator[Taskyard]:
    """A coordinator for the length of a `with` block, arguments as for `start_taskyard`."""
    node = start_taskyard(workdir, database_url=database_url, **env)
    try:
        yield node
    finally:
        node.stop()
        node.admin.close()


@contextlib.contextmanager
def shared_taskyard(kind: str, workdir: Path, **env: Any) -> Iterator[Taskyard]:
    """A coordinator on its own fresh database of `kind` (module-scoped fixtures use this with
    the `db_kind` fixture). Each coordinator gets its own database: two on one PostgreSQL
    database would form a cluster."""
    with (
        fresh_database(kind, workdir) as url,
        running_taskyard(workdir, database_url=url, **env) as node,
    ):
        yield node
