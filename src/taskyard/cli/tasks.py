"""`taskyard tasks`: list, read, submit, wait for, cancel and retry tasks."""

from __future__ import annotations

import itertools
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click
import orjson

from taskyard import client as sdk
from taskyard.cli import _batch
from taskyard.cli._common import (
    EXIT_CODES,
    TASK_FAILED,
    Api,
    Moment,
    api_command,
    fail,
    fields,
    print_json,
    stdout,
    table,
    text,
    when,
)

STATUSES = [status.value for status in sdk.TaskStatus]


@click.group(epilog=EXIT_CODES)
def tasks() -> None:
    """Submit, list, read, wait for, cancel and retry tasks (through the API: --url, --token)."""


def filter_options(func: Callable[..., Any]) -> Callable[..., Any]:
    """The search filters of GET /api/tasks, as options."""
    options = [
        click.option(
            "--status", "statuses", multiple=True, type=click.Choice(STATUSES), help="repeatable"
        ),
        click.option("--model", help="tasks of this model"),
        click.option("--server", "server_id", help="tasks that ran on this server"),
        click.option("--owner", help="admin only (a user sees its own tasks only)"),
        click.option("--error-code", help="e.g. timeout, backend_error"),
        click.option("--created-after", type=Moment(), help="epoch ms or ISO 8601"),
        click.option("--created-before", type=Moment(), help="epoch ms or ISO 8601"),
    ]
    for option in reversed(options):
        func = option(func)
    return func


def task_filters(
    *,
    statuses: tuple[str, ...],
    model: str | None,
    server_id: str | None,
    owner: str | None,
    error_code: str | None,
    created_after: int | None,
    created_before: int | None,
) -> sdk.TaskFilters:
    found: sdk.TaskFilters = {}
    if statuses:
        found["status"] = list(statuses)
    if model:
        found["model"] = model
    if server_id:
        found["server_id"] = server_id
    if owner:
        found["owner"] = owner
    if error_code:
        found["error_code"] = error_code
    if created_after is not None:
        found["created_after"] = created_after
    if created_before is not None:
        found["created_before"] = created_before
    return found


def _filters_of(kwargs: dict[str, Any]) -> sdk.TaskFilters:
    names = ("statuses", "model", "server_id", "owner", "error_code")
    return task_filters(
        **{name: kwargs.pop(name) for name in names},
        created_after=kwargs.pop("created_after"),
        created_before=kwargs.pop("created_before"),
    )


@tasks.command("ls", epilog=EXIT_CODES)
@filter_options
@click.option("--limit", type=click.IntRange(min=0), default=50, show_default=True, help="0: all")
@api_command
def list_tasks(api: Api, limit: int, **filters: Any) -> None:
    """List tasks, newest first (JSON: an array of task summaries)."""
    with api.client() as client:
        found = client.search(page_size=min(limit or 500, 500), **_filters_of(filters))
        summaries = list(itertools.islice(found, limit or None))
    if api.as_json:
        print_json([task.to_json() for task in summaries])
        return
    grid = table("ID", "STATUS", "MODEL", "OWNER", "SERVER", "TRIES", "CREATED", "ERROR")
    for task in summaries:
        grid.add_row(
            task.id,
            task.status,
            task.model,
            task.owner,
            text(task.server_id),
            str(len(task.attempts)),
            when(task.created_at),
            text(task.error_code),
        )
    stdout().print(grid)
    if not summaries:
        click.echo("no tasks match", err=True)


def show_task(task: sdk.Task) -> None:
    """One task for people: its fields, then its request and result."""
    rows: list[tuple[str, Any]] = [
        ("id", task.id),
        ("status", task.status),
        ("model", task.model),
        ("owner", task.owner),
        ("priority", task.priority),
        ("server", task.server_id),
        ("attempts", len(task.attempts)),
        ("progress", task.progress),
        ("created", when(task.created_at)),
        ("started", when(task.started_at)),
        ("finished", when(task.finished_at)),
    ]
    if task.error is not None or task.error_code is not None:
        rows += [("error code", task.error_code), ("error", task.error)]
    if task.waiting is not None:
        rows.append(("waiting", f"{task.waiting.reason}: {task.waiting.detail}"))
    rows += [("request", task.request), ("result", task.result)]
    rows += [("warning", warning) for warning in task.warnings]
    stdout().print(fields(rows))


def _emit_task(api: Api, task: sdk.Task) -> None:
    if api.as_json:
        print_json(task.to_json())
    else:
        show_task(task)


def _final_exit(task: sdk.Task) -> None:
    if task.status != sdk.TaskStatus.FINISHED:
        sys.exit(TASK_FAILED)


@tasks.command("get", epilog=EXIT_CODES)
@click.argument("task_id")
@api_command
def get_task(api: Api, task_id: str) -> None:
    """Show one task (JSON: the task as GET /api/task/{id} has it in taskDetails)."""
    with api.client() as client:
        _emit_task(api, client.get(task_id))


@tasks.command("wait", epilog=EXIT_CODES)
@click.argument("task_id")
@click.option("--timeout", type=click.FloatRange(min=0), help="seconds; default: no limit")
@api_command
def wait_task(api: Api, task_id: str, timeout: float | None) -> None:
    """Wait until a task is final and show it: exit 0 FINISHED, 1 FAILED or CANCELLED,
    8 still not final after --timeout (JSON: the task, as last seen on timeout)."""
    with api.client() as client:
        try:
            task = client.wait(task_id, timeout_s=timeout)
        except sdk.WaitTimeout as error:
            fail(api, error, body={"task": error.task.to_json()})
    _emit_task(api, task)
    _final_exit(task)


