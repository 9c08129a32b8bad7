"""Jobs and their state, without Ray: the submissions a fleet runs, the head's settings
(:class:`FleetConfig`), each job as the head tracks it and writes it to ``OUT/fleet.json``,
the progress events and the outcome, and reading an earlier run of the same fleet back."""

from __future__ import annotations

import dataclasses
import json
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lpirc import leaderboard
from lpirc.errors import EXIT_FAILED, EXIT_INTERRUPTED, EXIT_OK, InputError
from lpirc.fleet.device import KINDS, read_bytes
from lpirc.results import file_sha256
from lpirc.settings import RunSettings

STATE = "fleet.json"


def now_utc() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


# --- submissions -----------------------------------------------------------------------------


@dataclass(frozen=True)
class Submission:
    """One job's model: ``name`` (unique in the fleet), the file, the device kind it asks for."""

    name: str
    model: Path
    kind: str
    sha256: str


def parse_kind(model: Path, kind: str) -> str:
    """The device kind a model asks for: ``kind`` itself, or for ``auto`` ``edgetpu`` when the
    file is named ``*_edgetpu.tflite`` (edgetpu_compiler's naming) and ``cpu`` otherwise."""
    if kind != "auto":
        if kind not in KINDS:
            raise InputError(f"unknown device kind {kind!r} (known: auto, {', '.join(KINDS)})")
        return kind
    return "edgetpu" if model.stem.endswith("_edgetpu") else "cpu"


def find_submissions(paths: list[Path], kind: str = "auto") -> list[Submission]:
    """One :class:`Submission` per ``.tflite`` file given, or per ``.tflite`` directly inside a
    folder given (sorted), named by :func:`job_names`.

    Raises InputError naming a path that is missing, a sidecar given as a model, or a folder
    holding no ``.tflite``."""
    files: list[Path] = []
    for p in map(Path, paths):
        if p.is_dir():
            found = sorted(q for q in p.iterdir() if q.suffix == ".tflite" and q.is_file())
            if not found:
                raise InputError(f"{p}: folder holds no .tflite submission")
            files += found
        elif p.suffix == ".json":
            raise InputError(f"{p}: a sidecar, not a model (give the .tflite beside it)")
        elif not p.exists():
            raise InputError(f"{p}: submission not found")
        else:
            files.append(p)
    return [Submission(name, f.resolve(), parse_kind(f, kind), file_sha256(f))
            for name, f in zip(job_names(files), files)]


_UNSAFE = re.compile(r"[^A-Za-z0-9._-]")


def safe_name(stem: str) -> str:
    """A file stem as a folder name that stays where it is put: every character but ASCII
    letters, digits, ``.``, ``_`` and ``-`` becomes ``_``, and a leading ``.`` becomes ``_``
    (``..tflite``'s stem ``.`` would be the folder itself, ``..`` its parent)."""
    name = _UNSAFE.sub("_", stem) or "_"
    return "_" + name[1:] if name.startswith(".") else name


def job_names(files: list[Path]) -> list[str]:
    """One job name per file, in order: its :func:`safe_name`, made unique with ``-2``, ``-3``
    ... A suffix never takes a name another file has by itself (``dA/m``, ``dB/m``, ``dC/m-2``
    are ``m``, ``m-3``, ``m-2``), and names that differ only in case count as equal (a fleet
    folder on a case-insensitive file system)."""
    stems = [safe_name(f.stem) for f in files]
    taken = {s.casefold() for s in stems}
    seen: set[str] = set()
    out = []
    for stem in stems:
        name, n = stem, 1
        while name.casefold() in seen or (n > 1 and name.casefold() in taken):
            n += 1
            name = f"{stem}-{n}"
        seen.add(name.casefold())
        out.append(name)
    return out


# --- the head's settings ---------------------------------------------------------------------


