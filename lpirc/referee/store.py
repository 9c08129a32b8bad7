"""The referee's database: one SQLite file in WAL mode, the only state the referee keeps.

Tables: ``meta`` (the token-signing secret, made once at random), ``teams`` (name, role
``team`` or ``meter``, password hash), ``sessions`` (one row per attempt: clock, image-order
seed, holdout identity, rules, score), ``answers`` (first answer per image of a session),
``duplicates`` (later answers to an image already answered: counted, reported, never scored),
``power`` (meter readings per team, on the referee's clock).

Durability: every write is one transaction committed with ``synchronous=FULL`` before the
server answers 200, so a ``kill -9`` of the server (or a power cut) loses nothing it
acknowledged. Times are unix seconds on the referee's clock (``lpirc.clock.SteadyWall``: the
wall clock read at start, advancing with the monotonic clock), so a restarted server continues
every open session on its original clock.

Passwords are stored as scrypt hashes (``hashlib.scrypt``, n=2**14, r=8, p=1, 16-byte salt);
the clear password is never stored. The file holds the token-signing secret: a new database is
created with mode 0600 (SQLite gives its -wal and -shm files the same mode). An existing file
that is not a referee database is never written to (InputError, exit 5).

Bounds (one team's data never grows another team's costs): a session keeps at most
``MAX_DUPLICATES`` repeated answers (later ones are only counted, in
``sessions.duplicates_dropped``); every per-session query is by an index on the session.
"""

from __future__ import annotations

import functools
import hashlib
import hmac
import json
import os
import secrets
import sqlite3
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Sequence

from lpirc.errors import InputError

SCHEMA_VERSION = 2
ROLES = ("team", "meter")
_SCRYPT = {"n": 2 ** 14, "r": 8, "p": 1}
#: Repeated answers stored per session (for the answers export); beyond, only counted. A device
#: that retries a lost reply repeats at most a batch; 10,000 is several full retries of a
#: 2,000-answer batch, and caps a session's duplicate rows at about 1 MB.
MAX_DUPLICATES = 10_000
#: Answers written per transaction: a 66,000-answer post is stored in chunks, so another team's
#: post waits for one chunk (a few ms), not for the whole post.
WRITE_CHUNK = 2_000

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS teams (
    id INTEGER PRIMARY KEY, name TEXT NOT NULL UNIQUE, role TEXT NOT NULL,
    pw_hash TEXT NOT NULL, created REAL NOT NULL);
CREATE TABLE IF NOT EXISTS sessions (
    id INTEGER PRIMARY KEY, team_id INTEGER NOT NULL REFERENCES teams(id),
    attempt INTEGER NOT NULL, kind TEXT NOT NULL,
    started REAL NOT NULL, deadline REAL NOT NULL, ended REAL, end_reason TEXT,
    seed INTEGER NOT NULL, image_count INTEGER NOT NULL, holdout_sha256 TEXT NOT NULL,
    class_base INTEGER NOT NULL, rules TEXT NOT NULL, time_limit_s REAL NOT NULL,
    self_energy_wh REAL, self_energy_method TEXT, score_json TEXT, run_dir TEXT,
    duplicates_dropped INTEGER NOT NULL DEFAULT 0);
