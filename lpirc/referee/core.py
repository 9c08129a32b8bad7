"""The referee's rules, without HTTP: accounts and attempts, each team's image order, the
session clock, answers, power, and scoring a closed session with ``scoring``.

:class:`Referee` is what ``lpirc referee serve`` runs behind its web server; every method is a
plain call (tests and the CLI use them directly), safe to call from several threads.
"""

from __future__ import annotations

import json
import random
import re
import secrets
import threading
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from itsdangerous import BadSignature, URLSafeSerializer

import scoring
from lpirc import __version__, leaderboard
from lpirc.energy import power_log_wh
from lpirc.clock import SteadyWall
from lpirc.errors import InputError
from lpirc.holdout import files_sha256, scan_folder
from lpirc.referee import protocol as P
from lpirc.referee.config import RefereeConfig
from lpirc.referee.protocol import ProtocolError
from lpirc.referee.store import Answer, PowerReading, SessionRow, Store, Team
from lpirc.results import MANIFEST, RESULTS, SCORE, write_json
from scoring.names import label_images

METER_SESSION_S = 366 * 24 * 3600.0  # a meter's login lasts until it logs out
#: After a session ends, how long scoring waits for a meter that is logging the team to post a
#: reading at or after the end (readings arrive after the moment they measure).
METER_GRACE_S = 5.0
#: The longest stretch of a session without a meter reading for its energy to count as metered.
#: A Yokogawa WT310 updates every 0.1-1 s at the settings LPIRC used and lpirc's meter posts
#: every reading, so 2 s is at least one lost reading; across a longer gap the trapezoid draws a
#: straight line through power it never saw (a board can go from idle to full load and back in
#: it), which is an estimate, not a measurement.
METER_MAX_GAP_S = 2.0
#: The least average power a self-reported figure may claim (W): under it the figure is refused
#: (the session has no energy, hence no score) rather than ranked. 0.1 W is well under the idle
#: power of any board that has run an LPIRC entry (single-board computers, phones, Jetsons draw
#: watts); 1e-9 Wh would otherwise rank first.
SELF_MIN_W = 0.1


@dataclass
class Live:
    """An open session held in memory: its row and its image order (order[k-1] = the index of
    image k in the sorted holdout listing)."""

    row: SessionRow
    order: list[int]


def image_order(seed: int, n: int) -> list[int]:
    """A session's order of the holdout: 0..n-1 shuffled by random.Random(seed)."""
    order = list(range(n))
    random.Random(seed).shuffle(order)
    return order


