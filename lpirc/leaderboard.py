"""The standings database: scored runs, referee sessions and fleet results in one SQLite file.

One schema for every writer: ``lpirc leaderboard add`` (source ``run``), ``lpirc referee``
(source ``referee``) and ``lpirc fleet`` (source ``fleet``) all store :class:`Entry` rows
through :func:`add_entry`; :func:`standings` ranks them the way LPIRC ranked.

    from lpirc import leaderboard as lb
    conn = lb.open_db("runs/standings.sqlite")
    lb.add_entry(conn, lb.entry_from_run("runs/2026-11-30T08-00-00-mnv2"))   # True; again: False
    for row in lb.standings(conn, rules="ovic-2018"):                        # re-scored from the logs
        print(row.place, row.entry.submission, row.score, row.prizes)

The file (stdlib ``sqlite3``, WAL journal so readers never block the one writer, 10 s busy
timeout) is marked as lpirc's with ``PRAGMA application_id`` and versioned with ``PRAGMA
user_version`` (the schema version); :data:`MIGRATIONS` are applied in order, each in one
``BEGIN IMMEDIATE`` transaction, when a file is opened, so two processes opening a new file at
once cannot both migrate it. Every applied migration is recorded in ``schema_migrations``.

Connections returned by :func:`open_db` are in autocommit mode (``isolation_level=None``); each
API call here is one transaction.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import hashlib
import json
import math
import os
import re
import sqlite3
import unicodedata
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping

import numpy as np

import scoring
from lpirc import __version__
from lpirc.errors import InputError
from scoring import groups, read_manifest

# --- the file ---------------------------------------------------------------------------------

DEFAULT_DB = Path("runs") / "standings.sqlite"  # relative to the working directory, beside runs/
DB_ENV = "LPIRC_DB"  # overrides DEFAULT_DB; --db overrides both
APPLICATION_ID = 0x4C504952  # "LPIR": PRAGMA application_id of an lpirc standings database
BUSY_TIMEOUT_MS = 10_000

SOURCES = ("run", "referee", "fleet")
ENERGY_LABELS = ("measured", "estimated", "self-reported", "metered", "absent")


@dataclass(frozen=True)
class Migration:
    """One step of the schema: applied when the file's ``user_version`` is below ``version``."""

    version: int
    description: str
    apply: Callable[[sqlite3.Connection], None]


def _v1(conn: sqlite3.Connection) -> None:
    conn.execute(f"""CREATE TABLE entries (
        uid            TEXT PRIMARY KEY,
        submission     TEXT NOT NULL,
        team           TEXT,
        source         TEXT NOT NULL CHECK (source IN {SOURCES!r}),
        rules          TEXT NOT NULL,
        score          REAL,
        top1           REAL,
        top5           REAL,
        images         INTEGER NOT NULL,
        answered       INTEGER NOT NULL,
        failed         INTEGER NOT NULL,
        unanswered     INTEGER NOT NULL,
        late           INTEGER NOT NULL,
        wall_s         REAL,
        inference_s    REAL,
        energy_wh      REAL,
        energy_label   TEXT NOT NULL CHECK (energy_label IN {ENERGY_LABELS!r}),
        model_sha256   TEXT,
        holdout_sha256 TEXT,
        lpirc_version  TEXT,
        runtime        TEXT,
        device         TEXT,
        created_utc    TEXT NOT NULL,
        run_dir        TEXT,
        ground_truth   TEXT,
        extra          TEXT NOT NULL DEFAULT '{{}}',
        added_utc      TEXT NOT NULL
    )""")
    conn.execute("CREATE INDEX entries_holdout ON entries (holdout_sha256, rules)")


MIGRATIONS: tuple[Migration, ...] = (
    Migration(1, "entries: scored runs, referee sessions and fleet results", _v1),
)
SCHEMA_VERSION = MIGRATIONS[-1].version


def default_db_path() -> Path:
    """``$LPIRC_DB`` if set, else ``runs/standings.sqlite`` (relative to the working directory)."""
    env = os.environ.get(DB_ENV)
    return Path(env) if env else DEFAULT_DB


