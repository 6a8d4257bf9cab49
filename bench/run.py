"""Run every benchmark, print the figures against the issue's targets, write JSON, plots and the docs block.

    python bench/run.py [--quick] [--json FILE] [--only NAME,...] [--repeats N] [--write-docs]

Each benchmark is a module of bench/ with `measure(*, quick: bool, repeats: int) -> dict`
returning {"figures": {key: [raw samples]}, "series": {name: [point dicts]}}. Every module runs
in its own Python process with a time budget, so one that is missing, raises, hangs or leaks
cannot stop the others: it becomes an error row. A figure is {"median", "min", "max"} of its
samples (null when its module failed). A missed target is reported, never an exit status: only
a crash of this script itself fails (CI runs it as a smoke test).
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(1, str(HERE.parent))

from run_report import plot_all, print_table, write_docs  # noqa: E402
from run_targets import FIGURES  # noqa: E402

MODULES = ("intake_bench", "workspace_bench", "concurrency_bench", "tokens_bench", "sandbox_bench")
QUICK_MODULE_SECONDS = 240.0  # one module in --quick mode
QUICK_TOTAL_SECONDS = 570.0  # all of them: CI has 30 minutes, pytest takes about 8
FULL_MODULE_SECONDS = 3600.0
DEFAULT_JSON = HERE.parent / "docs" / "performance" / "results.json"


@dataclass
class ModuleResult:
    """What one benchmark module gave back, or why it gave nothing."""

    name: str
    seconds: float
    figures: dict[str, list[float]] = field(default_factory=dict)
    series: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    error: str | None = None


def aggregate(samples: Sequence[Any]) -> dict[str, float] | None:
    """Median, min and max of the numeric samples; None when there are none."""
    values = [float(v) for v in samples if isinstance(v, int | float) and not isinstance(v, bool)]
    if not values:
        return None
    return {"median": statistics.median(values), "min": min(values), "max": max(values)}


def run_module(name: str, *, quick: bool, repeats: int, timeout: float, path: Path = HERE) -> ModuleResult:
    """Run `name`.measure() in a child process in its own session, killed with its children at `timeout`."""
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="forgecrew-bench-") as tmp:
        out = Path(tmp) / "result.json"
        command = [sys.executable, str(Path(__file__).resolve()), "--child", name, "--out", str(out),
                   "--repeats", str(repeats), "--path", str(path), *(["--quick"] if quick else [])]
        child = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                 start_new_session=True)
        try:
            output, _ = child.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            _kill_group(child)
            return ModuleResult(name, time.monotonic() - started, error=f"timed out after {timeout:.0f} s")
        seconds = time.monotonic() - started
        if child.returncode != 0 or not out.exists():
            lines = [line for line in (output or "").splitlines() if line.strip()]
            reason = lines[-1] if lines else f"exit status {child.returncode}"
            return ModuleResult(name, seconds, error=reason[:300])
        data = json.loads(out.read_text())
    if "error" in data:
        return ModuleResult(name, seconds, error=data["error"])
    return ModuleResult(name, seconds, figures=data.get("figures") or {}, series=data.get("series") or {})


def _descendants(pid: int) -> list[int]:
    """Every live process under `pid`, read from /proc before anything is killed (orphans lose their parent)."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    found, queue = [], [pid]
    while queue:
        for child in children.get(queue.pop(), []):
            found.append(child)
            queue.append(child)
    return found


def _kill_group(child: subprocess.Popen[str]) -> None:
    """Stop the module and everything it started (servers in sessions of their own too), then reap it."""
    targets = _descendants(child.pid)
    for signum in (signal.SIGTERM, signal.SIGKILL):
        for kill, target in [(os.killpg, child.pid), *((os.kill, pid) for pid in targets)]:
            try:
                kill(target, signum)
            except (ProcessLookupError, PermissionError):
                pass
        try:
            child.wait(timeout=10)
            if signum == signal.SIGTERM:
                time.sleep(1)  # the module's own cleanup may still be stopping what it started
                targets = [pid for pid in targets if Path(f"/proc/{pid}").exists()]
                if not targets:
                    return
        except subprocess.TimeoutExpired:
            continue


def child_main(name: str, *, out: Path, quick: bool, repeats: int, path: Path) -> int:
    """Inside the child: import the module, measure, write its result; an exception is the error row."""
    sys.path.insert(0, str(path))
    try:
        module = __import__(name)
    except ModuleNotFoundError as exc:
        if exc.name != name:
            raise
        out.write_text(json.dumps({"error": f"missing: no module {name}.py in {path}"}))
        return 0
    try:
        result = module.measure(quick=quick, repeats=repeats)
    except Exception as exc:  # the whole point of an error row: report it, let the others run
        out.write_text(json.dumps({"error": f"{type(exc).__name__}: {exc}"[:300]}))
        return 0
    out.write_text(json.dumps(result, default=float))
    return 0


def _version(command: list[str]) -> str:
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=10, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return "not found"
    text = (done.stdout or done.stderr).strip().splitlines()
    return text[0] if text else "unknown"


