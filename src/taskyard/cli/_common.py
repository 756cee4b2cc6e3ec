"""What the management commands share: connection options, exit codes, errors, output.

The commands talk to a node through the SDK (`taskyard.client`); `--json` prints one JSON
document on stdout for scripts, otherwise tables for people. Messages and progress go to
stderr, so stdout stays parseable.
"""

from __future__ import annotations

import contextlib
import functools
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, NoReturn, TypeVar

import click
import orjson
from rich.console import Console
from rich.table import Table

from taskyard import client as sdk

F = TypeVar("F", bound=Callable[..., Any])

# Exit codes of the management commands (docs/cli.md); 2 is click's usage error.
OK = 0
TASK_FAILED = 1  # wait: the task ended FAILED or CANCELLED (a batch: some did not succeed)
USAGE = 2
REJECTED = 3  # the API refused the request as invalid (400, 413)
AUTH = 4  # 401 or 403: no token, a bad or expired one, or the wrong role
NOT_FOUND = 5
CONFLICT = 6  # 409, e.g. cancelling a task that is already final
UNAVAILABLE = 7  # 5xx, no answer, or an answer the client cannot read
WAIT_TIMEOUT = 8  # wait: not final within --timeout
RATE_LIMITED = 9  # 429

EXIT_CODES = (
    "Exit codes: 0 ok; 1 the task failed or was cancelled (wait, submit --wait); 2 usage;"
    " 3 invalid request (400); 4 bad or missing token, or wrong role (401/403); 5 not found;"
    " 6 conflict (409); 7 server error or no answer; 8 wait timed out; 9 rate limited (429)."
)


def exit_code(error: sdk.TaskyardError) -> int:
    """The exit code for an SDK error."""
    if isinstance(error, sdk.Unauthorized | sdk.Forbidden):
        return AUTH
    if isinstance(error, sdk.NotFound):
        return NOT_FOUND
    if isinstance(error, sdk.Conflict):
        return CONFLICT
    if isinstance(error, sdk.BadRequest):
        return REJECTED
    if isinstance(error, sdk.RateLimited):
        return RATE_LIMITED
    if isinstance(error, sdk.WaitTimeout):
        return WAIT_TIMEOUT
    if isinstance(error, sdk.APIError) and error.status < 500:
        return REJECTED
    return UNAVAILABLE


@dataclass(frozen=True, slots=True)
class Api:
    """Where and how a command talks to taskyard."""

    url: str
    token: str | None
    as_json: bool

    def client(self) -> sdk.Client:
        return sdk.Client(self.url, self.token)

    def async_client(self) -> sdk.AsyncClient:
        return sdk.AsyncClient(self.url, self.token)


def api_command(func: Callable[..., Any]) -> Callable[..., Any]:
    """Add --url, --token and --json, and turn SDK errors into a message and an exit code.
    The command gets an `Api` as its first argument."""

    @click.option(
        "--url",
        envvar="TASKYARD_URL",
        default=sdk.DEFAULT_URL,
        show_default=True,
        help="the node's base URL [env: TASKYARD_URL]",
    )
    @click.option("--token", envvar="TASKYARD_TOKEN", help="a JWT [env: TASKYARD_TOKEN]")
    @click.option("--json", "as_json", is_flag=True, help="print JSON on stdout, for scripts")
    @functools.wraps(func)
    def run(url: str, token: str | None, as_json: bool, **kwargs: Any) -> Any:
        api = Api(url=url, token=token or None, as_json=as_json)
        with reported_errors(api):
            return func(api, **kwargs)

    return run


@contextlib.contextmanager
def reported_errors(api: Api) -> Iterator[None]:
    try:
        yield
    except sdk.TaskyardError as error:
        fail(api, error)


def fail(api: Api, error: sdk.TaskyardError, *, body: Any = None) -> NoReturn:
    """Say what went wrong (stderr; with --json also as JSON on stdout) and exit."""
    click.echo(f"taskyard: {error}", err=True)
    if api.as_json:
        out: dict[str, Any] = {"error": str(error)}
        if isinstance(error, sdk.APIError):
            out |= {"status": error.status, "details": error.details}
        if body is not None:
            out |= body
        print_json(out)
    sys.exit(exit_code(error))


def print_json(data: Any) -> None:
    sys.stdout.write(orjson.dumps(data, option=orjson.OPT_INDENT_2).decode() + "\n")
    sys.stdout.flush()


PIPE_WIDTH = 10_000  # columns when stdout is not a terminal: whole rows, for grep and cut


def stdout() -> Console:
    width = None if sys.stdout.isatty() else PIPE_WIDTH
    return Console(highlight=False, soft_wrap=False, width=width)


def stderr() -> Console:
    return Console(stderr=True, highlight=False)


def table(*columns: str, title: str | None = None) -> Table:
    grid = Table(title=title, title_justify="left", box=None, header_style="bold")
    for column in columns:
        grid.add_column(column, overflow="fold")
    return grid


def fields(rows: list[tuple[str, Any]]) -> Table:
    """A two-column table of names and values (for one task or server)."""
    grid = Table(box=None, show_header=False)
    grid.add_column(style="bold")
    grid.add_column(overflow="fold")
    for name, value in rows:
        grid.add_row(name, text(value))
    return grid


def text(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, dict | list):
        return orjson.dumps(value).decode()
    return str(value)


def when(epoch_ms: int | None) -> str:
    """An epoch-ms time for people (UTC)."""
    if epoch_ms is None:
        return "-"
    moment = datetime.fromtimestamp(epoch_ms / 1000, tz=UTC)
    return moment.strftime("%Y-%m-%d %H:%M:%S") + "Z"


class Moment(click.ParamType[int]):
    """A time as epoch milliseconds or ISO 8601 (UTC unless it says otherwise)."""

    name = "TIME"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> int:
        if isinstance(value, int):
            return value
        try:
            return int(value)
        except ValueError:
            pass
        try:
            moment = datetime.fromisoformat(value)
        except ValueError:
            self.fail(f"{value!r} is neither epoch milliseconds nor an ISO 8601 time", param, ctx)
        if moment.tzinfo is None:
            moment = moment.replace(tzinfo=UTC)
        return int(moment.timestamp() * 1000)
