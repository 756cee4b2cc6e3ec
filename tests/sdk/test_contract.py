"""The SDK's models against a real node's OpenAPI document: every field a model reads is in
the response schema, every field the schema requires is read, and what the SDK requires the
schema requires too. A schema change that the SDK does not follow breaks a test here."""

from __future__ import annotations

import typing
from typing import Any

import httpx
import pytest
from pydantic import BaseModel

from taskyard.client import (
    BulkResult,
    Heartbeat,
    Registered,
    Server,
    ServerState,
    TasksPage,
    TaskStatus,
)
from taskyard.client import _calls as calls
from taskyard.client import _models as m
from taskyard.client import _stats_models as sm
from tests.support import Taskyard

# (method, path) → the model the SDK reads that operation's 200 answer into.
OPERATIONS: dict[tuple[str, str], type[BaseModel]] = {
    ("post", "/api/task"): m.TaskOut,
    ("get", "/api/task/{task_id}"): m.TaskOut,
    ("put", "/api/task/{task_id}"): m.TaskOut,
    ("post", "/api/task/{task_id}/cancel"): m.TaskOut,
    ("post", "/api/task/{task_id}/retry"): m.TaskOut,
    ("get", "/api/tasks"): TasksPage,
    ("post", "/api/tasks/batch"): calls._BatchOut,
    ("post", "/api/tasks/retry"): BulkResult,
    ("post", "/api/tasks/cancel"): BulkResult,
    ("get", "/api/servers"): calls._ServersOut,
    ("post", "/api/servers"): Registered,
    ("get", "/api/servers/{server_id}"): Server,
    ("put", "/api/servers/{server_id}/maintenance"): Server,
    ("post", "/api/servers/{server_id}/heartbeat"): Heartbeat,
    ("post", "/api/servers/cleanup"): calls._CleanupOut,
    ("get", "/api/nodes"): calls._NodesOut,
    ("get", "/api/stats"): sm.Stats,
    ("get", "/api/stats/hourly"): sm.Hourly,
    ("get", "/api/stats/servers/{server_id}"): sm.ServerStats,
}


@pytest.fixture(scope="module")
def openapi(node: Taskyard) -> dict[str, Any]:
    document: dict[str, Any] = httpx.get(node.url + "/openapi.json", timeout=10).json()
    return document


def _resolve(document: dict[str, Any], schema: dict[str, Any]) -> dict[str, Any]:
    while "$ref" in schema:
        name = schema["$ref"].removeprefix("#/components/schemas/")
        schema = document["components"]["schemas"][name]
    return schema


def _object_schemas(
    document: dict[str, Any], schema: dict[str, Any], seen: frozenset[str] = frozenset()
) -> list[dict[str, Any]]:
    """The object schemas a property's schema may hold (through refs, anyOf, arrays, maps)."""
    ref = schema.get("$ref")
    if ref in seen:  # a recursive schema (JsonValue) holds no new object
        return []
    if ref is not None:
        seen = seen | {ref}
    schema = _resolve(document, schema)
    found: list[dict[str, Any]] = []
    if "properties" in schema:
        found.append(schema)
    for key in ("anyOf", "oneOf", "allOf"):
        for option in schema.get(key, []):
            found += _object_schemas(document, option, seen)
    for key in ("items", "additionalProperties"):
        if isinstance(schema.get(key), dict):
            found += _object_schemas(document, schema[key], seen)
    return found


def _models_in(annotation: Any) -> list[type[BaseModel]]:
    """The SDK models a field's annotation holds (in lists, dicts, unions)."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return [annotation]
    return [model for arg in typing.get_args(annotation) for model in _models_in(arg)]


def mismatches(
    document: dict[str, Any], model: type[BaseModel], schema: dict[str, Any], where: str
) -> list[str]:
    """What differs between `model` and the object `schema`, recursively."""
    schema = _resolve(document, schema)
    properties: dict[str, Any] = schema.get("properties", {})
    required = set(schema.get("required", []))
    fields = {field.alias or name: field for name, field in model.model_fields.items()}
    problems = [
        f"{where}.{name}: read by the SDK, not in the schema"
        for name in fields.keys() - properties.keys()
    ]
    problems += [
        f"{where}.{name}: required by the schema, not read by the SDK"
        for name in required - fields.keys()
    ]
    for name, field in fields.items():
        if name not in properties:
            continue
        if field.is_required() and name not in required:
            problems.append(f"{where}.{name}: required by the SDK, optional in the schema")
        for sub in _models_in(field.annotation):
            options = _object_schemas(document, properties[name])
            if not options:
                problems.append(f"{where}.{name}: an object for the SDK, not in the schema")
            for option in options:
                problems += mismatches(document, sub, option, f"{where}.{name}")
    return problems


@pytest.mark.parametrize(
    ("method", "path"), list(OPERATIONS), ids=[f"{m.upper()} {p}" for m, p in OPERATIONS]
)
def test_models_match_the_response_schemas(openapi: dict[str, Any], method: str, path: str) -> None:
    """The SDK model of each operation's answer and the answer's schema have the same fields."""
    assert path in openapi["paths"], f"{path} is not in the OpenAPI document"
    operation = openapi["paths"][path].get(method)
    assert operation is not None, f"{method.upper()} {path} is not in the OpenAPI document"
    schema = operation["responses"]["200"]["content"]["application/json"]["schema"]
    model = OPERATIONS[(method, path)]
    assert mismatches(openapi, model, schema, model.__name__) == []


def test_every_sdk_route_is_checked() -> None:
    """Each call the SDK makes whose answer has a schema is in OPERATIONS (probes have none)."""
    every: list[calls.Call[Any]] = [
        calls.submit("m", None, {}),
        calls.submit_many([{"model": "m"}], {}),
        calls.get_task("t"),
        calls.report("t", {}),
        calls.cancel_task("t"),
        calls.retry_task("t"),
        calls.search_page({}, limit=1, cursor=None),
        calls.bulk("retry", {}, limit=1),
        calls.bulk("cancel", {}, limit=1),
        calls.list_servers(),
        calls.register_server("s", "http://x", {}),
        calls.get_server("s"),
        calls.delete_server("s"),
        calls.maintenance("s", enabled=True, reason=None),
        calls.heartbeat("s", None),
        calls.cleanup_servers(None),
        calls.list_nodes(),
        calls.stats(),
        calls.hourly_stats(),
        calls.server_stats("s", window_min=1),
    ]
    made = {(call.method.lower(), _template(call.path)) for call in every}
    assert made - {("delete", "/api/servers/{server_id}")} == set(OPERATIONS)


def _template(path: str) -> str:
    """`/api/task/t/cancel` → `/api/task/{task_id}/cancel` (the ids above are `t` and `s`)."""
    names = {"t": "{task_id}", "s": "{server_id}"}
    return "/".join(names.get(part, part) for part in path.split("/"))


def test_status_names_match_the_schema(openapi: dict[str, Any]) -> None:
    """TaskStatus and ServerState name every status and state the API can answer."""
    schemas = openapi["components"]["schemas"]
    assert set(schemas["TaskSummary"]["properties"]["status"]["enum"]) == set(TaskStatus)
    assert set(schemas["ServerOut"]["properties"]["state"]["enum"]) == set(ServerState)
