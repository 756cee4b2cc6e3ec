"""The cancels owed to backends: a held slot (`SlotHold`) whose server registered
`endpoints.cancel` is sent `{task_id, attempt}` there until the backend answers 2xx (it let go:
the slot is freed) or the hold's grace ends. The obligation lives in the database with the
hold, so a crash forgets nothing; each try is taken with a compare-and-set that also schedules
the next, so a lost send is retried and two nodes never send the same try."""

from __future__ import annotations

import logging
from collections.abc import Callable, Coroutine
from typing import Any

from taskyard.domain.models import SlotHold
from taskyard.domain.policies import DispatchPolicy
from taskyard.domain.ports import BackendClient, Store

log = logging.getLogger(__name__)

CANCEL_RETRY_BASE_S = 0.5  # the first retry's delay; doubled per try up to cancel_retry_max_s


class CancelSender:
    def __init__(
        self,
        *,
        store: Store,
        client: BackendClient,
        policy: DispatchPolicy,
        spawn: Callable[[Coroutine[Any, Any, None]], None],
        freed: Callable[[], None],
    ) -> None:
        self.store = store
        self.client = client
        self.policy = policy
        self._spawn = spawn
        self._freed = freed

    async def send_due(self, now: int) -> None:
        """Send the cancels owed to backends (`SlotHold.cancel_due_at`), each taken with a
        compare-and-set that also schedules its next try, so a crash or a failed send is
        retried and two nodes never both send one."""
        due = await self.store.due_cancels(now=now, limit=self.policy.batch)
        if not due:
            return
        servers = {s.id: s for s in await self.store.list_servers()}
        for hold in due:
            server = servers.get(hold.server_id)
            if server is None or not server.cancel_url:
                await self.store.claim_cancel(hold, next_try_at=None)  # nowhere to send it
                continue
            delay_s = min(
                self.policy.cancel_retry_max_s, CANCEL_RETRY_BASE_S * 2**hold.cancel_tries
            )
            retry_at = now + int((self.policy.cancel_timeout_s + delay_s) * 1000)
            next_try = retry_at if retry_at < hold.held_until else None
            if await self.store.claim_cancel(hold, next_try_at=next_try):
                self._spawn(self._send_cancel(hold, server.cancel_url, server.api_key))

    async def _send_cancel(self, hold: SlotHold, url: str, api_key: str | None) -> None:
        payload = {"task_id": hold.task_id, "attempt": hold.attempt}
        reply = await self.client.cancel(
            url, payload, timeout_s=self.policy.cancel_timeout_s, api_key=api_key
        )
        if reply.let_go:
            if await self.store.release_holds(hold.task_id, attempt=hold.attempt):
                self._freed()  # its slot is free
            return
        log.warning(
            "cancel of task %s (attempt %d) on %s failed (try %d): %s",
            hold.task_id,
            hold.attempt,
            hold.server_id,
            hold.cancel_tries + 1,
            reply.error,
            extra={"task_id": hold.task_id, "server_id": hold.server_id},
        )
