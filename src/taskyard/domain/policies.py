"""The coordinator's knobs, as values: `DispatchPolicy` (the dispatcher and the cancels it owes)
and `CoordinatorConfig` (everything a node is told; `HealthPolicy` and `EjectionPolicy` sit with
their rules). A field that mirrors a setting has no default here: its default is stated once, in
`taskyard.config.Settings`, and `taskyard.domain_config.coordinator_config` maps the settings
onto these values. Only constants that are no setting keep a default."""

from __future__ import annotations

from dataclasses import dataclass

from taskyard.domain.ejection import EjectionPolicy
from taskyard.domain.health import HealthPolicy


@dataclass(frozen=True, slots=True, kw_only=True)
class DispatchPolicy:
    node_id: str
    callback_base_url: str
    retry_base_s: float
    retry_max_s: float
    poll_s: float  # a pass at least this often, when nothing wakes the dispatcher
    batch: int
    ejection: EjectionPolicy
    # How long past its deadline an ended attempt's slot stays counted if the backend never
    # says it let go (no cancel endpoint, no late report): a backend may still be running it.
    slot_grace_s: float
    cancel_timeout_s: float
    coalesce_s: float = 0.003  # seconds a woken pass waits for more work to arrive
    cancel_retry_max_s: float = 10.0


@dataclass(frozen=True, slots=True, kw_only=True)
class CoordinatorConfig:
    dispatch: DispatchPolicy
    health: HealthPolicy
    task_timeout_s: float  # a task's processing deadline per attempt, unless it sets one
    max_attempts: int  # likewise
    result_retention_s: float
    chores_interval_s: float
    node_timeout_s: float
    # A seed-style `service` token (no server binding) may report for the server named in the
    # report's metadata.server_id: any running task. Off unless the operator allows it.
    allow_unbound_service_tokens: bool
    # From the stop signal to the end: sends in flight have this long to be answered.
    shutdown_grace_s: float
    max_unfinished_tasks: int  # per owner, for creates made with `capped`; 0 = no cap

    @property
    def node_id(self) -> str:
        return self.dispatch.node_id
