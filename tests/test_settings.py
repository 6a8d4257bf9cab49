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
