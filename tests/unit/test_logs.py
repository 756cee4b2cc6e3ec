"""Log formats, context fields, redaction, and the throttled reports of failing loops."""

from __future__ import annotations

import asyncio
import io
import logging
import sys
from collections.abc import Iterator

import orjson
import pytest

from taskyard import logs
from taskyard.clock import SystemClock
from taskyard.domain.health import describe_change
from taskyard.domain.loops import FailureLog, Wakeable
from taskyard.domain.models import Server, ServerStatus
from taskyard.domain.ports import HealthReply
from tests.support import token
from tests.unit.factories import make_server


def _record(message: str = "hello %s", *args: object, **extra: object) -> logging.LogRecord:
    record = logging.LogRecord("taskyard.x", logging.WARNING, __file__, 1, message, args, None)
    record.__dict__.update(extra)
    return record


def test_json_line_has_time_level_message_and_only_known_ids() -> None:
    """One object: UTC time with ms, level, logger, message, the ids given; unknown ids absent."""
    line = logs.JsonFormatter().format(_record("task %s", "t1", task_id="t1", server_id=None))
    entry = orjson.loads(line)
    assert entry.pop("time").endswith("Z")
    assert entry == {
        "level": "WARNING",
        "logger": "taskyard.x",
        "message": "task t1",
        "task_id": "t1",
    }


def test_json_exception_stays_on_one_line() -> None:
    """A traceback becomes one string field, so the record is still one line."""
    try:
        raise ValueError("boom\nsecond line")
    except ValueError:
        record = _record("failed")
        record.exc_info = sys.exc_info()
    line = logs.JsonFormatter().format(record)
    assert "\n" not in line
    entry = orjson.loads(line)
    assert "Traceback" in entry["exception"]
    assert "ValueError: boom\nsecond line" in entry["exception"]


def test_text_line_appends_known_ids() -> None:
    line = logs.TextFormatter().format(_record("task %s", "t1", task_id="t1", server_id="s1"))
    assert line.endswith("WARNING taskyard.x: task t1 task_id=t1 server_id=s1")


@pytest.mark.parametrize("formatter", [logs.JsonFormatter(), logs.TextFormatter()])
def test_tokens_are_redacted_in_every_format(formatter: logging.Formatter) -> None:
    """A JWT in a message (say, a backend echoing its callback token) never reaches a line."""
    jwt = token(["service"], "server:s1")
    line = formatter.format(_record("HTTP 400: {'callback_token': %r}", jwt))
    assert jwt not in line
    assert jwt.split(".")[2] not in line
    assert logs.REDACTED in line


def test_filter_adds_request_and_node_ids_when_known() -> None:
    """The request id comes from the request's context; the node id is process-wide."""
    context_filter = logs.ContextFilter()
    logs.set_node_id("node-1")
    try:
        request = logs.set_request_id("req-1")
        inside = _record()
        context_filter.filter(inside)
        logs.reset_request_id(request)
        outside = _record()
        context_filter.filter(outside)
    finally:
        logs.set_node_id(None)
    assert logs.context_of(inside) == {"request_id": "req-1", "node_id": "node-1"}
    assert logs.context_of(outside) == {"node_id": "node-1"}


