"""Energy of a run: measured where the machine can, estimated otherwise, and always labelled.

Sources, in the order they are tried:

1. **Power log** (``EnergyConfig.power_log``, ``--power-log FILE``): an external meter's CSV
   ``timestamp,watts`` (header optional; timestamp = unix seconds or ISO-8601; extra columns are
   ignored). The file is read when the run finishes (a meter may write it while the run goes),
   and watts are integrated over the run's wall-clock window with the trapezoid rule,
   interpolating linearly at the window edges. The log must have a sample at or before the run
   start and one at or after the run end. A log that is missing, empty, malformed or does not
   cover the run is *rejected*: :func:`read_power_log` / :func:`power_log_wh` raise
   :class:`~lpirc.errors.InputError`, and :func:`finish_energy` catches it and falls back to the
   estimate, saying why in ``method`` -- a run never loses its results over its power log.
   Source ``"measured"``.
2. **RAPL** powercap counters (Linux, Intel and AMD): the top-level package domains
   ``<root>/intel-rapl:N/energy_uj`` (or ``amd-rapl:N``), not their subdomains
   (``intel-rapl:0:0`` core, ``intel-rapl:0:1`` dram, ...), which the package already contains,
   and not a ``psys`` platform domain, which contains the packages. Counter wraparound is handled
   with ``max_energy_range_uj`` (one wrap per domain per run can be told apart). Counters that
   cannot be read (since Linux 5.10 ``energy_uj`` is root-only) are skipped. RAPL covers the CPU
   packages only, not the whole machine. Source ``"measured"``.
3. **Estimate** from CPU time: ``Wh = (cpu_s * watts_per_core + idle_watts * duration_s) / 3600``
   where ``cpu_s`` is user + system time of this process and its reaped children over the run
   (``getrusage`` / ``os.times()`` deltas; call :func:`finish_energy` after every worker was
   joined) and ``duration_s`` is the run's monotonic-clock duration. Source ``"estimated"``.

Every figure says which: ``EnergyReading.describe()`` gives e.g.
``0.41 Wh (estimated: CPU time x 4.0 W/core + 10 W idle)``.
"""

from __future__ import annotations

import math
import os
import re
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

from lpirc.errors import InputError

#: Top-level RAPL domains: ``intel-rapl:0``, ``amd-rapl:1`` (not ``intel-rapl:0:0``).
_RAPL_TOP = re.compile(r"^[a-z]+-rapl:(\d+)$")

#: How long finish_energy waits, at most, for a meter still writing its log to cover the run end.
POWER_LOG_MAX_WAIT_S = 5.0


# --- configuration and results ---------------------------------------------------------------


@dataclass(frozen=True)
class EnergyConfig:
    power_log: Path | None = None
    watts_per_core: float = 4.0
    idle_watts: float = 10.0
    powercap_root: Path = Path("/sys/class/powercap")

    @classmethod
    def from_settings(cls, settings: Any) -> "EnergyConfig":
        """Build from a RunSettings (or anything with the same attribute names)."""
        pl = getattr(settings, "power_log", None)
        return cls(
            power_log=Path(pl) if pl is not None else None,
            watts_per_core=float(getattr(settings, "watts_per_core", 4.0)),
            idle_watts=float(getattr(settings, "idle_watts", 10.0)),
            powercap_root=Path(getattr(settings, "powercap_root", "/sys/class/powercap")),
        )


@dataclass(frozen=True)
class EnergyReading:
    wh: float | None
    source: str  # "measured" | "estimated" | "unknown"
    method: str  # human text, e.g. "CPU time x 4.0 W/core + 10 W idle"
    cpu_s: float | None
    duration_s: float
    idle_watts: float | None  # the idle watts an estimate used; None for a measurement

    def describe(self) -> str:
        """``0.41 Wh (estimated: CPU time x 4.0 W/core + 10 W idle)``."""
        if self.wh is None:
            return f"unknown ({self.method})" if self.method else "unknown"
        return f"{format_wh(self.wh)} Wh ({self.source}: {self.method})"

    def to_json(self) -> dict[str, Any]:
        return {
            "wh": None if self.wh is None else round(self.wh, 6),
            "source": self.source,
            "method": self.method,
            "cpu_s": None if self.cpu_s is None else round(self.cpu_s, 3),
            "duration_s": round(self.duration_s, 3),
            "idle_watts": self.idle_watts,
        }


