"""Prometheus metrics (`/metrics`): this node's counters, and the database's gauges once.

Two kinds, so that `sum()` over the nodes of a cluster is right:

- **What this node did**: counters and histograms fed by the domain's `Observer` calls (the
  same tallies the database statistics count). Every one has a `node` label; a restart starts
  them at zero, which Prometheus' `rate()` and `increase()` expect.
- **What the database holds** (queue depth, tasks by status, servers' state, in-flight and
  capacity): the same for every node, so only the node holding the `chores` lease exports
  them, without a `node` label; the others leave them out. A scrape reads them fresh.
  `taskyard_cluster_gauges_exporter{node}` says which node that is (1) or is not (0).
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Iterator
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from taskyard.clock import now_ms
from taskyard.domain.models import ServerState, TaskStatus
from taskyard.domain.ports import Store
from taskyard.domain.tallies import OK, Event, Tally

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

# Seconds; queue waits run from milliseconds to hours, backend calls from ms to minutes.
_QUEUE_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 1800)
_LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300)


class PrometheusObserver:
    """The domain's `Observer`, as Prometheus metrics of one node."""

    def __init__(self, node_id: str) -> None:
        self._children: dict[tuple[int, tuple[str | None, ...]], Any] = {}
        self.node_id = node_id
        self.registry = CollectorRegistry(auto_describe=True)
        r, node = self.registry, ("node",)
        self.created = Counter(
            "taskyard_tasks_created", "Tasks stored", [*node, "model"], registry=r
        )
        self.finished = Counter(
            "taskyard_tasks_finished", "Tasks that ended FINISHED", [*node, "model"], registry=r
        )
        self.failed = Counter(
            "taskyard_tasks_failed",
            "Tasks that ended FAILED",
            [*node, "model", "error_code"],
            registry=r,
        )
        self.cancelled = Counter(
            "taskyard_tasks_cancelled", "Tasks cancelled", [*node, "model"], registry=r
        )
        self.attempts = Counter(
            "taskyard_attempts",
            "Attempts that ended, by server and outcome (ok, cancelled or the errorCode)",
            [*node, "server", "outcome"],
            registry=r,
        )
        self.queue_wait = Histogram(
            "taskyard_queue_wait_seconds",
            "Time a task waited before an attempt started (dispatch latency)",
            [*node, "model"],
            buckets=_QUEUE_BUCKETS,
            registry=r,
        )
        self.backend_latency = Histogram(
            "taskyard_backend_latency_seconds",
            "Duration of attempts that returned a result, by server",
            [*node, "server"],
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.health_checks = Counter(
            "taskyard_health_checks",
            "Health checks run by this node, by result (pass, fail)",
            [*node, "server", "result"],
            registry=r,
        )
        self.loop_failures = Counter(
            "taskyard_loop_failures",
            "Background loop iterations that failed",
            [*node, "loop"],
            registry=r,
        )
        self.loop_success = Gauge(
            "taskyard_loop_last_success_timestamp_seconds",
            "When each background loop last finished an iteration without error",
            [*node, "loop"],
            registry=r,
        )
        self.long_polls = Gauge(
            "taskyard_long_polls_open",
            "Long polls (GET /api/task/{id}?wait=) this node is holding open",
            node,
            registry=r,
        )
        self.cluster = ClusterGauges(node_id)
        r.register(self.cluster)

    # ---- Observer ------------------------------------------------------------------------

    def _child(self, metric: Any, *labels: str | None) -> Any:
        """`metric.labels(node, *labels)`, looked up once per label set: `labels` validates
        and joins its arguments on every call (a tenth of a batch create's time)."""
        key = (id(metric), labels)
        child = self._children.get(key)
        if child is None:
            child = self._children[key] = metric.labels(self.node_id, *labels)
        return child

    def tallied(self, tallies: Iterable[Tally]) -> None:
        child = self._child
        for t in tallies:
            if t.event is Event.CREATED:
                child(self.created, t.model).inc()
            elif t.event is Event.FINISHED:
                child(self.finished, t.model).inc()
            elif t.event is Event.FAILED:
                child(self.failed, t.model, t.code).inc()
            elif t.event is Event.CANCELLED:
                child(self.cancelled, t.model).inc()
            elif t.event is Event.ATTEMPT:
                child(self.attempts, t.server_id, t.code).inc()
                if t.code == OK and t.ms is not None:
                    child(self.backend_latency, t.server_id).observe(t.ms / 1000)
            elif t.event is Event.QUEUE_WAIT and t.ms is not None:
                child(self.queue_wait, t.model).observe(t.ms / 1000)

    def health_checked(self, server_id: str, *, healthy: bool) -> None:
        self._child(self.health_checks, server_id, "pass" if healthy else "fail").inc()

    def loop_ran(self, loop: str, *, ok: bool) -> None:
        if ok:
            self.loop_success.labels(self.node_id, loop).set(time.time())
        else:
            self.loop_failures.labels(self.node_id, loop).inc()

    # ---- scrape --------------------------------------------------------------------------

    async def render(self, store: Store, *, exports_cluster_gauges: bool) -> bytes:
        """The text exposition, with the database's gauges read now if this node exports
        them."""
        if exports_cluster_gauges:
            await self.cluster.refresh(store)
        else:
            self.cluster.clear()
        return generate_latest(self.registry)


class ClusterGauges(Collector):
    """The database's gauges, as last read (`refresh`), or none (`clear`)."""

    def __init__(self, node_id: str) -> None:
        self.node_id = node_id
        self._metrics: list[Metric] = []
        self._exporting = False

    def clear(self) -> None:
        self._metrics, self._exporting = [], False

    async def refresh(self, store: Store) -> None:
        now = now_ms()
        by_status = await store.count_tasks()
        queues = await store.queue_by_model(now=now)
        running = await store.processing_by_model()
        servers = await store.list_servers()

        tasks = GaugeMetricFamily("taskyard_tasks", "Stored tasks by status", labels=["status"])
        for status in TaskStatus:
            tasks.add_metric([status.value], by_status.get(status.value, 0))
        depth = GaugeMetricFamily(
            "taskyard_queue_depth",
            "Open tasks by model and status (WAITING, WAITING_DUE: not in backoff, PROCESSING)",
            labels=["model", "status"],
        )
        for q in queues:
            depth.add_metric([q.model, "WAITING"], q.waiting)
            depth.add_metric([q.model, "WAITING_DUE"], q.due)
        for model, n in sorted(running.items()):
            depth.add_metric([model, "PROCESSING"], n)
        in_flight = GaugeMetricFamily(
            "taskyard_server_in_flight", "Tasks running on each server", labels=["server"]
        )
        capacity = GaugeMetricFamily(
            "taskyard_server_capacity", "max_concurrency of each server", labels=["server"]
        )
        state = GaugeMetricFamily(
            "taskyard_server_state", "1 for each server's current state", labels=["server", "state"]
        )
        for s in servers:
            in_flight.add_metric([s.id], s.in_flight)
            capacity.add_metric([s.id], s.max_concurrency)
            for candidate in ServerState:  # online, offline, ejected, draining, maintenance
                state.add_metric([s.id, candidate.value], 1 if s.state is candidate else 0)
        self._metrics = [tasks, depth, in_flight, capacity, state]
        self._exporting = True

    def collect(self) -> Iterator[Metric]:
        exporter = GaugeMetricFamily(
            "taskyard_cluster_gauges_exporter",
            "1 on the node that exports the database's gauges (the chores lease holder)",
            labels=["node"],
        )
        exporter.add_metric([self.node_id], 1 if self._exporting else 0)
        yield exporter
        yield from self._metrics
