"""The `taskyard` command: serve, migrate, token, check, mock-backend, and the management
commands `tasks`, `servers` and `stats`, which talk to a node through the SDK (`cli/tasks.py`,
`cli/servers.py`, `cli/stats.py`; docs/cli.md).

Every `serve` flag mirrors a `TASKYARD_*` environment variable (named in `--help`); a flag wins
over the variable, which wins over the default.
"""

from __future__ import annotations

import asyncio
import logging
import math
import os
import sys
from collections.abc import Callable
from typing import Any

import click
from pydantic import ValidationError

from taskyard import auth, logs
from taskyard.cli._common import EXIT_CODES
from taskyard.cli.servers import servers
from taskyard.cli.settings import settings, settings_options
from taskyard.cli.stats import stats
from taskyard.cli.tasks import tasks
from taskyard.config import Settings, early_log_format, resolve_secret
from taskyard.mockbackend.cli import mock_backend

log = logging.getLogger(__name__)

STARTUP_FAILURE = 3  # broken configuration: a supervisor should not restart us in a loop


def _say_on_stderr(message: str) -> None:
    click.echo(f"taskyard: {message}", err=True)


def _settings(
    overrides: dict[str, Any], *, complain: Callable[[str], None] = _say_on_stderr
) -> Settings:
    return _configured(overrides, complain=complain)[0]


def _configured(
    overrides: dict[str, Any], *, complain: Callable[[str], None] = _say_on_stderr
) -> tuple[Settings, str]:
    """The settings, and in words which secret signs and checks tokens."""
    try:
        settings = Settings(**{k: v for k, v in overrides.items() if v is not None})
    except ValidationError as exc:
        # Name the fields and the rule, never the values: one of them may be the secret.
        for error in exc.errors():
            where = ".".join(str(part) for part in error["loc"]) or "settings"
            complain(f"invalid configuration: {where}: {error['msg']}")
        sys.exit(STARTUP_FAILURE)
    settings, path, created = resolve_secret(settings)
    if path is None:
        kid = auth.keys_from(settings).signing.kid
        if kid is not None:
            return settings, f"the key of kid {kid!r} (TASKYARD_JWT_SECRETS)"
        return settings, "the configured secret (TASKYARD_JWT_SECRET or --jwt-secret)"
    return settings, f"the development secret in {path}" + (" (created now)" if created else "")


@click.group(epilog=f"tasks, servers, stats: {EXIT_CODES}")
@click.version_option(package_name="taskyard")
def main() -> None:
    """taskyard: a durable task API in front of a fleet of HTTP inference servers.

    `tasks`, `servers` and `stats` manage a running node through its API (--url or
    TASKYARD_URL, --token or TASKYARD_TOKEN; --json for scripts)."""


main.add_command(tasks)
main.add_command(mock_backend)
main.add_command(servers)
main.add_command(stats)
main.add_command(settings)


@main.command()
@settings_options
@click.option(
    "--log-level",
    default="info",
    show_default=True,
    envvar="TASKYARD_LOG_LEVEL",
    help="trace, debug, info, warning, error or critical [env: TASKYARD_LOG_LEVEL]",
)
@click.option(
    "--access-log/--no-access-log",
    default=False,
    envvar="TASKYARD_ACCESS_LOG",
    help="log one line per request [env: TASKYARD_ACCESS_LOG; default: off]",
)
# A worker of `serve --workers N` serves on the socket its supervisor bound (cli/workers.py).
@click.option("--worker-fd", type=int, default=None, hidden=True)
def serve(log_level: str, access_log: bool, worker_fd: int | None, **overrides: Any) -> None:
    """Migrate the database and serve the API and background loops."""
    import socket

    import uvicorn

    from taskyard.api.app import begin_shutdown, create_app
    from taskyard.cli.serving import GracefulServer, guarded_protocol
    from taskyard.cli.workers import Supervisor, die_with_parent, worker_count

    # Logging first, so that everything serve says (a bad configuration too) is in one format.
    try:
        logs.configure(level=log_level, fmt=early_log_format(overrides.get("log_format")))
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--log-level") from None
    settings, secret_source = _configured(overrides, complain=log.error)
    if settings.env == "development" and worker_fd is None:
        if settings.log_format == "json":
            _log_dev_notice(settings, secret_source)
        else:
            _print_dev_banner(settings, secret_source)
    workers = worker_count(settings)
    if worker_fd is None and workers > 1:
        supervisor = Supervisor(settings, workers, log_level=log_level, access_log=access_log)
        sys.exit(supervisor.run())
    sockets = None
    if worker_fd is not None:
        die_with_parent()
        sockets = [socket.socket(fileno=worker_fd)]
    app = create_app(settings)
    config = uvicorn.Config(
        app,
        host=settings.host,
        port=settings.port,
        log_level=log_level,
        access_log=access_log,
        log_config=None,  # no formatters of uvicorn's own: its records go to our handler
        server_header=False,  # no "server: uvicorn" banner
        # a request-head timeout and a connection cap: slow clients cannot hold descriptors
        http=guarded_protocol(
            head_timeout_s=settings.head_timeout_s, max_connections=settings.max_connections
        ),
        # Open requests get the shutdown grace too (long polls answer at the signal already).
        timeout_graceful_shutdown=math.ceil(settings.shutdown_grace_s),
    )
    server = GracefulServer(config, on_signal=lambda hurry: begin_shutdown(app, hurry=hurry))
    server.run(sockets=sockets)
    if not server.started:
        sys.exit(STARTUP_FAILURE)


