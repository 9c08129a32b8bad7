"""Sample a power meter in its own thread while a run goes, log every reading as it comes, and
turn the log into the run's energy by the rule ``--power-log`` uses.

:class:`Sampler` opens and sets up the meter, resets and starts the meter's own integrator,
then reads it once per data update until told to stop: with ``sync="update"`` (the default)
each read waits for the meter's next update (the WT310's :COMMunicate:WAIT on its extended
event register, see :mod:`lpirc.meters.wt310`), so every update is read once, and the thread
sends its next read half an interval after an update; updates the thread was too late for are
counted as missed (from the readings' times) and readings the meter marked as not fresh are
skipped and counted. With ``sync="poll"`` it reads once per interval on this host's clock
(not synchronised: duplicates and misses cannot be counted). Every valid reading becomes a row of
a CSV in the format :func:`lpirc.energy.read_power_log` reads (``timestamp,watts`` first, then
volts, amps, the ranges and the meter's integrator), written and flushed as it arrives, so a
run can be rescored from its folder with ``--power-log``. Readings that are not measurements
(over range, no data, negative power) and what happened to the meter (stopped answering,
reconnected) are ``#`` comment lines of the same file.

A meter that is absent, errs, stops answering or disconnects never stops the run: the thread
records what happened and tries to reconnect once a second; :meth:`Sampler.energy` then says
what the figure is -- a full measurement, or a fallback with the reason -- never a partial
measurement presented as a full one.

Energy (:meth:`Sampler.energy`): the log is read back with ``read_power_log`` and integrated
over the run's window with ``power_log_wh`` (trapezoid, linear at the edges): the same code as
``--power-log``. Its uncertainty is the meter's accuracy bound of each reading,
``reading_frac x P + range_frac x (V range x A range)``, integrated by the same rule (the spec's
errors are treated as fully correlated, which bounds them; sampling error is on top, see
docs/meter.md). The meter's own integrator (WH), interpolated at the window's edges, is kept
as a cross-check.
"""

from __future__ import annotations

import math
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from lpirc.errors import InputError, MeterError
from lpirc.meters import DEFAULT_VISA_LIBRARY, AccuracySpec, MeterInfo, Reading, open_meter

POWER_LOG = "power_log.csv"
COLUMNS = "timestamp,watts,volts,amps,volt_range,amp_range,meter_wh,meter_time_s"
#: No valid reading for longer than this many update intervals (and at least GAP_MIN_S) is a
#: gap: the energy over it is not measured.
GAP_INTERVALS, GAP_MIN_S = 3.0, 1.0
RECONNECT_S = 1.0  # how often a lost meter is tried again
ERRORS_EVERY_S = 5.0  # how often the meter's error queue is read while sampling (and at the end)


#: How the readings were timed, by ``MeterConfig.sync`` (the manifest's ``meter.sync.how``).
SYNC_HOW = {
    "update": ("each reading waited for the meter's next data update (:STATus:FILTer1 FALL; "
               ":COMMunicate:WAIT 1;:STATus:EESR?;:NUMeric:NORMal:VALue?, IM WT310-17EN 5.5 and "
               "7.4): one reading per update, placed at the middle of the interval it is the "
               "mean of (the update's time minus half an interval)"),
    "poll": ("read once per update interval on this host's clock, not synchronised with the "
             "meter's updates: a reading may repeat an update or miss one (not counted), "
             "placed one interval before its answer"),
}


@dataclass(frozen=True)
class MeterConfig:
    """How ``lpirc run --meter`` / ``lpirc meter ...`` use a meter."""

    spec: str  # KIND:RESOURCE
    visa_library: str = DEFAULT_VISA_LIBRARY
    rate_s: float = 0.1
    ranges: str = "auto"  # auto | keep | V,A
    sync: str = "update"  # update: wait for each data update | poll: read once per interval
    timeout_s: float = 1.0  # per query: a meter answers its latest data at once


def _num(x: float | None) -> str:
    return "" if x is None else f"{x:.9g}"


