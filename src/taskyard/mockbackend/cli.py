"""`taskyard mock-backend`: the command, apart from the rest of the CLI.

The tests and benchmarks start hundreds of mock backends; `taskyard.__main__` runs this
command without importing the API, the client and the settings, which took seconds per start
on a loaded machine. `taskyard.cli` registers the same command in the full CLI.
"""

from __future__ import annotations

import click

from taskyard.mockbackend.app import run
from taskyard.mockbackend.state import MockConfig


@click.command("mock-backend")
@click.option("--port", type=int, required=True, help="the port to listen on")
@click.option("--server-id", required=True, help="the id it answers as (in /info, callbacks)")
@click.option("--host", default="127.0.0.1", show_default=True, help="the address to listen on")
@click.option(
    "--delay-ms", type=float, default=0.0, show_default=True, help="time taken per predict"
)
@click.option(
    "--error-rate",
    type=click.FloatRange(0, 1),
    default=0.0,
    show_default=True,
    help="share of predicts answered with a 500",
)
@click.option("--async", "force_async", is_flag=True, help="always answer 202 and call back")
@click.option("--seed", type=int, default=None, help="seed for the error injection")
@click.option(
    "--api-key", default=None, help="require `Authorization: Bearer KEY` on predict/health/cancel"
)
def mock_backend(
    port: int,
    server_id: str,
    host: str,
    delay_ms: float,
    error_rate: float,
    force_async: bool,
    seed: int | None,
    api_key: str | None,
) -> None:
    """Run a mock inference backend (the seed's backend contract, with failure injection)."""
    config = MockConfig(
        server_id=server_id,
        delay_ms=delay_ms,
        error_rate=error_rate,
        force_async=force_async,
        seed=seed,
        api_key=api_key or None,
    )
    run(config, host=host, port=port)
