"""The fleet's scheduling policy, written against a :class:`lpirc.fleet.pool.DevicePool`:
devices check their holdout, idle devices take the next queued job of their kind, finished
attempts are sorted (stopped from outside, another holdout or model, the submission's own
failure, a result), results are scored on the head and added to the standings.

Faults. A device lost mid-run (its worker died, its node was lost) gets no further job; its
job is queued again for another device, the attempt is recorded (device, reason, where its
partial run folder stays) and nothing of it is scored. A run with no result
``FleetConfig.hang_margin_s`` past its budget is stuck: the device's worker kills it and
answers, the job goes to another device, and the device stays in service unless its runs got
stuck twice; a worker that has not answered ``hang_margin_s`` after that is ended, its device
lost. A node whose holdout differs from the head's (names or bytes) is refused, all its devices
with it. A job whose kind no device
offers any more fails (stranded). Each job has ``FleetConfig.max_attempts`` tries per session.
Ctrl-C cancels every running and queued job; what finished stays scored.
"""

from __future__ import annotations

import dataclasses
import hashlib
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import scoring
from lpirc import __version__
from lpirc.errors import EXIT_INTERRUPTED, EXIT_OK
from lpirc.fleet.cluster import RAY_START_DIR
from lpirc.fleet.device import (RESOURCE_PREFIX, AttemptResult, CheckRequest, Device,
                                JobRequest, NodeReport)
from lpirc.fleet.jobs import (STATE, Attempt, FleetConfig, FleetEvent, HeadInputs, JobState,
                              now_utc, parse_json)
from lpirc.fleet.pool import DevicePool, Finished
from lpirc.fleet.standings import add_to_standings, num
from lpirc.results import MANIFEST, RESULTS, SCORE, write_json

_DEVICE_FAULT_EXITS = (EXIT_INTERRUPTED,)  # the run was stopped from outside, not by its model
_LIVE = ("checking", "idle", "busy")
_STUCK_RUNS_TO_RETIRE = 2  # a device whose runs got stuck this many times takes no more jobs


@dataclass
class _Slot:
    """One device as the head sees it: its state (checking, idle, busy, hung, stuck, refused,
    lost, released), its answer to the holdout check, and how many of its runs got stuck."""

    device: Device
    state: str = "checking"
    report: NodeReport | None = None
    stuck_runs: int = 0


