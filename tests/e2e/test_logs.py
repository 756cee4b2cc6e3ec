"""A node's output as an operator reads it: JSON lines (or text) for every event worth knowing,
uvicorn's lines in the same format, and never a token or secret (issue 8, item 5)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson

from tests.support import SECRET, MockBackend, Taskyard, start_taskyard, wait_for


def _offline(node: Taskyard, server_id: str) -> bool:
    return (node.server(server_id) or {}).get("status") == "offline"


def _entries(output: str) -> list[dict[str, Any]]:
    """Every line of the output as JSON; fails naming the first line that is not."""
    entries = []
    for number, line in enumerate(output.splitlines(), 1):
        try:
            entry = orjson.loads(line)
        except orjson.JSONDecodeError:
            raise AssertionError(f"line {number} is not JSON: {line!r}") from None
        assert isinstance(entry, dict), line
        assert {"time", "level", "logger", "message"} <= entry.keys(), line
        entries.append(entry)
    return entries


def _one(entries: list[dict[str, Any]], **match: str) -> dict[str, Any]:
    """The entry whose fields equal `match` (`message` as a substring); exactly one."""
    found = [
        e
        for e in entries
        if all((v in e.get(k, "")) if k == "message" else e.get(k) == v for k, v in match.items())
    ]
    assert len(found) == 1, f"{len(found)} entries match {match}: {found}"
    return found[0]


def _assert_no_credentials(output: str, *credentials: str) -> None:
    for credential in credentials:
        assert credential not in output
    assert SECRET not in output
    assert "eyJ" not in output  # how every JWT starts: no token of any kind in any line


def test_json_logs_say_what_happened_and_never_a_token(
    database_url: str, tmp_path: Path, mock_factory: Callable[..., MockBackend]
) -> None:
    """With TASKYARD_LOG_FORMAT=json every line of the node's output (uvicorn's, alembic's and
    the development notice included) is a JSON object; a task failing, a server going offline,
    a task re-queued off a deleted server and the deletion each have their line with their ids;
    no token or secret appears anywhere."""
    node = start_taskyard(tmp_path, database_url=database_url, log_level="info", log_format="json")
    flaky, stuck = mock_factory("logs-flaky"), mock_factory("logs-stuck")
    try:
        registration = node.register_online(flaky, models=["flaky"])
        node.wait_status(node.submit({"model": "flaky"}), "FINISHED")
        flaky.control(fail_status=500)
        failed = node.submit({"model": "flaky"}, max_attempts=1)
        node.wait_status(failed, "FAILED")
        flaky.control(fail_status=None, unhealthy=True)
        wait_for(lambda: _offline(node, flaky.server_id), what="the flaky server offline")

        node.register_online(stuck, models=["stuck"])
        stuck.control(hang=True)
        requeued = node.submit({"model": "stuck"})
        node.wait_status(requeued, "PROCESSING")
        for server in (flaky, stuck):
            assert node.admin.delete(f"/api/servers/{server.server_id}").status_code == 200
        node.wait_status(requeued, "WAITING")
        stuck.control(hang=False)  # its late answer matches nothing now
    finally:
        node.stop()
        node.admin.close()
    output = node.log.read_text()
    entries = _entries(output)

    _one(entries, logger="uvicorn.error", message="Uvicorn running on")
    notice = _one(entries, logger="taskyard.cli", message="development mode")
    assert "mint one with" in notice["message"]
    node_ids = {e["node_id"] for e in entries if e["logger"].startswith("taskyard.domain")}
    assert len(node_ids) == 1, node_ids

    down = _one(entries, server_id=flaky.server_id, message="offline: health check failed")
    assert down["level"] == "WARNING"
    assert "503" in down["message"]
    died = _one(entries, task_id=failed, message="FAILED")
    assert died["server_id"] == flaky.server_id
    assert "(backend_error)" in died["message"]
    assert "HTTP 500" in died["message"]  # the last error
    moved = _one(entries, task_id=requeued, message="re-queued")
    assert moved["server_id"] == stuck.server_id
    assert "server removed (deleted by an admin)" in moved["message"]
    for server in (flaky, stuck):
        _one(entries, server_id=server.server_id, message="online: first health check passed")
        _one(entries, server_id=server.server_id, message="removed: deleted by an admin")

    callback_tokens = [r["callback_token"] for m in (flaky, stuck) for r in m.received()]
    assert len(callback_tokens) == 3 and all(callback_tokens)
    admin_token = node.admin.headers["Authorization"].removeprefix("Bearer ")
    _assert_no_credentials(output, admin_token, registration["token"], *callback_tokens)


def test_lost_node_requeue_is_logged(
    tmp_path: Path, mock_factory: Callable[..., MockBackend]
) -> None:
    """A node killed mid-send: the next one says the node was lost and re-queues its task."""
    backend = mock_factory("logs-hangs")
    node = start_taskyard(tmp_path, log_level="info", log_format="json", task_timeout_s=60)
    try:
        node.register_online(backend)
        backend.control(hang=True)
        task_id = node.submit()
        node.wait_status(task_id, "PROCESSING")
        lost = node.task(task_id)["attempts"][-1]["nodeId"]
        node.kill9()
        backend.control(hang=False)
        node.start()
        node.wait_status(task_id, "FINISHED")
    finally:
        node.stop()
        node.admin.close()
    entries = _entries(node.log.read_text())
    _one(entries, message=f"node {lost} lost")
    moved = _one(entries, task_id=task_id, message="re-queued")
    assert f"sent by node {lost}" in moved["message"]
    assert "coordinator lost before the backend answered" in moved["message"]
    assert moved["node_id"] != lost  # said by the node that recovered it


def test_text_logs_are_readable_lines_with_ids(
    tmp_path: Path, mock_factory: Callable[..., MockBackend]
) -> None:
    """The default text format: the same events as `time LEVEL logger: message key=value`."""
    backend = mock_factory("logs-text")
    node = start_taskyard(tmp_path, log_level="info")
    try:
        node.register_online(backend)
        backend.control(fail_status=400)
        failed = node.submit()
        node.wait_status(failed, "FAILED")
        backend.control(fail_status=None, unhealthy=True)
        wait_for(lambda: _offline(node, backend.server_id), what="the server offline")
    finally:
        node.stop()
        node.admin.close()
    output = node.log.read_text()
    lines = output.splitlines()
    sid = backend.server_id

    def line_with(*parts: str) -> str:
        found = [line for line in lines if all(p in line for p in parts)]
        assert len(found) == 1, f"{parts}: {found}\n{output[-3000:]}"
        return found[0]

    assert " INFO uvicorn.error: Uvicorn running on " in line_with("Uvicorn running on")
    assert f"WARNING taskyard.domain.dispatcher: task {failed} FAILED (backend_rejected)" in (
        line_with(f"task_id={failed} server_id={sid}", "HTTP 400")
    )
    assert f"server {sid} offline: health check failed" in line_with(
        f"server_id={sid}", "health HTTP 503"
    )
    # Text mode keeps the development banner, the documented way to a first token...
    assert "admin token (24 h):" in output
    # ...but nothing a backend was sent shows up.
    callback_tokens = [r["callback_token"] for r in backend.received()]
    assert callback_tokens
    for callback_token in callback_tokens:
        assert callback_token not in output
    assert SECRET not in output
