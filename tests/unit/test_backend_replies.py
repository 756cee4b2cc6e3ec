"""Classifying backend answers: untrusted input, turned into domain replies."""

from __future__ import annotations

import orjson
import pytest

from taskyard.backends import MAX_RESULT_DEPTH, _classify
from taskyard.domain.ports import ReplyKind


def _nested(depth: int) -> bytes:
    return b'{"a":' * depth + b"1" + b"}" * depth


@pytest.mark.parametrize(
    ("status", "raw", "kind"),
    [
        (200, b'{"data": 1}', ReplyKind.OK),
        (202, b"", ReplyKind.ACCEPTED),
        (202, b"not json", ReplyKind.ACCEPTED),
        (200, b"[1, 2]", ReplyKind.RETRYABLE),
        (200, b"not json", ReplyKind.RETRYABLE),
        (500, b"boom", ReplyKind.RETRYABLE),
        (503, b"", ReplyKind.RETRYABLE),
        (429, b"", ReplyKind.RETRYABLE),
        (408, b"", ReplyKind.RETRYABLE),
        (400, b"bad", ReplyKind.REJECTED),
        (404, b"", ReplyKind.REJECTED),
        (302, b"", ReplyKind.REJECTED),
    ],
)
def test_status_and_body_decide_the_kind(status: int, raw: bytes, kind: ReplyKind) -> None:
    """200 + object = result, 202 = accepted, 5xx/408/429 retry, other codes reject."""
    assert _classify(status, raw).kind is kind


def test_error_text_is_capped() -> None:
    """A huge error body is cut before it lands in the task's attempt record."""
    reply = _classify(500, b"x" * 100_000)
    assert reply.error is not None and len(reply.error) < 600


def test_result_nested_too_deep_is_refused() -> None:
    """A result nested deeper than the store can write is an error, not a stuck task."""
    assert _classify(200, _nested(MAX_RESULT_DEPTH - 1)).kind is ReplyKind.OK
    assert _classify(200, _nested(MAX_RESULT_DEPTH + 5)).kind is ReplyKind.RETRYABLE
    assert orjson.loads(_nested(3)) == {"a": {"a": {"a": 1}}}
