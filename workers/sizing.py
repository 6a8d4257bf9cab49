"""How many agent sessions one worker process holds, sized to the host when the setting is "auto"."""

from __future__ import annotations

import os

from common.settings import Settings

# Measured by bench/concurrency_bench.py on a 2-core host (docs/design-notes.md, "Many sessions per host"):
# a session waiting on the model costs about 1 % of a core and under 10 MB in a threads worker.
SESSIONS_PER_CORE = 16
# Memory kept per session when sizing by memory: measured use is far less; the rest is room for
# the agent's sandboxed commands and tests, which run as child processes of the session.
MB_PER_SESSION = 150
MAX_AUTO_SESSIONS = 128


def cores() -> int:
    """Cores this process may run on (the affinity mask, so a cgroup-pinned container counts right)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def available_mb() -> int | None:
    """MemAvailable from /proc/meminfo, or None where there is none."""
    try:
        with open("/proc/meminfo") as meminfo:
            for line in meminfo:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) // 1024
    except (OSError, ValueError, IndexError):
        return None
    return None


def auto_concurrency(pool: str, *, host_cores: int | None = None, memory_mb: int | None = None) -> int:
    """Sessions for `pool` on this host: a process per core with prefork, 16 a core with threads, capped by memory."""
    host_cores = host_cores or cores()
    if pool == "solo":
        return 1
    wanted = host_cores if pool == "prefork" else min(host_cores * SESSIONS_PER_CORE, MAX_AUTO_SESSIONS)
    memory_mb = available_mb() if memory_mb is None else memory_mb
    if memory_mb is not None:
        per_session = MB_PER_SESSION * (4 if pool == "prefork" else 1)  # a prefork child is a whole interpreter
        wanted = min(wanted, memory_mb // per_session)
    return max(2 if pool != "solo" else 1, wanted)


def worker_concurrency(settings: Settings, pool: str, requested: int | None = None) -> int:
    """The --concurrency a worker starts with: the flag, else the setting, with "auto" sized to the host."""
    if pool == "solo":
        return 1
    value = requested or settings.worker_concurrency
    return auto_concurrency(pool) if value == "auto" else int(value)
