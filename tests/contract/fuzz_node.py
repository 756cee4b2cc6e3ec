"""Run schemathesis against a real taskyard node, inside a network namespace with loopback only.

`python -m tests.contract.fuzz_node WORKDIR [schemathesis options]`, started by
`test_openapi_fuzz.py` under `unshare -n`: the fuzzer registers servers with any URL it likes,
and taskyard health-checks them at once, so no packet may be able to leave this machine. A mock
backend serving every model keeps tasks moving, so long polls (`?wait=`) answer in
milliseconds instead of holding a worker for up to a minute. Exits with schemathesis's status.
"""

from __future__ import annotations

import subprocess
import sys
import threading
from pathlib import Path

import httpx

from tests.support import MockBackend, start_taskyard, token

BACKEND_ID = "fuzz-backend"


def keep_registered(admin: httpx.Client, body: dict[str, object], stop: threading.Event) -> None:
    """Register the backend again and again: the fuzzer deletes and cleans up servers too."""
    while not stop.wait(0.5):
        try:
            admin.post("/api/servers", json=body)
        except httpx.HTTPError:
            pass


def main(workdir: Path, role: str, options: list[str]) -> int:
    links = subprocess.run(["ip", "-o", "link"], check=True, capture_output=True, text=True)
    names = [line.split(":")[1].strip() for line in links.stdout.splitlines()]
    if names != ["lo"]:
        sys.exit(f"fuzz_node: run me in a network namespace with loopback only, not {names}")
    subprocess.run(["ip", "link", "set", "lo", "up"], check=True)
    backend = MockBackend(BACKEND_ID, workdir=workdir).start("/health")
    # Timed-out attempts (the fuzzer sends tiny timeouts) hold their slot until the backend's
    # cancel answer or the grace: both short, so that long polls answer in time.
    # Never ejected (its tiny timeouts would count as failures): tasks keep finishing.
    node = start_taskyard(workdir, max_attempts=1, slot_grace_s=1, eject_max_share=0)
    body = {"id": BACKEND_ID, "endpoints": backend.endpoints(), "max_concurrency": 64}
    stop = threading.Event()
    keeper = threading.Thread(target=keep_registered, args=(node.admin, body, stop), daemon=True)
    try:
        node.admin.post("/api/servers", json=body).raise_for_status()
        keeper.start()
        command = [
            str(Path(sys.executable).with_name("schemathesis")),
            "run",
            f"{node.url}/openapi.json",
            "--header",
            f"Authorization: Bearer {fuzz_token(role)}",
            "--generation-with-security-parameters",
            "false",
            "--no-color",
            *options,
        ]
        return subprocess.run(command, cwd=workdir, check=False).returncode
    finally:
        stop.set()
        node.stop()
        backend.stop()
        print(f"---- taskyard log tail ----\n{node.log_tail()}", flush=True)


def fuzz_token(role: str) -> str:
    """A token of `role`; a service token is bound to the fuzzer's backend, as one issued at
    registration would be."""
    if role == "service":
        return token(["service"], f"server:{BACKEND_ID}", srv=BACKEND_ID)
    return token([role], f"fuzz-{role}")


if __name__ == "__main__":
    sys.exit(main(Path(sys.argv[1]), sys.argv[2], sys.argv[3:]))
