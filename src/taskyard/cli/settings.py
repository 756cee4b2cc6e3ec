"""The settings as people read them: `serve`'s flags with their `--help`, and the Markdown table
that `taskyard settings` prints and the README holds (between its `settings-table` markers;
`tests/unit/test_settings_doc.py` fails when the two differ).

All of it is made from the fields of `config.Settings`: their names, defaults, descriptions and
`_extra` notes. Secrets (`secret` in the notes) never show a value, only the words of `shown`.
"""

from __future__ import annotations

import types
from pathlib import Path
from typing import Any, Union, get_args, get_origin

import click
from pydantic.fields import FieldInfo

from taskyard.config import Settings

TABLE_START = "<!-- settings-table: made by `taskyard settings --readme README.md` -->"
TABLE_END = "<!-- /settings-table -->"
_HEADER = "| variable | flag | default | meaning |\n|---|---|---|---|"


def env_name(name: str) -> str:
    return f"TASKYARD_{name.upper()}"


def flag_name(name: str) -> str:
    return "--" + name.replace("_", "-")


def _notes(field: FieldInfo) -> dict[str, Any]:
    extra = field.json_schema_extra
    return extra if isinstance(extra, dict) else {}


def shown_default(field: FieldInfo) -> str:
    """The default as the docs say it: in words where it depends on the environment, `none`
    for an empty string or a secret, else the value (`30`, not `30.0`; `true`)."""
    notes = _notes(field)
    if "shown" in notes:
        return str(notes["shown"])
    value = field.default
    if notes.get("secret") or value in ("", None):
        return "none"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def help_text(name: str, field: FieldInfo) -> str:
    """`serve --help`'s line for a setting: what it does, its variable and its default."""
    return f"{field.description} [env: {env_name(name)}; default: {shown_default(field)}]"


def _markdown_default(field: FieldInfo) -> str:
    shown = shown_default(field)
    return f"`{shown}`" if "shown" not in _notes(field) and shown != "none" else shown


def _markdown_meaning(field: FieldInfo) -> str:
    see = _notes(field).get("see")
    meaning = str(field.description).replace("|", "\\|")
    return f"{meaning} ([{str(see).split('#')[0]}]({see}))" if see else meaning


def markdown_table() -> str:
    """Every setting, one row each, in the order `Settings` declares them."""
    rows = [
        f"| `{env_name(name)}` | `{flag_name(name)}` | {_markdown_default(field)}"
        f" | {_markdown_meaning(field)} |"
        for name, field in Settings.model_fields.items()
    ]
    return "\n".join([_HEADER, *rows])


def with_table(document: str) -> str:
    """`document` with the text between the settings-table markers replaced by the table."""
    before, start, rest = document.partition(TABLE_START)
    _, end, after = rest.partition(TABLE_END)
    if not start or not end:
        raise ValueError(f"no {TABLE_START!r} … {TABLE_END!r} block")
    return f"{before}{TABLE_START}\n{markdown_table()}\n{TABLE_END}{after}"


def _click_type(annotation: Any) -> Any:
    if get_origin(annotation) in (Union, types.UnionType):
        annotation = next(a for a in get_args(annotation) if a is not type(None))
    if get_origin(annotation) is not None:  # Literal[...]
        return click.Choice([str(a) for a in get_args(annotation)])
    return {bool: bool, int: int, float: float}.get(annotation, str)


def settings_options(func: Any) -> Any:
    """One `--flag` per Settings field, with its description, variable and default. No click
    default: an unset flag leaves the variable or the field's default to `Settings`."""
    for name, field in reversed(list(Settings.model_fields.items())):
        option = click.option(
            flag_name(name), name, type=_click_type(field.annotation), help=help_text(name, field)
        )
        func = option(func)
    return func


@click.command("settings")
@click.option(
    "--readme",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    default=None,
    help="rewrite the table between this Markdown file's settings-table markers instead",
)
def settings(readme: Path | None) -> None:
    """Print every setting (variable, flag, default, meaning) as a Markdown table."""
    if readme is None:
        click.echo(markdown_table())
        return
    readme.write_text(with_table(readme.read_text()))
    click.echo(f"taskyard: the settings table in {readme} is up to date", err=True)
