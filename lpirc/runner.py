"""One timed run: image source -> pipeline (workers) -> result log -> scorer.

``run(settings)`` is the public entry point behind ``lpirc run``; it never loads the model
itself (workers do), so a model that crashes the runtime cannot take the results with it.

By default the images are the holdout folder ``settings.holdout``, listed up front. Any
:class:`~lpirc.sources.ImageSource` can feed the run instead, and ``on_answers`` sees every
answer as it arrives, so a client can post answers while later images are still coming::

    import threading
    from lpirc.runner import run
    from lpirc.settings import resolve_settings
    from lpirc.sources import GrowingSource

    settings = resolve_settings({"model": "sub.tflite", "holdout": "incoming/"}, set())
    feed = GrowingSource("incoming/")

    def download():                      # e.g. the referee's zips, unpacked into incoming/
        for names in unpacked_batches():
            feed.add(names)
        feed.close()

    threading.Thread(target=download, daemon=True).start()
    outcome = run(settings, source=feed, on_answers=lambda recs: print(len(recs), "answers"))
"""

from __future__ import annotations

import datetime as dt
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from tqdm import tqdm

import scoring
from lpirc import __version__, machine, preflight
from lpirc.clock import Budget, Stopwatch
from lpirc.energy import (EnergyConfig, energy_source_preview, finish_energy,
                          start_energy)
from lpirc.errors import EXIT_FAILED, EXIT_INTERRUPTED, EXIT_OK, InputError
from lpirc.holdout import open_holdout
from lpirc.meters.runmeter import RunMeter
from lpirc.meters.sampler import POWER_LOG
from lpirc.pipeline import (Dispatcher, PipelineOutcome, WorkerPool, release_workers,
                            start_workers, stop_workers)
from lpirc.results import (MANIFEST, RESULTS, SCORE, ResultLog, file_sha256, new_run_dir,
                           write_json)
from lpirc.settings import RunSettings, check_settings
from lpirc.sources import FolderSource, ImageSource
from lpirc.truthcheck import TruthCheck
from scoring.records import Manifest, Record

#: Called with each chunk's records as they arrive (after they are logged).
AnswersFn = Callable[[list[Record]], None]


@dataclass(frozen=True)
class RunOutcome:
    """What ``run`` returns.

    Attributes:
      out_dir: the run folder (results.jsonl, manifest.json, score.json).
      status: ``complete``, ``budget_exhausted``, ``interrupted`` or ``failed``.
      exit_code: the documented exit code for it (lpirc/errors.py).
      manifest: the manifest.json object as written.
      score: the score.json object; None without a ground truth.
      notes: the manifest's notes (worker deaths, why the run stopped, ...).
    """

    out_dir: Path
    status: str
    exit_code: int
    manifest: Manifest
    score: dict[str, Any] | None
    notes: tuple[str, ...]


@dataclass(frozen=True)
class _Plan:
    """What one run was asked to do, checked: carried from ``run`` through its steps."""

    settings: RunSettings
    model_path: Path
    root: Path
    ground_truth: Path | None  # resolved; None: no scoring
    exclusive: bool
    out: Path
    progress: bool
    source: ImageSource | None
    on_answers: AnswersFn | None

    @property
    def energy_config(self) -> EnergyConfig:
        s = self.settings
        return EnergyConfig(power_log=s.power_log, watts_per_core=s.watts_per_core,
                            idle_watts=s.idle_watts, powercap_root=s.powercap_root)


