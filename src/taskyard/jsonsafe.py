"""Limits on JSON and text that taskyard stores: requests from clients, results from backends,
claims of tokens.

The stores take less than Python's parsers give: orjson (storage, responses, dispatch) writes
64-bit integers and finite numbers only, and PostgreSQL's text columns refuse NUL characters and
strings that are not valid UTF-8. A value that breaks one of these rules is bad input, refused
with a message saying where, never stored changed (`NaN` as `null`) or failed on as a 500.
"""

from __future__ import annotations

import math
from typing import Any

INT_MIN = -(2**63)  # orjson writes signed 64-bit integers...
INT_MAX = 2**64 - 1  # ...and unsigned ones


def depth_over(value: Any, limit: int) -> bool:
    """Whether objects and arrays in `value` nest deeper than `limit` levels (no recursion, so
    hostile input cannot exhaust the stack)."""
    stack: list[tuple[Any, int]] = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, dict):
            children: Any = item.values()
        elif isinstance(item, list):
            children = item
        else:
            continue
        if depth > limit:
            return True
        stack.extend((child, depth + 1) for child in children)
    return False


def unstorable_number(value: Any) -> str | None:
    """Where `value` holds a number that JSON storage would change or refuse, and why; else None.

    The place is a dotted path (`x`, `items.3.score`). Python's `json` reads `NaN`, `Infinity`
    and `1e400` (as infinity); orjson would write them as `null`. Integers beyond 64 bits it
    cannot write at all. A whole number is judged by its value, not by how it was written:
    `1e30` is refused like `10**30`, so the rule is one JSON Schema can state (the OpenAPI
    document's `JsonValue`), where 1e30 is an integer.
    """
    if not _any_unstorable_number(value):
        return None  # the common case, found without building a path for every value
    stack: list[tuple[Any, str]] = [(value, "")]
    while stack:
        item, path = stack.pop()
        if isinstance(item, dict):
            stack.extend((child, _join(path, str(key))) for key, child in item.items())
        elif isinstance(item, list):
            stack.extend((child, _join(path, str(i))) for i, child in enumerate(item))
        elif _not_finite(item):
            return (
                f"{path or 'value'}: {item!r} is not a JSON number"
                " (NaN, Infinity and numbers beyond ±1.8e308 are refused)"
            )
        elif _whole_beyond_64_bits(item):
            return f"{path or 'value'}: whole number beyond the 64-bit integer range"
    return None


def _any_unstorable_number(value: Any) -> bool:
    """`unstorable_number`'s walk without the places: a batch's thousand requests took a
    path string for every value they hold."""
    stack: list[Any] = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, dict):
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)
        elif _not_finite(item) or _whole_beyond_64_bits(item):
            return True
    return False


def _not_finite(item: Any) -> bool:
    return isinstance(item, float) and not math.isfinite(item)


def _whole_beyond_64_bits(item: Any) -> bool:
    if isinstance(item, bool) or not isinstance(item, int | float):
        return False
    if isinstance(item, float) and not item.is_integer():
        return False
    return not INT_MIN <= item <= INT_MAX


def _join(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key


def storable_text(value: str) -> bool:
    """Whether `value` fits a text column of every store: no NUL, valid UTF-8 (no lone
    surrogates, which Python's `json` lets through from `\\udXXX` escapes)."""
    if "\x00" in value:
        return False
    try:
        value.encode()
    except UnicodeEncodeError:
        return False
    return True
