"""The domain's policies from the settings: `coordinator_config(settings, node_id)` is the one
place where `Settings` (whose defaults are the only ones) become the values the domain takes.
Tests build a complete config the same way: `coordinator_config(Settings(...), "n1")`."""

from __future__ import annotations

from taskyard.config import Settings
from taskyard.domain.ejection import EjectionPolicy
from taskyard.domain.health import HealthPolicy
from taskyard.domain.policies import CoordinatorConfig, DispatchPolicy


def coordinator_config(settings: Settings, node_id: str) -> CoordinatorConfig:
    return CoordinatorConfig(
        dispatch=DispatchPolicy(
            node_id=node_id,
            callback_base_url=settings.callback_base_url,
            retry_base_s=settings.retry_base_s,
            retry_max_s=settings.retry_max_s,
            poll_s=settings.dispatch_poll_s,
            batch=settings.dispatch_batch,
            ejection=EjectionPolicy(
                after_failures=settings.eject_after_failures,
                after_rejections=settings.eject_after_rejections,
                base_s=settings.eject_base_s,
                max_s=settings.eject_max_s,
                reset_s=settings.eject_reset_s,
                max_share=settings.eject_max_share,
            ),
            slot_grace_s=settings.slot_grace_s,
            cancel_timeout_s=settings.cancel_timeout_s,
        ),
        health=HealthPolicy(
            timeout_s=settings.health_timeout_s,
            interval_min_s=settings.health_interval_min_s,
            interval_max_s=settings.health_interval_max_s,
            backoff_after=settings.health_backoff_after,
            retries=settings.health_retries,
            retry_delay_s=settings.health_retry_delay_s,
            offline_removal_s=settings.offline_removal_s,
            concurrency=settings.health_concurrency,
        ),
        task_timeout_s=settings.task_timeout_s,
        max_attempts=settings.max_attempts,
        result_retention_s=settings.result_retention_s,
        chores_interval_s=settings.chores_interval_s,
        node_timeout_s=settings.node_timeout_s,
        allow_unbound_service_tokens=settings.unbound_service_tokens_allowed,
        shutdown_grace_s=settings.shutdown_grace_s,
        max_unfinished_tasks=settings.max_unfinished_tasks,
    )