def open_db(path=None, *, check_same_thread: bool = True) -> sqlite3.Connection:
    """Open (creating it and its folder if needed) and migrate a standings database.

    Args:
        path: the database file; None = :func:`default_db_path`.
        check_same_thread: passed to ``sqlite3.connect`` (False for a server handing the
            connection between threads; it must then serialise its own calls).
    Returns:
        a ``sqlite3.Connection`` in autocommit mode, WAL journal, at :data:`SCHEMA_VERSION`.
    Raises:
        InputError: one line naming the file: not a SQLite file, a SQLite file that is not an
            lpirc standings database, a schema newer than this lpirc knows, or not openable.
    """
    p = Path(path) if path is not None else default_db_path()
    if p.is_dir():
        raise InputError(f"{p}: is a folder, expected a standings database file")
    try:
        p.parent.mkdir(parents=True, exist_ok=True)
        conn = sqlite3.connect(p, isolation_level=None, check_same_thread=check_same_thread,
                               timeout=BUSY_TIMEOUT_MS / 1000)
    except (OSError, sqlite3.Error) as e:
        raise InputError(f"{p}: cannot open the standings database ({e})") from None
    try:
        _check_and_migrate(conn, p, MIGRATIONS)
    except sqlite3.DatabaseError as e:
        conn.close()
        if "not a database" in str(e):
            raise InputError(f"{p}: not a SQLite database (expected an lpirc standings "
                             "database)") from None
        raise damaged(p, e) from None
    except BaseException:
        conn.close()
        raise
    return conn


def damaged(p: Path, e: Exception | str) -> InputError:
    """The one-line error for a standings file SQLite finds damaged (nothing is read from it
    or written to it then)."""
    why = str(e).strip().splitlines()
    why = [w for w in why if w and not w.startswith("***")] or ["malformed"]
    return InputError(f"{p}: damaged standings database ({why[0]}); nothing was read or "
                      "written: restore it from a copy")


@contextlib.contextmanager
def _sqlite_errors(conn: sqlite3.Connection):
    """SQLite's errors met after the file was opened as one-line InputErrors naming the file
    (damage found on a page quick_check passed, a lock held past the busy timeout)."""
    try:
        yield
    except sqlite3.OperationalError as e:
        raise InputError(f"{_db_file(conn)}: {e}") from None
    except sqlite3.DatabaseError as e:
        raise damaged(_db_file(conn), e) from None


def _db_file(conn: sqlite3.Connection) -> Path:
    try:
        return Path(conn.execute("PRAGMA database_list").fetchone()[2] or "(in memory)")
    except sqlite3.Error:
        return Path("(standings database)")


def _check_intact(conn: sqlite3.Connection, p: Path) -> None:
    """``PRAGMA quick_check`` (every page readable, every b-tree well formed; milliseconds for
    a standings file) before anything is read or written: a damaged page otherwise showed as a
    traceback on show or remove, and ``add`` could write into the file and exit 0."""
    rows = [r[0] for r in conn.execute("PRAGMA quick_check").fetchall()]
    if rows != ["ok"]:
        raise damaged(p, "; ".join(rows))


def _check_and_migrate(conn: sqlite3.Connection, p: Path, migrations: Iterable[Migration]) -> None:
    conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
    _check_identity(conn, p, max(m.version for m in migrations))
    _check_intact(conn, p)
    if conn.execute("PRAGMA journal_mode").fetchone()[0] != "wal":
        conn.execute("PRAGMA journal_mode = WAL")
    conn.execute("BEGIN IMMEDIATE")  # one migrator at a time; re-read the version inside
    try:
        current = _check_identity(conn, p, max(m.version for m in migrations))
        if current == 0:
            conn.execute(f"PRAGMA application_id = {APPLICATION_ID}")
            conn.execute("CREATE TABLE schema_migrations (version INTEGER PRIMARY KEY, "
                         "description TEXT NOT NULL, applied_utc TEXT NOT NULL)")
        for m in sorted(migrations, key=lambda m: m.version):
            if m.version > current:
                m.apply(conn)
                conn.execute("INSERT INTO schema_migrations VALUES (?, ?, ?)",
                             (m.version, m.description, utc_now()))
                conn.execute(f"PRAGMA user_version = {int(m.version)}")
        conn.execute("COMMIT")
    except BaseException:
        conn.execute("ROLLBACK")
        raise


def _check_identity(conn: sqlite3.Connection, p: Path, known: int) -> int:
    """The file's schema version; raises InputError for a foreign or newer database."""
    app = conn.execute("PRAGMA application_id").fetchone()[0]
    version = conn.execute("PRAGMA user_version").fetchone()[0]
    tables = conn.execute("SELECT count(*) FROM sqlite_master").fetchone()[0]
    if app != APPLICATION_ID and (app != 0 or tables or version):
        raise InputError(f"{p}: a SQLite database, but not an lpirc standings database")
    if version > known:
        raise InputError(f"{p}: standings schema version {version} is newer than this lpirc "
                         f"knows ({known}); upgrade lpirc")
    return version


def schema_version(conn: sqlite3.Connection) -> int:
    """The schema version of an open database (``PRAGMA user_version``)."""
    return conn.execute("PRAGMA user_version").fetchone()[0]


def utc_now() -> str:
    return dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


