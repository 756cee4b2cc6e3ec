"""The browser dashboard (`/dashboard`): static files from the `taskyard.dashboard` package.

The page itself needs no token; its scripts call the JSON API with the token the operator
pastes. Nothing here is in the OpenAPI document."""

from __future__ import annotations

import functools
import re
from importlib import resources

from fastapi import APIRouter
from starlette.responses import RedirectResponse, Response

from taskyard import errors

router = APIRouter(include_in_schema=False)

_TYPES = {
    ".js": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".svg": "image/svg+xml",
}
_ASSET_NAME = re.compile(r"^[a-z0-9][a-z0-9_-]*\.(?:js|css|svg)$")
# Everything the page loads comes from this origin; no inline script or style anywhere.
_CSP = (
    "default-src 'self'; object-src 'none'; base-uri 'none'; form-action 'self'; "
    "frame-ancestors 'none'"
)
_HEADERS = {
    "Content-Security-Policy": _CSP,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    # Revalidate every load, so an upgraded node never runs yesterday's scripts.
    "Cache-Control": "no-cache",
}


@functools.cache
def _files() -> dict[str, bytes]:
    """The dashboard's files by name, read once from the installed package."""
    folder = resources.files("taskyard.dashboard")
    return {
        entry.name: entry.read_bytes()
        for entry in folder.iterdir()
        if entry.is_file() and (entry.name == "index.html" or _ASSET_NAME.match(entry.name))
    }


@router.get("/dashboard")
async def dashboard_redirect() -> RedirectResponse:
    # Relative, so that the page's relative asset and API paths also work behind a prefix.
    return RedirectResponse("dashboard/", status_code=307)


@router.get("/dashboard/")
async def dashboard_page() -> Response:
    return Response(_files()["index.html"], media_type="text/html; charset=utf-8", headers=_HEADERS)


@router.get("/dashboard/assets/{name}")
async def dashboard_asset(name: str) -> Response:
    body = _files().get(name) if _ASSET_NAME.match(name) else None
    if body is None:
        raise errors.NotFound(f"No dashboard asset {name!r}")
    suffix = name[name.rindex(".") :]
    return Response(body, media_type=_TYPES[suffix], headers=_HEADERS)
