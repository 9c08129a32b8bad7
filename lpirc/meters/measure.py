"""What a :class:`~lpirc.meters.sampler.Sampler`'s readings come to: a run's energy (full
measurement, or a fallback that says why), and an idle baseline.

Labels (``method``), by what the meter did over the run's window:

- full: ``WT310 C2XXXXXXX, 0.1 s, 523 samples, trapezoid, +-0.0021 Wh (meter spec); meter
  integrator 0.5312 Wh (+0.1%)``, source ``measured``;
- a gap (no valid reading for GAP_INTERVALS update intervals, at least GAP_MIN_S): the
  trapezoid bridges it linearly and the figure is source ``estimated``, saying the gap;
- partial coverage (the meter lost before the end, or found only after the start), over-range
  readings, errors in the meter's error queue, or no meter: the run's other energy figure (RAPL
  or the CPU-time estimate, :func:`lpirc.energy.finish_energy`) with the reason appended, and
  what the meter did measure kept under ``meter``.
"""

from __future__ import annotations

import datetime as dt
import math
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from lpirc.energy import format_wh, power_log_wh, read_power_log
from lpirc.errors import InputError, MeterError
from lpirc.meters.sampler import GAP_INTERVALS, GAP_MIN_S, SYNC_HOW, MeterConfig, Sampler
from lpirc.results import read_json




def _sync_json(s: Sampler) -> dict[str, Any]:
    st = s.st
    out: dict[str, Any] = {"mode": s.cfg.sync, "how": SYNC_HOW.get(s.cfg.sync, s.cfg.sync)}
    if s.cfg.sync == "update":
        out.update({"updates_read": st.fresh, "updates_missed": st.missed,
                    "duplicates_skipped": st.duplicates})
        unsync = s.unsynchronised()
        if unsync:  # the answers claimed more updates than the meter's interval allows
            out["synchronised"] = False
            out["note"] = unsync
    return out


def _meter_json(s: Sampler) -> dict[str, Any]:
    st = s.st
    return {
        "spec": s.cfg.spec, "visa_library": s.cfg.visa_library,
        "info": s.info.to_json() if s.info else None,
        "rate_s": s.rate_s, "sync": _sync_json(s), "ranges_requested": s.cfg.ranges,
        "ranges": st.ranges,
        "accuracy": s.accuracy.to_json() if s.accuracy else None,
        "readings": len(st.rows), "not_measurements": len(st.invalid),
        "events": st.events[-20:], "meter_errors": st.meter_errors,
        "log": s.path.name if s.path else None,
    }


def _samples(s: Sampler) -> np.ndarray:
    """The valid readings as (n, 2) [t, watts]: read back from the log file when there is one,
    as ``--power-log`` reads it."""
    if s.path is not None:
        try:
            return read_power_log(s.path)
        except InputError:
            pass  # an empty log: no valid rows
    rows = [(t, w) for t, w, _ in s.st.rows]
    return np.asarray(rows, dtype=np.float64).reshape(-1, 2)


def _problem(s: Sampler, t: np.ndarray, start: float, end: float) -> tuple[str | None, str]:
    """(why the figure is not a full measurement, status) over [start, end]; (None, "full")."""
    st, label = s.st, (s.info.label() if s.info else s.cfg.spec)
    window = [(ti, why) for ti, why in st.invalid if start - s.rate_s <= ti <= end + s.rate_s]
    over = [w for _, w in window if w.startswith("over range")]
    if over:
        inside = int(np.count_nonzero((t >= start) & (t <= end)))
        return (f"meter {label} over range in {len(over)} of {len(over) + inside} readings "
                f"({over[0]}): measurement invalid"), "over-range"
    if st.meter_errors:
        return (f"meter {label} reported errors ({'; '.join(st.meter_errors)[:160]}): "
                "measurement invalid"), "errors"
    if not len(t):
        why = st.absent or "no valid reading"
        return f"meter {s.cfg.spec} gave no measurement ({why})", "absent"
    if t[0] > start or t[-1] < end:
        a, b = max(t[0], start), min(t[-1], end)
        dur = max(end - start, 1e-9)
        pct = 100.0 * max(0.0, b - a) / dur
        return (f"meter {label} covered {max(0.0, a - start):.1f} s to {max(0.0, b - start):.1f} s "
                f"of the {dur:.1f} s run ({pct:.0f}%): partial, not a measurement of the run"), "partial"
    return None, "full"


