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
import datetime as dt
import math
import random
import statistics
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

from lpirc import __version__, preflight
from lpirc.clock import Budget, Stopwatch
from lpirc.errors import DelegateError, InputError, ModelError, NoTimeError
from lpirc.settings import RunSettings, default_workers

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
    raw_ratio_pairs: list[float] = field(default_factory=list)  # with the load correction
    ratio_counted: int = 0  # pairs the ratio is the median of (those on a quiet machine)
    interrupted: bool = False  # Ctrl-C / SIGTERM before the search finished: tune.json only


# --- the tune ----------------------------------------------------------------------------------


def default_tune_dir(model: Path, base: Path = Path("runs")) -> Path:
    """``runs/tune-<UTC time>-<model stem>/``."""
    from lpirc.results import new_run_dir

    return new_run_dir(model, prefix="tune-", base=base)


def _open_holdout(root: Path, seed: int):
    from lpirc.holdout import open_holdout

    return open_holdout(root, seed=seed)


def _draft_fraction(root: Path, files: Sequence[str], height: int, width: int,
                    crop_fraction: float) -> float:
    """Fraction of ``files`` that the draft decode would decode at a reduced scale: JPEGs whose
    half-size central crop still covers the model input (read from the headers only)."""
    from PIL import Image

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
            from tqdm import tqdm

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