@dataclass
class _State:
    """What the thread saw (read by the caller under the lock)."""

    rows: list[tuple[float, float, float]] = field(default_factory=list)  # t, watts, bound_w
    wh: list[tuple[float, float]] = field(default_factory=list)  # t, meter integrator Wh
    invalid: list[tuple[float, str]] = field(default_factory=list)
    events: list[str] = field(default_factory=list)
    meter_errors: list[str] = field(default_factory=list)
    ranges: list[dict] = field(default_factory=list)
    absent: str | None = None
    reconnected: bool = False
    fresh: int = 0  # readings taken (valid or not), each a new update when synchronised
    duplicates: int = 0  # readings skipped: the meter said no new update (sync only)
    missed: int = 0  # updates not read: the gaps between readings' times, in intervals - 1
    #: each time the meter stopped answering: {"last_reading": t of the last fresh reading
    #: (None: none yet), "at": when lpirc found it gone, "back": when it answered again (None:
    #: not before the end), "why": the error} (unix s, this host's clock)
    outages: list[dict] = field(default_factory=list)
    first_t: float | None = None  # the first and last fresh readings' times (unix s)
    last_t: float | None = None


class Sampler:
    """Sample ``cfg.spec`` from :meth:`start` to :meth:`stop` in a daemon thread."""

    def __init__(self, cfg: MeterConfig,
                 on_reading: Callable[[Reading], None] | None = None) -> None:
        """``on_reading`` is called (in the sampling thread) with each valid reading."""
        self.cfg = cfg
        self.on_reading = on_reading
        self.info: MeterInfo | None = None
        self.rate_s = cfg.rate_s
        self.accuracy: AccuracySpec | None = None
        self.st = _State()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._first = threading.Event()
        self._file = None
        self._pending: list[str] = []
        self._last_t: float | None = None  # the last fresh reading's time (missed updates)
        self._thread = threading.Thread(target=self._loop, name="lpirc-meter", daemon=True)
        self.path: Path | None = None

    # --- the caller's side -----------------------------------------------------------------

    def start(self, wait_s: float | None = None) -> "Sampler":
        """Start sampling; wait (at most ``wait_s``, default the open timeout + 2 intervals +
        1 s) for the first reading, so the log covers what follows."""
        self._thread.start()
        self._first.wait(wait_s if wait_s is not None
                         else self.cfg.timeout_s * 2 + 2 * self.cfg.rate_s + 1.0)
        return self

    def attach(self, path: Path) -> None:
        """Write the log to ``path`` from now on (rows taken before are written first)."""
        try:
            f = open(path, "w", encoding="utf-8")
        except OSError as e:  # lpirc meter log checks before opening the meter; a race
            raise InputError(f"{path}: cannot write the meter log ({e.strerror or e})") from None
        with self._lock:
            self.path = Path(path)
            f.write(f"# lpirc meter log ({self.cfg.spec}); {COLUMNS.count(',') + 1} columns; "
                    "'#' lines are readings that are not measurements, and meter events\n")
            f.write(f"# {self.header()}\n")
            f.write(COLUMNS + "\n")
            f.writelines(self._pending)
            f.flush()
            self._pending.clear()
            self._file = f

    def header(self) -> str:
        """The log's provenance line (written as a ``#`` line at the top of the log): the
        meter, its interval and how readings were synchronised."""
        who = (f"{self.info.label()}, firmware {self.info.firmware}" if self.info
               else self.cfg.spec)
        how = f"{self.cfg.sync}: {SYNC_HOW.get(self.cfg.sync, self.cfg.sync)}"
        return f"meter: {who}; interval {self.rate_s:g} s; sync (requested) {how}"

    def wait_past(self, t_end: float, max_wait_s: float | None = None) -> None:
        """Wait until a reading taken at or after ``t_end`` (unix s) is in, the meter is lost,
        or ``max_wait_s`` (default 2 intervals + the timeout) passed."""
        deadline = time.monotonic() + (max_wait_s if max_wait_s is not None
                                       else 2 * self.rate_s + self.cfg.timeout_s + 0.5)
        while time.monotonic() < deadline and self._thread.is_alive():
            with self._lock:
                last = self.st.rows[-1][0] if self.st.rows else None
            if last is not None and last >= t_end:
                return
            time.sleep(min(0.05, self.rate_s / 4))

    def stop(self) -> None:
        """Stop sampling (the integrator is stopped and the meter closed by the thread)."""
        self._stop.set()
        if self._thread.is_alive():
            # a synchronised read waits up to one update interval more
            self._thread.join(self.cfg.timeout_s * 3 + 2.0 + self.rate_s)
        unsync = self.unsynchronised()
        with self._lock:
            if self._file is not None and unsync and not self._file.closed:
                self._file.write(f"# {time.time():.3f} meter: sync checked at the end: {unsync}\n")
            if self._file is not None:
                self._file.close()
                self._file = None

    def outages(self, end: float) -> list[dict]:
        """Each time the meter stopped answering (see ``_State.outages``), with
        ``missed_updates``: the updates that ended between the last reading before it and its
        return (or ``end``, unix s, when it did not come back), none of them read."""
        with self._lock:
            out = [dict(o) for o in self.st.outages]
        for o in out:
            until = o["back"] if o["back"] is not None else end
            since = o["last_reading"] if o["last_reading"] is not None else o["at"]
            # a reading's time is the middle of its interval: its update ended rate/2 later
            o["missed_updates"] = max(0, math.floor((until - since - self.rate_s / 2)
                                                    / self.rate_s))
        return out

    def unsynchronised(self) -> str | None:
        """With ``sync="update"``: why the readings were not one per data update although
        each answer said so -- more fresh readings than the meter's update interval allows
        (an instrument, or pyvisa-sim, that answers ``:COMMunicate:WAIT`` at once and sets
        the update bit every time) -- or None. Polled: None (the label says polled)."""
        st = self.st
        if self.cfg.sync != "update" or st.fresh < 4 or st.first_t is None:
            return None
        span = st.last_t - st.first_t
        possible = span / self.rate_s + 1
        if st.fresh <= 1.25 * possible + 2:
            return None
        return (f"not synchronised: {st.fresh} readings each claimed a new data update in "
                f"{span:.1f} s, where the meter's {self.rate_s:g} s interval allows about "
                f"{possible:.0f} (the instrument did not wait for its updates): readings are "
                "as polled, repeats not detected")

    # --- the thread ------------------------------------------------------------------------

    def _emit(self, line: str) -> None:
        with self._lock:
            if self._file is not None:
                self._file.write(line)
                self._file.flush()
            else:
                self._pending.append(line)

    def _event(self, text: str) -> None:
        stamp = time.time()
        with self._lock:
            self.st.events.append(f"{stamp:.3f} {text}")
        self._emit(f"# {stamp:.3f} meter: {text}\n")

    def _connect(self):
        meter = open_meter(self.cfg.spec, self.cfg.visa_library, self.cfg.timeout_s)
        try:
            meter.configure(self.cfg.rate_s, self.cfg.ranges, self.cfg.sync)
            self.info, self.rate_s, self.accuracy = meter.info, meter.rate_s, meter.accuracy()
            with self._lock:
                self.st.ranges.append(meter.ranges().to_json())
        except BaseException:
            meter.close()
            raise
        return meter

    def _start_integrator(self, meter) -> None:
        try:
            meter.integrator("stop")  # one left running by an earlier session
        except MeterError:
            pass
        try:
            meter.integrator("reset")
            meter.integrator("start")
        except MeterError as e:
            self._event(f"integrator cross-check unavailable ({e})")

    def _loop(self) -> None:
        meter = None
        try:
            meter = self._connect()
            self._start_integrator(meter)
        except MeterError as e:
            with self._lock:
                self.st.absent = str(e)
            self._first.set()
            meter = self._reconnect_loop(e)  # plugged in late: its readings still count
            if meter is None:
                return
        self._sample_loop(meter)

    def _sample_loop(self, meter) -> None:
        auto = self.cfg.ranges == "auto"
        next_t = checked = time.monotonic()
        while True:
            try:
                reading = meter.read(with_ranges=auto)
                if time.monotonic() - checked > ERRORS_EVERY_S:
                    checked = time.monotonic()
                    self._check_errors(meter)
            except MeterError as e:
                with self._lock:
                    self.st.outages.append({"last_reading": self._last_t, "at": time.time(),
                                            "back": None, "why": str(e)})
                self._event(f"lost: {e}")
                meter.close()
                meter = self._reconnect_loop(e)
                if meter is None:
                    return
                next_t = time.monotonic()
                continue
            self._add(reading)
            self._first.set()  # valid or not: the caller need not wait any longer
            if self._stop.is_set():
                break
            if self.cfg.sync == "update":  # half an interval after the update read: the next
                next_t = time.monotonic() - self.rate_s / 2  # read then waits for the next one
            next_t += self.rate_s
            delay = next_t - time.monotonic()
            if delay < 0:
                next_t = time.monotonic()
            elif self._stop.wait(delay):
                pass  # one more reading after the stop, so the log covers the end
        self._close(meter)

    def _reconnect_loop(self, why) -> Any:
        """Try the meter again once a second until stopped; returns it, or None."""
        while not self._stop.wait(RECONNECT_S):
            try:
                meter = self._connect()
            except MeterError:
                continue
            with self._lock:
                self.st.reconnected = True
                self._last_t = None  # the outage is a gap, not missed updates
                if self.st.outages and self.st.outages[-1]["back"] is None:
                    self.st.outages[-1]["back"] = time.time()
            self._event(f"reconnected ({self.info.label() if self.info else self.cfg.spec})")
            return meter
        return None

    def _check_errors(self, meter) -> None:
        """Drain the meter's error queue into the state (and the log). MeterError: lost."""
        errs = meter.errors()
        if errs:
            with self._lock:
                self.st.meter_errors.extend(errs)
            self._event("error queue: " + "; ".join(errs))

    def _close(self, meter) -> None:
        try:
            self._check_errors(meter)  # before the integrator's own answer drains it
        except MeterError as e:
            self._event(f"error queue unreadable at the end ({e})")
        try:
            meter.integrator("stop")
        except MeterError:
            pass
        meter.close()

    def _count(self, r: Reading) -> bool:
        """Count a reading as an update (and the updates missed before it), or as a duplicate;
        False: skip it (not fresh)."""
        with self._lock:
            if not r.fresh:
                self.st.duplicates += 1
                return False
            if self.cfg.sync == "update" and self._last_t is not None:
                self.st.missed += max(0, round((r.t - self._last_t) / self.rate_s) - 1)
            self._last_t = r.t
            self.st.fresh += 1
            self.st.first_t = r.t if self.st.first_t is None else self.st.first_t
            self.st.last_t = r.t
        return True

    def _add(self, r: Reading) -> None:
        if not self._count(r):
            self._emit(f"# {r.t:.3f} not a measurement: no new data update (the values read "
                       "before), skipped\n")
            return
        rng = r.ranges
        why = None
        if r.over_range:
            why = f"over range ({', '.join(r.over_range)})"
        elif r.watts is None:
            why = "no data"
        elif r.watts < 0:
            why = f"negative power {r.watts:g} W (a reversed shunt or wiring?)"
        if why is not None:
            with self._lock:
                self.st.invalid.append((r.t, why))
            self._emit(f"# {r.t:.3f} not a measurement: {why}\n")
            return
        range_w = rng.watts if rng is not None and rng.watts is not None else float("nan")
        bound = self.accuracy.bound_w(r.watts, range_w) if self.accuracy else float("nan")
        with self._lock:
            self.st.rows.append((r.t, r.watts, bound))
            if r.wh is not None:
                self.st.wh.append((r.t, r.wh))
            if rng is not None and (not self.st.ranges or rng.to_json() != self.st.ranges[-1]):
                self.st.ranges.append(rng.to_json())
        if self.on_reading is not None:
            self.on_reading(r)
        self._emit(",".join((f"{r.t:.3f}", _num(r.watts), _num(r.volts), _num(r.amps),
                             _num(rng.volts if rng else None), _num(rng.amps if rng else None),
                             _num(r.wh), _num(r.integ_s))) + "\n")
