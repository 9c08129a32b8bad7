"""The online service's database: one SQLite file in WAL mode, the only state the service keeps.

Tables: ``meta`` (token secret, current phase, what is published, the config the server was
last started with), ``teams`` (name, role ``team`` or ``organiser``, scrypt password hash: the
referee's :func:`~lpirc.referee.store.hash_password`), ``submissions`` (one row per upload:
its files, phase, state, attempts, failure, score), ``events`` (every state transition of a
submission, in order: what the team's page and the organiser's log show).

The file is marked as lpirc's online database with ``PRAGMA application_id`` and versioned with
``PRAGMA user_version`` (:data:`SCHEMA_VERSION`); a newer or foreign file is refused in one line.

Durability: every write is one transaction committed with ``synchronous=FULL`` before the
server answers, so a ``kill -9`` of the service loses nothing it acknowledged. A state change
is conditional on the state it leaves (``UPDATE ... WHERE state = 'running' AND attempts = ?``):
an attempt that a restart has already requeued can never be scored, and a submission is
scored at most once. Times are unix seconds (``time.time()``).
"""

from __future__ import annotations

import datetime as dt
import json
import os
import secrets
import sqlite3
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lpirc.errors import InputError
from lpirc.online.config import PHASES, STATES
from lpirc.referee.store import (check_account, create_private_file, hash_password, insert_account,
                                 verify_login)

SCHEMA_VERSION = 2  # 2: the state 'scoring' (schema 1's files are upgraded when opened)
APPLICATION_ID = 0x4C504F4E  # "LPON"
ROLES = ("team", "organiser")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS teams (
    id INTEGER PRIMARY KEY, name TEXT NOT NULL UNIQUE,
    role TEXT NOT NULL CHECK (role IN ('team', 'organiser')),
    pw_hash TEXT NOT NULL, created REAL NOT NULL);
CREATE TABLE IF NOT EXISTS submissions (
    id INTEGER PRIMARY KEY, team_id INTEGER NOT NULL REFERENCES teams(id),
    phase TEXT NOT NULL, label TEXT NOT NULL, created REAL NOT NULL, day TEXT NOT NULL,
    model_sha256 TEXT NOT NULL, model_bytes INTEGER NOT NULL, folder TEXT NOT NULL,
    has_sidecar INTEGER NOT NULL,
    state TEXT NOT NULL CHECK (state IN ('queued', 'running', 'scoring', 'scored', 'failed')),
    charged INTEGER NOT NULL, attempts INTEGER NOT NULL DEFAULT 0,
    device TEXT, started REAL, ended REAL,
    failure_class TEXT, failure_message TEXT, score_json TEXT, run_dir TEXT);
CREATE INDEX IF NOT EXISTS submissions_team ON submissions (team_id, day);
CREATE INDEX IF NOT EXISTS submissions_state ON submissions (state, id);
CREATE TABLE IF NOT EXISTS events (
    id INTEGER PRIMARY KEY, submission_id INTEGER NOT NULL REFERENCES submissions(id),
    t REAL NOT NULL, state TEXT NOT NULL, attempt INTEGER NOT NULL, device TEXT,
    message TEXT NOT NULL);
CREATE INDEX IF NOT EXISTS events_submission ON events (submission_id, id);
"""


@dataclass(frozen=True)
class Team:
    id: int
    name: str
    role: str  # "team" | "organiser"


@dataclass(frozen=True)
class Submission:
    """One upload. Times in unix seconds; ``day`` the UTC date of the upload (quota day);
    ``folder`` holds ``model.tflite`` (and ``model.json``, its sidecar); ``charged``: counts
    against the team's quota; ``attempts``: runs started on a device."""

    id: int
    team_id: int
    team: str
    phase: str
    label: str
    created: float
    day: str
    model_sha256: str
    model_bytes: int
    folder: str
    has_sidecar: bool
    state: str
    charged: bool
    attempts: int
    device: str | None
    started: float | None
    ended: float | None
    failure_class: str | None
    failure_message: str | None
    score: dict | None
    run_dir: str | None

    @property
    def model(self) -> Path:
        return Path(self.folder) / "model.tflite"


@dataclass(frozen=True)
class Event:
    t: float
    state: str
    attempt: int
    device: str | None
    message: str