def tune(base: RunSettings, max_time_s: float = 120.0, *, sample: int | None = None,
         repeats: int = 3, finalists: int = 3, cooldown_s: float = 0.5,
         compare_defaults: bool = True, compare_pairs: int = 3, seed: int = 0,
         out: Path | None = None, max_top1_drop: float = 0.01, cores: int | None = None,
         progress: bool = True, write: bool = True,
         on_trial: Callable[[Trial], None] | None = None) -> TuneResult:
    """Find the fastest settings for ``base.model`` on this machine within ``max_time_s``.

    ``base`` carries everything not tuned (model, holdout, ground truth, preprocessing,
    delegate, the competition's ``time_limit_s`` used for the "fits" column). Writes
    ``best.json`` (``{"settings": {...}, "measurements": {...}}``, read by ``lpirc run --config``)
    and ``tune.json`` (every trial) to ``out`` (default ``runs/tune-<UTC>-<model stem>/``) unless
    ``write`` is false. Raises ModelError (model cannot run), DelegateError, InputError (holdout,
    ground truth), NoTimeError (not even one setting could be measured in ``max_time_s``).
    """
    from lpirc.pipeline import run_pipeline

    t_start = time.monotonic()
    deadline = t_start + float(max_time_s)
    rng = random.Random(seed)
    cores = int(cores or default_workers())
    notes: list[str] = []
    trials: list[Trial] = []

    def left() -> float:
        return deadline - time.monotonic()

    # --- inputs ---
    model_path = Path(base.model)
    preflight.check_model_file(model_path)
    holdout = _open_holdout(Path(base.holdout), base.seed)
    files = tuple(holdout.files)
    gt_path = preflight.ground_truth_for(base.holdout, base.ground_truth)
    gt: dict[str, int] | None = None
    if gt_path is not None:
        import scoring
        from scoring.names import label_images

        try:
            # keyed by the holdout's own names, matched by the scorer's rule (scoring.names)
            gt = label_images(scoring.read_ground_truth(gt_path), files)
        except scoring.ScoringError as e:
            raise InputError(str(e)) from None
    exclusive = preflight.check_delegate(base.delegate)
    root = Path(base.holdout)
    order = list(files)
    rng.shuffle(order)  # a fixed random sample: every trial sees the same images

    bar = _Bar(progress and not base.quiet)

    seen: dict[str, Any] = {"ready": None, "error": None}

    def measure(cand: Candidate, stage: str, names: Sequence[str], cap_s: float) -> Trial:
        settings = cand.apply(base)
        recs: list[dict] = []
        t_in = time.monotonic()
        cpu0 = _cpu_snapshot()
        clock = Stopwatch()
        budget = Budget("wall", max(0.1, cap_s), base.ms_per_image, len(names))
        outcome = run_pipeline(settings, root, tuple(names), budget, recs.extend, clock,
                               exclusive=exclusive, progress=None)
        tr = Trial(cand, stage, len(names), answered=outcome.answered + outcome.failed,
                   failed=outcome.failed, wall_s=outcome.wall_time_s,
                   startup_s=outcome.first_answer_s, status=outcome.status,
                   batch_used=(outcome.ready or {}).get("batch"))
        tr.elapsed_s = time.monotonic() - t_in
        tr.foreign_load = _foreign_load(cpu0, _cpu_snapshot(), tr.elapsed_s)
        if outcome.status == "interrupted":
            raise KeyboardInterrupt
        if outcome.error and not recs:
            kind, message = outcome.error
            raise (DelegateError if kind == "delegate" else ModelError)(message)
        if outcome.error:
            tr.note = outcome.error[1]
        if outcome.ready and seen["ready"] is None:
            seen["ready"] = outcome.ready
        if seen["error"] is None:
            seen["error"] = next((r["error"] for r in recs if r["error"]), None)
        rate, _ = throughput(recs)
        tr.images_per_s = rate if tr.answered >= MIN_ANSWERS else None
        if outcome.wall_time_s > 0 and recs:
            tr.wall_images_per_s = len(recs) / outcome.wall_time_s
        inf = [r["inference_ms"] for r in recs if r["error"] is None]
        tr.inference_ms = sum(inf) / len(inf) if inf else None
        tr.top1 = top1(recs, gt)
        if tr.images_per_s is not None:
            tr.adjusted_images_per_s = tr.images_per_s / (1.0 - min(tr.foreign_load or 0.0, 0.8))
        if tr.batch_used is not None and tr.batch_used != cand.batch:
            tr.note = f"ran at batch {tr.batch_used}"
        trials.append(tr)
        if on_trial is not None:
            on_trial(tr)
        return tr

    # what the report reads, bound before the search so that a Ctrl-C in its middle still
    # leaves a consistent (partial) result
    rates: dict[Candidate, list[float]] = {}
    best: Candidate | None = None
    ratio: float | None = None
    ratio_pairs: list[float] = []
    raw_pairs: list[float] = []
    counted: list[float] = []
    challenger: Candidate | None = None
    exact_top1: float | None = None
    interrupted = False
    # as in lpirc run: a terminal's Ctrl-C and a scheduler's SIGTERM both end the tune with
    # what was measured kept, also when started as a background job (SIGINT ignored)
    handlers = _catch_stop_signals()
    try:
        # --- 1. probe: does it run, can its batch be resized ---
        big = 1 if exclusive else max(BATCHES)
        probe_names = order[:max(1, min(len(order), max(PROBE_IMAGES, big * 2)))]
        bar.show("probing the model")
        probe = measure(Candidate(1, 1, big), "probe", probe_names, max(0.5, left()))
        if probe.answered == 0:
            raise NoTimeError(f"--max-time-s {max_time_s:g}: too short to load and run "
                              f"{model_path.name} even once")
        if probe.answered == probe.failed:
            raise InputError(f"{root}: none of the first {len(probe_names)} images could be "
                             f"decoded ({seen['error']})")
        batch_ok = probe.batch_used == big
        if exclusive:
            batches: tuple[int, ...] = (1,)
            notes.append(f"delegate {base.delegate} allows one inference process: tuning its "
                         "decode threads (the workers setting) only")
        elif batch_ok:
            batches = BATCHES
        else:
            batches = (1,)
            notes.append(f"batch 4 and 8 skipped: {model_path.name} cannot resize its batch "
                         f"(it pins batch 1, e.g. a constant reshape)")
        shape = (((seen["ready"] or {}).get("model") or {}).get("input") or {}).get("shape")
        ready_shape = (int(shape[1]), int(shape[2])) if shape and len(shape) >= 3 else (224, 224)

        # --- 2. sample, page cache, warm-up ---
        default = Candidate.default()
        if exclusive:
            default = Candidate(default.workers, 1, 1)
        space = search_space(cores, batches, exclusive)
        frac = _draft_fraction(root, sorted(set(order[:sample or MAX_SAMPLE])), ready_shape[0],
                               ready_shape[1], base.crop_fraction)
        try_draft = frac >= DRAFT_MIN_FRACTION
        n_planned = _planned_trials(space, try_draft, repeats, finalists, compare_defaults,
                                    compare_pairs)
        n = sample or 200
        names = _cycle(order, min(n, 200))
        _read_all(root, order[:min(len(order), sample or MAX_SAMPLE)])
        bar.show("warm-up")
        warm = measure(default, "warmup", names, max(0.5, left()))
        if warm.images_per_s is None and warm.answered == 0:
            raise NoTimeError(f"--max-time-s {max_time_s:g}: too short to measure even one "
                              f"setting (the warm-up answered nothing)")
        warm_rate = warm.images_per_s or (warm.wall_images_per_s or 1.0)
        startup = warm.startup_s or 0.5
        # what a trial costs beyond its answers: start-up, stop, cooldown
        overhead = max(startup, warm.elapsed_s - len(names) / warm_rate) + cooldown_s
        if sample is None:
            # size the sample so the planned trials fit what is left; a small holdout is
            # cycled through more than once so that a trial lasts long enough to measure
            per_trial = left() / max(1, n_planned) - overhead
            want = int(max(0.0, per_trial) * warm_rate * 0.5)  # the load may double a trial
            floor = max(32, 4 * max(BATCHES) * (cores + 1))
            n = max(floor, min(MAX_SAMPLE, want))
        names = _cycle(order, n)
        if n > len(order):
            notes.append(f"sample: the {len(order)} holdout images cycled to {n} answers per "
                         f"trial")
        bar.plan(n_planned)

        tops: dict[Candidate, list[float]] = {}
        infs: dict[Candidate, list[float]] = {}
        meas: dict[Candidate, list[Trial]] = {}
        raw: dict[Candidate, list[float]] = {}
        starts: dict[Candidate, list[float]] = {}

        def est(c: Candidate) -> float:
            """Expected seconds for one trial of ``c`` (pessimistic before it was measured)."""
            r = statistics.median(raw[c]) if raw.get(c) else warm_rate * 0.6
            done = [t for t in trials if t.images_per_s and t.stage != "probe"]
            extra = (statistics.median(t.elapsed_s - t.answered / t.images_per_s for t in done)
                     if done else overhead - cooldown_s)
            return max(0.0, extra) + len(names) / max(r, 1e-6) + cooldown_s

        def goodness(c: Candidate) -> tuple[float, float]:
            """Higher is better: images/s (wall clock), or first minus the invoke ms per image
            when the run's budget is summed inference time (Track 1 / OVIC)."""
            if base.clock == "inference":
                inf = [t.inference_ms for t in quiet(c) if t.inference_ms is not None]
                return (-_med(inf) if inf else -math.inf, _med(used(c)))
            return (_med(used(c)), 0.0)

        def quiet(c: Candidate) -> list[Trial]:
            """The measurements of ``c`` that count: those taken on a quiet machine if there
            are any, else those under a moderate load, else all."""
            # the interleaved A/B trials answer a different question (best vs defaults, as a
            # ratio); leaving them out keeps the table's order the order the winner came from
            mine = ([t for t in meas.get(c, []) if t.stage != "compare"]
                    or meas.get(c, []))
            calm = [t for t in mine if t.foreign_load is None or t.foreign_load <= NOISY_LOAD]
            fair = [t for t in mine if t.foreign_load is None or t.foreign_load <= MAX_LOAD]
            return calm or fair or mine

        def used(c: Candidate) -> list[float]:
            """Rates of the trials that count: as measured on a quiet machine, else corrected
            for the share of the CPUs other processes took (a first-order estimate)."""
            return [t.images_per_s if t.foreign_load is None or t.foreign_load <= NOISY_LOAD
                    else t.adjusted_images_per_s for t in quiet(c)]

        def reserve() -> float:
            """Time kept for the A/B comparison at the end: one pair, with some slack."""
            if not compare_defaults:
                return 0.0
            d = est(default) if rates.get(default) else overhead + len(names) / warm_rate
            lead = max(rates, key=goodness) if rates else default
            return 1.3 * (d + min(d, est(lead)))

        def run_one(c: Candidate, stage: str, keep_reserve: bool = True) -> Trial | None:
            room = left() - (reserve() if keep_reserve else 0.0)
            if stage == "screen" and c != default and default in first and default not in tried:
                # the defaults are the baseline of the table and of the ratio: whatever the
                # shuffled order, they keep their screen slot when time runs short
                room -= est(default)
            if room < est(c):
                notes_skipped.append(f"{c.label} ({stage})")
                bar.step(f"{c.label}: skipped, no time")
                return None
            tr = measure(c, stage, names, min(room, 3 * est(c)))
            tried.add(c)
            if tr.images_per_s is not None:
                rates.setdefault(c, []).append(tr.adjusted_images_per_s)
                raw.setdefault(c, []).append(tr.images_per_s)
                meas.setdefault(c, []).append(tr)
                if tr.startup_s is not None:
                    starts.setdefault(c, []).append(tr.startup_s)
                if tr.inference_ms is not None:
                    infs.setdefault(c, []).append(tr.inference_ms)
                # a trial cut short by its time cap still answered a prefix of the same
                # sample: its top-1 over those answers is a measurement (else a setting on a
                # loaded machine would show no top-1 and its accuracy would go unchecked)
                if tr.top1 is not None:
                    tops.setdefault(c, []).append(tr.top1)
            best_now = max(rates, key=goodness) if rates else None
            bar.step(f"{c.label}: {_fmt_rate(tr.images_per_s)} img/s"
                     + (f" | best {best_now.label}" if best_now else ""))
            if cooldown_s > 0 and left() > cooldown_s:
                time.sleep(cooldown_s)
            return tr

        notes_skipped: list[str] = []
        tried: set[Candidate] = set()

        def eligible(c: Candidate) -> bool:
            if c.decode == "exact" or exact_top1 is None:
                return True
            # a faster decode whose accuracy was not measured cannot be shown to hold it
            return bool(tops.get(c)) and _med(tops[c]) >= exact_top1 - max_top1_drop

        # --- 3. screen ---
        first = [c for c in space if c.batch <= 4]
        rng.shuffle(first)
        for c in first:
            run_one(c, "screen")
        if 8 in batches:
            later = []
            for c in space:
                if c.batch != 8:
                    continue
                b1, b4 = (dataclasses.replace(c, batch=b) for b in (1, 4))
                if rates.get(b4) and rates.get(b1) and _med(used(b4)) > _med(used(b1)):
                    later.append(c)
            slower, unmeasured = [], []
            for c in space:
                if c.batch == 8 and c not in later:
                    b1, b4 = (dataclasses.replace(c, batch=b) for b in (1, 4))
                    (slower if rates.get(b1) and rates.get(b4) else unmeasured).append(c)
            if slower:
                notes.append("batch 8 skipped for " + ", ".join(f"w{c.workers} t{c.threads}"
                                                                for c in slower)
                             + ": batch 4 was no faster than batch 1 there")
            if unmeasured:
                # saying "no faster" of a batch that was never measured would be a guess
                notes.append("batch 8 skipped for " + ", ".join(f"w{c.workers} t{c.threads}"
                                                                for c in unmeasured)
                             + ": batch 1 or 4 was not measured there (no time)")
            rng.shuffle(later)
            for c in later:
                run_one(c, "screen")
        if not rates:
            raise NoTimeError(f"--max-time-s {max_time_s:g}: too short to measure even one "
                              f"setting (each needs about {est(default):.1f} s after a "
                              f"{time.monotonic() - t_start:.1f} s warm-up)")

        # --- 4. draft decode ---
        exact_top1 = _exact_top1(tops)
        if try_draft:
            ranked = sorted(rates, key=goodness, reverse=True)[:2]
            drafts = [dataclasses.replace(c, decode="draft") for c in ranked]
            rng.shuffle(drafts)
            for c in drafts:
                run_one(c, "draft")
        else:
            notes.append(f"draft decode skipped: only {frac:.0%} of the images are large enough "
                         f"for a reduced-scale JPEG decode to {ready_shape[1]}x{ready_shape[0]}")

        # --- 5. final: the best few again ---
        pool = sorted((c for c in rates if eligible(c)), key=goodness, reverse=True)
        finals = pool[:max(1, finalists)]
        for _ in range(max(0, repeats - 1)):
            rnd = list(finals)
            rng.shuffle(rnd)
            for c in rnd:
                run_one(c, "final")
        # over the whole pool, not just the finalists, so that the winner is the table's
        # first eligible row even when the re-measured finalists fell back
        best = max(pool, key=goodness) if pool else default

        # --- 6. compare with the defaults, interleaved ---
        pair_loads: list[float] = []  # the larger foreign load of the pair's two trials
        if compare_defaults and best != default:
            for i in range(max(1, compare_pairs)):
                need = est(best) + est(default)
                if left() < need:
                    break
                a = run_one(best, "compare", keep_reserve=False)
                b = run_one(default, "compare", keep_reserve=False)
                if a and b and a.images_per_s and b.images_per_s:
                    # adjacent trials share the machine's load: the raw ratio is the direct one
                    ratio_pairs.append(a.images_per_s / b.images_per_s)
                    raw_pairs.append(a.adjusted_images_per_s / b.adjusted_images_per_s)
                    pair_loads.append(max(a.foreign_load or 0.0, b.foreign_load or 0.0))
            if not ratio_pairs:
                notes.append("no time left to compare best with the defaults")
        # a pair whose trials met different loads is no direct comparison (a burst of other
        # work during one trial of two pairs moved the median from 1.02 to 1.47): like the
        # table, count the pairs taken on a quiet machine when there are any
        counted = ([x for x, ld in zip(ratio_pairs, pair_loads) if ld <= NOISY_LOAD]
                   or [x for x, ld in zip(ratio_pairs, pair_loads) if ld <= MAX_LOAD]
                   or ratio_pairs)
        ratio = statistics.median(counted) if counted else (
            1.0 if compare_defaults and best == default else None)
        challenger = None
        if ratio is not None and ratio < 1.0:
            # the interleaved A/B is the most direct measurement there is: trust it
            challenger, best = best, default
            notes.append(f"{challenger.label} measured {ratio:.2f}x the defaults in the "
                         f"interleaved comparison: the defaults are kept")
        elif compare_defaults and best == default:
            notes.append("the best settings are the defaults")
        loads = [t.foreign_load for t in trials if t.foreign_load is not None]
        if loads and statistics.median(loads) > NOISY_LOAD:
            notes.append(f"other processes kept {statistics.median(loads):.0%} of the CPUs busy "
                         f"during a typical trial (max {max(loads):.0%}): images/s are corrected "
                         f"for it, but tune again on a quiet machine for a firm answer")
        if notes_skipped:
            notes.append(f"{len(notes_skipped)} trial(s) skipped for lack of time: "
                         + ", ".join(notes_skipped[:6]) + ("..." if len(notes_skipped) > 6 else ""))
    except KeyboardInterrupt:
        if not rates:
            raise  # nothing measured yet: nothing to keep
        # keep what was measured (tune.json); no best.json from an unfinished search
        interrupted = True
        if exact_top1 is None:
            exact_top1 = _exact_top1(tops)
        best = max((c for c in rates if eligible(c)), key=goodness, default=default)
        ratio, ratio_pairs, raw_pairs, counted, challenger = None, [], [], [], None
        notes.append(f"interrupted after {len(trials)} pipeline runs: the table holds what was "
                     f"measured; best.json was not written")
    finally:
        bar.close()
        _restore_signals(handlers)

    # the table's rates come from the search (screen, draft, final); a setting measured only in
    # the A/B comparison has no row, so that the winner is always the first eligible row or
    # the defaults (when they won the A/B, which the ratio line reports)
    ranked = [c for c in rates if any(t.stage != "compare" for t in meas.get(c, []))]
    loads_used = {c: [t.foreign_load for t in quiet(c) if t.foreign_load is not None]
                  for c in ranked}
    rows = _rows({c: used(c) for c in ranked},
                 {c: [t.startup_s for t in quiet(c) if t.startup_s is not None] for c in ranked},
                 tops,
                 {c: [t.inference_ms for t in quiet(c) if t.inference_ms is not None]
                  for c in ranked},
                 eligible, len(files), base)
    for r in rows:
        ld = loads_used.get(r.candidate)
        r.load = round(_med(ld), 3) if ld else None
    result = TuneResult(out_dir=None, best=best, default=default, rows=rows, trials=trials,
                        notes=notes, sample_size=len(names), holdout_size=len(files),
                        time_limit_s=base.time_limit_s, elapsed_s=time.monotonic() - t_start,
                        ratio=ratio, ratio_pairs=ratio_pairs, ratio_counted=len(counted),
                        cores=cores,
                        challenger=challenger, raw_ratio_pairs=raw_pairs,
                        max_time_s=float(max_time_s), clock=base.clock,
                        ms_per_image=base.ms_per_image, interrupted=interrupted)
    if write:
        result.out_dir = _write(result, base, out, holdout, gt_path, warm, probe)
    return result


