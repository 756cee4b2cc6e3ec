"""Servers registered without a health URL: judged by heartbeats and dispatch results alone."""

from __future__ import annotations

from collections.abc import Callable

from tests.support import MockBackend, Taskyard, wait_for


def _register_checkless(node: Taskyard, backend: MockBackend) -> None:
    node.register(backend, endpoints={"predict": backend.url + "/predict"}, max_concurrency=2)


def test_checkless_server_lifecycle(
    taskyard_factory: Callable[..., Taskyard], mock_factory: Callable[..., MockBackend]
) -> None:
    """Online at once; failed predicts eject it; once its ejection is over a heartbeat
    re-admits it; a connect error takes it offline and a heartbeat brings it back."""
    node = taskyard_factory(offline_removal_s=60, eject_base_s=1)
    backend = mock_factory("no-health")
    _register_checkless(node, backend)
    assert (node.server("no-health") or {})["status"] == "online"
    node.wait_status(node.submit(), "FINISHED")

    backend.control(fail_status=503)
    failed = node.submit(max_attempts=3)  # three failed predicts in a row: ejected
    node.wait_status(failed, "FAILED")
    assert (node.server("no-health") or {})["state"] == "ejected"
    backend.control(fail_status=None)

    def heartbeat_readmits() -> bool:
        assert node.admin.post("/api/servers/no-health/heartbeat").status_code == 200
        return bool((node.server("no-health") or {})["state"] == "online")

    wait_for(heartbeat_readmits, timeout=10, what="re-admitted by a heartbeat")
    node.wait_status(node.submit(), "FINISHED")

    backend.stop()  # a connect error: offline at once
    node.wait_status(node.submit(max_attempts=1), "FAILED")
    assert (node.server("no-health") or {})["status"] == "offline"
    stuck = node.submit()
    assert node.task(stuck)["status"] == "WAITING"
    assert node.admin.post("/api/servers/no-health/heartbeat").status_code == 200
    assert (node.server("no-health") or {})["status"] == "online"


def test_checkless_server_offline_too_long_is_removed(
    taskyard_factory: Callable[..., Taskyard], mock_factory: Callable[..., MockBackend]
) -> None:
    """With no heartbeat to revive it, an offline check-less server is removed after the limit."""
    node = taskyard_factory(offline_removal_s=1)
    backend = mock_factory("no-health-2")
    _register_checkless(node, backend)
    backend.stop()  # connect errors take it offline at the first dispatch
    node.submit(max_attempts=1)
    wait_for(lambda: node.server("no-health-2") is None, timeout=15, what="removal")
