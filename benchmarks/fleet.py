"""Benchmark fleet: start and stop taskyard and mock-backend processes, throwaway databases,
tokens, CPU accounting.

Shared by `run.py` (end to end) and `health_scale.py`.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import AsyncIterator, Callable, Coroutine, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import Any, TypeVar

import aiohttp
import asyncpg
import jwt
from sqlalchemy.engine import make_url

T = TypeVar("T")

HOST = "127.0.0.1"
SECRET = "taskyard-benchmark-secret-" + "s" * 40  # HS256 key; 40+ characters
FINAL_STATUSES = frozenset({"FINISHED", "FAILED", "CANCELLED"})
CLK_TCK = os.sysconf("SC_CLK_TCK")
PAGE_SIZE = os.sysconf("SC_PAGE_SIZE")
READY_TIMEOUT_S = 60.0
DEFAULT_POSTGRES_URL = "postgresql://postgres@127.0.0.1:5432/test"
DATABASE_PREFIX = "taskyard_bench_"  # fresh PostgreSQL databases; drop leftovers by this prefix


# ---- child processes -----------------------------------------------------------------------


def free_port() -> int:
    """A TCP port nobody listens on right now."""
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        port: int = sock.getsockname()[1]
        return port


# The limits a user's requests pass, set where the load never reaches them: checked on every
# request as they would be in production, never the bottleneck being measured.
LIMITS_ENV = {
    "TASKYARD_RATE_LIMIT_CREATES": "10000000/second",
    "TASKYARD_RATE_LIMIT_REQUESTS": "10000000/second",
    "TASKYARD_MAX_UNFINISHED_TASKS": "10000000",
}


def clean_env(**extra: str) -> dict[str, str]:
    """This process's environment without TASKYARD_* variables, plus `extra`."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("TASKYARD_")}
    env.update(extra)
    return env


@dataclass
class Child:
    """One child process serving HTTP on 127.0.0.1:port, in its own process group."""

    name: str
    popen: subprocess.Popen[bytes]
    port: int
    log: Path

    @property
    def url(self) -> str:
        return f"http://{HOST}:{self.port}"

    @property
    def pid(self) -> int:
        return self.popen.pid

    def log_tail(self, chars: int = 3000) -> str:
        try:
            return self.log.read_text(errors="replace")[-chars:]
        except OSError:
            return ""


