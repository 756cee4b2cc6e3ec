"""Change notices between the worker processes of one machine on one SQLite file.

SQLite has no LISTEN/NOTIFY, and the workers of `taskyard serve --workers N` (cli/workers.py)
need to tell each other what PostgreSQL nodes tell each other (`storage/notify.py`): tasks that
became final (a long poll held by another worker answers at once), new work, server and node
changes. Each worker binds a Unix datagram socket named after its node id in a directory the
supervisor made; a notice is one datagram to every other socket there, in PgBus's format.

Notices go out after the change they announce is committed (the callers publish after their
writes), and as with PgBus they only save waiting: a lost datagram (a full queue, a worker
restarting) delays work until the next poll, never loses it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
from pathlib import Path

from taskyard.domain.ports import ClusterHandlers
from taskyard.storage.notices import Notices, on_notice

log = logging.getLogger(__name__)

MAX_DATAGRAM = 65_536  # bytes read per datagram; notices are chunked well below it
SOCKET_SUFFIX = ".sock"


class SocketBus(Notices):
    def __init__(self, directory: str, *, node_id: str) -> None:
        super().__init__(node_id)
        self._dir = Path(directory)
        self._path = self._dir / f"{node_id}{SOCKET_SUFFIX}"
        self._sock: socket.socket | None = None
        self._handlers: ClusterHandlers | None = None

    @property
    def listening(self) -> bool:
        return self._sock is not None

    async def start(self, handlers: ClusterHandlers) -> None:
        self._handlers = handlers
        with contextlib.suppress(FileNotFoundError):
            self._path.unlink()  # left by a worker of the same id that was killed
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        sock.setblocking(False)
        sock.bind(str(self._path))
        self._sock = sock
        asyncio.get_running_loop().add_reader(sock.fileno(), self._receive)

    async def close(self) -> None:
        self._flush()
        if self._sock is not None:
            asyncio.get_running_loop().remove_reader(self._sock.fileno())
            self._sock.close()
            self._sock = None
        with contextlib.suppress(FileNotFoundError):
            self._path.unlink()

    def _deliver(self, payloads: list[str]) -> None:
        """Send the tick's notices to every other worker."""
        if self._sock is None:
            return
        for peer in self._peers():
            for payload in payloads:
                try:
                    self._sock.sendto(payload.encode(), str(peer))
                except (BlockingIOError, ConnectionRefusedError, FileNotFoundError):
                    break  # a busy or departed peer: it polls, as after any lost notice
                except OSError as exc:
                    log.warning("could not send a change notice to %s: %r", peer.name, exc)
                    break

    def _peers(self) -> list[Path]:
        try:
            names = os.listdir(self._dir)
        except FileNotFoundError:
            return []
        return [
            self._dir / name
            for name in names
            if name.endswith(SOCKET_SUFFIX) and name != self._path.name
        ]

    # ---- listening --------------------------------------------------------------------

    def _receive(self) -> None:
        assert self._sock is not None
        while True:
            try:
                data = self._sock.recv(MAX_DATAGRAM)
            except (BlockingIOError, InterruptedError):
                return
            if self._handlers is not None:
                on_notice(data.decode(errors="replace"), self._node_id, self._handlers)
