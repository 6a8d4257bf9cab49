from pathlib import Path

import pytest

from common.errors import SettingsError
from common.settings import load_settings


def test_env_overrides_toml_and_lists_are_comma_separated(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    config = tmp_path / "forgecrew.toml"
    config.write_text('model = "from-toml"\nrepo_allowlist = ["x/y"]\nlease_seconds = 42\n')
    monkeypatch.setenv("FORGECREW_CONFIG", str(config))
    monkeypatch.setenv("FORGECREW_REPO_ALLOWLIST", "acme/*, tools/ci")
    monkeypatch.setenv("FORGECREW_MODEL", "from-env")
    settings = load_settings()
    assert settings.model == "from-env"
    assert settings.repo_allowlist == ["acme/*", "tools/ci"]
    assert settings.lease_seconds == 42


def test_malformed_setting_names_the_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FORGECREW_LEASE_SECONDS", "soon")
    with pytest.raises(SettingsError, match="FORGECREW_LEASE_SECONDS"):
        load_settings()


def test_placeholder_secret_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FORGECREW_WEBHOOK_SECRET", "changeme")
    with pytest.raises(SettingsError, match="FORGECREW_WEBHOOK_SECRET.*placeholder"):
        load_settings()


def test_require_names_missing_variables() -> None:
    settings = load_settings(webhook_secret=None)
    with pytest.raises(SettingsError, match="FORGECREW_WEBHOOK_SECRET must be set"):
        settings.require("webhook_secret", purpose="verify webhooks")


def test_coordinator_refuses_to_start_without_secret() -> None:
    from coordinator.app import create_app

    with pytest.raises(SettingsError, match="FORGECREW_WEBHOOK_SECRET"):
        create_app(load_settings(webhook_secret=None, database_url="sqlite://"))


def test_secret_not_in_repr() -> None:
    settings = load_settings(webhook_secret="s3cr3t-value-abcdef", anthropic_api_key="sk-ant-xyz-123")
    assert "s3cr3t-value-abcdef" not in repr(settings)
    assert "sk-ant-xyz-123" not in repr(settings)


def test_malformed_toml_is_one_line_naming_the_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    config = tmp_path / "forgecrew.toml"
    config.write_text('model = "unterminated\nlease_seconds = 42\n')
    monkeypatch.setenv("FORGECREW_CONFIG", str(config))
    with pytest.raises(SettingsError) as caught:
        load_settings()
    message = str(caught.value)
    assert message.startswith(f"{config}: not valid TOML: ") and "line 1" in message
    assert "\n" not in message


def test_unknown_toml_key_is_refused_with_a_suggestion(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)  # the default ./forgecrew.toml, no FORGECREW_CONFIG
    monkeypatch.delenv("FORGECREW_CONFIG", raising=False)
    Path("forgecrew.toml").write_text('lease_secs = 42\nmodel = "m"\nfrobnicate = true\n')
    with pytest.raises(SettingsError) as caught:
        load_settings()
    assert str(caught.value) == ("forgecrew.toml: unknown setting 'lease_secs' (did you mean 'lease_seconds'?); "
                                 "unknown setting 'frobnicate'")


def test_toml_keys_are_matched_as_case_insensitively_as_they_are_read(tmp_path: Path,
                                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    config = tmp_path / "c.toml"
    config.write_text('LEASE_SECONDS = 42\n[[specialties]]\nname = "docs"\n')
    monkeypatch.setenv("FORGECREW_CONFIG", str(config))
    settings = load_settings()
    assert settings.lease_seconds == 42 and settings.specialties[0].name == "docs"


def test_config_variable_naming_a_missing_file_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    missing = tmp_path / "nope.toml"
    monkeypatch.setenv("FORGECREW_CONFIG", str(missing))
    with pytest.raises(SettingsError, match=f"^FORGECREW_CONFIG={missing}: no such file$"):
        load_settings()


def test_unknown_forgecrew_variables_are_warned_about(monkeypatch: pytest.MonkeyPatch,
                                                      caplog: pytest.LogCaptureFixture) -> None:
    monkeypatch.setenv("FORGECREW_LEASE_SECS", "42")
    monkeypatch.setenv("FORGECREW_TEST_PG", "postgresql://elsewhere")  # the test suite's own
    with caplog.at_level("WARNING", logger="common.settings"):
        settings = load_settings()
    assert settings.lease_seconds == 120
    warnings = [record.getMessage() for record in caplog.records]
    expected = "FORGECREW_LEASE_SECS is not a forgecrew setting; ignored (did you mean FORGECREW_LEASE_SECONDS?)"
    assert warnings == [expected]


def test_cli_reports_a_broken_config_file_in_one_line(tmp_path: Path) -> None:
    import subprocess
    import sys

    config = tmp_path / "forgecrew.toml"
    config.write_text("lease_secs = 5\n")
    done = subprocess.run([sys.executable, "-m", "coordinator.cli", "tasks", "list"],
                          env={"PATH": "/usr/bin:/bin", "FORGECREW_CONFIG": str(config),
                               "FORGECREW_HOME": str(tmp_path / "home"),
                               "FORGECREW_DATABASE_URL": f"sqlite:///{tmp_path / 'x.db'}"},
                          capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode != 0
    assert done.stderr == f"forgecrew: {config}: unknown setting 'lease_secs' (did you mean 'lease_seconds'?)\n"