def _field(pair: str) -> tuple[str, Any]:
    key, sep, raw = pair.partition("=")
    if not sep or not key:
        raise click.BadParameter(f"{pair!r} is not KEY=VALUE", param_hint="--set")
    try:
        return key, orjson.loads(raw)
    except orjson.JSONDecodeError:
        return key, raw  # a plain string


@tasks.command("submit", epilog=EXIT_CODES)
@click.argument("model", required=False)
@click.option("--data", help="the request's other fields, as a JSON object")
@click.option("--set", "pairs", multiple=True, help="KEY=VALUE (VALUE as JSON, else a string)")
@click.option(
    "-f",
    "--file",
    "path",
    type=click.Path(dir_okay=False, allow_dash=True, path_type=Path),
    help="JSON Lines, one task request (with its model) per line; - is stdin",
)
@click.option("--priority", type=click.IntRange(-1000, 1000), help="higher runs first")
@click.option("--timeout-s", type=float, help="processing deadline per attempt")
@click.option("--max-attempts", type=click.IntRange(1, 100), help="default: the node's setting")
@click.option("--queue-timeout-s", type=float, help="fail if not started by then")
@click.option("--wait", "follow", is_flag=True, help="follow the task(s) until final")
@click.option("--wait-timeout", type=click.FloatRange(min=0), help="seconds; default: no limit")
@click.option(
    "--concurrency",
    type=click.IntRange(1, 100),
    default=16,
    show_default=True,
    help="--file: requests in flight at once",
)
@api_command
def submit(
    api: Api,
    model: str | None,
    data: str | None,
    pairs: tuple[str, ...],
    path: Path | None,
    follow: bool,
    wait_timeout: float | None,
    concurrency: int,
    **options: Any,
) -> None:
    """Submit one task for MODEL, or many from --file (with progress bars on stderr).

    One task: shows it (JSON: the task); with --wait, exits as `tasks wait` does. --file:
    prints a summary (JSON: counts, byErrorCode and each line's task); exits 1 if a line was
    rejected or, with --wait, a task FAILED or was CANCELLED, 8 if one was still not final
    after --wait-timeout, 7 if requests failed for want of an answer."""
    submit_options: sdk.SubmitOptions = {k: v for k, v in options.items() if v is not None}  # type: ignore[assignment]
    if path is not None:
        if model or data or pairs:
            raise click.UsageError("--file takes the model and fields from each line")
        requests = _batch.read_requests(path)
        summary = _batch.run(
            api,
            requests,
            submit_options,
            concurrency=concurrency,
            follow=follow,
            wait_timeout_s=wait_timeout,
        )
        _batch.report(api, summary)
        sys.exit(summary.exit_code())
    if not model:
        raise click.UsageError("give a MODEL, or --file")
    request = _request(data, pairs)
    with api.client() as client:
        task = client.submit(model, request, **submit_options)
        for warning in task.warnings:
            click.echo(f"taskyard: warning: {warning}", err=True)
        if not follow:
            _emit_task(api, task)
            return
        try:
            task = client.wait(task.id, timeout_s=wait_timeout)
        except sdk.WaitTimeout as error:
            fail(api, error, body={"task": error.task.to_json()})
    _emit_task(api, task)
    _final_exit(task)


def _request(data: str | None, pairs: tuple[str, ...]) -> dict[str, Any]:
    request: dict[str, Any] = {}
    if data:
        try:
            request = orjson.loads(data)
        except orjson.JSONDecodeError as error:
            raise click.BadParameter(f"not JSON: {error}", param_hint="--data") from None
        if not isinstance(request, dict):
            raise click.BadParameter("must be a JSON object", param_hint="--data")
    request.update(_field(pair) for pair in pairs)
    request.pop("model", None)  # MODEL names it
    return request


def _change_command(action: str) -> click.Command:
    """`tasks cancel` or `tasks retry`: the given ids one by one, or every match of the
    filters at once (admin; up to --limit)."""
    past = {"cancel": "cancelled", "retry": "retried"}[action]

    @filter_options
    @click.argument("task_ids", nargs=-1)
    @click.option(
        "--limit", type=click.IntRange(1, 1000), default=100, show_default=True, help="filters"
    )
    @click.option("--all", "everything", is_flag=True, help="every task, with no filter")
    @api_command
    def change(
        api: Api, task_ids: tuple[str, ...], limit: int, everything: bool, **kwargs: Any
    ) -> None:
        filters = _filters_of(kwargs)
        with api.client() as client:
            if task_ids:
                if filters or everything:
                    raise click.UsageError("give task ids or filters, not both")
                one = client.cancel if action == "cancel" else client.retry
                changed = [one(task_id) for task_id in task_ids]
                if api.as_json:
                    print_json([task.to_json() for task in changed])
                for task in [] if api.as_json else changed:
                    click.echo(f"{task.id} {task.status}")
                return
            if not filters and not everything:
                raise click.UsageError("give task ids, filters (--status, --model, ...) or --all")
            many = client.cancel_many if action == "cancel" else client.retry_many
            result = many(limit=limit, **filters)
        if api.as_json:
            print_json(result.to_json())
            return
        click.echo(f"{past} {result.count} task(s)")
        for task_id in result.changed:
            click.echo(f"  {task_id}")
        if result.more:
            click.echo(f"more tasks match: run it again (at most {limit} a time)", err=True)

    change.__doc__ = (
        f"{action.capitalize()} tasks: the TASK_IDS given (owner or admin), or up to --limit"
        f" tasks matching the filters (admin). JSON: the tasks, or {{changed, count, more}}."
        + (" Only FAILED and CANCELLED tasks can be retried." if action == "retry" else "")
    )
    return tasks.command(action, epilog=EXIT_CODES)(change)


_change_command("cancel")
_change_command("retry")