@dataclass(frozen=True)
class EnergyProbe:
    """Snapshot taken at run start by :func:`start_energy`."""

    wall_start: float  # time.time()
    mono_start: float  # time.monotonic()
    times_start: tuple[float, float, float, float]  # user, system, children_user, children_system
    rapl_start: dict[str, tuple[int, int | None]] | None = None  # domain -> (energy_uj, max_uj)
    rapl_root: Path | None = None
    rapl_note: str | None = None  # why RAPL is not used, when it exists but cannot be read


# --- formatting ------------------------------------------------------------------------------


def format_wh(wh: float) -> str:
    """About two significant digits for small values, two decimals from 0.1 Wh up."""
    if wh == 0 or not math.isfinite(wh):
        return f"{wh:.2f}"
    decimals = min(8, max(2, 1 - math.floor(math.log10(abs(wh)))))
    return f"{wh:.{decimals}f}"


def _num(x: float, min_decimals: int = 0) -> str:
    s = f"{x:g}" if abs(x) < 1e6 else f"{x:.0f}"
    if min_decimals and "." not in s and "e" not in s:
        s += "." + "0" * min_decimals
    return s


def estimate_method(cfg: EnergyConfig) -> str:
    """``CPU time x 4.0 W/core + 10 W idle``."""
    return f"CPU time x {_num(cfg.watts_per_core, 1)} W/core + {_num(cfg.idle_watts)} W idle"


def estimate_wh(cpu_s: float, duration_s: float, watts_per_core: float, idle_watts: float) -> float:
    """``(cpu_s * watts_per_core + idle_watts * duration_s) / 3600``."""
    return (cpu_s * watts_per_core + idle_watts * duration_s) / 3600.0


# --- RAPL ------------------------------------------------------------------------------------


def rapl_domains(root: Path) -> list[Path]:
    """Top-level RAPL package domains under ``root`` that have an ``energy_uj`` file, sorted by
    index. Subdomains and ``psys`` platform domains are left out (they would double count)."""
    root = Path(root)
    try:
        entries = list(root.iterdir())
    except OSError:
        return []
    found = []
    for d in entries:
        m = _RAPL_TOP.match(d.name)
        if not m or not (d / "energy_uj").exists():
            continue
        try:
            name = (d / "name").read_text().strip()
        except OSError:
            name = ""
        if name.startswith("psys"):
            continue
        found.append((int(m.group(1)), d.name, d))
    return [d for _, _, d in sorted(found)]


def _read_int(path: Path) -> int:
    return int(path.read_text().strip())


def read_rapl(root: Path) -> dict[str, tuple[int, int | None]]:
    """Counters of every top-level package domain: ``{name: (energy_uj, max_energy_range_uj)}``.
    Raises OSError (or ValueError) when one cannot be read; returns {} when there is no RAPL."""
    out: dict[str, tuple[int, int | None]] = {}
    for d in rapl_domains(root):
        uj = _read_int(d / "energy_uj")
        try:
            mx: int | None = _read_int(d / "max_energy_range_uj")
        except (OSError, ValueError):
            mx = None
        out[d.name] = (uj, mx)
    return out


def _reason(e: BaseException) -> str:
    if isinstance(e, PermissionError):
        return "permission denied"
    if isinstance(e, OSError) and e.strerror:
        return e.strerror.lower()
    return str(e) or type(e).__name__


def rapl_status(root: Path) -> tuple[dict[str, tuple[int, int | None]] | None, str | None]:
    """(counters, None) when RAPL is readable; (None, note) when present but unreadable;
    (None, None) when absent."""
    if not rapl_domains(root):
        return None, None
    try:
        counters = read_rapl(root)
    except (OSError, ValueError) as e:
        return None, f"RAPL counters not readable ({_reason(e)})"
    return (counters or None), None


def rapl_delta_uj(start: tuple[int, int | None], end: tuple[int, int | None]) -> int:
    """Energy between two readings of one counter, allowing for one wraparound."""
    (a, mx), (b, _) = start, end
    if b >= a:
        return b - a
    if not mx:
        raise ValueError("counter went backwards and max_energy_range_uj is unknown")
    return b + mx - a


def _rapl_method(names: list[str]) -> str:
    return f"RAPL package counters ({', '.join(names)})"


# --- power log -------------------------------------------------------------------------------


