"""The scheduler: one thread that takes queued submissions to free devices, sorts what the
devices send back, scores it with the service's ground truth, and records every transition in
the store before anything reports it.

Outcomes and what they become (class as in :data:`lpirc.online.config.FAILURE_CLASSES`):

=====================================================  =====================================
the device was lost, the run was stopped from outside   ``infrastructure``: queued again, not
(signal, exit 130), the run listed another holdout,     charged; ``failed`` after
its model is not the submission's, the device refused   ``max_attempts`` tries, not charged
the holdout (exit 5)
no end within the time limit + ``hang_margin_s``        ``timeout`` (charged)
``lpirc run`` refused the model (exit 3 or 4)           ``model`` (charged)
no result log, nothing answered, the scorer refused it  ``runtime`` (charged)
a result log with answers                               ``scoring``, then ``scored``
=====================================================  =====================================

``scoring``: the device is free again (it takes the next job) while the service scores the
result with the phase's ground truth and draws its report, one submission at a time on the
scoring thread.

A restart of the service puts every ``running`` or ``scoring`` submission back in the queue first
(:meth:`Store.recover`); the attempt is conditional on its number, so it is scored once.
"""

from __future__ import annotations

import json
import sys
import threading
import time
import traceback
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import scoring
from lpirc.errors import EXIT_DELEGATE, EXIT_INPUT, EXIT_MODEL, EXIT_OK
from lpirc.online.config import OnlineConfig
from lpirc.online.executor import Executor, Job, Outcome
from lpirc.online.store import Store, Submission
from lpirc.report import REPORT, write_report
from lpirc.results import MANIFEST, RESULTS, SCORE, write_json

POLL_S = 0.5  # how long the loop waits for an outcome before looking at the queue again


@dataclass(frozen=True)
class PhaseHoldout:
    """A phase's holdout as the service checked it at start: the sha256 of its ordered file
    list (lpirc run's seed 0, what each run's manifest records) and its image count."""

    name: str
    holdout: Path
    ground_truth: Path
    files_sha256: str
    count: int


