"""Commands in their own PID namespace: the worker's environment is out of reach, limits still hold."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

from workers.tools import CommandPolicy, Toolbox
from workers.tools.sandbox import command_prefix, namespace_prefix
from workers.tools.shell import run_command, safe_env

SECRET = "sk-ant-worker-secret-in-environ-0123456789"
needs_namespaces = pytest.mark.skipif(namespace_prefix() is None,
                                      reason="this host cannot make PID namespaces (unshare missing or refused)")

# A stand-in worker: a process whose initial environment holds a secret, running one command.
WORKER = """
import json, sys
from pathlib import Path
from workers.tools.sandbox import command_prefix
from workers.tools.shell import run_command, safe_env
root = Path(sys.argv[1])
result = run_command(sys.argv[3], cwd=root, env=safe_env(root / "home", root / "tmp"), timeout=20,
                     sandbox=command_prefix(sys.argv[2]))
print(json.dumps({"output": result.output}))
"""


def command_in_worker(tmp_path: Path, mode: str, command: str) -> str:
    env = {**os.environ, "FORGECREW_ANTHROPIC_API_KEY": SECRET}
    done = subprocess.run([sys.executable, "-c", WORKER, str(tmp_path), mode, command], env=env,
                          capture_output=True, text=True, timeout=60, cwd=Path(__file__).resolve().parents[1])
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)["output"]


READ_EVERY_ENVIRON = "cat /proc/$PPID/environ /proc/*/environ 2>/dev/null | tr '\\0' '\\n'; true"


@needs_namespaces
def test_a_command_cannot_read_the_workers_environment_through_proc(tmp_path):
    output = command_in_worker(tmp_path, "auto", READ_EVERY_ENVIRON)
    assert SECRET not in output
    assert "CI=true" in output  # it did read environments: its own


def test_without_the_sandbox_the_same_command_finds_the_secret(tmp_path):
    """The control: what the namespace prevents is real on this host."""
    assert SECRET in command_in_worker(tmp_path, "none", READ_EVERY_ENVIRON)


def _running(marker: str) -> list[str]:
    listing = subprocess.run(["ps", "-eo", "stat=,args="], capture_output=True, text=True).stdout
    return [line for line in listing.splitlines() if marker in line and not line.lstrip().startswith("Z")]


@needs_namespaces
def test_time_limit_kills_everything_in_the_namespace(tmp_path):
    root = tmp_path / "repo"
    root.mkdir()
    box = Toolbox(root, policy=CommandPolicy(), command_timeout=10, sandbox=command_prefix("namespaces"))
    marker = f"100.{uuid.uuid4().int % 10**6}"
    result = box.call("run_command", {"command": f"echo started; setsid sleep {marker} & sleep {marker}",
                                      "timeout": 1})
    assert result.is_error and "killed after the 1s time limit" in result.content and "started" in result.content
    assert _running(f"sleep {marker}") == []  # even the one that left the process group


@needs_namespaces
def test_tests_run_in_the_sandbox_too(tmp_path):
    from workers.testrun import run_tests

    (tmp_path / "repo").mkdir()
    result = run_tests("echo pid $$", tmp_path / "repo", tmp_path, timeout=20, sandbox=command_prefix("auto"))
    assert result.passed and "pid 1" in result.output  # the first process of its own namespace


def test_an_interrupted_wait_still_stops_the_group(tmp_path):
    """A Celery soft time limit arrives as an exception in the middle of the wait."""
    marker = f"200.{uuid.uuid4().int % 10**6}"

    class Interrupted(Exception):
        pass

    def interrupt(*_: object) -> None:
        raise Interrupted

    previous = signal.signal(signal.SIGALRM, interrupt)
    signal.setitimer(signal.ITIMER_REAL, 0.5)
    try:
        with pytest.raises(Interrupted):
            run_command(f"sleep {marker} & sleep {marker}", cwd=tmp_path,
                        env=safe_env(tmp_path / "h", tmp_path / "t"), timeout=30)
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
    deadline = time.monotonic() + 5
    while _running(f"sleep {marker}") and time.monotonic() < deadline:
        time.sleep(0.1)
    assert _running(f"sleep {marker}") == []


def test_no_sandbox_means_no_prefix():
    assert command_prefix("none") == ()


def test_the_worker_can_make_itself_undumpable():
    # prctl applies to the whole process: run it in a child so the test runner stays dumpable
    done = subprocess.run([sys.executable, "-c", "from workers.tools.sandbox import make_undumpable as m; "
                           "import ctypes; print(m(), ctypes.CDLL(None).prctl(3, 0, 0, 0, 0))"],
                          capture_output=True, text=True, cwd=Path(__file__).resolve().parents[1])
    assert done.stdout.split() == ["True", "0"]  # PR_GET_DUMPABLE now answers 0


@pytest.mark.parametrize("mode,command", [
    pytest.param("auto", "sleep {m} & sleep {m}", marks=needs_namespaces),  # everything in the namespace
    ("none", "exec sleep {m}"),  # without one, at least the command itself
])
def test_commands_die_with_a_killed_worker(tmp_path, mode, command):
    marker = f"300.{uuid.uuid4().int % 10**6}"
    env = {**os.environ, "FORGECREW_ANTHROPIC_API_KEY": SECRET}
    worker = subprocess.Popen([sys.executable, "-c", WORKER, str(tmp_path), mode, command.format(m=marker)],
                              env=env, cwd=Path(__file__).resolve().parents[1],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 20
    while not _running(f"sleep {marker}") and time.monotonic() < deadline:
        time.sleep(0.05)
    assert _running(f"sleep {marker}"), "the command never started"
    worker.kill()  # SIGKILL: no cleanup code of the worker runs
    worker.wait()
    deadline = time.monotonic() + 5
    while _running(f"sleep {marker}") and time.monotonic() < deadline:
        time.sleep(0.05)
    assert _running(f"sleep {marker}") == []


def test_a_required_sandbox_the_host_cannot_make_is_an_error_and_auto_falls_back():
    probe = ("from workers.tools.sandbox import command_prefix\n"
             "print(command_prefix('auto'))\n"
             "command_prefix('namespaces')\n")
    done = subprocess.run([sys.executable, "-c", probe], env={"PATH": ""}, capture_output=True, text=True,
                          cwd=Path(__file__).resolve().parents[1])  # no unshare on an empty PATH
    assert done.stdout.strip() == "()"
    assert "without a PID namespace" in done.stderr  # auto warns
    assert "SandboxUnavailable: FORGECREW_COMMAND_SANDBOX=namespaces" in done.stderr
