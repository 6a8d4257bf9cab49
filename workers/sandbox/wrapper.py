"""The few lines of bash that run first inside a sandbox: set the limits, run the command, report.

They set the resource limits from inside, so the process limit counts only this command's
processes (the kernel counts per user namespace), run the command with the status pipe closed
to it, and write its exit code and how many processes it left behind to that pipe, where the
command cannot forge it.
"""

from __future__ import annotations

import resource

from workers.sandbox.base import Limits

# (bash ulimit flag, resource, unit in bytes or 1 for counts)
_LIMITS = (
    ("-d", resource.RLIMIT_DATA, "memory_mb", 1024 * 1024, 1024),
    ("-t", resource.RLIMIT_CPU, "cpu_seconds", 1, 1),
    ("-f", resource.RLIMIT_FSIZE, "file_size_mb", 1024 * 1024, 1024),
    ("-n", resource.RLIMIT_NOFILE, "open_files", 1, 1),
    ("-u", resource.RLIMIT_NPROC, "processes", 1, 1),
)


def ulimit_line(limits: Limits, *, processes: bool = True) -> str:
    """`ulimit -HS ...` for `limits`, never above what this process may grant (a hard limit can only fall).

    Values are bash's units: -d and -f in KiB, the rest as counts and seconds.
    """
    parts = ["-c 0"]
    cpu = ""
    for flag, kind, field, scale, unit in _LIMITS:
        if flag == "-u" and not processes:
            continue
        wanted = int(getattr(limits, field)) * scale
        _, hard = resource.getrlimit(kind)
        if hard != resource.RLIM_INFINITY:
            wanted = min(wanted, hard)
        value = max(wanted // unit, 1)
        if flag == "-t":  # SIGXCPU at the soft limit says why; SIGKILL follows at the hard one
            cpu = f" && ulimit -S -t {value}"
            value = value + 5 if hard == resource.RLIM_INFINITY else min(value + 5, hard)
        parts.append(f"{flag} {value}")
    return "ulimit -HS " + " ".join(parts) + cpu


def script(limits: Limits, status_fd: int | None, *, processes: bool = True) -> str:
    """The wrapper's bash text; the command comes as $1 so no quoting of it is needed.

    Inside a PID namespace the wrapper is process 2 (after bwrap's init), so every other
    process in /proc is one the command left running. Without a status pipe (the unsandboxed
    runner counts leftovers itself) it only sets the limits and runs the command.
    """
    if status_fd is None:
        return f"{ulimit_line(limits, processes=processes)} || exit 125\nexec bash -c \"$1\"\n"
    return (f"{ulimit_line(limits, processes=processes)} || exit 125\n"
            f'bash -c "$1" {status_fd}>&-\n'
            "rc=$?\n"
            "set -- /proc/[0-9]*\n"
            f'printf "%s %s\\n" "$rc" "$(( $# - 2 ))" >&{status_fd}\n'
            'exit "$rc"\n')
