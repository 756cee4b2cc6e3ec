"""`Principal`: who is calling, as a verified token proves it. The domain's authorization rules
(who may read, report on or change a task) take it; `auth.py` builds it from a JWT."""

from __future__ import annotations

from dataclasses import dataclass

from taskyard.roles import ADMIN, SERVICE


@dataclass(frozen=True, slots=True)
class Principal:
    """Who is calling, as proven by a token."""

    sub: str
    roles: frozenset[str]
    server_id: str | None = None  # `srv`: a service token bound to one backend server
    task_id: str | None = None  # `tid` + `att`: a callback token for one attempt
    attempt: int | None = None
    registration: str | None = None  # `reg`: the server registration a token was issued for

    @property
    def is_admin(self) -> bool:
        return ADMIN in self.roles

    @property
    def is_service(self) -> bool:
        return SERVICE in self.roles

    def has_any(self, *roles: str) -> bool:
        return not self.roles.isdisjoint(roles)