@dataclass(frozen=True)
class FleetConfig:
    """Everything the head decides: the holdout and ground truth (head paths), the fleet folder,
    the run's budget and rules (passed to every ``lpirc run``; defaults: :class:`RunSettings`'),
    attempts allowed per job, the standings database (None: ``lpirc leaderboard``'s default,
    ``$LPIRC_DB`` or ``runs/standings.sqlite``), and:

    ``hang_margin_s``: a run with no result ``time_limit_s + hang_margin_s`` seconds after its
    start is stuck; its device's worker kills it and the job goes to another device (the
    head ends a worker that has not answered ``hang_margin_s`` after that). ``lpirc run`` ends
    within about a second of its wall budget (the clock counts from its start, model loading
    included), plus its interpreter's start-up and writing its files: 0.7 s on an idle 2-core
    machine, a few seconds under load. 30 s leaves ten times that.

    ``device_reports``: let each device write ``report.html`` into its run folder (off: it costs
    0.3-1.2 s of device time per job, and the head can make it: ``lpirc report
    OUT/runs/<job>``)."""

    holdout: Path
    ground_truth: Path
    out: Path
    rules: str = RunSettings.rules
    time_limit_s: float = RunSettings.time_limit_s
    clock: str = RunSettings.clock
    ms_per_image: float = RunSettings.ms_per_image
    seed: int = RunSettings.seed
    max_attempts: int = 3
    db: Path | None = None
    hang_margin_s: float = 30.0
    device_reports: bool = False

    def run_args(self, kind: str) -> tuple[str, ...]:
        """The ``lpirc run`` options of every job asking for a ``kind`` device."""
        return ("--delegate", kind, "--time-limit-s", repr(self.time_limit_s), "--clock",
                self.clock, "--ms-per-image", repr(self.ms_per_image), "--seed", str(self.seed),
                "--rules", self.rules, *(() if self.device_reports else ("--no-report",)))

    @property
    def stuck_after_s(self) -> float:
        """Seconds after a run's start past which it is stuck (its worker kills it)."""
        return self.time_limit_s + self.hang_margin_s

    def identity(self) -> dict[str, Any]:
        """The settings every run of one fleet folder shares (its results are ranked together):
        rules, budget, clock, seed; ``ms_per_image`` only under the inference clock. The head
        adds its holdout's and ground truth's digests (:func:`lpirc.fleet.head.check_inputs`)."""
        out: dict[str, Any] = {"rules": self.rules, "time_limit_s": float(self.time_limit_s),
                               "clock": self.clock, "seed": self.seed}
        if self.clock == "inference":
            out["ms_per_image"] = float(self.ms_per_image)
        return out

    @property
    def db_path(self) -> Path:
        return Path(self.db) if self.db is not None else leaderboard.default_db_path()


@dataclass(frozen=True)
class HeadInputs:
    """What the head checked before any device is asked (:func:`lpirc.fleet.head.check_inputs`):
    its holdout's digests (the ordered names, as manifests record them; names and bytes, as
    node checks compare them), its image count, and the fleet's identity
    (:meth:`FleetConfig.identity` plus those digests and the ground truth's sha256)."""

    files_sha256: str
    content_sha256: str
    image_count: int
    identity: dict[str, Any]


# --- jobs, events, outcome -------------------------------------------------------------------


def _known_fields(cls: type, obj: dict[str, Any]) -> dict[str, Any]:
    """The items of ``obj`` that are fields of dataclass ``cls`` (a file of another version may
    hold others)."""
    names = {f.name for f in dataclasses.fields(cls)}
    return {k: v for k, v in obj.items() if k in names}


@dataclass(frozen=True)
class Attempt:
    """One try of a job, as ``fleet.json`` records it. ``outcome``: running, done, failed,
    stopped (exit 130 or a signal), stuck (killed by its worker), device_lost, holdout_mismatch,
    model_mismatch or cancelled; ``run_dir``: the run folder on the device's node (a lost
    attempt's partial one stays there); times in s: ``run_s`` the ``lpirc run`` process (on
    the device), ``head_s`` sent to result (on the head), ``overhead_s`` their difference,
    ``score_s`` writing, scoring and the standings on the head."""

    attempt: int
    device: str
    node: str
    started_utc: str
    outcome: str = "running"
    reason: str | None = None
    ended_utc: str | None = None
    exit_code: int | None = None
    run_dir: str | None = None
    run_s: float | None = None
    head_s: float | None = None
    overhead_s: float | None = None
    score_s: float | None = None

    @classmethod
    def from_json(cls, obj: dict[str, Any]) -> "Attempt":
        """An attempt read back from ``fleet.json`` (unknown keys dropped); one still
        ``running`` there was cut short by the head's end: cancelled."""
        a = cls(**_known_fields(cls, obj))
        return a if a.outcome != "running" else dataclasses.replace(
            a, outcome="cancelled", reason="the head stopped before its result")


@dataclass
class JobState:
    """One job as the head tracks it (and writes it to ``fleet.json``). ``status``: queued,
    running, done, failed or cancelled. ``attempts``: one :class:`Attempt` per try."""

    name: str
    model: str
    kind: str
    sha256: str
    status: str = "queued"
    device: str | None = None
    reason: str | None = None
    attempts: list[Attempt] = field(default_factory=list)
    score: dict[str, Any] | None = None
    standings: str | None = None  # what the standings database said

    @classmethod
    def of(cls, sub: Submission) -> "JobState":
        return cls(sub.name, str(sub.model), sub.kind, sub.sha256)

    @classmethod
    def from_json(cls, obj: dict[str, Any]) -> "JobState":
        job = cls(**_known_fields(cls, obj))
        job.attempts = [Attempt.from_json(a) for a in job.attempts or [] if isinstance(a, dict)]
        return job

    def record(self, **changes: Any) -> Attempt:
        """The last attempt with ``changes`` (it replaces it); returns it."""
        self.attempts[-1] = dataclasses.replace(self.attempts[-1], **changes)
        return self.attempts[-1]


