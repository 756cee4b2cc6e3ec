"""`taskyard stats`: the overview, the last 24 hours, or one server (admin)."""

from __future__ import annotations

import click

from taskyard import client as sdk
from taskyard.cli._common import EXIT_CODES, Api, api_command, print_json, stdout, table, text, when


@click.command("stats", epilog=EXIT_CODES)
@click.option("--hourly", is_flag=True, help="the last 24 hours, one row per hour")
@click.option("--server", "server_id", help="one server's attempts, failures and latency")
@click.option(
    "--window-min",
    type=click.IntRange(1, 1440),
    default=60,
    show_default=True,
    help="with --server: the minutes counted",
)
@api_command
def stats(api: Api, hourly: bool, server_id: str | None, window_min: int) -> None:
    """Show statistics (admin). JSON: the answer of /api/stats, /api/stats/hourly or
    /api/stats/servers/{id}."""
    if hourly and server_id:
        raise click.UsageError("--hourly or --server, not both")
    with api.client() as client:
        if hourly:
            answer: sdk.WireModel = client.hourly_stats()
        elif server_id:
            answer = client.server_stats(server_id, window_min=window_min)
        else:
            answer = client.stats()
    if api.as_json:
        print_json(answer.to_json())
    elif isinstance(answer, sdk.Hourly):
        _show_hourly(answer)
    elif isinstance(answer, sdk.ServerStats):
        _show_server(answer)
    elif isinstance(answer, sdk.Stats):
        _show_overview(answer)


def _show_overview(o: sdk.Stats) -> None:
    console = stdout()
    counts = table(*o.tasks.by_status, title="tasks")
    counts.add_row(*(str(n) for n in o.tasks.by_status.values()))
    console.print(counts)
    windows = table("", "FINISHED", "FAILED", "FINISHED/MIN", "FAILED/MIN", title="throughput")
    for name, window in (("1 min", o.throughput.m1), ("15 min", o.throughput.m15)):
        windows.add_row(name, *(text(v) for v in _window(window)))
    windows.add_row("1 h", *(text(v) for v in _window(o.throughput.h1)))
    console.print(windows)
    latency = table("", "P50 MS", "P95 MS", "COUNT", title="latency (15 min)")
    for name, p in (
        ("queue wait", o.latency.queue_wait_ms),
        ("processing", o.latency.processing_ms),
    ):
        latency.add_row(name, text(p.p50), text(p.p95), str(p.count))
    console.print(latency)
    s = o.servers
    console.print(f"servers: {s.total} ({s.online} online, {s.offline} offline, {s.busy} busy)")
    queue = table("MODEL", "WAITING", "DUE", "IN FLIGHT", "CAPACITY", "SERVERS", title="queue")
    for q in o.queue:
        queue.add_row(
            q.model,
            *(str(n) for n in (q.waiting, q.due, q.in_flight, q.capacity)),
            f"{q.servers_online}/{q.servers}",
        )
    if o.queue:
        console.print(queue)
    for unserved in o.models_without_server:
        console.print(f"no server serves {unserved.model} ({unserved.waiting} waiting)")


def _window(w: sdk.Window) -> tuple[int, int, float, float]:
    return w.finished, w.failed, w.finished_per_min, w.failed_per_min


def _show_hourly(h: sdk.Hourly) -> None:
    grid = table("HOUR", "CREATED", "FINISHED", "FAILED", "MEAN MS")
    for hour in h.hours:
        grid.add_row(
            when(hour.hour),
            str(hour.created),
            str(hour.finished),
            str(hour.failed),
            text(hour.mean_processing_ms),
        )
    stdout().print(grid)


def _show_server(s: sdk.ServerStats) -> None:
    console = stdout()
    console.print(
        f"{s.server_id}: {s.status}, {s.in_flight}/{s.max_concurrency} in flight; over"
        f" {s.window_s // 60} min: {s.attempts} attempts, {s.successes} ok, p50"
        f" {text(s.latency_ms.p50)} ms, p95 {text(s.latency_ms.p95)} ms"
    )
    for code, n in s.failures.items():
        console.print(f"  {code}: {n}")
    recent = table("TASK", "ATTEMPT", "STARTED", "OUTCOME", title="recent attempts")
    for a in s.recent_attempts:
        recent.add_row(a.task_id, str(a.attempt), when(a.started_at), a.error_code or "ok")
    console.print(recent)
