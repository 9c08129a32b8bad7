"""``lpirc fleet``: evaluate many submissions across many devices, on Ray.

Every submission (a ``.tflite`` with its optional sidecar ``X.json``, or each ``.tflite`` of a
folder) is one **job**. A job runs ``lpirc run`` (a child process of a Ray actor on the device's
node, so a crash of the run cannot take the node's worker with it) on one **device** that nothing
else uses meanwhile. The head (the organiser's machine) keeps the ground truth: device nodes send
back the result log and the manifest, and the head scores them with ``scoring`` and adds them to
the standings database of ``lpirc leaderboard`` (:mod:`lpirc.leaderboard`, source ``fleet``).

Devices are Ray custom resources a device node offers, one per device, named
``lpirc_device_<kind>_<id>`` with amount 1 (:data:`RESOURCE_PREFIX`): ``kind`` is ``cpu``,
``edgetpu`` or ``gpu`` (:data:`KINDS`) and ``id`` tells the node's devices of one kind apart
(``lpirc_device_cpu_0``, ``lpirc_device_edgetpu_usb0``). The head starts one actor per device,
pinned to its node and holding its resource for the whole fleet, so two jobs (or two fleets)
never share a device. A node's ``cpu`` devices divide the cores its process may use between them.
A job asks for one kind (``--kind``; ``auto`` = ``edgetpu`` for ``*_edgetpu.tflite``, else
``cpu``) and runs with ``--delegate <kind>``.

Before a device takes a job its node lists its holdout (``$LPIRC_FLEET_HOLDOUT`` on the node,
else the head's ``--holdout`` path) with :func:`lpirc.holdout.open_holdout`, the function that
computes the manifest's ``holdout.files_sha256``; a different sha256 refuses that node's device
in one line. The manifest each run returns is checked again against the head's sha256.

Faults. A device whose actor dies mid-run (node lost, worker killed) gets no further job; its job
is queued again for another device, the attempt is recorded (device, reason, where its partial
run folder stays), and nothing of that attempt is scored; a device silent for
``FleetConfig.hang_margin_s`` past its run's budget is ended and counts the same. A submission that fails (bad model,
delegate missing) is recorded with ``lpirc run``'s one-line reason and the others go on.
Ctrl-C on the head cancels every job; what finished stays scored. A job is scored once: a
re-run with the same ``--out`` skips the jobs ``fleet.json`` records as done.

Without an address, :func:`local_cluster` starts a Ray instance on this machine offering
``devices`` simulated ``cpu`` devices (``lpirc_device_cpu_0`` ...), the cores divided between
them.

Ray is imported only inside the functions that need it (the ``fleet`` extra).
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import hashlib
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

import click

from lpirc import __version__, leaderboard, preflight
from lpirc.errors import EXIT_FAILED, EXIT_INTERRUPTED, EXIT_OK, InputError, LpircError
from lpirc.results import MANIFEST, RESULTS, SCORE, file_sha256, write_json

RESOURCE_PREFIX = "lpirc_device_"
KINDS = ("cpu", "edgetpu", "gpu")
HOLDOUT_ENV = "LPIRC_FLEET_HOLDOUT"  # set on a device node whose holdout lives elsewhere
WORK_ENV = "LPIRC_FLEET_WORK_DIR"  # where a device node keeps its run folders
STATE = "fleet.json"
_RESOURCE_RE = re.compile(rf"^{RESOURCE_PREFIX}({'|'.join(KINDS)})_([A-Za-z0-9][A-Za-z0-9.:-]*)$")
_DEVICE_FAULT_EXITS = (EXIT_INTERRUPTED,)  # the run was stopped from outside, not by its model
_OBJECT_STORE_BYTES = 128 * 1024 * 1024  # local instance: results and models are small


class FleetError(LpircError):
    """A fleet that cannot start: Ray missing, no cluster at the address, no device (exit 1)."""

    exit_code = EXIT_FAILED


def _import_ray():
    try:
        import ray
    except ImportError:
        raise FleetError("lpirc fleet needs Ray: pip install 'lpirc[fleet]'") from None
    return ray


def _now_utc() -> str:
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


# --- devices ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Device:
    """One device of the cluster: a resource on one node. ``share`` = (position, count) among
    the node's ``cpu`` devices, which divide the node's cores; None for other kinds."""

    node_id: str
    node_ip: str
    resource: str
    kind: str
    device_id: str
    label: str
    share: tuple[int, int] | None = None


def parse_resource(name: str) -> tuple[str, str] | None:
    """``"lpirc_device_edgetpu_usb0"`` -> ``("edgetpu", "usb0")``; None for any other name."""
    m = _RESOURCE_RE.match(name)
    return (m.group(1), m.group(2)) if m else None


def devices_from_nodes(nodes: list[dict]) -> list[Device]:
    """The devices offered by the alive nodes of ``ray.nodes()``, sorted by node then name.

    A node reached at the same IP as another (several Ray nodes on one machine) is labelled with
    the start of its node id as well."""
    alive = [n for n in nodes if n.get("Alive")]
    ips = [n.get("NodeManagerAddress", "?") for n in alive]
    out: list[Device] = []
    for node in sorted(alive, key=lambda n: (n.get("NodeManagerAddress", ""), n["NodeID"])):
        ip = node.get("NodeManagerAddress", "?")
        where = ip if ips.count(ip) == 1 else f"{ip}#{node['NodeID'][:6]}"
        names = sorted(r for r in node.get("Resources", {}) if parse_resource(r))
        cpus = [r for r in names if parse_resource(r)[0] == "cpu"]
        for r in names:
            kind, dev_id = parse_resource(r)
            share = (cpus.index(r), len(cpus)) if kind == "cpu" else None
            out.append(Device(node["NodeID"], ip, r, kind, dev_id, f"{kind}_{dev_id}@{where}",
                              share))
    return out


def share_cores(cores: list[int], share: tuple[int, int] | None) -> list[int] | None:
    """The cores of device ``position`` of ``count`` splitting ``cores``: every device the same
    number, ``len(cores) // count`` (a job's time must not depend on the device it drew; the
    rest stay unused); with fewer cores than devices, device k gets core k mod n, shared (the
    head notes it). None: no division (all cores)."""
    if share is None:
        return None
    pos, count = share
    cores = sorted(cores)
    size = len(cores) // count
    if size == 0:
        return [cores[pos % len(cores)]]
    return cores[pos * size:(pos + 1) * size]


# --- what crosses the boundary between head and device node ---------------------------------


@dataclass(frozen=True)
class NodeReport:
    """A device's answer to the holdout check, sent before it takes any job."""

    pid: int
    holdout: str
    files_sha256: str | None
    image_count: int
    error: str | None  # why the holdout could not be listed
    holds_ground_truth: bool
    cores: tuple[int, ...] | None
    lpirc_version: str
    work_dir: str