class Children:
    """Starts child processes and makes sure every one of them is gone at the end."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.started: list[Child] = []

    def spawn(self, name: str, args: list[str], *, port: int, env: dict[str, str]) -> Child:
        log = self.workdir / f"{name}.log"
        with open(log, "ab") as out:
            popen = subprocess.Popen(
                args,
                env=env,
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                cwd=self.workdir,
                start_new_session=True,  # own process group: Ctrl-C here is ours to forward
            )
        child = Child(name, popen, port, log)
        self.started.append(child)
        return child

    def stop(
        self, child: Child, sig: signal.Signals = signal.SIGINT, grace_s: float = 10.0
    ) -> None:
        """Signal the child's process group, then SIGKILL it if it outlives `grace_s`.

        SIGINT by default: both servers shut down gracefully on it, and uvicorn re-raises it
        after its shutdown, which a cProfile-wrapped coordinator survives to write its profile
        (a re-raised SIGTERM would kill it first).
        """
        if child.popen.poll() is None:
            _signal_group(child.pid, sig)
            try:
                child.popen.wait(grace_s)
            except subprocess.TimeoutExpired:
                pass
        _signal_group(child.pid, signal.SIGKILL)  # leftovers of the group, if any
        if child.popen.poll() is None:
            child.popen.wait(5)
        if child in self.started:  # gone: never signal its (possibly reused) pid again
            self.started.remove(child)

    def stop_all(self) -> None:
        for child in reversed(self.started):
            try:
                self.stop(child)
            except Exception as exc:  # keep stopping the others
                print(f"could not stop {child.name} (pid {child.pid}): {exc}", file=sys.stderr)


def _signal_group(pid: int, sig: signal.Signals) -> None:
    try:
        os.killpg(pid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def taskyard_cmd(*args: str, profile: Path | None = None) -> list[str]:
    """`python -m taskyard ...`, optionally under cProfile writing to `profile`."""
    prefix = [sys.executable]
    if profile is not None:
        prefix += ["-m", "cProfile", "-o", str(profile)]
    return [*prefix, "-m", "taskyard", *args]


def start_mock_backend(
    children: Children,
    server_id: str,
    *,
    delay_ms: float,
    force_async: bool,
    port: int | None = None,
) -> Child:
    """A mock backend on `port` (a free one by default; the same again to restart one)."""
    port = port or free_port()
    args = ["mock-backend", "--port", str(port), "--server-id", server_id]
    args += ["--delay-ms", str(delay_ms)]
    if force_async:
        args.append("--async")
    return children.spawn(f"mock-{server_id}", taskyard_cmd(*args), port=port, env=clean_env())


def start_coordinator(
    children: Children,
    database_url: str,
    *,
    name: str = "taskyard",
    node_id: str | None = None,
    env: dict[str, str] | None = None,
    profile: Path | None = None,
    port: int | None = None,
    workers: int = 1,
) -> Child:
    """One `taskyard serve` on `port` (default: a free one), logging to `<name>.log`;
    callbacks come back to it.

    Several coordinators on one PostgreSQL database are the nodes of one cluster: give each its
    own `node_id`.
    """
    port = port or free_port()
    full_env = clean_env(
        **LIMITS_ENV,
        TASKYARD_JWT_SECRET=SECRET,
        TASKYARD_DATABASE_URL=database_url,
        TASKYARD_PORT=str(port),
        TASKYARD_PUBLIC_URL=f"http://{HOST}:{port}",
        **({"TASKYARD_NODE_ID": node_id} if node_id else {}),
        **(env or {}),
    )
    # The worker count as a setting, not `--workers`: older trees (`observe.py --before`)
    # refuse an unknown option but ignore an unknown variable.
    full_env["TASKYARD_WORKERS"] = str(workers)
    args = taskyard_cmd("serve", "--log-level", "warning", profile=profile)
    return children.spawn(name, args, port=port, env=full_env)


async def wait_ready(
    session: aiohttp.ClientSession, child: Child, path: str, timeout_s: float = READY_TIMEOUT_S
) -> None:
    """Poll `path` until it answers below 500; fail early if the child died."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if child.popen.poll() is not None:
            raise RuntimeError(f"{child.name} exited early:\n{child.log_tail()}")
        try:
            async with session.get(child.url + path) as response:
                if response.status < 500:
                    return
        except aiohttp.ClientError:
            pass
        await asyncio.sleep(0.05)
    raise RuntimeError(f"{child.name} did not listen within {timeout_s} s:\n{child.log_tail()}")


def cpu_seconds(pid: int) -> float:
    """User plus system CPU time so far of a process and its live descendants (the workers
    of `serve --workers`), from /proc/<pid>/stat."""
    try:
        with open(f"/proc/{pid}/stat") as stat:
            fields = stat.read().rsplit(")", 1)[1].split()
        with open(f"/proc/{pid}/task/{pid}/children") as listed:
            children = [int(child) for child in listed.read().split()]
    except FileNotFoundError:  # it ended meanwhile
        return 0.0
    # After the command name: state is field 3 of stat(5), utime 14 and stime 15.
    own = (int(fields[11]) + int(fields[12])) / CLK_TCK
    return own + sum(cpu_seconds(child) for child in children)


