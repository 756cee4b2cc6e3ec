"""Versions of taskyard for a benchmark to compare: a commit extracted with `git archive` into the
temp dir (nothing checked out, no worktree left behind), or this checkout as it is, each run with
`PYTHONPATH=<tree>/src` on this venv's Python (`observe.py`)."""

from __future__ import annotations

import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from benchmarks.fleet import Child, Children, clean_env, free_port, taskyard_cmd

REPO = Path(__file__).resolve().parent.parent


@dataclass(frozen=True)
class Tree:
    """A version of taskyard: a commit extracted into the temp dir, or this checkout."""

    label: str
    ref: str
    sha: str
    src: Path | None  # None: this checkout's src/, as it is
    dirty: bool = False  # this checkout's src/ differs from its HEAD

    @property
    def env(self) -> dict[str, str]:
        return {"PYTHONPATH": str(self.src)} if self.src else {}

    @property
    def name(self) -> str:
        return f"{self.label} {self.sha[:7]}" + ("+changes" if self.dirty else "")


def git(*args: str) -> str:
    return subprocess.run(
        ["git", *args], cwd=REPO, check=True, capture_output=True, text=True
    ).stdout.strip()


def extract(label: str, ref: str, workdir: Path) -> Tree:
    """`ref`'s src/ in `workdir/<label>` (git archive: the repository is left as it is)."""
    if ref == ".":
        dirty = bool(git("status", "--porcelain", "--", "src"))
        sha = git("rev-parse", "HEAD")
        if dirty:
            print(f"{label}: this checkout's src/ has uncommitted changes", file=sys.stderr)
        return Tree(label, ref, sha, None, dirty)
    sha = git("rev-parse", "--verify", f"{ref}^{{commit}}")
    dest = workdir / label
    dest.mkdir()
    archive = subprocess.run(
        ["git", "archive", sha, "src"], cwd=REPO, check=True, capture_output=True
    ).stdout
    subprocess.run(["tar", "-x", "-C", str(dest)], input=archive, check=True)
    return Tree(label, ref, sha, dest / "src")


def start_backend(children: Children, tree: Tree, server_id: str, *, delay_ms: float) -> Child:
    port = free_port()
    args = ["mock-backend", "--port", str(port), "--server-id", server_id]
    args += ["--delay-ms", str(delay_ms)]
    return children.spawn(
        f"mock-{server_id}", taskyard_cmd(*args), port=port, env=clean_env(**tree.env)
    )


async def describe_sqlite(tree: Tree, workdir: Path) -> str:
    """The durability of a fresh SQLite file as `tree`'s store opens it."""
    path = workdir / f"describe-{tree.label}.db"
    code = (
        "import asyncio, sys\n"
        "from taskyard.storage.sql import SqlStore\n"
        "async def main():\n"
        "    store = SqlStore.open(sys.argv[1])\n"
        "    rows = await store.runner.read(lambda c: (\n"
        "        c.exec_driver_sql('PRAGMA journal_mode').scalar(),\n"
        "        c.exec_driver_sql('PRAGMA synchronous').scalar()))\n"
        "    await store.close()\n"
        "    print(rows[0], rows[1])\n"
        "asyncio.run(main())\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code, f"sqlite:///{path}"],
        env=clean_env(**tree.env),
        check=True,
        capture_output=True,
        text=True,
    ).stdout.split()
    names = {"0": "OFF", "1": "NORMAL", "2": "FULL", "3": "EXTRA"}
    return f"sqlite {out[0].upper()}, synchronous={names.get(out[1], out[1])}"