def _print_dev_banner(settings: Settings, secret_source: str) -> None:
    token = auth.mint(
        auth.keys_from(settings).signing,
        sub="admin",
        roles=[auth.ADMIN],
        ttl_s=24 * 3600,
        policy=auth.policy_from(settings),
    )
    from sqlalchemy.engine import make_url

    base = f"http://{settings.host}:{settings.port}"
    database = make_url(settings.database_url).render_as_string(hide_password=True)
    click.echo(
        f"taskyard (development) on {base}  docs: {base}/docs  database: {database}\n"
        f"tokens are signed with {secret_source}\n"
        f"admin token (24 h):\n  {token}\n"
        f"mint more with: {_command()} token --role user --sub alice [--ttl 3600]\n",
        err=True,
    )


def _log_dev_notice(settings: Settings, secret_source: str) -> None:
    """The banner for log pipelines: one JSON line, and no token (a log line must never hold
    one; logs are kept and shipped). Say how to mint one instead."""
    from sqlalchemy.engine import make_url

    base = f"http://{settings.host}:{settings.port}"
    database = make_url(settings.database_url).render_as_string(hide_password=True)
    log.warning(
        "development mode on %s (docs: %s/docs, database: %s); tokens are signed with %s; no"
        " admin token is printed in json log format, mint one with: %s token --role admin"
        " --sub admin",
        base,
        base,
        database,
        secret_source,
        _command(),
    )


def _command() -> str:
    """How this command was invoked (`.venv/bin/taskyard` from a checkout, else `taskyard`)."""
    invoked = sys.argv[0]
    if not invoked.endswith("taskyard"):
        return "taskyard"
    relative = os.path.relpath(invoked)
    return relative if not relative.startswith("..") else invoked


_DATABASE_HELP = "the database [env: TASKYARD_DATABASE_URL; default: as serve's]"


@main.command()
@click.option("--database-url", envvar="TASKYARD_DATABASE_URL", default=None, help=_DATABASE_HELP)
def migrate(database_url: str | None) -> None:
    """Apply the database migrations (serve also does this at start)."""
    from taskyard.storage.migrate import upgrade

    settings = _settings({"database_url": database_url})
    asyncio.run(upgrade(settings.database_url))
    click.echo("database is at the latest schema")


@main.command()
@click.option(
    "--role",
    "roles",
    multiple=True,
    required=True,
    type=click.Choice([auth.ADMIN, auth.USER, auth.SERVICE]),
    help="repeatable",
)
@click.option("--sub", required=True, help="the principal's name")
@click.option("--ttl", type=float, default=3600.0, show_default=True, help="seconds")
@click.option("--server-id", default=None, help="bind a service token to one server")
@click.option(
    "--jwt-secret",
    envvar="TASKYARD_JWT_SECRET",
    default=None,
    help="the shared secret to sign with [env: TASKYARD_JWT_SECRET; default: serve's signing key]",
)
def token(
    roles: tuple[str, ...], sub: str, ttl: float, server_id: str | None, jwt_secret: str | None
) -> None:
    """Mint a JWT signed with the signing key: TASKYARD_JWT_SIGNING_KID's (its kid in the
    header), else the shared secret, else development's; stderr says which. It carries
    TASKYARD_JWT_ISSUER and _AUDIENCE when they are set."""
    settings, secret_source = _configured({"jwt_secret": jwt_secret})
    click.echo(
        auth.mint(
            auth.keys_from(settings).signing,
            sub=sub,
            roles=list(roles),
            ttl_s=ttl,
            server_id=server_id,
            policy=auth.policy_from(settings),
        )
    )
    click.echo(f"taskyard: signed with {secret_source}", err=True)


@main.command()
@click.option("--database-url", envvar="TASKYARD_DATABASE_URL", default=None, help=_DATABASE_HELP)
def check(database_url: str | None) -> None:
    """Exit 0 when the database answers, 1 when it does not."""
    from taskyard.storage.sql import SqlStore

    settings = _settings({"database_url": database_url})

    async def ping() -> None:
        store = SqlStore.open(settings.database_url)
        try:
            await store.ping()
        finally:
            await store.close()

    try:
        asyncio.run(ping())
    except Exception as exc:
        click.echo(f"database: unreachable ({type(exc).__name__})", err=True)
        sys.exit(1)
    click.echo("database: OK")