def _catch_stop_signals() -> dict:
    """SIGTERM raises KeyboardInterrupt; an ignored SIGINT gets Python's handler back. Returns
    the handlers to restore (none off the main thread, where signals cannot be set)."""
    import signal
    import threading

    if threading.current_thread() is not threading.main_thread():
        return {}

    def on_term(signum, frame):
        raise KeyboardInterrupt

    old = {signal.SIGTERM: signal.signal(signal.SIGTERM, on_term)}
    if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
        old[signal.SIGINT] = signal.signal(signal.SIGINT, signal.default_int_handler)
    return old


def _restore_signals(old: dict) -> None:
    import signal

    for sig, handler in old.items():
        signal.signal(sig, handler)


def _med(xs: Sequence[float]) -> float:
    return statistics.median(xs)


def _fmt_rate(r: float | None) -> str:
    return "-" if r is None else f"{r:.1f}"


def _exact_top1(tops: dict[Candidate, list[float]]) -> float | None:
    vals = [_med(v) for c, v in tops.items() if c.decode == "exact" and v]
    return statistics.median(vals) if vals else None


def _planned_trials(space, draft, repeats, finalists, compare, pairs) -> int:
    """Trials the search expects to run (batch 8 for about half the pairs)."""
    n = sum(1 for c in space if c.batch <= 4) + sum(1 for c in space if c.batch == 8) // 2
    n += 2 if draft else 0
    n += min(max(1, finalists), n) * max(0, repeats - 1)
    n += 2 * max(1, pairs) if compare else 0
    return n


