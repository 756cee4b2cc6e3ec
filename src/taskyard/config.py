"""Settings: the only place that reads `TASKYARD_*` environment variables.

Every field is also a CLI flag of `taskyard serve` (see `cli.py`); build `Settings` once at the
edge (CLI, `create_app`) and pass plain values further down.
"""

from __future__ import annotations

import os
import re
import secrets
from pathlib import Path
from typing import Literal

from pydantic import Field, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from taskyard.keys import parse_secrets, signing_kid
from taskyard.netguard import parse_networks
from taskyard.ratelimit import parse_rates

MIN_SECRET_LENGTH = 32  # characters; HS256 wants at least 256 bits of key
MIN_METRICS_TOKEN_LENGTH = 16
DEV_SECRET_NAME = "dev-secret"
# The API's bound on `?wait=` (its OpenAPI document and the SDK's `MAX_WAIT_S` say it too): the
# longest any long poll may be; TASKYARD_LONG_POLL_MAX_S may only shorten it.
MAX_LONG_POLL_S = 60.0


_ORIGIN = re.compile(r"^https?://[^/\s,]+$")


def parse_origins(value: str) -> list[str]:
    """`TASKYARD_CORS_ORIGINS`: comma-separated origins (`https://app.example.com`), or `*`;
    raises ValueError for anything else (a path, a missing scheme)."""
    origins = [origin.strip().rstrip("/") for origin in value.split(",") if origin.strip()]
    for origin in origins:
        if origin != "*" and not _ORIGIN.match(origin):
            raise ValueError(f"not an origin (scheme://host[:port]): {origin!r}")
    return origins


class InsecureConfig(ValueError):
    """The configuration is unsafe for production."""