def _postgres() -> list[str]:
    found = sorted(Path("/usr/lib/postgresql").glob("*/bin/postgres"), key=lambda p: p.parent.parent.name)
    return [str(found[-1]) if found else "postgres", "--version"]


def machine() -> dict[str, Any]:
    """The host the figures belong to."""
    memory = 0
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                memory = int(line.split()[1]) * 1024
    except OSError:
        pass
    uname = os.uname()
    return {"cores": os.cpu_count(), "memory_gb": round(memory / 2**30, 1), "kernel": uname.release,
            "arch": uname.machine, "python": sys.version.split()[0], "postgresql": _version(_postgres()),
            "redis": _version(["redis-server", "--version"]), "git": _version(["git", "--version"]),
            "bwrap": _version(["bwrap", "--version"])}


def run_all(names: Sequence[str], *, quick: bool, repeats: int, module_timeout: float, total_timeout: float,
            path: Path = HERE) -> list[ModuleResult]:
    """Each module in turn, within its own budget and what is left of the whole run's."""
    deadline = time.monotonic() + total_timeout
    results = []
    for name in names:
        left = deadline - time.monotonic()
        if left <= 1:
            results.append(ModuleResult(name, 0.0, error=f"not run: the run's {total_timeout:.0f} s were used up"))
            continue
        print(f"== {name} …", file=sys.stderr, flush=True)
        result = run_module(name, quick=quick, repeats=repeats, timeout=min(module_timeout, left), path=path)
        print(f"== {name}: {result.error or 'ok'} ({result.seconds:.1f} s)", file=sys.stderr, flush=True)
        results.append(result)
    return results


def build_report(results: Sequence[ModuleResult], *, command: str, quick: bool) -> dict[str, Any]:
    """The JSON document: every known figure (null when unmeasured), machine, series, module status."""
    report: dict[str, Any] = {key: None for key in FIGURES}
    series: dict[str, list[dict[str, Any]]] = {}
    for result in results:
        for key, samples in result.figures.items():
            report[key] = aggregate(samples if isinstance(samples, list) else [samples])
        for name, points in result.series.items():
            series.setdefault(name, []).extend(points)
    report["machine"] = machine()
    report["series"] = series
    report["modules"] = {r.name: {"seconds": round(r.seconds, 2), "error": r.error} for r in results}
    report["command"] = command
    report["quick"] = quick
    report["generated_at"] = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    return report


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small inputs, every module within 240 s")
    parser.add_argument("--json", type=Path, default=DEFAULT_JSON, help=f"where to write figures (default {DEFAULT_JSON.name})")
    parser.add_argument("--only", default="", help="comma-separated module names, e.g. tokens,sandbox")
    parser.add_argument("--repeats", type=int, default=None, help="runs per figure (default 1 quick, 5 full)")
    parser.add_argument("--timeout", type=float, default=None, help="seconds per module")
    parser.add_argument("--plots", type=Path, default=HERE.parent / "docs" / "performance", help="PNG folder")
    parser.add_argument("--no-plots", action="store_true")
    parser.add_argument("--write-docs", nargs="?", const=HERE.parent / "docs" / "performance.md", type=Path,
                        default=None, help="rewrite the generated block of docs/performance.md")
    parser.add_argument("--path", type=Path, default=HERE, help=argparse.SUPPRESS)  # where modules live (tests)
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--out", type=Path, default=None, help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def selected(only: str) -> list[str]:
    """Module names from --only; `tokens` and `tokens_bench` both name bench/tokens_bench.py."""
    if not only:
        return list(MODULES)
    return [name if name.endswith("_bench") else f"{name}_bench" for name in only.split(",") if name.strip()]


def main(argv: Sequence[str] | None = None) -> int:
    options = parse_args(argv)
    repeats = options.repeats or (1 if options.quick else 5)
    if options.child:
        return child_main(options.child, out=options.out, quick=options.quick, repeats=repeats, path=options.path)
    module_timeout = options.timeout or (QUICK_MODULE_SECONDS if options.quick else FULL_MODULE_SECONDS)
    total = QUICK_TOTAL_SECONDS if options.quick else float("inf")
    command = "python bench/run.py " + " ".join(sys.argv[1:] if argv is None else argv)
    results = run_all(selected(options.only), quick=options.quick, repeats=repeats, module_timeout=module_timeout,
                      total_timeout=total, path=options.path)
    report = build_report(results, command=command.strip(), quick=options.quick)
    if not options.no_plots:
        report["plots"] = plot_all(report["series"], options.plots)
    options.json.parent.mkdir(parents=True, exist_ok=True)
    options.json.write_text(json.dumps(report, indent=2) + "\n")
    print_table(report)
    print(f"\nfigures written to {options.json}")
    if options.write_docs:
        write_docs(options.write_docs, report)
        print(f"generated block of {options.write_docs} rewritten")
    return 0


if __name__ == "__main__":
    sys.exit(main())
