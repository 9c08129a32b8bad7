"""The data of ``lpirc tune``: what is tried (:class:`Candidate`), what one trial measured
(:class:`Trial`), a candidate's row of the table (:class:`Row`), the search's options
(:class:`TuneOptions`), its outcome (:class:`TuneResult`), and the trial log the stages append
to and rank from (:class:`Measurements`).

Both the search (:mod:`lpirc.tune`) and what it prints and writes (:mod:`lpirc.tune_report`)
import these; neither imports the other's types from the other, so there is no cycle.
"""

from __future__ import annotations

import dataclasses
import math
import statistics
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from lpirc.settings import RunSettings

#: Median share of the CPUs used by other processes above which the tune says it is noisy.
NOISY_LOAD = 0.15
#: Trials during which other processes used more of the CPUs than this are not counted (when
#: the setting has others): the load correction is a first-order model, good for moderate loads.
MAX_LOAD = 0.6


# --- settings under test -----------------------------------------------------------------------


@dataclass(frozen=True, order=True)
class Candidate:
    """One point of the search space: the RunSettings fields ``lpirc tune`` varies."""

    workers: int
    threads: int
    batch: int = 1
    decode: str = "exact"
    decode_threads: int = 0

    @property
    def label(self) -> str:
        s = f"w{self.workers} t{self.threads} b{self.batch} {self.decode}"
        return s + (f" d{self.decode_threads}" if self.decode_threads else "")

    def settings(self) -> dict[str, Any]:
        """The RunSettings fields, as best.json's ``settings`` object."""
        return {"workers": self.workers, "threads": self.threads, "batch": self.batch,
                "decode": self.decode, "decode_threads": self.decode_threads}

    def apply(self, base: RunSettings) -> RunSettings:
        return dataclasses.replace(base, **self.settings())

    @classmethod
    def default(cls) -> Candidate:
        """What ``lpirc run`` does without ``--config``."""
        d = RunSettings(model=Path("x"), holdout=Path("x"))
        return cls(d.workers, d.threads, d.batch, d.decode, d.decode_threads)



@dataclass
class Trial:
    """One pipeline run of one candidate."""

    candidate: Candidate
    stage: str  # warmup | screen | draft | final | compare
    images: int  # sample size asked
    answered: int = 0  # answers (errors included)
    failed: int = 0
    images_per_s: float | None = None  # steady state, start-up excluded
    #: images_per_s / (1 - foreign_load): the rate on a machine left to the run
    adjusted_images_per_s: float | None = None
    wall_images_per_s: float | None = None  # answers / whole wall time, start-up included
    startup_s: float | None = None  # first answer after start
    wall_s: float = 0.0
    elapsed_s: float = 0.0  # the whole pipeline call: start, answers, stop
    foreign_load: float | None = None  # share of all CPUs busy with other processes meanwhile
    inference_ms: float | None = None  # mean invoke time per image
    top1: float | None = None
    status: str = "complete"
    batch_used: int | None = None
    note: str | None = None

    def to_json(self) -> dict:
        d = dataclasses.asdict(self)
        d["candidate"] = self.candidate.settings()
        d["label"] = self.candidate.label
        return d


@dataclass
class Row:
    """A candidate's summary over all its measurements."""

    candidate: Candidate
    images_per_s: float
    spread: float | None  # (max - min) / 2 / median, over repeats; None with one measurement
    n: int
    top1: float | None
    startup_s: float
    projected_s: float  # startup + full holdout / images_per_s
    fits: bool  # projected_high_s within the budget
    eligible: bool  # top-1 within max_top1_drop of the exact decode
    measurements: list[float] = field(default_factory=list)
    inference_ms: float | None = None  # median of the trials' mean invoke time per image
    load: float | None = None  # median share of the CPUs other processes took in those trials
    #: the range a full run's time should fall in, in s: the fastest start-up plus the holdout
    #: at the fastest rate measured or load-corrected, to the slowest start-up plus the holdout
    #: at the slowest rate as measured (no correction); equal to projected_s when one trial
    projected_low_s: float | None = None
    projected_high_s: float | None = None

    def to_json(self) -> dict:
        return {"settings": self.candidate.settings(), "label": self.candidate.label,
                "images_per_s": round(self.images_per_s, 2),
                "inference_ms": None if self.inference_ms is None else round(self.inference_ms, 3),
                "foreign_load": self.load,
                "spread": None if self.spread is None else round(self.spread, 4),
                "n": self.n, "top1": self.top1, "startup_s": round(self.startup_s, 3),
                "projected_s": round(self.projected_s, 1),
                "projected_range_s": [None if x is None else round(x, 1)
                                      for x in (self.projected_low_s, self.projected_high_s)],
                "fits": self.fits,
                "eligible": self.eligible, "measurements": [round(m, 2) for m in self.measurements]}


