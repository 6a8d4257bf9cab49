"""docs/configuration.md is generated from the settings object; these fail when it drifts."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from click.testing import CliRunner

from common import settings_reference
from common.settings import ENV_PREFIX, Settings, SpecialtyConfig
from coordinator.cli import load_commands

DOC = Path(__file__).resolve().parents[1] / "docs" / "configuration.md"


def test_the_configuration_reference_is_current() -> None:
    assert settings_reference.is_current(DOC), (
        f"{DOC.name} is out of date with common/settings.py: run `.venv/bin/{settings_reference.REGENERATE}` "
        "and commit the result")


def test_every_setting_and_specialty_key_has_a_row() -> None:
    block = settings_reference.render()
    rows = set(re.findall(r"^\| `([A-Za-z0-9_]+)` \|", block, flags=re.MULTILINE))
    for name in Settings.model_fields:
        assert f"{ENV_PREFIX}{name.upper()}" in rows, f"no row for {name}"
    for name in SpecialtyConfig.model_fields:
        assert name in rows, f"no row for the specialty key {name}"


def test_secrets_are_never_rendered_even_when_set(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    values = {
        "WEBHOOK_SECRET": "whsec-0123456789abcdef", "API_TOKEN": "api-0123456789abcdef",
        "FLOWER_PASSWORD": "flower-0123456789abcdef", "METRICS_TOKEN": "metrics-0123456789abcdef",
        "GITHUB_TOKEN": "ghp_0123456789abcdef", "ANTHROPIC_API_KEY": "sk-ant-0123456789abcdef",
        "GITHUB_APP_PRIVATE_KEY": "-----BEGIN RSA PRIVATE KEY-----0123456789abcdef",
    }
    for name, value in values.items():
        monkeypatch.setenv(ENV_PREFIX + name, value)
    monkeypatch.setenv("FORGECREW_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("FORGECREW_MODEL", "a-model-set-here")
    block = settings_reference.render()
    for value in values.values():
        assert value not in block
    assert "a-model-set-here" not in block and str(tmp_path) not in block  # the class, not this machine
    secret_rows = [line for line in block.splitlines() if "| secret |" in line]
    assert len(secret_rows) == len(values)
    assert all("| unset" in row for row in secret_rows), secret_rows


def test_the_cli_prints_writes_and_checks(tmp_path: Path) -> None:
    runner = CliRunner()
    printed = runner.invoke(load_commands(), ["config", "reference"])
    assert printed.exit_code == 0 and printed.output == settings_reference.render()

    stale = tmp_path / "configuration.md"
    stale.write_text(f"# intro\n\n{settings_reference.BEGIN}\nold\n{settings_reference.END}\n\nafter\n")
    checked = runner.invoke(load_commands(), ["config", "reference", "--check", str(stale)])
    assert checked.exit_code == 1 and settings_reference.REGENERATE in checked.output

    written = runner.invoke(load_commands(), ["config", "reference", "--write", str(stale)])
    assert written.exit_code == 0 and "updated" in written.output
    text = stale.read_text()
    assert text.startswith("# intro\n\n") and text.endswith("\nafter\n") and "\nold\n" not in text
    assert runner.invoke(load_commands(), ["config", "reference", "--check", str(stale)]).exit_code == 0
    again = runner.invoke(load_commands(), ["config", "reference", "--write", str(stale)])
    assert "already current" in again.output and stale.read_text() == text
