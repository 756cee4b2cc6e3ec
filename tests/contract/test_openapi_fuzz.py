"""The OpenAPI document says what the server enforces, and the server enforces what it says.

schemathesis generates requests from `/openapi.json` (valid ones, invalid ones, boundary
values, undeclared methods, and sequences that follow the links between operations) and checks
each answer: no 5xx, a valid request is never refused, an invalid one never accepted, statuses
and bodies as documented, `Allow` on every 405. It found the drift of issue 7 (predict URL not
declared a URI, 64-bit limits missing, `maxAgeMins: true` taken as a number, no `Allow`).

The node runs in a network namespace with loopback only (`unshare -n`, see `fuzz_node.py`): the
fuzzer registers servers with arbitrary URLs and taskyard health-checks them at once. SQLite
only: the schema does not depend on the database, and PostgreSQL is outside the namespace.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from tests.support import REPO

# A fixed seed and example count keep the run comparable from one commit to the next.
FUZZ_OPTIONS = ["--checks", "all", "--max-examples", "30", "--seed", "1"]
FUZZ_OPTIONS += ["--max-response-time", "15", "--request-timeout", "30"]


@pytest.mark.timeout(600)
def test_schemathesis_finds_no_drift(tmp_path: Path) -> None:
    command = ["unshare", "--net", sys.executable, "-m", "tests.contract.fuzz_node"]
    run = subprocess.run(
        [*command, str(tmp_path), *FUZZ_OPTIONS],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=540,
        check=False,
    )
    output = run.stdout + run.stderr
    assert run.returncode == 0, output[-12_000:]
    assert "No issues found" in output or " passed" in output, output[-3000:]
