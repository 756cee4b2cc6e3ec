"""Summarise a py-spy profile (`py-spy record --format raw`, collapsed stacks) by layer.

    .venv/bin/py-spy record --pid PID --duration 12 --rate 250 --format raw --threads \\
        --output /tmp/node.txt
    .venv/bin/python benchmarks/profile_summary.py /tmp/node.txt

For each thread: its share of the samples; the layers on its stacks (a sample counts for every
layer on its stack, so shares add up to more than 100%); its own time by layer (each sample
counted once, for the innermost frame that belongs to a layer); then the hottest leaf frames.
Idle samples (recorded with `--idle`) are those whose leaf waits in `select`/`epoll` or a lock.
"""

from __future__ import annotations

import argparse
import re
from collections import Counter, defaultdict
from pathlib import Path

# (layer, pattern on a frame's file path), first match wins
LAYERS: list[tuple[str, re.Pattern[str]]] = [
    ("taskyard.api", re.compile(r"taskyard/api/")),
    ("taskyard.domain", re.compile(r"taskyard/domain/")),
    ("taskyard.storage", re.compile(r"taskyard/storage/")),
    ("taskyard (other)", re.compile(r"taskyard/")),
    ("uvicorn", re.compile(r"uvicorn/")),
    ("starlette", re.compile(r"starlette/")),
    ("fastapi", re.compile(r"fastapi/")),
    ("pydantic", re.compile(r"pydantic")),
    ("sqlalchemy", re.compile(r"sqlalchemy/")),
    ("sqlite3 driver", re.compile(r"sqlite3/|pysqlite")),
    ("asyncpg", re.compile(r"asyncpg/")),
    ("aiohttp (outgoing)", re.compile(r"aiohttp/")),
    ("jwt", re.compile(r"/jwt/")),
    ("prometheus_client", re.compile(r"prometheus_client/")),
    ("logging", re.compile(r"logging/")),
    ("asyncio", re.compile(r"asyncio/")),
]
# Waiting, not working: a selector or lock, or uvloop's event loop (C code, so py-spy's leaf is
# the Python frame that called it, `Runner.run`).
IDLE = re.compile(
    r"\((selectors|threading|queue|concurrent/futures/thread)\.py|select \(|epoll|wait \("
    r"|^Runner\.run \(asyncio/runners\.py"
)
FRAME = re.compile(r"^(?P<func>.*?) \((?P<file>[^:()]*)(?::\d+)?\)$")


def layers_of(stack: list[str]) -> set[str]:
    found = set()
    for frame in stack:
        match = FRAME.match(frame)
        path = match.group("file") if match else frame
        for name, pattern in LAYERS:
            if pattern.search(path):
                found.add(name)
                break
    return found


def own_layer(stack: list[str]) -> str:
    """The layer the sample's time is spent in: that of the innermost frame that has one."""
    for frame in reversed(stack):
        found = layers_of([frame])
        if found:
            return found.pop()
    return "(other)"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("profile", type=Path)
    parser.add_argument("--top", type=int, default=15)
    args = parser.parse_args()
    threads: dict[str, Counter[str]] = defaultdict(Counter)
    leaves: dict[str, Counter[str]] = defaultdict(Counter)
    own: dict[str, Counter[str]] = defaultdict(Counter)
    totals: Counter[str] = Counter()
    for line in args.profile.read_text().splitlines():
        stack_text, _, count_text = line.rpartition(" ")
        if not count_text.isdigit():
            continue
        count = int(count_text)
        frames = stack_text.split(";")
        thread = frames[0] if frames[0].startswith(("thread", "process")) else "all"
        stack = frames[1:] if thread != "all" else frames
        totals[thread] += count
        leaf = stack[-1] if stack else "?"
        if IDLE.search(leaf):
            threads[thread]["(idle)"] += count
            continue
        for layer in layers_of(stack):
            threads[thread][layer] += count
        leaves[thread][leaf] += count
        own[thread][own_layer(stack)] += count
    grand = sum(totals.values())
    for thread, total in totals.most_common():
        busy = total - threads[thread]["(idle)"]
        print(f"\n{thread}: {total} samples ({total / grand:.0%}), busy {busy / total:.0%}")
        print("  on the stack (a sample counts for every layer on it):")
        for layer, count in threads[thread].most_common():
            if layer != "(idle)":
                print(f"    {layer:<22} {count / max(1, busy):>6.1%}")
        print("  own time by layer (innermost frame with a layer):")
        for layer, count in own[thread].most_common():
            print(f"    {layer:<22} {count / max(1, busy):>6.1%}")
        print("  hottest leaves:")
        for leaf, count in leaves[thread].most_common(args.top):
            print(f"    {count / max(1, busy):>6.1%}  {leaf}")


if __name__ == "__main__":
    main()