def _gaps(t: np.ndarray, start: float, end: float, rate_s: float) -> list[tuple[float, float]]:
    """(start, length) of each gap between the readings that bracket [start, end], the length
    counted inside the run's window (a gap that began before the run counts from its start)."""
    lo = max(0, int(np.searchsorted(t, start, side="right")) - 1)
    hi = min(len(t), int(np.searchsorted(t, end, side="left")) + 1)
    tt = t[lo:hi]
    limit = max(GAP_INTERVALS * rate_s, GAP_MIN_S)
    d = np.diff(tt)
    return [(max(float(tt[i]), start), min(float(tt[i + 1]), end) - max(float(tt[i]), start))
            for i in np.nonzero(d > limit)[0]]


def _cross_check(s: Sampler, start: float, end: float, wh: float) -> dict[str, Any]:
    """The meter's integrator over the window: WH interpolated at start and end."""
    pts = np.asarray(s.st.wh, dtype=np.float64).reshape(-1, 2)
    if s.st.reconnected:
        return {"wh": None, "note": "meter reconnected during the run: integrator not comparable"}
    if not len(pts) or pts[0, 0] > start or pts[-1, 0] < end:
        return {"wh": None, "note": "integrator readings do not cover the run"}
    # a reading's time is the middle of the interval its power is the mean of; its WH counts
    # up to that interval's end, half an interval later
    t = pts[:, 0] + s.rate_s / 2
    if t[0] > start or t[-1] < end:
        return {"wh": None, "note": "integrator readings do not cover the run"}
    mwh = float(np.interp(end, t, pts[:, 1]) - np.interp(start, t, pts[:, 1]))
    diff = 100.0 * (mwh - wh) / wh if wh > 0 else None
    return {"wh": round(mwh, 9), "difference_pct": None if diff is None else round(diff, 3),
            "method": "the meter's WH item interpolated at the run's start and end"}


def run_energy(s: Sampler, start: float, end: float,
               fallback: dict[str, Any] | None) -> dict[str, Any]:
    """The energy object of a run over [start, end] (unix s) from sampler ``s`` (stopped).
    ``fallback``: the run's other energy figure (``EnergyReading.to_json()``), used with the
    reason appended when the meter's is not a full measurement; None (an idle baseline): the
    figure is then None."""
    meter = _meter_json(s)
    meter["window"] = [round(start, 6), round(end, 6)]  # unix s: what the log is integrated over
    samples = _samples(s)
    t = samples[:, 0]
    why, status = _problem(s, t, start, end)
    meter["status"] = status
    if why is None:
        wh, n = power_log_wh(samples, start, end, "meter log")
        bounds = np.asarray([(ti, b) for ti, _, b in s.st.rows], dtype=np.float64).reshape(-1, 2)
        unc = None
        if len(bounds) and np.isfinite(bounds[:, 1]).all() and bounds[0, 0] <= start:
            unc = power_log_wh(bounds, start, end, "meter log")[0]
        gaps = _gaps(t, start, end, s.rate_s)
        label = s.info.label() if s.info else s.cfg.spec
        meter.update({"samples": n, "measured_wh": round(wh, 9),
                      "uncertainty_wh": None if unc is None else round(unc, 9),
                      "gaps": [{"at": round(a, 3), "s": round(d, 3)} for a, d in gaps],
                      "integrator": _cross_check(s, start, end, wh)})
        method = f"{label}, {s.rate_s:g} s, {n} samples, trapezoid"
        if unc is not None and not gaps:  # the spec bounds readings, not a bridged gap
            method += f", +-{format_wh(unc)} Wh (meter spec)"
        if any(r.get("auto") for r in s.st.ranges):
            method += ", auto range"
        unsync = s.unsynchronised()
        if s.cfg.sync != "update":
            method += ", polled (not synchronised with the meter's updates)"
        elif unsync:
            method += f", {unsync.split(':')[0]} (the meter answered faster than it updates)"
        elif s.st.missed:
            method += f", {s.st.missed} of {s.st.fresh + s.st.missed} updates missed"
        mwh = meter["integrator"].get("wh")
        if mwh is not None and meter["integrator"]["difference_pct"] is not None:
            method += (f"; meter integrator {format_wh(mwh)} Wh "
                       f"({meter['integrator']['difference_pct']:+.1f}%)")
        if not gaps:
            return {"wh": round(wh, 9), "source": "measured", "method": method,
                    "uncertainty_wh": meter["uncertainty_wh"],
                    **_times(fallback), "idle_watts": None, "meter": meter}
        longest = max(d for _, d in gaps)
        status = meter["status"] = "gap"
        why = (f"{method}, with {len(gaps)} gap(s) in the readings (longest {longest:.1f} s of the run) "
               "bridged linearly: not a full measurement")
        return {"wh": round(wh, 9), "source": "estimated", "method": why,
                "uncertainty_wh": None, **_times(fallback), "idle_watts": None, "meter": meter}
    if fallback is None:
        return {"wh": None, "source": "unknown", "method": why, "uncertainty_wh": None,
                "meter": meter}
    out = dict(fallback)
    out["method"] = f"{fallback.get('method')}; {why}"
    out["uncertainty_wh"] = None
    out["meter"] = meter
    return out


