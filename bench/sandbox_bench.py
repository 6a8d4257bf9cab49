"""Cost per command of the command sandbox: plain bash vs COMMAND_SANDBOX=none vs bubblewrap.

Run: python bench/sandbox_bench.py [--reps 50] [--network] [--json]
(or through python bench/run.py, which calls measure() for the figure `sandbox.overhead_ms`)
Every command the agent or the repository runs goes through `Sandbox.run`, so its fixed cost is
paid on each of the dozens to hundreds of commands of a task. This times `true` (nothing but the
overhead) as: a plain `bash -c true` (the baseline), the none mode (reaper, limits, safe env),
the bubblewrap sandbox offline, and with --network the bubblewrap sandbox with user-mode
networking (slirp4netns plus the nftables egress filter). Methods take turns within each
repetition, so a busy host's noise hits all alike; figures are printed, never asserted. The
configuration is the one `bubblewrap_config(settings)` gives here: as root, a staging bwrap and a
drop to SANDBOX_UID come first. The project's target: a sandboxed command costs under 20 ms more
than a plain one.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from common.settings import Settings  # noqa: E402
from workers.sandbox.base import Limits, SandboxError, SandboxPaths  # noqa: E402
from workers.sandbox.bubblewrap import BubblewrapSandbox  # noqa: E402
from workers.sandbox.factory import bubblewrap_config  # noqa: E402
from workers.sandbox.network import NetworkTools  # noqa: E402
from workers.sandbox.unsandboxed import UnsandboxedRunner  # noqa: E402

TARGET_MS = 20.0
Method = Callable[[], None]


def machine() -> dict[str, str]:
    bwrap = subprocess.run(["bwrap", "--version"], capture_output=True, text=True)
    return {"nproc": str(os.cpu_count()), "kernel": platform.release(),
            "bwrap": (bwrap.stdout or bwrap.stderr).strip(), "euid": str(os.geteuid())}


def sandboxed(runner: UnsandboxedRunner | BubblewrapSandbox, paths: SandboxPaths, limits: Limits) -> Method:
    def run() -> None:
        result = runner.run("true", paths, limits)
        if not result.ok:
            raise RuntimeError(f"{runner.name} (network={limits.network}) failed: exit {result.exit_code}, "
                               f"timed_out={result.timed_out}, limit={result.limit}, output:\n{result.output}")
    return run


def plain() -> None:
    subprocess.run(["bash", "-c", "true"], env={"PATH": "/usr/bin:/bin"}, check=True)


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(fraction * (len(ordered) - 1)))]


def time_methods(methods: list[tuple[str, Method]], reps: int, notes: list[str]) -> dict[str, list[float]]:
    """Milliseconds of each call, methods round-robin within each repetition, after one warm-up each.

    A sandboxed method whose warm-up fails is dropped with its exact error in `notes`.
    """
    working: list[tuple[str, Method]] = []
    for label, method in methods:
        try:
            method()
            working.append((label, method))
        except (SandboxError, RuntimeError) as exc:
            notes.append(f"{label} skipped, it failed: {type(exc).__name__}: {exc}")
    methods = working
    samples: dict[str, list[float]] = {label: [] for label, _ in methods}
    for _ in range(reps):
        for label, method in methods:
            started = time.perf_counter()
            method()
            samples[label].append((time.perf_counter() - started) * 1000)
    return samples


def summarize(samples: dict[str, list[float]]) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    base = statistics.median(next(iter(samples.values())))
    for label, values in samples.items():
        median = statistics.median(values)
        rows.append({"method": label, "median_ms": median, "p90_ms": percentile(values, 0.9),
                     "mean_ms": statistics.fmean(values), "ratio": median / base, "added_ms": median - base})
    return rows


class _Bench:
    """The sandboxes of one run in a throwaway directory, configured as the worker configures them here."""

    def __init__(self, base: Path) -> None:
        settings = Settings(database_url="sqlite://", workspace_root=base / "workspaces",
                            local_forge_root=base / "forge")
        self.config = bubblewrap_config(settings)
        self.paths = SandboxPaths(base / "task" / "repo", base / "task" / "home", base / "task" / "tmp", name="bench")
        self.bubblewrap, self.none = BubblewrapSandbox(self.config), UnsandboxedRunner()
        self.bubblewrap.prepare(self.paths)  # as root it gives the directories to SANDBOX_UID

    def methods(self, *, network: bool, notes: list[str]) -> list[tuple[str, Method]]:
        methods: list[tuple[str, Method]] = [
            (BASELINE, plain),
            ("none mode (UnsandboxedRunner)", sandboxed(self.none, self.paths, Limits())),
            (BUBBLEWRAP, sandboxed(self.bubblewrap, self.paths, Limits()))]
        if network:
            try:
                NetworkTools.find()
                methods.append(("bubblewrap, network (slirp+nft)",
                                sandboxed(self.bubblewrap, self.paths, Limits(network=True))))
            except SandboxError as exc:
                notes.append(f"network skipped: {exc}")
        return methods


BASELINE = "plain bash -c true (baseline)"
BUBBLEWRAP = "bubblewrap, offline"


def measure(*, quick: bool, repeats: int) -> dict[str, Any]:
    """The bench protocol: sandbox.overhead_ms = median bubblewrap `true` minus median plain `bash -c true`.

    One sample per repeat, each the difference of medians over `reps` interleaved calls.
    """
    reps = 20 if quick else 50
    overhead: list[float] = []
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="forgecrew-sandbox-bench-") as tmp:
        bench = _Bench(Path(tmp))
        for _ in range(max(1, repeats)):
            notes: list[str] = []
            samples = time_methods(bench.methods(network=False, notes=notes), reps, notes)
            if BUBBLEWRAP not in samples:
                raise RuntimeError("; ".join(notes) or "the bubblewrap sandbox did not run")
            overhead.append(statistics.median(samples[BUBBLEWRAP]) - statistics.median(samples[BASELINE]))
            rows.extend(summarize(samples))
    return {"figures": {"sandbox.overhead_ms": overhead}, "series": {"sandbox_methods": rows}}


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--reps", type=int, default=50)
    parser.add_argument("--network", action="store_true", help="also time Limits(network=True)")
    parser.add_argument("--json", action="store_true", help="print the figures as JSON")
    options = parser.parse_args()
    notes: list[str] = []
    with tempfile.TemporaryDirectory(prefix="forgecrew-sandbox-bench-") as tmp:
        bench = _Bench(Path(tmp))
        config = bench.config
        rows = summarize(time_methods(bench.methods(network=options.network, notes=notes), options.reps, notes))
    facts = {**machine(), "run_as": str(config.run_as), "nice": str(config.nice), "reps": str(options.reps)}
    if options.json:
        print(json.dumps({"machine": facts, "target_added_ms": TARGET_MS, "results": rows, "notes": notes}, indent=2))
        return
    print("  ".join(f"{key}={value}" for key, value in facts.items()))
    mode = (f"root worker: staging bwrap, then setpriv to uid {config.run_as[0]}" if config.run_as
            else "unprivileged worker: one bwrap, no staging")
    print(f"bubblewrap configuration: {mode}")
    for note in notes:
        print(f"note: {note}")
    print(f"\ncost of one `true`, ms over {options.reps} reps (methods interleaved); target: < {TARGET_MS:g} ms added")
    print(f"{'method':<34}{'median':>9}{'p90':>9}{'mean':>9}{'vs plain':>10}{'added':>9}")
    for row in rows:
        print(f"{row['method']:<34}{row['median_ms']:>9.2f}{row['p90_ms']:>9.2f}{row['mean_ms']:>9.2f}"
              f"{row['ratio']:>9.2f}x{row['added_ms']:>+9.2f}")


if __name__ == "__main__":
    main()
