"""Workspaces on a large repository: a task's checkout against a full clone, and label → first model request.

    python bench/workspace_bench.py [--quick] [--repeats N]

Figures (raw samples, for bench/run.py):

- workspace.full_clone_s: `git clone --no-local` of the generated repository (bench/repo_generator.py);
- workspace.workspace_s: what a task's checkout costs a warm host (mirror there, pool refilled):
  WorkspaceManager.prepare, mirror fetch included, as the worker calls it (owned by the sandbox's
  user when run as root); workspace.ratio is the one over the other, measured in turns;
- workspace.disk_ratio: the task directory's disk after publishing, over the checked-out files';
- label_to_model.p50_s / p99_s: a signed issues.labeled webhook to a real coordinator, Redis and
  worker until the fake model receives the first request, on the large repository, warm host;
- overhead.p50_s: webhook to pr_open with a zero-latency scripted model (write a file, finish),
  minus the test command's time (the generated repository has none).

Series workspace_vs_size: full clone, workspace time and disk for 1k-100k files (fewer with --quick),
one turn each below the largest size, whose point reuses the turns above: a second round of 100k-file
clones is what kept a full run (`bench/run.py --only workspace`) from finishing in 12 minutes.
Label → model and overhead take max(repeats, 5) tasks (3 with --quick), each after a refill.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(1, str(HERE.parent))

import repo_generator  # noqa: E402
from bench_cluster import Scratch  # noqa: E402

REPO = "Codertocat/Hello-World"  # the repository of the recorded webhook payloads
PG_ADMIN = os.environ.get("FORGECREW_TEST_PG", "postgresql://postgres@127.0.0.1:5432/postgres")
REDIS_URL = os.environ.get("FORGECREW_TEST_REDIS", "redis://127.0.0.1:6379")


def disk_usage(*paths: Path, skip_git: bool = False) -> int:
    """Bytes allocated under `paths`, hard links once (as `du`), optionally without .git directories."""
    seen: set[tuple[int, int]] = set()
    total = 0
    for top in paths:
        for dirpath, dirnames, filenames in os.walk(top):
            if skip_git and ".git" in dirnames:
                dirnames.remove(".git")
            for name in dirnames + filenames:
                info = os.lstat(os.path.join(dirpath, name))
                if (info.st_dev, info.st_ino) not in seen:
                    seen.add((info.st_dev, info.st_ino))
                    total += info.st_blocks * 512
    return total


def _owner() -> tuple[int, int] | None:
    """Whom a worker like this one gives checkouts to: the sandbox's user when root."""
    return (65534, 65534) if os.geteuid() == 0 else None


def full_clone(source: Path, dest: Path) -> float:
    started = time.perf_counter()
    subprocess.run(["git", "clone", "-q", "--no-local", str(source), str(dest)], check=True, capture_output=True)
    return time.perf_counter() - started


def workspace_turns(source: Path, work: Path, repeats: int) -> dict[str, list[float]]:
    """Full clone and a task's workspace in turns (a busy disk hits both alike), on a warm host."""
    from workers.change import build_change
    from workers.workspace import WorkspaceManager

    manager = WorkspaceManager(work / "workspaces", pool_size=1)
    owner = _owner()
    manager.prepare(0, "bench/large", source.as_uri(), "forgecrew/warm-up", owner=owner)  # the host's mirror
    figures: dict[str, list[float]] = {"workspace.full_clone_s": [], "workspace.workspace_s": [],
                                       "workspace.ratio": [], "workspace.disk_ratio": []}
    checkout_bytes = 0
    for rep in range(repeats):
        _wait_refilled(manager, owner)
        clone = full_clone(source, work / f"clone-{rep}")
        if not checkout_bytes:
            checkout_bytes = disk_usage(work / f"clone-{rep}", skip_git=True)
        shutil.rmtree(work / f"clone-{rep}")
        started = time.perf_counter()
        workspace = manager.prepare(rep + 1, "bench/large", source.as_uri(), f"forgecrew/run-{rep + 1}", owner=owner)
        seconds = time.perf_counter() - started
        first = next(path for path in sorted(workspace.checkout.rglob("*.py")) if path.is_file())
        first.write_text(first.read_text() + "# a task's change\n")
        build_change(workspace, "bench", author=("bench", "bench@example.com"), contains_secret=lambda text: False)
        figures["workspace.full_clone_s"].append(clone)
        figures["workspace.workspace_s"].append(seconds)
        figures["workspace.ratio"].append(seconds / clone)
        figures["workspace.disk_ratio"].append(disk_usage(workspace.path) / checkout_bytes)
        manager.pool.discard(workspace.path)
        manager.pool.empty_trash()
    manager.pool.wait()
    figures["checkout_bytes"] = [float(checkout_bytes)]
    return figures


