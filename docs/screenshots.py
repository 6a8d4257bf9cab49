"""Take docs/images/flower-tasks.png: Flower's tasks page on a real `forgecrew up` cluster.

Run by hand from the repository's root (not in CI; it needs Debian's chromium,
`apt-get install -y chromium`):

    .venv/bin/python docs/screenshots.py                 # writes docs/images/flower-tasks.png
    .venv/bin/python docs/screenshots.py --keep          # leave the temporary HOME for a look afterwards

What it does: a fresh FORGECREW_HOME in a temporary folder; the scripted Messages API of the
tests (tests/fakes/anthropic_server.py) on 127.0.0.1, answering every agent session with the
fix of tests/sample_repo.py; `forgecrew up` on free loopback ports (SQLite, the embedded
broker, the local forge) with a worker per specialty; three `forgecrew submit` requests on the
sample repository, for three specialties; a wait until each task is `pr_open` and Flower shows it SUCCESS; then
headless Chromium on Flower's /tasks page, with Flower's basic auth in the URL (Chromium 156
answers the challenge of a top-level page with it). Chromium's resolver maps every name but
127.0.0.1 to nothing, so the page can reach nothing else.

Flower names a task by the label forgecrew gives its message (`local/calc task 1 backend`). The
task-sent event, published by the process that sent the message, carries Celery's task name
instead (`forgecrew.run_task`); when it reaches Flower after the worker's task-received event,
Flower keeps that name. The script then starts a fresh cluster and tries again (`--attempts`).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.fakes.anthropic_server import DEFAULT_KEY, FakeAnthropic, tool_use
from tests.sample_repo import TEST_COMMAND, write_sample

OUTPUT = ROOT / "docs" / "images" / "flower-tasks.png"
REQUESTS = [  # (specialty, title, body): what the screenshot shows
    ("backend", "add() subtracts instead of adding", "calc.add(2, 3) returns -1; it should return 5."),
    ("testing", "cover add() with a failing case first", "tests/test_calc.py should catch add(2, 3) != 5."),
    ("general", "make calc.add return the sum", "A user reports add(2, 3) == -1. See calc.py."),
]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_for(what: str, check: Callable[[], Any], timeout: float) -> Any:
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        try:
            last = check()
        except Exception as exc:  # noqa: BLE001 (the thing polled may not be up yet)
            last = exc
        if last and not isinstance(last, Exception):
            return last
        time.sleep(0.5)
    raise SystemExit(f"screenshots: timed out after {timeout:.0f}s waiting for {what} (last: {last!r})")


def fixing_step(request: dict[str, Any]) -> Any:
    """One stateless reply of the fix, chosen by how far this session is: sessions run at once."""
    turns = sum(1 for message in request["messages"] if message["role"] == "assistant")
    if turns == 0:
        return tool_use("read_file", {"path": "calc.py"}, text="Let me look at calc.py.")
    if turns == 1:
        return tool_use("edit_file", {"path": "calc.py", "old_text": "return a - b", "new_text": "return a + b"})
    if turns == 2:
        return tool_use("run_command", {"command": TEST_COMMAND})
    return tool_use("finish", {"summary": "Fixed `add` to return the sum."})


def sample_git_repo(where: Path) -> Path:
    repo = write_sample(where / "calc")
    git = ["git", "-C", str(repo), "-c", "user.name=forgecrew docs", "-c", "user.email=docs@example.invalid"]
    subprocess.run([*git, "init", "--quiet", "--initial-branch", "main"], check=True)
    subprocess.run([*git, "add", "--all"], check=True)
    subprocess.run([*git, "commit", "--quiet", "-m", "calc with a bug"], check=True)
    return repo


def cli(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "coordinator.cli", *args], env=env, capture_output=True,
                          text=True, timeout=120, check=True, cwd=ROOT)


def screenshot(url: str, output: Path, chromium: str) -> None:
    """Chromium's own --screenshot mode; no --virtual-time-budget: Flower's page never goes idle."""
    profile = tempfile.mkdtemp(prefix="forgecrew-chromium-")
    try:
        subprocess.run([
            chromium, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
            "--disable-background-networking", "--disable-component-update", "--disable-sync",
            "--disable-default-apps", "--disable-extensions", "--hide-scrollbars",
            "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1",
            f"--user-data-dir={profile}", "--window-size=1400,600",
            f"--screenshot={output}", url,
        ], check=True, capture_output=True, timeout=120)
    finally:
        shutil.rmtree(profile, ignore_errors=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output", type=Path, default=OUTPUT)
    parser.add_argument("--chromium", default=shutil.which("chromium") or "/usr/bin/chromium")
    parser.add_argument("--keep", action="store_true", help="keep the temporary FORGECREW_HOME and logs")
    parser.add_argument("--attempts", type=int, default=3,
                        help="clusters to try until Flower shows every task under its label (see above)")
    args = parser.parse_args()
    if not Path(args.chromium).exists():
        raise SystemExit(f"screenshots: no chromium at {args.chromium} (apt-get install -y chromium)")
    for attempt in range(1, args.attempts + 1):
        if take(args, final=attempt == args.attempts):
            return 0
        print(f"attempt {attempt} of {args.attempts}: a task shows as forgecrew.run_task in Flower")
    print(f"wrote {args.output} although a task in it shows as forgecrew.run_task")
    return 1


def take(args: argparse.Namespace, *, final: bool) -> bool:
    """One cluster, three tasks, one screenshot; False (and, unless `final`, no picture) when Flower
    lost a task's label."""
    scratch = Path(tempfile.mkdtemp(prefix="forgecrew-screenshots-"))
    home = scratch / "home"
    repo = sample_git_repo(scratch)
    port, flower_port = free_port(), free_port()
    with FakeAnthropic() as model:
        model.add(*[fixing_step] * 4 * len(REQUESTS) * 3)  # room for a retried run or two
        env = {key: value for key, value in os.environ.items() if not key.startswith("FORGECREW_")}
        env.update(FORGECREW_HOME=str(home), FORGECREW_ANTHROPIC_API_KEY=DEFAULT_KEY,
                   FORGECREW_ANTHROPIC_BASE_URL=model.base_url)
        with open(scratch / "up.log", "wb") as log:
            up = subprocess.Popen([sys.executable, "-m", "coordinator.cli", "up", "--port", str(port),
                                   "--flower-port", str(flower_port), "--grace", "10"],
                                  env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True, cwd=ROOT)
            try:
                wait_for("the coordinator", lambda: httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=2)
                         .status_code == 200, 120)
                wait_for("the workers", lambda: (scratch / "up.log").read_bytes().count(b" ready.") >= 5, 180)
                ids = []
                for specialty, title, body in REQUESTS:
                    done = cli("submit", "--repo", str(repo), "--title", title, "--body", body,
                               "--specialty", specialty, "--json", env=env)
                    ids.append(json.loads(done.stdout)["id"])
                    print(f"submitted task {ids[-1]} ({specialty}): {title}")

                def all_open() -> bool:
                    listed = json.loads(cli("tasks", "list", "--json", env=env).stdout)
                    items = listed["items"] if isinstance(listed, dict) else listed
                    states = {item["id"]: item["state"] for item in items}
                    failed = [task for task in ids if states.get(task) == "failed"]
                    if failed:
                        raise SystemExit(f"screenshots: task(s) {failed} failed; see {scratch / 'up.log'}")
                    return all(states.get(task) == "pr_open" for task in ids)

                wait_for("every task to reach pr_open", all_open, 300)
                print("every task is pr_open")
                password = (home / "secrets" / "flower_password").read_text().strip()
                flower = f"http://127.0.0.1:{flower_port}"

                def flower_done() -> bool:
                    tasks = httpx.get(f"{flower}/api/tasks", auth=("forgecrew", password), timeout=10).json()
                    return sum(1 for task in tasks.values() if task.get("state") == "SUCCESS") >= len(ids)

                wait_for("Flower to show every task SUCCESS", flower_done, 60)
                names = [task["name"] for task in httpx.get(f"{flower}/api/tasks", auth=("forgecrew", password),
                                                             timeout=10).json().values()]
                labelled = "forgecrew.run_task" not in names  # see the note at the top
                if labelled or final:
                    args.output.parent.mkdir(parents=True, exist_ok=True)
                    # basic auth in the URL: Chromium answers Flower's challenge with it on a top-level page
                    screenshot(f"http://forgecrew:{password}@127.0.0.1:{flower_port}/tasks", args.output,
                               args.chromium)
                    print(f"wrote {args.output} ({args.output.stat().st_size} bytes)")
            finally:
                os.killpg(up.pid, signal.SIGTERM)
                try:
                    up.wait(timeout=60)
                except subprocess.TimeoutExpired:
                    os.killpg(up.pid, signal.SIGKILL)
                    up.wait()
    if args.keep:
        print(f"kept {scratch}")
    else:  # on a failure the folder stays, with up.log, for a look
        shutil.rmtree(scratch, ignore_errors=True)
    return labelled


if __name__ == "__main__":
    raise SystemExit(main())