def rss_bytes(pid: int) -> int:
    """Resident memory of a process and its live descendants (the workers), from /proc."""
    try:
        with open(f"/proc/{pid}/statm") as statm:
            resident_pages = int(statm.read().split()[1])
        with open(f"/proc/{pid}/task/{pid}/children") as listed:
            children = [int(child) for child in listed.read().split()]
    except FileNotFoundError:  # it ended meanwhile
        return 0
    return resident_pages * PAGE_SIZE + sum(rss_bytes(child) for child in children)


def rss_of(children: Sequence[Child]) -> int:
    return sum(rss_bytes(child.pid) for child in children)


def cpu_of(children: Sequence[Child]) -> float:
    return sum(cpu_seconds(child.pid) for child in children)


def local_postgres_cpu() -> float:
    """CPU time so far of every local PostgreSQL server process (its share of the machine).

    A process that exits between two readings takes its time with it; taskyard's pooled
    connections live through a whole row, so the difference is close.
    """
    total = 0.0
    for stat_path in Path("/proc").glob("[0-9]*/stat"):
        try:
            text = stat_path.read_text()
        except OSError:
            continue  # gone meanwhile
        name = text[text.find("(") + 1 : text.rfind(")")]
        if name == "postgres":
            fields = text.rsplit(")", 1)[1].split()
            total += (int(fields[11]) + int(fields[12])) / CLK_TCK
    return total


def admin_headers(ttl_s: float = 24 * 3600) -> dict[str, str]:
    return _bearer("bench-admin", "admin", ttl_s)


def user_headers(ttl_s: float = 24 * 3600) -> dict[str, str]:
    """A client's token (role `user`): its requests go through the rate limits and the
    unfinished cap, as a user's do (`LIMITS_ENV` sets them out of the load's way)."""
    return _bearer("bench", "user", ttl_s)


def _bearer(sub: str, role: str, ttl_s: float) -> dict[str, str]:
    payload = {"sub": sub, "roles": [role], "exp": int(time.time() + ttl_s)}
    return {"Authorization": "Bearer " + jwt.encode(payload, SECRET, algorithm="HS256")}


def raise_on_sigterm() -> None:
    """Turn SIGTERM into SystemExit so that `finally` blocks stop the children."""

    def handler(_signum: int, _frame: FrameType | None) -> None:
        raise SystemExit(143)

    signal.signal(signal.SIGTERM, handler)


# ---- PostgreSQL databases ------------------------------------------------------------------


def postgres_server_url() -> str:
    """The server for fresh databases: TASKYARD_TEST_POSTGRES_URL, as for the tests."""
    return os.environ.get("TASKYARD_TEST_POSTGRES_URL", DEFAULT_POSTGRES_URL)


def _dsn(url: str) -> str:
    """asyncpg wants a plain postgresql:// URL, without a SQLAlchemy driver suffix."""
    return make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)


async def postgres_execute(server_url: str, sql: str) -> None:
    """Run one statement on a connection to the server's given database."""
    conn = await asyncpg.connect(_dsn(server_url), timeout=5)
    try:
        await conn.execute(sql)
    finally:
        await conn.close()


async def postgres_unreachable(server_url: str) -> str:
    """Why the server cannot be used, or "" when it can."""
    try:
        await postgres_execute(server_url, "SELECT 1")
    except (OSError, asyncpg.PostgresError, TimeoutError) as exc:
        shown = make_url(server_url).render_as_string(hide_password=True)
        return f"PostgreSQL at {shown} is not reachable: {exc!r}"
    return ""


