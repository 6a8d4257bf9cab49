"""The README's tables are checked against the CLI and the settings, so they cannot drift."""

from __future__ import annotations

import re
from pathlib import Path

import click
import pytest

from common.settings import Settings
from coordinator.cli import load_commands

README = Path(__file__).resolve().parents[1] / "README.md"
PLACEHOLDER = re.compile(r"^[A-Z][A-Z_/]*$")  # ID, PATH_OR_OWNER/NAME, DELIVERY_ID


def table(heading: str) -> list[list[str]]:
    """The rows (cells) of the first table under `## heading`."""
    text = README.read_text(encoding="utf-8")
    section = text.split(f"\n## {heading}\n", 1)[1].split("\n## ", 1)[0]
    rows = [line for line in section.splitlines() if line.startswith("| ")]
    return [[cell.strip() for cell in re.split(r"(?<!\\)\|", row)[1:-1]] for row in rows[2:]]


def leaf_commands(group: click.Group, prefix: tuple[str, ...] = ()) -> dict[tuple[str, ...], click.Command]:
    found: dict[tuple[str, ...], click.Command] = {}
    for name, command in group.commands.items():
        if command.hidden:
            continue
        if isinstance(command, click.Group):
            found.update(leaf_commands(command, (*prefix, name)))
        else:
            found[(*prefix, name)] = command
    return found


def documented_commands() -> dict[tuple[str, ...], list[str]]:
    """Each row's command path (`tasks`, `show`) and the options it names (`--json`)."""
    documented = {}
    for cells in table("Commands"):
        usage = cells[0].strip("`").replace("\\|", "|")
        words = usage.split()
        assert words[0] == "forgecrew", cells
        path = []
        for word in words[1:]:
            if word.startswith(("-", "[", "(")) or PLACEHOLDER.match(word):
                break
            path.append(word)
        documented[tuple(path)] = re.findall(r"--[a-z][a-z-]*", usage)
    return documented


def test_every_command_is_in_the_readme_and_every_row_is_a_command() -> None:
    actual = leaf_commands(load_commands())
    documented = documented_commands()
    missing = sorted(" ".join(path) for path in set(actual) - set(documented))
    extra = sorted(" ".join(path) for path in set(documented) - set(actual))
    assert not missing and not extra, f"README's commands table lacks {missing}, names no such command {extra}"


@pytest.mark.parametrize("path", sorted(documented_commands()), ids=" ".join)
def test_the_options_a_row_names_exist(path: tuple[str, ...]) -> None:
    command = leaf_commands(load_commands())[path]
    known = {opt for param in command.params for opt in getattr(param, "opts", [])}
    unknown = [option for option in documented_commands()[path] if option not in known]
    assert not unknown, f"`forgecrew {' '.join(path)}` has no {unknown}"


def test_every_variable_in_the_settings_table_is_a_setting() -> None:
    fields = set(Settings.model_fields)
    for cells in table("Settings"):
        for name in re.findall(r"`([A-Z][A-Z0-9_]+)`", cells[0]):
            assert name.lower() in fields, f"README's settings table names FORGECREW_{name}, which is no setting"