@dataclass
class TuneResult:
    out_dir: Path | None
    best: Candidate
    default: Candidate
    rows: list[Row]  # sorted by images/s, fastest first
    trials: list[Trial]
    notes: list[str]
    sample_size: int
    holdout_size: int
    time_limit_s: float
    elapsed_s: float
    ratio: float | None = None  # best/default images/s, median of the interleaved pairs
    ratio_pairs: list[float] = field(default_factory=list)
    cores: int = 1
    max_time_s: float | None = None
    clock: str = "wall"
    ms_per_image: float = 30.0
    challenger: Candidate | None = None  # the fastest setting, when it lost the A/B to defaults
    #: the same pairs with each rate divided by (1 - the foreign load of its trial)
    corrected_ratio_pairs: list[float] = field(default_factory=list)
    ratio_counted: int = 0  # pairs the ratio is the median of (those on a quiet machine)
    interrupted: bool = False  # Ctrl-C / SIGTERM before the search finished: tune.json only
    probe: Trial | None = None  # stage 1's trial
    warmup: Trial | None = None  # stage 2's trial (not counted)
    ground_truth: Path | None = None  # the labels of the top-1 column
    busy: bool = False  # other processes kept more than NOISY_LOAD of the CPUs in a typical trial
    foreign_load: float | None = None  # that typical (median) share, 0..1


# --- the tune ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class TuneOptions:
    """How ``lpirc tune`` searches (see :func:`tune` for each)."""

    max_time_s: float = 120.0
    sample: int | None = None
    repeats: int = 3
    finalists: int = 3
    cooldown_s: float = 0.5
    compare_defaults: bool = True
    compare_pairs: int = 3
    seed: int = 0
    max_top1_drop: float = 0.01
    cores: int = 1
    #: on a busy machine, the fraction by which the winner must beat the defaults in every
    #: interleaved pair to be chosen (see lpirc.tune_choice)
    busy_margin: float = 0.10


# --- the search, in stages ---------------------------------------------------------------------


# --- the measurements store --------------------------------------------------------------------