def _cpu_snapshot() -> tuple[float, float, float] | None:
    """(CPU seconds busy on the whole machine, CPU seconds of this process and its finished
    children, number of CPUs); None without psutil."""
    try:
        import resource

        import psutil
    except ImportError:
        return None
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


def _rows(rates, starts, tops, infs, eligible, full: int, base: RunSettings) -> list[Row]:
    rows = []
    for c, ms in rates.items():
        med = _med(ms)
        spread = (max(ms) - min(ms)) / 2 / med if len(ms) > 1 and med > 0 else None
        st = _med(starts[c]) if starts.get(c) else 0.0
        proj = st + full / med if med > 0 else math.inf
        fits = proj <= base.time_limit_s
        if base.clock == "inference":  # Track 1 / OVIC: summed invoke time per image counts too
            fits = fits and bool(infs.get(c)) and _med(infs[c]) <= base.ms_per_image
        t1 = _med(tops[c]) if tops.get(c) else None
        inf = _med(infs[c]) if infs.get(c) else None
        rows.append(Row(c, med, spread, len(ms), t1, st, proj, fits, eligible(c), list(ms),
                        inference_ms=inf))
    if base.clock == "inference":  # the budget is summed invoke time: least ms per image first
        rows.sort(key=lambda r: (r.inference_ms is None, r.inference_ms or 0.0, -r.images_per_s))
    else:
        rows.sort(key=lambda r: -r.images_per_s)
    return rows


