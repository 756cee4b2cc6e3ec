"""`taskyard tasks submit --file`: many tasks at once, with progress bars, and a summary."""

from __future__ import annotations

import asyncio
import sys
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import click
import orjson
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from taskyard import client as sdk
from taskyard.cli._common import (
    AUTH,
    OK,
    TASK_FAILED,
    UNAVAILABLE,
    WAIT_TIMEOUT,
    Api,
    fail,
    print_json,
    stderr,
    stdout,
    table,
)

MAX_PROBLEMS_SHOWN = 20  # lines whose problem the human summary spells out


@dataclass(slots=True)
class Line:
    """One line of the file and what became of it."""

    number: int
    request: dict[str, Any]
    task_id: str | None = None
    status: str | None = None  # the task's last seen status
    error_code: str | None = None
    problem: str | None = None  # why it was not submitted, or could not be followed
    rejected: bool = False  # the API refused it (4xx)

    def to_json(self) -> dict[str, Any]:
        return {
            "line": self.number,
            "id": self.task_id,
            "status": self.status,
            "errorCode": self.error_code,
            "problem": self.problem,
        }


@dataclass(slots=True)
class Summary:
    lines: list[Line]
    followed: bool
    auth_error: sdk.TaskyardError | None = None
    elapsed_s: float = 0.0

    def count(self, status: sdk.TaskStatus) -> int:
        return sum(1 for line in self.lines if line.status == status)

    @property
    def unanswered(self) -> int:
        """Lines whose request got no usable answer (5xx, 429, no connection)."""
        return sum(1 for line in self.lines if line.problem and not line.rejected)

    @property
    def unfinished(self) -> int:
        submitted = [line for line in self.lines if line.task_id]
        return sum(1 for line in submitted if line.status not in sdk.FINAL_STATUSES)

    def to_json(self) -> dict[str, Any]:
        codes = Counter(line.error_code for line in self.lines if line.error_code)
        return {
            "lines": len(self.lines),
            "submitted": sum(1 for line in self.lines if line.task_id),
            "rejected": sum(1 for line in self.lines if line.rejected),
            "unanswered": self.unanswered,
            "waited": self.followed,
            "finished": self.count(sdk.TaskStatus.FINISHED),
            "failed": self.count(sdk.TaskStatus.FAILED),
            "cancelled": self.count(sdk.TaskStatus.CANCELLED),
            "unfinished": self.unfinished,
            "byErrorCode": dict(sorted(codes.items())),
            "elapsedS": round(self.elapsed_s, 3),
            "tasks": [line.to_json() for line in self.lines],
        }

    def exit_code(self) -> int:
        if self.auth_error is not None:
            return AUTH
        if self.unanswered:
            return UNAVAILABLE
        if self.followed and self.unfinished:
            return WAIT_TIMEOUT
        if any(line.rejected for line in self.lines):
            return TASK_FAILED
        if self.followed and self.unfinished == 0:
            done = self.count(sdk.TaskStatus.FINISHED)
            if done < sum(1 for line in self.lines if line.task_id):
                return TASK_FAILED
        return OK


def read_requests(path: Path) -> list[dict[str, Any]]:
    """The task requests of a JSON Lines file (`-`: stdin); blank lines are skipped. A line
    that is not a JSON object with a `model` string is a usage error, before anything is sent."""
    text = sys.stdin.read() if str(path) == "-" else path.read_text()
    requests: list[dict[str, Any]] = []
    for number, raw in enumerate(text.splitlines(), start=1):
        if not raw.strip():
            continue
        try:
            request = orjson.loads(raw)
        except orjson.JSONDecodeError as error:
            raise click.BadParameter(
                f"line {number}: not JSON ({error})", param_hint="--file"
            ) from None
        if not isinstance(request, dict) or not isinstance(request.get("model"), str):
            raise click.BadParameter(
                f"line {number}: not a JSON object with a model string", param_hint="--file"
            )
        requests.append(request)
    if not requests:
        raise click.BadParameter("no task requests in the file", param_hint="--file")
    return requests