@dataclass
class Measurements:
    """Every trial of one tune, and the figures the search ranks by: one store all stages read.

    ``counted`` keeps, per candidate (in the order they were first measured), the trials that
    gave a rate; every derived figure (rates, start-up, top-1, invoke time) comes from them.
    """

    clock: str = "wall"
    trials: list[Trial] = field(default_factory=list)
    counted: dict[Candidate, list[Trial]] = field(default_factory=dict)
    tried: set[Candidate] = field(default_factory=set)
    skipped: list[str] = field(default_factory=list)  # "label (stage)" of trials with no time

    def add(self, tr: Trial) -> None:
        self.trials.append(tr)
        if tr.stage in ("probe", "warmup"):
            return
        self.tried.add(tr.candidate)
        if tr.images_per_s is not None:
            self.counted.setdefault(tr.candidate, []).append(tr)

    def measured(self) -> list[Candidate]:
        """Candidates with at least one rate, in the order they were first measured."""
        return list(self.counted)

    def rates(self, c: Candidate) -> list[float]:
        """Steady-state images/s of ``c`` as measured (no load correction)."""
        return [t.images_per_s for t in self.counted.get(c, [])]

    def tops(self, c: Candidate) -> list[float]:
        """Top-1 of ``c``'s counted trials (a trial cut short still answered a prefix of the
        sample: its top-1 over those answers is a measurement)."""
        return [t.top1 for t in self.counted.get(c, []) if t.top1 is not None]

    def quiet(self, c: Candidate) -> list[Trial]:
        """The measurements of ``c`` that count: those taken on a quiet machine if there are
        any, else those under a moderate load, else all. The interleaved A/B trials answer
        another question (best vs defaults, as a ratio) and count only when there is nothing
        else, so the table's order is the order the winner came from."""
        mine = [t for t in self.counted.get(c, []) if t.stage != "compare"] or \
            self.counted.get(c, [])
        calm = [t for t in mine if t.foreign_load is None or t.foreign_load <= NOISY_LOAD]
        fair = [t for t in mine if t.foreign_load is None or t.foreign_load <= MAX_LOAD]
        return calm or fair or mine

    def used(self, c: Candidate) -> list[float]:
        """Rates of the trials that count: as measured on a quiet machine, else corrected for
        the share of the CPUs other processes took (a first-order estimate)."""
        return [t.images_per_s if t.foreign_load is None or t.foreign_load <= NOISY_LOAD
                else t.adjusted_images_per_s for t in self.quiet(c)]

    def goodness(self, c: Candidate) -> tuple[float, float]:
        """Higher is better: images/s (wall clock), or minus the invoke ms per image first when
        the run's budget is summed inference time (Track 1 / OVIC)."""
        if self.clock == "inference":
            inf = [t.inference_ms for t in self.quiet(c) if t.inference_ms is not None]
            return (-_med(inf) if inf else -math.inf, _med(self.used(c)))
        return (_med(self.used(c)), 0.0)

    def ranked(self, keep: Callable[[Candidate], bool] = lambda c: True) -> list[Candidate]:
        """Measured candidates that ``keep``, best first (ties: first measured first)."""
        return sorted((c for c in self.counted if keep(c)), key=self.goodness, reverse=True)

    def exact_top1(self) -> float | None:
        """Median over the exact-decode candidates of their median top-1."""
        vals = [_med(v) for c in self.counted if c.decode == "exact" and (v := self.tops(c))]
        return statistics.median(vals) if vals else None

    def rows(self, eligible: Callable[[Candidate], bool], holdout_size: int,
             base: RunSettings) -> list[Row]:
        """The table: candidates measured in the search proper (not only in the A/B), with the
        figures of their trials that count."""
        rows = [self.row(c, eligible(c), holdout_size, base) for c in self.counted
                if any(t.stage != "compare" for t in self.counted[c])]
        if base.clock == "inference":  # the budget is summed invoke time: least ms first
            rows.sort(key=lambda r: (r.inference_ms is None, r.inference_ms or 0.0,
                                     -r.images_per_s))
        else:
            rows.sort(key=lambda r: -r.images_per_s)
        return rows

    def row(self, c: Candidate, eligible: bool, holdout_size: int, base: RunSettings) -> Row:
        """``c``'s row. Its projection is a range: the figures that count (quiet or
        load-corrected) say how fast a run can go, the slowest raw trial how slow one went on
        this machine as it was (under a one-core hog on 2 cores the corrected figure alone
        projected 7 s for runs that took 11-23 s)."""
        quiet = self.quiet(c)
        ms = self.used(c)
        med = _med(ms)
        starts = [t.startup_s for t in quiet if t.startup_s is not None]
        infs = [t.inference_ms for t in quiet if t.inference_ms is not None]
        loads = [t.foreign_load for t in quiet if t.foreign_load is not None]
        tops = self.tops(c)
        st = _med(starts) if starts else 0.0
        proj = st + holdout_size / med if med > 0 else math.inf
        every = self.counted[c]  # every trial with a rate, the A/B's included
        all_starts = [t.startup_s for t in every if t.startup_s is not None] or [st]
        fast = max([*ms, *self.rates(c)])
        slow = min(self.rates(c))
        low = min(proj, min(all_starts) + holdout_size / fast) if fast > 0 else math.inf
        high = max(proj, max(all_starts) + holdout_size / slow) if slow > 0 else math.inf
        fits = high <= base.time_limit_s
        if base.clock == "inference":  # Track 1 / OVIC: invoke time per image counts too
            fits = proj <= base.time_limit_s and bool(infs) and _med(infs) <= base.ms_per_image
        return Row(c, med, (max(ms) - min(ms)) / 2 / med if len(ms) > 1 and med > 0 else None,
                   len(ms), _med(tops) if tops else None, st, proj, fits, eligible, list(ms),
                   inference_ms=_med(infs) if infs else None,
                   load=round(_med(loads), 3) if loads else None, projected_low_s=low,
                   projected_high_s=high)


def _med(xs) -> float:
    return statistics.median(xs)

__all__ = ["MAX_LOAD", "NOISY_LOAD", "Candidate", "Measurements", "Row", "Trial", "TuneOptions", "TuneResult"]