def utc_now() -> str:
    return dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def run(settings: RunSettings, progress: bool = True, *, source: ImageSource | None = None,
        on_answers: AnswersFn | None = None) -> RunOutcome:
    """Run ``settings.model`` over a source of images within the budget, write the run folder,
    score it when a ground truth is known.

    Args:
      settings: the run's settings (:func:`lpirc.settings.resolve_settings`).
      progress: show a progress bar (when stderr is a terminal and not ``settings.quiet``).
      source: where the images come from; default a :class:`~lpirc.sources.FolderSource` of
        ``settings.holdout`` with ``settings.seed``, listed after the workers started (so they
        do not inherit the list). A source's ``root`` is the folder workers read from; the
        ground truth defaults to ``root/ground_truth.csv``.
      on_answers: called with each chunk's :class:`~scoring.records.Record` list as it arrives,
        after it is logged. It runs in the dispatching thread: keep it short. An exception in
        it ends the run and propagates: workers stopped, every answer that arrived logged, the
        manifest's status ``failed`` with the error.
    Returns:
      RunOutcome; ``exit_code`` 130 when interrupted (Ctrl-C or SIGTERM; log kept and scored).
    Raises:
      LpircError: what stops a run before or instead of answering (bad model, delegate,
        holdout, run folder). A run that started always leaves its folder, its log and its
        manifest.
      scoring.ScoringError: a ground truth that cannot be read, before the run; or, after it,
        one the scorer refuses (the run folder, its log and manifest are kept).
    """
    check_settings(settings)  # API callers build RunSettings themselves
    model_path = preflight.check_model_file(settings.model)
    root = Path(source.root if source is not None else settings.holdout)
    if not root.is_dir():
        open_holdout(root)  # raises its one-line error
    ground_truth = preflight.ground_truth_for(root, settings.ground_truth)
    exclusive = preflight.check_delegate(settings.delegate)
    out = Path(settings.out) if settings.out else new_run_dir(model_path)
    _check_out(out)
    plan = _Plan(settings, model_path, root, ground_truth, exclusive, out, progress, source,
                 on_answers)
    # A terminal's Ctrl-C and a scheduler's SIGTERM both end the run cleanly, log kept.
    with preflight.stop_signals():
        return _run(plan)


def _check_out(out: Path) -> None:
    """The run folder must be a folder lpirc can write, and must not hold an earlier run."""
    if out.exists() and not out.is_dir():
        raise InputError(f"{out}: exists and is not a folder; choose another --out")
    if (out / RESULTS).exists() and (out / RESULTS).stat().st_size > 0:
        raise InputError(f"{out}: already holds a run's {RESULTS}; choose another --out")
    # made only once the run starts (an empty holdout leaves no folder); check where it will be
    near = out.absolute()
    while not near.exists():
        near = near.parent
    if not near.is_dir():
        raise InputError(f"{out}: cannot create the run folder ({near} is not a folder)")
    if not os.access(near, os.W_OK | os.X_OK):
        raise InputError(f"{out}: cannot create the run folder ({near} is not writable)")


def _run(plan: _Plan) -> RunOutcome:
    """Start the workers, open the source and the run folder, dispatch, finish, score."""
    settings, out = plan.settings, plan.out
    # A meter (--meter) takes its first reading before the run's clock starts.
    meter = RunMeter.begin(settings)
    try:
        return _run_metered(plan, meter)
    finally:
        if meter is not None:
            meter.stop()


def _run_metered(plan: _Plan, meter: RunMeter | None) -> RunOutcome:
    """_run's body, with the meter (if any) sampling around it.

    The workers are forked first (so they do not inherit the holdout's list of names) but wait;
    a helper process checks the ground truth (lpirc.truthcheck) while the parent lists the
    holdout; only then does the run's clock start and do the workers load the model. Reading
    the organiser's ground truth and listing the holdout are not the submission's work: they
    cost none of its budget."""
    settings, out = plan.settings, plan.out
    pool = start_workers(settings, plan.root, plan.exclusive, gated=True)
    made_out = not out.exists()
    truth_check = None
    try:
        if plan.ground_truth is not None:
            truth_check = TruthCheck(plan.ground_truth)
        source, pre_notes = _open_source(plan, truth_check)
        budget = Budget(settings.clock, settings.time_limit_s, settings.ms_per_image,
                        source.total or 0, settings.ends_at_monotonic)
        try:
            out.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise InputError(f"{out}: cannot create the run folder ({e.strerror or e})") from None
        manifest = _start_manifest(plan, source, budget, None,
                                   pre_notes + (meter.notes if meter else []))
        if meter is not None:
            meter.attach(out)
            manifest["energy"]["method"] = meter.preview() or manifest["energy"]["method"]
        log = ResultLog(out / RESULTS)
        # The run starts here: the workers load the model and the budget counts.
        probe = start_energy(plan.energy_config)
        clock = Stopwatch()
        manifest["start_utc"] = utc_now()
        release_workers(pool)
        write_json(out / MANIFEST, manifest)
    except BaseException:  # bad holdout, or Ctrl-C before the first image was handed out
        stop_workers(pool)
        _remove_unstarted(out, made_out)
        raise
    finally:
        if truth_check is not None:
            truth_check.close()
    try:
        outcome = _dispatch(plan, source, budget, clock, pool, log)
    except Exception as e:  # on_answers raised: the log is kept, the manifest says why
        manifest.update({"status": "failed", "end_utc": utc_now(),
                         "error": {"kind": "on_answers", "message": f"{type(e).__name__}: {e}"}})
        write_json(out / MANIFEST, manifest)
        raise
    wall_end = time.time()
    energy = finish_energy(probe, plan.energy_config).to_json()
    if meter is not None:  # the meter's figure, or the one above with the reason
        try:
            energy = meter.finish(probe.wall_start, wall_end, energy)
        except Exception as e:  # never lose a run over its meter
            energy["method"] += f"; meter failed ({type(e).__name__}: {e})"
        manifest["notes"] += [n for n in meter.notes if n not in manifest["notes"]]
    _finish_manifest(manifest, plan, source, outcome, energy)
    write_json(out / MANIFEST, manifest)
    if outcome.error and outcome.answered == 0:  # nothing to score: one line, log kept
        raise preflight.failure_error(*outcome.error)
    score = None
    if plan.ground_truth is not None:
        score = scoring.score_path(out, ground_truth=plan.ground_truth, rules=settings.rules)
        write_json(out / SCORE, score)
    return RunOutcome(out, outcome.status, _exit_code(outcome), manifest, score,
                      tuple(manifest["notes"]))