def _write(result: TuneResult, base: RunSettings, out: Path | None, holdout, gt_path,
           warm: Trial, probe: Trial) -> Path:
    from lpirc.machine import machine_info
    from lpirc.results import write_json

    out_dir = Path(out) if out else default_tune_dir(Path(base.model))
    out_dir.mkdir(parents=True, exist_ok=True)
    best_row = next((r for r in result.rows if r.candidate == result.best), None)
    default_row = next((r for r in result.rows if r.candidate == result.default), None)
    measured = {
        "lpirc_version": __version__,
        "created_utc": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "model": str(Path(base.model).resolve()),
        "holdout": str(Path(base.holdout).resolve()),
        "holdout_images": result.holdout_size,
        "sample_images": result.sample_size,
        "ground_truth": str(Path(gt_path).resolve()) if gt_path else None,
        "cores": result.cores,
        "time_limit_s": base.time_limit_s,
        "images_per_s_definition": "answers after every worker's first chunk / time from then "
                                   "to the last answer (start-up excluded); projected_s adds "
                                   "the measured start-up back",
        "best": best_row.to_json() if best_row else None,
        "default": default_row.to_json() if default_row else None,
        "best_vs_default_ratio": result.ratio,
        "ratio_pairs": [round(x, 4) for x in result.ratio_pairs],
        "ratio_pairs_counted": result.ratio_counted,
        "load_corrected_ratio_pairs": [round(x, 4) for x in result.raw_ratio_pairs],
        "table": [r.to_json() for r in result.rows],
        "notes": result.notes,
        "interrupted": result.interrupted,
    }
    if not result.interrupted:
        write_json(out_dir / "best.json", {"settings": result.best.settings(),
                                           "measurements": measured})
    write_json(out_dir / "tune.json", {
        **measured,
        "base_settings": base.to_json(),
        "max_time_s": result.max_time_s,
        "elapsed_s": round(result.elapsed_s, 2),
        "machine": machine_info(),
        "probe": probe.to_json(),
        "warmup": warm.to_json(),
        "trials": [t.to_json() for t in result.trials],
    })
    return out_dir