# --- entries ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Entry:
    """One scored result: a run folder, a referee session or a fleet device's run.

    Fractions are of all ground-truth images (0..1); times in seconds; energy in watt-hours.

    Attributes:
        uid: unique key (adding an entry whose uid is stored changes nothing). For a run folder,
            :func:`run_uid` of its manifest; other writers: :func:`make_uid` of what identifies
            their result (a referee session id, a device + run id).
        submission: the submission's name as shown in the standings. team: who submitted it.
        source: ``run`` | ``referee`` | ``fleet``.
        rules: the rule set ``score``, ``top1`` and ``top5`` were computed under.
        score: the rule set's score (higher is better), None when it cannot be computed.
        top1, top5: as that rule set counts them (late answers wrong); top5 None if unknown.
        images: ground-truth images; answered, failed, unanswered, late: as the scorer counts.
        wall_s, inference_s: run wall time, summed model-invoke time (None = unknown).
        energy_wh, energy_label: the energy and how it was obtained: ``measured`` (RAPL or a
            power log on the device), ``estimated`` (lpirc's CPU-time model), ``self-reported``
            (given by the submitter), ``metered`` (the referee's own power meter), ``absent``
            (energy_wh None).
        model_sha256, holdout_sha256: sha256 of the model file, of the ordered holdout file list.
        lpirc_version, runtime (name and version, delegate), device (machine): provenance.
        created_utc: when the result was made (a run's start), ISO-8601 UTC.
        run_dir: a run folder or a result log that :func:`scoring.score_path` reads, to re-score
            under other rules; ground_truth: the CSV it was scored with (None: the manifest's).
        extra: JSON object: status, notes, delegate, the rule set's own fields, ...
    Raises:
        ValueError: (on construction) an unknown source, label or rule set, a negative count,
            a fraction outside 0..1, energy_wh and energy_label disagreeing, an empty uid.
    """

    uid: str
    submission: str
    source: str
    rules: str
    score: float | None
    top1: float | None
    top5: float | None
    images: int
    answered: int
    failed: int
    unanswered: int
    late: int
    wall_s: float | None
    inference_s: float | None
    energy_wh: float | None
    energy_label: str
    model_sha256: str | None
    holdout_sha256: str | None
    lpirc_version: str | None
    runtime: str | None
    device: str | None
    created_utc: str
    run_dir: str | None = None
    ground_truth: str | None = None
    team: str | None = None
    extra: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        problems = []
        if not isinstance(self.uid, str) or not self.uid:
            problems.append("uid must be a non-empty string")
        if not self.submission:
            problems.append("submission name is empty")
        for what in ("submission", "team"):
            bad = name_problem(getattr(self, what))
            if bad:
                problems.append(f"{what} {bad}")
        if self.source not in SOURCES:
            problems.append(f"source {self.source!r} is not one of {', '.join(SOURCES)}")
        if self.rules not in scoring.RULES:
            problems.append(f"rules {self.rules!r} is not one of {', '.join(scoring.RULES)}")
        if self.energy_label not in ENERGY_LABELS:
            problems.append(f"energy_label {self.energy_label!r} is not one of {', '.join(ENERGY_LABELS)}")
        elif (self.energy_wh is None) != (self.energy_label == "absent"):
            problems.append("energy_label must be 'absent' exactly when energy_wh is None")
        for name in ("images", "answered", "failed", "unanswered", "late"):
            v = getattr(self, name)
            if not isinstance(v, int) or isinstance(v, bool) or v < 0:
                problems.append(f"{name} must be an integer >= 0, got {v!r}")
        for name in ("top1", "top5"):
            v = getattr(self, name)
            if v is not None and not (isinstance(v, (int, float)) and 0.0 <= v <= 1.0):
                problems.append(f"{name} must be a fraction 0..1 or None, got {v!r}")
        if problems:
            raise ValueError(f"Entry {self.submission!r}: " + "; ".join(problems))

    def to_json(self) -> dict[str, Any]:
        return asdict(self) | {"extra": dict(self.extra)}


_COLUMNS = tuple(f.name for f in fields(Entry))


def name_problem(name: str | None) -> str | None:
    """Why ``name`` cannot be a submission's or team's name (None: it can): a name is one line
    of text; a newline or another control character broke the standings' table."""
    if name is None:
        return None
    if not isinstance(name, str):
        return f"name must be text, got {type(name).__name__}"
    bad = sorted({repr(ch)[1:-1] for ch in name if unicodedata.category(ch) in ("Cc", "Zl", "Zp")})
    if bad:
        return (f"name {name!r} has {', '.join(bad)}: a name is one line of text "
                "(no newline or other control character)")
    return None


