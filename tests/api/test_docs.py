"""API docs (issue item 7): Swagger UI and ReDoc work offline; /openapi.json is complete. Against
the app in-process (`tests.inprocess`); `tests/e2e/test_api_smoke.py` reads them from a real
`taskyard serve` process."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from html.parser import HTMLParser
from typing import Any
from urllib.parse import urljoin, urlsplit

import pytest

import taskyard
from tests.inprocess import InProcessYard

# Every route of SPEC §2 and issue 3 with its methods (and nothing undocumented under /api).
API_ROUTES: dict[str, set[str]] = {
    "/api/task": {"post"},
    "/api/task/{task_id}": {"get", "put", "delete"},  # issue 9: DELETE cancels
    "/api/task/{task_id}/cancel": {"post"},
    "/api/task/{task_id}/retry": {"post"},  # issue 9: manual retry, and in bulk
    "/api/tasks/retry": {"post"},
    "/api/tasks/cancel": {"post"},
    "/api/tasks/batch": {"post"},  # issue 11: many creates in one transaction
    "/api/servers": {"get", "post"},
    "/api/servers/{server_id}": {"get", "delete"},
    "/api/servers/{server_id}/heartbeat": {"post"},
    "/api/servers/{server_id}/maintenance": {"put"},  # issue 9
    "/api/servers/cleanup": {"post"},
    "/api/nodes": {"get"},  # issue 3: the cluster's nodes
    "/api/tasks": {"get"},  # issue 8: search
    "/api/stats": {"get"},
    "/api/stats/hourly": {"get"},
    "/api/stats/servers/{server_id}": {"get"},
}
WITH_BODY = [
    ("/api/task", "post"),
    ("/api/tasks/batch", "post"),
    ("/api/task/{task_id}", "put"),
    ("/api/servers", "post"),
    ("/api/servers/{server_id}/maintenance", "put"),
]
WITH_ID = [(p, m) for p, ms in API_ROUTES.items() for m in ms if "{" in p]
CONFLICTS = [
    ("/api/task/{task_id}", "put"),
    ("/api/task/{task_id}", "delete"),
    ("/api/task/{task_id}/cancel", "post"),
    ("/api/task/{task_id}/retry", "post"),
]


@pytest.fixture(scope="module")
def yard() -> Iterator[InProcessYard]:
    with InProcessYard() as node:
        yield node


@pytest.fixture(scope="module")
def spec(yard: InProcessYard) -> dict[str, Any]:
    response = yard.http.get(f"{yard.url}/openapi.json")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("application/json")
    document: dict[str, Any] = response.json()
    return document


class AssetLinks(HTMLParser):
    """Collects the URLs a page loads: src=, href= and ReDoc's spec-url=."""

    def __init__(self) -> None:
        super().__init__()
        self.urls: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        for name, value in attrs:
            if name in ("src", "href", "spec-url") and value:
                self.urls.append(value)


def page_assets(yard: InProcessYard, path: str) -> tuple[str, list[str]]:
    response = yard.http.get(yard.url + path)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/html")
    parser = AssetLinks()
    parser.feed(response.text)
    return response.text, parser.urls


def operations(spec: dict[str, Any]) -> Iterator[tuple[str, str, dict[str, Any]]]:
    for path, ops in spec["paths"].items():
        for method, operation in ops.items():
            yield path, method, operation


def resolve(spec: dict[str, Any], schema: dict[str, Any]) -> dict[str, Any]:
    ref = schema.get("$ref")
    if ref is None:
        return schema
    resolved: dict[str, Any] = spec["components"]["schemas"][ref.rsplit("/", 1)[-1]]
    return resolved


# ---- the pages ---------------------------------------------------------------------------