@dataclass(frozen=True)
class FleetEvent:
    """A progress line: ``what`` is device, refused, lost, queued, running, retry, done, failed,
    cancelled or note. ``pid``: the device worker's process id on its node (running events).
    ``counts``: jobs queued, running, done, failed after the event."""

    what: str
    message: str
    job: str | None = None
    device: str | None = None
    pid: int | None = None
    counts: tuple[int, int, int, int] = (0, 0, 0, 0)


@dataclass(frozen=True)
class FleetOutcome:
    """The end of a fleet: every job, every device (label, state), whether Ctrl-C stopped it,
    and the measured start-up (first device ready) and wall time, in s."""

    jobs: list[JobState]
    devices: list[dict[str, Any]]
    interrupted: bool
    startup_s: float | None
    wall_s: float
    rules: str

    @property
    def exit_code(self) -> int:
        """130 when interrupted, 1 when a job did not end done, else 0."""
        if self.interrupted:
            return EXIT_INTERRUPTED
        return EXIT_OK if all(j.status == "done" for j in self.jobs) else EXIT_FAILED


def parse_json(data: bytes | None) -> dict | None:
    """``data`` as a JSON object; None when absent, not JSON or not an object."""
    if data is None:
        return None
    try:
        obj = json.loads(data)
    except ValueError:
        return None
    return obj if isinstance(obj, dict) else None


#: the option that sets each key of a fleet's identity (in messages)
_OPTION = {"rules": "--rules", "time_limit_s": "--time-limit-s", "clock": "--clock",
           "ms_per_image": "--ms-per-image", "seed": "--seed",
           "holdout_files_sha256": "--holdout (its file list)",
           "holdout_content_sha256": "--holdout (its images' bytes)",
           "ground_truth_sha256": "--ground-truth (its bytes)"}


def _show(key: str, value: Any) -> str:
    return str(value)[:12] if key.endswith("sha256") and value else str(value)


def check_same_fleet(path: Path, old: dict, identity: dict[str, Any]) -> None:
    """InputError (one line) when the fleet recorded in ``path`` (its ``settings``; a file
    written before lpirc recorded them has only its holdout list and rules) ran with another
    identity than ``identity``: its results would be ranked with runs of another budget, clock,
    holdout or ground truth."""
    full = isinstance(old.get("settings"), dict)
    recorded = old["settings"] if full else {
        "rules": old.get("rules"), "holdout_files_sha256": old.get("holdout_files_sha256")}
    keys = [k for k in _OPTION if k in recorded or (full and k in identity)]
    for k in keys:
        before, now = recorded.get(k), identity.get(k)
        if before != now:
            raise InputError(f"{path}: the fleet in this folder ran with {_OPTION[k]} "
                             f"{_show(k, before)}, this one {_show(k, now)}; give the same "
                             "settings to resume it, or choose another --out")


def load_jobs(cfg: FleetConfig, subs: list[Submission], identity: dict[str, Any]) -> list[JobState]:
    """The jobs of this fleet: one per submission, and what ``OUT/fleet.json`` of an earlier
    run into the same ``--out`` recorded. A job done there stays done (it is not run or scored
    again); one not given now is kept as recorded. Raises InputError when that earlier fleet
    ran with another identity (:func:`check_same_fleet`) or used the same job name for
    another model."""
    jobs = [JobState.of(s) for s in subs]
    path = cfg.out / STATE
    if not path.is_file():
        return jobs
    old = parse_json(read_bytes(path))
    if old is None or not isinstance(old.get("jobs"), list):
        raise InputError(f"{path}: not a fleet state file; choose another --out")
    check_same_fleet(path, old, identity)
    prev = {j["name"]: JobState.from_json(j)
            for j in old["jobs"] if isinstance(j, dict) and "name" in j}
    for j in jobs:
        p = prev.pop(j.name, None)
        if p is None:
            continue
        if p.sha256 != j.sha256:
            raise InputError(f"{path}: job {j.name} was another model (sha256 {p.sha256[:12]}); "
                             "rename the file or choose another --out")
        j.attempts = p.attempts
        if p.status == "done":
            j.status, j.device, j.reason, j.score, j.standings = (
                "done", p.device, p.reason, p.score, p.standings)
    for p in prev.values():
        if p.status not in ("done", "failed"):
            p.status = "cancelled"
    return jobs + list(prev.values())