@asynccontextmanager
async def fresh_postgres_database(server_url: str) -> AsyncIterator[str]:
    """A new empty database on the server; its URL. Dropped at the end, with any connections
    left to it, also when the benchmark fails or is interrupted."""
    name = DATABASE_PREFIX + uuid.uuid4().hex[:12]
    await postgres_execute(server_url, f'CREATE DATABASE "{name}"')
    try:
        yield make_url(_dsn(server_url)).set(database=name).render_as_string(hide_password=False)
    finally:
        try:
            await postgres_execute(server_url, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        except BaseException:
            print(f"could not drop database {name}; drop it by hand", file=sys.stderr)
            raise


@asynccontextmanager
async def fresh_database(kind: str, *, postgres_url: str, sqlite_path: Path) -> AsyncIterator[str]:
    """A fresh database of `kind`: a SQLite file at `sqlite_path` (which must not exist yet),
    or a new database on the PostgreSQL server `postgres_url`, dropped at the end."""
    if kind == "postgresql":
        async with fresh_postgres_database(postgres_url) as url:
            yield url
    elif kind == "sqlite":
        if sqlite_path.exists():
            raise FileExistsError(f"{sqlite_path} is not a fresh database")
        yield f"sqlite:///{sqlite_path}"
    else:
        raise ValueError(f"unknown database kind {kind!r}")


# ---- servers --------------------------------------------------------------------------------


def server_body(
    server_id: str, backend_url: str, *, capacity: int, is_async: bool
) -> dict[str, Any]:
    return {
        "id": server_id,
        "endpoints": {"predict": backend_url + "/predict", "health": backend_url + "/health"},
        "provider": "bench",
        "name": server_id,
        "async": is_async,
        "max_concurrency": capacity,
        "models": [],
    }


async def register(
    session: aiohttp.ClientSession, base: str, headers: dict[str, str], body: dict[str, Any]
) -> None:
    async with session.post(f"{base}/api/servers", json=body, headers=headers) as response:
        if response.status != 200:
            raise RuntimeError(
                f"registering {body['id']}: {response.status} {await response.text()}"
            )


async def list_servers(
    session: aiohttp.ClientSession, base: str, headers: dict[str, str]
) -> list[dict[str, Any]]:
    async with session.get(f"{base}/api/servers", headers=headers) as response:
        response.raise_for_status()
        servers: list[dict[str, Any]] = (await response.json())["servers"]
        return servers


async def wait_online(
    session: aiohttp.ClientSession,
    base: str,
    headers: dict[str, str],
    count: int,
    timeout_s: float = 120.0,
    poll_s: float = 0.2,
) -> None:
    """Wait until `count` servers are registered and online."""
    deadline = time.monotonic() + timeout_s
    online = 0
    while time.monotonic() < deadline:
        servers = await list_servers(session, base, headers)
        online = sum(1 for s in servers if s["status"] == "online")
        if online >= count:
            return
        await asyncio.sleep(poll_s)
    raise RuntimeError(f"only {online} of {count} servers online after {timeout_s} s")


async def register_backends(
    session: aiohttp.ClientSession,
    base: str,
    headers: dict[str, str],
    backends: Sequence[Child],
    *,
    capacity: int,
    is_async: bool,
) -> None:
    """Register backend i as server `b<i>` through the node at `base`; wait until all are
    online."""
    for i, backend in enumerate(backends):
        body = server_body(f"b{i}", backend.url, capacity=capacity, is_async=is_async)
        await register(session, base, headers, body)
    await wait_online(session, base, headers, len(backends))


def run_in_workdir(
    prefix: str, *, keep: bool, bench: Callable[[Children, Path], Coroutine[Any, Any, T]]
) -> T | None:
    """Run `bench` with a fresh temp dir and child-process set; always stop the children and
    remove the dir (unless `keep`). Returns None when interrupted."""
    raise_on_sigterm()
    workdir = Path(tempfile.mkdtemp(prefix=prefix))
    children = Children(workdir)
    try:
        return asyncio.run(bench(children, workdir))
    except KeyboardInterrupt:
        print("interrupted; stopping the child processes", file=sys.stderr)
        return None
    finally:
        children.stop_all()  # a profiled coordinator writes its profile on the way out
        if keep:
            print(f"kept {workdir}", file=sys.stderr)
        else:
            shutil.rmtree(workdir, ignore_errors=True)