@pytest.mark.parametrize("page", ["/docs", "/redoc"])
def test_doc_page_loads_only_local_assets(yard: InProcessYard, page: str) -> None:
    """Every script, stylesheet and icon of the page is served by taskyard itself, non-empty."""
    html, urls = page_assets(yard, page)
    scripts = [u for u in urls if u.endswith(".js")]
    assert scripts, f"no script on {page}: {html}"
    assert "/openapi.json" in html
    for url in urls:
        absolute = urljoin(yard.url + page, url)
        parts = urlsplit(absolute)
        assert parts.scheme == "http" and parts.netloc == urlsplit(yard.url).netloc, url
        asset = yard.http.get(absolute)
        assert asset.status_code == 200, f"{url}: {asset.status_code}"
        minimum = 10_000 if url.endswith((".js", ".css")) else 100
        assert len(asset.content) > minimum, f"{url}: only {len(asset.content)} bytes"


def test_swagger_ui_needs_no_outside_validator(yard: InProcessYard) -> None:
    """Swagger UI does not fetch its badge from validator.swagger.io (its default)."""
    html, _ = page_assets(yard, "/docs")
    assert '"validatorUrl": null' in html
    assert "cdn." not in html and "googleapis" not in html


def test_docs_pages_need_no_token(yard: InProcessYard) -> None:
    """The docs and the OpenAPI document are readable without a token."""
    for path in ("/docs", "/redoc", "/openapi.json"):
        assert yard.http.get(yard.url + path).status_code == 200


# ---- /openapi.json -----------------------------------------------------------------------


def test_openapi_lists_every_route(spec: dict[str, Any]) -> None:
    """/openapi.json has each /api route with exactly its methods, plus the probes."""
    documented = {path: set(ops) for path, ops in spec["paths"].items() if path.startswith("/api")}
    assert documented == API_ROUTES
    assert "get" in spec["paths"]["/"]
    assert spec["openapi"].startswith("3.")


def test_bearer_scheme_guards_every_api_route(spec: dict[str, Any]) -> None:
    """A bearer (JWT) security scheme exists and every /api operation requires it."""
    schemes = spec["components"]["securitySchemes"]
    bearer = [name for name, s in schemes.items() if s.get("scheme", "").lower() == "bearer"]
    assert len(bearer) == 1, schemes
    assert schemes[bearer[0]]["type"] == "http"
    for path, method, operation in operations(spec):
        names = {name for requirement in operation.get("security", []) for name in requirement}
        if path.startswith("/api"):
            assert names == {bearer[0]}, f"{method} {path}: {operation.get('security')}"
        else:
            assert not names, f"{method} {path} should need no token"


@pytest.mark.parametrize(("path", "method"), WITH_BODY, ids=lambda v: str(v))
def test_request_bodies_are_documented(spec: dict[str, Any], path: str, method: str) -> None:
    """Routes that take a JSON body declare it, required, with a schema."""
    body = spec["paths"][path][method].get("requestBody")
    assert body is not None, f"{method} {path} has no requestBody"
    assert body.get("required") is True
    schema = resolve(spec, body["content"]["application/json"]["schema"])
    assert schema.get("properties"), schema


def test_body_schemas_name_their_required_fields(spec: dict[str, Any]) -> None:
    """The task body requires `model`; a registration `id` and `endpoints`; a report `metadata`."""

    def required(path: str, method: str) -> set[str]:
        body = spec["paths"][path][method]["requestBody"]["content"]["application/json"]
        return set(resolve(spec, body["schema"]).get("required", []))

    assert required("/api/task", "post") == {"model"}
    assert {"id", "endpoints"} <= required("/api/servers", "post")
    assert "metadata" in required("/api/task/{task_id}", "put")


def test_error_responses_are_documented(spec: dict[str, Any]) -> None:
    """400/401/403 everywhere under /api, 404 where an id is named, 409 where state conflicts."""
    for path, method, operation in operations(spec):
        if not path.startswith("/api"):
            continue
        codes = set(operation["responses"])
        assert {"200", "400", "401", "403"} <= codes, f"{method} {path}: {codes}"
        if (path, method) in WITH_ID:
            assert "404" in codes, f"{method} {path}: {codes}"
        if (path, method) in CONFLICTS:
            assert "409" in codes, f"{method} {path}: {codes}"
        if (path, method) in WITH_BODY:
            assert "413" in codes, f"{method} {path}: {codes}"