@dataclass(frozen=True)
class JobRequest:
    """What a device needs to run one attempt (the model bytes travel as a separate argument)."""

    job: str
    attempt: int
    model_name: str
    sidecar: bytes | None
    holdout: str  # the head's path: used where the node sets no $LPIRC_FLEET_HOLDOUT
    work_dir: str  # the head's suggestion: used where the node sets no $LPIRC_FLEET_WORK_DIR
    run_args: tuple[str, ...]  # lpirc run options besides --model, --holdout, --out


@dataclass(frozen=True)
class AttemptResult:
    """What a device sends back: the run's exit code and one-line reason, the result log and
    manifest (bytes, as written), where the run folder stays on the node, and times (seconds
    since the epoch on the node's clock; ``run_s`` is the wall time of ``lpirc run``)."""

    exit_code: int
    reason: str | None
    results: bytes | None
    manifest: bytes | None
    run_dir: str
    run_s: float
    started: float
    ended: float


def _node_work_dir(suggested: str) -> Path:
    return Path(os.environ.get(WORK_ENV) or suggested).absolute()


# Runs `lpirc run` for a device, in a child of the device's actor. Set up here, not in a
# preexec_fn (unsafe in a process with threads, as every Ray worker is): death with the actor
# (Linux PR_SET_PDEATHSIG, kept across exec; the parent checked after, so no race), the
# device's cores (argv[2], "" = all), then exec. Standard library only: it starts in ~20 ms.
_CHILD = (
    "import ctypes, os, signal, sys\n"
    "if sys.platform.startswith('linux'):\n"
    "    ctypes.CDLL(None).prctl(1, signal.SIGKILL)\n"
    "    if os.getppid() != int(sys.argv[1]): sys.exit(137)\n"
    "if sys.argv[2]: os.sched_setaffinity(0, [int(c) for c in sys.argv[2].split(',')])\n"
    "os.execv(sys.executable, [sys.executable, '-m', 'lpirc', *sys.argv[3:]])\n"
)


def _child_command(args: list[str], cores: list[int] | None) -> list[str]:
    """The command line that runs ``lpirc <args>`` through :data:`_CHILD`."""
    return [sys.executable, "-c", _CHILD, str(os.getpid()),
            ",".join(map(str, cores)) if cores is not None else "", *args]


def _fresh(base: Path) -> Path:
    """``base``, made; one left there by a fleet whose ``fleet.json`` was removed is moved
    aside (``.old-<time>``), never overwritten."""
    if base.exists():
        base.rename(base.with_name(f"{base.name}.old-{time.time():.0f}"))
    base.mkdir(parents=True)
    return base


class DeviceWorker:
    """The Ray actor that holds one device for the fleet and runs its jobs one at a time."""

    def __init__(self, device: Device) -> None:
        self.device = device
        self.cores: list[int] | None = None
        if device.share is not None and hasattr(os, "sched_getaffinity"):
            self.cores = share_cores(sorted(os.sched_getaffinity(0)), device.share)

    def check(self, holdout: str, seed: int, work_dir: str) -> NodeReport:
        """List this node's holdout with the function that computes the manifest's sha256."""
        from lpirc.holdout import open_holdout

        path = os.environ.get(HOLDOUT_ENV) or holdout
        sha, count, error = None, 0, None
        try:
            h = open_holdout(path, seed=seed)
            sha, count = h.files_sha256, len(h.files)
        except LpircError as e:
            error = str(e)
        return NodeReport(os.getpid(), str(path), sha, count, error,
                          Path(path, "ground_truth.csv").is_file(),
                          tuple(self.cores) if self.cores is not None else None, __version__,
                          str(_node_work_dir(work_dir)))

    def run_job(self, req: JobRequest, model: bytes) -> AttemptResult:
        """Write the model (and sidecar) into a fresh attempt folder and run ``lpirc run`` on
        it as a child process; return what it left."""
        base = _fresh(_node_work_dir(req.work_dir) / req.job / f"attempt-{req.attempt}")
        model_path = base / req.model_name
        model_path.write_bytes(model)
        if req.sidecar is not None:
            model_path.with_suffix(".json").write_bytes(req.sidecar)
        run_dir = base / "run"
        holdout = os.path.abspath(os.environ.get(HOLDOUT_ENV) or req.holdout)
        args = ["run", "--model", str(model_path), "--holdout", holdout, "--out", str(run_dir),
                "--quiet", *req.run_args]
        if self.cores is not None:
            args += ["--workers", str(len(self.cores))]
        t0 = time.time()
        # its own session: a Ctrl-C on the head's terminal is the head's to handle; in the
        # attempt folder: `python -m lpirc` puts its folder first on sys.path, and a folder
        # named lpirc where the node's `ray start` ran (a clone) would shadow the package
        proc = subprocess.run(_child_command(args, self.cores), stdin=subprocess.DEVNULL,
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                              start_new_session=True, cwd=base)
        t1 = time.time()
        (base / "stderr.txt").write_bytes(proc.stderr)
        return AttemptResult(proc.returncode, _reason(proc.stderr, proc.returncode),
                             _read(run_dir / RESULTS), _read(run_dir / MANIFEST), str(run_dir),
                             t1 - t0, t0, t1)