class Settings(BaseSettings):
    """taskyard's configuration; defaults are the seed's values."""

    model_config = SettingsConfigDict(env_prefix="TASKYARD_", extra="ignore")

    env: Literal["development", "production"] = "development"
    host: str = "127.0.0.1"
    port: int = Field(8787, ge=0, le=65535)
    public_url: str = ""  # base of callback URLs; defaults to http://host:port
    node_id: str = Field("", max_length=64)  # this node's name; default host name + random
    database_url: str = "sqlite:///./taskyard.db"
    jwt_secret: str = ""
    # Keys and tokens (auth.py, keys.py; docs/deploy.md "Keys and tokens"). HS256 secrets by
    # `kid`: "kid1:secret1,kid2:secret2"; the signing one named by jwt_signing_kid. Secrets:
    # never logged.
    jwt_secrets: str = Field("", repr=False)
    jwt_signing_kid: str = ""
    jwks_url: str = ""  # RS256/ES256 public keys: an http(s) URL or a file path
    jwks_refetch_min_s: float = Field(30.0, gt=0)  # at most one fetch (unknown kid) per this
    jwt_issuer: str = ""  # when set: required `iss` (taskyard's own tokens carry it)
    jwt_audience: str = ""  # when set: required `aud` (likewise)
    jwt_leeway_s: float = Field(30.0, ge=0, le=300)  # clock skew allowed on exp, nbf, iat
    server_token_ttl_s: float = Field(24 * 3600.0, gt=0)  # renewed by every heartbeat
    db_pool_size: int = Field(20, ge=1, le=1000)  # PostgreSQL connections per node
    # SQLite's durability (docs/deploy.md "SQLite durability"): `full` (the default) makes
    # every acknowledged write survive power loss; `normal` (WAL without an fsync per commit)
    # survives a crash or kill -9 of taskyard but may lose the last commits to power loss.
    sqlite_synchronous: Literal["full", "normal"] = "full"
    log_format: Literal["text", "json"] = "text"  # json: one object per line (logs.py)
    # A static bearer token for Prometheus scrapes of /metrics (admin JWTs work too); empty =
    # admin tokens only. A secret: never logged.
    metrics_token: str = Field("", repr=False)
    # Browsers on these origins may call the API (comma-separated, e.g.
    # https://app.example.com; `*` = any origin, without credentials); empty = no CORS.
    cors_origins: str = ""
    # The SSRF guard (netguard.py; docs/deploy.md "Backend addresses"): CIDRs that server
    # endpoints may reach although they are loopback, private, link-local, …; development
    # adds loopback.
    allowed_backend_networks: str = ""
    # Limits per user `sub` (api/ratelimit.py; docs/deploy.md "Rate limits and quotas"); admins
    # and backends are never limited. Rates are `limits` strings ("100/second;2000/minute"),
    # empty = none; 0 = no cap. The counters: memory:// per node, or redis://… cluster-wide.
    rate_limit_creates: str = "100/second"
    rate_limit_requests: str = "200/second"
    rate_limit_storage: str = "memory://"
    max_unfinished_tasks: int = Field(10_000, ge=0)  # WAITING + PROCESSING, per user
    max_open_waits: int = Field(100, ge=0)  # long polls (`?wait=`) open per user and node
    long_poll_max_s: float = Field(
        MAX_LONG_POLL_S,
        gt=0,
        le=MAX_LONG_POLL_S,
        description=f"the longest a long poll is held: a `?wait=` (at most {MAX_LONG_POLL_S:g})"
        " above it is answered after this, with the task as it is then",
    )
    docs: bool = True  # serve /docs and /redoc (/openapi.json is always served)
    # Slow and greedy clients (cli/serving.py; docs/deploy.md "Slow clients and connection
    # limits"): seconds to send a request head, and open connections per node.
    head_timeout_s: float = Field(10.0, gt=0, le=300)
    max_connections: int = Field(1000, ge=1)
    # Processes serving on this machine (`serve --workers`, cli/workers.py; docs/deploy.md
    # "Workers"): each a node of its own on the one database; 0 = one per core.
    workers: int = Field(0, ge=0, le=256)
    # Set by the supervisor of `serve --workers` for its workers on SQLite: where their change
    # notices meet (storage/peerbus.py). Not for hand use.
    worker_bus_dir: str = ""
    # From SIGTERM to exit: sends in flight have this long to be answered (docs/deploy.md
    # "Shutdown"); the process exits within it plus a second. A second signal stops at once.
    shutdown_grace_s: float = Field(20.0, ge=0, le=600)

    # Health monitoring (SPEC §4), seconds.
    health_timeout_s: float = Field(5.0, gt=0)
    health_interval_min_s: float = Field(10.0, gt=0)
    health_interval_max_s: float = Field(60.0, gt=0)
    health_retries: int = Field(3, ge=0)
    health_retry_delay_s: float = Field(2.0, ge=0)
    health_backoff_after: int = Field(5, ge=0)  # successes before the interval grows
    health_concurrency: int = Field(200, ge=1)  # checks in flight at once, all servers
    offline_removal_s: float = Field(180.0, ge=0)  # offline this long → removed; 0: never
    # Outlier ejection (domain/ejection.py): consecutive failed dispatches (connect errors,
    # timeouts, 5xx) or refused tasks that eject a server, for a time doubling from
    # eject_base_s to eject_max_s, reset after eject_reset_s back in rotation; at most
    # eject_max_share of a model's servers are left out (past it: the panic threshold).
    eject_after_failures: int = Field(3, ge=1)
    eject_after_rejections: int = Field(3, ge=1)
    eject_base_s: float = Field(30.0, gt=0)
    eject_max_s: float = Field(300.0, gt=0)
    eject_reset_s: float = Field(600.0, ge=0)
    eject_max_share: float = Field(0.5, ge=0, le=1)
    # A cancelled or timed-out attempt's slot stays counted until its backend lets go (cancel
    # answer, late report) or this long past its deadline.
    slot_grace_s: float = Field(30.0, ge=0)
    cancel_timeout_s: float = Field(5.0, gt=0)

    # Dispatch (SPEC §3).
    task_timeout_s: float = Field(300.0, gt=0)  # default processing deadline per attempt
    max_attempts: int = Field(3, ge=1)
    retry_base_s: float = Field(1.0, ge=0)
    retry_max_s: float = Field(30.0, ge=0)
    dispatch_poll_s: float = Field(0.5, gt=0)  # fallback when nothing wakes the dispatcher
    dispatch_batch: int = Field(256, ge=1)

    # Limits (SPEC §8).
    max_body_bytes: int = Field(1_048_576, ge=1024)
    max_backend_response_bytes: int = Field(10_485_760, ge=1024)
    result_retention_s: float = Field(7 * 24 * 3600.0, gt=0)
    chores_interval_s: float = Field(5.0, gt=0)
    node_timeout_s: float = Field(30.0, gt=0)  # a coordinator unseen this long is dead

    # Seed compatibility: backends written for the seed sign their own `service` token with the
    # shared secret, bound to no server, and name the server in `metadata.server_id` of a PUT.
    # Such a token can report for any running task, so production refuses it unless this is
    # set; development allows it (unset = allowed in development only).
    allow_unbound_service_tokens: bool | None = None

    @model_validator(mode="after")
    def _check(self) -> Settings:
        parse_origins(self.cors_origins)  # a ValueError names the bad one
        parse_networks(self.allowed_backend_networks)  # likewise
        parse_rates(self.rate_limit_creates, "TASKYARD_RATE_LIMIT_CREATES")
        parse_rates(self.rate_limit_requests, "TASKYARD_RATE_LIMIT_REQUESTS")
        if self.health_interval_max_s < self.health_interval_min_s:
            raise ValueError("TASKYARD_HEALTH_INTERVAL_MAX_S must be >= _MIN_S")
        if self.node_timeout_s < 2 * self.chores_interval_s:
            # A node renews its record every chores interval; a shorter timeout would declare
            # live nodes dead between two renewals.
            raise ValueError("TASKYARD_NODE_TIMEOUT_S must be at least twice _CHORES_INTERVAL_S")
        if self.metrics_token and len(self.metrics_token) < MIN_METRICS_TOKEN_LENGTH:
            raise InsecureConfig(
                f"TASKYARD_METRICS_TOKEN needs at least {MIN_METRICS_TOKEN_LENGTH} characters"
            )
        self._check_keys()
        return self

    def _check_keys(self) -> None:
        named = parse_secrets(self.jwt_secrets)  # KeyConfigError (a ValueError) if malformed
        signing_kid(named, self.jwt_signing_kid)
        if self.env != "production":
            return
        hint = " (generate one with: python -c 'import secrets; print(secrets.token_urlsafe(48))')"
        if not named and len(self.jwt_secret) < MIN_SECRET_LENGTH:
            raise InsecureConfig(
                f"production needs TASKYARD_JWT_SECRET of at least {MIN_SECRET_LENGTH} characters"
                + hint
            )
        if self.jwt_secret and len(self.jwt_secret) < MIN_SECRET_LENGTH:
            raise InsecureConfig(f"TASKYARD_JWT_SECRET needs {MIN_SECRET_LENGTH} characters" + hint)
        for kid, secret in named.items():
            if len(secret) < MIN_SECRET_LENGTH:
                raise InsecureConfig(
                    f"production needs every TASKYARD_JWT_SECRETS secret to have at least"
                    f" {MIN_SECRET_LENGTH} characters; the one of kid {kid!r} is shorter" + hint
                )

    @property
    def cors_origin_list(self) -> list[str]:
        return parse_origins(self.cors_origins)

    @property
    def unbound_service_tokens_allowed(self) -> bool:
        if self.allow_unbound_service_tokens is None:
            return self.env == "development"
        return self.allow_unbound_service_tokens

    @property
    def callback_base_url(self) -> str:
        base = self.public_url or f"http://{self.host}:{self.port}"
        return base.rstrip("/")


