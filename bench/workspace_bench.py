"""Per-task workspace creation: full clone (baseline) vs clone --shared vs worktree from a mirror.

Run: python bench/workspace_bench.py [--files 2000] [--commits 200] [--reps 5]
Builds a synthetic repository in a temporary directory, so it needs nothing but git.
"""

from __future__ import annotations

import argparse
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

WORDS = ("alpha beta gamma delta epsilon zeta eta theta iota kappa lambda mu nu xi omicron pi rho "
         "sigma tau upsilon phi chi psi omega def class return import yield async await").split()


def git(*args: str, cwd: Path | None = None, stdin: bytes | None = None) -> None:
    """Run git quietly; a failure stops the benchmark with git's message."""
    subprocess.run(["git", *args], cwd=cwd, input=stdin, check=True, capture_output=True)


def _blob(rng: random.Random, lines: int) -> bytes:
    text = "\n".join(" ".join(rng.choices(WORDS, k=10)) + f" {rng.random():.12f}" for _ in range(lines))
    return text.encode() + b"\n"


def build_source(bare: Path, files: int, commits: int, seed: int = 7) -> None:
    """Write a bare repository with `files` files and `commits` commits through git fast-import."""
    rng = random.Random(seed)
    paths = [f"pkg{i % 40:02d}/mod{i // 40:03d}/file{i:05d}.py" for i in range(files)]
    stream = bytearray()
    for number in range(commits):
        touched = paths if number == 0 else rng.sample(paths, 20)
        message = f"commit {number}".encode()
        stamp = 1_700_000_000 + number * 60
        stream += b"commit refs/heads/main\n"
        stream += f"committer Bench <bench@example.com> {stamp} +0000\n".encode()
        stream += b"data %d\n%s\n" % (len(message), message)
        for path in touched:
            data = _blob(rng, rng.randint(15, 40))
            stream += f"M 100644 inline {path}\n".encode() + b"data %d\n" % len(data) + data
        stream += b"\n"
    git("init", "--bare", "-q", "-b", "main", str(bare))
    git("fast-import", "--quiet", cwd=bare, stdin=bytes(stream))
    git("repack", "-adq", cwd=bare)


def disk_usage(*paths: Path) -> int:
    """Bytes allocated under `paths`, counting hard-linked files once (as `du` does)."""
    seen: set[tuple[int, int]] = set()
    total = 0
    for top in paths:
        for dirpath, dirnames, filenames in os.walk(top):
            for name in dirnames + filenames:
                info = os.lstat(os.path.join(dirpath, name))
                if (info.st_dev, info.st_ino) not in seen:
                    seen.add((info.st_dev, info.st_ino))
                    total += info.st_blocks * 512
    return total


def full_clone(source: Path, mirror: Path, dest: Path, name: str) -> list[Path]:
    git("clone", "-q", source.as_uri(), str(dest))
    git("checkout", "-q", "-b", name, cwd=dest)
    return [dest]


def shared_clone(source: Path, mirror: Path, dest: Path, name: str) -> list[Path]:
    git("clone", "-q", "--shared", "--no-checkout", str(mirror), str(dest))
    git("checkout", "-q", "-b", name, "origin/main", cwd=dest)
    return [dest]


def worktree(source: Path, mirror: Path, dest: Path, name: str) -> list[Path]:
    git("worktree", "add", "-q", "-b", name, str(dest), "main", cwd=mirror)
    return [dest, mirror / "worktrees" / dest.name]


def manager_prepare(source: Path, mirror: Path, dest: Path, name: str) -> list[Path]:
    """What forgecrew really does per task: locked mirror fetch, then a shared clone."""
    from workers.workspace import WorkspaceManager

    manager = WorkspaceManager(dest.parent / "managed")
    workspace = manager.prepare(int(name.rsplit("-", 1)[1]), "bench/source", source.as_uri(),
                                f"forgecrew/{name}")
    return [workspace.path]


def measure_once(strategy: Callable[..., list[Path]], source: Path, mirror: Path, work: Path,
                 rep: int) -> tuple[float, int]:
    """Seconds and bytes of one fresh workspace made by `strategy`."""
    dest = work / f"{strategy.__name__}-{rep}"
    started = time.perf_counter()
    used = strategy(source, mirror, dest, f"task-{rep + 1}")
    return time.perf_counter() - started, disk_usage(*used)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--files", type=int, default=2000)
    parser.add_argument("--commits", type=int, default=200)
    parser.add_argument("--reps", type=int, default=5)
    options = parser.parse_args()
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    with tempfile.TemporaryDirectory(prefix="forgecrew-bench-") as tmp:
        base = Path(tmp)
        source, mirror = base / "source.git", base / "mirror.git"
        started = time.perf_counter()
        build_source(source, options.files, options.commits)
        print(f"synthetic repo: {options.files} files, {options.commits} commits, "
              f"{disk_usage(source) / 1e6:.1f} MB packed, built in {time.perf_counter() - started:.1f}s")
        started = time.perf_counter()
        git("clone", "-q", "--mirror", source.as_uri(), str(mirror))
        print(f"one-time mirror clone: {time.perf_counter() - started:.3f}s, "
              f"{disk_usage(mirror) / 1e6:.1f} MB (shared by every task on the host)")
        report(source, mirror, base, options.reps)


def report(source: Path, mirror: Path, base: Path, reps: int) -> None:
    """Print one row per strategy, as a ratio against the full clone measured in the same run.

    Strategies take turns within each repetition, so drift in a busy host's disk speed hits all alike.
    """
    rows = [("full clone (baseline, file://)", full_clone), ("clone --shared from mirror", shared_clone),
            ("worktree add from mirror", worktree), ("WorkspaceManager.prepare (fetch+shared)", manager_prepare)]
    manager_prepare(source, mirror, base / "warm-up", "task-0")  # the host's mirror exists already
    samples: dict[str, list[tuple[float, int]]] = {label: [] for label, _ in rows}
    for rep in range(reps):
        for label, strategy in rows:
            samples[label].append(measure_once(strategy, source, mirror, base, rep))
    print(f"\nper-task workspace creation, median of {reps} (strategies interleaved):")
    print(f"{'strategy':<42}{'seconds':>9}{'vs full':>9}{'MB/task':>9}{'vs full':>9}")
    baseline: tuple[float, float] | None = None
    for label, _ in rows:
        seconds = statistics.median(sample[0] for sample in samples[label])
        size = statistics.median(sample[1] for sample in samples[label])
        baseline = baseline or (seconds, size)
        print(f"{label:<42}{seconds:>9.3f}{seconds / baseline[0]:>8.2f}x"
              f"{size / 1e6:>9.1f}{size / baseline[1]:>8.2f}x")


if __name__ == "__main__":
    main()
