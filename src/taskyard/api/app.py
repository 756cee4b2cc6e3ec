"""`create_app(settings)`: the FastAPI application. Its lifespan owns the store and the loops."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI
from fastapi_offline import FastAPIOffline

from taskyard import __version__, logs
from taskyard.api import errors
from taskyard.api.middleware import BodyLimit, JsonBodies, RequestId
from taskyard.api.responses import JsonResponse
from taskyard.api.routes import dashboard, metrics, nodes, probes, search, servers, stats, tasks
from taskyard.api.schemas import JSON_VALUE_SCHEMA
from taskyard.auth import JwtIssuer, TokenVerifier
from taskyard.backends import AiohttpBackendClient
from taskyard.config import Settings
from taskyard.domain.dispatcher import DispatchPolicy
from taskyard.domain.health import HealthPolicy
from taskyard.domain.service import Coordinator, CoordinatorConfig
from taskyard.metrics import PrometheusObserver
from taskyard.storage.migrate import upgrade
from taskyard.storage.notify import open_bus
from taskyard.storage.sql import SqlStore

log = logging.getLogger(__name__)

DESCRIPTION = """A durable task API in front of a fleet of HTTP inference servers.

Every `/api` route needs `Authorization: Bearer <JWT>` (HS256, with a `roles` array:
`admin`, `user` or `service`). Errors are `{"error": message, "details"?: …}`."""


def coordinator_config(settings: Settings, node_id: str) -> CoordinatorConfig:
    return CoordinatorConfig(
        callback_base_url=settings.callback_base_url,
        task_timeout_s=settings.task_timeout_s,
        max_attempts=settings.max_attempts,
        dispatch=DispatchPolicy(
            node_id=node_id,
            callback_base_url=settings.callback_base_url,
            retry_base_s=settings.retry_base_s,
            retry_max_s=settings.retry_max_s,
            poll_s=settings.dispatch_poll_s,
            batch=settings.dispatch_batch,
            failures_offline=settings.dispatch_failures_offline,
        ),
        health=HealthPolicy(
            timeout_s=settings.health_timeout_s,
            interval_min_s=settings.health_interval_min_s,
            interval_max_s=settings.health_interval_max_s,
            backoff_after=settings.health_backoff_after,
            retries=settings.health_retries,
            retry_delay_s=settings.health_retry_delay_s,
            offline_removal_s=settings.offline_removal_s,
            concurrency=settings.health_concurrency,
        ),
        result_retention_s=settings.result_retention_s,
        chores_interval_s=settings.chores_interval_s,
        node_timeout_s=settings.node_timeout_s,
        allow_unbound_service_tokens=settings.unbound_service_tokens_allowed,
    )


def create_app(settings: Settings) -> FastAPI:
    """Build the app. The store, client and loops start in the lifespan, not here."""

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        await upgrade(settings.database_url)
        node_id = settings.node_id or Coordinator.new_node_id()
        store = SqlStore.open(
            settings.database_url, pool_size=settings.db_pool_size, node_id=node_id
        )
        logs.set_node_id(node_id)
        observer = PrometheusObserver(node_id)
        app.state.metrics = observer
        client = AiohttpBackendClient(
            max_response_bytes=settings.max_backend_response_bytes, node_id=node_id
        )
        await client.open()
        coordinator = Coordinator(
            store=store,
            client=client,
            tokens=JwtIssuer(settings.jwt_secret),
            config=coordinator_config(settings, node_id),
            bus=open_bus(settings.database_url, node_id=node_id, send=store.notify),
            observer=observer,
        )
        app.state.coordinator = coordinator
        await coordinator.start()
        log.info("taskyard node %s serving", coordinator.node_id)
        try:
            yield
        finally:
            await coordinator.stop()
            await client.close()
            await store.close()

    app = FastAPIOffline(
        title="taskyard",
        version=__version__,
        description=DESCRIPTION,
        lifespan=lifespan,
        default_response_class=JsonResponse,
        # Swagger UI's default fetches a badge from validator.swagger.io: no outside calls.
        swagger_ui_parameters={"validatorUrl": None},
    )
    app.state.token_verifier = TokenVerifier(settings.jwt_secret)
    app.state.metrics_token = settings.metrics_token
    errors.install(app)
    app.include_router(probes.router)
    app.include_router(tasks.router)
    app.include_router(search.router)
    app.include_router(stats.router)
    app.include_router(servers.router)
    app.include_router(nodes.router)
    app.include_router(dashboard.router)
    app.include_router(metrics.router)
    app.add_middleware(JsonBodies)
    app.add_middleware(
        BodyLimit,
        max_bytes=settings.max_body_bytes,
        result_max_bytes=settings.max_backend_response_bytes,
    )
    app.add_middleware(RequestId)
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