def _wait_refilled(manager: Any, owner: tuple[int, int] | None, repo: str = "bench/large", timeout: float = 600) -> None:
    """Until the pool has a ready checkout and no refill runs: the warm host the figures are for."""
    slots = [manager.pool.slot(repo, owner)] if owner is not None else []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = slots or list(manager.pool.root.glob(f"*/{repo}"))  # whichever user the worker gives them to
        names = [name for slot in found if slot.is_dir() for name in os.listdir(slot)]
        if any(name.startswith("ready-") for name in names) and not any(name.startswith("partial-") for name in names):
            return
        time.sleep(0.05)
    raise RuntimeError(f"the checkout pool of {repo} was not refilled within {timeout:g} s")


def size_series(sizes: tuple[int, ...], work: Path, repeats: int) -> list[dict[str, Any]]:
    points = []
    for files in sizes:
        source = repo_generator.ensure_repo(files)
        points.append(_point(files, workspace_turns(source, work / f"size-{files}", repeats)))
        shutil.rmtree(work / f"size-{files}", ignore_errors=True)
    return points


def _point(files: int, turns: dict[str, list[float]]) -> dict[str, Any]:
    """One point of the workspace-vs-size plot from workspace_turns' samples (the largest reuses the main turns)."""
    checkout = turns["checkout_bytes"][0]
    return {"files": files, "workspace_s": statistics.median(turns["workspace.workspace_s"]),
            "full_clone_s": statistics.median(turns["workspace.full_clone_s"]),
            "disk_mb": round(statistics.median(turns["workspace.disk_ratio"]) * checkout / 1e6, 1),
            "checkout_mb": round(checkout / 1e6, 1)}


class Cluster:
    """PostgreSQL database, Redis db, local forge holding the large repository, fake model, coordinator, worker."""

    def __init__(self, root: Path, source: Path) -> None:
        from common.forge.local import LocalForge
        from tests.support import SECRET

        self.root = root
        self.scratch = Scratch(root, pg_admin=PG_ADMIN, redis_url=REDIS_URL, prefix="forgecrew_bench",
                               webhook_secret=SECRET, repo_allowlist=["Codertocat/*"], repair_rounds=0,
                               workspace_pool_size=1)
        self.settings, self.db, self.model = self.scratch.settings, self.scratch.db, self.scratch.model
        self.forge = LocalForge(self.settings)
        bare = self.forge.bare_path(REPO)
        bare.parent.mkdir(parents=True, exist_ok=True)
        subprocess.run(["git", "clone", "-q", "--bare", str(source), str(bare)], check=True, capture_output=True)
        self.processes: list[Any] = []

    def start(self) -> str:
        from tests.support import start_coordinator, start_worker

        env = self.scratch.env()
        coordinator, url = start_coordinator(env, self.root)
        self.processes.append(coordinator)
        self.processes.append(start_worker(env, self.root, "backend"))
        return url

    def task(self, url: str, number: int) -> tuple[float, float]:
        """One labelled issue through the cluster: (label → first model request, overhead) in seconds."""
        import httpx

        from tests.fakes.anthropic_server import tool_use
        from tests.support import headers, labeled_issue

        first: list[float] = []

        def write(_request: Any) -> Any:
            first.append(time.time())
            return tool_use("write_file", {"path": f"notes/bench-{number}.md", "content": "a change\n"})

        self.model.add(write, tool_use("finish", {"summary": "Wrote a note."}))
        self.forge.create_issue(REPO, number, f"Bench {number}", "Write a note.")
        body = json.dumps(labeled_issue("forgecrew:backend", repo=REPO, number=number, title=f"Bench {number}",
                                        body="Write a note.")).encode()
        started = time.time()
        response = httpx.post(f"{url}/webhooks/github", content=body, headers=headers("issues", body), timeout=30)
        response.raise_for_status()
        events = self._finished(response.json()["task_id"])
        opened = next(at for state, at in events if state == "pr_open")
        testing = [at for state, at in events if state == "testing"]
        tests = (opened - testing[0]) if testing else 0.0  # an upper bound: publishing follows the tests
        return first[0] - started, opened - started - tests

    def _finished(self, task_id: int, timeout: float = 300) -> list[tuple[str, float]]:
        from common.models import Task, TaskEvent

        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self.db.session() as session:
                task = session.get(Task, task_id)
                if task is not None and task.state in ("pr_open", "failed"):
                    if task.state == "failed":
                        raise RuntimeError(f"bench task {task_id} failed: {task.failure_reason}")
                    rows = session.query(TaskEvent).filter(TaskEvent.task_id == task_id).order_by(TaskEvent.id)
                    return [(row.to_state, row.at.timestamp()) for row in rows]
            time.sleep(0.02)
        raise RuntimeError(f"bench task {task_id} did not finish in {timeout:g} s:\n{self.processes[-1].log()[-3000:]}")

    def close(self) -> None:
        for process in reversed(self.processes):
            process.stop()
        self.scratch.close()