# --- output ------------------------------------------------------------------------------------


def format_table(result: TuneResult) -> str:
    """The table ``lpirc tune`` prints, fastest first."""
    lim = result.time_limit_s
    head = ["", "workers", "threads", "batch", "decode", "images/s", "spread", "n", "load",
            "invoke ms", "top-1", f"{result.holdout_size} images", f"fits {lim:g} s"
            + (f" + {result.ms_per_image:g} ms" if result.clock == "inference" else "")]
    body = []
    for r in result.rows:
        mark = "*" if r.candidate == result.best else ("d" if r.candidate == result.default else "")
        if r.candidate == result.best and r.candidate == result.default:
            mark = "*d"
        body.append([
            mark, str(r.candidate.workers), str(r.candidate.threads), str(r.candidate.batch),
            r.candidate.decode + ("" if r.eligible else " (acc)"),
            f"{r.images_per_s:.1f}",
            "-" if r.spread is None else f"±{r.spread * 100:.1f}%",
            str(r.n),
            "-" if r.load is None else f"{r.load:.0%}",
            "-" if r.inference_ms is None else f"{r.inference_ms:.2f}",
            "-" if r.top1 is None else f"{r.top1 * 100:.1f}%",
            f"{r.projected_s:.1f} s",
            "yes" if r.fits else "NO",
        ])
    widths = [max(len(x) for x in col) for col in zip(head, *body)]
    right = {5, 6, 7, 8, 9, 10, 11}

    def line(cells):
        return "  ".join(c.rjust(w) if i in right else c.ljust(w)
                         for i, (c, w) in enumerate(zip(cells, widths))).rstrip()

    out = [line(head)] + [line(b) for b in body]
    out.append("* best (chosen)   d defaults of lpirc run   (acc) top-1 dropped too much to choose")
    return "\n".join(out)