def _read(path: Path) -> bytes | None:
    try:
        return path.read_bytes()
    except OSError:
        return None


def _reason(stderr: bytes, code: int) -> str | None:
    """The run's one-line reason: its last ``lpirc: error:`` line, else its last line."""
    if code == 0:
        return None
    lines = [ln.strip() for ln in stderr.decode("utf-8", "replace").splitlines() if ln.strip()]
    errors = [ln for ln in lines if ln.startswith("lpirc: error: ")]
    if errors:
        return errors[-1][len("lpirc: error: "):]
    if code < 0:
        return f"lpirc run was killed by signal {-code}"
    return lines[-1] if lines else f"lpirc run exited with code {code}"


# --- the head --------------------------------------------------------------------------------


@dataclass(frozen=True)
class FleetConfig:
    """Everything the head decides: the holdout and ground truth (head paths), the fleet folder,
    the run's budget and rules (passed to every ``lpirc run``), attempts allowed per job, the
    seconds past a run's budget after which its device counts as stuck, and the standings
    database (None: ``lpirc leaderboard``'s default, ``$LPIRC_DB`` or
    ``runs/standings.sqlite``)."""

    holdout: Path
    ground_truth: Path
    out: Path
    rules: str = "lpirc-onsite"
    time_limit_s: float = 600.0
    clock: str = "wall"
    ms_per_image: float = 30.0
    seed: int = 0
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


@dataclass
class _Slot:
    """One device as the head sees it: its actor and state (checking, idle, busy, refused,
    lost) and its answer to the holdout check."""

    device: Device
    actor: Any
    state: str = "checking"
    report: NodeReport | None = None


@dataclass
class FleetOutcome:
    """The end of a fleet: every job, every device (label, state), whether Ctrl-C stopped it,
    and the measured start-up (Ray connection, actors, holdout checks) and wall time, in s."""

    jobs: list[JobState]
    devices: list[dict[str, Any]]
    interrupted: bool
    startup_s: float
    wall_s: float
    rules: str

    @property
    def exit_code(self) -> int:
        """130 when interrupted, 1 when a job did not end done, else 0."""
        if self.interrupted:
            return EXIT_INTERRUPTED
        return EXIT_OK if all(j.status == "done" for j in self.jobs) else EXIT_FAILED


def _first_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return text[0] if text else type(e).__name__


_EXCEPTION_LINE = re.compile(r"^(?:[A-Za-z_][\w.]*\.)?[A-Za-z_]\w*(?:Error|Exception): \S")


def _start_failure(e: BaseException) -> str | None:
    """The cause of a device actor that failed to start (its ``__init__`` raised, or its
    worker could not import lpirc), as the last ``SomeError: message`` line of the traceback
    Ray wraps it in; None when ``e`` is not such a failure (a device lost otherwise)."""
    text = str(e)
    if "creation task" not in text:
        return None
    causes = [ln.strip() for ln in text.splitlines() if _EXCEPTION_LINE.match(ln.strip())]
    return causes[-1] if causes else _first_line(e)


