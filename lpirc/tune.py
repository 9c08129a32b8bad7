"""``lpirc tune``: measure worker / thread / batch / decode settings on this machine, keep the best.

Every trial is a real ``lpirc run`` in miniature: :func:`lpirc.pipeline.run_pipeline` (the very
code ``lpirc run`` uses) over a fixed random sample of the holdout, with one
``dataclasses.replace(settings, workers=, threads=, batch=, decode=)`` per trial, answers kept in
memory. Nothing is a separate micro-benchmark.

What one trial measures
    images/s  = answers received after every worker has delivered its first chunk, divided by
                the time from that moment to the last answer (the parent's ``t_s`` of each
                record). Worker start-up (fork, model load, XNNPACK weight packing, first invoke)
                is excluded: it is paid once per run, not per image; it is measured separately
                (``PipelineOutcome.first_answer_s``) and added back in the projected time of a
                full run: ``startup + images / images_per_s``.
    top-1     = on the sample, from the answers and the ground truth (when one is known), so a
                faster decode that costs accuracy shows it.

How the search goes (all inside ``max_time_s``)
    1. probe      one worker at the largest batch on a few images: the model loads and runs
                  (else ModelError), its batch can be resized or not (a model with a constant
                  reshape pins batch 1: batches > 1 are then skipped, and said so).
    2. warm-up    the sample's files are read once (page cache), then the default settings run
                  once over the sample (not counted): its speed sizes the sample so that the
                  planned trials fit the time.
    3. screen     every (workers, threads) pair with workers x threads near the core count,
                  at batch 1 and 4, exact decode, in shuffled order, once each (time is kept
                  for the defaults' slot, the baseline); batch 8 only where batch 4 beat batch 1.
    4. draft      the best two again with the JPEG draft (DCT-scaled) decode, only when enough
                  sample images are large enough for it to decode at a reduced scale.
    5. final      the best few (top-1 within ``max_top1_drop`` of exact decode) re-measured
                  ``repeats`` times, in a shuffled order per round; a setting's figure is the
                  median of the measurements taken on a quiet machine (other processes below
                  15 % of the CPUs: psutil's machine-wide busy CPU time minus this process
                  tree's own, ``foreign_load`` in tune.json) when there are any; else of the
                  rates divided by (1 - that share), from trials under 60 % load if any. The
                  correction is first-order (it flatters multi-threaded settings somewhat), so
                  a busy machine is said to be one in the output.
    6. compare    best vs default settings interleaved (A B A B ...): the median of the
                  per-pair ratios (raw: both trials of a pair share the machine's load; pairs
                  where either trial met other processes' load are left out when quiet pairs
                  exist) is printed as "best/default images/s ratio". Should the
                  defaults win this direct comparison, they are kept as the best settings.
    A short cooldown separates trials. A trial that would not fit the time left is skipped;
    each trial's own budget is capped so that the tune never overruns (a trial cut short still
    gives its images/s and its top-1 over the answers it gave). The table's rates come from
    stages 3 to 5 only, so the winner is its first eligible row, or the defaults when they won
    the A/B.

Public API: :func:`tune`, :class:`Candidate`, :class:`Trial`, :class:`TuneResult`,
:func:`search_space`, :func:`throughput`, :func:`format_table`, :func:`default_tune_dir`.
"""

from __future__ import annotations

import dataclasses
import math
import random
import resource
import statistics
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

import psutil
from PIL import Image
from tqdm import tqdm

import scoring
from scoring.names import label_images
from lpirc import pipeline, preflight
from lpirc.clock import Budget, Stopwatch
from lpirc.errors import InputError, NoTimeError
from lpirc.holdout import open_holdout
from lpirc.pipeline import PipelineOutcome, WorkerReady
from lpirc.settings import RunSettings, default_workers
from lpirc.tune_report import default_tune_dir, format_summary, format_table, write_files

BATCHES = (1, 4, 8)
#: Draft decode is tried only when at least this fraction of the sample would decode smaller.
DRAFT_MIN_FRACTION = 0.2
#: Images the probe runs.
PROBE_IMAGES = 16
#: Answers a measurement needs to be worth anything.
MIN_ANSWERS = 8
#: Largest automatic sample (answers per trial).
MAX_SAMPLE = 2000
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


