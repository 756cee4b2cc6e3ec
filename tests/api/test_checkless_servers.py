"""Servers registered without a health URL: judged by heartbeats and dispatch results alone.
In-process (`tests.inprocess`): a backend that goes away is unmounted, as a process that stops
leaves a closed port."""

from __future__ import annotations

from taskyard.testing import FakeBackend
from tests.inprocess import InProcessYard
from tests.support import wait_for


def _register_checkless(node: InProcessYard, backend: FakeBackend) -> None:
    node.register(backend, endpoints={"predict": backend.url + "/predict"}, max_concurrency=2)


def test_checkless_server_lifecycle() -> None:
    """Online at once; failed predicts eject it; once its ejection is over a heartbeat
    re-admits it; a connect error takes it offline and a heartbeat brings it back."""
    with InProcessYard(offline_removal_s=60, eject_base_s=1) as node:
        check_a_checkless_server(node, FakeBackend("no-health"))


def check_a_checkless_server(node: InProcessYard, backend: FakeBackend) -> None:
    _register_checkless(node, backend)
    assert (node.server("no-health") or {})["status"] == "online"
    node.wait_status(node.submit(), "FINISHED")

    backend.fail_status = 503
    failed = node.submit(max_attempts=3)  # three failed predicts in a row: ejected
    node.wait_status(failed, "FAILED")
    assert (node.server("no-health") or {})["state"] == "ejected"
    backend.fail_status = None

    def heartbeat_readmits() -> bool:
        assert node.admin.post("/api/servers/no-health/heartbeat").status_code == 200
        return bool((node.server("no-health") or {})["state"] == "online")

    wait_for(heartbeat_readmits, timeout=10, what="re-admitted by a heartbeat")
    node.wait_status(node.submit(), "FINISHED")

    node.harness.backends.unmount(backend.url)  # a connect error: offline at once
    node.wait_status(node.submit(max_attempts=1), "FAILED")
    assert (node.server("no-health") or {})["status"] == "offline"
    stuck = node.submit()
    assert node.task(stuck)["status"] == "WAITING"
    # Cancelled, so that no dispatch (failing: nothing listens) follows the heartbeat and takes
    # the server offline again before it is read.
    assert node.admin.post(f"/api/task/{stuck}/cancel").status_code == 200
    assert node.admin.post("/api/servers/no-health/heartbeat").status_code == 200
    assert (node.server("no-health") or {})["status"] == "online"


def test_checkless_server_offline_too_long_is_removed() -> None:
    """With no heartbeat to revive it, an offline check-less server is removed after the limit."""
    with InProcessYard(offline_removal_s=1) as node:
        backend = FakeBackend("no-health-2")
        _register_checkless(node, backend)
        node.harness.backends.unmount(backend.url)  # connect errors: offline at first dispatch
        node.submit(max_attempts=1)
        wait_for(lambda: node.server("no-health-2") is None, timeout=15, what="removal")