class Referee:
    """The referee state over one database, one holdout and one ground truth.

    Raises InputError (one line) at start for a missing holdout or ground truth, a ground truth
    that leaves holdout images unlabelled, or an open session started on another holdout.
    """

    def __init__(self, cfg: RefereeConfig, announce=None) -> None:
        self.cfg = cfg
        self.announce = announce or (lambda line: None)  # one line per session event
        #: the referee's clock: unix seconds advancing with the monotonic clock (lpirc.clock)
        self.clock = SteadyWall()
        if cfg.rules not in scoring.RULES:
            raise InputError(f"unknown rule set {cfg.rules!r} (known: {', '.join(scoring.RULES)})")
        self.root = Path(cfg.holdout)
        # listed once, sorted (each session shuffles its own copy); one-line errors: missing,
        # not a folder, unreadable, no images
        self.files = scan_folder(self.root, "holdout").files
        self.sha256 = files_sha256(self.files)
        truth = scoring.read_ground_truth(cfg.ground_truth)
        labelled = label_images(truth, self.files)  # the scorer's rule (scoring.names)
        unlabelled = [f for f in self.files if f not in labelled]
        if unlabelled:
            raise InputError(f"{cfg.ground_truth}: no label for {len(unlabelled)} holdout "
                             f"image(s), e.g. {unlabelled[0]}")
        self.store = Store(cfg.db)
        self.store.put_config({"holdout": str(self.root.resolve()),
                               "ground_truth": str(Path(cfg.ground_truth).resolve()),
                               "runs_dir": str(cfg.runs_path().resolve()),
                               "standings_db": (str(Path(cfg.standings_db).resolve())
                                                if cfg.standings_db else None)})
        self.tokens = URLSafeSerializer(self.store.secret(), salt="lpirc-referee-token")
        self._lock = threading.RLock()
        self._score_lock = threading.Lock()
        self.live: dict[int, Live] = {}
        self.unscored = False  # a session was closed since score_pending last ran
        for row in self.store.sessions(open_only=True):
            if row.kind == "team" and row.holdout_sha256 != self.sha256:
                raise InputError(f"{cfg.db}: open session {row.id} ({row.team}, attempt "
                                 f"{row.attempt}) was started on another holdout listing; "
                                 f"serve the same --holdout until it has ended")
            if row.kind == "team" and row.class_base != cfg.class_base:
                raise InputError(f"{cfg.db}: open session {row.id} ({row.team}, attempt "
                                 f"{row.attempt}) takes CLASS_ID from {row.class_base}; serve "
                                 f"with --class-id-base {row.class_base} until it has ended")
            self.live[row.id] = Live(row, image_order(row.seed, row.image_count)
                                     if row.kind == "team" else [])

    @property
    def count(self) -> int:
        return len(self.files)

    def resumed(self, now: float) -> list[str]:
        """One line per team session still open from before a restart: it continues on its
        own clock (its tokens stay valid)."""
        out = []
        for lv in self.live.values():
            r = lv.row
            if r.kind == "team":
                kept, dups = self.store.counts(r.id)
                out.append(f"lpirc referee: {r.team} attempt {r.attempt} resumed (started "
                           f"{_utc(r.started)[11:19]} UTC, ends {_utc(r.deadline)[11:19]} UTC, "
                           f"{max(0.0, r.deadline - now):.0f} s left by its clock, {kept} "
                           f"answer(s) and {dups} duplicate(s) stored)")
        return out

    # --- login, tokens -----------------------------------------------------------------------

    def login(self, team: Team, now: float) -> str:
        """The session token of ``team`` (its password checked by the caller: the server's
        login gate): the open session's (same clock) or a new attempt's. ProtocolError 403 when
        no attempt is left."""
        with self._lock:
            for live in list(self.live.values()):
                if live.row.team_id == team.id:
                    if now < live.row.deadline:
                        return self.tokens.dumps({"sid": live.row.id})
                    self.close(live.row.id, live.row.deadline, "time_limit")
            return self.tokens.dumps({"sid": self._start(team, now).id})

    def _start(self, team: Team, now: float) -> SessionRow:
        kind = team.role
        if kind == "team":
            used = len(self.store.sessions(team_id=team.id, kind="team"))
            if used >= self.cfg.attempts:
                raise ProtocolError(403, f"No attempts left: team {team.name} has used {used} of "
                                         f"{self.cfg.attempts}")
        limit = self.cfg.time_limit_s if kind == "team" else METER_SESSION_S
        row = self.store.start_session(team, kind, now, limit, secrets.randbits(31), self.count,
                                       self.sha256, self.cfg.class_base, self.cfg.rules)
        self.live[row.id] = Live(row, image_order(row.seed, row.image_count) if kind == "team"
                                 else [])
        if kind == "team":
            self.announce(f"lpirc referee: {team.name} (team) attempt {row.attempt} started at "
                          f"{_utc(now)[11:19]} UTC, image order seed {row.seed}, ends at "
                          f"{_utc(row.deadline)[11:19]} UTC")
        else:
            self.announce(f"lpirc referee: {team.name} (meter) logged in at {_utc(now)[11:19]} UTC")
        return row

    def session_for(self, token: str | None, now: float, kind: str = "team") -> Live:
        """The open session a token names. ProtocolError 401 for a missing, forged or tampered
        token, a closed session or one past its time limit; 403 for the other kind of account."""
        if not token:
            raise ProtocolError(401, P.INVALID_TOKEN)
        try:
            sid = self.tokens.loads(token)["sid"]
        except (BadSignature, KeyError, TypeError):
            raise ProtocolError(401, P.INVALID_TOKEN) from None
        live = self.live.get(sid)
        if live is None:
            raise self._ended(sid)
        if now >= live.row.deadline:
            self.close(sid, live.row.deadline, "time_limit")
            raise ProtocolError(401, P.TIME_UP)
        if live.row.kind != kind:
            raise ProtocolError(403, f"This call is for the {kind} account, not for "
                                     f"{live.row.team} ({live.row.kind})")
        return live

    def _ended(self, sid: int) -> ProtocolError:
        """401 for a token whose session is closed, saying why."""
        row = self.store.session(sid) if isinstance(sid, int) else None
        if row is not None and row.end_reason == "time_limit":
            return ProtocolError(401, P.TIME_UP)
        return ProtocolError(401, f"{P.INVALID_TOKEN}: the session has ended"
                                  + (f" ({row.end_reason})" if row is not None else ""))

    # --- images ------------------------------------------------------------------------------

    def image_path(self, live: Live, k: int) -> Path:
        """The file served as image k (1-based) of a session."""
        return self.root / self.files[live.order[k - 1]]

    def zip_members(self, live: Live, first: int) -> list[tuple[int, Path]]:
        """(k, file) of the zip starting at image ``first``: up to 100 images."""
        last = min(first + P.ZIP_SIZE - 1, self.count)
        return [(k, self.image_path(live, k)) for k in range(first, last + 1)]

    # --- answers, energy, power --------------------------------------------------------------

    def add_answers(self, live: Live, answers: list[Answer], now: float) -> tuple[int, int]:
        """Store a batch (first answer per image kept). Returns (new, duplicates). ProtocolError
        401 when the session was closed meanwhile (nothing stored)."""
        with self._lock:  # a session is never closed (and scored) half-way through a batch
            if live.row.id not in self.live:
                raise self._ended(live.row.id)
            return self.store.add_answers(live.row.id, answers, now)

    def set_self_energy(self, live: Live, wh: float, method: str) -> None:
        self.store.set_self_energy(live.row.id, wh, method)

    def late_energy(self, token: str | None, wh: float, method: str, now: float) -> bool:
        """Store a device's energy figure posted within P.ENERGY_GRACE_S after its session
        ended at the time limit, and rescore the session if it was scored already. Returns
        False when the token names no such session (the caller answers as for any call)."""
        try:
            sid = self.tokens.loads(token or "")["sid"]
        except (BadSignature, KeyError, TypeError):
            return False
        row = self.store.session(sid) if isinstance(sid, int) else None
        if (row is None or row.kind != "team" or row.end_reason != "time_limit"
                or now - row.deadline > P.ENERGY_GRACE_S):
            return False
        with self._score_lock:  # not half-way through the scorer's own pass
            self.store.set_self_energy(sid, wh, method)
            row = self.store.session(sid)
            if row.score is not None:
                self.score(row)
        return True

    def add_power(self, player: str, readings: list[PowerReading], source: str) -> int:
        """Store a team's meter readings. ProtocolError 406 for an unknown team."""
        team = self.store.team(player)
        if team is None or team.role != "team":
            raise ProtocolError(406, f"Unknown player {player[:64]!r}: no such team")
        return self.store.add_power(team.id, readings, source)

    # --- closing and scoring -----------------------------------------------------------------

    def close(self, sid: int, ended: float, reason: str) -> bool:
        """End an open session (logout or time limit); it is scored by :meth:`score_pending`."""
        with self._lock:
            live = self.live.pop(sid, None)
            closed = self.store.end_session(sid, ended, reason)
            self.unscored = self.unscored or closed
        if closed and live is not None:
            r = live.row
            who = f"{r.team} attempt {r.attempt}" if r.kind == "team" else f"{r.team} (meter)"
            self.announce(f"lpirc referee: {who} ended ({reason}) after "
                          f"{ended - r.started:.1f} s")
        return closed

    def expire(self, now: float) -> list[int]:
        """Close every session past its time limit; returns their ids."""
        due = [lv.row for lv in list(self.live.values()) if now >= lv.row.deadline]
        for row in due:
            self.close(row.id, row.deadline, "time_limit")
        return [row.id for row in due]

    def score_pending(self, now: float | None = None) -> list[dict]:
        """Score every ended team session that has no score yet (after a logout, a time limit,
        or a restart that found some). A session whose team a meter is logging waits up to
        METER_GRACE_S after its end for the reading that covers the end (it stays pending and
        ``unscored`` stays set). Returns the scores made."""
        now = self.clock() if now is None else now
        out = []
        with self._score_lock:
            for row in self.store.sessions(kind="team"):
                if row.ended is None or row.score is not None:
                    continue
                if self._meter_behind(row, now):
                    self.unscored = True
                    continue
                out.append(self.score(row))
        return out

    def _meter_behind(self, row: SessionRow, now: float) -> bool:
        end = min(row.ended, row.deadline)
        if now - end >= METER_GRACE_S:
            return False
        times = [t for t, _, _ in self.store.power(row.team_id)]
        return bool(times) and times[-1] >= row.started - METER_GRACE_S and times[-1] < end

    def score(self, row: SessionRow) -> dict:
        """Score one ended session with ``scoring`` and store it; see :func:`score_session`."""
        s = score_session(self.store, row, self.root, self.files, Path(self.cfg.ground_truth),
                          self.cfg.runs_path().resolve(), self.cfg.standings_db)
        e = "n/a" if s["energy_wh"] is None else f"{s['energy_wh']:.4g} Wh"
        self.announce(f"lpirc referee: {row.team} attempt {row.attempt} scored: "
                      f"{'n/a' if s['score'] is None else format(s['score'], '.4g')} (top-1 "
                      f"{100 * s['top1']:.2f} %, {s['images_answered']}/{s['images_total']} "
                      f"answered, {s['answers_duplicate']} duplicate(s), energy {e} "
                      f"{s['energy_source']})")
        return s


