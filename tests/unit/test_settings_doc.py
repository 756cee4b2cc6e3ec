"""The settings' documentation is made from `Settings` and agrees with it: the README's table
(`taskyard settings`), `serve --help`, and the defaults code takes when given none."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from click.testing import CliRunner

from taskyard.cli import main
from taskyard.cli.settings import (
    TABLE_END,
    TABLE_START,
    env_name,
    flag_name,
    markdown_table,
    shown_default,
    with_table,
)
from taskyard.client import DEFAULT_URL, MAX_WAIT_S
from taskyard.config import MAX_LONG_POLL_S, Settings, default_of

README = Path(__file__).resolve().parents[2] / "README.md"
SECRETS = [name for name, field in Settings.model_fields.items() if not field.repr]


def _readme_table() -> str:
    text = README.read_text()
    assert TABLE_START in text and TABLE_END in text, "README lost its settings-table markers"
    return text.split(TABLE_START, 1)[1].split(TABLE_END, 1)[0].strip()


def _rows(table: str) -> dict[str, list[str]]:
    """Variable → its row's cells (`|` inside a cell is escaped as `\\|`)."""
    rows = {}
    for line in table.splitlines()[2:]:
        cells = [cell.strip() for cell in re.split(r"(?<!\\)\|", line)[1:-1]]
        rows[cells[0].strip("`")] = cells
    return rows


def test_the_readme_table_is_the_one_the_settings_make() -> None:
    """Fails when a setting was added, renamed or given another default or description
    without the README following: run `taskyard settings --readme README.md`."""
    assert _readme_table() == markdown_table(), "run: taskyard settings --readme README.md"


def test_every_setting_has_a_readme_row_with_its_flag_default_and_meaning() -> None:
    rows = _rows(_readme_table())
    assert set(rows) == {env_name(name) for name in Settings.model_fields}
    for name, field in Settings.model_fields.items():
        _, flag, default, meaning = rows[env_name(name)]
        assert flag == f"`{flag_name(name)}`"
        assert default.strip("`") == shown_default(field), name
        assert meaning.replace("\\|", "|").startswith(str(field.description)), name
    for late in ("TASKYARD_SHUTDOWN_GRACE_S", "TASKYARD_METRICS_TOKEN", "TASKYARD_LONG_POLL_MAX_S"):
        assert late in rows


def test_every_setting_is_described_in_one_line() -> None:
    for name, field in Settings.model_fields.items():
        assert field.description, f"{name} has no Field(description=...)"
        assert "\n" not in field.description, name
        assert not field.description.endswith("."), name  # table cells and --help read on


def test_the_shown_defaults_are_the_fields_defaults() -> None:
    """Numbers as people write them (`30`, not `30.0`); words where the default depends on the
    environment; none for an empty string."""
    fields = Settings.model_fields
    assert shown_default(fields["jwt_leeway_s"]) == "30"
    assert shown_default(fields["dispatch_poll_s"]) == "0.5"
    assert shown_default(fields["docs"]) == "true"
    assert shown_default(fields["jwt_issuer"]) == "none"
    assert shown_default(fields["workers"]) == "0: one per core"
    for name in ("port", "max_body_bytes", "rate_limit_storage", "server_token_ttl_s"):
        shown, default = shown_default(fields[name]), default_of(name)
        assert shown == str(default).removesuffix(".0"), name


def test_secrets_never_show_a_value(monkeypatch: pytest.MonkeyPatch) -> None:
    """Whatever the environment holds, the table and `serve --help` show none of a secret."""
    assert set(SECRETS) == {"jwt_secret", "jwt_secrets", "metrics_token"}
    values = {"jwt_secret": "S" * 40, "jwt_secrets": "k1:" + "T" * 40, "metrics_token": "M" * 20}
    for name, value in values.items():
        monkeypatch.setenv(env_name(name), value)
    assert Settings().metrics_token == values["metrics_token"]  # they are configured
    shown = markdown_table() + CliRunner().invoke(main, ["serve", "--help"]).output
    for name, value in values.items():
        assert value not in shown, name
        assert shown_default(Settings.model_fields[name]) in {"none", "generated in development"}


def test_with_table_replaces_the_block_only() -> None:
    document = f"# Title\n\nbefore\n\n{TABLE_START}\nstale | rows\n{TABLE_END}\n\nafter\n"
    updated = with_table(document)
    assert (
        updated == f"# Title\n\nbefore\n\n{TABLE_START}\n{markdown_table()}\n{TABLE_END}\n\nafter\n"
    )
    assert with_table(updated) == updated
    with pytest.raises(ValueError, match="settings-table"):
        with_table("# no markers here\n")


def test_the_settings_command_prints_and_rewrites_the_table(tmp_path: Path) -> None:
    printed = CliRunner().invoke(main, ["settings"])
    assert printed.exit_code == 0
    assert printed.output.strip() == markdown_table()
    readme = tmp_path / "README.md"
    readme.write_text(f"intro\n{TABLE_START}\nold\n{TABLE_END}\noutro\n")
    rewritten = CliRunner().invoke(main, ["settings", "--readme", str(readme)])
    assert rewritten.exit_code == 0, rewritten.output
    assert readme.read_text() == f"intro\n{TABLE_START}\n{markdown_table()}\n{TABLE_END}\noutro\n"


def test_the_sdk_agrees_with_the_server_defaults() -> None:
    """The SDK cannot import the settings (it needs httpx only), so its two copies of the
    server's values are checked here: the default node URL and the long-poll bound."""
    assert f"http://{default_of('host')}:{default_of('port')}" == DEFAULT_URL
    assert MAX_WAIT_S == MAX_LONG_POLL_S == default_of("long_poll_max_s")
