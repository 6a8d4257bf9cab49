"""How ops commands print: JSON for scripts (--json), rich tables for people."""

from __future__ import annotations

import json
import sys
from collections.abc import Iterable, Sequence
from typing import Any

import click
from rich.console import Console
from rich.table import Table


def echo_json(data: Any) -> None:
    click.echo(json.dumps(data, indent=2, default=str))


def stdout() -> Console:
    """A console on the current stdout (so click's test runner captures it too); no colour when piped."""
    return Console(file=sys.stdout, highlight=False)


def print_table(columns: Sequence[str], rows: Iterable[Sequence[Any]], *, title: str | None = None,
                right: Iterable[str] = ()) -> None:
    """One table; `right` names the numeric columns, aligned right. None prints as "-" (unknown)."""
    aligned = set(right)
    table = Table(title=title, title_justify="left", header_style="bold", box=None, pad_edge=False)
    for column in columns:
        table.add_column(column, justify="right" if column in aligned else "left", overflow="fold")
    for row in rows:
        table.add_row(*("-" if value is None else str(value) for value in row))
    stdout().print(table)


def dollars(value: float | None) -> str:
    return "n/a" if value is None else f"${value:.4f}"