def _times(fallback: dict[str, Any] | None) -> dict[str, Any]:
    f = fallback or {}
    return {"cpu_s": f.get("cpu_s"), "duration_s": f.get("duration_s")}


# --- idle baseline ---------------------------------------------------------------------------


def measure_idle(cfg: MeterConfig, seconds: float) -> dict[str, Any]:
    """Mean power over ``seconds`` of idling, with its uncertainty: the idle baseline the
    LPCVC rule subtracts. MeterError when the meter did not measure the whole time."""
    s = Sampler(cfg).start()
    try:
        if not s.st.rows:
            raise MeterError(s.st.absent or f"meter {cfg.spec}: no reading")
        t0 = time.time()
        time.sleep(seconds)
        t1 = time.time()
        s.wait_past(t1)
    finally:
        s.stop()
    e = run_energy(s, t0, t1, None)
    if e["source"] != "measured":
        raise MeterError(f"idle baseline not measured: {e['method']}")
    m = e["meter"]
    watts = e["wh"] * 3600.0 / (t1 - t0)
    unc = None if e["uncertainty_wh"] is None else e["uncertainty_wh"] * 3600.0 / (t1 - t0)
    label = s.info.label() if s.info else cfg.spec
    return {
        "watts": round(watts, 6),
        "uncertainty_w": None if unc is None else round(unc, 6),
        "seconds": round(t1 - t0, 3),
        "samples": m["samples"],
        "start_utc": dt.datetime.fromtimestamp(t0, dt.timezone.utc).isoformat(),
        "method": f"measured: {label} idle for {t1 - t0:.1f} s, {m['samples']} samples at "
                  f"{s.rate_s:g} s, trapezoid mean",
        "meter": {k: m[k] for k in ("info", "rate_s", "sync", "ranges", "accuracy")},
    }


def check_out(path: Path, what: str) -> None:
    """Refuse, before the meter is read, an output file that cannot be written: InputError
    naming ``path`` and why (its folder missing, a folder given, no permission). ``what``
    names the file ("meter log", "idle baseline")."""
    path = Path(path)
    parent = path.parent
    if path.is_dir():
        raise InputError(f"{path}: cannot write the {what}: it is a folder (give a file name)")
    if not parent.exists():
        raise InputError(f"{path}: cannot write the {what}: the folder {parent} does not exist")
    if not parent.is_dir():
        raise InputError(f"{path}: cannot write the {what}: {parent} is not a folder")
    if not os.access(parent, os.W_OK | os.X_OK) or (path.exists()
                                                     and not os.access(path, os.W_OK)):
        raise InputError(f"{path}: cannot write the {what}: permission denied")