def _open_source(plan: _Plan, truth_check: TruthCheck | None) -> tuple[ImageSource, list[str]]:
    """The run's source (the holdout listed now, after the workers forked, unless one was
    given) and the notes on it: ground-truth rows naming no holdout image, files skipped, the
    ground truth's own warnings. ``truth_check`` (started before the listing, so both run at
    once) parses the ground truth once; malformed, it is refused here, before any image is
    handed out. Neither this process nor the workers ever hold the labels."""
    source = plan.source
    if source is None:
        source = FolderSource(plan.root, seed=plan.settings.seed)
    files = getattr(source, "files", None)  # a source listed up front
    cover, truth_notes = truth_check.result(files) if truth_check is not None else (None, [])
    holdout = getattr(source, "holdout", None)
    skipped = holdout.skipped_line() if holdout is not None else None
    notes = [n for n in (cover, skipped, "; ".join(truth_notes)) if n]
    return source, notes  # the scorer reads the ground truth again after the run


def _remove_unstarted(out: Path, made_out: bool) -> None:
    """Leave no run folder behind for a run that never handed out an image."""
    if made_out and out.is_dir() and not (out / RESULTS).exists():
        for name in (MANIFEST, MANIFEST + ".tmp", POWER_LOG):
            (out / name).unlink(missing_ok=True)
        try:
            out.rmdir()
        except OSError:
            pass


def _holdout_json(plan: _Plan, source: ImageSource) -> dict[str, Any]:
    sha = getattr(source, "files_sha256", None)
    holdout = getattr(source, "holdout", None)
    return {"path": str(plan.root.resolve()), "source": type(source).__name__,
            "image_count": source.total,
            "order_seed": holdout.seed if holdout is not None else None,
            "files_sha256": sha() if callable(sha) else None,
            # the holdout's identity whatever its order (scoring.groups: runs with another
            # --seed are ranked together)
            "names_sha256": holdout.names_digest() if holdout is not None else None,
            "skipped": holdout.skipped if holdout is not None else {},
            "ground_truth": str(plan.ground_truth) if plan.ground_truth else None}


def _start_manifest(plan: _Plan, source: ImageSource, budget: Budget, start_utc: str,
                    pre_notes: list[str]) -> Manifest:
    """manifest.json as written when the run starts (status ``running``)."""
    s, model_path = plan.settings, plan.model_path
    return {
        "lpirc_version": __version__,
        "status": "running",
        "runtime": None,
        "delegate": {"requested": s.delegate, "ran": None, "note": None},
        "model": {"path": str(model_path.resolve()), "size_bytes": model_path.stat().st_size,
                  "sha256": file_sha256(model_path)},
        "holdout": _holdout_json(plan, source),
        "settings": s.to_json(),
        "budget": budget.to_json(),
        "start_utc": start_utc,
        "end_utc": None,
        "wall_time_s": None,
        "inference_time_s": None,
        "energy": {"wh": None, "source": "pending",
                   "method": energy_source_preview(plan.energy_config)},
        "machine": machine.machine_info(),
        "notes": list(pre_notes),
    }