CREATE TABLE IF NOT EXISTS answers (
    session_id INTEGER NOT NULL, image_no INTEGER NOT NULL, class_id INTEGER NOT NULL,
    class_given TEXT NOT NULL, confidence REAL NOT NULL,
    xmin REAL, ymin REAL, xmax REAL, ymax REAL, t REAL NOT NULL,
    PRIMARY KEY (session_id, image_no)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS duplicates (
    id INTEGER PRIMARY KEY, session_id INTEGER NOT NULL, image_no INTEGER NOT NULL,
    class_id INTEGER NOT NULL, class_given TEXT NOT NULL, confidence REAL NOT NULL,
    xmin REAL, ymin REAL, xmax REAL, ymax REAL, t REAL NOT NULL);
CREATE TABLE IF NOT EXISTS power (
    id INTEGER PRIMARY KEY, team_id INTEGER NOT NULL REFERENCES teams(id), t REAL NOT NULL,
    voltage REAL, current REAL, power REAL NOT NULL, energy REAL, elapsed REAL,
    source TEXT NOT NULL);
CREATE INDEX IF NOT EXISTS power_team_t ON power (team_id, t);
CREATE INDEX IF NOT EXISTS sessions_team ON sessions (team_id, attempt);
CREATE INDEX IF NOT EXISTS duplicates_session ON duplicates (session_id, t);
"""
#: From schema 1 (lpirc before the duplicates bound): the column and the index.
_MIGRATE_1_2 = """
ALTER TABLE sessions ADD COLUMN duplicates_dropped INTEGER NOT NULL DEFAULT 0;
CREATE INDEX IF NOT EXISTS duplicates_session ON duplicates (session_id, t);
"""


@dataclass(frozen=True)
class Team:
    id: int
    name: str
    role: str  # "team" | "meter"


@dataclass(frozen=True)
class SessionRow:
    """One attempt of a team (or the meter's login). Times in unix seconds."""

    id: int
    team_id: int
    team: str
    attempt: int
    kind: str  # "team" | "meter"
    started: float
    deadline: float
    ended: float | None
    end_reason: str | None  # "logout" | "time_limit"
    seed: int  # seed of this attempt's image order (random.Random(seed).shuffle)
    image_count: int
    holdout_sha256: str
    class_base: int  # 0: CLASS_ID 0..999 (lpirc's sorted synsets); 1: 1..1000
    rules: str
    time_limit_s: float
    self_energy_wh: float | None
    self_energy_method: str | None
    score: dict | None
    run_dir: str | None
    duplicates_dropped: int = 0  # repeated answers counted but not stored (MAX_DUPLICATES)


@dataclass(frozen=True)
class Answer:
    """One answer as posted: image k (1-based, the session's numbering), class index 0..999
    (-1 = background, never correct), the CLASS_ID as sent, confidence, optional box."""

    image_no: int
    class_id: int
    class_given: str
    confidence: float
    box: tuple[float, float, float, float] | None = None  # xmin, ymin, xmax, ymax


@dataclass(frozen=True)
class PowerReading:
    """One meter reading as a Yokogawa WT310 reports it: V, A, W, Wh (accumulated), s (elapsed);
    ``t`` is when it was taken, unix seconds on the referee's clock."""

    t: float
    power: float
    voltage: float | None = None
    current: float | None = None
    energy: float | None = None
    elapsed: float | None = None


def hash_password(password: str) -> str:
    """``scrypt$n$r$p$salt$hash`` (hex) of a password."""
    salt = os.urandom(16)
    digest = hashlib.scrypt(password.encode("utf-8"), salt=salt, dklen=32, **_SCRYPT)
    return f"scrypt${_SCRYPT['n']}${_SCRYPT['r']}${_SCRYPT['p']}${salt.hex()}${digest.hex()}"


def check_password(password: str, stored: str) -> bool:
    """True when ``password`` matches the stored hash (constant-time compare). ~50 ms of CPU
    and 16 MB: the servers call it only through their login gate (lpirc.login_gate)."""
    try:
        kind, n, r, p, salt, digest = stored.split("$")
        got = hashlib.scrypt(password.encode("utf-8"), salt=bytes.fromhex(salt), dklen=32,
                             n=int(n), r=int(r), p=int(p))
    except (ValueError, TypeError):
        return False
    return kind == "scrypt" and hmac.compare_digest(got.hex(), digest)


@functools.cache
def _dummy_hash() -> str:
    """A hash to check an unknown name's password against (made once, at random)."""
    return hash_password(secrets.token_hex(8))


def verify_login(record: tuple[object, str] | None, password: str):
    """The account of ``record`` = (account, stored hash) if ``password`` matches, else None.
    An unknown name (``record`` None) is checked against a dummy hash, so that it takes the
    same work and time as a wrong password (the login gate's ``verify``; both services')."""
    if record is None:
        check_password(password, _dummy_hash())
        return None
    return record[0] if check_password(password, record[1]) else None


def _has_meta(db: sqlite3.Connection) -> bool:
    return db.execute("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'meta'"
                      ).fetchone() is not None


def create_private_file(path: Path, what: str) -> None:
    """Make ``path`` an empty file readable by its owner only (0600; an empty file made by
    someone else becomes ours), for a database that holds password hashes. InputError naming
    ``path`` and ``what`` when it cannot be made, e.g. "/nonexistent/x.sqlite: cannot create
    the referee database (No such file or directory)": a missing folder is said as such, not
    as a file that is not a database."""
    try:
        os.close(os.open(path, os.O_WRONLY | os.O_CREAT, 0o600))
        os.chmod(path, 0o600)
    except OSError as e:
        raise InputError(f"{path}: cannot create {what} ({e.strerror or e})") from None


def _check_or_create(path: Path, create: bool) -> None:
    """Make a new database file 0600 (``create``), or check, read-only, that an existing one is
    a referee database. InputError (nothing written) for a missing file when not ``create``,
    and for an existing SQLite file (or any other file) that holds no referee tables."""
    if not path.exists() or (create and path.is_file() and path.stat().st_size == 0):
        if not create:
            raise InputError(f"{path}: referee database not found")
        create_private_file(path, "the referee database")
        return
    if path.stat().st_size == 0:
        raise InputError(f"{path}: empty file, not a referee database; nothing written")
    try:
        ro = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=10.0)
        try:
            ok = _has_meta(ro) and ro.execute(
                "SELECT 1 FROM meta WHERE key = 'schema_version'").fetchone() is not None
        finally:
            ro.close()
    except sqlite3.DatabaseError as e:
        raise InputError(f"{path}: not a referee database ({e}); nothing written") from None
    if not ok:
        raise InputError(f"{path}: not a referee database (no lpirc referee tables); "
                         "nothing written")


def check_account(name: str, role: str, roles: tuple[str, ...]) -> None:
    """An account's name and role, as every lpirc store with a ``teams`` table takes them (the
    referee's, the online service's): InputError unless the name is 1-64 printable characters
    without leading or trailing spaces and the role one of ``roles``."""
    if role not in roles:
        raise InputError(f"role {role!r}: expected one of {', '.join(roles)}")
    if not name or name != name.strip() or len(name) > 64 or not name.isprintable():
        raise InputError(f"team name {name!r}: expected 1-64 printable characters, no "
                         "leading or trailing spaces")


def insert_account(db: sqlite3.Connection, path: Path, name: str, pw_hash: str,
                   role: str) -> int:
    """Insert a checked account into ``db``'s ``teams`` table (name, role, pw_hash, created);
    its row id. InputError naming the file when the name is taken."""
    try:
        cur = db.execute("INSERT INTO teams (name, role, pw_hash, created) VALUES (?, ?, ?, ?)",
                         (name, role, pw_hash, time.time()))
    except sqlite3.IntegrityError:
        raise InputError(f"{path}: team {name!r} already exists") from None
    return cur.lastrowid


_SESSION_COLS = ("s.id, s.team_id, t.name, s.attempt, s.kind, s.started, s.deadline, s.ended, "
                 "s.end_reason, s.seed, s.image_count, s.holdout_sha256, s.class_base, s.rules, "
                 "s.time_limit_s, s.self_energy_wh, s.self_energy_method, s.score_json, s.run_dir, "
                 "s.duplicates_dropped")


def _session(row) -> SessionRow:
    vals = list(row)
    vals[17] = json.loads(vals[17]) if vals[17] else None
    return SessionRow(*vals)


class Store:
    """The referee database. Thread-safe: one connection, one lock, one transaction per call.

    Raises InputError (one line naming the file) when the file cannot be opened or is not a
    referee database.
    """

    def __init__(self, path: str | os.PathLike, create: bool = True) -> None:
        self.path = Path(path)
        self._lock = threading.Lock()
        _check_or_create(self.path, create)
        try:
            self._db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None,
                                       timeout=10.0)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=FULL")
            version = self._meta("schema_version") if _has_meta(self._db) else None
            if version == "1":
                self._db.executescript(_MIGRATE_1_2)
                self._db.execute("UPDATE meta SET value = ? WHERE key = 'schema_version'",
                                 (str(SCHEMA_VERSION),))
            elif version not in (None, str(SCHEMA_VERSION)):
                raise InputError(f"{self.path}: referee database schema {version}, this lpirc "
                                 f"reads {SCHEMA_VERSION}")
            self._db.executescript(_SCHEMA)
            if version is None:
                self._set_meta("schema_version", str(SCHEMA_VERSION))
        except sqlite3.DatabaseError as e:
            raise InputError(f"{self.path}: not a referee database ({e})") from None

    def close(self) -> None:
        with self._lock:
            self._db.close()

    # --- meta, secret ------------------------------------------------------------------------

    def _meta(self, key: str) -> str | None:
        row = self._db.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return row[0] if row else None

    def _set_meta(self, key: str, value: str) -> None:
        self._db.execute("INSERT OR IGNORE INTO meta (key, value) VALUES (?, ?)", (key, value))

    def secret(self) -> bytes:
        """The token-signing secret: 32 random bytes made the first time, kept in the database
        (so tokens stay valid across a restart), never a fixed default."""
        with self._lock:
            self._set_meta("token_secret", secrets.token_hex(32))
            return bytes.fromhex(self._meta("token_secret"))

    def put_config(self, config: dict) -> None:
        """Record how the server was started (holdout, ground truth, runs folder), so the CLI can
        rescore a session later without being told again."""
        with self._lock:
            self._db.execute("INSERT OR REPLACE INTO meta (key, value) VALUES ('config', ?)",
                             (json.dumps(config),))

    def config(self) -> dict:
        with self._lock:
            value = self._meta("config")
        return json.loads(value) if value else {}

    # --- teams -------------------------------------------------------------------------------

    def add_team(self, name: str, password: str, role: str = "team") -> Team:
        """Add an account. Raises InputError if the name is taken or empty, or the role unknown."""
        check_account(name, role, ROLES)
        pw = hash_password(password)
        with self._lock:
            return Team(insert_account(self._db, self.path, name, pw, role), name, role)

    def team(self, name: str) -> Team | None:
        with self._lock:
            row = self._db.execute("SELECT id, name, role FROM teams WHERE name = ?",
                                   (name,)).fetchone()
        return Team(*row) if row else None

    def teams(self) -> list[Team]:
        with self._lock:
            rows = self._db.execute("SELECT id, name, role FROM teams ORDER BY name").fetchall()
        return [Team(*r) for r in rows]

    def login_record(self, name: str) -> tuple[Team, str] | None:
        """(team, stored password hash) of an account, or None (check it with
        :func:`check_password`; hash a dummy when None, so that both take the same time)."""
        with self._lock:
            row = self._db.execute("SELECT id, name, role, pw_hash FROM teams WHERE name = ?",
                                   (name,)).fetchone()
        return (Team(*row[:3]), row[3]) if row else None

    # --- sessions ----------------------------------------------------------------------------

    def sessions(self, team_id: int | None = None, open_only: bool = False,
                 kind: str | None = None) -> list[SessionRow]:
        """Sessions, oldest first, optionally of one team, open ones only, of one kind."""
        sql = f"SELECT {_SESSION_COLS} FROM sessions s JOIN teams t ON t.id = s.team_id WHERE 1"
        args: list = []
        if team_id is not None:
            sql += " AND s.team_id = ?"
            args.append(team_id)
        if open_only:
            sql += " AND s.ended IS NULL"
        if kind is not None:
            sql += " AND s.kind = ?"
            args.append(kind)
        with self._lock:
            rows = self._db.execute(sql + " ORDER BY s.id", args).fetchall()
        return [_session(r) for r in rows]

    def session(self, sid: int) -> SessionRow | None:
        with self._lock:
            row = self._db.execute(f"SELECT {_SESSION_COLS} FROM sessions s JOIN teams t "
                                   "ON t.id = s.team_id WHERE s.id = ?", (sid,)).fetchone()
        return _session(row) if row else None

    def start_session(self, team: Team, kind: str, started: float, time_limit_s: float,
                      seed: int, image_count: int, holdout_sha256: str, class_base: int,
                      rules: str) -> SessionRow:
        """Open the team's next attempt (numbered from 1) starting at ``started``."""
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                (n,) = self._db.execute("SELECT COUNT(*) FROM sessions WHERE team_id = ?",
                                        (team.id,)).fetchone()
                cur = self._db.execute(
                    "INSERT INTO sessions (team_id, attempt, kind, started, deadline, seed, "
                    "image_count, holdout_sha256, class_base, rules, time_limit_s) "
                    "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    (team.id, n + 1, kind, started, started + time_limit_s, seed, image_count,
                     holdout_sha256, class_base, rules, time_limit_s))
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
        return self.session(cur.lastrowid)

    def end_session(self, sid: int, ended: float, reason: str) -> bool:
        """Close an open session; False if it was already closed."""
        with self._lock:
            cur = self._db.execute("UPDATE sessions SET ended = ?, end_reason = ? "
                                   "WHERE id = ? AND ended IS NULL", (ended, reason, sid))
        return cur.rowcount == 1

    def set_score(self, sid: int, score: dict, run_dir: str) -> None:
        with self._lock:
            self._db.execute("UPDATE sessions SET score_json = ?, run_dir = ? WHERE id = ?",
                             (json.dumps(score), run_dir, sid))

    def set_self_energy(self, sid: int, wh: float, method: str) -> None:
        """A device's own energy figure (measured or estimated by it): stored as self-reported."""
        with self._lock:
            self._db.execute("UPDATE sessions SET self_energy_wh = ?, self_energy_method = ? "
                             "WHERE id = ?", (wh, method, sid))

    # --- answers -----------------------------------------------------------------------------

    def add_answers(self, sid: int, answers: Sequence[Answer], t: float) -> tuple[int, int]:
        """Store a batch: the first answer per image is kept, later ones go to ``duplicates``
        (up to MAX_DUPLICATES per session, then only counted). Written WRITE_CHUNK answers per
        transaction, so other sessions' writes interleave; every answer is stored before this
        returns. Returns (new answers, duplicates)."""
        new = 0
        for i in range(0, len(answers), WRITE_CHUNK):
            new += self._add_chunk(sid, answers[i:i + WRITE_CHUNK], t)
        return new, len(answers) - new

    def _add_chunk(self, sid: int, answers: Sequence[Answer], t: float) -> int:
        new, dropped = 0, 0
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                (room,) = self._db.execute("SELECT COUNT(*) FROM duplicates WHERE session_id = ?",
                                           (sid,)).fetchone()
                room = MAX_DUPLICATES - room
                for a in answers:
                    row = (sid, a.image_no, a.class_id, a.class_given, a.confidence,
                           *(a.box or (None,) * 4), t)
                    cur = self._db.execute("INSERT OR IGNORE INTO answers VALUES "
                                           "(?, ?, ?, ?, ?, ?, ?, ?, ?, ?)", row)
                    if cur.rowcount == 1:
                        new += 1
                    elif room > 0:
                        room -= 1
                        self._db.execute("INSERT INTO duplicates (session_id, image_no, "
                                         "class_id, class_given, confidence, xmin, ymin, xmax, "
                                         "ymax, t) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)", row)
                    else:
                        dropped += 1
                if dropped:
                    self._db.execute("UPDATE sessions SET duplicates_dropped = "
                                     "duplicates_dropped + ? WHERE id = ?", (dropped, sid))
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
        return new

    def answered(self, sid: int) -> list[int]:
        """The image numbers a session has an answer for, ascending."""
        with self._lock:
            return [k for (k,) in self._db.execute(
                "SELECT image_no FROM answers WHERE session_id = ? ORDER BY image_no", (sid,))]

    def answers(self, sid: int, duplicates: bool = False) -> list[tuple]:
        """(image_no, class_id, class_given, confidence, xmin, ymin, xmax, ymax, t) rows of a
        session, kept answers (or duplicates), in arrival order."""
        table = "duplicates" if duplicates else "answers"
        with self._lock:
            return self._db.execute(
                f"SELECT image_no, class_id, class_given, confidence, xmin, ymin, xmax, ymax, t "
                f"FROM {table} WHERE session_id = ? ORDER BY t, image_no", (sid,)).fetchall()

    def counts(self, sid: int) -> tuple[int, int]:
        """(answers kept, duplicates: stored and only counted) of a session."""
        with self._lock:
            (a,) = self._db.execute("SELECT COUNT(*) FROM answers WHERE session_id = ?",
                                    (sid,)).fetchone()
            (d,) = self._db.execute("SELECT COUNT(*) FROM duplicates WHERE session_id = ?",
                                    (sid,)).fetchone()
            row = self._db.execute("SELECT duplicates_dropped FROM sessions WHERE id = ?",
                                   (sid,)).fetchone()
        return a, d + (row[0] if row else 0)

    # --- power -------------------------------------------------------------------------------

    def add_power(self, team_id: int, readings: Iterable[PowerReading], source: str) -> int:
        """Store a team's readings in one transaction. A reading equal to one already stored
        (same time, same watts: a meter's post retried, a log imported twice) is skipped.
        Returns how many were new."""
        rows = [(team_id, r.t, r.voltage, r.current, r.power, r.energy, r.elapsed, source,
                 team_id, r.t, r.power) for r in readings]
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                before = self._db.total_changes
                self._db.executemany(
                    "INSERT INTO power (team_id, t, voltage, current, power, energy, elapsed, "
                    "source) SELECT ?, ?, ?, ?, ?, ?, ?, ? WHERE NOT EXISTS (SELECT 1 FROM "
                    "power WHERE team_id = ? AND t = ? AND power = ?)", rows)
                new = self._db.total_changes - before
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
        return new

    def power(self, team_id: int) -> list[tuple]:
        """(t, watts, source) of a team's readings, in time order."""
        with self._lock:
            return self._db.execute("SELECT t, power, source FROM power WHERE team_id = ? "
                                    "ORDER BY t, id", (team_id,)).fetchall()