@dataclass
class MeterLog:
    """What ``lpirc meter log`` logged: the stopped sampler, the file, and the log's window
    (unix s, this host's clock)."""

    sampler: Sampler
    path: Path
    start: float
    end: float

    def outages(self) -> list[dict[str, Any]]:
        """The times the meter stopped answering, with the updates missed (Sampler.outages)."""
        return self.sampler.outages(self.end)

    def summary(self) -> str:
        """One line: what was logged, how it was synchronised, what went wrong. E.g.
        ``m.csv: 29 readings of WT310 C2SIM0001 at 0.1 s, one per data update (0 update(s)
        missed, 0 repeated and skipped)``."""
        s, st = self.sampler, self.sampler.st
        label = s.info.label() if s.info else s.cfg.spec
        lost = self.outages()
        missed = st.missed + sum(o["missed_updates"] for o in lost)
        unsync = s.unsynchronised()
        if s.cfg.sync != "update":
            sync = "polled, not synchronised"
        elif unsync:
            sync = unsync
        else:
            sync = (f"one per data update ({missed} update(s) missed, {st.duplicates} "
                    "repeated and skipped)")
        text = (f"{self.path}: {len(st.rows)} readings of {label} at {s.rate_s:g} s, {sync}"
                + (f", {len(st.invalid)} not measurements" if st.invalid else "")
                + (f", {len(st.events)} meter event(s) (# lines)" if st.events else ""))
        for o in lost:
            text += f"; {self._outage(o)}"
        return text

    def _outage(self, o: dict[str, Any]) -> str:
        since = o["last_reading"] if o["last_reading"] is not None else o["at"]
        when = dt.datetime.fromtimestamp(since, dt.timezone.utc).strftime("%H:%M:%S.%f")[:-3]
        back = ("did not answer again before the end" if o["back"] is None
                else f"answered again {o['back'] - self.start:.1f} s in")
        return (f"meter lost after its reading at {when} UTC ({since - self.start:.1f} s into "
                f"the log), {back}: about {o['missed_updates']} update(s) not read")

    def lost_error(self) -> MeterError | None:
        """The error ``lpirc meter log`` exits with (7) when the meter stopped answering
        during the log; None when it answered throughout."""
        lost = self.outages()
        if not lost:
            return None
        o, s = lost[0], self.sampler
        label = s.info.label() if s.info else s.cfg.spec
        return MeterError(f"meter {label} stopped answering (found gone {o['at'] - self.start:.1f} s "
                          f"into the log: {o['why']}); the {len(s.st.rows)} readings taken are "
                          f"in {self.path}")


def log_meter(cfg: MeterConfig, out: Path, seconds: float | None = None) -> MeterLog:
    """Log the meter into ``out`` (the ``--power-log`` format) for ``seconds``, or until
    Ctrl-C (KeyboardInterrupt ends it cleanly: the file is complete). Returns what was logged
    (the stopped sampler, the window); a meter that stopped answering on the way is in its
    ``outages()``, its readings kept. InputError, before the meter is opened, when ``out``
    cannot be written; MeterError when the meter cannot be opened."""
    check_out(out, "meter log")
    start = time.time()
    s = Sampler(cfg).start()
    if s.st.absent:
        s.stop()
        raise MeterError(s.st.absent)
    try:
        s.attach(Path(out))
        end = None if seconds is None else time.monotonic() + seconds
        while end is None or time.monotonic() < end:
            time.sleep(0.2 if end is None else max(0.0, min(0.2, end - time.monotonic())))
    except KeyboardInterrupt:
        pass
    finally:
        t_end = time.time()
        s.stop()
    return MeterLog(s, Path(out), start, t_end)


def read_idle(path: Path) -> dict[str, Any]:
    """An idle baseline written by ``lpirc meter idle --out``; InputError naming the file."""
    data = read_json(path, "idle baseline")
    w = data.get("watts") if isinstance(data, dict) else None
    if not isinstance(w, (int, float)) or isinstance(w, bool) or not math.isfinite(w) or w < 0:
        raise InputError(f"{path}: idle baseline needs 'watts', a finite number >= 0 "
                         "(write it with `lpirc meter idle --out`)")
    return data