def label_to_model(source: Path, work: Path, repeats: int) -> dict[str, list[float]]:
    """label_to_model.* and overhead.p50_s samples: one warm-up task, then `repeats` on a refilled pool."""
    from workers.workspace import WorkspaceManager

    cluster = Cluster(work, source)
    try:
        url = cluster.start()
        manager = WorkspaceManager(cluster.settings.workspace_root, pool_size=1)
        cluster.task(url, 1)  # cold: the mirror is cloned, the pool filled
        latencies, overheads = [], []
        for number in range(2, repeats + 2):
            _wait_refilled(manager, None, REPO)
            latency, overhead = cluster.task(url, number)
            latencies.append(latency)
            overheads.append(overhead)
        return {"label_to_model.p50_s": latencies, "label_to_model.p99_s": latencies, "overhead.p50_s": overheads}
    finally:
        cluster.close()


def measure(*, quick: bool, repeats: int) -> dict[str, Any]:
    """Raw samples of workspace.*, label_to_model.* and overhead.p50_s, and the workspace-vs-size series."""
    files = repo_generator.QUICK_FILES if quick else repo_generator.LARGE_FILES
    source = repo_generator.ensure_repo(files)
    with tempfile.TemporaryDirectory(prefix="forgecrew-bench-ws-", ignore_cleanup_errors=True) as tmp:
        work = Path(tmp)
        os.chmod(work, 0o755)
        figures = workspace_turns(source, work / "turns", max(repeats, 1))
        largest = _point(files, figures)
        figures.pop("checkout_bytes")
        figures.update(label_to_model(source, work / "cluster", max(repeats, 3) if quick else max(repeats, 5)))
        smaller = tuple(size for size in repo_generator.sizes(quick=quick) if size != files)
        series = size_series(smaller, work / "sweep", 1) + [largest]
    return {"figures": figures, "series": {"workspace_vs_size": series}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help=f"the {repo_generator.QUICK_FILES}-file repository")
    parser.add_argument("--repeats", type=int, default=3)
    options = parser.parse_args()
    result = measure(quick=options.quick, repeats=options.repeats)
    print(f"{'figure':<28}{'median':>10}{'min':>10}{'max':>10}")
    for key, samples in result["figures"].items():
        print(f"{key:<28}{statistics.median(samples):>10.3f}{min(samples):>10.3f}{max(samples):>10.3f}")
    print(f"\n{'files':>8}{'workspace s':>13}{'clone s':>10}{'ratio':>8}{'task MB':>9}{'checkout MB':>13}")
    for point in result["series"]["workspace_vs_size"]:
        print(f"{point['files']:>8}{point['workspace_s']:>13.3f}{point['full_clone_s']:>10.3f}"
              f"{point['workspace_s'] / point['full_clone_s']:>8.3f}{point['disk_mb']:>9.1f}{point['checkout_mb']:>13.1f}")


if __name__ == "__main__":
    main()
