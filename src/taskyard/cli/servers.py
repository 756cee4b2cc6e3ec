"""`taskyard servers`: list, read, add, remove and hold backend servers (admin)."""

from __future__ import annotations

from typing import Any

import click

from taskyard import client as sdk
from taskyard.cli._common import (
    EXIT_CODES,
    Api,
    api_command,
    fields,
    print_json,
    stdout,
    table,
    text,
)


@click.group(epilog=EXIT_CODES)
def servers() -> None:
    """Manage backend servers (admin token; through the API: --url, --token)."""


def _state(server: sdk.Server) -> str:
    return server.state or server.status


@servers.command("ls", epilog=EXIT_CODES)
@api_command
def list_servers(api: Api) -> None:
    """List every server (JSON: an array of servers as GET /api/servers has them)."""
    with api.client() as client:
        found = client.servers()
    if api.as_json:
        print_json([server.to_json() for server in found])
        return
    grid = table("ID", "STATE", "IN FLIGHT", "MODELS", "LAST HEARTBEAT", "NOTE")
    for server in found:
        note = server.health.last_error or ""
        if server.maintenance is not None and server.maintenance.enabled:
            note = f"maintenance: {server.maintenance.reason or '-'}"
        grid.add_row(
            server.id,
            _state(server),
            f"{server.in_flight}/{server.max_concurrency}",
            ", ".join(server.models) or "(any)",
            text(server.last_heartbeat),
            note,
        )
    stdout().print(grid)
    if not found:
        click.echo("no servers registered", err=True)


def show_server(server: sdk.Server) -> None:
    rows: list[tuple[str, Any]] = [
        ("id", server.id),
        ("name", server.name),
        ("provider", server.provider),
        ("state", _state(server)),
        ("status", server.status),
        ("predict", server.endpoints.predict),
        ("health", server.endpoints.health),
        ("cancel", server.endpoints.cancel),
        ("async", server.is_async),
        ("in flight", f"{server.in_flight}/{server.max_concurrency}"),
        ("models", ", ".join(server.models) or "(any)"),
        ("weight", server.weight),
        ("registered", server.registered_at),
        ("last heartbeat", server.last_heartbeat),
        ("last check", server.health.last_check_at),
        ("last error", server.health.last_error),
        ("auto remove", server.auto_remove),
    ]
    if server.maintenance is not None and server.maintenance.enabled:
        rows.append(
            ("maintenance", f"since {server.maintenance.since}: {server.maintenance.reason or '-'}")
        )
    stdout().print(fields(rows))


@servers.command("get", epilog=EXIT_CODES)
@click.argument("server_id")
@api_command
def get_server(api: Api, server_id: str) -> None:
    """Show one server (JSON: as GET /api/servers/{id} has it)."""
    with api.client() as client:
        server = client.server(server_id)
    if api.as_json:
        print_json(server.to_json())
    else:
        show_server(server)


@servers.command("add", epilog=EXIT_CODES)
@click.argument("server_id")
@click.option("--predict", required=True, help="the predict URL")
@click.option("--health", help="the health URL (GET, 2xx = healthy)")
@click.option("--cancel", help="the cancel URL, called when a running task is cancelled")
@click.option("--name", help="a name for people (the dashboard, `servers ls`)")
@click.option("--provider", help="who runs it, for people")
@click.option("--async", "is_async", is_flag=True, help="the backend answers 202 and calls back")
@click.option("--max-concurrency", type=click.IntRange(1, 100_000), help="default 1")
@click.option("--model", "models", multiple=True, help="repeatable; none: serves any model")
@click.option(
    "--weight",
    type=click.FloatRange(min=0, min_open=True),
    help="ties on load go to the server of higher weight; default 1",
)
@click.option("--auto-remove/--no-auto-remove", default=None, help="remove it once long offline")
@click.option(
    "--api-key",
    envvar="TASKYARD_SERVER_API_KEY",
    help="sent to the backend on every call [env: TASKYARD_SERVER_API_KEY]",
)
@api_command
def add_server(api: Api, server_id: str, predict: str, **options: Any) -> None:
    """Register (or replace) a server. JSON: {id, success, token}; the token is the server's
    own, for its callbacks and heartbeats."""
    given: sdk.ServerFields = {k: v for k, v in options.items() if v not in (None, ())}  # type: ignore[assignment]
    if not options["is_async"]:
        given.pop("is_async", None)
    with api.client() as client:
        registered = client.register_server(server_id, predict, **given)
    if api.as_json:
        print_json(registered.to_json())
        return
    click.echo(f"registered {registered.id}")
    click.echo(f"its token (for callbacks and heartbeats): {registered.token}")


@servers.command("rm", epilog=EXIT_CODES)
@click.argument("server_id")
@api_command
def remove_server(api: Api, server_id: str) -> None:
    """Remove a server; its running tasks go back to the queue (JSON: {id, removed})."""
    with api.client() as client:
        client.delete_server(server_id)
    if api.as_json:
        print_json({"id": server_id, "removed": True})
    else:
        click.echo(f"removed {server_id}")


@servers.command("maintenance", epilog=EXIT_CODES)
@click.argument("server_id")
@click.argument("switch", type=click.Choice(["on", "off"]))
@click.option("--reason", help="why (shown with the server)")
@api_command
def maintenance(api: Api, server_id: str, switch: str, reason: str | None) -> None:
    """Put a server in maintenance (`on`: no new tasks, running ones finish) or take it out
    (`off`). JSON: the server."""
    with api.client() as client:
        server = client.set_maintenance(server_id, switch == "on", reason=reason)
    if api.as_json:
        print_json(server.to_json())
    else:
        click.echo(f"{server.id}: {_state(server)}")
