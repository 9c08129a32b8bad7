"""The meter's part of one ``lpirc run``: ``--meter``, ``--idle-baseline``, ``--idle-seconds``.

The runner calls :meth:`RunMeter.begin` before its energy probe (an idle measurement first, if
asked, then the sampler, which takes its first reading before the run's clock starts),
:meth:`RunMeter.attach` once the run folder exists, :meth:`RunMeter.finish` with the run's
window and its other energy figure after the last answer, and :meth:`RunMeter.stop` in every
case. Nothing here raises over the meter: faults become the energy's label and the
manifest's notes.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from lpirc.errors import MeterError
from lpirc.meters.measure import measure_idle, read_idle, run_energy
from lpirc.meters.sampler import POWER_LOG, MeterConfig, Sampler


def meter_config(settings: Any) -> MeterConfig | None:
    """The MeterConfig of a RunSettings (None without ``meter``)."""
    if not getattr(settings, "meter", None):
        return None
    return MeterConfig(spec=settings.meter, visa_library=settings.visa_library,
                       rate_s=settings.meter_rate_s, ranges=settings.meter_ranges,
                       sync=getattr(settings, "meter_sync", "update"))


def ranging_note(ranges: list[dict]) -> str | None:
    """After an auto-ranging run: the fixed ranges to measure with (the largest the meter
    chose), as MLPerf Power's ranging run gives them. None when the ranges were fixed."""
    auto = [r for r in ranges if r.get("auto")]
    volts = [r["volts"] for r in auto if r.get("volts") is not None]
    amps = [r["amps"] for r in auto if r.get("amps") is not None]
    if not volts or not amps:
        return None
    return (f"meter ranging run (auto range): the meter chose up to {max(volts):g} V and "
            f"{max(amps):g} A; measure with --meter-ranges {max(volts):g},{max(amps):g}")


class RunMeter:
    def __init__(self, cfg: MeterConfig | None, idle: dict[str, Any] | None,
                 notes: list[str]) -> None:
        self.cfg = cfg
        self.idle = idle
        self.notes = notes
        self.sampler: Sampler | None = None

    @classmethod
    def begin(cls, settings: Any) -> "RunMeter | None":
        """Read or measure the idle baseline, start sampling. None when the run uses neither a
        meter nor an idle baseline. A bad ``--idle-baseline`` file raises InputError (before
        the run, like any bad input); a meter fault is a note."""
        cfg = meter_config(settings)
        idle_file = getattr(settings, "idle_baseline", None)
        idle_s = float(getattr(settings, "idle_seconds", 0.0) or 0.0)
        if cfg is None and idle_file is None:
            return None
        notes: list[str] = []
        idle = None
        if idle_file is not None:
            idle = dict(read_idle(Path(idle_file)), **{"from": f"file {Path(idle_file).name}"})
        elif cfg is not None and idle_s > 0:
            try:
                idle = dict(measure_idle(cfg, idle_s), **{"from": "measured before the run"})
            except MeterError as e:
                notes.append(f"idle baseline not measured: {e}")
        rm = cls(cfg, idle, notes)
        if cfg is not None:
            rm.sampler = Sampler(cfg).start()
            if rm.sampler.st.absent:
                notes.append(f"meter: {rm.sampler.st.absent}; trying again once a second")
        return rm

    def preview(self) -> str | None:
        """The energy method the start-of-run manifest shows; None: no meter."""
        if self.cfg is None:
            return None
        return f"meter {self.cfg.spec} (sampling; the figure is made when the run ends)"

    def attach(self, out: Path) -> None:
        if self.sampler is not None:
            self.sampler.attach(Path(out) / POWER_LOG)

    def finish(self, start: float, end: float, energy: dict[str, Any]) -> dict[str, Any]:
        """The run's energy object: the meter's figure (or ``energy`` with the reason), and
        the idle baseline with its provenance."""
        out = dict(energy)
        if self.sampler is not None:
            self.sampler.wait_past(end)
            self.sampler.stop()
            out = run_energy(self.sampler, start, end, energy)
            note = ranging_note(self.sampler.st.ranges)
            if note:
                self.notes.append(note)
        if self.idle is not None:
            out["idle"] = {k: self.idle.get(k) for k in
                           ("watts", "uncertainty_w", "seconds", "samples", "method", "from",
                            "start_utc")}
        return out

    def stop(self) -> None:
        if self.sampler is not None:
            self.sampler.stop()
