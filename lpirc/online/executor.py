"""The devices the scheduler runs jobs on: a small protocol (:class:`Executor`: start, idle,
submit, wait, kill, devices, close) over the fleet's device pools (:mod:`lpirc.fleet.pool`):
its :class:`~lpirc.fleet.pool.LocalPool` (``--executor local``: ``lpirc run`` children of the
service, one device each, the cores divided between them) or its
:class:`~lpirc.fleet.ray_pool.RayPool` (``--executor ray``: a local Ray instance with
``--devices K`` simulated devices, or the cluster at ``--address``).

A **job** is one attempt of one submission: the fleet's :class:`~lpirc.fleet.device.DeviceWorker`
writes the model (and its sidecar) into ``WORK/<name>/attempt-<n>/``, runs ``lpirc run`` there
as a child that dies with the worker (Linux ``PR_SET_PDEATHSIG``: a ``kill -9`` of the service
leaves no run behind), and sends back the result log and manifest. On the service's own machine
``WORK`` is the service's run folder; from another node the log and manifest are written there
by the executor. The executor never scores: the service keeps the ground truth.

Every device first lists its holdout (the fleet's check, on the development holdout); a device
whose listing differs from the service's is refused. A job that has not ended ``budget_s`` after
it started is ended, and its device (the pool does not use a killed device again) is started
afresh under a new label (``cpu_0@local#2``); so is a device lost mid-run.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, ContextManager, Protocol

from lpirc.errors import EXIT_INTERRUPTED, FleetError
from lpirc.fleet import (RAY_START_DIR, AttemptResult, CheckRequest, Device, DevicePool,
                         Finished, JobRequest, LocalPool, NodeReport, RayPool, cluster_devices,
                         connect, local_devices, no_device_error)
from lpirc.results import MANIFEST, RESULTS

CHECK_WAIT_S = 120.0  # how long start() waits for the devices' holdout checks


@dataclass(frozen=True)
class Job:
    """One attempt: ``name`` (the submission's id) and ``attempt`` name its folder
    ``work_dir/<name>/attempt-<attempt>/`` (the run in ``run/``, its stderr in ``stderr.txt``);
    ``model`` is the .tflite, ``sidecar`` its ``X.json`` if any; ``budget_s``: seconds after
    which a run that has not ended is stuck and is ended (outcome ``timed_out``)."""

    key: str
    name: str
    attempt: int
    model: Path
    sidecar: Path | None
    holdout: Path
    work_dir: Path
    run_args: tuple[str, ...]
    budget_s: float

    @property
    def folder(self) -> Path:
        return self.work_dir / self.name / f"attempt-{self.attempt}"

    @property
    def out(self) -> Path:
        """The run folder on the service's machine."""
        return self.folder / "run"


@dataclass(frozen=True)
class Outcome:
    """How a job ended. ``exit_code``: ``lpirc run``'s (None when it has none: device lost,
    stopped from outside, timed out); ``reason``: its one line; ``lost``: the device (not the
    submission) failed, so the job should run again; ``run_s``: wall seconds of ``lpirc run``
    (measured on the device)."""

    key: str
    device: str
    exit_code: int | None
    reason: str | None
    lost: bool = False
    timed_out: bool = False
    run_s: float = 0.0


class Executor(Protocol):
    """What the scheduler needs of the devices."""

    def start(self) -> list[str]:
        """Make the devices ready; their labels. LpircError when none passes its check."""

    def idle(self) -> int:
        """Devices free for a job now."""

    def submit(self, job: Job) -> str:
        """Start ``job`` on a free device; the device's label. RuntimeError when none is free."""

    def wait(self, timeout_s: float) -> list[Outcome]:
        """Jobs that ended, waiting up to ``timeout_s`` for the first one."""

    def kill(self, key: str) -> None:
        """End a job (its outcome then reports it lost)."""

    def devices(self) -> list[dict]:
        """Each device: ``{"device", "state", "job", "since", "jobs_done"}``."""

    def close(self) -> None:
        """End every job and release the devices."""


@dataclass
class _Slot:
    device: Device
    state: str = "checking"  # checking, idle, busy, refused, lost
    job: Job | None = None
    t0: float = 0.0
    since: float = dataclasses.field(default_factory=time.time)
    killed: str | None = None  # "timeout" | "killed": why the executor ended its job
    jobs_done: int = 0
    why: str | None = None  # refused or lost: the reason


class FleetExecutor:
    """An :class:`Executor` over a fleet device pool. ``open_pool`` is called by
    :meth:`start` (inside ``context``, e.g. the Ray connection) and gives the pool and its
    devices; ``holdout`` is what each device's check must hold: ``holdout_sha256`` is its
    :func:`lpirc.holdout.content_sha256` (names and bytes), so a node whose images carry the
    service's names but other pictures is refused."""

    def __init__(self, open_pool: Callable[[], tuple[DevicePool, list[Device]]],
                 holdout: Path, holdout_sha256: str, work_dir: Path,
                 context: ContextManager | None = None) -> None:
        self._open, self.holdout, self.sha = open_pool, Path(holdout), holdout_sha256
        self.work_dir = Path(work_dir).absolute()
        self._context = context
        self._stack = contextlib.ExitStack()
        self.pool: DevicePool | None = None
        self.slots: dict[str, _Slot] = {}
        self._ended: list[Outcome] = []

    # --- devices -------------------------------------------------------------------------------

    def start(self) -> list[str]:
        if self._context is not None:
            self._stack.enter_context(self._context)
        self.pool, devices = self._open()
        if not devices:
            raise no_device_error()
        for d in devices:
            self._start_device(d)
        deadline = time.monotonic() + CHECK_WAIT_S
        while (any(s.state == "checking" for s in self.slots.values())
               and time.monotonic() < deadline):
            for f in self.pool.wait(0.5):
                self._on_finished(f)
        ready = [label for label, s in self.slots.items() if s.state == "idle"]
        if not ready:
            why = "; ".join(f"{label}: {s.why or s.state}" for label, s in self.slots.items())
            raise FleetError(f"no device passed its holdout check ({why})")
        return ready

    def _start_device(self, device: Device) -> None:
        self.slots[device.label] = _Slot(device)
        self.pool.start(device, CheckRequest(str(self.holdout), 0, self._node_dir(device)))

    def _node_dir(self, device: Device) -> str:
        """Where a device keeps its run folders: the service's own on its machine, a temp
        folder on another node (unless it sets $LPIRC_FLEET_WORK_DIR)."""
        if device.node_id == self.pool.head_node:
            return str(self.work_dir)
        tag = hashlib.sha256(str(self.work_dir).encode()).hexdigest()[:8]
        return str(RAY_START_DIR / f"online-{tag}")

    def _respawn(self, slot: _Slot) -> None:
        """A fresh worker for a device the pool ended (a stuck run, a lost worker)."""
        base, _, n = slot.device.label.partition("#")
        label = f"{base}#{int(n or 1) + 1}"
        self._start_device(dataclasses.replace(slot.device, label=label))

    def idle(self) -> int:
        return sum(s.state == "idle" for s in self.slots.values())

    def devices(self) -> list[dict]:
        return [{"device": label, "state": s.state, "job": s.job.key if s.job else None,
                 "since": s.since, "jobs_done": s.jobs_done, "note": s.why}
                for label, s in self.slots.items() if s.state != "replaced"]

    # --- jobs ----------------------------------------------------------------------------------

    def submit(self, job: Job) -> str:
        slot = next((s for s in self.slots.values() if s.state == "idle"), None)
        if slot is None:
            raise RuntimeError("no free device")
        req = JobRequest(job.name, job.attempt, job.model.name,
                         job.sidecar.read_bytes() if job.sidecar else None, str(job.holdout),
                         self._node_dir(slot.device), job.run_args)
        self.pool.submit(slot.device.label, req, job.model.read_bytes())
        slot.state, slot.job, slot.t0, slot.since, slot.killed = "busy", job, time.time(), \
            time.time(), None
        return slot.device.label

    def wait(self, timeout_s: float) -> list[Outcome]:
        self._stop_hung()
        out, self._ended = self._ended, []
        for f in self.pool.wait(0.0 if out else timeout_s):
            o = self._on_finished(f)
            if o is not None:
                out.append(o)
        return out

    def _stop_hung(self) -> None:
        for label, s in self.slots.items():
            if s.state == "busy" and s.killed is None and time.time() - s.t0 > s.job.budget_s:
                s.killed = "timeout"
                self.pool.kill(label)

    def kill(self, key: str) -> None:
        for label, s in self.slots.items():
            if s.state == "busy" and s.job.key == key and s.killed is None:
                s.killed = "killed"
                self.pool.kill(label)

    def _on_finished(self, f: Finished) -> Outcome | None:
        slot = self.slots.get(f.device)
        if slot is None:
            return None
        if f.task == "check":
            self._on_check(slot, f)
            return None
        job, slot.job, slot.since = slot.job, None, time.time()
        if job is None:
            return None
        slot.jobs_done += 1
        if f.lost is not None or slot.killed:
            return self._on_lost(slot, job, f.lost or "ended")
        slot.state = "idle"
        return self._outcome(slot, job, f.value)

    def _on_check(self, slot: _Slot, f: Finished) -> None:
        rep: NodeReport | None = f.value
        if f.lost is not None:
            slot.state, slot.why = "lost", f.start_failure or f.lost
        elif rep.error:
            slot.state, slot.why = "refused", f"holdout {rep.holdout}: {rep.error}"
        elif rep.content_sha256 != self.sha:
            slot.state, slot.why = "refused", (
                f"holdout {rep.holdout} differs from the service's (sha256 of its names and "
                f"bytes {str(rep.content_sha256)[:12]}, {rep.image_count} images)")
        else:
            slot.state, slot.why = "idle", None
        if slot.state != "idle" and self.pool is not None:
            self.pool.kill(slot.device.label)

    def _on_lost(self, slot: _Slot, job: Job, why: str) -> Outcome:
        timed_out = slot.killed == "timeout"
        slot.state = "replaced"
        self._respawn(slot)
        if timed_out:
            return Outcome(job.key, slot.device.label, None, f"no result within "
                           f"{job.budget_s:g} s (the time limit plus the margin): ended",
                           timed_out=True, run_s=time.time() - slot.t0)
        return Outcome(job.key, slot.device.label, None, f"device lost: {why}", lost=True,
                       run_s=time.time() - slot.t0)

    def _outcome(self, slot: _Slot, job: Job, res: AttemptResult) -> Outcome:
        """The result on the service's machine: the log and manifest written into the job's
        run folder when the device kept them elsewhere."""
        if Path(res.run_dir).absolute() != job.out.absolute():
            job.out.mkdir(parents=True, exist_ok=True)
            for name, data in ((RESULTS, res.results), (MANIFEST, res.manifest)):
                if data is not None:
                    (job.out / name).write_bytes(data)
            (job.folder / "stderr.txt").write_text(
                f"(lpirc run ran on {slot.device.label}, its run folder {res.run_dir} stays "
                f"there; its one-line reason: {res.reason or 'none, exit 0'})\n")
        lost = res.exit_code < 0 or res.exit_code == EXIT_INTERRUPTED
        return Outcome(job.key, slot.device.label, None if lost else res.exit_code, res.reason,
                       lost=lost, run_s=res.run_s)

    def close(self) -> None:
        if self.pool is not None:
            for label, s in self.slots.items():
                if s.state in ("checking", "idle", "busy"):
                    s.state = "released"
                    with contextlib.suppress(Exception):
                        self.pool.kill(label)
        self._stack.close()


def local_executor(devices: int, holdout: Path, holdout_sha256: str,
                   work_dir: Path) -> FleetExecutor:
    """``devices`` devices on this machine (the fleet's LocalPool)."""
    return FleetExecutor(lambda: (LocalPool(), local_devices(devices)), holdout,
                         holdout_sha256, work_dir)


def ray_executor(devices: int, address: str | None, holdout: Path, holdout_sha256: str,
                 work_dir: Path) -> FleetExecutor:
    """The devices of the Ray cluster at ``address``, or of a local Ray instance offering
    ``devices`` simulated cpu devices (the fleet's RayPool; the ``fleet`` extra)."""
    return FleetExecutor(lambda: (RayPool(), cluster_devices()), holdout, holdout_sha256,
                         work_dir, context=connect(address, devices))


