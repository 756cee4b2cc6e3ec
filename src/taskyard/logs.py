"""Process-wide logging: one handler and one format (text or JSON) for taskyard and uvicorn.

`configure()` runs once, in `taskyard serve`, before anything logs. Call sites add ids with
`extra={"task_id": …, "server_id": …}`; the request id (set by the `Edge` middleware) and
this node's id are added to every record by a filter, so no call site has to pass them.

Whatever a message holds, nothing shaped like a JWT leaves this module: a backend's error text
might echo the callback token it was sent, and a log line must never carry a credential.
"""

from __future__ import annotations

import json
import logging
import re
import sys
import time
import types
from contextvars import ContextVar, Token
from typing import Any, Literal, TextIO

import orjson

LogFormat = Literal["text", "json"]

CONTEXT_FIELDS = ("request_id", "task_id", "server_id", "node_id")
TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
TRACE = 5  # uvicorn's extra level below DEBUG
# Loggers that uvicorn would otherwise give handlers (and formats) of their own.
UVICORN_LOGGERS = ("uvicorn", "uvicorn.error", "uvicorn.access", "uvicorn.asgi")

_request_id: ContextVar[str | None] = ContextVar("taskyard_request_id", default=None)
_node_id: str | None = None

# A JWT is three base64url parts; its header always starts with `{"`, which is `eyJ`.
_JWT = re.compile(r"eyJ[A-Za-z0-9_-]*\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]*")
REDACTED = "[redacted token]"


def set_request_id(request_id: str) -> Token[str | None]:
    """Tag what this request (this asyncio context) logs; `reset_request_id` undoes it."""
    return _request_id.set(request_id)


def reset_request_id(token: Token[str | None]) -> None:
    _request_id.reset(token)


def set_node_id(node_id: str | None) -> None:
    """This process's node id, on every record from now on."""
    global _node_id
    _node_id = node_id


def redact(text: str) -> str:
    return _JWT.sub(REDACTED, text) if "eyJ" in text else text


class ContextFilter(logging.Filter):
    """Add the request id and node id where the call site did not give them."""

    def filter(self, record: logging.LogRecord) -> bool:
        if getattr(record, "request_id", None) is None:
            record.request_id = _request_id.get()
        if getattr(record, "node_id", None) is None:
            record.node_id = _node_id
        return True


def context_of(record: logging.LogRecord) -> dict[str, str]:
    """The known context fields of a record (absent or None ones left out)."""
    found: dict[str, str] = {}
    for name in CONTEXT_FIELDS:
        value = getattr(record, name, None)
        if value is not None:
            found[name] = redact(str(value))
    return found


class TextFormatter(logging.Formatter):
    """`time LEVEL logger: message key=value…`, for people reading a terminal."""

    def __init__(self) -> None:
        super().__init__(TEXT_FORMAT)

    def formatMessage(self, record: logging.LogRecord) -> str:
        line = super().formatMessage(record)
        fields = "".join(f" {k}={v}" for k, v in context_of(record).items())
        return line + fields

    def format(self, record: logging.LogRecord) -> str:
        return redact(super().format(record))


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time (UTC, ms), level, logger, message, the known ids, and the
    exception (traceback as one string) when there is one."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": _utc_iso(record.created, record.msecs),
            "level": record.levelname,
            "logger": record.name,
            "message": redact(record.getMessage()),
        }
        entry |= context_of(record)
        if record.exc_info:
            entry["exception"] = redact(self.formatException(record.exc_info))
        elif record.exc_text:
            entry["exception"] = redact(record.exc_text)
        if record.stack_info:
            entry["stack"] = redact(self.formatStack(record.stack_info))
        try:
            return orjson.dumps(entry, default=str).decode()
        except TypeError:  # orjson refuses lone surrogates; the stdlib escapes them
            return json.dumps(entry, default=str)


def _utc_iso(created: float, msecs: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(created)) + f".{int(msecs):03d}Z"


def level_number(level: str) -> int:
    """A level name (`info`, `WARNING`, uvicorn's `trace`) as logging's number."""
    names = logging.getLevelNamesMapping() | {"TRACE": TRACE}
    try:
        return names[level.upper()]
    except KeyError:
        raise ValueError(f"unknown log level {level!r}") from None


def configure(*, level: str, fmt: LogFormat, stream: TextIO | None = None) -> logging.Handler:
    """Send every logger (uvicorn's too) to one handler on stderr, in `fmt`; returns it.

    Replaces whatever handlers the root logger had, so calling it again reconfigures rather
    than doubling every line.
    """
    logging.addLevelName(TRACE, "TRACE")
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter())
    handler.addFilter(ContextFilter())
    root = logging.getLogger()
    for old in root.handlers[:]:
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level_number(level))
    for name in UVICORN_LOGGERS:
        # uvicorn (with log_config=None) adds none, but a library may have: propagate instead.
        logger = logging.getLogger(name)
        logger.handlers.clear()
        logger.propagate = True
    logging.captureWarnings(True)  # warnings.warn output as log records, not raw stderr
    if fmt == "json":
        sys.excepthook = _log_uncaught
    return handler


def _log_uncaught(
    kind: type[BaseException], value: BaseException, traceback: types.TracebackType | None
) -> None:
    """A crash's traceback as one JSON line instead of raw lines on stderr."""
    logging.getLogger("taskyard").critical("uncaught exception", exc_info=(kind, value, traceback))
