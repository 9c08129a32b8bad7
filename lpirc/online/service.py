"""The service's rules without HTTP: accounts and tokens, uploads (checks, quota, files on
disk before the row that acknowledges them), who may see what, phases and publication, and the
organiser's view. Every method is a plain call (the routes, the CLI and tests use them).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import threading
import time
import uuid
from pathlib import Path
from typing import Any, Callable

from itsdangerous import BadSignature, SignatureExpired, URLSafeTimedSerializer

import scoring
from lpirc.errors import InputError
from lpirc.holdout import content_sha256, open_holdout
from lpirc.online import standings as st
from lpirc.online.checks import check_refusal, quick_refusal
from lpirc.online.config import COUNTS, DEFAULT_COUNTS, PHASES, OnlineConfig, PhaseData
from lpirc.online.errors import ApiError
from lpirc.online.executor import Executor, local_executor, ray_executor
from lpirc.online.scheduler import PhaseHoldout, Scheduler
from lpirc.online.store import QuotaExceeded, Store, Submission, Team, utc_iso
from scoring.names import label_images

TOKEN_MAX_AGE_S = 7 * 24 * 3600  # a token from /api/login lasts a week
HIDDEN_SCORE = "scored (final phase: the score is hidden until the organiser publishes it)"
_CHECKS = threading.BoundedSemaphore(2)  # upload checks (a child process each) at once


def check_phase(p: PhaseData) -> PhaseHoldout:
    """List a phase's holdout (seed 0, as every ``lpirc run`` of the service lists it) and check
    its ground truth labels every image. InputError (one line naming the file) otherwise."""
    h = open_holdout(p.holdout, seed=0)
    truth = scoring.read_ground_truth(p.ground_truth, cache=False)
    labelled = label_images(truth, h.files)
    missing = [f for f in h.files if f not in labelled]
    if missing:
        raise InputError(f"{p.ground_truth}: no label for {len(missing)} image(s) of the "
                         f"{p.name} holdout {p.holdout}, e.g. {missing[0]}")
    return PhaseHoldout(p.name, Path(p.holdout).resolve(), Path(p.ground_truth).resolve(),
                        h.files_sha256, len(h.files))


def make_executor(cfg: OnlineConfig, dev: PhaseHoldout) -> Executor:
    """The devices ``cfg`` asks for: the fleet's local pool, or its Ray devices (a local
    instance, or the cluster at ``cfg.address``). Each device checks it lists the development
    holdout as the service does: the same names and the same bytes (the content digest)."""
    work = cfg.files / "runs"
    digest = content_sha256(open_holdout(dev.holdout, seed=0))
    if cfg.executor == "ray" or cfg.address:
        return ray_executor(cfg.devices, cfg.address, dev.holdout, digest, work)
    return local_executor(cfg.devices, dev.holdout, digest, work)


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_durably(path: Path, data: bytes) -> None:
    with open(path, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


class Service:
    """One online competition over one database. ``announce`` gets one line per event."""

    def __init__(self, cfg: OnlineConfig, announce: Callable[[str], None] | None = None,
                 executor=None) -> None:
        cfg = dataclasses.replace(cfg, db=Path(cfg.db).absolute())  # runs start in their folder
        self.cfg = cfg
        self.announce = announce or (lambda line: None)
        self.phases = {name: check_phase(p) for name, p in cfg.phases.items()}
        self.store = Store(cfg.db)
        self.store.set_meta("config", json.dumps({
            "phases": {n: {"holdout": str(p.holdout), "ground_truth": str(p.ground_truth),
                           "files_sha256": p.files_sha256, "images": p.count}
                       for n, p in self.phases.items()},
            "rules": cfg.rules, "time_limit_s": cfg.time_limit_s, "counts": cfg.counts}))
        self.tokens = URLSafeTimedSerializer(self.store.secret(), salt="lpirc-online-token")
        self.pool = executor if executor is not None else make_executor(cfg, self.phases["dev"])
        self.scheduler = Scheduler(self.store, self.pool, cfg, self.phases, self.announce)
        self.started = time.time()

    def start(self) -> list[str]:
        """Start the devices and the scheduler (which first requeues what a restart
        interrupted); the device labels."""
        labels = self.pool.start()
        self.scheduler.start()
        return labels

    def stop(self) -> None:
        self.scheduler.stop()

    # --- accounts ------------------------------------------------------------------------------

    def verify(self, name: str, password: str) -> Team | None:
        """The account if the password is right, else None (the login gate's check: ~50 ms of
        scrypt, the same for an unknown name)."""
        return self.store.check_login(name, password)

    def token(self, team: Team) -> str:
        """A token for ``team`` (signed, valid :data:`TOKEN_MAX_AGE_S`)."""
        return self.tokens.dumps({"team": team.id})

    def team_for(self, token: str | None) -> Team:
        """The account a token was given to; ApiError 401 when missing, bad or expired."""
        if not token:
            raise ApiError(401, "not logged in: send Authorization: Bearer TOKEN (from POST "
                                "/api/login)", headers={"WWW-Authenticate": "Bearer"})
        try:
            data = self.tokens.loads(token, max_age=TOKEN_MAX_AGE_S)
            team = self.store.team(int(data["team"]))
        except SignatureExpired:
            raise ApiError(401, "token expired: log in again",
                           headers={"WWW-Authenticate": "Bearer"}) from None
        except (BadSignature, KeyError, TypeError, ValueError):
            team = None
        if team is None:
            raise ApiError(401, "invalid token: log in again (POST /api/login)",
                           headers={"WWW-Authenticate": "Bearer"})
        return team

    # --- uploads -------------------------------------------------------------------------------

    def upload(self, team: Team, model: bytes, sidecar: bytes | None,
               label: str | None) -> tuple[int, dict[str, Any]]:
        """Check, store and queue an upload: (202, {"id", ...}) or (422, {"id", "failure"})
        for a refused file (recorded, never charged). ApiError 429 over the quota, 403 for an
        organiser account."""
        if team.role != "team":
            raise ApiError(403, f"{team.name} is an organiser account; teams upload")
        now = time.time()
        phase = self.store.phase()
        if phase not in self.phases:
            raise ApiError(409, f"the {phase} phase is open but the service has no {phase} "
                                "holdout (restart it with --final-holdout)")
        try:
            self.store.check_quota(team.id, now, self.cfg.per_team_per_day,
                                   self.cfg.per_team_at_once)
        except QuotaExceeded as q:
            raise self._quota_error(q) from None
        label = (label or "").strip()[:100] or f"upload {utc_iso(now)}"
        sha = hashlib.sha256(model).hexdigest()
        try:
            folder = self._save(model, sidecar)
        except OSError as e:  # a full disk, say: nothing acknowledged, the team may retry
            raise ApiError(503, f"cannot store the upload, nothing kept: {e.strerror or e}") \
                from None
        refusal = quick_refusal(model, sidecar, "model.tflite")
        if refusal is None:
            with _CHECKS:
                refusal = check_refusal(folder / "model.tflite", self.cfg.check_timeout_s)
        try:
            sid = self.store.add_submission(
                team, phase, label, sha, len(model), folder, sidecar is not None, now,
                self.cfg.per_team_per_day, self.cfg.per_team_at_once,
                (refusal.cls, refusal.message) if refusal else None)
        except QuotaExceeded as q:  # another upload of the team took the last place meanwhile
            raise self._quota_error(q) from None
        if refusal is not None:
            self.announce(f"submission {sid} ({team.name}): refused at upload "
                          f"({refusal.cls}): {refusal.message}")
            return 422, {"id": sid, "detail": refusal.message, "failure": refusal.to_json(),
                         "charged": False}
        self.announce(f"submission {sid} ({team.name}): queued ({len(model)} bytes, {phase} "
                      "phase)")
        self.scheduler.wake.set()
        return 202, {"id": sid, "state": "queued", "phase": phase,
                     "position": self.store.queue_position(sid)}

    def _quota_error(self, q: QuotaExceeded) -> ApiError:
        headers = {"Retry-After": str(q.retry_after_s)} if q.retry_after_s else {}
        return ApiError(429, q.message, headers=headers, next_allowed=q.next_allowed,
                        retry_after_s=q.retry_after_s)

    def _save(self, model: bytes, sidecar: bytes | None) -> Path:
        """The upload's files, written and synced before any row names them."""
        base = self.cfg.files / "uploads"
        folder = base / uuid.uuid4().hex
        folder.mkdir(parents=True)
        _write_durably(folder / "model.tflite", model)
        if sidecar is not None:
            _write_durably(folder / "model.json", sidecar)
        _fsync_dir(folder)
        _fsync_dir(base)
        return folder

    # --- what a team may see -------------------------------------------------------------------

    def own(self, team: Team, sid: int) -> Submission:
        """The submission if ``team`` may read it (its own; an organiser: any); ApiError 404
        otherwise (another team's submission is not told apart from a missing one)."""
        sub = self.store.submission(sid)
        if sub is None or (team.role != "organiser" and sub.team_id != team.id):
            raise ApiError(404, f"no submission {sid} of team {team.name}")
        return sub

    def score_visible(self, team: Team, sub: Submission) -> bool:
        return sub.phase != "final" or self.store.published() or team.role == "organiser"

    def view(self, team: Team, sub: Submission) -> dict[str, Any]:
        """``GET /api/submissions/{id}``'s answer."""
        visible = self.score_visible(team, sub)
        failure = ({"class": sub.failure_class, "message": sub.failure_message}
                   if sub.state == "failed" else None)
        links = {"page": f"/submissions/{sub.id}", "log": f"/submissions/{sub.id}/log"}
        if sub.state == "scored" and visible:
            links["report"] = f"/submissions/{sub.id}/report"
        return {"id": sub.id, "team": sub.team, "label": sub.label, "phase": sub.phase,
                "state": sub.state, "failure": failure,
                "score": sub.score if visible else None,
                "score_hidden": sub.state == "scored" and not visible,
                "position": self.store.queue_position(sub.id) if sub.state == "queued" else None,
                "device": sub.device if sub.state in ("running", "scoring") else None,
                "since_utc": utc_iso(self._since(sub)),
                "uploaded_utc": utc_iso(sub.created), "ended_utc": utc_iso(sub.ended),
                "attempts": sub.attempts, "charged": sub.charged,
                "model_sha256": sub.model_sha256, "model_bytes": sub.model_bytes,
                "sidecar": sub.has_sidecar, "links": links}

    def _since(self, sub: Submission) -> float | None:
        """When a running submission started on its device, or a scoring one's run ended (its
        ``scoring`` event); None in the other states."""
        if sub.state == "running":
            return sub.started
        if sub.state == "scoring":
            return next((e.t for e in reversed(self.store.events(sub.id))
                         if e.state == "scoring"), None)
        return None

    def events(self, team: Team, sub: Submission) -> list[dict[str, Any]]:
        """The submission's state transitions; a hidden score (final phase, not published)
        is left out of the ``scored`` line."""
        visible = self.score_visible(team, sub)
        return [{"t_utc": utc_iso(e.t), "state": e.state, "attempt": e.attempt,
                 "device": e.device,
                 "message": e.message if visible or e.state != "scored" else HIDDEN_SCORE}
                for e in self.store.events(sub.id)]

    def log_text(self, team: Team, sub: Submission) -> str:
        """The submission's history and, per attempt, the stderr of its ``lpirc run``."""
        lines = [f"submission {sub.id} of {sub.team} ({sub.label}), {sub.phase} phase, "
                 f"state {sub.state}"]
        lines += [f"{e['t_utc']}  {e['state']:<8} {e['message']}" for e in self.events(team, sub)]
        runs = self.cfg.files / "runs" / str(sub.id)
        for attempt in range(1, sub.attempts + 1):
            err = runs / f"attempt-{attempt}" / "stderr.txt"
            if err.is_file():
                text = err.read_text(errors="replace").strip() or "(empty)"
                lines += ["", f"--- lpirc run, attempt {attempt}: stderr ---", text]
        return "\n".join(lines) + "\n"

    def report_path(self, team: Team, sub: Submission) -> Path:
        if sub.state != "scored" or not sub.run_dir:
            raise ApiError(404, f"submission {sub.id} has no report: it is {sub.state}")
        if not self.score_visible(team, sub):
            raise ApiError(403, f"submission {sub.id}: final-phase scores are hidden until the "
                                "organiser publishes them")
        path = Path(sub.run_dir) / "report.html"
        if not path.is_file():
            raise ApiError(404, f"submission {sub.id}: its report was not written (see its log)")
        return path

    # --- standings, phases ---------------------------------------------------------------------

    def standings(self, team: Team | None, phase: str | None = None,
                  rank: str | None = None) -> dict[str, Any]:
        """A phase's standings (default: the phase open now) as ``team`` may see them, counting
        each team's ``rank`` (``best`` or ``latest``) scored submission; default: the phase's
        ``--dev-counts``/``--final-counts``. ApiError 400 for another phase or rank."""
        phase = phase or self.store.phase()
        if phase not in PHASES:
            raise ApiError(400, f"phase {phase!r}: expected one of {', '.join(PHASES)}")
        if rank and rank not in COUNTS:
            raise ApiError(400, f"rank {rank[:40]!r}: expected one of {', '.join(COUNTS)}")
        default = self.cfg.counts.get(phase, DEFAULT_COUNTS[phase])
        rule = rank or default
        hidden = (phase == "final" and not self.store.published()
                  and (team is None or team.role != "organiser"))
        sha = self.phases[phase].files_sha256 if phase in self.phases else None
        table = [] if hidden else st.rows(self.store, phase, rule, sha, self.cfg.rules)
        return {"phase": phase, "current_phase": self.store.phase(), "counts": rule,
                "counts_default": default,
                "rules": self.cfg.rules, "hidden": hidden,
                "images": self.phases[phase].count if phase in self.phases else None,
                "interval": st.INTERVAL, "updated_utc": utc_iso(time.time()),
                "standings": table}

    def organiser(self) -> dict[str, Any]:
        """Queue, running and scoring submissions, devices, failures by class, per-team
        counts."""
        queue = [{"id": s.id, "team": s.team, "phase": s.phase, "position": i + 1,
                  "uploaded_utc": utc_iso(s.created), "attempts": s.attempts}
                 for i, s in enumerate(self.store.submissions(state="queued"))]
        running, scoring = ([{"id": s.id, "team": s.team, "device": s.device,
                              "attempt": s.attempts, "since_utc": utc_iso(self._since(s))}
                             for s in self.store.submissions(state=state)]
                            for state in ("running", "scoring"))
        devices = [dict(d, since_utc=utc_iso(d.get("since"))) for d in self.scheduler.devices()]
        return {"phase": self.store.phase(), "published": self.store.published(),
                "queue": queue, "running": running, "scoring": scoring, "devices": devices,
                **self.store.counts()}

