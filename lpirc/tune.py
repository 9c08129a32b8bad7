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
                  exist) is printed as "best/default images/s ratio". The winner is then
                  chosen by :func:`lpirc.tune_choice.choose_winner`, a pure function of the
                  table's fastest setting and those pairs: on a quiet machine the defaults are
                  kept should they win this direct comparison; on a busy one (typical foreign
                  load above 15 %) they are kept unless the fastest setting beats them by
                  ``busy_margin`` (10 %) in every counted pair, and one note says which.
    Each stage is a function that returns a frozen result (``_Probed``, ``_Plan``,
    ``_Screened``, ...) read by the next; the only mutable state is the trial log
    (:class:`Measurements`) that ``_Lab`` appends each pipeline run to.
    Projection: a row's "N images" column is the range a full run should take on this machine:
    from the fastest start-up and rate (measured or load-corrected: the machine to itself) to
    the slowest start-up and raw rate measured (as busy as the busiest trial of that setting;
    more load than that makes a run slower still); ``fits`` uses its upper end.
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
import random
import resource
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, Sequence

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
from lpirc.tune_choice import Decision, Pair, choose_winner
from lpirc.tune_data import Candidate, Measurements, Row, Trial, TuneOptions, TuneResult
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


# --- the search, in stages: each returns a frozen result the next one reads -------------------


@dataclass(frozen=True)
class _Setup:
    """What every stage reads, fixed before the first trial: the settings, the holdout, its
    shuffled order (a fixed random sample: every trial sees the same images), the labels, the
    defaults and the deadline (``time.monotonic()`` seconds)."""

    base: RunSettings
    opts: TuneOptions
    model_path: Path
    root: Path
    files: tuple[str, ...]
    order: tuple[str, ...]
    ground_truth: Path | None
    truth: Mapping[str, int] | None
    exclusive: bool
    default: Candidate
    t_start: float
    deadline: float


@dataclass(frozen=True)
class _Probed:
    """Stage 1: the probe's trial, its worker's report, the batches worth trying."""

    trial: Trial
    ready: WorkerReady | None
    batches: tuple[int, ...]
    notes: tuple[str, ...]


@dataclass(frozen=True)
class _Plan:
    """Stage 2: the warm-up's trial and what it sized: the search space, the sample (``names``,
    the answers per trial), the defaults' rate and a trial's overhead in seconds (start-up,
    stop, cooldown), whether the draft decode is worth a try."""

    warm_trial: Trial
    space: tuple[Candidate, ...]
    names: tuple[str, ...]
    warm_rate: float
    overhead: float
    try_draft: bool
    draft_share: float
    input_hw: tuple[int, int]
    notes: tuple[str, ...]


@dataclass(frozen=True)
class _Screened:
    """Stage 3: the candidates screened (in the order run) and the exact decode's top-1, fixed
    from then on (what a faster decode's top-1 is held to)."""

    screened: tuple[Candidate, ...]
    exact_top1: float | None
    notes: tuple[str, ...]


def _setup(base: RunSettings, opts: TuneOptions, rng: random.Random) -> _Setup:
    """Check the model, the holdout, the labels and the delegate before any trial."""
    t_start = time.monotonic()
    model_path = preflight.check_model_file(base.model)
    root = Path(base.holdout)
    files = open_holdout(root, seed=base.seed).files
    ground_truth = preflight.ground_truth_for(root, base.ground_truth)
    truth = None
    if ground_truth is not None:
        # keyed by the holdout's own names, matched by the scorer's rule
        truth = label_images(scoring.read_ground_truth(ground_truth), files)
    exclusive = preflight.check_delegate(base.delegate)
    order = list(files)
    rng.shuffle(order)
    default = Candidate.default()
    if exclusive:
        default = Candidate(default.workers, 1, 1)
    return _Setup(base, opts, model_path, root, tuple(files), tuple(order), ground_truth, truth,
                  exclusive, default, t_start, t_start + float(opts.max_time_s))