class Fleet:
    """The head's dispatch loop over a device pool. It keeps the jobs' and devices' state; the
    pool does the placement and the running."""

    def __init__(self, cfg: FleetConfig, jobs: list[JobState], pool: DevicePool,
                 head: HeadInputs, on_event: Callable[[FleetEvent], None] | None = None) -> None:
        self.cfg, self.jobs, self.pool, self.head = cfg, jobs, pool, head
        self.on_event = on_event or (lambda ev: None)
        self.slots: dict[str, _Slot] = {}
        self.running: dict[str, tuple[JobState, float]] = {}  # device label -> job, monotonic
        self.tries: dict[str, int] = {}  # attempts in this session, per job
        self.t0 = time.monotonic()
        self.first_ready: float | None = None  # monotonic time the first device passed its check

    # progress and state

    def counts(self) -> tuple[int, int, int, int]:
        st = [j.status for j in self.jobs]
        return st.count("queued"), st.count("running"), st.count("done"), st.count("failed")

    def emit(self, what: str, message: str, job: JobState | None = None,
             slot: _Slot | None = None, pid: int | None = None) -> None:
        self.on_event(FleetEvent(what, message, job.name if job else None,
                                 slot.device.label if slot else None, pid, self.counts()))

    def save(self) -> None:
        write_json(self.cfg.out / STATE, {
            "lpirc_version": __version__, "holdout": str(self.cfg.holdout.resolve()),
            "holdout_files_sha256": self.head.files_sha256,
            "ground_truth": str(Path(self.cfg.ground_truth).resolve()),
            "rules": self.cfg.rules, "settings": self.head.identity, "updated_utc": now_utc(),
            "devices_ready_s": self.ready_s, "wall_s": self.wall_s,
            "devices": self.device_table(),
            "jobs": [dataclasses.asdict(j) for j in self.jobs]})

    @property
    def wall_s(self) -> float:
        return round(time.monotonic() - self.t0, 3)

    @property
    def ready_s(self) -> float | None:
        """Seconds from the fleet's start to the first device passing its holdout check."""
        return round(self.first_ready - self.t0, 3) if self.first_ready else None

    def device_table(self) -> list[dict[str, Any]]:
        return [{"device": s.device.label, "resource": s.device.resource,
                 "node": s.device.node_ip, "node_id": s.device.node_id, "state": s.state,
                 "cores": list(s.report.cores) if s.report and s.report.cores else None}
                for s in self.slots.values()]

    # devices

    def start(self, devices: list[Device]) -> None:
        """Every device taken by the pool; each first lists its holdout."""
        for d in devices:
            self.slots[d.label] = _Slot(d)
            self.pool.start(d, CheckRequest(str(self.cfg.holdout.resolve()), self.cfg.seed,
                                            self._work_dir(d)))

    def _work_dir(self, d: Device) -> str:
        """Where a node keeps its run folders unless it sets $LPIRC_FLEET_WORK_DIR: the fleet
        folder on the head's own node, a temp folder elsewhere."""
        out = self.cfg.out.resolve()
        if d.node_id == self.pool.head_node:
            return str(out / "attempts")
        tag = hashlib.sha256(str(out).encode()).hexdigest()[:8]  # two fleets named alike
        return str(RAY_START_DIR / f"{out.name}-{tag}")

    def _on_check(self, fin: Finished) -> None:
        slot = self.slots[fin.device]
        if slot.state != "checking":  # its node was refused meanwhile
            return
        if fin.lost is not None:
            slot.state = "lost"
            self.emit("lost", f"{slot.device.label}: could not start on its node "
                              f"({fin.start_failure}); is lpirc installed there, importable by "
                              "the Python of its `ray start`, in the head's version?"
                      if fin.start_failure else f"{slot.device.label}: lost before its "
                                                f"holdout check ({fin.lost})", slot=slot)
            return
        rep: NodeReport = fin.value
        slot.report = rep
        if rep.error:
            self.refuse_node(slot, f"holdout {rep.holdout}: {rep.error}")
        elif rep.content_sha256 != self.head.content_sha256:
            what = ("the same names, other bytes" if rep.files_sha256 == self.head.files_sha256
                    else "another list of names")
            self.refuse_node(slot, f"holdout {rep.holdout} differs from the head's ({what}: "
                                   f"content sha256 {rep.content_sha256[:12]}, "
                                   f"{rep.image_count} images; head "
                                   f"{self.head.content_sha256[:12]}, "
                                   f"{self.head.image_count} images)")
        else:
            slot.state = "idle"
            self.first_ready = self.first_ready or time.monotonic()
            cores = f", cores {','.join(map(str, rep.cores))}" if rep.cores else ""
            self.emit("device", f"{slot.device.label} ready: holdout matches the head's "
                                f"({rep.image_count} images){cores}", slot=slot)
            self._note_shared_cores(slot)
            if rep.holds_ground_truth and slot.device.node_id != self.pool.head_node:
                self.emit("note", f"{slot.device.label}: {rep.holdout} holds ground_truth.csv; "
                                  "the ground truth should stay on the head", slot=slot)

    def _note_shared_cores(self, slot: _Slot) -> None:
        """A note when ``slot``'s cores overlap another ready device's on its node (more
        ``cpu`` devices than cores): their runs' times are not comparable."""
        mine = set(slot.report.cores or ())
        for other in self.slots.values():
            if (other is not slot and other.report is not None and other.state != "checking"
                    and other.device.node_id == slot.device.node_id
                    and mine & set(other.report.cores or ())):
                self.emit("note", f"{slot.device.label} shares core(s) "
                                  f"{','.join(map(str, sorted(mine & set(other.report.cores))))} "
                                  f"with {other.device.label} (more cpu devices than cores): "
                                  "their runs' times are not comparable", slot=slot)
                return

    def refuse_node(self, slot: _Slot, why: str) -> None:
        """Refuse every device of ``slot``'s node (one line) and release them."""
        same = [s for s in self.slots.values() if s.device.node_id == slot.device.node_id
                and s.state in _LIVE] or [slot]
        for s in same:
            s.state = "refused"
            self.pool.kill(s.device.label)
        names = ", ".join(s.device.label.split("@")[0] for s in same)
        where = slot.device.label.split("@", 1)[-1]
        self.emit("refused", f"node {where} ({names}) refused: {why}", slot=slot)

    # jobs

    def loop(self) -> None:
        """Run until every job is done, failed or stranded (no device of its kind left), and
        every device has answered its holdout check (at most ``hang_margin_s`` after the last
        job ended), so that the state file and the notes cover every device."""
        jobs_over: float | None = None
        while True:
            self._dispatch()
            if not any(j.status in ("queued", "running") for j in self.jobs):
                jobs_over = jobs_over or time.monotonic()
                if not self._checks_pending(jobs_over):
                    return
            for fin in self.pool.wait(self._wait_s(jobs_over)):
                if fin.task == "check":
                    self._on_check(fin)
                else:
                    self._on_result(fin)
            self._stop_hung()

    def _checks_pending(self, jobs_over: float) -> bool:
        """Whether a device is still checking its holdout and ``hang_margin_s`` since the last
        job ended (``jobs_over``, monotonic s) have not passed."""
        return (any(s.state == "checking" for s in self.slots.values())
                and time.monotonic() - jobs_over < self.cfg.hang_margin_s)

    def _hang_limit_s(self) -> float:
        """Seconds after the head submitted a run past which its worker, which kills a run
        ``stuck_after_s`` after its start, has not answered either: the device is ended."""
        return self.cfg.stuck_after_s + self.cfg.hang_margin_s

    def _wait_s(self, jobs_over: float | None = None) -> float:
        """How long to wait for the pool: at most 1 s, not past the next run's hang limit, and
        not past the end of the wait for checks (``hang_margin_s`` after ``jobs_over``)."""
        deadlines = [t0 + self._hang_limit_s() for _, t0 in self.running.values()]
        if jobs_over is not None:
            deadlines.append(jobs_over + self.cfg.hang_margin_s)
        return max(0.0, min([1.0, *(d - time.monotonic() for d in deadlines)]))

    def _stop_hung(self) -> None:
        """The head's backstop: a worker that has not answered ``_hang_limit_s`` after its run
        was submitted (it would have killed a stuck run and answered) is ended, and its job
        retried like any lost device's."""
        limit = self._hang_limit_s()
        for label, (job, t0) in list(self.running.items()):
            slot = self.slots[label]
            if slot.state == "busy" and time.monotonic() - t0 >= limit:
                slot.state = "hung"
                self.emit("note", f"{slot.device.label}: no answer from its worker for "
                                  f"{job.name} within {limit:g} s (budget + 2 x "
                                  f"{self.cfg.hang_margin_s:g} s); device ended", job, slot)
                self.pool.kill(label)

    def _dispatch(self) -> None:
        for slot in self.slots.values():
            if slot.state == "idle":
                job = self._next_job(slot)
                if job is not None:
                    self._start(job, slot)
        for job in self.jobs:
            if job.status == "queued" and not any(
                    s.device.kind == job.kind and s.state in _LIVE for s in self.slots.values()):
                gone = [s.state for s in self.slots.values() if s.device.kind == job.kind]
                why = (f"no {job.kind} device in the cluster (resource "
                       f"{RESOURCE_PREFIX}{job.kind}_<id>)" if not gone else
                       f"no {job.kind} device left ({gone.count('refused')} refused, "
                       f"{gone.count('lost')} lost)")
                self._fail(job, why)

    def _next_job(self, slot: _Slot) -> JobState | None:
        """The first queued job of ``slot``'s kind that has not run on it; a job that has
        (lost, stopped or stuck there) only when no other live device of its kind is left
        that it has not tried."""
        def tried(job: JobState, s: _Slot) -> bool:
            return any(a.device == s.device.label for a in job.attempts)

        queued = [j for j in self.jobs if j.status == "queued" and j.kind == slot.device.kind]
        for job in queued:
            if not tried(job, slot) or not any(
                    s is not slot and s.device.kind == job.kind and s.state in _LIVE
                    and not tried(job, s) for s in self.slots.values()):
                return job
        return None

    def _start(self, job: JobState, slot: _Slot) -> None:
        model = Path(job.model)
        side = model.with_suffix(".json")
        attempt = len(job.attempts) + 1
        req = JobRequest(job.name, attempt, model.name,
                         side.read_bytes() if side.is_file() else None,
                         str(self.cfg.holdout.resolve()), self._work_dir(slot.device),
                         self.cfg.run_args(job.kind), self.cfg.stuck_after_s)
        self.pool.submit(slot.device.label, req, model.read_bytes())
        job.attempts.append(Attempt(attempt, slot.device.label, slot.device.node_ip, now_utc()))
        job.status, job.device, slot.state = "running", slot.device.label, "busy"
        self.running[slot.device.label] = (job, time.monotonic())
        self.emit("running", f"{job.name} on {slot.device.label} (attempt {attempt})", job,
                  slot, slot.report.pid if slot.report else None)
        self.save()

    def _on_result(self, fin: Finished) -> None:
        slot = self.slots[fin.device]
        job, t0 = self.running.pop(fin.device)
        rec = job.record(ended_utc=now_utc())
        if fin.lost is not None:
            why = {"hung": "stuck past its budget", "refused": "its node was refused"}.get(
                slot.state, "lost mid-run")
            slot.state = "refused" if slot.state == "refused" else "lost"
            self.pool.kill(slot.device.label)  # "unavailable" may be a blip: free it for sure
            work = slot.report.work_dir if slot.report else "?"
            job.record(outcome="device_lost", reason=f"{why}: {fin.lost}",
                       run_dir=str(Path(work) / job.name / f"attempt-{rec.attempt}" / "run"))
            self.emit("lost", f"{slot.device.label}: device {why} during {job.name} "
                              f"({fin.lost})", job, slot)
            self._retry_or_fail(job, f"device {slot.device.label} {why}")
            return
        res: AttemptResult = fin.value
        slot.state = "idle" if slot.state == "busy" else slot.state
        head_s = time.monotonic() - t0
        job.record(exit_code=res.exit_code, run_dir=res.run_dir, run_s=round(res.run_s, 3),
                   head_s=round(head_s, 3), overhead_s=round(head_s - res.run_s, 3))
        self._accept(job, slot, res)

    def _accept(self, job: JobState, slot: _Slot, res: AttemptResult) -> None:
        """Sort a finished attempt: stopped from outside (retry), not this holdout or not this
        model (retry elsewhere), the submission's own failure (recorded), or a result to score."""
        if res.stuck:
            job.record(outcome="stuck", reason=res.reason)
            slot.stuck_runs += 1
            if slot.stuck_runs >= _STUCK_RUNS_TO_RETIRE and slot.state == "idle":
                slot.state = "stuck"
                self.pool.kill(slot.device.label)
                self.emit("note", f"{slot.device.label}: {slot.stuck_runs} runs stuck there; "
                                  "it takes no more jobs", job, slot)
            self._retry_or_fail(job, f"lpirc run on {slot.device.label} {res.reason}")
            return
        if res.exit_code < 0 or res.exit_code in _DEVICE_FAULT_EXITS:
            job.record(outcome="stopped", reason=res.reason)
            self._retry_or_fail(job, f"lpirc run on {slot.device.label} was stopped: {res.reason}")
            return
        manifest = parse_json(res.manifest)
        if manifest is not None:
            sha = (manifest.get("holdout") or {}).get("files_sha256")
            if sha != self.head.files_sha256:
                job.record(outcome="holdout_mismatch", reason=f"holdout sha256 {sha}")
                self.refuse_node(slot, f"its run listed a holdout with sha256 {str(sha)[:12]}, "
                                       f"not the head's {self.head.files_sha256[:12]}")
                self._retry_or_fail(job, f"{slot.device.label} ran another holdout")
                return
            if (manifest.get("model") or {}).get("sha256") != job.sha256:
                job.record(outcome="model_mismatch", reason="the model that ran is not the job's")
                self._retry_or_fail(job, f"the model {slot.device.label} ran is not {job.name}'s")
                return
        answered = (manifest or {}).get("images_answered") or 0
        if res.results is None or manifest is None or (res.exit_code != EXIT_OK and not answered):
            why = res.reason or f"lpirc run exited with code {res.exit_code}, no result log"
            job.record(outcome="failed", reason=why)
            self._fail(job, why)
            return
        self._score(job, slot, res)

    def _score(self, job: JobState, slot: _Slot, res: AttemptResult) -> None:
        """Write the run folder on the head, score it with the head's ground truth, add it to
        the standings. The only place a result is scored."""
        t0 = time.perf_counter()
        run_dir = self.cfg.out / "runs" / job.name
        run_dir.mkdir(parents=True, exist_ok=True)
        (run_dir / RESULTS).write_bytes(res.results or b"")
        write_json(run_dir / MANIFEST, self._head_manifest(parse_json(res.manifest) or {}))
        try:
            score = scoring.score_path(run_dir, ground_truth=self.cfg.ground_truth,
                                       rules=self.cfg.rules)
        except scoring.ScoringError as e:
            job.record(outcome="failed", reason=f"scoring: {e}")
            self._fail(job, f"scoring: {e}")
            return
        write_json(run_dir / SCORE, score)
        job.score = {k: score.get(k) for k in ("score", "top1", "top5", "images_answered",
                                               "images_total", "wall_time_s", "energy_wh",
                                               "energy_source")}
        job.score |= {k: score[k] for k in scoring.RULE_PARAMS if k in score}  # what it means
        job.status, job.reason = "done", res.reason  # a run stopped part-way keeps its reason
        job.standings = add_to_standings(self.cfg.db_path, run_dir, self.cfg.ground_truth,
                                         self.cfg.rules, job.name, score)
        # write, score, standings
        rec = job.record(outcome="done", score_s=round(time.perf_counter() - t0, 3))
        top1 = "n/a" if score.get("top1") is None else f"{100 * score['top1']:.2f} %"
        self.emit("done", f"{job.name} on {slot.device.label}: score {num(score.get('score'))} "
                          f"({self.cfg.rules}), top-1 {top1} (measured); lpirc run process "
                          f"{res.run_s:.2f} s, fleet overhead {rec.overhead_s:.2f} s "
                          f"(measured on the head)", job, slot)
        if job.standings.startswith("not recorded"):
            self.emit("note", f"{job.name}: standings {job.standings}", job, slot)
        self.save()

    def _head_manifest(self, manifest: dict) -> dict:
        """The device's manifest, its holdout's ``ground_truth`` the head's (the device's own,
        if any, kept as ``ground_truth_on_device``), so that ``lpirc score``, ``lpirc report``
        and ``lpirc leaderboard add`` score ``OUT/runs/<job>`` as the head did. The run's uid
        (``leaderboard.run_uid``) does not read that field."""
        hold = dict(manifest.get("holdout") or {})
        hold["ground_truth_on_device"] = hold.get("ground_truth")
        hold["ground_truth"] = str(Path(self.cfg.ground_truth).resolve())
        return manifest | {"holdout": hold}

    def _retry_or_fail(self, job: JobState, why: str) -> None:
        self.tries[job.name] = self.tries.get(job.name, 0) + 1
        if self.tries[job.name] >= self.cfg.max_attempts:
            self._fail(job, f"{why} (gave up after {self.tries[job.name]} attempts)")
            return
        job.status, job.device, job.reason = "queued", None, why
        self.emit("retry", f"{job.name} queued again: {why}", job)
        self.save()

    def _fail(self, job: JobState, why: str) -> None:
        job.status, job.reason = "failed", why
        self.emit("failed", f"{job.name}: {why}", job)
        self.save()

    def cancel(self) -> None:
        """Ctrl-C: every running and queued job is cancelled; done ones stay scored."""
        for job, _ in self.running.values():
            job.record(outcome="cancelled", ended_utc=now_utc())
        self.running.clear()
        n = 0
        for job in self.jobs:
            if job.status in ("queued", "running"):
                job.status, job.reason, n = "cancelled", "cancelled by Ctrl-C on the head", n + 1
        self.release()
        self.emit("cancelled", f"{n} job(s) cancelled by Ctrl-C; {self.counts()[2]} done "
                               "stay scored")
        self.save()

    def release(self) -> None:
        """Free every device this fleet still holds (its worker ends, its run child with it)."""
        for s in self.slots.values():
            if s.state in _LIVE:
                s.state = "released"
                self.pool.kill(s.device.label)
