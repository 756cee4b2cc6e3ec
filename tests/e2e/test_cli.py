"""The `taskyard` command line: token, migrate, check, and refusing unsafe production config."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import jwt
from sqlalchemy.engine import make_url

from tests import pg
from tests.support import SECRET, clean_env, table_names


def _taskyard(*args: str, cwd: Path, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "taskyard", *args],
        cwd=cwd,
        env=clean_env(**env),
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_token_is_signed_with_the_configured_secret(tmp_path: Path) -> None:
    """`taskyard token` mints an HS256 JWT with the roles, subject and expiry asked for."""
    done = _taskyard(
        "token",
        "--role",
        "user",
        "--sub",
        "alice",
        "--ttl",
        "120",
        cwd=tmp_path,
        TASKYARD_JWT_SECRET=SECRET,
    )
    assert done.returncode == 0, done.stderr
    claims = jwt.decode(done.stdout.strip(), SECRET, algorithms=["HS256"])
    assert claims["roles"] == ["user"]
    assert claims["sub"] == "alice"
    assert 100 <= claims["exp"] - claims["iat"] <= 120


def test_development_secret_is_one_file_whatever_the_directory(tmp_path: Path) -> None:
    """Without a secret, development keeps one in the user's config directory: commands run
    from different directories sign with the same one, and each says which it used (issue 9:
    a token minted elsewhere was silently signed with a new secret the server rejected)."""
    config = tmp_path / "config"
    here, elsewhere = tmp_path / "project", tmp_path / "somewhere-else"
    here.mkdir()
    elsewhere.mkdir()
    first = _taskyard(
        "token", "--role", "admin", "--sub", "a", cwd=here, XDG_CONFIG_HOME=str(config)
    )
    second = _taskyard(
        "token", "--role", "user", "--sub", "b", cwd=elsewhere, XDG_CONFIG_HOME=str(config)
    )
    path = config / "taskyard" / "dev-secret"
    secret = path.read_text().strip()
    assert oct(path.stat().st_mode & 0o777) == oct(0o600)
    for done, sub in ((first, "a"), (second, "b")):
        assert done.returncode == 0, done.stderr
        assert jwt.decode(done.stdout.strip(), secret, algorithms=["HS256"])["sub"] == sub
        assert secret not in done.stdout + done.stderr
    assert f"signed with the development secret in {path} (created now)" in first.stderr
    assert f"signed with the development secret in {path}" in second.stderr
    assert "created now" not in second.stderr
    assert not list(here.iterdir()) and not list(elsewhere.iterdir())  # nothing left in cwd
    chosen = tmp_path / "chosen-secret"
    third = _taskyard(
        "token", "--role", "admin", "--sub", "c", cwd=here, TASKYARD_DEV_SECRET_FILE=str(chosen)
    )
    assert third.returncode == 0, third.stderr
    assert jwt.decode(third.stdout.strip(), chosen.read_text().strip(), algorithms=["HS256"])
    configured = _taskyard(
        "token", "--role", "admin", "--sub", "d", cwd=here, TASKYARD_JWT_SECRET=SECRET
    )
    assert (
        "signed with the configured secret (TASKYARD_JWT_SECRET or --jwt-secret)"
        in configured.stderr
    )


def test_an_unknown_role_is_an_error(tmp_path: Path) -> None:
    done = _taskyard(
        "token", "--role", "bogus", "--sub", "a", cwd=tmp_path, TASKYARD_JWT_SECRET=SECRET
    )
    assert done.returncode == 2
    assert done.stdout == ""
    assert "'bogus' is not one of 'admin', 'user', 'service'" in done.stderr


def test_migrate_then_check(database_url: str, tmp_path: Path) -> None:
    """`migrate` creates the schema in a fresh database (SQLite file or PostgreSQL database);
    `check` then exits 0."""
    migrated = _taskyard("migrate", cwd=tmp_path, TASKYARD_DATABASE_URL=database_url)
    assert migrated.returncode == 0, migrated.stderr
    assert {"tasks", "servers", "nodes", "alembic_version"} <= table_names(database_url)
    checked = _taskyard("check", cwd=tmp_path, TASKYARD_DATABASE_URL=database_url)
    assert checked.returncode == 0, checked.stderr
    assert "database: OK" in checked.stdout


def test_check_fails_when_the_database_is_unreachable(tmp_path: Path) -> None:
    """`check` exits 1 when the database cannot be opened."""
    url = f"sqlite:///{tmp_path / 'missing-dir' / 'x.db'}"
    assert _taskyard("check", cwd=tmp_path, TASKYARD_DATABASE_URL=url).returncode == 1


def test_check_fails_when_the_postgresql_database_is_missing(tmp_path: Path) -> None:
    """`check` exits 1 when the PostgreSQL server answers but has no such database."""
    pg.require_postgres()
    url = make_url(pg.dsn(pg.server_url())).set(database=pg.PREFIX + "missing")
    done = _taskyard("check", cwd=tmp_path, TASKYARD_DATABASE_URL=url.render_as_string(False))
    assert done.returncode == 1, done.stdout
    assert "database: unreachable" in done.stderr


def test_production_refuses_to_start_without_a_strong_secret(tmp_path: Path) -> None:
    """Production with a short secret exits with the config-error code 3 and says why."""
    done = _taskyard("serve", cwd=tmp_path, TASKYARD_ENV="production", TASKYARD_JWT_SECRET="short")
    assert done.returncode == 3
    assert "TASKYARD_JWT_SECRET" in done.stderr
    assert "short" not in done.stderr.replace("TASKYARD_JWT_SECRET", "")


def test_serve_output_never_shows_secrets(tmp_path: Path) -> None:
    """Neither the JWT secret nor a database password appears in serve's output, even when
    the database is unreachable and start-up fails."""
    password, secret = "hunter2-db-password", "jwt-" + "s" * 40
    done = _taskyard(
        "serve",
        cwd=tmp_path,
        TASKYARD_DATABASE_URL=f"postgresql://taskyard:{password}@127.0.0.1:1/none",
        TASKYARD_JWT_SECRET=secret,
    )
    output = done.stdout + done.stderr
    assert done.returncode != 0
    assert "127.0.0.1:1" in output  # it did say where it tried
    assert password not in output
    assert secret not in output