@pytest.fixture
def restored_logging(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Undo `logs.configure` (root handlers and level, uvicorn loggers, excepthook)."""
    root = logging.getLogger()
    saved = root.handlers[:], root.level
    uvicorn = {n: logging.getLogger(n) for n in logs.UVICORN_LOGGERS}
    saved_uvicorn = {n: (lg.handlers[:], lg.propagate) for n, lg in uvicorn.items()}
    monkeypatch.setattr(sys, "excepthook", sys.excepthook)
    yield
    root.handlers[:], root.level = saved
    for name, (handlers, propagate) in saved_uvicorn.items():
        uvicorn[name].handlers[:], uvicorn[name].propagate = handlers, propagate
    logging.captureWarnings(False)


@pytest.mark.usefixtures("restored_logging")
def test_configure_sends_uvicorn_through_the_same_json_handler() -> None:
    """uvicorn's loggers lose their own handlers and come out as JSON lines like ours."""
    out = io.StringIO()
    logging.getLogger("uvicorn.error").addHandler(logging.StreamHandler(io.StringIO()))
    logs.configure(level="info", fmt="json", stream=out)
    logging.getLogger("uvicorn.error").info("Started server process [%d]", 42)
    logging.getLogger("taskyard.test").debug("below the level")
    lines = out.getvalue().splitlines()
    assert [orjson.loads(line)["message"] for line in lines] == ["Started server process [42]"]


def test_unknown_log_level_is_refused() -> None:
    assert logs.level_number("trace") == logs.TRACE
    with pytest.raises(ValueError, match="bogus"):
        logs.level_number("bogus")


# ---- loops that keep failing ------------------------------------------------------------------


class _Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def now_ms(self) -> int:
        return int(self.now * 1000)

    def monotonic(self) -> float:
        return self.now


def _fail(failures: FailureLog) -> None:
    try:
        raise ConnectionError("database is down")
    except ConnectionError:
        failures.failed(server_id="s1")


def test_failure_log_reports_first_then_every_interval_then_recovery(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Failing every 100 ms for 2.5 minutes: three reports and one recovery line, not 1,500."""
    clock = _Clock()
    failures = FailureLog("dispatcher loop", every_s=60.0, clock=clock)
    with caplog.at_level(logging.INFO, logger="taskyard.domain.loops"):
        for tick in range(1500):
            clock.now = tick / 10  # not a running sum: that drifts off the 60 s marks
            _fail(failures)
        failures.succeeded()
        failures.succeeded()  # already working: nothing more to say
    messages = [r.getMessage() for r in caplog.records]
    assert messages == [
        "dispatcher loop failed; retrying",
        "dispatcher loop keeps failing: 601 times in a row over 60 s; retrying",
        "dispatcher loop keeps failing: 1201 times in a row over 120 s; retrying",
        "dispatcher loop works again after 1500 failures in a row over 150 s",
    ]
    assert all(r.exc_info for r in caplog.records[:3])
    assert [getattr(r, "server_id", None) for r in caplog.records] == ["s1", "s1", "s1", None]


def test_repeat_logs_a_failing_loop_once_not_per_iteration(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """`Wakeable.repeat` survives failing steps and reports them through `FailureLog`."""
    loop = Wakeable(SystemClock())
    loop.failure_pause_s = 0.001
    calls = 0

    async def step() -> float:
        nonlocal calls
        calls += 1
        if calls <= 20:
            raise RuntimeError("no database")
        if calls == 22:
            loop.stop()
        return 0.0

    with caplog.at_level(logging.INFO, logger="taskyard.domain.loops"):
        asyncio.run(asyncio.wait_for(loop.repeat("chores", step), timeout=5))
    assert [r.getMessage() for r in caplog.records] == [
        "chores loop failed; retrying",
        "chores loop works again after 20 failures in a row over 0 s",
    ]


# ---- what a health check says about a server ---------------------------------------------------

_UP = HealthReply(healthy=True, network_error=False)
_DOWN = HealthReply(healthy=False, network_error=False, detail="health HTTP 503")


@pytest.mark.parametrize(
    ("server", "reply", "said"),
    [
        (make_server(status=ServerStatus.OFFLINE), _UP, "online: first health check passed"),
        (
            make_server(status=ServerStatus.OFFLINE, last_success_at=1, offline_since=10_000),
            _UP,
            "online: health check passed after 50 s offline",
        ),
        (make_server(last_success_at=1), _DOWN, "offline: health check failed: health HTTP 503"),
        (
            make_server(status=ServerStatus.OFFLINE),
            _DOWN,
            "stays offline: first health check failed: health HTTP 503",
        ),
        (make_server(last_success_at=1), _UP, None),  # still online
        (  # still offline: said already
            make_server(status=ServerStatus.OFFLINE, last_success_at=1, consecutive_failures=3),
            _DOWN,
            None,
        ),
    ],
)
def test_health_state_changes_are_described_once(
    server: Server, reply: HealthReply, said: str | None
) -> None:
    """A line when the state changes (with why), and for a new server's first failed check."""
    change = describe_change(server, reply, now=60_000)
    assert (change[1] if change else None) == said