class QuotaExceeded(Exception):
    """A team's upload over its quota: ``message`` (one line), ``retry_after_s`` (seconds until
    the next upload is allowed, None when that depends on a run ending), ``next_allowed``
    (ISO-8601 UTC, or a sentence)."""

    def __init__(self, message: str, retry_after_s: int | None, next_allowed: str) -> None:
        super().__init__(message)
        self.message, self.retry_after_s, self.next_allowed = message, retry_after_s, next_allowed


_SUB_COLS = ("s.id, s.team_id, t.name, s.phase, s.label, s.created, s.day, s.model_sha256, "
             "s.model_bytes, s.folder, s.has_sidecar, s.state, s.charged, s.attempts, s.device, "
             "s.started, s.ended, s.failure_class, s.failure_message, s.score_json, s.run_dir")


def _submission(row) -> Submission:
    v = list(row)
    v[10], v[12] = bool(v[10]), bool(v[12])
    v[19] = json.loads(v[19]) if v[19] else None
    return Submission(*v)


def utc_day(t: float) -> str:
    return dt.datetime.fromtimestamp(t, dt.timezone.utc).strftime("%Y-%m-%d")


def utc_iso(t: float | None) -> str | None:
    if t is None:
        return None
    return dt.datetime.fromtimestamp(t, dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def next_utc_midnight(t: float) -> float:
    d = dt.datetime.fromtimestamp(t, dt.timezone.utc).date() + dt.timedelta(days=1)
    return dt.datetime(d.year, d.month, d.day, tzinfo=dt.timezone.utc).timestamp()


class Store:
    """The online database. Thread-safe: one connection, one lock, one transaction per call.

    Raises InputError (one line naming the file) when the file cannot be opened, is not an
    lpirc online database, or has a schema this lpirc does not read.
    """

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)
        self._lock = threading.Lock()
        if self.path.is_dir():
            raise InputError(f"{self.path}: is a folder, expected the online database file")
        if not self.path.exists():  # a missing folder is one line saying so (referee's words)
            create_private_file(self.path, "the online database")
        try:
            self._db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None,
                                       timeout=10.0)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=FULL")
            self._migrate()
        except sqlite3.DatabaseError as e:
            raise InputError(f"{self.path}: not an lpirc online database ({e})") from None

    def _migrate(self) -> None:
        self._db.execute("BEGIN IMMEDIATE")
        try:
            app = self._db.execute("PRAGMA application_id").fetchone()[0]
            version = self._db.execute("PRAGMA user_version").fetchone()[0]
            tables = self._db.execute("SELECT count(*) FROM sqlite_master").fetchone()[0]
            if app != APPLICATION_ID and (app != 0 or tables or version):
                raise InputError(f"{self.path}: a SQLite database, but not an lpirc online "
                                 "database")
            if version > SCHEMA_VERSION:
                raise InputError(f"{self.path}: online database schema {version} is newer than "
                                 f"this lpirc reads ({SCHEMA_VERSION}); upgrade lpirc")
            if version == 1:
                self._upgrade_v1()
            if version < SCHEMA_VERSION:
                for stmt in _SCHEMA.split(";"):  # not executescript: it would COMMIT first
                    if stmt.strip():
                        self._db.execute(stmt)
                self._db.execute(f"PRAGMA application_id = {APPLICATION_ID}")
                self._db.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
            self._db.execute("COMMIT")
        except BaseException:
            if self._db.in_transaction:
                self._db.execute("ROLLBACK")
            raise

    def _upgrade_v1(self) -> None:
        """Schema 1 -> 2, in the caller's transaction: the submissions table made again (SQLite
        cannot change a CHECK; 2's allows 'scoring'), its rows copied as they are; its indexes
        are made again by the schema that follows."""
        create = next(stmt for stmt in _SCHEMA.split(";")
                      if "TABLE IF NOT EXISTS submissions (" in stmt)
        self._db.execute(create.replace("submissions (", "submissions_v2 (", 1))
        self._db.execute("INSERT INTO submissions_v2 SELECT * FROM submissions")
        self._db.execute("DROP TABLE submissions")  # and its indexes
        self._db.execute("ALTER TABLE submissions_v2 RENAME TO submissions")

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def _tx(self, fn):
        """Run ``fn(db)`` in one BEGIN IMMEDIATE transaction under the lock; its result."""
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                out = fn(self._db)
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
        return out

    # --- meta ----------------------------------------------------------------------------------

    def meta(self, key: str, default: str | None = None) -> str | None:
        with self._lock:
            row = self._db.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return row[0] if row else default

    def set_meta(self, key: str, value: str) -> None:
        with self._lock:
            self._db.execute("INSERT OR REPLACE INTO meta (key, value) VALUES (?, ?)",
                             (key, value))

    def secret(self) -> bytes:
        """The token-signing secret: 32 random bytes made the first time, kept in the database
        (tokens stay valid across a restart), never a fixed default."""
        with self._lock:
            self._db.execute("INSERT OR IGNORE INTO meta (key, value) VALUES ('token_secret', ?)",
                             (secrets.token_hex(32),))
            row = self._db.execute("SELECT value FROM meta WHERE key = 'token_secret'").fetchone()
        return bytes.fromhex(row[0])

    def phase(self) -> str:
        """The phase uploads go to now: ``dev`` until the organiser opens ``final``."""
        return self.meta("phase", "dev")

    def published(self) -> bool:
        """Whether the final phase's scores are published (shown to teams)."""
        return self.meta("final_published", "0") == "1"

    def set_phase(self, phase: str) -> None:
        """Open ``phase`` for uploads (the organiser's; CLI and API). InputError for another
        name."""
        if phase not in PHASES:
            raise InputError(f"phase {phase!r}: expected one of {', '.join(PHASES)}")
        self.set_meta("phase", phase)

    def publish(self, published: bool = True) -> None:
        """Show (or hide again) the final phase's scores to teams."""
        self.set_meta("final_published", "1" if published else "0")

    def config(self) -> dict:
        value = self.meta("config")
        return json.loads(value) if value else {}

    # --- teams ---------------------------------------------------------------------------------

    def add_team(self, name: str, password: str, role: str = "team") -> Team:
        """Add an account. InputError if the name is taken or not 1-64 printable characters, the
        password empty, or the role unknown."""
        check_account(name, role, ROLES)
        if not password:
            raise InputError(f"team {name!r}: the password must not be empty")
        pw = hash_password(password)
        with self._lock:
            return Team(insert_account(self._db, self.path, name, pw, role), name, role)

    def team(self, team_id: int) -> Team | None:
        with self._lock:
            row = self._db.execute("SELECT id, name, role FROM teams WHERE id = ?",
                                   (team_id,)).fetchone()
        return Team(*row) if row else None

    def teams(self) -> list[Team]:
        with self._lock:
            rows = self._db.execute("SELECT id, name, role FROM teams ORDER BY name").fetchall()
        return [Team(*r) for r in rows]

    def check_login(self, name: str, password: str) -> Team | None:
        """The account if ``password`` is right, else None (unknown name and wrong password
        alike, in the same time). Scrypt, ~50 ms: the service calls it through its login gate
        (:mod:`lpirc.login_gate`), never on a request thread of its own."""
        with self._lock:
            row = self._db.execute("SELECT id, name, role, pw_hash FROM teams WHERE name = ?",
                                   (name,)).fetchone()
        return verify_login((Team(*row[:3]), row[3]) if row else None, password)

    # --- submissions ---------------------------------------------------------------------------

    def quota_used(self, team_id: int, now: float) -> tuple[int, int]:
        """(submissions charged today (UTC day), submissions queued, running or scoring) of a
        team."""
        with self._lock:
            return self._quota_used(self._db, team_id, now)

    @staticmethod
    def _quota_used(db, team_id: int, now: float) -> tuple[int, int]:
        today = db.execute("SELECT count(*) FROM submissions WHERE team_id = ? AND day = ? "
                           "AND charged = 1", (team_id, utc_day(now))).fetchone()[0]
        busy = db.execute("SELECT count(*) FROM submissions WHERE team_id = ? AND state IN "
                          "('queued', 'running', 'scoring')", (team_id,)).fetchone()[0]
        return today, busy

    def check_quota(self, team_id: int, now: float, per_day: int | None,
                    at_once: int | None, db=None) -> None:
        """Raise :class:`QuotaExceeded` when one more upload would pass a limit."""
        today, busy = (self._quota_used(db, team_id, now) if db is not None
                       else self.quota_used(team_id, now))
        if per_day is not None and today >= per_day:
            nxt = next_utc_midnight(now)
            raise QuotaExceeded(
                f"quota: {today} of {per_day} submissions a UTC day used; the next one is "
                f"allowed at {utc_iso(nxt)}", max(1, int(nxt - now + 0.999)), utc_iso(nxt))
        if at_once is not None and busy >= at_once:
            raise QuotaExceeded(
                f"quota: {busy} of {at_once} submissions at once queued, running or scoring; "
                "the next one is allowed when one of them ends", None,
                "when one of your queued, running or scoring submissions ends")

    def add_submission(self, team: Team, phase: str, label: str, sha256: str, size: int,
                       folder: Path, has_sidecar: bool, now: float, per_day: int | None = None,
                       at_once: int | None = None, failure: tuple[str, str] | None = None) -> int:
        """Record an upload whose files are already on disk: ``queued`` and charged, checked
        against the quota in the same transaction (:class:`QuotaExceeded`); or, with
        ``failure`` = (class, message), ``failed`` at upload, never charged. Returns its id."""

        def insert(db):
            if failure is None:
                self.check_quota(team.id, now, per_day, at_once, db=db)
            state, charged = ("failed", 0) if failure else ("queued", 1)
            cur = db.execute(
                "INSERT INTO submissions (team_id, phase, label, created, day, model_sha256, "
                "model_bytes, folder, has_sidecar, state, charged, ended, failure_class, "
                "failure_message) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (team.id, phase, label, now, utc_day(now), sha256, size, str(folder),
                 int(has_sidecar), state, charged, now if failure else None,
                 failure[0] if failure else None, failure[1] if failure else None))
            sid = cur.lastrowid
            msg = (f"refused at upload ({failure[0]}): {failure[1]}" if failure else
                   f"uploaded ({size} bytes, sha256 {sha256[:12]}), {phase} phase")
            self._event(db, sid, now, state, 0, None, msg)
            return sid

        return self._tx(insert)

    @staticmethod
    def _event(db, sid: int, t: float, state: str, attempt: int, device: str | None,
               message: str) -> None:
        db.execute("INSERT INTO events (submission_id, t, state, attempt, device, message) "
                   "VALUES (?, ?, ?, ?, ?, ?)", (sid, t, state, attempt, device, message))

    def submission(self, sid: int) -> Submission | None:
        with self._lock:
            row = self._db.execute(f"SELECT {_SUB_COLS} FROM submissions s JOIN teams t "
                                   "ON t.id = s.team_id WHERE s.id = ?", (sid,)).fetchone()
        return _submission(row) if row else None

    def submissions(self, team_id: int | None = None, phase: str | None = None,
                    state: str | None = None) -> list[Submission]:
        """Submissions, oldest first, optionally of one team, phase, state."""
        sql = f"SELECT {_SUB_COLS} FROM submissions s JOIN teams t ON t.id = s.team_id WHERE 1"
        args: list[Any] = []
        for col, val in (("s.team_id", team_id), ("s.phase", phase), ("s.state", state)):
            if val is not None:
                sql += f" AND {col} = ?"
                args.append(val)
        with self._lock:
            rows = self._db.execute(sql + " ORDER BY s.id", args).fetchall()
        return [_submission(r) for r in rows]

    def queue_position(self, sid: int) -> int | None:
        """1-based place of a queued submission in the queue (oldest first), else None."""
        with self._lock:
            row = self._db.execute(
                "SELECT (SELECT count(*) FROM submissions q WHERE q.state = 'queued' AND "
                "q.id <= s.id) FROM submissions s WHERE s.id = ? AND s.state = 'queued'",
                (sid,)).fetchone()
        return row[0] if row else None

    def events(self, sid: int) -> list[Event]:
        with self._lock:
            rows = self._db.execute("SELECT t, state, attempt, device, message FROM events "
                                    "WHERE submission_id = ? ORDER BY id", (sid,)).fetchall()
        return [Event(*r) for r in rows]

    # --- state transitions (the scheduler's) -----------------------------------------------------

    def next_queued(self) -> Submission | None:
        """The oldest queued submission (first come, first run)."""
        with self._lock:
            row = self._db.execute(f"SELECT {_SUB_COLS} FROM submissions s JOIN teams t ON "
                                   "t.id = s.team_id WHERE s.state = 'queued' ORDER BY s.id "
                                   "LIMIT 1").fetchone()
        return _submission(row) if row else None

    def mark_running(self, sid: int, attempt: int, device: str, now: float) -> bool:
        """queued -> running on ``device`` as attempt ``attempt``; False if it was not queued."""

        def go(db):
            cur = db.execute("UPDATE submissions SET state = 'running', attempts = ?, device = ?, "
                             "started = ? WHERE id = ? AND state = 'queued'",
                             (attempt, device, now, sid))
            if cur.rowcount == 1:
                self._event(db, sid, now, "running", attempt, device,
                            f"attempt {attempt} started on {device}")
            return cur.rowcount == 1

        return self._tx(go)

    def _finish(self, sid: int, attempt: int, now: float, sets: str, args: tuple,
                state: str, device: str | None, message: str,
                leaves: tuple[str, ...] = ("running",)) -> bool:
        """One transition of attempt ``attempt``, only from a state in ``leaves``."""
        marks = ", ".join("?" * len(leaves))

        def go(db):
            cur = db.execute(f"UPDATE submissions SET {sets} WHERE id = ? AND state IN ({marks}) "
                             "AND attempts = ?", (*args, sid, *leaves, attempt))
            if cur.rowcount == 1:
                self._event(db, sid, now, state, attempt, device, message)
            return cur.rowcount == 1

        return self._tx(go)

    def mark_scoring(self, sid: int, attempt: int, now: float, device: str | None,
                     message: str) -> bool:
        """running (this attempt) -> scoring: the device has ended its run and sent the result
        back; the service scores it. False if not running this attempt."""
        return self._finish(sid, attempt, now, "state = 'scoring'", (), "scoring", device,
                            message)

    def mark_scored(self, sid: int, attempt: int, score: dict, run_dir: str, now: float,
                    device: str | None, message: str) -> bool:
        """scoring (this attempt) -> scored, once: False if not scoring this attempt."""
        return self._finish(sid, attempt, now, "state = 'scored', ended = ?, score_json = ?, "
                            "run_dir = ?", (now, json.dumps(score), run_dir), "scored", device,
                            message, leaves=("scoring",))

    def mark_failed(self, sid: int, attempt: int, cls: str, message: str, charged: bool,
                    now: float, device: str | None, run_dir: str | None = None) -> bool:
        """running or scoring (this attempt) -> failed with class ``cls``; ``charged`` False
        for failures that are not the team's (infrastructure)."""
        return self._finish(sid, attempt, now, "state = 'failed', ended = ?, failure_class = ?, "
                            "failure_message = ?, charged = ?, run_dir = ?",
                            (now, cls, message, int(charged), run_dir), "failed", device,
                            f"failed ({cls}): {message}", leaves=("running", "scoring"))

    def requeue(self, sid: int, attempt: int, message: str, now: float,
                device: str | None) -> bool:
        """running (this attempt) -> queued again (an infrastructure fault: not charged)."""
        return self._finish(sid, attempt, now, "state = 'queued', device = NULL, started = NULL",
                            (), "queued", device, message)

    def recover(self, now: float) -> list[int]:
        """At start: every submission left ``running`` or ``scoring`` by a stopped or killed
        service goes back to ``queued`` (its attempt was not scored and is not charged again).
        Returns their ids."""

        def go(db):
            rows = db.execute("SELECT id, attempts, device, state FROM submissions WHERE state "
                              "IN ('running', 'scoring') ORDER BY id").fetchall()
            for sid, attempt, device, state in rows:
                db.execute("UPDATE submissions SET state = 'queued', device = NULL, started = NULL "
                           "WHERE id = ?", (sid,))
                self._event(db, sid, now, "queued", attempt, device,
                            f"attempt {attempt} on {device} interrupted ({state}) by a restart of "
                            "the service (infrastructure, not charged): queued again")
            return [r[0] for r in rows]

        return self._tx(go)

    # --- organiser -------------------------------------------------------------------------------

    def counts(self) -> dict[str, Any]:
        """States, failures by class, and per-team counts (uploads, charged today, scored)."""
        now = time.time()
        with self._lock:
            states = dict(self._db.execute("SELECT state, count(*) FROM submissions GROUP BY "
                                           "state").fetchall())
            classes = dict(self._db.execute("SELECT failure_class, count(*) FROM submissions "
                                            "WHERE state = 'failed' GROUP BY failure_class")
                           .fetchall())
            per_team = self._db.execute(
                "SELECT t.name, count(s.id), sum(s.day = ? AND s.charged = 1), "
                "sum(s.state = 'scored'), sum(s.state = 'failed'), "
                "sum(s.state IN ('queued', 'running', 'scoring')) FROM teams t "
                "LEFT JOIN submissions s ON s.team_id = t.id WHERE t.role = 'team' "
                "GROUP BY t.id ORDER BY t.name",
                (utc_day(now),)).fetchall()
        return {"states": {s: states.get(s, 0) for s in STATES},
                "failures": classes,
                "teams": [{"team": n, "uploads": u, "charged_today": c or 0, "scored": s or 0,
                           "failed": f or 0, "queued_or_running": b or 0}
                          for n, u, c, s, f, b in per_team]}
