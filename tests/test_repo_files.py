"""Files the worker reads from the repository: never through a link, never unbounded, never quoted in errors."""

from __future__ import annotations

import os
import threading
import tracemalloc
from pathlib import Path

import pytest

from workers.prompts import readme
from workers.repo_config import RepoConfigError, instruction_files, load_repo_config
from workers.repo_files import RepoFileRefused, read_text
from workers.testrun import detect_test_command
from workers.tools import files
from workers.tools.paths import ToolError

HOST_SECRET = "host-secret-never-to-be-quoted"


@pytest.fixture
def checkout(tmp_path: Path) -> Path:
    repo = tmp_path / "repo"
    repo.mkdir()
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret.yml").write_text(f"password: {HOST_SECRET}\n")
    return repo


def test_a_link_anywhere_on_the_path_is_refused(checkout: Path) -> None:
    (checkout / ".forgecrew.yml").symlink_to(checkout.parent / "outside" / "secret.yml")
    (checkout / "docs").symlink_to(checkout.parent / "outside")
    for name in (".forgecrew.yml", "docs/secret.yml"):
        with pytest.raises(RepoFileRefused, match="symbolic link") as caught:
            read_text(checkout, name, limit=1000)
        assert HOST_SECRET not in str(caught.value)


def test_a_fifo_is_refused_without_hanging(checkout: Path) -> None:
    os.mkfifo(checkout / "AGENTS.md")
    outcome: list[object] = []
    reader = threading.Thread(target=lambda: outcome.append(instruction_files(checkout)), daemon=True)
    reader.start()
    reader.join(timeout=5)
    assert outcome == [{}], "reading a FIFO from the repository blocked the worker"
    with pytest.raises(RepoFileRefused, match="not a regular file"):
        read_text(checkout, "AGENTS.md", limit=100)


def test_size_caps_cut_or_refuse(checkout: Path) -> None:
    (checkout / "README.md").write_text("x" * 100_000)
    assert len(readme(checkout)) == 6_000
    (checkout / ".forgecrew.yml").write_text("instructions: " + "y" * 100_000 + "\n")
    with pytest.raises(RepoConfigError, match="reads it only up to 65536 bytes"):
        load_repo_config(checkout)
    assert read_text(checkout, "missing.txt", limit=10) is None
    with pytest.raises(ValueError):
        read_text(checkout, "../outside/secret.yml", limit=10)


def test_config_errors_name_the_line_never_the_content(checkout: Path) -> None:
    (checkout / ".forgecrew.yml").write_text(f"test_command: ok\n  bad: [{HOST_SECRET}\n")
    with pytest.raises(RepoConfigError) as caught:
        load_repo_config(checkout)
    assert "line 2" in str(caught.value) and HOST_SECRET not in str(caught.value)
    (checkout / ".forgecrew.yml").write_text(f"'{HOST_SECRET} key': 1\ntest_timout: 5\n")
    with pytest.raises(RepoConfigError) as caught:
        load_repo_config(checkout)
    assert "test_timout" in str(caught.value) and "<key>" in str(caught.value)
    assert HOST_SECRET not in str(caught.value)


def test_instruction_files_readme_and_detection_skip_links(checkout: Path) -> None:
    secret = checkout.parent / "outside" / "secret.yml"
    for name in ("AGENTS.md", "README.md", "package.json", "Makefile"):
        (checkout / name).symlink_to(secret)
    (checkout / "CLAUDE.md").write_text("Use tabs.\n")
    assert instruction_files(checkout) == {"CLAUDE.md": "Use tabs.\n"}
    assert readme(checkout) == ""
    assert detect_test_command(checkout) is None


def test_read_file_streams_a_bounded_window_of_a_huge_one_line_file(checkout: Path) -> None:
    with open(checkout / "big.txt", "wb") as out:
        for _ in range(50):
            out.write(b"a" * 1_000_000)
    tracemalloc.start()
    try:
        shown = files.read_file(checkout, "big.txt", limit=20_000)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert len(shown) < 3_000 and "line cut: 49998000 more bytes" in shown
    assert peak < 2_000_000, f"read_file held {peak} bytes for a 50 MB file"


def test_read_file_goes_on_after_a_long_line_and_says_where_to_continue(checkout: Path) -> None:
    (checkout / "mixed.txt").write_text("short\n" + "b" * 5_000 + "\n" + "".join(f"row {n}\n" for n in range(3000)))
    shown = files.read_file(checkout, "mixed.txt", limit=2_000)
    assert shown.splitlines()[0] == "     1\tshort" and "[... line cut: 3000 more bytes]" in shown
    assert "continue with start_line=" in shown
    assert files.read_file(checkout, "mixed.txt", start_line=3, end_line=4) == "     3\trow 0\n     4\trow 1"


def test_edit_file_refuses_files_past_its_size(checkout: Path) -> None:
    (checkout / "huge.py").write_text("x = 1\n" * 400_000)
    with pytest.raises(ToolError, match="edit_file changes files up to 2 MB"):
        files.edit_file(checkout, "huge.py", "x = 1", "x = 2")


def test_write_file_hands_what_it_created_to_the_sandbox_user(checkout: Path) -> None:
    adopted: list[Path] = []
    files.write_file(checkout, "new/deep/file.txt", "hi", adopt=adopted.append)
    assert adopted == [checkout / "new", checkout / "new" / "deep", checkout / "new" / "deep" / "file.txt"]
    adopted.clear()
    files.write_file(checkout, "new/deep/file.txt", "again", adopt=adopted.append)
    assert adopted == []  # an existing file keeps its owner
