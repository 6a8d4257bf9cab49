"""bench/run.py: samples folded into median/min/max, failing modules as error rows, the JSON keys, the docs block."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "bench"))
import run  # noqa: E402
import run_report  # noqa: E402
from run_targets import FIGURES  # noqa: E402

ISSUE_KEYS = ["intake.rps", "intake.bare_rps", "intake.ratio", "intake.p50_ms", "intake.p99_ms",
              "label_to_model.p50_s", "label_to_model.p99_s", "workspace.full_clone_s", "workspace.workspace_s",
              "workspace.ratio", "workspace.disk_ratio", "overhead.p50_s", "concurrency.sessions",
              "concurrency.efficiency", "concurrency.mb_per_session", "tokens.cache_read_share",
              "sandbox.overhead_ms"]

GOOD = '''
def measure(*, quick, repeats):
    assert quick and repeats == 3
    print("chatter on stdout must not break the result")
    return {"figures": {"tokens.cache_read_share": [0.9, 0.7, 0.85], "sandbox.overhead_ms": [12, 30, 18]},
            "series": {"intake_vs_connections": [
                {"connections": c, "rps": 100 * c, "bare_rps": 5000, "p50_ms": 2 * c, "p99_ms": 5 * c}
                for c in (1, 4, 16)]}}
'''
BAD = '''
def measure(*, quick, repeats):
    raise ValueError("the database is not there")
'''
SLOW = '''
import time

def measure(*, quick, repeats):
    time.sleep(60)
'''


def test_samples_fold_into_median_min_max() -> None:
    assert run.aggregate([3, 1, 2]) == {"median": 2, "min": 1, "max": 3}
    assert run.aggregate([1.0, 4.0]) == {"median": 2.5, "min": 1.0, "max": 4.0}
    assert run.aggregate(["n/a", None, True]) is None and run.aggregate([]) is None


def test_only_takes_short_and_full_names() -> None:
    assert run.selected("tokens,sandbox_bench") == ["tokens_bench", "sandbox_bench"]
    assert run.selected("") == list(run.MODULES)


def test_issue_keys_all_have_a_row_and_a_target_where_the_issue_sets_one() -> None:
    issue_rows = [key for key in FIGURES if key in ISSUE_KEYS]
    assert issue_rows == ISSUE_KEYS  # every key the issue names, in its order; context rows may sit between
    assert set(FIGURES) - set(ISSUE_KEYS) == {"intake.durable_rps", "intake.durable_ratio"}
    assert FIGURES["intake.ratio"].met(0.41) and not FIGURES["sandbox.overhead_ms"].met(20.5)
    assert FIGURES["intake.rps"].met(1.0) is None


@pytest.fixture(scope="module")
def result(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict, str]:
    modules = tmp_path_factory.mktemp("modules")
    for name, source in (("good_bench", GOOD), ("bad_bench", BAD), ("slow_bench", SLOW)):
        (modules / f"{name}.py").write_text(source)
    out = tmp_path_factory.mktemp("out")
    capture = out / "stdout.txt"
    saved = sys.stdout
    with capture.open("w") as handle:
        sys.stdout = handle
        try:
            status = run.main(["--quick", "--repeats", "3", "--timeout", "3", "--only", "good,bad,slow,missing",
                               "--json", str(out / "bench.json"), "--plots", str(out / "plots"),
                               "--path", str(modules)])
        finally:
            sys.stdout = saved
    assert status == 0, "a failing module is reported, never an exit status"
    return json.loads((out / "bench.json").read_text()), capture.read_text()


def test_json_has_every_issue_key_and_the_machine(result: tuple[dict, str]) -> None:
    report, _ = result
    assert set(ISSUE_KEYS) <= set(report) and {"cores", "memory_gb", "kernel", "python", "postgresql", "redis",
                                                 "git", "bwrap"} <= set(report["machine"])
    assert report["tokens.cache_read_share"] == {"median": 0.85, "min": 0.7, "max": 0.9}
    assert report["sandbox.overhead_ms"] == {"median": 18, "min": 12, "max": 30}
    assert report["intake.rps"] is None  # its module did not report: null, not a made-up number


def test_failing_missing_and_slow_modules_are_error_rows_and_the_others_still_run(result: tuple[dict, str]) -> None:
    report, printed = result
    modules = report["modules"]
    assert modules["good_bench"]["error"] is None
    assert modules["bad_bench"]["error"] == "ValueError: the database is not there"
    assert modules["slow_bench"]["error"] == "timed out after 3 s" and modules["slow_bench"]["seconds"] < 20
    assert modules["missing_bench"]["error"].startswith("missing: no module missing_bench.py")
    assert "ERROR bad_bench: ValueError: the database is not there" in printed
    [share] = [line for line in printed.splitlines() if line.startswith("tokens.cache_read_share")]
    assert share.split()[1:] == ["0.85", "0.7", "0.9", ">=", "0.8", "yes"]
    [sandbox] = [line for line in printed.splitlines() if line.startswith("sandbox.overhead_ms")]
    assert sandbox.split()[-1] == "yes"


def test_plots_drawn_from_the_series(result: tuple[dict, str]) -> None:
    report, _ = result
    pytest.importorskip("matplotlib")
    assert [Path(p).name for p in report["plots"]] == ["intake.png"]
    assert Path(report["plots"][0]).read_bytes()[:4] == b"\x89PNG"


def test_docs_block_is_rewritten_and_hand_text_kept(result: tuple[dict, str], tmp_path: Path) -> None:
    report, _ = result
    page = tmp_path / "performance.md"
    page.write_text(f"# Performance\n\nHand-written intro.\n\n{run_report.BEGIN}\nold figures\n{run_report.END}\n\n"
                    "## Sizing\n\nHand-written sizing.\n")
    run_report.write_docs(page, report)
    once = page.read_text()
    run_report.write_docs(page, report)
    assert page.read_text() == once, "rewriting twice changes nothing"
    assert "old figures" not in once and "Hand-written intro." in once and "Hand-written sizing." in once
    assert "| `tokens.cache_read_share` | 0.85 | 0.7 | 0.9 | >= 0.8 | yes |" in once
    assert f"`{report['command']}`" in once and f"cores {report['machine']['cores']}" in once
    assert "- `bad_bench` did not report: ValueError: the database is not there" in once
    assert ("](performance/intake.png)" in once) == bool(report["plots"])


def test_docs_without_the_markers_say_what_to_add(tmp_path: Path) -> None:
    page = tmp_path / "performance.md"
    page.write_text("# Performance\n")
    with pytest.raises(SystemExit, match="no generated block"):
        run_report.write_docs(page, {"modules": {}})


def test_a_timed_out_module_leaves_no_process_behind(tmp_path: Path) -> None:
    pidfile = tmp_path / "server.pid"
    (tmp_path / "spawner_bench.py").write_text(f'''
import subprocess, time

def measure(*, quick, repeats):
    server = subprocess.Popen(["sleep", "300"], start_new_session=True)  # a server in a session of its own
    open({str(pidfile)!r}, "w").write(str(server.pid))
    time.sleep(60)
''')
    result = run.run_module("spawner_bench", quick=True, repeats=1, timeout=3, path=tmp_path)
    assert result.error == "timed out after 3 s"
    pid = int(pidfile.read_text())
    stat = Path(f"/proc/{pid}/stat")
    assert not stat.exists() or stat.read_text().split(") ", 1)[1].startswith("Z")
