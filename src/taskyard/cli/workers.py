"""`taskyard serve --workers N`: N processes on one machine, one listening socket.

One Python process runs on one core. The supervisor (this module) migrates the database once,
binds the port, and starts N workers (`taskyard serve` with the socket handed over); each
worker is a node of its own (id `<node id>-w<i>`) on the one database, so the cluster's rules
hold between them as between machines: claims under the dispatch lock (SQLite: its write lock),
one holder of the chores, `max_concurrency` counted in the database, and a worker that dies is
a node that died: the others take over its health checks and send its unanswered attempts
again. The kernel spreads connections over the workers. On SQLite the workers tell each other
about changes through Unix datagrams (`storage/peerbus.py`); on PostgreSQL through
LISTEN/NOTIFY, as nodes do.

The supervisor passes each stop signal on to every worker (a second one hurries them, as for a
single node), and starts a worker again if it dies while the others serve (under a new id: the
old one's attempts are recovered as a dead node's). It exits 0 once every worker has stopped.
"""

from __future__ import annotations

import asyncio
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from types import FrameType

from sqlalchemy.engine import make_url

from taskyard.config import Settings

log = logging.getLogger(__name__)

POLL_S = 0.2  # how often the supervisor looks at its workers
RESTART_PAUSE_S = 1.0  # between a worker's death and its replacement
STARTUP_FAILURE = 3  # a worker's exit status for a broken configuration: not restarted
PR_SET_PDEATHSIG = 1  # prctl(2)


def worker_count(settings: Settings) -> int:
    return settings.workers or os.cpu_count() or 1


def listening_socket(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    sock.listen(2048)
    sock.set_inheritable(True)
    return sock


def settings_env(settings: Settings) -> dict[str, str]:
    """The settings as `TASKYARD_*` variables: a worker configures itself exactly as its
    supervisor was configured (secrets included: they pass in the environment, never argv)."""
    env: dict[str, str] = {}
    for name, value in settings.model_dump().items():
        if value is None:
            continue
        text = ("true" if value else "false") if isinstance(value, bool) else str(value)
        env[f"TASKYARD_{name.upper()}"] = text
    return env


def die_with_parent() -> None:
    """In a worker: be sent SIGTERM when the supervisor dies (even by kill -9), so that no
    worker is left serving on its own (Linux; elsewhere a no-op)."""
    if not sys.platform.startswith("linux"):
        return
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


@dataclass
class Worker:
    index: int
    node_id: str
    process: subprocess.Popen[bytes]


@dataclass
class Supervisor:
    settings: Settings
    count: int
    log_level: str
    access_log: bool
    signals: int = 0  # stop signals received
    restarts: dict[int, int] = field(default_factory=dict)  # by worker index
    workers: list[Worker] = field(default_factory=list)

    def run(self) -> int:
        from taskyard.domain.coordinator import Coordinator
        from taskyard.storage.migrate import upgrade

        try:
            asyncio.run(upgrade(self.settings.database_url))  # once, not N times in a race
        except Exception as exc:
            where = make_url(self.settings.database_url).render_as_string(hide_password=True)
            log.error("cannot migrate the database at %s: %s: %s", where, type(exc).__name__, exc)
            return STARTUP_FAILURE
        sock = listening_socket(self.settings.host, self.settings.port)
        sqlite = make_url(self.settings.database_url).get_backend_name() == "sqlite"
        bus_dir = tempfile.mkdtemp(prefix="taskyard-workers-") if sqlite else ""
        self._base_id = self.settings.node_id or Coordinator.new_node_id()
        self._env = {
            **os.environ,
            **settings_env(self.settings),
            "TASKYARD_WORKERS": "1",
            "TASKYARD_WORKER_BUS_DIR": bus_dir,
        }
        self._sock = sock
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, self._on_signal)
        self.workers = [self._start(i) for i in range(self.count)]
        log.info("serving with %d workers on %s:%d", self.count, *sock.getsockname()[:2])
        try:
            return self._watch()
        finally:
            sock.close()
            if bus_dir:
                shutil.rmtree(bus_dir, ignore_errors=True)

    def _start(self, index: int) -> Worker:
        restarts = self.restarts.get(index, 0)
        node_id = f"{self._base_id}-w{index}" + (f"r{restarts}" if restarts else "")
        fd = self._sock.fileno()
        args = [sys.executable, "-m", "taskyard", "serve", "--worker-fd", str(fd)]
        args += ["--log-level", self.log_level]
        args.append("--access-log" if self.access_log else "--no-access-log")
        env = {**self._env, "TASKYARD_NODE_ID": node_id}
        # A process group of its own: a terminal's Ctrl-C reaches the supervisor only, which
        # passes it on once (a second copy would be taken as the hurried stop).
        process = subprocess.Popen(args, env=env, pass_fds=(fd,), process_group=0)
        return Worker(index, node_id, process)

    def _on_signal(self, sig: int, _frame: FrameType | None) -> None:
        self.signals += 1
        for worker in self.workers:
            if worker.process.poll() is None:
                worker.process.send_signal(sig)

    def _watch(self) -> int:
        while True:
            if self.signals:
                if all(w.process.poll() is not None for w in self.workers):
                    codes = {w.process.returncode for w in self.workers}
                    return 0 if codes <= {0} else 1
            else:
                for worker in [w for w in self.workers if w.process.poll() is not None]:
                    if worker.process.returncode == STARTUP_FAILURE:
                        log.error("worker %s cannot start; stopping", worker.node_id)
                        self._on_signal(signal.SIGTERM, None)
                        self._wait_all()
                        return STARTUP_FAILURE
                    log.warning(
                        "worker %s exited (status %s); starting it again",
                        worker.node_id,
                        worker.process.returncode,
                    )
                    time.sleep(RESTART_PAUSE_S)
                    self.restarts[worker.index] = self.restarts.get(worker.index, 0) + 1
                    self.workers[self.workers.index(worker)] = self._start(worker.index)
            time.sleep(POLL_S)

    def _wait_all(self) -> None:
        for worker in self.workers:
            worker.process.wait()
