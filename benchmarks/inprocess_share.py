"""The shape of the test suite: how many tests run in-process, and how many with a real process
beside them (a node, a mock backend, a browser). A pytest plugin, and the summary of what it
wrote:

    PYTHONPATH=benchmarks INPROCESS_SHARE_OUT=/tmp/shape \\
        .venv/bin/python -m pytest -p inprocess_share -n auto --dist loadfile
    .venv/bin/python benchmarks/inprocess_share.py /tmp/shape

A test counts as "with a real process" when the test process has a child as the test's call
begins or as it ends (a module-scoped node counts for every test of its module; a node a test
starts itself, through a fixture's factory, is still running as its call ends). A process
started and stopped within the call is not seen.
"""

from __future__ import annotations

import json
import os
import sys
from collections import Counter
from pathlib import Path

import pytest

OUT_VARIABLE = "INPROCESS_SHARE_OUT"
_seen: dict[str, bool] = {}  # test id → a child process was alive


def _has_children() -> bool:
    me = str(os.getpid())
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            stat = Path(f"/proc/{pid}/stat").read_text()
        except OSError:
            continue  # gone meanwhile
        parent = stat.rsplit(")", 1)[1].split()[1]
        if parent == me:
            return True
    return False


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_call(item: pytest.Item) -> object:
    before = _has_children()
    yield
    _seen[item.nodeid] = before or _has_children()


def pytest_sessionfinish(session: pytest.Session) -> None:
    out = os.environ.get(OUT_VARIABLE)
    if out:
        worker = os.environ.get("PYTEST_XDIST_WORKER", "main")
        Path(f"{out}.{worker}.json").write_text(json.dumps(_seen))


def summary(prefix: str) -> str:
    """In-process and real-process test counts per directory, and the share in-process."""
    seen: dict[str, bool] = {}
    for part in Path(prefix).parent.glob(Path(prefix).name + ".*.json"):
        seen.update(json.loads(part.read_text()))
    inprocess: Counter[str] = Counter()
    real: Counter[str] = Counter()
    for test_id, with_child in seen.items():
        directory = test_id.split("::")[0].rsplit("/", 1)[0]
        (real if with_child else inprocess)[directory] += 1
    lines = [f"{'directory':30} {'in-process':>10} {'real':>6}"]
    for directory in sorted(inprocess.keys() | real.keys()):
        lines.append(f"{directory:30} {inprocess[directory]:>10} {real[directory]:>6}")
    total_in, total = sum(inprocess.values()), len(seen)
    share = total_in / total if total else 0.0
    lines.append(f"{'total':30} {total_in:>10} {total - total_in:>6}   in-process: {share:.0%}")
    return "\n".join(lines)


if __name__ == "__main__":
    print(summary(sys.argv[1]))
