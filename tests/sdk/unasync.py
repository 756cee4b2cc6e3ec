"""`Client` is `AsyncClient` without the awaits: `_sync.py` is made from `_async.py` by
`unasync` below, and `test_twins.py` checks that it still is. After editing `_async.py`:

    .venv/bin/python -m tests.sdk.unasync    # rewrites src/taskyard/client/_sync.py
"""

from __future__ import annotations

from pathlib import Path

CLIENT = Path(__file__).resolve().parents[2] / "src" / "taskyard" / "client"

# In order; each is (async text, sync text).
_REPLACEMENTS = [
    (
        '"""`AsyncClient`: the asyncio taskyard client, `Client`\'s twin."""',
        '"""`Client`: the blocking taskyard client (made from `_async.py` by'
        ' tests/sdk/unasync.py)."""',
    ),
    ("AsyncIterator", "Iterator"),
    ('class AsyncClient:\n    """An asyncio client', 'class Client:\n    """A blocking client'),
    ("httpx.AsyncBaseTransport", "httpx.BaseTransport"),
    ("httpx.AsyncClient(", "httpx.Client("),
    ('f"AsyncClient(', 'f"Client('),
    ("async def aclose(", "def close("),
    ("await self._http.aclose()", "self._http.close()"),
    ("await self.aclose()", "self.close()"),
    ("__aenter__", "__enter__"),
    ("__aexit__", "__exit__"),
    (
        "            for task in page.tasks:\n                yield task\n",
        "            yield from page.tasks\n",
    ),
    ("async def ", "def "),
    ("await ", ""),
]


def unasync(source: str) -> str:
    """The blocking twin of the asyncio client's source."""
    for old, new in _REPLACEMENTS:
        if old not in source:
            raise ValueError(f"unasync: {old!r} is no longer in _async.py; update the rules")
        source = source.replace(old, new)
    return source


if __name__ == "__main__":
    sync = unasync((CLIENT / "_async.py").read_text())
    (CLIENT / "_sync.py").write_text(sync)
    print(f"wrote {CLIENT / '_sync.py'}")