class Fleet:
    """The head's dispatch loop: devices check their holdout, idle devices take the next queued
    job of their kind, results are checked, scored and added to the standings. Ray does the
    placement (one actor per device resource); this object only keeps the jobs' state."""

    def __init__(self, cfg: FleetConfig, jobs: list[JobState],
                 on_event: Callable[[FleetEvent], None] | None = None) -> None:
        from lpirc.holdout import open_holdout

        self.ray = _import_ray()
        self.cfg = cfg
        self.jobs = jobs
        self.on_event = on_event or (lambda ev: None)
        head = open_holdout(cfg.holdout, seed=cfg.seed)
        self.head_sha, self.head_count = head.files_sha256, len(head.files)
        self.head_node = self.ray.get_runtime_context().get_node_id()
        self.slots: list[_Slot] = []
        self.checks: dict[Any, _Slot] = {}
        self.running: dict[Any, tuple[_Slot, JobState, float]] = {}
        self.tries: dict[str, int] = {}  # attempts in this session, per job
        self.t0 = time.time()
        self.first_ready: float | None = None  # time.time() the first device passed its check

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
            "holdout_files_sha256": self.head_sha,
            "ground_truth": str(Path(self.cfg.ground_truth).resolve()),
            "rules": self.cfg.rules, "updated_utc": _now_utc(),
            "devices_ready_s": self.ready_s, "wall_s": round(time.time() - self.t0, 3),
            "devices": self.device_table(),
            "jobs": [dataclasses.asdict(j) for j in self.jobs]})

    @property
    def ready_s(self) -> float | None:
        """Seconds from the fleet's start to the first device passing its holdout check."""
        return round(self.first_ready - self.t0, 3) if self.first_ready else None

    def device_table(self) -> list[dict[str, Any]]:
        return [{"device": s.device.label, "resource": s.device.resource,
                 "node": s.device.node_ip, "node_id": s.device.node_id, "state": s.state,
                 "cores": list(s.report.cores) if s.report and s.report.cores else None}
                for s in self.slots]

    # devices

    def start(self, devices: list[Device]) -> None:
        """One actor per device, pinned to its node, holding the device resource; each first
        lists its holdout."""
        from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

        actor_cls = self.ray.remote(DeviceWorker)
        for d in devices:
            actor = actor_cls.options(
                num_cpus=0, resources={d.resource: 1}, max_restarts=0, max_task_retries=0,
                scheduling_strategy=NodeAffinitySchedulingStrategy(d.node_id, soft=False),
            ).remote(d)
            slot = _Slot(d, actor)
            self.slots.append(slot)
            ref = actor.check.remote(str(self.cfg.holdout.resolve()), self.cfg.seed,
                                     self._work_dir(d))
            self.checks[ref] = slot

    def _work_dir(self, d: Device) -> str:
        """Where a node keeps its run folders unless it sets $LPIRC_FLEET_WORK_DIR: the fleet
        folder on the head's own node, a temp folder elsewhere."""
        out = self.cfg.out.resolve()
        if d.node_id == self.head_node:
            return str(out / "attempts")
        tag = hashlib.sha256(str(out).encode()).hexdigest()[:8]  # two fleets named alike
        return str(_RAY_START_DIR / f"{out.name}-{tag}")

    def _on_check(self, ref: Any) -> None:
        slot = self.checks.pop(ref)
        if slot.state != "checking":  # its node was refused meanwhile
            return
        try:
            rep = self.ray.get(ref)
        except self.ray.exceptions.RayError as e:
            slot.state = "lost"
            cause = _start_failure(e)
            self.emit("lost", f"{slot.device.label}: could not start on its node ({cause}); "
                              "is lpirc installed there, importable by the Python of its "
                              "`ray start`, in the head's version?" if cause else
                              f"{slot.device.label}: lost before its holdout check "
                              f"({_first_line(e)})", slot=slot)
            return
        slot.report = rep
        if rep.error:
            self.refuse_node(slot, f"holdout {rep.holdout}: {rep.error}")
        elif rep.files_sha256 != self.head_sha:
            self.refuse_node(slot, f"holdout {rep.holdout} differs from the head's "
                                   f"(sha256 of the ordered file list {rep.files_sha256[:12]}, "
                                   f"{rep.image_count} images; head {self.head_sha[:12]}, "
                                   f"{self.head_count} images)")
        else:
            slot.state = "idle"
            self.first_ready = self.first_ready or time.time()
            cores = f", cores {','.join(map(str, rep.cores))}" if rep.cores else ""
            self.emit("device", f"{slot.device.label} ready: holdout matches the head's "
                                f"({rep.image_count} images){cores}", slot=slot)
            self._note_shared_cores(slot)
            if rep.holds_ground_truth and slot.device.node_id != self.head_node:
                self.emit("note", f"{slot.device.label}: {rep.holdout} holds ground_truth.csv; "
                                  "the ground truth should stay on the head", slot=slot)

    def _note_shared_cores(self, slot: _Slot) -> None:
        """A note when ``slot``'s cores overlap another ready device's on its node (more
        ``cpu`` devices than cores): their runs' times are not comparable."""
        mine = set(slot.report.cores or ())
        for other in self.slots:
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
        same = [s for s in self.slots if s.device.node_id == slot.device.node_id
                and s.state in ("checking", "idle", "busy")] or [slot]
        for s in same:
            s.state = "refused"
            self.ray.kill(s.actor)
        names = ", ".join(s.device.label.split("@")[0] for s in same)
        where = slot.device.label.split("@", 1)[-1]
        self.emit("refused", f"node {where} ({names}) refused: {why}", slot=slot)

    # jobs

    def loop(self) -> None:
        """Run until every job is done, failed or stranded (no device of its kind left)."""
        while True:
            self._dispatch()
            if not any(j.status in ("queued", "running") for j in self.jobs):
                return
            refs = list(self.checks) + list(self.running)
            ready, _ = self.ray.wait(refs, num_returns=1, timeout=1.0)
            for ref in ready:
                if ref in self.checks:
                    self._on_check(ref)
                else:
                    self._on_result(ref)
            self._stop_hung()

    def _stop_hung(self) -> None:
        """A run ends within about a second of its wall budget (``lpirc run``'s own rule); one
        silent for ``hang_margin_s`` beyond it has a stuck device: its actor is ended, and the
        job is retried like any lost device's."""
        limit = self.cfg.time_limit_s + self.cfg.hang_margin_s
        for slot, job, t0 in self.running.values():
            if slot.state == "busy" and time.time() - t0 > limit:
                slot.state = "hung"
                self.ray.kill(slot.actor)
                self.emit("note", f"{slot.device.label}: no result from {job.name} within "
                                  f"{limit:.0f} s (budget + {self.cfg.hang_margin_s:.0f} s); "
                                  "device ended",
                          job, slot)

    def _dispatch(self) -> None:
        for slot in self.slots:
            if slot.state == "idle":
                job = next((j for j in self.jobs
                            if j.status == "queued" and j.kind == slot.device.kind), None)
                if job is not None:
                    self._start(job, slot)
        for job in self.jobs:
            if job.status == "queued" and not any(
                    s.device.kind == job.kind and s.state in ("checking", "idle", "busy")
                    for s in self.slots):
                gone = [s.state for s in self.slots if s.device.kind == job.kind]
                why = (f"no {job.kind} device in the cluster (resource "
                       f"{RESOURCE_PREFIX}{job.kind}_<id>)" if not gone else
                       f"no {job.kind} device left ({gone.count('refused')} refused, "
                       f"{gone.count('lost')} lost)")
                self._fail(job, why)

    def _start(self, job: JobState, slot: _Slot) -> None:
        model = Path(job.model)
        side = model.with_suffix(".json")
        attempt = len(job.attempts) + 1
        req = JobRequest(job.name, attempt, model.name,
                         side.read_bytes() if side.is_file() else None,
                         str(self.cfg.holdout.resolve()), self._work_dir(slot.device),
                         self.cfg.run_args(job.kind))
        ref = slot.actor.run_job.remote(req, model.read_bytes())
        job.attempts.append({"attempt": attempt, "device": slot.device.label,
                             "node": slot.device.node_ip, "started_utc": _now_utc(),
                             "outcome": "running"})
        job.status, job.device, slot.state = "running", slot.device.label, "busy"
        self.running[ref] = (slot, job, time.time())
        self.emit("running", f"{job.name} on {slot.device.label} (attempt {attempt})", job,
                  slot, slot.report.pid if slot.report else None)
        self.save()

    def _on_result(self, ref: Any) -> None:
        slot, job, t0 = self.running.pop(ref)
        rec = job.attempts[-1]
        rec["ended_utc"] = _now_utc()
        try:
            res: AttemptResult = self.ray.get(ref)
        except self.ray.exceptions.RayError as e:
            why = {"hung": "stuck past its budget", "refused": "its node was refused"}.get(
                slot.state, "lost mid-run")
            slot.state = "refused" if slot.state == "refused" else "lost"
            with contextlib.suppress(Exception):  # "unavailable" may be a blip: free it for sure
                self.ray.kill(slot.actor)
            work = slot.report.work_dir if slot.report else "?"
            rec.update(outcome="device_lost", reason=f"{why}: {_first_line(e)}",
                       run_dir=str(Path(work) / job.name / f"attempt-{rec['attempt']}" / "run"))
            self.emit("lost", f"{slot.device.label}: device {why} during {job.name} "
                              f"({_first_line(e)})", job, slot)
            self._retry_or_fail(job, f"device {slot.device.label} {why}")
            return
        slot.state = "idle" if slot.state == "busy" else slot.state
        rec.update(exit_code=res.exit_code, run_dir=res.run_dir, run_s=round(res.run_s, 3),
                   head_s=round(time.time() - t0, 3),
                   overhead_s=round(time.time() - t0 - res.run_s, 3))
        self._accept(job, slot, res, rec)

    def _accept(self, job: JobState, slot: _Slot, res: AttemptResult, rec: dict) -> None:
        """Sort a finished attempt: stopped from outside (retry), not this holdout or not this
        model (retry elsewhere), the submission's own failure (recorded), or a result to score."""
        if res.exit_code < 0 or res.exit_code in _DEVICE_FAULT_EXITS:
            rec.update(outcome="stopped", reason=res.reason)
            self._retry_or_fail(job, f"lpirc run on {slot.device.label} was stopped: {res.reason}")
            return
        manifest = _parse_json(res.manifest)
        if manifest is not None:
            sha = (manifest.get("holdout") or {}).get("files_sha256")
            if sha != self.head_sha:
                rec.update(outcome="holdout_mismatch", reason=f"holdout sha256 {sha}")
                self.refuse_node(slot, f"its run listed a holdout with sha256 {str(sha)[:12]}, "
                                       f"not the head's {self.head_sha[:12]}")
                self._retry_or_fail(job, f"{slot.device.label} ran another holdout")
                return
            if (manifest.get("model") or {}).get("sha256") != job.sha256:
                rec.update(outcome="model_mismatch", reason="the model that ran is not the job's")
                self._retry_or_fail(job, f"the model {slot.device.label} ran is not {job.name}'s")
                return
        answered = (manifest or {}).get("images_answered") or 0
        if res.results is None or manifest is None or (res.exit_code != EXIT_OK and not answered):
            why = res.reason or f"lpirc run exited with code {res.exit_code}, no result log"
            rec.update(outcome="failed", reason=why)
            self._fail(job, why)
            return
        self._score(job, slot, res, rec)

    def _score(self, job: JobState, slot: _Slot, res: AttemptResult, rec: dict) -> None:
        """Write the run folder on the head, score it with the head's ground truth, add it to
        the standings. The only place a result is scored."""
        import scoring

        t0 = time.perf_counter()
        run_dir = self.cfg.out / "runs" / job.name
        run_dir.mkdir(parents=True, exist_ok=True)
        (run_dir / RESULTS).write_bytes(res.results or b"")
        (run_dir / MANIFEST).write_bytes(res.manifest or b"")
        try:
            score = scoring.score_path(run_dir, ground_truth=self.cfg.ground_truth,
                                       rules=self.cfg.rules)
        except scoring.ScoringError as e:
            rec.update(outcome="failed", reason=f"scoring: {e}")
            self._fail(job, f"scoring: {e}")
            return
        write_json(run_dir / SCORE, score)
        job.score = {k: score.get(k) for k in ("score", "top1", "top5", "images_answered",
                                               "images_total", "wall_time_s", "energy_wh",
                                               "energy_source")}
        job.score |= {k: score[k] for k in scoring.RULE_PARAMS if k in score}  # what it means
        job.status, job.reason = "done", res.reason  # a run stopped part-way keeps its reason
        rec.update(outcome="done")
        job.standings = add_to_standings(self.cfg.db_path, run_dir, self.cfg.ground_truth,
                                         self.cfg.rules, job.name, score)
        rec["score_s"] = round(time.perf_counter() - t0, 3)  # write, score, standings
        top1 = "n/a" if score.get("top1") is None else f"{100 * score['top1']:.2f} %"
        self.emit("done", f"{job.name} on {slot.device.label}: score {_num(score.get('score'))} "
                          f"({self.cfg.rules}), top-1 {top1} (measured); lpirc run process "
                          f"{res.run_s:.2f} s, fleet overhead {rec['overhead_s']:.2f} s "
                          f"(measured on the head)", job, slot)
        if job.standings.startswith("not recorded"):
            self.emit("note", f"{job.name}: standings {job.standings}", job, slot)
        self.save()

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
        for slot, job, _ in self.running.values():
            job.attempts[-1].update(outcome="cancelled", ended_utc=_now_utc())
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
        """Free every device this fleet still holds (its actor ends, its run child with it)."""
        for s in self.slots:
            if s.state in ("checking", "idle", "busy"):
                s.state = "released"
                with contextlib.suppress(Exception):
                    self.ray.kill(s.actor)


