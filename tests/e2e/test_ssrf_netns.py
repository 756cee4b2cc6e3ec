"""The SSRF guard on a real production node (issue 10, item 2), in a network namespace with
loopback only (`unshare -n`, see `ssrf_probe.py`), so no packet can leave even if it failed.

Every inward URL, however 127.0.0.1 is spelled, and the metadata, private, link-local and
unspecified addresses are refused at registration with a 400 naming the rule and stored
nowhere; the one allowed network works end to end (health-checked online, a task finished);
and after that positive event, the backend that all refused URLs point at has seen nothing.
SQLite only: the guard does not touch the database, and PostgreSQL is outside the namespace.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support import REPO

RULES = ["loopback"] * 8 + ["cloud metadata", "private", "link-local", "unspecified"]


@pytest.mark.timeout(200)
def test_inward_urls_are_refused_and_reach_nothing(tmp_path: Path) -> None:
    run = subprocess.run(
        ["unshare", "--net", sys.executable, "-m", "tests.e2e.ssrf_probe", str(tmp_path)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    seen = json.loads(run.stdout.strip().splitlines()[-1])
    assert [r["status"] for r in seen["refusals"]] == [400] * len(RULES)
    for refusal, rule in zip(seen["refusals"], RULES, strict=True):
        assert refusal["error"].startswith("endpoints.predict: "), refusal
        assert f"is {rule}" in refusal["error"], refusal
        assert "TASKYARD_ALLOWED_BACKEND_NETWORKS" in refusal["error"]
    assert seen["accepted"] == 200 and seen["allowed_checks"] >= 1
    assert seen["task"] == "FINISHED"
    assert seen["stored"] == ["allowed"]
    assert seen["target_checks"] == 0 and seen["target_received"] == 0
