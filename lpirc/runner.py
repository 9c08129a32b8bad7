"""One timed run: holdout -> pipeline (workers) -> result log -> scorer.

``run(settings)`` is the public entry point behind ``lpirc run``; it never loads the model
itself (workers do), so a model that crashes the runtime cannot take the results with it.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import os
import signal
import sys
import unicodedata
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lpirc import __version__
from lpirc.clock import Budget, Stopwatch
from lpirc.errors import (EXIT_FAILED, EXIT_INTERRUPTED, EXIT_OK, DelegateError, InputError,
                          ModelError)
from lpirc.results import MANIFEST, RESULTS, SCORE, ResultLog, new_run_dir, write_json
from lpirc.settings import RunSettings


@dataclass(frozen=True)
class RunOutcome:
    out_dir: Path
    status: str
    exit_code: int
    manifest: dict[str, Any]
    score: dict[str, Any] | None  # the score.json object; None without a ground truth
    notes: tuple[str, ...]


def utc_now() -> str:
    return dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _check_model_file(path: Path) -> None:
    """Fail fast, in the parent, on what needs no runtime to see."""
    if not path.exists():
        raise ModelError(f"{path}: model file not found")
    if path.is_dir():
        raise ModelError(f"{path}: is a folder, not a .tflite model file")
    if path.stat().st_size == 0:
        raise ModelError(f"{path}: model file is empty")


def _check_delegate(name: str) -> bool:
    """Look the delegate library up before any worker starts; True if only one process may
    own the device."""
    from lpirc import delegates

    spec = delegates.parse_delegate(name)
    if spec.kind in ("edgetpu", "external"):
        _, reason = delegates.find_library_isolated(spec.library or "")
        if reason is not None:
            raise delegates.delegate_error(spec, reason)
    if spec.kind == "gpu":
        from lpirc.runtime import load_runtime  # imports the runtime; loads no model

        reason = delegates.gpu_unavailable_reason(load_runtime().name)
        if reason is not None:
            raise DelegateError(f"gpu: {reason}")
    return delegates.delegate_is_exclusive(name)


def run(settings: RunSettings, progress: bool = True) -> RunOutcome:
    """Run ``settings.model`` over ``settings.holdout`` within the budget, write the run folder,
    score it when a ground truth is known. Raises LpircError for what stops a run before or
    instead of answering (bad model, delegate, holdout); a run that started always leaves its
    folder, its log and its manifest."""
    from lpirc.energy import EnergyConfig
    from lpirc.holdout import open_holdout
    from lpirc.settings import check_settings

    check_settings(settings)  # API callers build RunSettings themselves
    model_path = Path(settings.model)
    _check_model_file(model_path)
    root = Path(settings.holdout)
    if not root.is_dir():
        open_holdout(root)  # raises its one-line error
    gt = settings.ground_truth
    if gt is None and (root / "ground_truth.csv").is_file():
        gt = root / "ground_truth.csv"
    if gt is not None:
        gt = Path(gt).resolve()  # score.json and the manifest name it wherever the run started
        if not gt.is_file():
            raise InputError(f"{gt}: ground truth not found" if not gt.exists()
                             else f"{gt}: ground truth is not a file")
    exclusive = _check_delegate(settings.delegate)
    out = Path(settings.out) if settings.out else new_run_dir(model_path)
    _check_out(out)
    ecfg = EnergyConfig(power_log=settings.power_log, watts_per_core=settings.watts_per_core,
                        idle_watts=settings.idle_watts, powercap_root=settings.powercap_root)

    # A terminal's Ctrl-C and a scheduler's SIGTERM both end the run cleanly, log kept.
    def on_term(signum, frame):
        raise KeyboardInterrupt

    old_term = signal.signal(signal.SIGTERM, on_term)
    if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
        # a shell's background job starts with SIGINT ignored; the user's Ctrl-C to the
        # process group must still stop us
        signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        return _run(settings, model_path, root, gt, exclusive, out, ecfg, progress)
    finally:
        signal.signal(signal.SIGTERM, old_term)


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


def _truth_note(gt: Path | None) -> str | None:
    """The ground truth's own warning (labels that look 1-based), for the manifest's notes."""
    if gt is None:
        return None
    import scoring

    try:
        notes = scoring.ground_truth_notes(gt)
    except scoring.ScoringError:
        return None
    return "; ".join(notes) or None


def _read_truth(gt: Path) -> dict[str, int]:
    import scoring

    try:
        return scoring.read_ground_truth(gt, cache=False)
    except scoring.ScoringError as e:
        raise InputError(str(e)) from None


def _coverage_note(truth: dict[str, int], files: tuple[str, ...]) -> str | None:
    """Ground-truth rows naming no holdout image: they will count as wrong, so say so first.
    Names are matched by the scorer's own rule (scoring.names), so this note and the score
    agree."""
    from scoring.names import NameIndex

    index = NameIndex(truth)
    pos, _ = index.match_all(files)
    hit = set(pos)
    missing = sorted(n for i, n in enumerate(index.names) if i not in hit)
    if not missing:
        return None
    # a name not in NFC is shown escaped: it would look the same as its NFC twin
    few = ", ".join(m if unicodedata.is_normalized("NFC", m) else ascii(m)[1:-1]
                    for m in missing[:3])
    few += f" and {len(missing) - 3} more" if len(missing) > 3 else ""
    return (f"ground truth names {len(missing)} of its {len(truth)} images that are not in the "
            f"holdout (they count as unanswered): {few}")


def _run(settings: RunSettings, model_path: Path, root: Path, gt: Path | None,
         exclusive: bool, out: Path, ecfg,
         progress: bool) -> RunOutcome:
    from lpirc.energy import energy_source_preview, finish_energy, start_energy
    from lpirc.holdout import open_holdout
    from lpirc.machine import machine_info
    from lpirc.pipeline import run_pipeline, start_workers, stop_workers

    # The run starts here: workers load the model while the parent lists the holdout.
    probe = start_energy(ecfg)
    clock = Stopwatch()
    start_utc = utc_now()
    pool = start_workers(settings, root, exclusive)
    made_out = not out.exists()
    try:
        # Read only now, after the workers forked: the processes that run the model never hold
        # the labels. Malformed, it is still refused before any image is handed out.
        truth = _read_truth(gt) if gt is not None else None
        holdout = open_holdout(root, seed=settings.seed)
        gt_note = _coverage_note(truth, holdout.files) if truth is not None else None
        pre_notes = [n for n in (gt_note, holdout.skipped_line(), _truth_note(gt)) if n]
        truth = None  # checked; the scorer reads it again after the run, workers gone
        try:
            out.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise InputError(f"{out}: cannot create the run folder ({e.strerror or e})") from None
        budget = Budget(settings.clock, settings.time_limit_s, settings.ms_per_image,
                        len(holdout.files))
        manifest: dict[str, Any] = {
            "lpirc_version": __version__,
            "status": "running",
            "runtime": None,
            "delegate": {"requested": settings.delegate, "ran": None, "note": None},
            "model": {"path": str(model_path.resolve()), "size_bytes": model_path.stat().st_size,
                      "sha256": _sha256(model_path)},
            "holdout": {"path": str(root.resolve()),
                        "image_count": len(holdout.files), "order_seed": holdout.seed,
                        "files_sha256": holdout.files_sha256,
                        "skipped": holdout.skipped,
                        "ground_truth": str(gt) if gt else None},
            "settings": settings.to_json(),
            "budget": budget.to_json(),
            "start_utc": start_utc,
            "end_utc": None,
            "wall_time_s": None,
            "inference_time_s": None,
            "energy": {"wh": None, "source": "pending", "method": energy_source_preview(ecfg)},
            "machine": machine_info(),
            "notes": list(pre_notes),
        }
        write_json(out / MANIFEST, manifest)
        log = ResultLog(out / RESULTS)
    except BaseException:  # bad holdout, or Ctrl-C before the first image was handed out
        stop_workers(pool)
        if made_out and out.is_dir() and not (out / RESULTS).exists():
            for name in (MANIFEST, MANIFEST + ".tmp"):
                (out / name).unlink(missing_ok=True)
            try:
                out.rmdir()
            except OSError:
                pass
        raise
    bar = _progress_bar(len(holdout.files), budget, enabled=progress and not settings.quiet)
    try:
        outcome = run_pipeline(settings, root, holdout.files, budget, log.write, clock,
                               exclusive=exclusive, progress=bar.update if bar else None,
                               pool=pool)
    finally:
        log.close()
        if bar:
            bar.close()
    energy = finish_energy(probe, ecfg)

    ready = outcome.ready or {}
    manifest.update({
        "status": outcome.status,
        "runtime": ready.get("runtime"),
        "delegate": {"requested": settings.delegate, "ran": ready.get("delegate_ran"),
                     "note": ready.get("note"), "exclusive": exclusive},
        "end_utc": utc_now(),
        "wall_time_s": round(outcome.wall_time_s, 4),
        "inference_time_s": round(outcome.inference_time_s, 4),
        "first_answer_s": outcome.first_answer_s,
        "energy": energy.to_json(),
        "images_logged": outcome.answered + outcome.failed,
        "images_answered": outcome.answered,  # with a top-5 (late ones included)
        "images_failed": outcome.failed,  # logged with an error: count as wrong
        "images_late": outcome.late,
        "batch_used": ready.get("batch"),
        "preprocess": ready.get("preprocess"),
        "notes": list(pre_notes) + outcome.notes,
    })
    if outcome.ready is None and outcome.status == "budget_exhausted":
        manifest["notes"].append("the budget ran out before any worker had loaded the model")
    if outcome.error and outcome.answered > 0:
        # the run stopped part-way: say why beside the partial score, not only in the exit code
        manifest["notes"].append(f"run stopped: {outcome.error[1]}")
    if ready.get("model"):
        manifest["model"].update({k: v for k, v in ready["model"].items()
                                  if k in ("input", "output", "outputs", "num_classes", "ops")})
        out_t = ready["model"].get("output") or {}
        manifest["model"]["output_used"] = out_t.get("signature_name") or out_t.get("name")
    if outcome.error:
        manifest["error"] = {"kind": outcome.error[0], "message": outcome.error[1]}
    write_json(out / MANIFEST, manifest)

    if outcome.error and outcome.answered == 0:  # nothing to score: one line, log kept
        kind, message = outcome.error
        raise (DelegateError if kind == "delegate" else ModelError)(message)

    score = None
    if gt is not None:
        import scoring

        try:
            score = scoring.score_path(out, ground_truth=gt, rules=settings.rules)
        except scoring.ScoringError as e:
            raise InputError(str(e)) from None
        write_json(out / SCORE, score)

    if outcome.status == "interrupted":
        code = EXIT_INTERRUPTED
    elif outcome.error:
        code = ModelError.exit_code if outcome.error[0] != "delegate" else DelegateError.exit_code
    elif outcome.answered == 0:
        code = EXIT_FAILED
    else:
        code = EXIT_OK
    return RunOutcome(out, outcome.status, code, manifest, score, tuple(manifest["notes"]))


class _Bar:
    """tqdm bar showing answers, images/s and what is left of the budget."""

    def __init__(self, total: int, budget: Budget) -> None:
        from tqdm import tqdm

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


def _progress_bar(total: int, budget: Budget, enabled: bool) -> _Bar | None:
    if not enabled or not sys.stderr.isatty():
        return None
    return _Bar(total, budget)