def _num(v: Any) -> str:
    return f"{v:.4g}" if isinstance(v, (int, float)) else "n/a"


def _parse_json(data: bytes | None) -> dict | None:
    if data is None:
        return None
    try:
        obj = json.loads(data)
    except ValueError:
        return None
    return obj if isinstance(obj, dict) else None


def add_to_standings(db: Path, run_dir: Path, ground_truth: Path, rules: str,
                     submission: str, score: dict | None = None) -> str:
    """Add one scored run folder to the standings database of ``lpirc leaderboard`` (source
    ``fleet``, its uid the run's: the same run is never added twice). Returns what happened,
    for ``fleet.json``: ``added``, ``already in the standings``, or why it was not recorded
    (the result stays scored in its run folder; ``lpirc leaderboard add`` can add it later).
    ``score``: the run's score object just computed by the head, so it is not scored twice."""
    try:
        conn = leaderboard.open_db(db)
    except LpircError as e:
        return f"not recorded: {e}"
    try:
        entry = leaderboard.entry_from_run(run_dir, ground_truth, rules, submission=submission,
                                           source="fleet", score=score)
        added = leaderboard.add_entry(conn, entry)
    except (LpircError, ValueError, OSError) as e:
        return f"not recorded: {_first_line(e)}"
    finally:
        conn.close()
    return f"added to {db} ({entry.uid[:8]})" if added else (
        f"already in {db} ({entry.uid[:8]}), not added twice")