def _parse_time(s: str) -> float:
    """Unix seconds (float) or ISO-8601 (naive = local time) -> unix seconds. ValueError if neither."""
    s = s.strip()
    try:
        t = float(s)
    except ValueError:
        iso = s[:-1] + "+00:00" if s.endswith(("Z", "z")) else s
        return datetime.fromisoformat(iso).timestamp()
    if not math.isfinite(t):
        raise ValueError(s)
    return t


def read_power_log(path: Path) -> np.ndarray:
    """Read a meter log: CSV rows ``timestamp,watts`` (header optional, blank lines and ``#``
    comments skipped, extra columns ignored). Returns float64 array (n, 2) of unix seconds and
    watts. A last line without a newline that does not parse is taken as still being written and
    dropped. Raises InputError naming the file and line when the log is missing, empty or
    malformed, or when its timestamps go backwards."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except FileNotFoundError:
        raise InputError(f"{path}: power log not found") from None
    except OSError as e:
        raise InputError(f"{path}: power log not readable ({_reason(e)})") from None
    lines = text.splitlines()
    partial_last = bool(text) and not text.endswith(("\n", "\r"))
    rows: list[tuple[float, float]] = []
    seen_data_line = False
    for i, raw in enumerate(lines, start=1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        is_last = i == len(lines)
        fields = [f.strip() for f in line.split(",")]
        try:
            t = _parse_time(fields[0])
        except ValueError:
            if not seen_data_line:  # a header
                seen_data_line = True
                continue
            if is_last and partial_last:
                break
            raise InputError(
                f"{path}: line {i}: timestamp {fields[0][:40]!r} is neither unix seconds nor ISO-8601"
            ) from None
        seen_data_line = True
        if len(fields) < 2 or not fields[1]:
            if is_last and partial_last:
                break
            raise InputError(f"{path}: line {i}: expected 'timestamp,watts'")
        try:
            w = float(fields[1])
        except ValueError:
            if is_last and partial_last:
                break
            raise InputError(f"{path}: line {i}: watts {fields[1][:40]!r} is not a number") from None
        if not math.isfinite(w) or w < 0:
            raise InputError(f"{path}: line {i}: watts {fields[1][:40]!r} must be a finite number >= 0")
        if rows and t < rows[-1][0]:
            raise InputError(f"{path}: line {i}: timestamp goes backwards")
        rows.append((t, w))
    if not rows:
        raise InputError(f"{path}: power log has no samples (expected CSV rows 'timestamp,watts')")
    return np.asarray(rows, dtype=np.float64).reshape(-1, 2)


def _utc(t: float) -> str:
    return datetime.fromtimestamp(t, tz=timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


def power_log_wh(
    samples: np.ndarray, start: float, end: float, path: Path | str = "power log"
) -> tuple[float, int]:
    """Integrate watts over [start, end] (unix seconds) with the trapezoid rule, interpolating
    linearly at both edges. Returns (Wh, samples inside the window). Raises InputError when the
    log does not cover the window."""
    t, w = samples[:, 0], samples[:, 1]
    if end < start:
        raise ValueError("end before start")
    if t[0] > start or t[-1] < end:
        raise InputError(
            f"{path}: power log does not cover the run (log {_utc(t[0])} to {_utc(t[-1])}, "
            f"run {_utc(start)} to {_utc(end)})"
        )
    inside = (t > start) & (t < end)
    tt = np.concatenate(([start], t[inside], [end]))
    ww = np.concatenate(([np.interp(start, t, w)], w[inside], [np.interp(end, t, w)]))
    joules = float(np.sum((ww[1:] + ww[:-1]) * 0.5 * np.diff(tt)))
    return joules / 3600.0, int(inside.sum())


def _power_log_reading(path: Path, start: float, end: float, max_wait_s: float) -> tuple[float, str]:
    """Read (waiting briefly for a meter still writing) and integrate. Raises InputError."""
    deadline = time.monotonic() + max_wait_s
    while True:
        samples = read_power_log(path)
        last = samples[-1, 0]
        if last >= end or samples[0, 0] > start:
            break
        # A meter logging concurrently may not have written the sample after the run end yet:
        # wait for it when the gap is about one sample interval, not when the log stopped long ago.
        step = float(np.median(np.diff(samples[:, 0]))) if len(samples) > 1 else 1.0
        if end - last > 2 * step + 1.0 or time.monotonic() >= deadline:
            break
        time.sleep(min(0.1, max(0.01, step / 10)))
    wh, n = power_log_wh(samples, start, end, path)
    return wh, f"power log {Path(path).name}, {n} samples, trapezoid"


# --- the probe -------------------------------------------------------------------------------


def _times() -> tuple[float, float, float, float]:
    """User, system, children user, children system CPU seconds of this process. getrusage
    (microseconds) where there is one, else os.times (clock ticks; children are 0 on Windows).
    Children = terminated and waited-for descendants, so join workers before reading."""
    try:
        import resource

        s = resource.getrusage(resource.RUSAGE_SELF)
        c = resource.getrusage(resource.RUSAGE_CHILDREN)
        return (s.ru_utime, s.ru_stime, c.ru_utime, c.ru_stime)
    except (ImportError, OSError, AttributeError):
        t = os.times()
        return (t.user, t.system, t.children_user, t.children_system)


def start_energy(cfg: EnergyConfig) -> EnergyProbe:
    """Snapshot at run start: wall and monotonic clocks, CPU times, RAPL counters if readable
    (RAPL is not read when a power log is configured)."""
    rapl, note = (None, None)
    if cfg.power_log is None:
        rapl, note = rapl_status(cfg.powercap_root)
    times = _times()
    return EnergyProbe(
        wall_start=time.time(),
        mono_start=time.monotonic(),
        times_start=times,
        rapl_start=rapl,
        rapl_root=Path(cfg.powercap_root),
        rapl_note=note,
    )


def finish_energy(
    probe: EnergyProbe, cfg: EnergyConfig, max_wait_s: float = POWER_LOG_MAX_WAIT_S
) -> EnergyReading:
    """Energy of the run since :func:`start_energy`. Call after all worker processes were
    joined (their CPU time is then in the children's rusage / ``os.times().children_*``).
    A power log is read now, waiting up to ``max_wait_s`` for a meter still writing the sample
    that covers the run end. Never raises for a bad power
    log or unreadable counters: it falls back to the estimate and says why in ``method``."""
    wall_end = time.time()
    duration = max(0.0, time.monotonic() - probe.mono_start)
    cpu_s = max(0.0, sum(_times()) - sum(probe.times_start))

    notes: list[str] = []
    if cfg.power_log is not None:
        try:
            wh, method = _power_log_reading(Path(cfg.power_log), probe.wall_start, wall_end, max_wait_s)
            return EnergyReading(wh, "measured", method, cpu_s, duration, None)
        except InputError as e:
            msg = str(e)
            name = str(cfg.power_log)
            if msg.startswith(name + ": "):
                msg = msg[len(name) + 2 :]
            notes.append(f"power log {Path(cfg.power_log).name} rejected: {msg}")
    elif probe.rapl_start:
        try:
            end = read_rapl(probe.rapl_root or cfg.powercap_root)
            missing = sorted(set(probe.rapl_start) - set(end))
            if missing:
                raise ValueError(f"{', '.join(missing)} disappeared")
            uj = sum(rapl_delta_uj(probe.rapl_start[k], end[k]) for k in probe.rapl_start)
            names = sorted(probe.rapl_start, key=lambda n: int(n.rsplit(":", 1)[1]))
            return EnergyReading(uj / 3.6e9, "measured", _rapl_method(names), cpu_s, duration, None)
        except (OSError, ValueError) as e:
            notes.append(f"RAPL counters unreadable at run end ({_reason(e)})")
    elif probe.rapl_note:
        notes.append(probe.rapl_note)

    wh = estimate_wh(cpu_s, duration, cfg.watts_per_core, cfg.idle_watts)
    method = "; ".join([estimate_method(cfg), *notes])
    return EnergyReading(wh, "estimated", method, cpu_s, duration, float(cfg.idle_watts))


def energy_source_preview(cfg: EnergyConfig) -> str:
    """What will be used, for the manifest written at run start: ``measured: RAPL package
    counters (intel-rapl:0)``, ``measured: power log meter.csv`` or ``estimated: CPU time x ...``."""
    if cfg.power_log is not None:
        return f"measured: power log {Path(cfg.power_log).name}"
    rapl, note = rapl_status(cfg.powercap_root)
    if rapl:
        names = sorted(rapl, key=lambda n: int(n.rsplit(":", 1)[1]))
        return f"measured: {_rapl_method(names)}"
    return "estimated: " + "; ".join([estimate_method(cfg), *([note] if note else [])])