class _Lab:
    """Runs the trials and logs them: the one mutable part of a tune (its trial log
    :class:`Measurements`, its random order, its progress bar). The stages' decisions are the
    frozen results they return."""

    def __init__(self, setup: _Setup, rng: random.Random, progress: bool,
                 on_trial: Callable[[Trial], None] | None) -> None:
        self.setup = setup
        self.rng = rng  # the stream that shuffled the sample, then orders the trials
        self.bar = _Bar(progress and not setup.base.quiet)
        self.on_trial = on_trial
        self.store = Measurements(clock=setup.base.clock)

    def seconds_left(self) -> float:
        return self.setup.deadline - time.monotonic()

    def measure(self, cand: Candidate, stage: str, names: Sequence[str], cap_s: float
                ) -> tuple[Trial, WorkerReady | None, str | None]:
        """One pipeline run of ``cand`` over ``names`` within ``cap_s`` seconds: (the trial,
        its worker's report, the first image error)."""
        s = self.setup
        recs: list[dict] = []
        t_in = time.monotonic()
        cpu0 = _cpu_snapshot()
        budget = Budget("wall", max(0.1, cap_s), s.base.ms_per_image, len(names))
        outcome = pipeline.run_pipeline(cand.apply(s.base), s.root, tuple(names), budget,
                                        recs.extend, Stopwatch(), exclusive=s.exclusive)
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
        _fill_trial(tr, outcome, recs, s.truth)
        self.store.add(tr)
        if self.on_trial is not None:
            self.on_trial(tr)
        return tr, outcome.ready, next((r["error"] for r in recs if r["error"]), None)


def _estimate_s(lab: _Lab, plan: _Plan, c: Candidate) -> float:
    """Expected seconds for one trial of ``c`` (pessimistic before it was measured)."""
    raw = lab.store.rates(c)
    r = statistics.median(raw) if raw else plan.warm_rate * 0.6
    done = [t for t in lab.store.trials if t.images_per_s and t.stage != "probe"]
    cooldown = lab.setup.opts.cooldown_s
    extra = (statistics.median(t.elapsed_s - t.answered / t.images_per_s for t in done)
             if done else plan.overhead - cooldown)
    return max(0.0, extra) + len(plan.names) / max(r, 1e-6) + cooldown


def _reserve_s(lab: _Lab, plan: _Plan) -> float:
    """Time kept for the A/B comparison at the end: one pair, with some slack."""
    if not lab.setup.opts.compare_defaults:
        return 0.0
    default = lab.setup.default
    d = (_estimate_s(lab, plan, default) if default in lab.store.counted
         else plan.overhead + len(plan.names) / plan.warm_rate)
    ranked = lab.store.ranked()
    lead = ranked[0] if ranked else default
    return 1.3 * (d + min(d, _estimate_s(lab, plan, lead)))


def _run_one(lab: _Lab, plan: _Plan, c: Candidate, stage: str, keep_reserve: bool = True,
             screened: Sequence[Candidate] = ()) -> Trial | None:
    """Measure ``c`` if it fits the time left (keeping the A/B's reserve, and in the screen
    the defaults' slot: they are the baseline of the table and of the ratio)."""
    default = lab.setup.default
    room = lab.seconds_left() - (_reserve_s(lab, plan) if keep_reserve else 0.0)
    if c != default and default in screened and default not in lab.store.tried:
        room -= _estimate_s(lab, plan, default)
    est = _estimate_s(lab, plan, c)
    if room < est:
        lab.store.skipped.append(f"{c.label} ({stage})")
        lab.bar.step(f"{c.label}: skipped, no time")
        return None
    tr, _, _ = lab.measure(c, stage, plan.names, min(room, 3 * est))
    ranked = lab.store.ranked()
    lab.bar.step(f"{c.label}: {_fmt_rate(tr.images_per_s)} img/s"
                 + (f" | best {ranked[0].label}" if ranked else ""))
    cooldown = lab.setup.opts.cooldown_s
    if cooldown > 0 and lab.seconds_left() > cooldown:
        time.sleep(cooldown)
    return tr


def _eligible(store: Measurements, exact_top1: float | None, max_drop: float
              ) -> Callable[[Candidate], bool]:
    """A faster decode counts only if its top-1 was measured and holds within ``max_drop`` of
    the exact decode's (everything counts before the exact decode's top-1 is known)."""
    def ok(c: Candidate) -> bool:
        if c.decode == "exact" or exact_top1 is None:
            return True
        tops = store.tops(c)
        return bool(tops) and _med(tops) >= exact_top1 - max_drop
    return ok