def run(
    api: Api,
    requests: list[dict[str, Any]],
    options: sdk.SubmitOptions,
    *,
    concurrency: int,
    follow: bool,
    wait_timeout_s: float | None,
) -> Summary:
    """Submit every request (and with `follow`, wait for each task) and sum up."""
    lines = [Line(number, request) for number, request in enumerate(requests, start=1)]
    summary = Summary(lines=lines, followed=follow)
    started = time.monotonic()
    asyncio.run(_run(api, summary, options, concurrency, follow, wait_timeout_s))
    summary.elapsed_s = time.monotonic() - started
    if summary.auth_error is not None:
        fail(api, summary.auth_error)
    return summary


async def _run(
    api: Api,
    summary: Summary,
    options: sdk.SubmitOptions,
    concurrency: int,
    follow: bool,
    wait_timeout_s: float | None,
) -> None:
    columns = (
        TextColumn("{task.description:<10}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TextColumn("{task.fields[note]}"),
    )
    async with api.async_client() as client:
        with Progress(*columns, console=stderr()) as progress:

            async def submit(line: Line) -> None:
                request = dict(line.request)
                task = await client.submit(request.pop("model"), request, **options)
                line.task_id, line.status = task.id, task.status

            await _each(progress, "submitted", summary, summary.lines, submit, concurrency)
            if not follow or summary.auth_error is not None:
                return
            deadline = None if wait_timeout_s is None else time.monotonic() + wait_timeout_s

            async def wait(line: Line) -> None:
                assert line.task_id is not None
                left = None if deadline is None else max(0.0, deadline - time.monotonic())
                try:
                    task = await client.wait(line.task_id, timeout_s=left)
                except sdk.WaitTimeout as error:
                    task = error.task
                line.status, line.error_code = task.status, task.error_code

            submitted = [line for line in summary.lines if line.task_id]
            await _each(progress, "final", summary, submitted, wait, concurrency)


async def _each(
    progress: Progress,
    description: str,
    summary: Summary,
    lines: list[Line],
    step: Callable[[Line], Awaitable[None]],
    concurrency: int,
) -> None:
    """Run `step` for every line, `concurrency` at a time, on one progress bar. An auth error
    stops everything (every other request would fail alike); others are noted per line."""
    bar = progress.add_task(description, total=len(lines), note="")
    gate = asyncio.Semaphore(concurrency)
    problems = 0

    async def one(line: Line) -> None:
        nonlocal problems
        async with gate:
            if summary.auth_error is not None:
                return
            try:
                await step(line)
            except (sdk.Unauthorized, sdk.Forbidden) as error:
                summary.auth_error = error
            except sdk.TaskyardError as error:
                line.problem = str(error)
                line.rejected = isinstance(error, sdk.APIError) and error.status < 500
                line.rejected = line.rejected and not isinstance(error, sdk.RateLimited)
                problems += 1
            progress.update(bar, advance=1, note=f"{problems} problem(s)" if problems else "")

    await asyncio.gather(*(one(line) for line in lines))


def report(api: Api, summary: Summary) -> None:
    """The summary: JSON on stdout, or a table for people."""
    out = summary.to_json()
    if api.as_json:
        print_json(out)
        return
    grid = table("", "TASKS")
    for name in ("lines", "submitted", "rejected", "unanswered"):
        grid.add_row(name, str(out[name]))
    if summary.followed:
        for name in ("finished", "failed", "cancelled", "unfinished"):
            grid.add_row(name, str(out[name]))
        for code, n in out["byErrorCode"].items():
            grid.add_row(f"  {code}", str(n))
    console = stdout()
    console.print(grid)
    problems = [line for line in summary.lines if line.problem]
    for line in problems[:MAX_PROBLEMS_SHOWN]:
        click.echo(f"line {line.number}: {line.problem}", err=True)
    if len(problems) > MAX_PROBLEMS_SHOWN:
        click.echo(
            f"... and {len(problems) - MAX_PROBLEMS_SHOWN} more (--json lists all)", err=True
        )