class Scheduler:
    """Runs the queue on an :class:`Executor` until :meth:`stop`. ``announce`` gets one line
    per event (the service's log)."""

    def __init__(self, store: Store, executor: Executor, cfg: OnlineConfig,
                 phases: dict[str, PhaseHoldout], announce: Callable[[str], None]) -> None:
        self.store, self.pool, self.cfg, self.phases = store, executor, cfg, phases
        self.announce = announce
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="lpirc-online-scheduler",
                                        daemon=True)
        self.running: dict[str, tuple[int, int]] = {}  # job key -> (submission, attempt)
        self.wake = threading.Event()  # set by an upload: look at the queue now
        self.recovered: list[int] = []  # submissions a stop left running, queued again at start
        # scoring and the report (0.6-2 s) on their own thread: a device is given its next job
        # while the last one is scored
        self.scorer = ThreadPoolExecutor(1, thread_name_prefix="lpirc-online-score")

    def start(self) -> None:
        self.scorer.submit(_load_figures)
        self.recovered = self.store.recover(time.time())  # the caller says so, after its URL
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=30)
        self.scorer.shutdown(wait=True)
        self.pool.close()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self._dispatch()
                for outcome in self.pool.wait(POLL_S if self.running else 0.0):
                    self._finish(outcome)
                if not self.running:
                    self.wake.wait(POLL_S)
                    self.wake.clear()
            except Exception as e:  # a bug of ours: logged, the loop goes on
                traceback.print_exc(file=sys.stderr)
                self.announce(f"scheduler: error ({type(e).__name__}: {e}); going on")
                time.sleep(POLL_S)

    # --- dispatch ----------------------------------------------------------------------------

    def _dispatch(self) -> None:
        while self.pool.idle() > 0:
            sub = self.store.next_queued()
            if sub is None:
                return
            phase = self.phases.get(sub.phase)
            attempt = sub.attempts + 1
            if phase is None:
                self._unrunnable(sub, attempt, f"the service has no {sub.phase} phase "
                                               "holdout now")
                continue
            job = Job(f"{sub.id}-{attempt}", str(sub.id), attempt, sub.model,
                      sub.model.with_suffix(".json") if sub.has_sidecar else None,
                      phase.holdout, self.cfg.files / "runs", self.cfg.run_args(),
                      self.cfg.budget_s())
            try:
                device = self.pool.submit(job)
            except OSError as e:  # its files are gone or unreadable: nothing to run
                self._unrunnable(sub, attempt, f"its uploaded files in {sub.folder} cannot be "
                                               f"read ({e.strerror or e})")
                continue
            if not self.store.mark_running(sub.id, attempt, device, time.time()):
                self.pool.kill(job.key)
                continue
            self.running[job.key] = (sub.id, attempt)
            self.announce(f"submission {sub.id} ({sub.team}): attempt {attempt} running on "
                          f"{device}")

    def _unrunnable(self, sub: Submission, attempt: int, why: str) -> None:
        """A queued submission no device can run (the service's fault): failed, not charged."""
        self.store.mark_running(sub.id, attempt, "none", time.time())
        self.store.mark_failed(sub.id, attempt, "infrastructure", why, False, time.time(), None)
        self.announce(f"submission {sub.id}: failed (infrastructure): {why}")

    # --- outcomes ----------------------------------------------------------------------------

    def _finish(self, o: Outcome) -> None:
        key = self.running.pop(o.key, None)
        if key is None:
            return
        sid, attempt = key
        sub = self.store.submission(sid)
        if sub is None:
            return
        run_dir = self._attempt_dir_of(sid, attempt) / "run"
        cls, why = self._classify(sub, o, run_dir)
        now = time.time()
        if cls == "infrastructure":
            if attempt >= self.cfg.max_attempts:
                self.store.mark_failed(sid, attempt, cls, f"{why} (gave up after {attempt} "
                                       "attempts; not charged)", False, now, o.device,
                                       str(run_dir))
                self.announce(f"submission {sid}: failed (infrastructure) after {attempt} "
                              f"attempts: {why}")
            else:
                self.store.requeue(sid, attempt, f"attempt {attempt} on {o.device}: {why} "
                                   "(infrastructure, not charged): queued again", now, o.device)
                self.announce(f"submission {sid}: {why}; queued again")
            return
        if cls is not None:
            self.store.mark_failed(sid, attempt, cls, why, True, now, o.device, str(run_dir))
            self.announce(f"submission {sid}: failed ({cls}): {why}")
            return
        if self.store.mark_scoring(sid, attempt, now, o.device,
                                   f"attempt {attempt} ended on {o.device} (lpirc run "
                                   f"{o.run_s:.2f} s); scoring on the service"):
            self.scorer.submit(self._score_logged, sub, attempt, o, run_dir)

    def _score_logged(self, sub: Submission, attempt: int, o: Outcome, run_dir: Path) -> None:
        try:
            self._score(sub, attempt, o, run_dir)
        except Exception as e:  # a bug of ours: the submission stays scoring, rerun at restart
            traceback.print_exc(file=sys.stderr)
            self.announce(f"submission {sub.id}: scoring error ({type(e).__name__}: {e})")

    def _attempt_dir_of(self, sid: int, attempt: int) -> Path:
        return self.cfg.files / "runs" / str(sid) / f"attempt-{attempt}"

    def _classify(self, sub: Submission, o: Outcome, run_dir: Path) -> tuple[str | None, str]:
        """(failure class, one line), or (None, "") for a result to score."""
        if o.lost:
            return "infrastructure", f"device {o.device} lost the run ({o.reason})"
        if o.timed_out:
            return "timeout", o.reason or "no result in time"
        if o.exit_code == EXIT_INPUT:
            return "infrastructure", f"device {o.device} could not use its holdout ({o.reason})"
        manifest = _json(run_dir / MANIFEST)
        if manifest is not None:
            sha = (manifest.get("holdout") or {}).get("files_sha256")
            if sha != self.phases[sub.phase].files_sha256:
                return "infrastructure", (f"device {o.device} ran another holdout (sha256 "
                                          f"{str(sha)[:12]})")
            if (manifest.get("model") or {}).get("sha256") != sub.model_sha256:
                return "infrastructure", f"the model {o.device} ran is not this submission's"
        if o.exit_code in (EXIT_MODEL, EXIT_DELEGATE):
            return "model", o.reason or f"lpirc run refused the model (exit {o.exit_code})"
        answered = (manifest or {}).get("images_answered") or 0
        if manifest is None or not (run_dir / RESULTS).is_file() or (
                o.exit_code != EXIT_OK and not answered):
            return "runtime", o.reason or f"lpirc run exited with code {o.exit_code} and no result"
        return None, ""

    def _score(self, sub: Submission, attempt: int, o: Outcome, run_dir: Path) -> None:
        """Score the run folder with the phase's ground truth (the service's, never the
        device's), write score.json and the report, then record it: the only place a
        submission is scored."""
        phase = self.phases[sub.phase]
        t0 = time.perf_counter()
        try:
            score = scoring.score_path(run_dir, ground_truth=phase.ground_truth,
                                       rules=self.cfg.rules)
        except scoring.ScoringError as e:
            self.store.mark_failed(sub.id, attempt, "runtime", f"scoring: {e}", True,
                                   time.time(), o.device, str(run_dir))
            return
        write_json(run_dir / SCORE, score)
        report = _write_report(run_dir, phase.ground_truth, self.cfg.rules)
        keep = {k: score.get(k) for k in (
            "score", "top1", "top5", "images_total", "images_answered", "images_failed",
            "images_unanswered", "images_late", "wall_time_s", "inference_time_s",
            "images_per_s", "energy_wh", "energy_source", "energy_method", "rules")}
        keep |= {k: score[k] for k in scoring.RULE_PARAMS if k in score}
        keep["holdout_sha256"] = phase.files_sha256  # standings rank only the same holdout
        top1 = "n/a" if score.get("top1") is None else f"{100 * score['top1']:.2f} %"
        msg = (f"scored: {self.cfg.rules} score {_num(score.get('score'))}, top-1 {top1} "
               f"(measured on {phase.count} images); lpirc run {o.run_s:.2f} s on {o.device}, "
               f"scoring and report {time.perf_counter() - t0:.2f} s (measured)"
               + ("" if report else "; report not written"))
        if self.store.mark_scored(sub.id, attempt, keep, str(run_dir), time.time(), o.device,
                                  msg):
            self.announce(f"submission {sub.id} ({sub.team}): {msg}")

    # --- organiser ---------------------------------------------------------------------------

    def devices(self) -> list[dict]:
        return self.pool.devices()


def _load_figures() -> None:
    """Import the report's figures (matplotlib, about 1-2 s) on the scoring thread at start,
    not in the first submission's time to ``scored``."""
    import lpirc.report_figures  # noqa: F401


def _write_report(run_dir: Path, ground_truth: Path, rules: str) -> bool:
    """The run's ``lpirc report`` page, scored with the service's ground truth (what ``lpirc
    run`` wrote on the device had none, or the holdout's own)."""
    try:
        write_report([run_dir], run_dir / REPORT, ground_truth, rules)
    except Exception as e:  # noqa: BLE001 - the run is scored; its page is extra
        print(f"lpirc online: warning: {run_dir / REPORT} not written ({e})", file=sys.stderr)
        return False
    return True


def _json(path: Path) -> dict | None:
    try:
        obj = json.loads(path.read_bytes())
    except (OSError, ValueError):
        return None
    return obj if isinstance(obj, dict) else None


def _num(v) -> str:
    return f"{v:.4g}" if isinstance(v, (int, float)) else "n/a"