def _probe(lab: _Lab) -> _Probed:
    """1. One worker at the largest batch on a few images: does it run, can its batch be
    resized."""
    s = lab.setup
    big = 1 if s.exclusive else max(BATCHES)
    names = s.order[:max(1, min(len(s.order), max(PROBE_IMAGES, big * 2)))]
    lab.bar.show("probing the model")
    tr, ready, error = lab.measure(Candidate(1, 1, big), "probe", names,
                                   max(0.5, lab.seconds_left()))
    if tr.answered == 0:
        raise NoTimeError(f"--max-time-s {s.opts.max_time_s:g}: too short to load and "
                          f"run {s.model_path.name} even once")
    if tr.answered == tr.failed:
        raise InputError(f"{s.root}: none of the first {len(names)} images could be "
                         f"decoded ({error})")
    notes = list(ready.answer_notes) if ready else []  # as lpirc run notes them
    batches: tuple[int, ...] = (1,)
    if s.exclusive:
        notes.append(f"delegate {s.base.delegate} allows one inference process: "
                     "tuning its decode threads (the workers setting) only")
    elif tr.batch_used == big:
        batches = BATCHES
    else:
        notes.append(f"batch 4 and 8 skipped: {s.model_path.name} cannot resize its "
                     "batch (it pins batch 1, e.g. a constant reshape)")
    return _Probed(tr, ready, batches, tuple(notes))


def _warm_up(lab: _Lab, probed: _Probed) -> _Plan:
    """2. Read the sample once (page cache), run the defaults once (not counted), and size the
    sample from their speed so that the planned trials fit the time."""
    s, o = lab.setup, lab.setup.opts
    space = tuple(search_space(o.cores, probed.batches, s.exclusive))
    hw = (probed.ready.input_hw if probed.ready else None) or (224, 224)
    share = _draft_fraction(s.root, sorted(set(s.order[:o.sample or MAX_SAMPLE])), hw[0], hw[1],
                            s.base.crop_fraction)
    try_draft = share >= DRAFT_MIN_FRACTION
    planned = _planned_trials(space, try_draft, o.repeats, o.finalists, o.compare_defaults,
                              o.compare_pairs)
    names = _cycle(s.order, min(o.sample or 200, 200))
    _read_all(s.root, s.order[:min(len(s.order), o.sample or MAX_SAMPLE)])
    lab.bar.show("warm-up")
    warm, _, _ = lab.measure(s.default, "warmup", names, max(0.5, lab.seconds_left()))
    if warm.images_per_s is None and warm.answered == 0:
        raise NoTimeError(f"--max-time-s {o.max_time_s:g}: too short to measure even one "
                          "setting (the warm-up answered nothing)")
    rate = warm.images_per_s or (warm.wall_images_per_s or 1.0)
    # what a trial costs beyond its answers: start-up, stop, cooldown
    overhead = max(warm.startup_s or 0.5, warm.elapsed_s - len(names) / rate) + o.cooldown_s
    n = o.sample or 200
    if o.sample is None:
        # a small holdout is cycled through more than once so that a trial lasts long
        # enough to measure; the load may double a trial, hence the 0.5
        per_trial = lab.seconds_left() / max(1, planned) - overhead
        want = int(max(0.0, per_trial) * rate * 0.5)
        n = max(max(32, 4 * max(BATCHES) * (o.cores + 1)), min(MAX_SAMPLE, want))
    notes = ((f"sample: the {len(s.order)} holdout images cycled to {n} answers per trial",)
             if n > len(s.order) else ())
    lab.bar.plan(planned)
    return _Plan(warm, space, tuple(_cycle(s.order, n)), rate, overhead, try_draft, share,
                 hw, notes)