# --- scoring a session ---------------------------------------------------------------------


def meter_gap_s(times: list[float], start: float, end: float) -> float | None:
    """The longest time (s) between consecutive meter readings over the session [start, end]:
    from the last reading at or before ``start``, through those inside, to the first at or after
    ``end`` (the trapezoid interpolates across each). None when the readings do not reach
    both ends of the session (the energy of its first or last part was never measured)."""
    before = [t for t in times if t <= start]
    after = [t for t in times if t >= end]
    if not before or not after:
        return None
    pts = [before[-1], *(t for t in times if start < t < end), after[0]]
    return max(b - a for a, b in zip(pts, pts[1:]))


def energy_of(store: Store, row: SessionRow) -> dict:
    """The session's energy: ``metered`` (the meter's readings integrated over the session
    window, trapezoid, lpirc.energy.power_log_wh) only where readings cover the whole session
    with no gap over METER_MAX_GAP_S; else ``self-reported`` (the device's own figure, when at
    or above the floor SELF_MIN_W x the session's seconds); else ``absent``, with why. Returns
    {"wh", "source", "method"}; wh None for absent."""
    end = min(row.ended if row.ended is not None else row.deadline, row.deadline)
    readings = store.power(row.team_id)
    why = "no meter readings for this team"
    if readings:
        gap = meter_gap_s([t for t, _, _ in readings], row.started, end)
        if gap is None:
            why = "the meter readings do not reach both ends of the session"
        elif gap > METER_MAX_GAP_S:
            why = (f"the meter readings leave a {gap:.1f} s gap in the session (at most "
                   f"{METER_MAX_GAP_S:g} s is metered)")
        else:
            samples = np.array([(t, w) for t, w, _ in readings], dtype=np.float64)
            wh, n = power_log_wh(samples, row.started, end, "meter readings")
            sources = sorted({s for _, _, s in readings})
            return {"wh": wh, "source": "metered",
                    "method": f"power meter ({', '.join(sources)}): trapezoid over the "
                              f"{end - row.started:.1f} s session, {n} reading(s) inside it, "
                              f"largest gap {gap:.2f} s (at most {METER_MAX_GAP_S:g} s)"}
    if row.self_energy_wh is not None:
        floor = SELF_MIN_W * (end - row.started) / 3600.0
        if row.self_energy_wh < floor:
            return {"wh": None, "source": "absent",
                    "method": f"self-reported {row.self_energy_wh:.3g} Wh refused: under the "
                              f"floor of {SELF_MIN_W:g} W over the {end - row.started:.1f} s "
                              f"session ({floor:.3g} Wh); not metered: {why}"}
        return {"wh": row.self_energy_wh, "source": "self-reported",
                "method": f"posted by the device ({row.self_energy_method}); not metered: {why}"}
    return {"wh": None, "source": "absent", "method": f"no energy figure: {why}"}


