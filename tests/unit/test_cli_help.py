"""`--help` describes every option of every `taskyard` command, and each `serve` flag says
what its setting does, its variable and its default (made from `Settings`)."""

from __future__ import annotations

import re
from collections.abc import Iterator

import click
import pytest
from click.testing import CliRunner

from taskyard.cli import main
from taskyard.cli.settings import env_name, flag_name, shown_default
from taskyard.config import Settings
from taskyard.mockbackend.cli import mock_backend

_SUFFIX = re.compile(r"\s*\[env: [^\]]*\]$")  # what `--help` adds after the description


def _commands(command: click.Command, path: str) -> Iterator[tuple[str, click.Command]]:
    yield path, command
    if isinstance(command, click.Group):
        for name, sub in command.commands.items():
            yield from _commands(sub, f"{path} {name}")


def _options(command: click.Command) -> list[click.Option]:
    return [p for p in command.params if isinstance(p, click.Option) and not p.hidden]


COMMANDS = [*_commands(main, "taskyard"), ("taskyard mock-backend", mock_backend)]


@pytest.mark.parametrize(("path", "command"), COMMANDS, ids=[path for path, _ in COMMANDS])
def test_every_option_is_described(path: str, command: click.Command) -> None:
    """A help text with words of its own, not only the variable and the default."""
    undescribed = [
        option.opts[0]
        for option in _options(command)
        if option.help is None or not _SUFFIX.sub("", option.help).strip()
    ]
    assert undescribed == [], f"{path}: give these options a help= text"


def test_serve_has_one_described_flag_per_setting() -> None:
    serve = main.commands["serve"]
    options = {option.name: option for option in _options(serve)}
    assert set(Settings.model_fields) <= set(options)
    for name, field in Settings.model_fields.items():
        option = options[name]
        assert option.opts == [flag_name(name)]
        assert option.help == (
            f"{field.description} [env: {env_name(name)}; default: {shown_default(field)}]"
        )


def test_serve_help_lists_every_flag_with_its_text() -> None:
    shown = CliRunner().invoke(main, ["serve", "--help"], terminal_width=200)
    assert shown.exit_code == 0, shown.output
    text = " ".join(shown.output.split())
    for name, field in Settings.model_fields.items():
        assert flag_name(name) in text
        assert " ".join(str(field.description).split()) in text, name
        assert f"[env: {env_name(name)}; default: {shown_default(field)}]" in text, name
