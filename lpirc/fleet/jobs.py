"""Jobs and their state, without Ray: the submissions a fleet runs, the head's settings
(:class:`FleetConfig`), each job as the head tracks it and writes it to ``OUT/fleet.json``,
the progress events and the outcome, and reading an earlier run of the same fleet back."""

from __future__ import annotations

import dataclasses
import json
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
    folder given (sorted). Names are the file stems, made unique with ``-2``, ``-3`` ...

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
    out: list[Submission] = []
    seen: dict[str, int] = {}
    for f in files:
        n = seen[f.stem] = seen.get(f.stem, 0) + 1
        name = f.stem if n == 1 else f"{f.stem}-{n}"
        out.append(Submission(name, f.resolve(), parse_kind(f, kind), file_sha256(f)))
    return out


# --- the head's settings ---------------------------------------------------------------------


@dataclass(frozen=True)
class FleetConfig:
    """Everything the head decides: the holdout and ground truth (head paths), the fleet folder,
    the run's budget and rules (passed to every ``lpirc run``; defaults: :class:`RunSettings`'),
    attempts allowed per job, the seconds past a run's budget after which its device counts as
    stuck, and the standings database (None: ``lpirc leaderboard``'s default, ``$LPIRC_DB`` or
    ``runs/standings.sqlite``)."""

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
    hang_margin_s: float = 120.0  # a run silent this long past its wall budget: stuck device

    def run_args(self, kind: str) -> tuple[str, ...]:
        return ("--delegate", kind, "--time-limit-s", repr(self.time_limit_s), "--clock",
                self.clock, "--ms-per-image", repr(self.ms_per_image), "--seed", str(self.seed),
                "--rules", self.rules)

    @property
    def db_path(self) -> Path:
        return Path(self.db) if self.db is not None else leaderboard.default_db_path()


# --- jobs, events, outcome -------------------------------------------------------------------


@dataclass
class JobState:
    """One job as the head tracks it (and writes it to ``fleet.json``). ``status``: queued,
    running, done, failed or cancelled. ``attempts``: one dict per try (device, node, outcome,
    reason, the run folder on the node, times)."""

    name: str
    model: str
    kind: str
    sha256: str
    status: str = "queued"
    device: str | None = None
    reason: str | None = None
    attempts: list[dict[str, Any]] = field(default_factory=list)
    score: dict[str, Any] | None = None
    standings: str | None = None  # what the standings database said

    @classmethod
    def of(cls, sub: Submission) -> "JobState":
        return cls(sub.name, str(sub.model), sub.kind, sub.sha256)


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


def load_jobs(cfg: FleetConfig, subs: list[Submission], head_sha: str) -> list[JobState]:
    """The jobs of this fleet: one per submission, and what ``OUT/fleet.json`` of an earlier
    run into the same ``--out`` recorded. A job done there stays done (it is not run or scored
    again); one not given now is kept as recorded. Raises InputError when that earlier fleet
    used another holdout or rule set, or the same job name for another model."""
    jobs = [JobState.of(s) for s in subs]
    path = cfg.out / STATE
    if not path.is_file():
        return jobs
    old = parse_json(read_bytes(path))
    if old is None or not isinstance(old.get("jobs"), list):
        raise InputError(f"{path}: not a fleet state file; choose another --out")
    if old.get("holdout_files_sha256") != head_sha or old.get("rules") != cfg.rules:
        raise InputError(f"{path}: an earlier fleet over another holdout or rule set "
                         f"({old.get('rules')}); choose another --out")
    fields = {f.name for f in dataclasses.fields(JobState)}
    prev = {j["name"]: JobState(**{k: v for k, v in j.items() if k in fields})
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