# --- one fleet, end to end -------------------------------------------------------------------


def load_jobs(cfg: FleetConfig, subs: list[Submission], head_sha: str) -> list[JobState]:
    """The jobs of this fleet: one per submission, and what ``OUT/fleet.json`` of an earlier
    run into the same ``--out`` recorded. A job done there stays done (it is not run or scored
    again); one not given now is kept as recorded. Raises InputError when that earlier fleet
    used another holdout or rule set, or the same job name for another model."""
    jobs = [JobState.of(s) for s in subs]
    path = cfg.out / STATE
    if not path.is_file():
        return jobs
    old = _parse_json(_read(path))
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


# Ray puts the folder its driver starts in first on every worker's sys.path, on every node. A
# folder named lpirc there (the clone beside an editable install, an old copy) would shadow
# the installed package and no device would start; the checkout or site-packages there would
# put their modules before the standard library's. So the head starts Ray in a folder that
# holds nothing importable: <temp>/lpirc-fleet, where nodes keep their run folders (named
# "<fleet>-<hash>", never a module name).
_RAY_START_DIR = Path(tempfile.gettempdir()) / "lpirc-fleet"


@contextlib.contextmanager
def _in_ray_start_dir() -> Iterator[None]:
    """Chdir to :data:`_RAY_START_DIR` (made if missing) for the duration (to start Ray in)."""
    here = os.getcwd()
    _RAY_START_DIR.mkdir(parents=True, exist_ok=True)
    os.chdir(_RAY_START_DIR)
    try:
        yield
    finally:
        os.chdir(here)


@contextlib.contextmanager
def local_cluster(devices: int, num_cpus: int | None = None,
                  object_store_bytes: int = _OBJECT_STORE_BYTES) -> Iterator[None]:
    """A Ray instance on this machine offering ``devices`` simulated cpu devices
    (``lpirc_device_cpu_0`` ...), which divide the machine's cores between them. No dashboard;
    shut down on exit."""
    import logging

    ray = _import_ray()
    if num_cpus is None:
        num_cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (
            os.cpu_count() or 1)
    with _in_ray_start_dir():
        ray.init(address="local", num_cpus=num_cpus, include_dashboard=False,
                 resources={f"{RESOURCE_PREFIX}cpu_{i}": 1 for i in range(devices)},
                 object_store_memory=object_store_bytes, log_to_driver=False,
                 logging_level=logging.ERROR)
    try:
        yield
    finally:
        ray.shutdown()


@contextlib.contextmanager
def connect(address: str | None, devices: int = 2) -> Iterator[None]:
    """Ray for one fleet: the cluster at ``address`` (what ``ray start --head`` printed), or
    :func:`local_cluster` with ``devices`` simulated devices when None, or the caller's when
    Ray is already initialised. Raises FleetError (one line) when nothing answers there."""
    import logging

    ray = _import_ray()
    if ray.is_initialized():
        yield
        return
    if address is None:
        with local_cluster(devices):
            yield
        return
    _probe_address(address)
    try:
        with _in_ray_start_dir():
            ray.init(address=address, log_to_driver=False, logging_level=logging.ERROR)
    except Exception as e:  # ConnectionError, ValueError, RuntimeError, by Ray version
        hint = "" if os.environ.get("RAY_AUTH_MODE") else (
            "; a cluster with token authentication needs RAY_AUTH_MODE=token and its token here")
        raise FleetError(f"{address}: no Ray cluster reachable ({_first_line(e)}){hint}") from None
    try:
        yield
    finally:
        ray.shutdown()


def _probe_address(address: str, timeout_s: float = 5.0) -> None:
    """A TCP connection to ``host:port`` first: Ray itself waits minutes (and logs a line every
    few seconds) on an address where nothing listens. ``auto`` is left to Ray."""
    import socket

    hostport = address.split("://", 1)[-1]
    host, _, port = hostport.rpartition(":")
    if not host or not port.isdigit():
        if address == "auto":
            return
        raise FleetError(f"{address}: not a Ray address (expected HOST:PORT, as `ray start "
                         "--head` printed it)")
    try:
        socket.create_connection((host, int(port)), timeout=timeout_s).close()
    except OSError as e:
        raise FleetError(f"{address}: no Ray cluster reachable ({e.strerror or e})") from None