def test_error_responses_use_the_error_shape(spec: dict[str, Any]) -> None:
    """Each documented 4xx has a JSON schema with an `error` string."""
    for path, method, operation in operations(spec):
        for code, response in operation["responses"].items():
            if not code.startswith("4"):
                continue
            schema = resolve(spec, response["content"]["application/json"]["schema"])
            assert schema["properties"]["error"]["type"] == "string", f"{method} {path} {code}"


def test_no_422_is_documented(spec: dict[str, Any]) -> None:
    """taskyard answers invalid input with 400, so no operation documents FastAPI's 422."""
    for path, method, operation in operations(spec):
        assert "422" not in operation["responses"], f"{method} {path}"
    assert "HTTPValidationError" not in spec["components"]["schemas"]


# ---- the schema says what the server enforces (issue 7, item 7) -------------------------


def test_endpoint_urls_are_declared_as_http_uris(spec: dict[str, Any]) -> None:
    """`endpoints.predict` and `.health` are URIs with the pattern and length the server checks."""
    endpoints = spec["components"]["schemas"]["Endpoints"]["properties"]
    for name in ("predict", "health"):
        declared = endpoints[name] if name == "predict" else endpoints[name]["anyOf"][0]
        assert declared["format"] == "uri", declared
        assert declared["maxLength"] == 2048
        assert declared["pattern"].startswith("^[Hh][Tt][Tt][Pp][Ss]?://")


def test_free_form_json_declares_its_64_bit_integer_limits(spec: dict[str, Any]) -> None:
    """Task fields, results and extra registration fields are `JsonValue`: integers within
    64 bits, and no whole number outside them."""
    schemas = spec["components"]["schemas"]
    value = schemas["JsonValue"]["anyOf"]
    assert {"type": "integer", "minimum": -(2**63), "maximum": 2**64 - 1} in value
    assert {"type": "number", "not": {"type": "integer"}} in value
    ref = {"$ref": "#/components/schemas/JsonValue"}
    for name in ("TaskCreate", "TaskResultIn", "ServerRegister", "HeartbeatIn"):
        assert schemas[name]["additionalProperties"] == ref, name


def test_maxagemins_true_is_not_a_number(yard: InProcessYard) -> None:
    """`{"maxAgeMins": true}` was read as 1 minute; it is 400 now, as the schema says."""
    response = yard.admin.post("/api/servers/cleanup", json={"maxAgeMins": True})
    assert response.status_code == 400, response.text
    assert "maxAgeMins" in response.text


@pytest.mark.parametrize(
    ("path", "allowed"),
    [
        ("/api/servers", "GET, POST"),
        ("/api/servers/s1", "DELETE, GET"),
        ("/api/task/t1", "DELETE, GET, PUT"),
        ("/api/task", "POST"),
        ("/api/servers/cleanup", "POST"),  # concrete before /api/servers/{server_id}, as OpenAPI
    ],
)
def test_405_lists_every_method_of_the_path(yard: InProcessYard, path: str, allowed: str) -> None:
    """A 405 carries `Allow` with every method the path serves, not only its first route's."""
    response = yard.admin.request("TRACE", path)
    assert response.status_code == 405, response.text
    assert response.headers["Allow"] == allowed


# ---- probes (issue 8, item 7) ------------------------------------------------------------


def test_probes_answer_without_a_token(yard: InProcessYard) -> None:
    """`/` and `/health` say the process is up (`/health` in the seed's newer shape), `/ready`
    that it reaches its database; none needs a token."""
    before = datetime.now(UTC)
    health = yard.http.get(f"{yard.url}/health")
    assert health.status_code == 200, health.text
    body = health.json()
    assert set(body) == {"status", "timestamp", "version"}
    assert body["status"] == "healthy"
    assert body["version"] == taskyard.__version__
    stamp = datetime.fromisoformat(body["timestamp"])
    assert before - timedelta(seconds=1) <= stamp <= datetime.now(UTC) + timedelta(seconds=1)
    assert yard.http.get(f"{yard.url}/").json()["status"] == "ok"
    ready = yard.http.get(f"{yard.url}/ready")
    assert ready.status_code == 200 and ready.json()["database"] == "ok", ready.text