def search_space(cores: int, batches: Sequence[int] = (1,), exclusive: bool = False
                 ) -> list[Candidate]:
    """Worker/thread/batch points worth measuring (exact decode).

    workers 1..cores+1; for each, interpreter threads t <= cores with cores <= workers x t <=
    cores + 1 (else t = 1 once workers >= cores): 1 process x all cores, a process per core,
    one more process than cores, and the splits between. Each at every batch in ``batches``.
    An exclusive device (Edge TPU) has one inference process: only its decode threads vary.
    """
    cores = max(1, int(cores))
    if exclusive:
        return [Candidate(w, 1, 1) for w in range(1, cores + 2)]
    pairs: list[tuple[int, int]] = []
    for w in range(1, cores + 2):
        ts = [t for t in range(1, cores + 1) if cores <= w * t <= cores + 1]
        if not ts:
            ts = [max(1, cores // w)]
        pairs += [(w, t) for t in ts]
    return [Candidate(w, t, b) for w, t in pairs for b in batches]


# --- measurement -------------------------------------------------------------------------------


def throughput(records: Sequence[dict]) -> tuple[float | None, float | None]:
    """(images/s in steady state, start of the window in s) from one run's records.

    The window opens when the last worker delivers its first chunk (start-up and first invoke
    excluded) and closes at the last answer; the rate counts the answers received inside it.
    None when fewer than two deliveries fall in the window.
    """
    if not records:
        return None, None
    first: dict[Any, float] = {}
    for r in records:
        w = r.get("worker")
        if w not in first or r["t_s"] < first[w]:
            first[w] = r["t_s"]
    start = max(first.values())
    end = max(r["t_s"] for r in records)
    inside = [r for r in records if r["t_s"] > start]
    deliveries = {(r.get("worker"), r["t_s"]) for r in inside}
    if len(deliveries) < 2 or end <= start:
        return None, start
    return len(inside) / (end - start), start


def top1(records: Iterable[dict], gt: dict[str, int] | None) -> float | None:
    if not gt:
        return None
    n = ok = 0
    for r in records:
        label = gt.get(r["image"])
        if label is None:
            continue
        n += 1
        ok += bool(r["top5"]) and r["top5"][0] == label
    return ok / n if n else None


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
    fits: bool
    eligible: bool  # top-1 within max_top1_drop of the exact decode
    measurements: list[float] = field(default_factory=list)
    inference_ms: float | None = None  # median of the trials' mean invoke time per image
    load: float | None = None  # median share of the CPUs other processes took in those trials

    def to_json(self) -> dict:
        return {"settings": self.candidate.settings(), "label": self.candidate.label,
                "images_per_s": round(self.images_per_s, 2),
                "inference_ms": None if self.inference_ms is None else round(self.inference_ms, 3),
                "foreign_load": self.load,
                "spread": None if self.spread is None else round(self.spread, 4),
                "n": self.n, "top1": self.top1, "startup_s": round(self.startup_s, 3),
                "projected_s": round(self.projected_s, 1), "fits": self.fits,
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


# --- the tune ----------------------------------------------------------------------------------


def _draft_fraction(root: Path, files: Sequence[str], height: int, width: int,
                    crop_fraction: float) -> float:
    """Fraction of ``files`` that the draft decode would decode at a reduced scale: JPEGs whose
    half-size central crop still covers the model input (read from the headers only)."""
    if not files:
        return 0.0
    hits = 0
    for name in files:
        try:
            with Image.open(root / name) as im:
                if im.format != "JPEG":
                    continue
                w, h = im.size
        except Exception:  # noqa: BLE001  (a broken image is the pipeline's business)
            continue
        lo, hi = min(w, h), max(w, h)
        if (lo / 2) * crop_fraction >= min(height, width) and (hi / 2) * crop_fraction >= max(height, width):
            hits += 1
    return hits / len(files)


class _Bar:
    def __init__(self, enabled: bool) -> None:
        self.bar = None
        if enabled and sys.stderr.isatty():
            self.bar = tqdm(total=1, unit="trial", desc="lpirc tune", leave=False,
                            file=sys.stderr, dynamic_ncols=True)

    def plan(self, total: int) -> None:
        if self.bar is not None:
            self.bar.total = max(total, self.bar.n)
            self.bar.refresh()

    def step(self, text: str) -> None:
        if self.bar is not None:
            self.bar.set_postfix_str(text, refresh=False)
            self.bar.update(1)

    def show(self, text: str) -> None:
        if self.bar is not None:
            self.bar.set_postfix_str(text)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


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
        rows = []
        for c in self.counted:
            if not any(t.stage != "compare" for t in self.counted[c]):
                continue
            quiet = self.quiet(c)
            ms = self.used(c)
            med = _med(ms)
            starts = [t.startup_s for t in quiet if t.startup_s is not None]
            infs = [t.inference_ms for t in quiet if t.inference_ms is not None]
            loads = [t.foreign_load for t in quiet if t.foreign_load is not None]
            tops = self.tops(c)
            st = _med(starts) if starts else 0.0
            proj = st + holdout_size / med if med > 0 else math.inf
            fits = proj <= base.time_limit_s
            if base.clock == "inference":  # Track 1 / OVIC: invoke time per image counts too
                fits = fits and bool(infs) and _med(infs) <= base.ms_per_image
            rows.append(Row(c, med, (max(ms) - min(ms)) / 2 / med if len(ms) > 1 and med > 0
                            else None, len(ms), _med(tops) if tops else None, st, proj, fits,
                            eligible(c), list(ms), inference_ms=_med(infs) if infs else None,
                            load=round(_med(loads), 3) if loads else None))
        if base.clock == "inference":  # the budget is summed invoke time: least ms first
            rows.sort(key=lambda r: (r.inference_ms is None, r.inference_ms or 0.0,
                                     -r.images_per_s))
        else:
            rows.sort(key=lambda r: -r.images_per_s)
        return rows


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


# --- the search, in stages ---------------------------------------------------------------------


class _Search:
    """One tune: the stages (probe, warm-up, screen, draft, final, compare) as methods over one
    :class:`Measurements` store, and :meth:`finish` for the normal and the interrupted end."""

    def __init__(self, base: RunSettings, opts: TuneOptions, progress: bool,
                 on_trial: Callable[[Trial], None] | None) -> None:
        self.base, self.opts, self.on_trial = base, opts, on_trial
        self.t_start = time.monotonic()
        self.deadline = self.t_start + float(opts.max_time_s)
        self.rng = random.Random(opts.seed)
        self.notes: list[str] = []
        self.store = Measurements(clock=base.clock)
        self.model_path = preflight.check_model_file(base.model)
        self.root = Path(base.holdout)
        self.files = open_holdout(self.root, seed=base.seed).files
        self.ground_truth = preflight.ground_truth_for(self.root, base.ground_truth)
        self.truth: dict[str, int] | None = None
        if self.ground_truth is not None:
            try:
                # keyed by the holdout's own names, matched by the scorer's rule
                self.truth = label_images(scoring.read_ground_truth(self.ground_truth),
                                          self.files)
            except scoring.ScoringError as e:
                raise InputError(str(e)) from None
        self.exclusive = preflight.check_delegate(base.delegate)
        self.order = list(self.files)
        self.rng.shuffle(self.order)  # a fixed random sample: every trial sees the same images
        self.bar = _Bar(progress and not base.quiet)
        self.default = Candidate.default()
        if self.exclusive:
            self.default = Candidate(self.default.workers, 1, 1)
        # set by the stages
        self.first_ready: WorkerReady | None = None
        self.first_error: str | None = None
        self.probe_trial: Trial | None = None
        self.warm_trial: Trial | None = None
        self.batches: tuple[int, ...] = (1,)
        self.space: list[Candidate] = []
        self.screened: list[Candidate] = []
        self.try_draft = False
        self.draft_share = 0.0  # share of the sample a draft decode would read at reduced scale
        self.names: list[str] = []
        self.warm_rate = 1.0
        self.overhead = 0.0
        self.best: Candidate | None = None
        self.ratio: float | None = None
        self.ratio_pairs: list[float] = []
        self.corrected_pairs: list[float] = []  # the same pairs, each rate load-corrected
        self.pair_loads: list[float] = []  # the larger foreign load of each pair's two trials
        self.counted_pairs: list[float] = []
        self.challenger: Candidate | None = None
        #: the exact decode's top-1, fixed once the screen is done (what a faster decode's
        #: top-1 is held to); None before
        self.exact_top1: float | None = None

    # --- time --------------------------------------------------------------------------------

    def seconds_left(self) -> float:
        return self.deadline - time.monotonic()

    def estimate_s(self, c: Candidate) -> float:
        """Expected seconds for one trial of ``c`` (pessimistic before it was measured)."""
        raw = self.store.rates(c)
        r = statistics.median(raw) if raw else self.warm_rate * 0.6
        done = [t for t in self.store.trials if t.images_per_s and t.stage != "probe"]
        extra = (statistics.median(t.elapsed_s - t.answered / t.images_per_s for t in done)
                 if done else self.overhead - self.opts.cooldown_s)
        return max(0.0, extra) + len(self.names) / max(r, 1e-6) + self.opts.cooldown_s

    def reserve_s(self) -> float:
        """Time kept for the A/B comparison at the end: one pair, with some slack."""
        if not self.opts.compare_defaults:
            return 0.0
        d = (self.estimate_s(self.default) if self.default in self.store.counted
             else self.overhead + len(self.names) / self.warm_rate)
        ranked = self.store.ranked()
        lead = ranked[0] if ranked else self.default
        return 1.3 * (d + min(d, self.estimate_s(lead)))

    # --- trials ------------------------------------------------------------------------------

    def measure(self, cand: Candidate, stage: str, names: Sequence[str], cap_s: float) -> Trial:
        """One pipeline run of ``cand`` over ``names`` within ``cap_s`` seconds."""
        recs: list[dict] = []
        t_in = time.monotonic()
        cpu0 = _cpu_snapshot()
        budget = Budget("wall", max(0.1, cap_s), self.base.ms_per_image, len(names))
        outcome = pipeline.run_pipeline(cand.apply(self.base), self.root, tuple(names), budget,
                                        recs.extend, Stopwatch(), exclusive=self.exclusive)
        tr = Trial(cand, stage, len(names), answered=outcome.answered + outcome.failed,
                   failed=outcome.failed, wall_s=outcome.wall_time_s,
                   startup_s=outcome.first_answer_s, status=outcome.status,
                   batch_used=outcome.ready.batch if outcome.ready else None)
        tr.elapsed_s = time.monotonic() - t_in
        tr.foreign_load = _foreign_load(cpu0, _cpu_snapshot(), tr.elapsed_s)
        if outcome.status == "interrupted":
            raise KeyboardInterrupt
        if outcome.error and not recs:
            raise preflight.failure_error(*outcome.error)
        _fill_trial(tr, outcome, recs, self.truth)
        self.first_ready = self.first_ready or outcome.ready
        self.first_error = self.first_error or next((r["error"] for r in recs if r["error"]),
                                                    None)
        self.store.add(tr)
        if self.on_trial is not None:
            self.on_trial(tr)
        return tr

    def run_one(self, c: Candidate, stage: str, keep_reserve: bool = True) -> Trial | None:
        """Measure ``c`` if it fits the time left (keeping the A/B's reserve, and in the screen
        the defaults' slot: they are the baseline of the table and of the ratio)."""
        room = self.seconds_left() - (self.reserve_s() if keep_reserve else 0.0)
        if (stage == "screen" and c != self.default and self.default in self.screened
                and self.default not in self.store.tried):
            room -= self.estimate_s(self.default)
        if room < self.estimate_s(c):
            self.store.skipped.append(f"{c.label} ({stage})")
            self.bar.step(f"{c.label}: skipped, no time")
            return None
        tr = self.measure(c, stage, self.names, min(room, 3 * self.estimate_s(c)))
        ranked = self.store.ranked()
        self.bar.step(f"{c.label}: {_fmt_rate(tr.images_per_s)} img/s"
                      + (f" | best {ranked[0].label}" if ranked else ""))
        if self.opts.cooldown_s > 0 and self.seconds_left() > self.opts.cooldown_s:
            time.sleep(self.opts.cooldown_s)
        return tr

    def eligible(self, c: Candidate) -> bool:
        """A faster decode counts only if its top-1 was measured and holds within
        ``max_top1_drop`` of the exact decode's."""
        if c.decode == "exact" or self.exact_top1 is None:
            return True
        tops = self.store.tops(c)
        return bool(tops) and _med(tops) >= self.exact_top1 - self.opts.max_top1_drop

    # --- stages ------------------------------------------------------------------------------

    def probe(self) -> None:
        """1. One worker at the largest batch on a few images: does it run, can its batch be
        resized."""
        big = 1 if self.exclusive else max(BATCHES)
        names = self.order[:max(1, min(len(self.order), max(PROBE_IMAGES, big * 2)))]
        self.bar.show("probing the model")
        tr = self.probe_trial = self.measure(Candidate(1, 1, big), "probe", names,
                                             max(0.5, self.seconds_left()))
        if tr.answered == 0:
            raise NoTimeError(f"--max-time-s {self.opts.max_time_s:g}: too short to load and "
                              f"run {self.model_path.name} even once")
        if tr.answered == tr.failed:
            raise InputError(f"{self.root}: none of the first {len(names)} images could be "
                             f"decoded ({self.first_error})")
        if self.first_ready:  # the output chosen, a feed that does not fit: as lpirc run notes
            self.notes.extend(self.first_ready.answer_notes)
        if self.exclusive:
            self.notes.append(f"delegate {self.base.delegate} allows one inference process: "
                              "tuning its decode threads (the workers setting) only")
        elif tr.batch_used == big:
            self.batches = BATCHES
        else:
            self.notes.append(f"batch 4 and 8 skipped: {self.model_path.name} cannot resize its "
                              "batch (it pins batch 1, e.g. a constant reshape)")

    def warm_up(self) -> None:
        """2. Read the sample once (page cache), run the defaults once (not counted), and size
        the sample from their speed so that the planned trials fit the time."""
        o = self.opts
        self.space = search_space(o.cores, self.batches, self.exclusive)
        hw = (self.first_ready.input_hw if self.first_ready else None) or (224, 224)
        self.draft_share = _draft_fraction(
            self.root, sorted(set(self.order[:o.sample or MAX_SAMPLE])), hw[0], hw[1],
            self.base.crop_fraction)
        self.try_draft = self.draft_share >= DRAFT_MIN_FRACTION
        planned = _planned_trials(self.space, self.try_draft, o.repeats, o.finalists,
                                  o.compare_defaults, o.compare_pairs)
        n = o.sample or 200
        self.names = _cycle(self.order, min(n, 200))
        _read_all(self.root, self.order[:min(len(self.order), o.sample or MAX_SAMPLE)])
        self.bar.show("warm-up")
        warm = self.warm_trial = self.measure(self.default, "warmup", self.names,
                                              max(0.5, self.seconds_left()))
        if warm.images_per_s is None and warm.answered == 0:
            raise NoTimeError(f"--max-time-s {o.max_time_s:g}: too short to measure even one "
                              "setting (the warm-up answered nothing)")
        self.warm_rate = warm.images_per_s or (warm.wall_images_per_s or 1.0)
        startup = warm.startup_s or 0.5
        # what a trial costs beyond its answers: start-up, stop, cooldown
        self.overhead = max(startup, warm.elapsed_s - len(self.names) / self.warm_rate) \
            + o.cooldown_s
        if o.sample is None:
            # a small holdout is cycled through more than once so that a trial lasts long
            # enough to measure; the load may double a trial, hence the 0.5
            per_trial = self.seconds_left() / max(1, planned) - self.overhead
            want = int(max(0.0, per_trial) * self.warm_rate * 0.5)
            n = max(max(32, 4 * max(BATCHES) * (o.cores + 1)), min(MAX_SAMPLE, want))
        self.names = _cycle(self.order, n)
        if n > len(self.order):
            self.notes.append(f"sample: the {len(self.order)} holdout images cycled to {n} "
                              "answers per trial")
        self.bar.plan(planned)

    def screen(self) -> None:
        """3. Every point of the search space at batch 1 and 4, shuffled, once each; batch 8
        only where batch 4 beat batch 1."""
        self.screened = [c for c in self.space if c.batch <= 4]
        self.rng.shuffle(self.screened)
        for c in self.screened:
            self.run_one(c, "screen")
        if 8 in self.batches:
            self._screen_batch_8()
        if not self.store.counted:
            raise NoTimeError(f"--max-time-s {self.opts.max_time_s:g}: too short to measure "
                              f"even one setting (each needs about "
                              f"{self.estimate_s(self.default):.1f} s after a "
                              f"{time.monotonic() - self.t_start:.1f} s warm-up)")
        self.exact_top1 = self.store.exact_top1()

    def _screen_batch_8(self) -> None:
        store = self.store
        later, slower, unmeasured = [], [], []
        for c in (c for c in self.space if c.batch == 8):
            b1, b4 = (dataclasses.replace(c, batch=b) for b in (1, 4))
            if b1 in store.counted and b4 in store.counted:
                faster = _med(store.used(b4)) > _med(store.used(b1))
                (later if faster else slower).append(c)
            else:
                unmeasured.append(c)
        if slower:
            self.notes.append("batch 8 skipped for " + ", ".join(
                f"w{c.workers} t{c.threads}" for c in slower)
                + ": batch 4 was no faster than batch 1 there")
        if unmeasured:
            # saying "no faster" of a batch that was never measured would be a guess
            self.notes.append("batch 8 skipped for " + ", ".join(
                f"w{c.workers} t{c.threads}" for c in unmeasured)
                + ": batch 1 or 4 was not measured there (no time)")
        self.rng.shuffle(later)
        for c in later:
            self.run_one(c, "screen")

    def draft(self) -> None:
        """4. The best two again with the JPEG draft decode, when enough images are large
        enough for it to decode at a reduced scale."""
        if not self.try_draft:
            hw = (self.first_ready.input_hw if self.first_ready else None) or (224, 224)
            self.notes.append(f"draft decode skipped: only {self.draft_share:.0%} of the images "
                              f"are large enough for a reduced-scale JPEG decode to "
                              f"{hw[1]}x{hw[0]}")
            return
        drafts = [dataclasses.replace(c, decode="draft") for c in self.store.ranked()[:2]]
        self.rng.shuffle(drafts)
        for c in drafts:
            self.run_one(c, "draft")

    def final(self) -> None:
        """5. The best few eligible settings re-measured ``repeats - 1`` more times, shuffled
        per round; the winner is the best over every eligible candidate (the table's first
        eligible row), or the defaults when none is."""
        eligible_ranked = self.store.ranked(self.eligible)
        finals = eligible_ranked[:max(1, self.opts.finalists)]
        for _ in range(max(0, self.opts.repeats - 1)):
            rnd = list(finals)
            self.rng.shuffle(rnd)
            for c in rnd:
                self.run_one(c, "final")
        ranked = self.store.ranked(self.eligible)
        self.best = ranked[0] if ranked else self.default

    def compare(self) -> None:
        """6. Best vs defaults interleaved (A B A B ...); the ratio is the median of the
        per-pair ratios, over the pairs taken on a quiet machine when there are any. Should
        the defaults win, they are kept."""
        best, default = self.best, self.default
        if self.opts.compare_defaults and best != default:
            for _ in range(max(1, self.opts.compare_pairs)):
                if self.seconds_left() < self.estimate_s(best) + self.estimate_s(default):
                    break
                a = self.run_one(best, "compare", keep_reserve=False)
                b = self.run_one(default, "compare", keep_reserve=False)
                if a and b and a.images_per_s and b.images_per_s:
                    # adjacent trials share the machine's load: the raw ratio is the direct one
                    self.ratio_pairs.append(a.images_per_s / b.images_per_s)
                    self.corrected_pairs.append(a.adjusted_images_per_s
                                                / b.adjusted_images_per_s)
                    self.pair_loads.append(max(a.foreign_load or 0.0, b.foreign_load or 0.0))
            if not self.ratio_pairs:
                self.notes.append("no time left to compare best with the defaults")
        # a pair whose trials met different loads is no direct comparison (a burst of other
        # work during one trial of two pairs moved the median from 1.02 to 1.47)
        pairs = list(zip(self.ratio_pairs, self.pair_loads))
        self.counted_pairs = ([x for x, ld in pairs if ld <= NOISY_LOAD]
                              or [x for x, ld in pairs if ld <= MAX_LOAD] or self.ratio_pairs)
        self.ratio = statistics.median(self.counted_pairs) if self.counted_pairs else (
            1.0 if self.opts.compare_defaults and best == default else None)
        if self.ratio is not None and self.ratio < 1.0:
            # the interleaved A/B is the most direct measurement there is: trust it
            self.challenger, self.best = best, default
            self.notes.append(f"{best.label} measured {self.ratio:.2f}x the defaults in the "
                              "interleaved comparison: the defaults are kept")
        elif self.opts.compare_defaults and best == default:
            self.notes.append("the best settings are the defaults")

    def run_stages(self) -> None:
        self.probe()
        self.warm_up()
        self.screen()
        self.draft()
        self.final()
        self.compare()

    # --- the end, normal or interrupted ------------------------------------------------------

    def finish(self, interrupted: bool) -> TuneResult:
        """The result, from the store, whether the search ran to its end or was interrupted
        (then: the best eligible setting so far, no ratio, and a note saying so)."""
        if interrupted:
            if self.exact_top1 is None:
                self.exact_top1 = self.store.exact_top1()
            ranked = self.store.ranked(self.eligible)
            self.best = ranked[0] if ranked else self.default
            self.ratio, self.ratio_pairs, self.corrected_pairs = None, [], []
            self.counted_pairs, self.challenger = [], None
            self.notes.append(f"interrupted after {len(self.store.trials)} pipeline runs: the "
                              "table holds what was measured; best.json was not written")
        else:
            loads = [t.foreign_load for t in self.store.trials if t.foreign_load is not None]
            if loads and statistics.median(loads) > NOISY_LOAD:
                self.notes.append(
                    f"other processes kept {statistics.median(loads):.0%} of the CPUs busy "
                    f"during a typical trial (max {max(loads):.0%}): images/s are corrected "
                    "for it, but tune again on a quiet machine for a firm answer")
            skipped = self.store.skipped
            if skipped:
                self.notes.append(f"{len(skipped)} trial(s) skipped for lack of time: "
                                  + ", ".join(skipped[:6]) + ("..." if len(skipped) > 6 else ""))
        o = self.opts
        return TuneResult(
            out_dir=None, best=self.best or self.default, default=self.default,
            rows=self.store.rows(self.eligible, len(self.files), self.base),
            trials=self.store.trials, notes=self.notes, sample_size=len(self.names),
            holdout_size=len(self.files), time_limit_s=self.base.time_limit_s,
            elapsed_s=time.monotonic() - self.t_start, ratio=self.ratio,
            ratio_pairs=self.ratio_pairs, ratio_counted=len(self.counted_pairs),
            cores=o.cores, challenger=self.challenger,
            corrected_ratio_pairs=self.corrected_pairs, max_time_s=float(o.max_time_s),
            clock=self.base.clock, ms_per_image=self.base.ms_per_image,
            interrupted=interrupted, probe=self.probe_trial, warmup=self.warm_trial,
            ground_truth=self.ground_truth)


def _fill_trial(tr: Trial, outcome: PipelineOutcome, recs: list[dict],
                truth: dict[str, int] | None) -> None:
    """A trial's figures from its pipeline outcome and its records."""
    if outcome.error:
        tr.note = outcome.error[1]
    rate, _ = throughput(recs)
    tr.images_per_s = rate if tr.answered >= MIN_ANSWERS else None
    if outcome.wall_time_s > 0 and recs:
        tr.wall_images_per_s = len(recs) / outcome.wall_time_s
    inf = [r["inference_ms"] for r in recs if r["error"] is None]
    tr.inference_ms = sum(inf) / len(inf) if inf else None
    tr.top1 = top1(recs, truth)
    if tr.images_per_s is not None:
        tr.adjusted_images_per_s = tr.images_per_s / (1.0 - min(tr.foreign_load or 0.0, 0.8))
    if tr.batch_used is not None and tr.batch_used != tr.candidate.batch:
        tr.note = f"ran at batch {tr.batch_used}"


def tune(base: RunSettings, max_time_s: float = 120.0, *, sample: int | None = None,
         repeats: int = 3, finalists: int = 3, cooldown_s: float = 0.5,
         compare_defaults: bool = True, compare_pairs: int = 3, seed: int = 0,
         out: Path | None = None, max_top1_drop: float = 0.01, cores: int | None = None,
         progress: bool = True, write: bool = True,
         on_trial: Callable[[Trial], None] | None = None) -> TuneResult:
    """Find the fastest settings for ``base.model`` on this machine within ``max_time_s``.

    Args:
      base: everything not tuned (model, holdout, ground truth, preprocessing, delegate, the
        competition's ``time_limit_s`` used for the "fits" column).
      max_time_s: wall-clock seconds the whole tune may take.
      sample: answers per trial (default: sized from the warm-up so the trials fit).
      repeats: measurements of each finalist; finalists: how many are re-measured.
      cooldown_s: pause between trials. compare_defaults, compare_pairs: the final A/B.
      seed: of the sample and of the trial order. max_top1_drop: a faster decode is chosen only
        if its top-1 is within this fraction of the exact decode's. cores: default: this
        process's CPUs.
      out: folder for ``best.json`` / ``tune.json`` (default ``runs/tune-<UTC>-<model stem>/``),
        written unless ``write`` is false (``best.json`` not for an interrupted tune).
      on_trial: called with each Trial as it ends.
    Returns:
      TuneResult (``interrupted`` when Ctrl-C or SIGTERM stopped the search after something
      was measured).
    Raises:
      ModelError (model cannot run), DelegateError, InputError (holdout, ground truth),
      NoTimeError (not even one setting could be measured in ``max_time_s``),
      KeyboardInterrupt (interrupted before anything was measured).
    """
    opts = TuneOptions(max_time_s, sample, repeats, finalists, cooldown_s, compare_defaults,
                       compare_pairs, seed, max_top1_drop, int(cores or default_workers()))
    search = _Search(base, opts, progress, on_trial)
    interrupted = False
    # as in lpirc run: a terminal's Ctrl-C and a scheduler's SIGTERM both end the tune with
    # what was measured kept, also when started as a background job (SIGINT ignored)
    with preflight.stop_signals():
        try:
            search.run_stages()
        except KeyboardInterrupt:
            if not search.store.counted:
                raise  # nothing measured yet: nothing to keep
            interrupted = True
        finally:
            search.bar.close()
    result = search.finish(interrupted)
    if write:
        result.out_dir = write_files(result, base, out)
    return result


def _med(xs: Sequence[float]) -> float:
    return statistics.median(xs)


def _fmt_rate(r: float | None) -> str:
    return "-" if r is None else f"{r:.1f}"


def _planned_trials(space, draft, repeats, finalists, compare, pairs) -> int:
    """Trials the search expects to run (batch 8 for about half the pairs)."""
    n = sum(1 for c in space if c.batch <= 4) + sum(1 for c in space if c.batch == 8) // 2
    n += 2 if draft else 0
    n += min(max(1, finalists), n) * max(0, repeats - 1)
    n += 2 * max(1, pairs) if compare else 0
    return n


def _cpu_snapshot() -> tuple[float, float, float]:
    """(CPU seconds busy on the whole machine, CPU seconds of this process and its finished
    children, number of CPUs)."""
    t = psutil.cpu_times()
    busy = sum(t) - t.idle - getattr(t, "iowait", 0.0) - getattr(t, "guest", 0.0) \
        - getattr(t, "guest_nice", 0.0)
    own = 0.0
    for who in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN):
        r = resource.getrusage(who)
        own += r.ru_utime + r.ru_stime
    return busy, own, float(psutil.cpu_count() or 1)


def _foreign_load(a, b, wall_s: float) -> float | None:
    """Share of all CPUs that other processes used between snapshots ``a`` and ``b``."""
    if a is None or b is None or wall_s < 0.5:  # CPU times tick at 10 ms: too coarse below
        return None
    foreign = (b[0] - a[0]) - (b[1] - a[1])
    return round(min(1.0, max(0.0, foreign / (wall_s * b[2]))), 3)


def _cycle(order: Sequence[str], n: int) -> list[str]:
    """The first ``n`` names of ``order`` repeated as often as needed."""
    if not order:
        return []
    reps = -(-n // len(order))
    return (list(order) * reps)[:n]


def _read_all(root: Path, names: Sequence[str]) -> None:
    """Read the sample once so that the first trial does not pay for a cold page cache."""
    for name in names:
        try:
            with open(root / name, "rb") as f:
                while f.read(1 << 20):
                    pass
        except OSError:
            pass


__all__ = ["Candidate", "Measurements", "Row", "Trial", "TuneOptions", "TuneResult",
           "default_tune_dir", "format_summary", "format_table", "search_space", "throughput",
           "top1", "tune", "write_files"]