def format_summary(result: TuneResult) -> str:
    lines = [format_table(result), ""]
    lines.append(f"sample          {result.sample_size} answers per trial from "
                 f"{min(result.sample_size, result.holdout_size)} of the {result.holdout_size} "
                 f"holdout images; {len(result.trials)} pipeline runs in "
                 f"{result.elapsed_s:.0f} s on {result.cores} cores")
    lines.append("images/s        steady state (worker start-up excluded; the projected time "
                 "adds it back); median of the trials on a quiet machine, else of trials "
                 "divided by (1 - the CPU share other processes took: the load column)")
    lines.append("invoke ms       model time per image (what --clock inference sums)")
    if result.clock == "inference":
        lines.append("ranked by       invoke ms per image (--clock inference sums invoke time)")
    for n in result.notes:
        lines.append(f"note            {n}")
    lines.append(f"{'best so far' if result.interrupted else 'best':<16}{result.best.label}")
    k = len(result.ratio_pairs)
    of = (f"median of {result.ratio_counted} of {k} interleaved pairs, the others taken while "
          f"other processes used more of the CPUs" if 0 < result.ratio_counted < k
          else f"median of {k}, interleaved")
    if result.challenger is not None:
        lines.append(f"best/default images/s ratio: 1.00 (the defaults are kept: "
                     f"{result.challenger.label} measured {result.ratio:.2f}x them, {of})")
    elif result.ratio is not None:
        lines.append(f"best/default images/s ratio: {result.ratio:.2f} "
                     + (f"({of})" if k else "(best is the default)"))
    elif result.interrupted:
        lines.append("best/default images/s ratio: not measured (interrupted)")
    else:
        lines.append("best/default images/s ratio: not measured (--no-compare-defaults, or no "
                     "time left for it)")
    if result.out_dir is not None and result.interrupted:
        lines.append(f"wrote           {result.out_dir / 'tune.json'} (interrupted: no best.json)")
    elif result.out_dir is not None:
        lines.append(f"wrote           {result.out_dir / 'best.json'} and "
                     f"{result.out_dir / 'tune.json'}")
        lines.append(f"use it          lpirc run --config {result.out_dir / 'best.json'} ...")
    return "\n".join(lines)


__all__ = ["Candidate", "Trial", "Row", "TuneResult", "search_space", "throughput", "top1",
           "tune", "format_table", "format_summary", "default_tune_dir"]
