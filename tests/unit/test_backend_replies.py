"""Classifying backend answers: untrusted input, turned into domain replies; and reading them."""

from __future__ import annotations

import orjson
import pytest

from taskyard.backends import MAX_RESULT_DEPTH, READ_CHUNK, Body, _classify, read_body
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


@pytest.mark.parametrize(
    ("raw", "why"),
    [
        (b"", "empty body"),
        (b"<html>", "invalid JSON: unexpected character"),
        (b'{"a": 1', "invalid JSON: unexpected end of data"),
        (b"[1, 2]", "not a JSON object but an array"),
        (b'"text"', "not a JSON object but a string"),
        (b"null", "not a JSON object but null"),
        (b"3", "not a JSON object but a number"),
        (_nested(MAX_RESULT_DEPTH + 5), f"nested deeper than {MAX_RESULT_DEPTH} levels"),
    ],
)
def test_unusable_result_says_why(raw: bytes, why: str) -> None:
    """A 200 that is not a storable JSON object is retried, and the attempt's error says why."""
    reply = _classify(200, raw)
    assert reply.kind is ReplyKind.RETRYABLE
    assert reply.error is not None
    assert reply.error.startswith(f"backend answered 200 without a usable result: {why}")


@pytest.mark.parametrize(
    ("number", "why"),
    [
        ("NaN", "NaN and Infinity are not JSON numbers"),
        ("Infinity", "NaN and Infinity are not JSON numbers"),
        ("-Infinity", "NaN and Infinity are not JSON numbers"),
        ("1e400", "number is infinity when parsed as double"),
        ("-1e400", "number is infinity when parsed as double"),
    ],
)
def test_result_with_a_non_json_number_is_refused_as_invalid(number: str, why: str) -> None:
    """NaN, Infinity and 1e400 are refused as invalid JSON, never stored changed (as null)."""
    reply = _classify(200, b'{"data": {"score": ' + number.encode() + b"}}")
    assert reply.kind is ReplyKind.RETRYABLE and reply.body is None
    assert reply.error is not None
    assert "invalid JSON" in reply.error and why in reply.error, reply.error


@pytest.mark.parametrize(
    "number", ["100000000000000000000000", "18446744073709551616", "-1e19", "1e30"]
)
def test_result_with_a_whole_number_beyond_64_bits_is_refused(number: str) -> None:
    """orjson would read 10**23 as the float 1e23: refused instead of stored changed."""
    reply = _classify(200, b'{"data": {"n": ' + number.encode() + b"}}")
    assert reply.kind is ReplyKind.RETRYABLE and reply.body is None
    assert reply.error is not None
    assert "data.n: whole number beyond the 64-bit integer range" in reply.error, reply.error


def test_numbers_within_64_bits_are_kept_exactly() -> None:
    reply = _classify(200, b'{"n": [18446744073709551615, -9223372036854775808, 0.5, 1e-300]}')
    assert reply.kind is ReplyKind.OK
    assert reply.body == {"n": [2**64 - 1, -(2**63), 0.5, 1e-300]}


def test_nul_in_an_error_body_does_not_reach_the_record() -> None:
    """An error body's NUL bytes become U+FFFD: PostgreSQL's text columns refuse NUL, and a
    refused write would fail the group commit it shares with other tasks."""
    reply = _classify(500, b"bad\x00gateway\xff")
    assert reply.error == "HTTP 500: bad\ufffdgateway\ufffd"


# ---- reading a body --------------------------------------------------------------------------


class Pieces:
    """A body arriving in pieces, as `aiohttp.StreamReader.read(n)` hands it out: at most `n`
    bytes per read, never more than the current piece. Counts what was handed out."""

    def __init__(self, pieces: list[bytes], *, endless: bytes = b"") -> None:
        self.pieces = pieces
        self.endless = endless  # handed out forever once the pieces are used up
        self.handed_out = 0
        self.reads: list[int] = []  # the `n` of each read

    async def read(self, n: int = -1, /) -> bytes:
        self.reads.append(n)
        if self.pieces:
            piece = self.pieces.pop(0)
            chunk, rest = piece[:n], piece[n:]
            if rest:
                self.pieces.insert(0, rest)
        else:
            chunk = self.endless[:n]
        self.handed_out += len(chunk)
        return chunk


async def test_body_in_many_small_pieces_is_read_whole() -> None:
    """However small the pieces, the whole body is read, up to and including the cap."""
    body = orjson.dumps({"data": "x" * 100_000})

    def pieces() -> Pieces:
        return Pieces([body[i : i + 7] for i in range(0, len(body), 7)])

    assert await read_body(pieces(), len(body)) == Body(body, over=False)
    assert (await read_body(pieces(), len(body) - 1)).over


async def test_body_over_the_cap_is_refused_after_cap_plus_one_byte() -> None:
    """An endless body is read no further than one byte past the cap."""
    stream = Pieces([], endless=b"x" * (READ_CHUNK * 2))
    read = await read_body(stream, 1_000_000)
    assert read.over
    assert len(read.data) == 1_000_000
    assert stream.handed_out == 1_000_001
    assert max(stream.reads) <= READ_CHUNK


async def test_declared_length_over_the_cap_is_refused_unread() -> None:
    stream = Pieces([b"x" * 10])
    read = await read_body(stream, 5, declared=10)
    assert (read.data, read.over, stream.handed_out) == (b"", True, 0)


async def test_drained_body_is_not_kept() -> None:
    """`keep=False` (health answers) reads to the end but holds none of it."""
    stream = Pieces([b"a" * 1000, b"b" * 1000])
    assert await read_body(stream, 5000, keep=False) == Body(b"", over=False)
    assert stream.handed_out == 2000
    assert (await read_body(Pieces([b"a" * 6000]), 5000, keep=False)).over
