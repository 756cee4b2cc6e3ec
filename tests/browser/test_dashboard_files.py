"""What `/dashboard` serves, over plain HTTP: the page without a token, its vendored assets
with their types and a strict Content-Security-Policy, and nothing in the OpenAPI document."""

from __future__ import annotations

import re
from importlib import resources

import httpx

from tests.browser.conftest import Yard

ASSETS = ["app.js", "api.js", "dom.js", "chart.js", "overview.js", "servers.js", "tasks.js"]


def _files() -> dict[str, str]:
    folder = resources.files("taskyard.dashboard")
    return {
        f.name: f.read_text()
        for f in folder.iterdir()
        if f.name.endswith((".js", ".css", ".html", ".svg"))
    }


def test_page_and_assets_are_served_without_a_token(yard: Yard) -> None:
    """`/dashboard` redirects to `/dashboard/` (relatively, so a proxy prefix survives); the page
    and every script, style and icon it loads answer 200 with their type, no token needed."""
    with httpx.Client(base_url=yard.node.url) as client:
        redirect = client.get("/dashboard")
        assert redirect.status_code == 307
        assert redirect.headers["location"] == "dashboard/"

        page = client.get("/dashboard/")
        assert page.status_code == 200
        assert page.headers["content-type"] == "text/html; charset=utf-8"
        csp = page.headers["content-security-policy"]
        assert csp.startswith("default-src 'self';")
        assert "unsafe-inline" not in csp
        assert page.headers["x-content-type-options"] == "nosniff"

        loaded = set(re.findall(r'(?:src|href)="assets/([^"]+)"', page.text))
        assert loaded == {"app.js", "app.css", "favicon.svg"}
        imported = {m for name in ASSETS for m in re.findall(r'from "\./([^"]+)"', _files()[name])}
        assert imported | {"app.js"} == set(ASSETS)
        types = {".js": "text/javascript", ".css": "text/css", ".svg": "image/svg+xml"}
        for name in loaded | imported:
            asset = client.get(f"/dashboard/assets/{name}")
            assert asset.status_code == 200, name
            assert asset.headers["content-type"].startswith(types[name[name.rindex(".") :]]), name
            assert asset.content == (resources.files("taskyard.dashboard") / name).read_bytes()


def test_only_dashboard_files_are_served(yard: Yard) -> None:
    """Unknown names, Python files and paths that climb out of the folder are 404."""
    with httpx.Client(base_url=yard.node.url) as client:
        for name in ("nope.js", "__init__.py", "..%2F__init__.py", "index.html", ".app.js"):
            response = client.get(f"/dashboard/assets/{name}")
            assert response.status_code == 404, name
            assert "error" in response.json()


def test_dashboard_is_not_in_the_api_document(yard: Yard) -> None:
    """The dashboard's routes are pages, not API: the OpenAPI document leaves them out."""
    paths = httpx.get(f"{yard.node.url}/openapi.json").json()["paths"]
    assert not [p for p in paths if p.startswith("/dashboard")]


def test_files_are_csp_friendly_and_offline() -> None:
    """No inline script, inline style or `innerHTML`, and no URL of another site (no CDN)."""
    files = _files()
    page = files["index.html"]
    assert re.findall(r"<script\b[^>]*>", page) == ['<script type="module" src="assets/app.js">']
    assert "<style" not in page
    for name, text in files.items():
        assert not re.search(r"\sstyle=", text), name
        assert "innerHTML" not in text and "insertAdjacentHTML" not in text, name
        assert "eval(" not in text and "new Function" not in text, name
        urls = set(re.findall(r"https?://[^\s\"'`)]+", text)) - {"http://www.w3.org/2000/svg"}
        assert not urls, (name, urls)
