"""The Celery + Redis side of `make bench-compare`: the same work as a taskyard task, done the
way a team without taskyard would do it.

A Celery task `predict` makes the call taskyard's dispatcher makes (`POST /predict` with the
dispatch payload) to one of the same mock backends, round-robin, on a keep-alive connection
per worker process, and returns the backend's answer as the task's result (stored in the
Redis result backend). The load side submits `--tasks` with `--clients` threads, each sending
one task (`apply_async`) and waiting for its result (`AsyncResult.get`), and prints one JSON
line: elapsed seconds, and each task's latency and outcome.

It runs in its own venv (`.venv-bench`, the `bench` dependency group), never imported by the
rest of the repo:

    .venv-bench/bin/celery -A benchmarks.celery_side worker --pool prefork --concurrency 2
    .venv-bench/bin/python benchmarks/celery_side.py load --tasks 5000 --clients 64

Broker and results: `CELERY_BENCH_REDIS` (default `redis://127.0.0.1:6379/9`, a database index
of its own, emptied by the load side before it starts).
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import sys
import threading
import time
import uuid
from typing import Any
from urllib.parse import urlsplit

from celery import Celery  # type: ignore[import-not-found,unused-ignore]

REDIS_URL = os.environ.get("CELERY_BENCH_REDIS", "redis://127.0.0.1:6379/9")
BACKENDS = [url for url in os.environ.get("CELERY_BENCH_BACKENDS", "").split(",") if url]

app = Celery("taskyard_bench", broker=REDIS_URL, backend=REDIS_URL)
app.conf.update(
    task_serializer="json",
    result_serializer="json",
    accept_content=["json"],
    result_expires=3600,
    worker_hijack_root_logger=False,
    broker_connection_retry_on_startup=True,
)

_connections: dict[str, http.client.HTTPConnection] = {}  # per worker process: keep-alive


def _post(url: str, body: bytes) -> tuple[int, bytes]:
    parts = urlsplit(url)
    key = parts.netloc
    for _ in range(2):  # once more on a fresh connection if the kept one was closed
        conn = _connections.get(key)
        if conn is None:
            conn = _connections[key] = http.client.HTTPConnection(key, timeout=60)
        try:
            conn.request("POST", parts.path, body, {"Content-Type": "application/json"})
            response = conn.getresponse()
            return response.status, response.read()
        except (http.client.HTTPException, OSError):
            conn.close()
            del _connections[key]
    raise RuntimeError(f"{url}: no answer")


@app.task(name="bench.predict")  # type: ignore[untyped-decorator,misc,unused-ignore]
def predict(index: int, request: dict[str, Any]) -> Any:
    backend = BACKENDS[index % len(BACKENDS)]
    payload = {
        "task_id": str(uuid.uuid4()),
        "request": request,
        "async": False,
        "callback_url": None,
        "callback_token": None,
        "attempt": 1,
    }
    status, body = _post(f"{backend}/predict", json.dumps(payload).encode())
    if status != 200:
        raise RuntimeError(f"backend answered {status}")
    return json.loads(body)


def load(tasks: int, clients: int, warmup: int) -> dict[str, Any]:
    """Send `tasks` tasks with `clients` threads, each submitting and then waiting for one."""
    from benchmarks.load import task_request  # the same task body as taskyard's rows

    lock = threading.Lock()
    samples: list[tuple[float, str]] = []

    def client() -> None:
        while True:
            with lock:
                index = next(next_index, None)
            if index is None:
                return
            started = time.perf_counter()
            try:
                predict.apply_async((index, task_request(index))).get(timeout=60)
                outcome = "FINISHED"
            except Exception as exc:  # counted, not raised: the table shows it
                outcome = type(exc).__name__
            with lock:
                samples.append((time.perf_counter() - started, outcome))

    for _ in range(warmup):  # warm the worker processes and connections, unmeasured
        predict.apply_async((0, task_request(0))).get(timeout=60)
    next_index = iter(range(tasks))
    threads = [threading.Thread(target=client) for _ in range(clients)]
    started = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return {"elapsed_s": time.perf_counter() - started, "samples": samples}


def main() -> None:
    parser = argparse.ArgumentParser(description="the Celery side of make bench-compare")
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("flush", help="empty the benchmark's Redis database (before the worker)")
    run = sub.add_parser("load")
    run.add_argument("--tasks", type=int, default=5000)
    run.add_argument("--clients", type=int, default=64)
    run.add_argument("--warmup", type=int, default=200)
    args = parser.parse_args()
    if args.command == "flush":
        app.backend.client.flushdb()  # its own database index: no stale queue or results
    else:
        print(json.dumps(load(args.tasks, args.clients, args.warmup)))


if __name__ == "__main__":
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    main()