def _screen(lab: _Lab, plan: _Plan) -> _Screened:
    """3. Every point of the search space at batch 1 and 4, shuffled, once each; batch 8 only
    where batch 4 beat batch 1."""
    screened = [c for c in plan.space if c.batch <= 4]
    lab.rng.shuffle(screened)
    for c in screened:
        _run_one(lab, plan, c, "screen", screened=screened)
    notes: tuple[str, ...] = ()
    if any(c.batch == 8 for c in plan.space):
        notes = _screen_batch_8(lab, plan)
    if not lab.store.counted:
        raise NoTimeError(f"--max-time-s {lab.setup.opts.max_time_s:g}: too short to measure "
                          f"even one setting (each needs about "
                          f"{_estimate_s(lab, plan, lab.setup.default):.1f} s after a "
                          f"{time.monotonic() - lab.setup.t_start:.1f} s warm-up)")
    return _Screened(tuple(screened), lab.store.exact_top1(), notes)


def _screen_batch_8(lab: _Lab, plan: _Plan) -> tuple[str, ...]:
    store = lab.store
    later, slower, unmeasured = [], [], []
    for c in (c for c in plan.space if c.batch == 8):
        b1, b4 = (dataclasses.replace(c, batch=b) for b in (1, 4))
        if b1 in store.counted and b4 in store.counted:
            faster = _med(store.used(b4)) > _med(store.used(b1))
            (later if faster else slower).append(c)
        else:
            unmeasured.append(c)
    notes = []
    if slower:
        notes.append("batch 8 skipped for " + ", ".join(f"w{c.workers} t{c.threads}"
                                                       for c in slower)
                     + ": batch 4 was no faster than batch 1 there")
    if unmeasured:
        # saying "no faster" of a batch that was never measured would be a guess
        notes.append("batch 8 skipped for " + ", ".join(f"w{c.workers} t{c.threads}"
                                                       for c in unmeasured)
                     + ": batch 1 or 4 was not measured there (no time)")
    lab.rng.shuffle(later)
    for c in later:
        _run_one(lab, plan, c, "screen")
    return tuple(notes)


def _draft(lab: _Lab, plan: _Plan) -> tuple[str, ...]:
    """4. The best two again with the JPEG draft decode, when enough images are large enough
    for it to decode at a reduced scale; returns its notes."""
    if not plan.try_draft:
        hw = plan.input_hw
        return (f"draft decode skipped: only {plan.draft_share:.0%} of the images are large "
                f"enough for a reduced-scale JPEG decode to {hw[1]}x{hw[0]}",)
    drafts = [dataclasses.replace(c, decode="draft") for c in lab.store.ranked()[:2]]
    lab.rng.shuffle(drafts)
    for c in drafts:
        _run_one(lab, plan, c, "draft")
    return ()


def _final(lab: _Lab, plan: _Plan, screened: _Screened) -> Candidate:
    """5. The best few eligible settings re-measured ``repeats - 1`` more times, shuffled per
    round; returns the fastest over every eligible candidate (the table's first eligible row),
    or the defaults when none is."""
    o = lab.setup.opts
    eligible = _eligible(lab.store, screened.exact_top1, o.max_top1_drop)
    finals = lab.store.ranked(eligible)[:max(1, o.finalists)]
    for _ in range(max(0, o.repeats - 1)):
        rnd = list(finals)
        lab.rng.shuffle(rnd)
        for c in rnd:
            _run_one(lab, plan, c, "final")
    ranked = lab.store.ranked(eligible)
    return ranked[0] if ranked else lab.setup.default


def _compare(lab: _Lab, plan: _Plan, challenger: Candidate) -> tuple[Pair, ...]:
    """6. The challenger vs the defaults interleaved (A B A B ...), as many pairs as asked and
    as fit the time left."""
    o, default = lab.setup.opts, lab.setup.default
    if not o.compare_defaults or challenger == default:
        return ()
    pairs = []
    for _ in range(max(1, o.compare_pairs)):
        if lab.seconds_left() < _estimate_s(lab, plan, challenger) + _estimate_s(lab, plan,
                                                                                 default):
            break
        a = _run_one(lab, plan, challenger, "compare", keep_reserve=False)
        b = _run_one(lab, plan, default, "compare", keep_reserve=False)
        if a and b and a.images_per_s and b.images_per_s:
            # adjacent trials share the machine's load: the raw ratio is the direct one
            pairs.append(Pair(a.images_per_s, b.images_per_s, a.adjusted_images_per_s,
                              b.adjusted_images_per_s,
                              max(a.foreign_load or 0.0, b.foreign_load or 0.0)))
    return tuple(pairs)


