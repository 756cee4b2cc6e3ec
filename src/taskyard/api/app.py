"""`create_app(settings)`: the FastAPI application. Its lifespan owns the store and the loops."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI
from fastapi.telemetry import TelemetryConfig
from fastapi_offline import FastAPIOffline
from starlette.middleware.cors import CORSMiddleware

from taskyard import __version__, logs
from taskyard.api import errors
from taskyard.api.hot import HotRoutes
from taskyard.api.middleware import Edge
from taskyard.api.responses import JsonResponse
from taskyard.api.routes import (
    batch,
    dashboard,
    metrics,
    nodes,
    probes,
    search,
    servers,
    stats,
    tasks,
)
from taskyard.api.schemas import JSON_VALUE_SCHEMA
from taskyard.api.security import cors_options
from taskyard.auth import JwtIssuer, TokenVerifier, keys_from, policy_from
from taskyard.backends import AiohttpBackendClient
from taskyard.clock import SystemClock
from taskyard.config import Settings
from taskyard.domain.clock import Clock
from taskyard.domain.coordinator import Coordinator
from taskyard.domain.ports import BackendClient, ClusterBus, LocalBus, Store
from taskyard.domain_config import coordinator_config
from taskyard.metrics import PrometheusObserver
from taskyard.netguard import NetworkGuard, Resolve
from taskyard.ratelimit import OpenWaits, RateLimiter
from taskyard.storage.migrate import upgrade
from taskyard.storage.notify import open_bus
from taskyard.storage.sql import SqlStore

log = logging.getLogger(__name__)

DESCRIPTION = """A durable task API in front of a fleet of HTTP inference servers.