def cluster_devices() -> list[Device]:
    """The devices the connected Ray cluster offers (its alive nodes' lpirc_device_* resources)."""
    return devices_from_nodes(_import_ray().nodes())


def check_inputs(cfg: FleetConfig, subs: list[Submission]) -> None:
    """What the head must have before any device is asked: its holdout, a ground truth that
    parses, a known rule set, a fleet folder it can write (whose ``fleet.json``, if any, is this
    fleet's), a standings database. InputError (one line naming the file) otherwise."""
    import scoring

    from lpirc.holdout import open_holdout

    head = open_holdout(cfg.holdout, seed=cfg.seed)  # its one-line error
    if cfg.rules not in scoring.RULES:
        raise InputError(f"unknown rule set {cfg.rules!r} (known: {', '.join(scoring.RULES)})")
    if not Path(cfg.ground_truth).is_file():
        raise InputError(f"{cfg.ground_truth}: ground truth not found")
    try:
        scoring.read_ground_truth(cfg.ground_truth, cache=False)
    except scoring.ScoringError as e:
        raise InputError(str(e)) from None
    try:
        cfg.out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise InputError(f"{cfg.out}: cannot create the fleet folder ({e.strerror or e})") from None
    leaderboard.open_db(cfg.db_path).close()  # a file that is not a standings database: one line
    load_jobs(cfg, subs, head.files_sha256)


def run_fleet(subs: list[Submission], cfg: FleetConfig,
              on_event: Callable[[FleetEvent], None] | None = None) -> FleetOutcome:
    """Run every submission as a job on the connected Ray cluster's devices (see
    :func:`connect`); returns when every job is done, failed or, after Ctrl-C, cancelled.
    Writes ``OUT/fleet.json`` as it goes and ``OUT/runs/<job>/`` for each scored job.

    Raises InputError for the head's own inputs (holdout, ground truth, fleet folder) and
    FleetError when the cluster offers no lpirc device."""
    check_inputs(cfg, subs)
    fleet = Fleet(cfg, [], on_event)
    fleet.jobs = load_jobs(cfg, subs, fleet.head_sha)
    devices = cluster_devices()
    if not devices:
        raise FleetError("no lpirc device in the Ray cluster: a device node offers resources "
                         f"named {RESOURCE_PREFIX}<kind>_<id> (ray start --resources ...)")
    for j in fleet.jobs:
        if j.status == "queued":
            fleet.emit("queued", f"{j.name} (asks for a {j.kind} device)", j)
        elif j.status == "done" and j.name in {s.name for s in subs}:
            fleet.emit("note", f"{j.name}: done in an earlier run of this fleet; kept, not run "
                               "or scored again", j)
        if j.status == "done" and not (j.standings or "").startswith(("added", "already")):
            # an earlier run stopped between scoring and the database: the run's uid makes
            # this add safe to repeat
            j.standings = add_to_standings(cfg.db_path, cfg.out / "runs" / j.name,
                                           cfg.ground_truth, cfg.rules, j.name)
    interrupted = False
    try:
        if any(j.status == "queued" for j in fleet.jobs):  # else nothing to hold a device for
            fleet.start(devices)
        fleet.save()
        fleet.loop()
    except KeyboardInterrupt:
        interrupted = True
        fleet.cancel()
    finally:
        fleet.release()
        fleet.save()
    return FleetOutcome(fleet.jobs, fleet.device_table(), interrupted, fleet.ready_s,
                        round(time.time() - fleet.t0, 3), cfg.rules)


def format_standings(outcome: FleetOutcome) -> str:
    """The final table: done jobs ranked by score (``scoring.ranks``: equal scores share a
    rank), then the jobs that failed or were cancelled, with their one-line reasons."""
    import scoring

    done = [j for j in outcome.jobs if j.status == "done"]
    rk = scoring.ranks([j.score or {} for j in done])
    order = sorted(range(len(done)), key=lambda i: (rk[i] is None, rk[i] or 0))
    width = max([len(j.name) for j in outcome.jobs] + [10])
    lines = [f"Standings ({outcome.rules}; scored on the head from the result logs the devices "
             "sent back)",
             f"  rank  {'submission':<{width}}  {'score':>10}  {'top-1':>8}  {'wall s':>7}  "
             "attempts  device"]
    for i in order:
        j, s = done[i], done[i].score or {}
        top1 = "n/a" if s.get("top1") is None else f"{100 * s['top1']:.2f}%"
        wall = "n/a" if s.get("wall_time_s") is None else f"{s['wall_time_s']:.2f}"
        lines.append(f"  {rk[i] or '-':>4}  {j.name:<{width}}  {_num(s.get('score')):>10}  "
                     f"{top1:>8}  {wall:>7}  {len(j.attempts):>8}  {j.device}")
    for j in outcome.jobs:
        if j.status != "done":
            lines.append(f"  {j.status:<9} {j.name:<{width}}  {j.reason}")
    st = [j.status for j in outcome.jobs]
    lines.append(f"jobs            {len(st)}: {st.count('done')} done, {st.count('failed')} "
                 f"failed, {st.count('cancelled')} cancelled")
    lines.append("wall s          measured by lpirc run on the device; top-1 measured")
    rule = scoring.RULES.get(outcome.rules)
    if done and rule is not None:  # the score's formula, and whether its energy was measured
        sources = sorted({str((j.score or {}).get("energy_source") or "none") for j in done})
        lines.append(f"score           {rule.describe(done[0].score)}; energy "
                     f"{' / '.join(sources)} (lpirc run's energy source on the device)")
    return "\n".join(lines)


# --- command line: `lpirc fleet ...` (added to lpirc.cli) -------------------------------------