class _LogFormatOnly(BaseSettings):
    """Just TASKYARD_LOG_FORMAT, read before the rest of the settings are checked."""

    model_config = SettingsConfigDict(env_prefix="TASKYARD_", extra="ignore")

    log_format: str = "text"


def early_log_format(flag: str | None) -> Literal["text", "json"]:
    """The log format to report configuration errors in: `serve` must know it before the
    settings are validated, so that even "invalid configuration" comes out as JSON lines. An
    unknown value means text here; `Settings` then refuses it."""
    chosen = flag if flag is not None else _LogFormatOnly().log_format
    return "json" if chosen == "json" else "text"


def dev_secret_file() -> Path:
    """Where development keeps its secret: one place per user, whatever the working directory,
    so that `taskyard serve` and `taskyard token` run from anywhere agree.
    `TASKYARD_DEV_SECRET_FILE` overrides it; else `$XDG_CONFIG_HOME/taskyard/dev-secret`
    (`~/.config/taskyard/dev-secret`)."""
    chosen = os.environ.get("TASKYARD_DEV_SECRET_FILE")
    if chosen:
        return Path(chosen).expanduser()
    config_home = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(config_home) / "taskyard" / DEV_SECRET_NAME


def resolve_secret(settings: Settings) -> tuple[Settings, Path | None, bool]:
    """Give a development setup a stable secret kept in `dev_secret_file()`.

    Returns the settings with a secret, the file it came from (None when the configuration
    gave one) and whether it was generated now. Production never reaches the generator: the
    validator already refused a missing secret.
    """
    if settings.jwt_secret or settings.jwt_secrets:
        return settings, None, False
    path = dev_secret_file()
    created = False
    if path.exists():
        secret = path.read_text().strip()
    else:
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        secret = secrets.token_urlsafe(48)
        path.touch(mode=0o600)
        path.write_text(secret + "\n")
        created = True
    return settings.model_copy(update={"jwt_secret": secret}), path, created