def one_line(text: str | None) -> str:
    """``text`` with control characters written as escapes (\\n, \\t, ...): a name stored
    before names were checked prints on one line."""
    if text is None:
        return ""
    return "".join(repr(ch)[1:-1] if unicodedata.category(ch) in ("Cc", "Zl", "Zp") else ch
                   for ch in text)


def check_lpirc_version(manifest: Mapping[str, Any], where) -> None:
    """InputError when the manifest was written by a newer lpirc than this one (its fields may
    mean something this lpirc does not know), or names a version that is not one."""
    v = manifest.get("lpirc_version")
    if v is None:
        return
    theirs, ours = _version(v), _version(__version__)
    if theirs is None:
        raise InputError(f"{where}: lpirc_version {v!r} is not a version (expected e.g. "
                         f"{__version__!r})")
    if ours is not None and theirs > ours:
        raise InputError(f"{where}: written by lpirc {v}, newer than this lpirc "
                         f"{__version__}: upgrade lpirc to add it")


def _version(v) -> tuple[int, ...] | None:
    m = re.fullmatch(r"(\d+)\.(\d+)(?:\.(\d+))?([.+-].*)?", str(v).strip())
    return tuple(int(x or 0) for x in m.groups()[:3]) if m else None


def make_uid(identity: Mapping[str, Any]) -> str:
    """sha256 (hex) of ``identity`` as canonical JSON (sorted keys): a stable uid for any writer."""
    blob = json.dumps(identity, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(blob.encode("utf-8")).hexdigest()


def run_uid(manifest: Mapping[str, Any]) -> str:
    """The uid of a run folder: :func:`make_uid` of what identifies that run in its manifest (its
    start time to the microsecond, model and holdout hashes, seed, machine), so the same run, even
    copied elsewhere, is one entry."""
    hold = manifest.get("holdout") or {}
    model = manifest.get("model") or {}
    return make_uid({"kind": "run", "start_utc": manifest.get("start_utc"),
                     "model_sha256": model.get("sha256"), "holdout_sha256": hold.get("files_sha256"),
                     "order_seed": hold.get("order_seed"), "machine": manifest.get("machine"),
                     "lpirc_version": manifest.get("lpirc_version")})


def energy_label_of(score_source: str | None, energy_wh: float | None) -> str:
    """The entry's energy label from a score's ``energy_source`` (measured, estimated, given)."""
    if energy_wh is None:
        return "absent"
    return {"measured": "measured", "estimated": "estimated"}.get(score_source or "", "self-reported")


def entry_from_run(run_dir, ground_truth=None, rules: str | None = None, *,
                   submission: str | None = None, team: str | None = None,
                   source: str = "run", score: Mapping[str, Any] | None = None,
                   **rule_options) -> Entry:
    """Score a run folder (``results.jsonl`` + ``manifest.json``) and describe it as an Entry.

    Args:
        run_dir: the run folder (a bare ``results.jsonl`` works too: its uid is then the sha256
            of the log's bytes, and it has no energy unless ``energy_wh`` is given).
        ground_truth: CSV path; None = the one the manifest names.
        rules: rule set; None = the one the run was scored under (its settings), else
            ``lpirc-onsite``.
        submission: name shown; default the run folder's name. team: optional.
        score: the run's score object when the caller has just computed it with the same
            ground truth and rules (the fleet's head): it is not scored again.
        rule_options: time_limit_s, ms_per_image, idle_watts, k, a0, energy_wh (see scoring).
    Returns:
        an Entry (not yet stored: :func:`add_entry`).
    Raises:
        scoring.ScoringError: the scorer's one-line error (missing folder, bad log, bad ground
          truth; exit 5 on the command line).
    """
    path = Path(run_dir)
    man_path = path / "manifest.json" if path.is_dir() else None
    for what, value in (("submission", submission), ("team", team)):
        bad = name_problem(value)
        if bad:
            raise InputError(f"{what} {bad}")
    manifest = read_manifest(man_path) if man_path and man_path.is_file() else {}
    check_lpirc_version(manifest, man_path)
    settings = manifest.get("settings") if isinstance(manifest.get("settings"), dict) else {}
    rules = rules or settings.get("rules") or scoring.DEFAULT_RULES
    s = score if score is not None else scoring.score_path(path, ground_truth, rules, **rule_options)
    if manifest:
        uid = run_uid(manifest)
    else:
        log = path / "results.jsonl" if path.is_dir() else path
        uid = make_uid({"kind": "log", "sha256": hashlib.sha256(log.read_bytes()).hexdigest()})
    return entry_from_score(s, uid=uid, submission=submission or (path.name if path.is_dir() else path.stem),
                            source=source, manifest=manifest, team=team, run_dir=str(path.resolve()))


def entry_from_score(score: Mapping[str, Any], *, uid: str, submission: str, source: str = "run",
                     manifest: Mapping[str, Any] | None = None, team: str | None = None,
                     energy_label: str | None = None, **overrides) -> Entry:
    """An Entry from a ``score.json`` object (what ``scoring.score_path`` returns): the one
    mapping every writer uses (``entry_from_run``, the referee, the fleet).

    Args:
        score: the score object (rules, score, top1, top5, images_*, times, energy_*, log,
            ground_truth, the rule set's own fields, warnings).
        uid, submission, source, team: as in :class:`Entry`.
        manifest: the run's manifest, for the provenance fields (model and holdout sha256, lpirc
            version, runtime and delegate, machine, start time, status, notes); {} if none.
        energy_label: overrides the label derived from ``score["energy_source"]`` (a referee
            passes ``"metered"`` for its own meter's reading).
        overrides: any other Entry field (``device``, ``created_utc``, ``run_dir``, ...).
    Raises:
        ValueError: the resulting Entry is invalid (see :class:`Entry`).
    """
    m = manifest or {}
    hold, model, rt = m.get("holdout") or {}, m.get("model") or {}, m.get("runtime") or {}
    deleg, mach = m.get("delegate") or {}, m.get("machine") or {}
    runtime = f"{rt.get('name')} {rt.get('version')}" if rt else None
    if runtime and deleg.get("ran"):
        runtime += f" ({deleg['ran']})"
    device = f"{mach.get('cpu') or 'unknown CPU'}, {mach.get('cores_logical')} cores, {mach.get('arch')}" if mach else None
    log = Path(score["log"]) if score.get("log") else None
    created = m.get("start_utc") or (
        dt.datetime.fromtimestamp(log.stat().st_mtime, dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
        if log is not None and log.exists() else utc_now())
    run_dir = (log.parent if log.name == "results.jsonl" and m else log) if log is not None else None
    fields_ = dict(
        uid=uid, submission=submission, team=team, source=source, rules=score["rules"],
        score=score["score"], top1=score["top1"], top5=score["top5"], images=score["images_total"],
        answered=score["images_answered"], failed=score["images_failed"],
        unanswered=score["images_unanswered"], late=score["images_late"],
        wall_s=score["wall_time_s"], inference_s=score["inference_time_s"], energy_wh=score["energy_wh"],
        energy_label=energy_label or energy_label_of(score.get("energy_source"), score["energy_wh"]),
        model_sha256=model.get("sha256"), holdout_sha256=hold.get("files_sha256"),
        lpirc_version=m.get("lpirc_version"), runtime=runtime, device=device, created_utc=created,
        run_dir=str(run_dir.resolve()) if run_dir is not None else None,
        ground_truth=str(Path(score["ground_truth"]).resolve()) if score.get("ground_truth") else None,
        extra={"status": m.get("status"), "model": score.get("model"), "delegate": deleg or None,
               "energy_method": score.get("energy_method"), "notes": m.get("notes") or [],
               "warnings": score.get("warnings") or [],
               # what the entry may be ranked with (scoring.groups), by content
               "ground_truth_sha256": score.get("ground_truth_sha256"),
               "holdout_id": score.get("holdout_id") or groups.holdout_id(hold),
               "rule_fields": {k: v for k, v in score.items() if k not in _SCORE_COMMON}},
    )
    fields_.update(overrides)
    return Entry(**fields_)


_SCORE_COMMON = set(scoring.report.COMMON) | {
    "options", "source", "warnings", "per_class", "confused", "log", "log_format", "ground_truth",
    "label_names", "ground_truth_sha256", "holdout_id"}


def add_entry(conn: sqlite3.Connection, entry: Entry) -> bool:
    """Store ``entry``. Returns True if added, False if an entry with its uid was already there
    (nothing changes then: the first one stays)."""
    row = entry.to_json()
    row["extra"] = json.dumps(row["extra"], sort_keys=True, default=str)
    row = {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in row.items()}
    cols = (*_COLUMNS, "added_utc")
    with _sqlite_errors(conn):
        cur = conn.execute(
            f"INSERT OR IGNORE INTO entries ({', '.join(cols)}) VALUES ({', '.join('?' * len(cols))})",
            [row[c] for c in _COLUMNS] + [utc_now()])
    return cur.rowcount == 1


def _row_entry(row: sqlite3.Row | tuple, names: list[str]) -> Entry:
    d = dict(zip(names, row))
    d["extra"] = json.loads(d.get("extra") or "{}")
    return Entry(**{k: d[k] for k in _COLUMNS})


def entries(conn: sqlite3.Connection) -> list[Entry]:
    """Every stored entry, oldest added first."""
    with _sqlite_errors(conn):
        cur = conn.execute(f"SELECT {', '.join(_COLUMNS)} FROM entries ORDER BY added_utc, uid")
        names = [d[0] for d in cur.description]
        return [_row_entry(r, names) for r in cur.fetchall()]


def get_entry(conn: sqlite3.Connection, uid: str) -> Entry | None:
    """The entry with exactly this uid, or None."""
    with _sqlite_errors(conn):
        cur = conn.execute(f"SELECT {', '.join(_COLUMNS)} FROM entries WHERE uid = ?", (uid,))
        row = cur.fetchone()
    return _row_entry(row, [d[0] for d in cur.description]) if row else None


def remove(conn: sqlite3.Connection, uid_or_prefix: str) -> Entry:
    """Delete the one entry whose uid is, or starts with, ``uid_or_prefix``; returns it.

    Raises:
        InputError: no entry matches, or the prefix matches several (their count is given).
    """
    key = uid_or_prefix.strip()
    if not key:
        raise InputError("remove: give an entry's uid or the start of it")
    with _sqlite_errors(conn):
        return _remove_one(conn, key)


def _remove_one(conn: sqlite3.Connection, key: str) -> Entry:
    conn.execute("BEGIN IMMEDIATE")
    try:
        like = key.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%"
        cur = conn.execute(f"SELECT {', '.join(_COLUMNS)} FROM entries WHERE uid = ? OR uid LIKE ? "
                           "ESCAPE '\\'", (key, like))
        names = [d[0] for d in cur.description]
        rows = cur.fetchall()
        exact = [r for r in rows if r[0] == key]
        rows = exact or rows
        if not rows:
            raise InputError(f"remove: no entry's uid starts with {key!r}")
        if len(rows) > 1:
            raise InputError(f"remove: {len(rows)} entries' uids start with {key!r}; give more of the uid")
        conn.execute("DELETE FROM entries WHERE uid = ?", (rows[0][0],))
        conn.execute("COMMIT")
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    return _row_entry(rows[0], names)


# --- standings --------------------------------------------------------------------------------

PRIZE_LOW_ENERGY = "least energy with high accuracy"
PRIZE_HIGH_ACCURACY = "highest accuracy with low energy"
MIN_PRIZE_FIELD = 3  # entries with a known energy a group needs before side prizes mean anything


@dataclass(frozen=True)
class Standing:
    """One ranked row.

    Attributes:
        place: 1-based competition rank within its group (equal scores share a place: 1, 1, 3);
            None when the entry has no score under these rules.
        group: 1-based number of the group it is ranked in: entries are only ranked together
            when they share a holdout (``holdout_sha256``), a rule set and its budget
            (``params``).
        entry: the stored Entry.
        rules, score, top1, top5: under the rules asked for (re-scored from the log if needed).
        rescored: True when score/top1/top5 were recomputed from ``entry.run_dir``.
        prizes: side prizes won in the group (:data:`PRIZE_LOW_ENERGY`, :data:`PRIZE_HIGH_ACCURACY`).
        notes: why a row is unranked or what to know about it (re-scoring failed, status, ...).
        params: the rule set's parameters the score used, as ``(name, value)`` pairs from
            :data:`RULE_PARAMS` (``time_limit_s`` for lpirc-onsite, ``ms_per_image`` for
            ovic-2018, ``frontier_k``/``frontier_a0`` for ovic-2019, ``idle_watts`` for
            lpcvc-2020): a run with a 4 s budget is not ranked against runs that had 600 s.
    """

    place: int | None
    group: int
    entry: Entry
    rules: str
    score: float | None
    top1: float | None
    top5: float | None
    rescored: bool
    prizes: tuple[str, ...] = ()
    notes: tuple[str, ...] = ()
    params: tuple[tuple[str, float], ...] = ()
    #: scoring.groups.comparable_key of the group: (rules, params, ground truth sha256, holdout)
    group_key: tuple = ()

    @property
    def energy_wh(self) -> float | None:
        return self.entry.energy_wh

    def to_json(self) -> dict[str, Any]:
        """The row as JSON: place, group, the ranked rules/score/top1/top5, rescored, prizes,
        notes, the entry's other fields, and ``stored``: its rules/score/top1/top5 as stored."""
        e = self.entry.to_json()
        stored = {k: e.pop(k) for k in ("rules", "score", "top1", "top5")}
        return {"place": self.place, "group": self.group, "rules": self.rules, "score": self.score,
                "top1": self.top1, "top5": self.top5, "rescored": self.rescored,
                "prizes": list(self.prizes), "notes": list(self.notes), "params": dict(self.params),
                **e, "stored": stored}


# The parameters of a rule set that decide what its score means (one rule: scoring.rule_params)
RULE_PARAMS = scoring.RULE_PARAMS
rule_params = scoring.rule_params


def standings(conn: sqlite3.Connection, rules: str | None = None, **rule_options) -> list[Standing]:
    """Rank every stored entry, LPIRC style.

    Entries are grouped by the one rule ``lpirc score`` uses too,
    :func:`scoring.groups.comparable_key`: rule set and its parameters (:data:`RULE_PARAMS`),
    the ground truth by content (sha256 of the CSV) and the holdout by content (sha256 of its
    sorted image names: another ``--seed`` is the same holdout); groups never mix and are
    listed largest first. Within a group, places go by
    score, higher first, equal scores sharing a place (``scoring.ranks``); entries without a
    score come last with place None. Side prizes (:func:`side_prizes`) are awarded per group.

    Args:
        rules: rank under this rule set; entries stored under another one (or any with
            ``rule_options`` given) are re-scored from their logs (``entry.run_dir``, with the
            stored energy). None: each entry as stored, grouped by its own rule set.
        rule_options: passed to ``scoring.score_path`` (time_limit_s, ms_per_image, ...).
    Returns:
        Standing rows, group by group, best first.
    Raises:
        InputError: an unknown rule set.
    """
    if rules is not None and rules not in scoring.RULES:
        raise InputError(f"unknown rule set {rules!r} (known: {', '.join(scoring.RULES)})")
    scored = [_under(e, rules, rule_options) for e in entries(conn)]
    digests: dict[str, str | None] = {}  # ground-truth file -> sha256, read once per file
    keyed: dict[tuple, list[Standing]] = {}
    for s in sorted(scored, key=lambda s: not s.params):  # those whose parameters are known first
        key = _group_key(s, digests)
        if not s.params:  # not re-scored (its log is gone): unranked, beside its holdout's entries
            key = next((k for k in keyed if (k[0], *k[2:]) == (key[0], *key[2:])), key)
        keyed.setdefault(key, []).append(s)
    ordered = sorted(keyed.items(), key=lambda kg: (-len(kg[1]), kg[0][3], kg[0][2], kg[0][0],
                                                     kg[0][1]))
    out: list[Standing] = []
    for gi, (key, group) in enumerate(ordered, start=1):
        out.extend(replace(r, group_key=key) for r in _rank_group(group, gi))
    return out


def _group_key(s: Standing, digests: dict[str, str | None]) -> tuple:
    """The entry's :func:`scoring.groups.comparable_key`, from what was stored with it (an
    entry stored before the digests were: its ground-truth file's sha256 read now, its ordered
    holdout digest)."""
    e = s.entry
    x = e.extra if isinstance(e.extra, Mapping) else {}
    gt = x.get("ground_truth_sha256")
    if not gt and e.ground_truth:
        if e.ground_truth not in digests:
            digests[e.ground_truth] = groups.file_sha256(e.ground_truth)
        gt = digests[e.ground_truth]
    return groups.comparable_key(s.rules, s.params, gt, x.get("holdout_id") or e.holdout_sha256)


RUN_OK = ("complete", "budget_exhausted")  # run statuses of a valid entry (None: not a run)


def _under(e: Entry, rules: str | None, opts: dict) -> Standing:
    """The entry's figures under ``rules``: stored, or re-scored from its log."""
    opts = {k: v for k, v in opts.items() if v is not None}
    want = rules or e.rules
    notes = []
    status = e.extra.get("status") if isinstance(e.extra, Mapping) else None
    if status and status not in RUN_OK:
        notes.append(f"run status {status}: no side prize")
    elif e.answered == 0:
        notes.append("answered nothing: no side prize")
    if want == e.rules and not opts:
        stored = e.extra.get("rule_fields") if isinstance(e.extra, Mapping) else None
        return Standing(None, 0, e, want, e.score, e.top1, e.top5, False, (), tuple(notes), rule_params(stored))
    if not e.run_dir or not Path(e.run_dir).exists():
        notes.append(f"cannot re-score under {want}: log {e.run_dir or '(none stored)'} not found")
        return Standing(None, 0, e, want, None, None, None, False, (), tuple(notes))
    if "energy_wh" in scoring.RULES[want].options and e.energy_wh is not None:
        opts.setdefault("energy_wh", e.energy_wh)  # the stored (possibly metered) energy
    try:
        s = scoring.score_path(e.run_dir, e.ground_truth, want, **opts)
    except scoring.ScoringError as err:
        notes.append(f"cannot re-score under {want}: {err}")
        return Standing(None, 0, e, want, None, None, None, False, (), tuple(notes))
    return Standing(None, 0, e, want, s["score"], s["top1"], s["top5"], True, (), tuple(notes), rule_params(s))


def prize_field(group: list[Standing]) -> list[tuple[float | None, float | None]]:
    """(top-1, energy Wh) of each row for :func:`side_prizes`, (None, None) for a row that is
    not in the running: a run that failed (status other than complete or budget_exhausted) or
    answered nothing is ranked (last, at its score) but neither wins a side prize nor moves the
    thresholds (a failed run's tiny energy made it 'highest accuracy with low energy' at 0 %)."""
    out = []
    for s in group:
        status = s.entry.extra.get("status") if isinstance(s.entry.extra, Mapping) else None
        ok = (status is None or status in RUN_OK) and s.entry.answered > 0
        out.append((s.top1, s.entry.energy_wh) if ok else (None, None))
    return out


def _rank_group(group: list[Standing], gi: int) -> list[Standing]:
    places = scoring.ranks([{"score": s.score} for s in group])
    prizes = side_prizes(prize_field(group))
    labels = {s.entry.energy_label for s in group if s.entry.energy_wh is not None}
    group_notes = []  # (that a group is ranked apart from the others is its group number)
    if len(labels) > 1:
        group_notes.append(f"energy figures of mixed provenance ({', '.join(sorted(labels))})")
    rows = []
    for i, s in enumerate(group):
        won = tuple(name for name, winners in prizes.items() if i in winners)
        notes = s.notes + tuple(group_notes)
        rows.append(Standing(places[i], gi, s.entry, s.rules, s.score, s.top1, s.top5, s.rescored, won, notes,
                             s.params))
    order = sorted(range(len(rows)), key=lambda i: (places[i] is None, places[i] or 0, rows[i].entry.submission))
    return [rows[i] for i in order]


def side_prizes(results: list[tuple[float | None, float | None]], k_std: float = 1.0) -> dict[str, list[int]]:
    """The side prizes of the LPIRC on-site years, over one group of entries.

    ``least energy with high accuracy``: the lowest energy among entries whose accuracy is at
    least ``mean + k_std x std`` of the accuracies; ``highest accuracy with low energy``: the
    highest accuracy among entries whose energy is at most ``mean - k_std x std`` of the
    energies. Only entries with both an accuracy and an energy count, and both prizes need at
    least :data:`MIN_PRIZE_FIELD` of them. ``std`` is the **population** standard deviation
    (numpy's default, ddof=0): the field of entries is the whole population being judged, not a
    sample of one. Ties share the prize.

    Source: the prize names are those LPIRC awarded beside its champion from 2015
    (rebootingcomputing.ieee.org/lpirc/2015: "highest accuracy with low energy", "least energy
    with high accuracy"); the one-standard-deviation thresholds are as the lpirc issue states
    them; the organisers' published rules of those years we could not find, nor whether they
    used the population or the sample deviation.

    Args:
        results: (accuracy 0..1, energy_wh) per entry; None where unknown.
    Returns:
        {prize name: indices into ``results`` of the winners} (empty lists when not awarded).
    """
    out: dict[str, list[int]] = {PRIZE_LOW_ENERGY: [], PRIZE_HIGH_ACCURACY: []}
    th = prize_thresholds(results, k_std)
    if th is None:
        return out
    idx = [i for i, (a, e) in enumerate(results) if a is not None and e is not None]
    acc = np.array([results[i][0] for i in idx], dtype=float)
    wh = np.array([results[i][1] for i in idx], dtype=float)
    tol = 1e-12  # a threshold computed equal to a value must not miss it by rounding
    high = acc >= th[0] - tol
    low = wh <= th[1] + tol
    if high.any():
        best = wh[high].min()
        out[PRIZE_LOW_ENERGY] = [i for i, h, w in zip(idx, high, wh) if h and w <= best + tol]
    if low.any():
        best = acc[low].max()
        out[PRIZE_HIGH_ACCURACY] = [i for i, lo, a in zip(idx, low, acc) if lo and a >= best - tol]
    return out


def prize_thresholds(results: list[tuple[float | None, float | None]],
                     k_std: float = 1.0) -> tuple[float, float] | None:
    """(accuracy at least, energy_wh at most) for the side prizes of :func:`side_prizes`: mean +
    k_std x std of the accuracies, mean - k_std x std of the energies (population std), over the
    entries with both; None when fewer than :data:`MIN_PRIZE_FIELD` have both."""
    pairs = [(a, e) for a, e in results if a is not None and e is not None]
    if len(pairs) < MIN_PRIZE_FIELD:
        return None
    acc = np.array([a for a, _ in pairs], dtype=float)
    wh = np.array([e for _, e in pairs], dtype=float)
    return float(acc.mean() + k_std * acc.std()), float(wh.mean() - k_std * wh.std())
