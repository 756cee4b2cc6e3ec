"""The roles a token's `roles` claim may carry. A module of its own so that anything (the
settings' rate-limit checks included) can name them without importing `auth`."""

from __future__ import annotations

ADMIN = "admin"  # everything, every owner's tasks
USER = "user"  # their own tasks
SERVICE = "service"  # a backend: results and heartbeats for its own server
