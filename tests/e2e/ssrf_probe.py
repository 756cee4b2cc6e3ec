"""Hand a production node inward URLs, inside a network namespace with loopback only.

`python -m tests.e2e.ssrf_probe WORKDIR`, started by `test_ssrf_netns.py` under `unshare -n`:
even if the guard let a URL through, no packet could leave this machine. Prints one JSON
object with what it saw; the test judges it.

Two mock backends: "allowed" listens on every loopback address and is registered through
127.0.0.2, the one address the node allows; "target" listens on 127.0.0.1, where every
refused URL points (spelled in all the ways a resolver reads 127.0.0.1).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

from tests.support import MockBackend, start_taskyard, wait_for

ALLOWED_NETWORK = "127.0.0.2/32"


def refused_urls(port: int) -> list[str]:
    """127.0.0.1:`port` in the spellings that reach it, and the classic inward targets."""
    loopback = [
        f"http://127.0.0.1:{port}",
        f"http://2130706433:{port}",
        f"http://0x7f.1:{port}",
        f"http://017700000001:{port}",
        f"http://127.1:{port}",
        f"http://[::ffff:127.0.0.1]:{port}",
        f"http://localhost:{port}",
        f"http://[::1]:{port}",
    ]
    inward = ["http://169.254.169.254", "http://10.0.0.1", "http://[fe80::1]", "http://0.0.0.0"]
    return [f"{base}/health" for base in loopback + inward]


def main(workdir: Path) -> dict[str, Any]:
    links = subprocess.run(["ip", "-o", "link"], check=True, capture_output=True, text=True)
    names = [line.split(":")[1].strip() for line in links.stdout.splitlines()]
    if names != ["lo"]:
        sys.exit(f"ssrf_probe: run me in a network namespace with loopback only, not {names}")
    subprocess.run(["ip", "link", "set", "lo", "up"], check=True)
    allowed = MockBackend("allowed", workdir=workdir, extra=["--host", "0.0.0.0"]).start("/health")
    target = MockBackend("target", workdir=workdir).start("/health")
    node = start_taskyard(workdir, env="production", allowed_backend_networks=ALLOWED_NETWORK)
    target.reset()  # forget the readiness probe's GET /health
    try:
        refusals = []
        for n, url in enumerate(refused_urls(target.port)):
            body = {"id": f"inward-{n}", "endpoints": {"predict": url, "health": url}}
            response = node.admin.post("/api/servers", json=body)
            refusals.append({"url": url, "status": response.status_code, **response.json()})
        base = f"http://127.0.0.2:{allowed.port}"
        endpoints = {"predict": f"{base}/predict", "health": f"{base}/health"}
        accepted = node.admin.post("/api/servers", json={"id": "allowed", "endpoints": endpoints})
        # The positive events: the allowed server is checked and online, and a task runs on it.
        wait_for(lambda: (node.server("allowed") or {}).get("status") == "online", what="online")
        task_id = node.submit({"model": "m"})
        task = node.wait_status(task_id, "FINISHED", "FAILED")
        return {
            "refusals": refusals,
            "accepted": accepted.status_code,
            "allowed_checks": len(allowed.health_checks()),
            "task": task["status"],
            "stored": [s["id"] for s in node.admin.get("/api/servers").json()["servers"]],
            "target_checks": len(target.health_checks()),
            "target_received": len(target.received()),
        }
    finally:
        node.stop()
        allowed.stop()
        target.stop()


if __name__ == "__main__":
    print(json.dumps(main(Path(sys.argv[1]))), flush=True)
