"""Security headers on every response, and CORS from an allow-list.

Every response says `nosniff` and sends no referrer; API answers (JSON) get a Content Security
Policy that allows nothing, since a browser should never render them as a page. The HTML pages
bring their own policy: the dashboard loads only its own files (see routes/dashboard.py); the
API docs (`/docs`, `/redoc`) load their offline assets from this origin, and the one inline
script Swagger UI's page carries is allowed by its hash, computed from the page as it is served,
so no `'unsafe-inline'` script is ever allowed. Their styles may be inline (both UIs set style
attributes at run time), which cannot run code.
"""

from __future__ import annotations

import base64
import hashlib
import re
from collections.abc import Iterable
from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send

DOCS_PATHS = frozenset({"/docs", "/redoc", "/docs/oauth2-redirect"})

_ALWAYS = [
    (b"x-content-type-options", b"nosniff"),
    (b"referrer-policy", b"no-referrer"),
]
# For anything that does not set its own policy (JSON answers, errors): nothing may load.
_API_CSP = b"default-src 'none'; frame-ancestors 'none'"
_DOCS_CSP = (
    "default-src 'self'; script-src 'self' {hashes}; style-src 'self' 'unsafe-inline'; "
    "img-src 'self' data:; worker-src 'self' blob:; object-src 'none'; base-uri 'none'; "
    "frame-ancestors 'none'"
)
_INLINE_SCRIPT = re.compile(rb"<script>(.*?)</script>", re.DOTALL)
_CSP = b"content-security-policy"
_API_HEADERS = (*_ALWAYS, (_CSP, _API_CSP))


def docs_policy(html: bytes) -> bytes:
    """The docs page's policy: its own origin, plus each inline script by its hash."""
    hashes = " ".join(
        f"'sha256-{base64.b64encode(hashlib.sha256(script).digest()).decode()}'"
        for script in _INLINE_SCRIPT.findall(html)
    )
    return _DOCS_CSP.format(hashes=hashes).replace(" ;", ";").encode()


def with_security_headers(headers: list[tuple[bytes, bytes]]) -> list[tuple[bytes, bytes]]:
    """An answer's headers with the ones above added, except those it sets itself (the
    dashboard sends its own policy)."""
    present = {name.lower() for name, _ in headers}
    return headers + [(n, v) for n, v in _API_HEADERS if n not in present]


async def serve_docs_page(app: ASGIApp, scope: Scope, receive: Receive, send: Send) -> None:
    """Run `app` for a docs page, with the page's own policy: its body is buffered (it is
    small) to hash its inline scripts."""
    start: Message | None = None
    body: list[bytes] = []

    async def buffer(message: Message) -> None:
        nonlocal start
        if message["type"] == "http.response.start":
            start = message
            return
        if message["type"] != "http.response.body" or start is None:
            await send(message)
            return
        body.append(message.get("body", b""))
        if message.get("more_body", False):
            return
        html = b"".join(body)
        headers = [
            (name, value)
            for name, value in start.get("headers", [])
            if name.lower() not in (_CSP, b"content-length")
        ]
        headers += [
            (_CSP, docs_policy(html)),
            (b"content-length", str(len(html)).encode()),
            *_ALWAYS,
        ]
        await send({**start, "headers": headers})
        await send({"type": "http.response.body", "body": html})

    await app(scope, receive, buffer)


def cors_options(origins: Iterable[str]) -> dict[str, Any]:
    """Starlette's `CORSMiddleware` for the listed origins only (add none for an empty list:
    no CORS headers at all). Listed origins may send credentials; `*` allows any origin,
    without them. Preflights are answered by the middleware, before any route: no token."""
    allowed = list(origins)
    anyone = "*" in allowed
    return {
        "allow_origins": ["*"] if anyone else allowed,
        "allow_credentials": not anyone,
        "allow_methods": ["GET", "POST", "PUT", "DELETE", "OPTIONS"],
        "allow_headers": ["Authorization", "Content-Type", "X-Request-Id"],
        "expose_headers": [
            "X-Request-Id",
            "Retry-After",
            "RateLimit-Limit",
            "RateLimit-Remaining",
            "RateLimit-Reset",
            "RateLimit-Policy",
        ],
        "max_age": 600,
    }
