"""A TCP forwarder in its own process, to take a database away from a node and give it back:
killing the process drops every connection through it at once and refuses new ones, as a
PostgreSQL restart does, without touching the server other tests share.

    python -m tests.tcp_proxy LISTEN_PORT TARGET_PORT
"""

from __future__ import annotations

import asyncio
import socket
import subprocess
import sys
import time
from pathlib import Path

from tests.support import REPO, wait_for


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
    except OSError:
        pass
    finally:
        writer.close()


async def _serve(listen_port: int, target_port: int) -> None:
    async def connected(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            up_reader, up_writer = await asyncio.open_connection("127.0.0.1", target_port)
        except OSError:
            writer.close()
            return
        await asyncio.gather(_pipe(reader, up_writer), _pipe(up_reader, writer))

    server = await asyncio.start_server(connected, "127.0.0.1", listen_port, reuse_address=True)
    async with server:
        await server.serve_forever()


class TcpProxy:
    """127.0.0.1:`port` → 127.0.0.1:`target`, while started."""

    def __init__(self, port: int, target: int, log: Path) -> None:
        self.port, self.target, self.log = port, target, log
        self.popen: subprocess.Popen[bytes] | None = None

    def start(self) -> TcpProxy:
        args = [sys.executable, "-m", "tests.tcp_proxy", str(self.port), str(self.target)]
        with open(self.log, "ab") as out:
            self.popen = subprocess.Popen(args, cwd=REPO, stdout=out, stderr=subprocess.STDOUT)
        wait_for(self._accepts, timeout=10, what=f"proxy on {self.port}")
        return self

    def kill(self) -> None:
        if self.popen is not None and self.popen.poll() is None:
            self.popen.kill()
            self.popen.wait(10)
        deadline = time.monotonic() + 10
        while self._accepts() and time.monotonic() < deadline:
            time.sleep(0.05)

    def _accepts(self) -> bool:
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=0.5):
                return True
        except OSError:
            return False


if __name__ == "__main__":
    asyncio.run(_serve(int(sys.argv[1]), int(sys.argv[2])))