def _dispatch(plan: _Plan, source: ImageSource, budget: Budget, clock: Stopwatch,
              pool: WorkerPool, log: ResultLog) -> PipelineOutcome:
    """Answer the source's images: every record logged, then shown to ``on_answers``."""
    on_answers = plan.on_answers

    def on_records(recs: list[Record]) -> None:
        log.write(r.to_json() for r in recs)
        if on_answers is not None:
            on_answers(recs)

    bar = _progress_bar(source.total, budget,
                        enabled=plan.progress and not plan.settings.quiet)
    try:
        return Dispatcher(plan.settings, source, budget, clock, pool, on_records,
                          progress=bar.update if bar else None).run()
    finally:
        log.close()
        if bar:
            bar.close()


def _finish_manifest(manifest: Manifest, plan: _Plan, source: ImageSource,
                     outcome: PipelineOutcome, energy: dict[str, Any]) -> None:
    """Fill in what the run did (the manifest written at the start is updated in place)."""
    s, ready = plan.settings, outcome.ready
    notes = manifest["notes"] + outcome.notes
    if ready is None and outcome.status == "budget_exhausted":
        notes.append("the budget ran out before any worker had loaded the model")
    if outcome.error and outcome.answered > 0:
        # the run stopped part-way: say why beside the partial score, not only in the exit code
        notes.append(f"run stopped: {outcome.error[1]}")
    manifest.update({
        "status": outcome.status,
        "runtime": ready.runtime if ready else None,
        "delegate": {"requested": s.delegate, "ran": ready.delegate_ran if ready else None,
                     "note": ready.note if ready else None, "exclusive": plan.exclusive},
        "end_utc": utc_now(),
        "wall_time_s": round(outcome.wall_time_s, 4),
        "inference_time_s": round(outcome.inference_time_s, 4),
        "first_answer_s": outcome.first_answer_s,
        "energy": energy,
        "images_logged": outcome.answered + outcome.failed,
        "images_answered": outcome.answered,  # with a top-5 (late ones included)
        "images_failed": outcome.failed,  # logged with an error: count as wrong
        "images_late": outcome.late,
        "batch_used": ready.batch if ready else None,
        "preprocess": dict(ready.preprocess, decoded_by=outcome.decoded_by) if ready else None,
        "notes": notes,
    })
    if source.total is None:  # a feed of unknown length: what it came to
        manifest["holdout"] = _holdout_json(plan, source) | {"image_count": outcome.images_taken}
        if outcome.budget is not None:
            manifest["budget"] = outcome.budget.to_json()
    if ready is not None:
        manifest["model"].update({k: v for k, v in ready.model.items()
                                  if k in ("input", "output", "outputs", "num_classes", "ops")})
        out_t = ready.model.get("output") or {}
        manifest["model"]["output_used"] = out_t.get("signature_name") or out_t.get("name")
    if outcome.error:
        manifest["error"] = {"kind": outcome.error[0], "message": outcome.error[1]}


def _exit_code(outcome: PipelineOutcome) -> int:
    if outcome.status == "interrupted":
        return EXIT_INTERRUPTED
    if outcome.error:
        return preflight.failure_error(*outcome.error).exit_code
    return EXIT_FAILED if outcome.answered == 0 else EXIT_OK


class _Bar:
    """tqdm bar showing answers, images/s and what is left of the budget."""

    def __init__(self, total: int | None, budget: Budget) -> None:
        self.budget = budget
        self.done = 0
        self.bar = tqdm(total=total, unit="img", dynamic_ncols=True, leave=False,
                        desc="lpirc run", file=sys.stderr, mininterval=0.25)

    def update(self, done: int, wall_s: float, inference_s: float) -> None:
        if done > self.done:
            self.bar.update(done - self.done)
            self.done = done
        left = self.budget.wall_left_s(wall_s)
        post = f"budget left {left:.0f}s wall"
        if self.budget.inference_budget_s is not None:
            post += f", {max(0.0, self.budget.inference_budget_s - inference_s):.1f}s inference"
        self.bar.set_postfix_str(post, refresh=False)

    def close(self) -> None:
        self.bar.close()


def _progress_bar(total: int | None, budget: Budget, enabled: bool) -> _Bar | None:
    if not enabled or not sys.stderr.isatty():
        return None
    return _Bar(total, budget)
