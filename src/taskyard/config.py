"""Settings: the only place that reads `TASKYARD_*` environment variables.

Every field is also a CLI flag of `taskyard serve` (see `cli.py`); build `Settings` once at the
edge (CLI, `create_app`) and pass plain values further down.
"""

from __future__ import annotations

import os
import re
import secrets
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, model_validator
from pydantic.config import JsonDict
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


def _extra(*, shown: str = "", secret: bool = False, see: str = "") -> JsonDict:
    """A setting's documentation beyond its description (`cli/settings.py` renders it):
    `shown`, its default in words when it depends on TASKYARD_ENV or the machine; `secret`,
    its value is never shown; `see`, the doc section that explains it."""
    extra: JsonDict = {}
    if shown:
        extra["shown"] = shown
    if secret:
        extra["secret"] = True
    if see:
        extra["see"] = see
    return extra


class InsecureConfig(ValueError):
    """The configuration is unsafe for production."""


class Settings(BaseSettings):
    """taskyard's configuration; defaults are the seed's values.

    Each field's default and one-line `description` are stated here only: `taskyard serve
    --help` and the README's table (`taskyard settings`) are made from them, and code that runs
    without a `Settings` (a test, a tool) takes a default with `default_of`. `extra` says what a
    plain default cannot: a default in words, a secret (its value never shown), a doc section.
    """

    model_config = SettingsConfigDict(env_prefix="TASKYARD_", extra="ignore")

    env: Literal["development", "production"] = Field(
        "development", description="`production` refuses a missing or short (< 32 chars) secret"
    )
    host: str = Field("127.0.0.1", description="the address to listen on")
    port: int = Field(8787, ge=0, le=65535, description="the port to listen on")
    public_url: str = Field(
        "",
        description="base of the callback URLs sent to backends",
        json_schema_extra=_extra(shown="http://HOST:PORT"),
    )
    node_id: str = Field(
        "",
        max_length=64,
        description="this node's name in `GET /api/nodes`, attempts and `X-Taskyard-Node`",
        json_schema_extra=_extra(shown="host name + random suffix"),
    )
    database_url: str = Field(
        "sqlite:///./taskyard.db", description="a SQLite file, or `postgresql://…`"
    )
    jwt_secret: str = Field(
        "",
        repr=False,
        description="HS256 secret of tokens without `kid` (shared with token issuers); in"
        " development without one, a secret kept in `~/.config/taskyard/dev-secret`"
        " (`$XDG_CONFIG_HOME`, or the file `TASKYARD_DEV_SECRET_FILE` names)",
        json_schema_extra=_extra(shown="generated in development", secret=True),
    )
    # Keys and tokens (auth.py, keys.py; docs/deploy.md "Keys and tokens"). Secrets: never logged.
    jwt_secrets: str = Field(
        "",
        repr=False,
        description="more HS256 secrets by `kid`: `kid1:secret1,kid2:secret2`",
        json_schema_extra=_extra(secret=True, see="docs/deploy.md#keys-and-tokens"),
    )
    jwt_signing_kid: str = Field(
        "",
        description="the `kid` of `TASKYARD_JWT_SECRETS` that signs (optional when there is one)",
    )
    jwks_url: str = Field(
        "", description="RS256/ES256 public keys: a JWKS at an http(s) URL or in a file"
    )
    jwks_refetch_min_s: float = Field(
        30.0, gt=0, description="least time between two JWKS fetches (an unknown `kid` refetches)"
    )
    jwt_issuer: str = Field(
        "", description="when set, a token's required `iss` (taskyard's own tokens carry it)"
    )
    jwt_audience: str = Field(
        "", description="when set, a token's required `aud` (taskyard's own tokens carry it)"
    )
    jwt_leeway_s: float = Field(
        30.0, ge=0, le=300, description="clock skew allowed on `exp`, `nbf` and `iat`"
    )
    server_token_ttl_s: float = Field(
        24 * 3600.0,
        gt=0,
        description="lifetime of a server token; each heartbeat returns a fresh one",
    )
    db_pool_size: int = Field(
        20, ge=1, le=1000, description="PostgreSQL connections per node (plus one for LISTEN)"
    )
    # SQLite's durability (docs/deploy.md "SQLite durability"): `full` makes every acknowledged
    # write survive power loss; `normal` (WAL without an fsync per commit) survives a crash or
    # kill -9 of taskyard but may lose the last commits to power loss.
    sqlite_synchronous: Literal["full", "normal"] = Field(
        "full",
        description="`full`: every acknowledged write survives power loss; `normal`: no fsync"
        " per commit, survives a crash or kill -9 but not power loss",
        json_schema_extra=_extra(see="docs/deploy.md#sqlite-durability"),
    )
    log_format: Literal["text", "json"] = Field(
        "text",
        description="`json`: every line of output is one JSON object (`time`, `level`, `logger`,"
        " `message`, and where known `request_id`, `task_id`, `server_id`, `node_id`)",
    )
    metrics_token: str = Field(
        "",
        repr=False,
        description="a static bearer token (16+ chars) for Prometheus scrapes of `/metrics`;"
        " admin JWTs work too; empty: admin JWTs only",
        json_schema_extra=_extra(secret=True),
    )
    cors_origins: str = Field(
        "",
        description="comma-separated origins whose browsers may call the API, with credentials"
        " (`*`: any, without); empty: no CORS",
        json_schema_extra=_extra(see="docs/deploy.md#cors-and-security-headers"),
    )
    # The SSRF guard (netguard.py): development adds loopback.
    allowed_backend_networks: str = Field(
        "",
        description="CIDRs server endpoints may reach although not public; every other"
        " loopback, private, link-local, metadata… address is refused",
        json_schema_extra=_extra(
            shown="none (development: loopback)", see="docs/deploy.md#backend-addresses-ssrf-guard"
        ),
    )
    # Limits per user `sub` (api/ratelimit.py); admins and backends are never limited. Rates
    # are `limits` strings ("100/second;2000/minute").
    rate_limit_creates: str = Field(
        "100/second",
        description="tasks a user may create (`100/second;2000/minute`); empty: no limit; 429"
        " past it",
        json_schema_extra=_extra(see="docs/deploy.md#rate-limits-and-quotas"),
    )
    rate_limit_requests: str = Field(
        "200/second", description="other API requests a user may make; empty: no limit"
    )
    rate_limit_storage: str = Field(
        "memory://",
        description="where the rate counters live: `memory://` per node, or"
        " `redis://host:6379` for the whole cluster",
    )
    max_unfinished_tasks: int = Field(
        10_000, ge=0, description="a user's WAITING + PROCESSING tasks; 0: no cap"
    )
    max_open_waits: int = Field(
        100, ge=0, description="a user's open long polls (`?wait=`) per node; 0: no cap"
    )
    long_poll_max_s: float = Field(
        MAX_LONG_POLL_S,
        gt=0,
        le=MAX_LONG_POLL_S,
        description=f"the longest a long poll is held: a `?wait=` (at most {MAX_LONG_POLL_S:g})"
        " above it is answered after this, with the task as it is then",
    )
    docs: bool = Field(True, description="serve `/docs` and `/redoc` (`/openapi.json` always)")
    # Slow and greedy clients (cli/serving.py).
    head_timeout_s: float = Field(
        10.0,
        gt=0,
        le=300,
        description="a request's line and headers must arrive within this, else 408 and closed",
    )
    max_connections: int = Field(
        1000,
        ge=1,
        description="open connections per node; past it new ones are closed at once",
        json_schema_extra=_extra(see="docs/deploy.md#slow-clients-and-connection-limits"),
    )
    # `serve --workers`, cli/workers.py: each worker a node of its own on the one database.
    workers: int = Field(
        0,
        ge=0,
        le=256,
        description="processes serving on this machine, each a node (`1`: a single process)",
        json_schema_extra=_extra(shown="0: one per core", see="docs/deploy.md#workers"),
    )
    worker_bus_dir: str = Field(
        "",
        description="set by `serve --workers` for its workers on SQLite: where their change"
        " notices meet (storage/peerbus.py); not for hand use",
    )
    shutdown_grace_s: float = Field(
        20.0,
        ge=0,
        le=600,
        description="from SIGTERM to exit: sends in flight have this long to be answered (a"
        " second signal stops at once)",
        json_schema_extra=_extra(see="docs/deploy.md#shutdown"),
    )

    # Health monitoring (SPEC §4).
    health_timeout_s: float = Field(5.0, gt=0, description="timeout of a health GET")
    health_interval_min_s: float = Field(
        10.0, gt=0, description="first and reset interval between a server's checks"
    )
    health_interval_max_s: float = Field(
        60.0, gt=0, description="longest interval between a server's checks"
    )
    health_retries: int = Field(3, ge=0, description="network-error retries per check")
    health_retry_delay_s: float = Field(2.0, ge=0, description="pause between those retries")
    health_backoff_after: int = Field(
        5, ge=0, description="passed checks in a row before the interval grows (by half)"
    )
    health_concurrency: int = Field(
        200, ge=1, description="health checks in flight at once, all servers"
    )
    offline_removal_s: float = Field(
        180.0,
        ge=0,
        description="a server offline this long is removed (0: never; never in maintenance or"
        " with `autoRemove: false`)",
    )
    # Outlier ejection (domain/ejection.py).
    eject_after_failures: int = Field(
        3, ge=1, description="failed dispatches in a row (connect error, timeout, 5xx) that eject"
    )
    eject_after_rejections: int = Field(
        3,
        ge=1,
        description="refused tasks in a row, while others ran the model, that eject (`rejecting`)",
    )
    eject_base_s: float = Field(
        30.0, gt=0, description="the first ejection's length, doubling per ejection in a row"
    )
    eject_max_s: float = Field(300.0, gt=0, description="the longest ejection")
    eject_reset_s: float = Field(
        600.0, ge=0, description="this long back in rotation: the next ejection starts at the base"
    )
    eject_max_share: float = Field(
        0.5,
        ge=0,
        le=1,
        description="panic threshold: past this share of a model's servers ejected, ejected"
        " ones take tasks again",
    )
    slot_grace_s: float = Field(
        30.0,
        ge=0,
        description="a cancelled or timed-out attempt's slot stays counted until its backend"
        " lets go, or this long past its deadline",
    )
    cancel_timeout_s: float = Field(
        5.0, gt=0, description="timeout of a cancel POST to a server's `endpoints.cancel`"
    )

    # Dispatch (SPEC §3).
    task_timeout_s: float = Field(
        300.0, gt=0, description="default processing deadline per attempt"
    )
    max_attempts: int = Field(3, ge=1, description="default attempt limit per task")
    retry_base_s: float = Field(1.0, ge=0, description="first retry's backoff, doubling")
    retry_max_s: float = Field(30.0, ge=0, description="longest retry backoff")
    dispatch_poll_s: float = Field(
        0.5, gt=0, description="dispatcher fallback poll and deadline sweep"
    )
    dispatch_batch: int = Field(256, ge=1, description="tasks claimed per dispatcher pass")

    # Limits (SPEC §8).
    max_body_bytes: int = Field(1_048_576, ge=1024, description="larger requests get 413")
    max_backend_response_bytes: int = Field(
        10_485_760,
        ge=1024,
        description="cap on a backend's answers (larger: the task fails, `response_too_large`,"
        " not retried) and on callback bodies (413)",
    )
    result_retention_s: float = Field(
        7 * 24 * 3600.0, gt=0, description="finished tasks are purged after this"
    )
    chores_interval_s: float = Field(5.0, gt=0, description="housekeeping period")
    node_timeout_s: float = Field(
        30.0,
        gt=0,
        description="a node unseen this long is dead: its sends are retried, its health checks"
        " and leases move (at least twice the chores interval)",
    )

    # Seed compatibility: backends written for the seed sign their own `service` token with the
    # shared secret, bound to no server, and name the server in `metadata.server_id` of a PUT.
    # Such a token can report for any running task, so production refuses it unless this is
    # set; development allows it (unset = allowed in development only).
    allow_unbound_service_tokens: bool | None = Field(
        None,
        description="seed compatibility: accept `service` tokens bound to no server, which"
        " report for the server their body names",
        json_schema_extra=_extra(shown="true in development, false in production"),
    )

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


def default_of(name: str) -> Any:
    """The default of setting `name`, for code that runs without a `Settings` (a test, a tool):
    the service passes its configured value; nobody writes the default a second time."""
    return Settings.model_fields[name].default


class _LogFormatOnly(BaseSettings):
    """Just TASKYARD_LOG_FORMAT, read before the rest of the settings are checked."""

    model_config = SettingsConfigDict(env_prefix="TASKYARD_", extra="ignore")

    log_format: str = default_of("log_format")


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
