"""The device pool the scheduler runs jobs on: a small protocol (start, submit, wait, kill,
close) and :class:`LocalPool`, ``lpirc run`` child processes on this machine, one device each.

A **job** is one attempt of one submission: ``lpirc run --model M --holdout H --out RUN`` on a
device nothing else uses meanwhile. The pool reports each job's end as an :class:`Outcome`;
it never scores (the service keeps the ground truth and scores what comes back).

:class:`LocalPool`'s devices divide this machine's cores between them (lpirc.fleet's
``share_cores``: every device the same number). Each run is a child started through
lpirc.fleet's launcher: it dies with the service (Linux ``PR_SET_PDEATHSIG``), so a ``kill -9``
of the service leaves no run behind, and the restarted service runs the job again.
"""

from __future__ import annotations

import os
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from lpirc.errors import EXIT_INTERRUPTED
from lpirc.fleet import _child_command, share_cores


@dataclass(frozen=True)
class Job:
    """One attempt. ``key`` is unique per attempt (``<submission>-<attempt>``); ``model`` is
    the .tflite with its sidecar ``X.json`` beside it if any; ``out`` the run folder to make
    (its parent gets ``stderr.txt``); ``budget_s``: seconds after which a run that has not ended
    is stuck and is ended (outcome ``timed_out``)."""

    key: str
    model: Path
    holdout: Path
    out: Path
    run_args: tuple[str, ...]
    budget_s: float


@dataclass(frozen=True)
class Outcome:
    """How a job ended on its device. ``exit_code``: ``lpirc run``'s (None when it has none:
    device lost, stopped from outside, timed out); ``reason``: its one line; ``lost``: the
    device (not the submission) failed, so the job should run again elsewhere; ``run_s``: wall
    seconds of the run process (measured by the pool); ``log``: its stderr, if kept."""

    key: str
    device: str
    exit_code: int | None
    reason: str | None
    lost: bool = False
    timed_out: bool = False
    run_s: float = 0.0
    log: Path | None = None


class Executor(Protocol):
    """What the scheduler needs of a device pool."""

    def start(self) -> list[str]:
        """Make the devices ready; their labels. Raises LpircError when none can start."""

    def idle(self) -> int:
        """Devices free for a job now."""

    def submit(self, job: Job) -> str:
        """Start ``job`` on a free device; the device's label. RuntimeError when none is free."""

    def wait(self, timeout_s: float) -> list[Outcome]:
        """Jobs that ended, waiting up to ``timeout_s`` for the first one."""

    def kill(self, key: str) -> None:
        """End a job (its outcome then reports it lost)."""

    def devices(self) -> list[dict]:
        """Each device: ``{"device", "state", "job", "since"}`` (state idle, busy or lost)."""

    def close(self) -> None:
        """End every job and release the devices."""


@dataclass
class _Running:
    job: Job
    proc: subprocess.Popen
    t0: float
    killed: str | None = None  # why the pool ended it: "timeout" or "killed"


@dataclass
class _Device:
    label: str
    cores: list[int] | None
    running: _Running | None = None
    jobs_done: int = 0
    since: float = field(default_factory=time.time)


def _reason(stderr: bytes, code: int) -> str | None:
    """The run's one line: its last ``lpirc: error:`` line, else its last line."""
    if code == 0:
        return None
    lines = [ln.strip() for ln in stderr.decode("utf-8", "replace").splitlines() if ln.strip()]
    errors = [ln for ln in lines if ln.startswith("lpirc: error: ")]
    if errors:
        return errors[-1][len("lpirc: error: "):]
    if code < 0:
        return f"lpirc run was killed by signal {-code}"
    return lines[-1] if lines else f"lpirc run exited with code {code}"


class LocalPool:
    """``devices`` simulated cpu devices on this machine, each running one ``lpirc run`` at a
    time on its share of the cores (``--workers`` = its core count)."""

    def __init__(self, devices: int = 2) -> None:
        cores = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None
        self._devices = [_Device(f"cpu_{i}@local",
                                 share_cores(cores, (i, devices)) if cores else None)
                         for i in range(devices)]

    def start(self) -> list[str]:
        return [d.label for d in self._devices]

    def idle(self) -> int:
        return sum(d.running is None for d in self._devices)

    def submit(self, job: Job) -> str:
        dev = next((d for d in self._devices if d.running is None), None)
        if dev is None:
            raise RuntimeError("no free device")
        job.out.parent.mkdir(parents=True, exist_ok=True)
        args = ["run", "--model", str(job.model), "--holdout", str(job.holdout), "--out",
                str(job.out), "--quiet", *job.run_args]
        if dev.cores is not None:
            args += ["--workers", str(len(dev.cores))]
        log = open(job.out.parent / "stderr.txt", "wb")
        try:  # its own session: the service's terminal signals are the service's to handle
            proc = subprocess.Popen(_child_command(args, dev.cores), stdin=subprocess.DEVNULL,
                                    stdout=subprocess.DEVNULL, stderr=log,
                                    start_new_session=True, cwd=job.out.parent)
        finally:
            log.close()
        dev.running, dev.since = _Running(job, proc, time.time()), time.time()
        return dev.label

    def wait(self, timeout_s: float) -> list[Outcome]:
        deadline = time.monotonic() + timeout_s
        while True:
            done = self._collect()
            if done or time.monotonic() >= deadline:
                return done
            time.sleep(min(0.1, max(0.0, deadline - time.monotonic())))

    def _collect(self) -> list[Outcome]:
        out = []
        now = time.time()
        for dev in self._devices:
            r = dev.running
            if r is None:
                continue
            if r.proc.poll() is None:
                if now - r.t0 > r.job.budget_s and r.killed is None:
                    r.killed = "timeout"
                    r.proc.kill()
                continue
            out.append(self._outcome(dev, r, now))
            dev.running, dev.since, dev.jobs_done = None, now, dev.jobs_done + 1
        return out

    def _outcome(self, dev: _Device, r: _Running, now: float) -> Outcome:
        log = r.job.out.parent / "stderr.txt"
        try:
            stderr = log.read_bytes()
        except OSError:
            stderr = b""
        code = r.proc.returncode
        if r.killed == "timeout":
            return Outcome(r.job.key, dev.label, None, f"no result within {r.job.budget_s:g} s "
                           "(the time limit plus the margin): ended", timed_out=True,
                           run_s=now - r.t0, log=log)
        lost = r.killed == "killed" or code < 0 or code == EXIT_INTERRUPTED
        return Outcome(r.job.key, dev.label, None if lost else code,
                       _reason(stderr, code) if not r.killed else "ended by the service",
                       lost=lost, run_s=now - r.t0, log=log)

    def kill(self, key: str) -> None:
        for dev in self._devices:
            if dev.running is not None and dev.running.job.key == key:
                dev.running.killed = "killed"
                dev.running.proc.kill()

    def devices(self) -> list[dict]:
        return [{"device": d.label, "state": "busy" if d.running else "idle",
                 "job": d.running.job.key if d.running else None,
                 "since": d.since, "jobs_done": d.jobs_done,
                 "cores": d.cores} for d in self._devices]

    def close(self) -> None:
        for dev in self._devices:
            if dev.running is not None:
                dev.running.killed = "killed"
                dev.running.proc.kill()
                dev.running.proc.wait()
                dev.running = None
