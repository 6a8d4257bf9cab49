"""The limits of one command: the settings' defaults, the specialty's overrides, the phase's grants."""

from __future__ import annotations

from common.settings import Settings
from common.specialties import SpecialtyProfile
from workers.sandbox.base import Limits


def limits_for(settings: Settings, profile: SpecialtyProfile, *, wall_seconds: float,
               network: bool = False) -> Limits:
    """`network` is what the phase asks for; SANDBOX_NETWORK=false refuses every ask."""
    values = {
        "memory_mb": settings.sandbox_memory_mb, "processes": settings.sandbox_processes,
        "cpu_seconds": settings.sandbox_cpu_seconds, "file_size_mb": settings.sandbox_file_size_mb,
        "open_files": settings.sandbox_open_files, "output_mb": settings.sandbox_output_mb,
    }
    values.update(dict(profile.limits))
    return Limits(wall_seconds=wall_seconds, network=network and settings.sandbox_network, **values)