_SAFE = re.compile(r"[^A-Za-z0-9_.-]+")


def _utc(t: float) -> str:
    from datetime import datetime, timezone

    return datetime.fromtimestamp(t, tz=timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def write_session_log(store: Store, row: SessionRow, files: list[str], out: Path) -> int:
    """The session's answers as ``results.jsonl`` (the format ``lpirc run`` writes and
    ``scoring`` reads): one line per kept answer, ``image`` = the holdout file, ``index`` =
    the team's image number, ``top5`` = [class], ``t_s`` = seconds after login. Returns lines."""
    order = image_order(row.seed, row.image_count)
    lines = []
    for k, cls, given, conf, *_box, t in store.answers(row.id):
        lines.append(json.dumps({"image": files[order[k - 1]], "index": k, "top5": [cls],
                                 "scores": [conf], "class_given": given, "error": None,
                                 "t_s": round(t - row.started, 4), "late": False},
                                separators=(",", ":")))
    (out / RESULTS).write_text("".join(ln + "\n" for ln in lines), encoding="utf-8")
    return len(lines)


def score_session(store: Store, row: SessionRow, root: Path, files: list[str], gt: Path,
                  runs_dir: Path, standings_db: Path | None = None) -> dict:
    """Write the session's run folder (results.jsonl, manifest.json, score.json) under
    ``runs_dir`` and score it with ``scoring.score_path`` under the session's rule set.

    Images never answered count wrong; an answer arrives within the time limit or is refused,
    so none is late. top-5 is n/a (one class per answer). The energy is labelled metered,
    self-reported or absent (see :func:`energy_of`). Returns the score.json object."""
    out = runs_dir / f"{row.id:05d}-{_SAFE.sub('_', row.team)[:40]}-attempt{row.attempt}"
    out.mkdir(parents=True, exist_ok=True)
    n = write_session_log(store, row, files, out)
    kept, dups = store.counts(row.id)
    end = min(row.ended if row.ended is not None else row.deadline, row.deadline)
    energy = energy_of(store, row)
    manifest = {
        "lpirc_version": __version__, "kind": "referee session", "team": row.team,
        "attempt": row.attempt, "session_id": row.id,
        "status": "budget_exhausted" if row.end_reason == "time_limit" else "complete",
        "end_reason": row.end_reason,
        "holdout": {"path": str(root.resolve()), "image_count": row.image_count,
                    "order_seed": row.seed, "files_sha256": row.holdout_sha256,
                    "ground_truth": str(gt.resolve())},
        "budget": {"clock": "wall", "time_limit_s": row.time_limit_s},
        "class_id_base": row.class_base, "start_utc": _utc(row.started), "end_utc": _utc(end),
        "wall_time_s": round(end - row.started, 4), "inference_time_s": None,
        "energy": {"wh": energy["wh"],
                   "source": "measured" if energy["source"] == "metered" else energy["source"],
                   "method": energy["method"]},
        "images_answered": n, "answers_duplicate": dups, "notes": [],
    }
    write_json(out / MANIFEST, manifest)
    rule = scoring.RULES[row.rules]
    opts = {"time_limit_s": row.time_limit_s} if "time_limit_s" in rule.options else {}
    score = scoring.score_path(out, gt, row.rules, **opts)
    score.update({"team": row.team, "attempt": row.attempt, "session_id": row.id,
                  "end_reason": row.end_reason, "energy_source": energy["source"],
                  "energy_method": energy["method"],
                  "answers_duplicate": dups, "top5": None})
    score["source"].update({"energy_wh": energy["source"],
                            "top5": "n/a: the referee receives one class per image",
                            "top1": "measured by the referee"})
    write_json(out / SCORE, score)
    store.set_score(row.id, score, str(out))
    if standings_db is not None:
        publish(standings_db, row, score)
    return score


def publish(standings_db: Path, row: SessionRow, score: dict) -> None:
    """Add a scored session to lpirc's standings database (``lpirc.leaderboard``); a session
    scored again (a meter log imported later) replaces its entry."""
    entry = leaderboard.Entry(**entry_fields(leaderboard.make_uid, row, score))
    conn = leaderboard.open_db(standings_db)
    try:
        try:
            leaderboard.remove(conn, entry.uid)
        except InputError:
            pass  # not there yet: the session's first score
        leaderboard.add_entry(conn, entry)
        conn.commit()
    finally:
        conn.close()


def entry_fields(make_uid, row: SessionRow, score: dict) -> dict:
    """A referee score as the standings ``Entry``'s fields (source ``referee``; energy labelled
    metered, self-reported or absent)."""
    return {
        "uid": make_uid({"kind": "referee", "session_id": row.id, "team": row.team,
                         "started": row.started, "holdout_sha256": row.holdout_sha256}),
        "submission": f"{row.team} attempt {row.attempt}", "team": row.team, "source": "referee",
        "rules": score["rules"], "score": score["score"], "top1": score["top1"], "top5": None,
        "images": score["images_total"], "answered": score["images_answered"],
        "failed": score["images_failed"], "unanswered": score["images_unanswered"],
        "late": score["images_late"], "wall_s": score["wall_time_s"], "inference_s": None,
        "energy_wh": score["energy_wh"], "energy_label": score["energy_source"],
        "model_sha256": None, "holdout_sha256": row.holdout_sha256,
        "lpirc_version": __version__, "runtime": None, "device": None,
        "created_utc": _utc(row.started), "run_dir": score["run"],
        "ground_truth": score["ground_truth"],
        "extra": {"status": "budget_exhausted" if row.end_reason == "time_limit" else "complete",
                  "end_reason": row.end_reason, "energy_method": score.get("energy_method"),
                  "answers_duplicate": score.get("answers_duplicate"),
                  "warnings": score.get("warnings") or []},
    }