def _search(lab: _Lab) -> TuneResult:
    """Run the stages in order, each fed the frozen results of those before; the result from
    what they returned (on Ctrl-C: from the stages that ended and the trial log)."""
    done: dict[str, Any] = {}
    try:
        done["probe"] = _probe(lab)
        plan = done["plan"] = _warm_up(lab, done["probe"])
        screened = done["screen"] = _screen(lab, plan)
        done["draft"] = _draft(lab, plan)
        challenger = done["final"] = _final(lab, plan, screened)
        done["pairs"] = _compare(lab, plan, challenger)
    except KeyboardInterrupt:
        if not lab.store.counted:
            raise  # nothing measured yet: nothing to keep
        return _finish(lab, done, interrupted=True)
    finally:
        lab.bar.close()
    return _finish(lab, done, interrupted=False)


def _typical_load(trials: Sequence[Trial]) -> float | None:
    """Median share of the CPUs other processes took during the trials (None: unmeasured)."""
    loads = [t.foreign_load for t in trials if t.foreign_load is not None]
    return statistics.median(loads) if loads else None


def _finish(lab: _Lab, done: Mapping[str, Any], interrupted: bool) -> TuneResult:
    """The result from the stages' results and the trial log, whether the search ran to its
    end or was interrupted (then: the best eligible setting so far, no ratio, a note)."""
    s, o, store = lab.setup, lab.setup.opts, lab.store
    probed, plan = done.get("probe"), done.get("plan")
    screened = done.get("screen")
    notes = [*(probed.notes if probed else ()), *(plan.notes if plan else ()),
             *(screened.notes if screened else ()), *done.get("draft", ())]
    exact = screened.exact_top1 if screened else store.exact_top1()
    eligible = _eligible(store, exact, o.max_top1_drop)
    load = _typical_load(store.trials)
    if interrupted:
        ranked = store.ranked(eligible)
        decision = Decision(ranked[0] if ranked else s.default, None, None, (), False, None)
        pairs: tuple[Pair, ...] = ()
        notes.append(f"interrupted after {len(store.trials)} pipeline runs: the table holds "
                     "what was measured; best.json was not written")
    else:
        pairs = done["pairs"]
        decision = choose_winner(done["final"], s.default, pairs, load=load,
                                 compared=o.compare_defaults, margin=o.busy_margin)
        if decision.note:
            notes.append(decision.note)
        if store.skipped:
            notes.append(f"{len(store.skipped)} trial(s) skipped for lack of time: "
                         + ", ".join(store.skipped[:6])
                         + ("..." if len(store.skipped) > 6 else ""))
    return TuneResult(
        out_dir=None, best=decision.best, default=s.default,
        rows=store.rows(eligible, len(s.files), s.base), trials=store.trials, notes=notes,
        sample_size=len(plan.names) if plan else 0, holdout_size=len(s.files),
        time_limit_s=s.base.time_limit_s, elapsed_s=time.monotonic() - s.t_start,
        ratio=decision.ratio, ratio_pairs=[p.ratio for p in pairs],
        ratio_counted=len(decision.counted), cores=o.cores, challenger=decision.challenger,
        corrected_ratio_pairs=[p.corrected for p in pairs], max_time_s=float(o.max_time_s),
        clock=s.base.clock, ms_per_image=s.base.ms_per_image, interrupted=interrupted,
        probe=probed.trial if probed else None, warmup=plan.warm_trial if plan else None,
        ground_truth=s.ground_truth, busy=decision.busy, foreign_load=load)


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
    rng = random.Random(opts.seed)
    lab = _Lab(_setup(base, opts, rng), rng, progress, on_trial)
    # as in lpirc run: a terminal's Ctrl-C and a scheduler's SIGTERM both end the tune with
    # what was measured kept, also when started as a background job (SIGINT ignored)
    with preflight.stop_signals():
        result = _search(lab)
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
