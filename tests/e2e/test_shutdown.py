"""Staged shutdown (issue 10, item 5), on real node processes: at SIGTERM a node stops
claiming, answers its long polls at once with the task as it is, lets sends in flight finish
within TASKYARD_SHUTDOWN_GRACE_S and records their answers, leaves the cluster (node row
deleted), and exits 0 within the grace plus a second. A send that outlives the grace is sent
once more after the restart, never twice more; a second SIGTERM exits at once, losing nothing
that was accepted."""

from __future__ import annotations

import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

import httpx

from taskyard.cli.serving import HURRIED_EXIT_S
from tests.support import (
    MockBackend,
    Taskyard,
    count_rows,
    long_polls_open,
    mock_info,
    wait_for,
    writes_blocked,
)

GRACE_S = 3.0
ENV = {"shutdown_grace_s": GRACE_S, "max_attempts": 3}
OVERDUE = "after the second stop signal: exiting now"  # the watchdog's warning


def sigterm(node: Taskyard) -> float:
    """Send SIGTERM; return when it was sent (monotonic)."""
    assert node.popen is not None
    node.popen.send_signal(signal.SIGTERM)
    return time.monotonic()


def exit_after(node: Taskyard, since: float, *, within_s: float) -> float:
    """Wait for the process to exit 0; how long it took from `since`."""
    assert node.popen is not None
    try:
        code = node.popen.wait(timeout=within_s + 10)
    except subprocess.TimeoutExpired:
        raise AssertionError(f"no exit:\n{stacks(node.popen.pid)}\n{node.log_tail()}") from None
    took = time.monotonic() - since
    assert code == 0, node.log_tail()
    assert took <= within_s, f"exited after {took:.1f} s, more than {within_s} s"
    return took


def stacks(pid: int) -> str:
    """What a node that does not exit is doing (py-spy, when this machine lets it attach)."""
    spy = Path(sys.executable).with_name("py-spy")
    dump = subprocess.run(
        [str(spy), "dump", "--pid", str(pid)], capture_output=True, text=True, timeout=30
    )
    return dump.stdout + dump.stderr


def accepts(node: Taskyard) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", node.port), timeout=0.5):
            return True
    except OSError:
        return False


def test_sigterm_answers_open_long_polls_at_once_and_exits_0(
    taskyard_factory: Callable[..., Taskyard],
) -> None:
    node = taskyard_factory(**ENV)
    ids = [node.submit({"model": "nobody-serves-this", "n": i}) for i in range(10)]
    answers: list[httpx.Response] = []

    def poll(task_id: str) -> None:
        answers.append(node.admin.get(f"/api/task/{task_id}", params={"wait": 60}, timeout=90))

    threads = [threading.Thread(target=poll, args=(task_id,)) for task_id in ids]
    for thread in threads:
        thread.start()
    wait_for(lambda: long_polls_open(node) == 10, what="10 long polls open")
    sent = sigterm(node)
    for thread in threads:
        thread.join(timeout=10)
    answered_in = time.monotonic() - sent
    assert len(answers) == 10 and answered_in < 2.0, answered_in
    assert {(a.status_code, a.json()["taskDetails"]["status"]) for a in answers} == {
        (200, "WAITING")
    }
    exit_after(node, sent, within_s=GRACE_S + 1)
    assert count_rows(node.database_url, "nodes") == 0  # it left the cluster
    node.start()
    assert {node.task(i)["status"] for i in ids} == {"WAITING"}  # nothing lost


def test_sends_in_flight_finish_within_the_grace_and_are_not_sent_again(
    taskyard_factory: Callable[..., Taskyard], mock_factory: Callable[..., MockBackend]
) -> None:
    node = taskyard_factory(**ENV)
    backend = mock_factory("slow-sync")
    node.register_online(backend, models=["m"], max_concurrency=8)
    backend.control(delay_ms=1_000)  # well inside the grace
    ids = [node.submit({"model": "m", "n": i}) for i in range(8)]
    wait_for(lambda: mock_info(backend)["in_flight"] == 8, what="8 sends in flight")
    sent = sigterm(node)
    exit_after(node, sent, within_s=GRACE_S + 1)
    backend.control(delay_ms=0)
    node.start()
    assert {node.task(i)["status"] for i in ids} == {"FINISHED"}  # recorded before the exit
    received = [r["task_id"] for r in backend.received()]
    assert sorted(received) == sorted(ids)  # each sent exactly once


def test_a_send_longer_than_the_grace_is_sent_once_more_after_the_restart(
    taskyard_factory: Callable[..., Taskyard], mock_factory: Callable[..., MockBackend]
) -> None:
    node = taskyard_factory(**ENV, node_timeout_s=2, chores_interval_s=0.5)
    backend = mock_factory("too-slow")
    node.register_online(backend, models=["m"], endpoints=backend.endpoints())
    backend.control(hang=True)
    task_id = node.submit({"model": "m"})
    wait_for(lambda: mock_info(backend)["in_flight"] == 1, what="the send in flight")
    sent = sigterm(node)
    exit_after(node, sent, within_s=GRACE_S + 1)
    backend.control(hang=False)
    node.start()
    assert node.wait_status(task_id, "FINISHED", timeout=30)["status"] == "FINISHED"
    attempts = [r["attempt"] for r in backend.received() if r["task_id"] == task_id]
    assert attempts == [1, 2], attempts  # once more, not twice more


def test_a_second_sigterm_exits_at_once_and_loses_nothing_accepted(
    taskyard_factory: Callable[..., Taskyard], mock_factory: Callable[..., MockBackend]
) -> None:
    node = taskyard_factory(shutdown_grace_s=30, node_timeout_s=2, chores_interval_s=0.5)
    backend = mock_factory("hangs")
    node.register_online(backend, models=["m"], endpoints=backend.endpoints())
    backend.control(hang=True)
    running = node.submit({"model": "m"})
    waiting = [node.submit({"model": "nobody", "n": i}) for i in range(5)]
    wait_for(lambda: mock_info(backend)["in_flight"] == 1, what="the send in flight")
    first = sigterm(node)
    wait_for(lambda: not accepts(node), timeout=5, what="the node to stop listening")
    sigterm(node)
    exit_after(node, first, within_s=3)  # not the 30 s grace
    assert OVERDUE not in node.log_tail()  # a stop in order, not the watchdog's
    backend.control(hang=False)
    node.start()
    assert node.wait_status(running, "FINISHED", timeout=30)["status"] == "FINISHED"
    assert {node.task(i)["status"] for i in waiting} == {"WAITING"}


def test_a_node_stuck_after_the_second_sigterm_is_ended_by_its_watchdog(
    taskyard_factory: Callable[..., Taskyard],
) -> None:
    """The database hangs (its `nodes` table is locked), so the node's leaving hangs too:
    the second SIGTERM's promise is kept all the same, by the watchdog."""
    node = taskyard_factory(shutdown_grace_s=30)
    waiting = [node.submit({"model": "nobody", "n": i}) for i in range(3)]
    with writes_blocked(node.database_url, "nodes"):
        sigterm(node)
        wait_for(lambda: not accepts(node), timeout=5, what="the node to stop listening")
        second = sigterm(node)
        took = exit_after(node, second, within_s=HURRIED_EXIT_S + 1)
        assert took >= HURRIED_EXIT_S - 0.2  # the stop in order was given its chance
    assert OVERDUE in node.log_tail()
    node.start()
    assert {node.task(i)["status"] for i in waiting} == {"WAITING"}
