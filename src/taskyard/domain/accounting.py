"""A server's account of its dispatches: each answer counts for or against it (in SQL, so that
nodes counting at once lose nothing), and one that keeps failing or refusing tasks is ejected
(rules in `domain/ejection.py`). Called by the dispatcher for every reply, before the task's own
update frees the slot."""

from __future__ import annotations

import logging

from taskyard.domain import ejection
from taskyard.domain.changes import UNSET, ServerPatch
from taskyard.domain.clock import Clock
from taskyard.domain.ejection import EjectionPolicy, EjectionReason
from taskyard.domain.models import Server, ServerStatus
from taskyard.domain.ports import PredictReply, ReplyKind, Store
from taskyard.domain.tallies import OK, Event

log = logging.getLogger(__name__)

REJECTING_LOOKBACK_MS = 5 * 60_000  # "others succeed on the model": within this long
_COUNTS_RESET = ServerPatch(dispatch_failures=0, consecutive_rejections=0)  # a dispatch worked


class ServerAccounts:
    def __init__(self, *, store: Store, policy: EjectionPolicy, clock: Clock) -> None:
        self.store = store
        self.policy = policy
        self.clock = clock

    async def record(self, server: Server, reply: PredictReply) -> None:
        """Count each dispatch for or against the server (in SQL, so nodes counting at once
        lose nothing) and eject it when it keeps failing or refusing (domain/ejection.py)."""
        if reply.kind in (ReplyKind.OK, ReplyKind.ACCEPTED, ReplyKind.TOO_LARGE):
            # No health URL: a dispatch re-admits it (READMITTED resets the counts too).
            readmit = server.ejected and not ejection.is_out(server, now=self.clock.now_ms())
            if readmit or server.dispatch_failures or server.consecutive_rejections:
                reset = ejection.READMITTED if readmit else _COUNTS_RESET
                await self.store.update_server(server.id, reset, revision=server.revision)
            return
        if reply.kind is ReplyKind.REJECTED:
            await self._count_rejection(server)
            return
        failures = await self.store.increment_server(
            server.id, "dispatch_failures", revision=server.revision
        )
        if failures is None:
            return  # deleted or re-registered meanwhile
        if reply.connect_failed:
            # Not even reachable: offline until a health check (or heartbeat) passes.
            was_online = server.status is not ServerStatus.OFFLINE
            values = ServerPatch(
                status=ServerStatus.OFFLINE,
                last_error=reply.error,
                offline_since=self.clock.now_ms() if was_online else UNSET,
            )
            changed = await self.store.update_server(server.id, values, revision=server.revision)
            if changed and server.status is not ServerStatus.OFFLINE:
                log.warning(
                    "server %s offline: dispatch could not connect: %s",
                    server.id,
                    reply.error,
                    extra={"server_id": server.id},
                )
            return
        if failures >= self.policy.after_failures:
            why = f"{failures} failed dispatches in a row, the last: {reply.error}"
            await self._eject(server, EjectionReason.FAILING, why)

    async def _count_rejection(self, server: Server) -> None:
        rejections = await self.store.increment_server(
            server.id, "consecutive_rejections", revision=server.revision
        )
        if rejections is None or rejections < self.policy.after_rejections:
            return
        if await self._others_succeed(server):
            why = f"refused {rejections} different tasks in a row that other servers ran"
            await self._eject(server, EjectionReason.REJECTING, why)

    async def _others_succeed(self, server: Server) -> bool:
        """Whether another server serving one of this one's models finished an attempt well
        lately (the statistics, cluster-wide): then the refusals are this server's fault."""
        since = self.clock.now_ms() - REJECTING_LOOKBACK_MS
        sums = await self.store.tally_sums(
            since=since, events=(Event.ATTEMPT,), group_by=("server_id", "code", "model")
        )
        return any(
            t.code == OK and t.server_id != server.id and server.serves(t.model) for t in sums
        )

    async def _eject(self, server: Server, reason: EjectionReason, why: str) -> None:
        fresh = await self.store.get_server(server.id)
        if fresh is None or fresh.revision != server.revision or fresh.ejected:
            return
        now = self.clock.now_ms()
        ejected = ejection.eject(fresh, reason, now=now, policy=self.policy)
        values = ejected.patch | ServerPatch(last_error=f"ejected ({reason.value}): {why}")
        # Only one node ejects it: the write expects it not ejected yet, on this registration.
        won = await self.store.update_server(
            server.id, values, revision=server.revision, expect=ServerPatch(ejected=False)
        )
        if won:
            log.warning(
                "server %s ejected (%s) for %.0f s (ejection %d in a row): %s",
                server.id,
                reason.value,
                ejected.length_s(now=now),
                ejected.in_a_row,
                why,
                extra={"server_id": server.id},
            )
