"""What the run ran on, for the manifest. Cheap: a file read and a few system calls."""

from __future__ import annotations

import os
import platform
from pathlib import Path
from typing import Any

import psutil

from lpirc.energy import rapl_status

# Keys of /proc/cpuinfo that name the CPU, best first (x86: "model name"; ARM/RISC-V vary).
_CPUINFO_KEYS = ("model name", "hardware", "model", "cpu model", "uarch", "processor")


def cpu_model(cpuinfo: Path = Path("/proc/cpuinfo")) -> str:
    """CPU model name from /proc/cpuinfo, else platform.processor(), else platform.machine()."""
    found: dict[str, str] = {}
    try:
        with open(cpuinfo, encoding="utf-8", errors="replace") as f:
            for line in f:
                key, sep, value = line.partition(":")
                key, value = key.strip().lower(), value.strip()
                if sep and value and key in _CPUINFO_KEYS and key not in found:
                    found[key] = value
    except OSError:
        pass
    for key in _CPUINFO_KEYS:
        v = found.get(key)
        if v and not v.isdigit():  # x86 "processor: 0" / "model: 85" are numbers, not names
            return v
    return platform.processor() or platform.machine() or "unknown"


def has_rapl(root: Path = Path("/sys/class/powercap")) -> bool:
    """True when RAPL package energy counters exist under ``root`` and can be read."""
    counters, _ = rapl_status(Path(root))
    return bool(counters)


def machine_info() -> dict[str, Any]:
    """``{"cpu", "cores_logical", "cores_physical", "memory_bytes", "os", "python", "arch"}``.
    A value that cannot be found is None."""
    logical = physical = memory = None
    try:
        logical = psutil.cpu_count(logical=True)
        physical = psutil.cpu_count(logical=False)
    except Exception:
        pass
    try:
        memory = int(psutil.virtual_memory().total)
    except Exception:
        pass
    if logical is None:
        logical = os.cpu_count()
    if memory is None:
        try:
            memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
        except (AttributeError, ValueError, OSError):
            memory = None
    return {
        "cpu": cpu_model(),
        "cores_logical": logical,
        "cores_physical": physical,
        "memory_bytes": memory,
        "os": platform.platform(),
        "python": platform.python_version(),
        "arch": platform.machine(),
    }