def _cli_errors(fn):
    """lpirc.cli.friendly_errors, looked up when the command runs (lpirc.cli imports this)."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        from lpirc.cli import friendly_errors

        return friendly_errors(fn)(*args, **kwargs)

    return wrapper


def print_event(ev: FleetEvent) -> None:
    """One progress line on stderr: what happened, then the jobs queued/running/done/failed."""
    q, r, d, f = ev.counts
    click.echo(f"{ev.what:<9} {ev.message}   [{q} queued, {r} running, {d} done, {f} failed]",
               err=True)


@click.group("fleet")
def fleet_group() -> None:
    """Evaluate many submissions across many devices, on Ray (needs the fleet extra)."""


_ADDRESS_HELP = ("Ray cluster address (what `ray start --head` printed, e.g. 10.0.0.1:6379). "
                 "Default: a local Ray instance with --devices simulated devices.")


@fleet_group.command("run")
@click.argument("submissions", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option("--holdout", required=True, type=click.Path(path_type=Path), help="Holdout folder on the head; device nodes use the same path unless they set $LPIRC_FLEET_HOLDOUT.")
@click.option("--ground-truth", type=click.Path(path_type=Path), help="CSV filename,label; stays on the head. Default: HOLDOUT/ground_truth.csv.")
@click.option("--out", required=True, type=click.Path(path_type=Path), help="Fleet folder: fleet.json, runs/<job>/, attempts/ (re-using it skips the jobs already done).")
@click.option("--address", help=_ADDRESS_HELP)
@click.option("--devices", type=click.IntRange(min=1), default=2, show_default=True, help="Simulated cpu devices of the local instance (no --address); the cores are divided between them.")
@click.option("--kind", type=click.Choice(["auto", *KINDS]), default="auto", show_default=True, help="Device kind every job asks for; auto: edgetpu for *_edgetpu.tflite, else cpu.")
@click.option("--rules", default="lpirc-onsite", show_default=True, help="Rule set the head scores with (see `lpirc rules`).")
@click.option("--time-limit-s", type=click.FloatRange(min=0.1), default=600.0, show_default=True, help="Each run's wall-clock budget in seconds.")
@click.option("--clock", type=click.Choice(["wall", "inference"]), default="wall", show_default=True, help="Budget clock of each run (see lpirc run).")
@click.option("--ms-per-image", type=click.FloatRange(min=0.001), default=30.0, show_default=True, help="Inference budget per image in ms, for --clock inference.")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of the image order (the holdout check lists the holdout in this order).")
@click.option("--max-attempts", type=click.IntRange(min=1), default=3, show_default=True, help="Tries per job when its device is lost mid-run.")
@click.option("--db", type=click.Path(dir_okay=False, path_type=Path), envvar=leaderboard.DB_ENV, help=f"Standings database the results are added to (lpirc leaderboard's). Default: ${leaderboard.DB_ENV}, else {leaderboard.DEFAULT_DB}.")
@click.option("--quiet", is_flag=True, help="No progress lines.")
@_cli_errors
def fleet_run(submissions, holdout, ground_truth, out, address, devices, kind, rules,
              time_limit_s, clock, ms_per_image, seed, max_attempts, db, quiet) -> None:
    """Run every SUBMISSION (a .tflite with its optional sidecar, or a folder of them) as one
    job on one device of a Ray cluster, score the results on the head, add them to the
    standings database (`lpirc leaderboard show`), print this fleet's standings.

    Exit status: 0 when every job is done, 1 when one failed (its reason is in the table and
    OUT/fleet.json), Ray is missing, or no cluster or device answers; 5 for a bad submission
    path, holdout, ground truth, rule set, --db or --out (before Ray starts); 130 after Ctrl-C
    (finished jobs stay scored).
    """
    if ground_truth is None:
        ground_truth = Path(holdout) / "ground_truth.csv"
    cfg = FleetConfig(Path(holdout), Path(ground_truth), Path(out), rules, time_limit_s, clock,
                      ms_per_image, seed, max_attempts, db)
    subs = find_submissions(list(submissions), kind)
    check_inputs(cfg, subs)
    t0 = time.time()
    with connect(address, devices):
        connected = time.time() - t0
        if not quiet:
            click.echo(f"ray       connected in {connected:.1f} s (measured): "
                       f"{address or f'local instance, {devices} simulated devices'}", err=True)
        # after ray.init, which sets its own SIGTERM handler (sys.exit): a scheduler's SIGTERM
        # ends the fleet as Ctrl-C does, also when started as a background job (SIGINT ignored)
        with preflight.stop_signals():
            outcome = run_fleet(subs, cfg, None if quiet else print_event)
    click.echo(format_standings(outcome))
    ready = ("no device became ready" if outcome.startup_s is None else
             f"first device ready after {outcome.startup_s:.1f} s")
    click.echo(f"fleet           {cfg.out / STATE}; wall time {outcome.wall_s:.1f} s after Ray "
               f"connected, {ready} (measured)")
    if outcome.interrupted:
        click.echo("lpirc: interrupted", err=True)
    sys.exit(outcome.exit_code)


@fleet_group.command("devices")
@click.option("--address", help=_ADDRESS_HELP)
@click.option("--devices", type=click.IntRange(min=1), default=2, show_default=True, help="Simulated devices of the local instance (no --address).")
@_cli_errors
def fleet_devices(address, devices) -> None:
    """List the devices a Ray cluster offers (resources lpirc_device_<kind>_<id>), one a line.

    Exit status: 0 when the cluster offers a device; 1 when it offers none, no cluster answers
    at --address, or Ray is missing; 2 usage.
    """
    with connect(address, devices):
        found = cluster_devices()
    for d in found:
        click.echo(f"{d.label:<32} {d.resource:<32} node {d.node_id[:12]}")
    click.echo(f"{len(found)} device(s)")
    if not found:
        raise FleetError("no lpirc device in the Ray cluster: a device node offers resources "
                         f"named {RESOURCE_PREFIX}<kind>_<id> (ray start --resources ...)")
