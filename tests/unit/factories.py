"""Builders for domain values with overridable defaults."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from taskyard.domain.models import Server, ServerStatus, Task, TaskStatus


def make_task(**overrides: Any) -> Task:
    task = Task(
        id="t1",
        owner="alice",
        model="m",
        request={"model": "m"},
        status=TaskStatus.WAITING,
        priority=0,
        attempt=0,
        max_attempts=3,
        timeout_s=10.0,
        created_at=1_000,
        updated_at=1_000,
    )
    return replace(task, **overrides)


def make_server(server_id: str = "s1", **overrides: Any) -> Server:
    server = Server(
        id=server_id,
        name=server_id,
        provider="test",
        predict_url=f"http://127.0.0.1:1/{server_id}/predict",
        health_url=f"http://127.0.0.1:1/{server_id}/health",
        is_async=False,
        callback=False,
        max_concurrency=1,
        models=(),
        weight=1.0,
        status=ServerStatus.ONLINE,
        registered_at=0,
        check_interval_s=10.0,
    )
    return replace(server, **overrides)
