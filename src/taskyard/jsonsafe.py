"""Limits on JSON that taskyard stores: requests from clients and results from backends."""

from __future__ import annotations

from typing import Any


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
