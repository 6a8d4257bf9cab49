"""Finding the repository's test command from what the checkout contains."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from workers.testrun import detect_test_command


@pytest.mark.parametrize("content", ["[]", '"just a string"', "not json {", '{"scripts": ["test"]}',
                                     '{"scripts": "npm test"}', "\xff\xfe"])
def test_unusable_package_json_means_no_npm_tests(tmp_path: Path, content: str,
                                                 caplog: pytest.LogCaptureFixture) -> None:
    (tmp_path / "package.json").write_bytes(content.encode("latin-1"))
    caplog.set_level(logging.WARNING, logger="workers.testrun")
    assert detect_test_command(tmp_path) is None
    assert "package.json" in caplog.text and "not running npm tests" in caplog.text


def test_other_detectors_still_apply_after_a_broken_package_json(tmp_path: Path) -> None:
    (tmp_path / "package.json").write_text("[1, 2]")
    (tmp_path / "go.mod").write_text("module example.com/x\n")
    assert detect_test_command(tmp_path) == "go test ./..."


def test_package_json_with_a_test_script(tmp_path: Path) -> None:
    (tmp_path / "package.json").write_text('{"scripts": {"test": "jest"}}')
    assert detect_test_command(tmp_path) == "npm test"
    (tmp_path / "package.json").write_text('{"name": "no-tests"}')
    assert detect_test_command(tmp_path) is None