Every `/api` route needs `Authorization: Bearer <JWT>` (HS256 with a shared secret, or
RS256/ES256 from the configured JWKS, chosen by `kid`; with a `roles` array: `admin`, `user`
or `service`). Errors are `{"error": message, "details"?: …}`. Users are rate-limited per
`sub` (429 with `Retry-After` and `RateLimit-*`); admins and backends are not."""


NO_TELEMETRY: TelemetryConfig = {
    "tracing": False,
    "metrics": False,
    "logs": False,
    "operation_spans": False,
}


def begin_shutdown(app: FastAPI, *, hurry: bool = False) -> None:
    """A stop signal arrived (see `cli.serving.GracefulServer`): start the node's shutdown
    now, before the HTTP server waits for open requests, so that long polls answer at once."""
    coordinator: Coordinator | None = getattr(app.state, "coordinator", None)
    if coordinator is not None:
        coordinator.begin_shutdown(hurry=hurry)


def create_app(
    settings: Settings,
    *,
    resolve: Resolve | None = None,
    store: Store | None = None,
    client: BackendClient | None = None,
    clock: Clock | None = None,
) -> FastAPI:
    """Build the app. The store, client and loops start in the lifespan, not here. `resolve`
    replaces the system resolver in the registration check (tests hand in a stub).

    `store`, `client` and `clock` replace the production ones (`taskyard.testing.Harness`
    hands in `MemoryStore`, an in-process backend client and a fake clock): an injected store
    is neither migrated nor closed, and comes with no cluster bus; an injected client is
    neither opened nor closed. Left out, the node opens its own, as `taskyard serve` does."""

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        # One exit stack owns every resource: each is closed in reverse order of opening,
        # and one that fails to close (a database already gone) still lets the rest close.
        async with contextlib.AsyncExitStack() as resources:
            await _start(app, resources)
            yield

    def _open_store(node_id: str, resources: contextlib.AsyncExitStack) -> tuple[Store, ClusterBus]:
        sql = SqlStore.open(
            settings.database_url,
            pool_size=settings.db_pool_size,
            node_id=node_id,
            sqlite_synchronous=settings.sqlite_synchronous,
        )
        resources.push_async_callback(sql.close)
        bus = open_bus(
            settings.database_url,
            node_id=node_id,
            send=sql.notify,
            peer_dir=settings.worker_bus_dir,
        )
        return sql, bus

    async def _open_client(node_id: str, resources: contextlib.AsyncExitStack) -> BackendClient:
        aiohttp_client = AiohttpBackendClient(
            max_response_bytes=settings.max_backend_response_bytes, node_id=node_id, guard=guard
        )
        await aiohttp_client.open()
        resources.push_async_callback(aiohttp_client.close)
        return aiohttp_client

    async def _start(app: FastAPI, resources: contextlib.AsyncExitStack) -> None:
        if store is None:
            await upgrade(settings.database_url)
        await verifier.start()  # loads the JWKS, if one is configured
        node_id = settings.node_id or Coordinator.new_node_id()
        node_store, bus = (
            (store, LocalBus()) if store is not None else _open_store(node_id, resources)
        )
        logs.set_node_id(node_id)
        observer = PrometheusObserver(node_id)
        app.state.metrics = observer
        backend_client = client if client is not None else await _open_client(node_id, resources)
        coordinator = Coordinator(
            store=node_store,
            client=backend_client,
            tokens=JwtIssuer(
                verifier.keys.signing,
                server_token_ttl_s=settings.server_token_ttl_s,
                policy=policy_from(settings),
            ),
            config=coordinator_config(settings, node_id),
            clock=clock if clock is not None else SystemClock(),
            bus=bus,
            observer=observer,
        )
        app.state.coordinator = coordinator
        resources.push_async_callback(coordinator.stop)  # first: it still needs the others
        await coordinator.start()
        log.info("taskyard node %s serving", coordinator.node_id)

    app = FastAPIOffline(
        title="taskyard",
        version=__version__,
        description=DESCRIPTION,
        lifespan=lifespan,
        default_response_class=JsonResponse,
        # Swagger UI's default fetches a badge from validator.swagger.io: no outside calls.
        swagger_ui_parameters={"validatorUrl": None},
        docs_url="/docs" if settings.docs else None,
        redoc_url="/redoc" if settings.docs else None,
        # FastAPI's OpenTelemetry hooks asked the environment for a tracer provider on every
        # request (a tenth of a create's time, measured); taskyard's metrics are Prometheus'.
        telemetry=NO_TELEMETRY,
    )
    verifier = TokenVerifier(keys_from(settings), policy=policy_from(settings))
    app.state.token_verifier = verifier
    app.state.metrics_token = settings.metrics_token
    guard = NetworkGuard.for_settings(
        settings.env, settings.allowed_backend_networks, resolve=resolve
    )
    app.state.network_guard = guard
    app.state.rate_limiter = RateLimiter(
        creates=settings.rate_limit_creates,
        requests=settings.rate_limit_requests,
        storage_url=settings.rate_limit_storage,
    )
    app.state.open_waits = OpenWaits(settings.max_open_waits)
    app.state.long_poll_max_s = settings.long_poll_max_s
    errors.install(app)
    app.include_router(probes.router)
    app.include_router(tasks.router)
    app.include_router(search.router)
    app.include_router(batch.router)
    app.include_router(stats.router)
    app.include_router(servers.router)
    app.include_router(nodes.router)
    app.include_router(dashboard.router)
    app.include_router(metrics.router)
    app.add_middleware(HotRoutes)  # innermost: the outer layers apply to it as to any route
    origins = settings.cors_origin_list
    if origins:  # else no CORS headers at all
        app.add_middleware(CORSMiddleware, **cors_options(origins))
    # Outermost: request ids, the body limit and security headers on every answer, CORS
    # preflights included.
    limits = {"result_max_bytes": settings.max_backend_response_bytes}
    app.add_middleware(Edge, max_bytes=settings.max_body_bytes, **limits)
    _openapi_as_served(app)
    return app


def _openapi_as_served(app: FastAPI) -> None:
    """Make the OpenAPI document say what the server does: drop FastAPI's generated 422
    responses (taskyard answers invalid input with 400) and add the `JsonValue` schema that
    the free-form JSON fields refer to."""
    generate = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            schema = generate()
            for operations in schema.get("paths", {}).values():
                for operation in operations.values():
                    operation.get("responses", {}).pop("422", None)
            schemas = schema.setdefault("components", {}).setdefault("schemas", {})
            for unused in ("HTTPValidationError", "ValidationError"):
                schemas.pop(unused, None)
            schemas["JsonValue"] = JSON_VALUE_SCHEMA
            app.openapi_schema = schema
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
