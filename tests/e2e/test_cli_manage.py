"""The management commands (`taskyard tasks|servers|stats`) against a real node: each with
`--json` parsed, the exit codes, and a 500-line JSONL submit followed to its summary."""

from __future__ import annotations

import json
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.support import (
    MockBackend,
    Taskyard,
    clean_env,
    free_port,
    running_taskyard,
    token,
    wait_for,
)

ADMIN = token(["admin"], "root")


@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Taskyard]:
    with running_taskyard(tmp_path_factory.mktemp("node")) as yard:
        yield yard


@pytest.fixture(scope="module")
def served(node: Taskyard, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A model two mock backends serve (8 slots each)."""
    model = f"cli-{uuid.uuid4().hex[:8]}"
    workdir = tmp_path_factory.mktemp("mocks")
    mocks = [MockBackend(f"{model}-{n}", workdir=workdir).start("/health") for n in (1, 2)]
    try:
        for mock in mocks:
            node.register_online(mock, models=[model], max_concurrency=8)
        yield model
    finally:
        for mock in mocks:
            mock.stop()


def taskyard(
    node: Taskyard | None, *args: str, tok: str | None = ADMIN, stdin: str | None = None
) -> subprocess.CompletedProcess[str]:
    """Run `taskyard ARGS` against `node` (URL and token from the environment)."""
    env = clean_env(TASKYARD_URL=node.url if node else f"http://127.0.0.1:{free_port()}")
    if tok is not None:
        env["TASKYARD_TOKEN"] = tok
    return subprocess.run(
        [sys.executable, "-m", "taskyard", *args],
        env=env,
        input=stdin,
        capture_output=True,
        text=True,
        timeout=170,
    )


def as_json(done: subprocess.CompletedProcess[str], code: int = 0) -> Any:
    """The JSON a command printed, once its exit code is `code`."""
    assert done.returncode == code, (done.returncode, done.stdout, done.stderr)
    return json.loads(done.stdout)


def _unserved() -> str:
    return f"unserved-{uuid.uuid4().hex[:8]}"


def test_tasks_submit_wait_get_and_ls(node: Taskyard, served: str) -> None:
    """submit (fields from --data and --set, options as flags), wait, get and ls, as JSON;
    ls also as a table."""
    task = as_json(
        taskyard(
            node, "tasks", "submit", served, "--data", '{"n": 1}', "--set", "tag=x",
            "--set", "k=[1,2]", "--priority", "3", "--max-attempts", "2", "--json",
        )
    )  # fmt: skip
    assert task["request"] == {"model": served, "n": 1, "tag": "x", "k": [1, 2]}
    assert task["priority"] == 3
    done = as_json(taskyard(node, "tasks", "wait", task["id"], "--timeout", "30", "--json"))
    assert done["status"] == "FINISHED" and done["result"]["data"]["echo"]["n"] == 1
    got = as_json(taskyard(node, "tasks", "get", task["id"], "--json"))
    assert got["id"] == task["id"] and got["status"] == "FINISHED"
    listed = as_json(taskyard(node, "tasks", "ls", "--model", served, "--json"))
    assert task["id"] in [t["id"] for t in listed] and "request" not in listed[0]
    only = as_json(taskyard(node, "tasks", "ls", "--model", served, "--limit", "1", "--json"))
    assert len(only) == 1
    none = as_json(
        taskyard(node, "tasks", "ls", "--model", served, "--created-before", "2000-01-01",
                 "--status", "FINISHED", "--json")
    )  # fmt: skip
    assert none == []
    table = taskyard(node, "tasks", "ls", "--model", served)
    assert table.returncode == 0 and task["id"] in table.stdout and "FINISHED" in table.stdout
    shown = taskyard(node, "tasks", "get", task["id"])
    assert shown.returncode == 0 and served in shown.stdout


def test_wait_exit_codes(node: Taskyard, served: str) -> None:
    """`submit --wait` exits 0 when the task FINISHED, 1 when it FAILED; `wait` exits 8 with
    the task as last seen when it is not final in time."""
    ok = taskyard(node, "tasks", "submit", served, "--wait", "--wait-timeout", "30", "--json")
    assert as_json(ok)["status"] == "FINISHED"
    unserved = _unserved()
    failed = taskyard(
        node, "tasks", "submit", unserved, "--queue-timeout-s", "0.5", "--wait", "--json"
    )
    task = as_json(failed, 1)
    assert task["status"] == "FAILED" and task["errorCode"] == "no_capacity_deadline"
    waiting = as_json(taskyard(node, "tasks", "submit", unserved, "--json"))
    late = as_json(taskyard(node, "tasks", "wait", waiting["id"], "--timeout", "0.2", "--json"), 8)
    assert late["task"]["id"] == waiting["id"] and late["task"]["status"] == "WAITING"
    assert "still WAITING" in late["error"]
    taskyard(node, "tasks", "cancel", waiting["id"])


def test_cancel_and_retry(node: Taskyard) -> None:
    """cancel and retry by id and by filter; a second cancel is a conflict (6); a missing task
    is 5; neither ids nor filters is a usage error (2)."""
    model = _unserved()
    first = as_json(taskyard(node, "tasks", "submit", model, "--json"))
    cancelled = as_json(taskyard(node, "tasks", "cancel", first["id"], "--json"))
    assert [t["status"] for t in cancelled] == ["CANCELLED"]
    again = as_json(taskyard(node, "tasks", "cancel", first["id"], "--json"), 6)
    assert again["status"] == 409
    retried = as_json(taskyard(node, "tasks", "retry", first["id"], "--json"))
    assert retried[0]["id"] == first["id"] and retried[0]["status"] == "WAITING"
    as_json(taskyard(node, "tasks", "submit", model, "--json"))
    bulk = as_json(taskyard(node, "tasks", "cancel", "--model", model, "--json"))
    assert bulk["count"] == 2 and not bulk["more"]
    back = as_json(
        taskyard(node, "tasks", "retry", "--model", model, "--status", "CANCELLED", "--limit",
                 "1", "--json")
    )  # fmt: skip
    assert back["count"] == 1 and back["more"]
    taskyard(node, "tasks", "cancel", "--model", model)
    assert taskyard(node, "tasks", "cancel").returncode == 2
    missing = taskyard(node, "tasks", "get", "no-such-task", "--json")
    assert as_json(missing, 5)["error"].endswith("Task no-such-task not found")


def test_servers_commands(node: Taskyard, tmp_path: Path) -> None:
    """servers add, ls, get, maintenance on/off and rm, as JSON; a removed server is 5."""
    mock = MockBackend(f"cli-server-{uuid.uuid4().hex[:8]}", workdir=tmp_path).start("/health")
    server_id = mock.server_id
    try:
        added = as_json(
            taskyard(
                node, "servers", "add", server_id, "--predict", mock.url + "/predict",
                "--health", mock.url + "/health", "--model", "cli-none", "--model", "cli-other",
                "--max-concurrency", "2", "--name", "CLI", "--no-auto-remove", "--json",
            )
        )  # fmt: skip
        assert added["id"] == server_id and added["success"] and added["token"]
        wait_for(lambda: (node.server(server_id) or {}).get("status") == "online")
        listed = as_json(taskyard(node, "servers", "ls", "--json"))
        assert server_id in [s["id"] for s in listed]
        server = as_json(taskyard(node, "servers", "get", server_id, "--json"))
        assert server["models"] == ["cli-none", "cli-other"] and server["max_concurrency"] == 2
        assert server["autoRemove"] is False and server["name"] == "CLI"
        held = as_json(
            taskyard(node, "servers", "maintenance", server_id, "on", "--reason", "disk", "--json")
        )
        assert held["state"] == "maintenance" and held["maintenance"]["reason"] == "disk"
        shown = taskyard(node, "servers", "ls")
        assert shown.returncode == 0 and "maintenance: disk" in shown.stdout
        back = as_json(taskyard(node, "servers", "maintenance", server_id, "off", "--json"))
        assert back["maintenance"]["enabled"] is False
        removed = as_json(taskyard(node, "servers", "rm", server_id, "--json"))
        assert removed == {"id": server_id, "removed": True}
        assert taskyard(node, "servers", "get", server_id).returncode == 5
    finally:
        mock.stop()


def test_stats_command(node: Taskyard, served: str) -> None:
    """stats, stats --hourly and stats --server, as JSON and as tables."""
    as_json(taskyard(node, "tasks", "submit", served, "--wait", "--json"))
    overview = as_json(taskyard(node, "stats", "--json"))
    assert overview["tasks"]["byStatus"]["FINISHED"] >= 1
    assert len(as_json(taskyard(node, "stats", "--hourly", "--json"))["hours"]) == 24
    one = as_json(taskyard(node, "stats", "--server", f"{served}-1", "--json"))
    assert one["serverId"] == f"{served}-1"
    for args in ([], ["--hourly"], ["--server", f"{served}-1"]):
        assert taskyard(node, "stats", *args).returncode == 0


def test_auth_and_transport_exit_codes(node: Taskyard) -> None:
    """A bad token exits 4, as does a user on an admin command; no node answering exits 7.
    With --json the error is JSON on stdout too; the token is never printed."""
    bad = token(["admin"], "root", secret="wrong-secret-" + "z" * 40)
    refused = taskyard(node, "tasks", "ls", "--json", tok=bad)
    assert as_json(refused, 4)["status"] == 401
    assert bad not in refused.stdout + refused.stderr
    assert taskyard(node, "servers", "ls", tok=token(["user"], "bob")).returncode == 4
    assert taskyard(node, "stats", tok=None).returncode == 4
    down = taskyard(None, "tasks", "get", "x")
    assert down.returncode == 7 and "ConnectError" in down.stderr


def test_submit_a_jsonl_file_and_wait(node: Taskyard, served: str, tmp_path: Path) -> None:
    """500 lines: 450 for a served model finish, 50 for a model no server serves fail at
    their queue deadline; --wait follows all of them and the summary counts each outcome
    (exit 1: some failed). Progress goes to stderr, so stdout is the JSON summary alone."""
    unserved = _unserved()
    lines = [{"model": served, "i": i} for i in range(450)]
    lines += [{"model": unserved, "i": i} for i in range(50)]
    path = tmp_path / "tasks.jsonl"
    path.write_text("".join(json.dumps(line) + "\n" for line in lines) + "\n")
    done = taskyard(
        node, "tasks", "submit", "--file", str(path), "--queue-timeout-s", "20", "--wait",
        "--wait-timeout", "150", "--concurrency", "32", "--json",
    )  # fmt: skip
    summary = as_json(done, 1)
    assert summary["lines"] == 500 and summary["submitted"] == 500
    assert summary["rejected"] == 0 and summary["unanswered"] == 0
    assert (summary["finished"], summary["failed"], summary["cancelled"]) == (450, 50, 0)
    assert summary["unfinished"] == 0
    assert summary["byErrorCode"] == {"no_capacity_deadline": 50}
    by_line = {t["line"]: t for t in summary["tasks"]}
    assert by_line[1]["status"] == "FINISHED" and by_line[500]["status"] == "FAILED"
    assert "submitted" in done.stderr and "final" in done.stderr  # the two progress bars


def test_submit_jsonl_from_stdin(node: Taskyard, served: str) -> None:
    """`--file -` reads stdin; without --wait the summary counts what was submitted (exit 0);
    a line that is not a task request is a usage error before anything is sent."""
    text = "".join(json.dumps({"model": served, "i": i}) + "\n" for i in range(3))
    summary = as_json(taskyard(node, "tasks", "submit", "--file", "-", "--json", stdin=text))
    assert summary["submitted"] == 3 and summary["waited"] is False
    assert all(t["id"] for t in summary["tasks"])
    bad = taskyard(node, "tasks", "submit", "--file", "-", stdin=text + '{"no": "model"}\n')
    assert bad.returncode == 2 and "line 4" in bad.stderr
    rejected = taskyard(node, "tasks", "submit", "--file", "-", "--json", stdin='{"model": ""}\n')
    assert as_json(rejected, 1)["rejected"] == 1
