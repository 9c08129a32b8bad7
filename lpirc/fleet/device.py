"""The device side of a fleet, without Ray: what a device is, what crosses between the head and
a device (frozen messages), and :class:`DeviceWorker`, which holds one device and runs each job
as an ``lpirc run`` child process. A pool (:mod:`lpirc.fleet.pool`, :mod:`lpirc.fleet.ray_pool`)
decides where a worker lives: a thread of the head, or a Ray actor on the device's node.

Devices are named by resources ``lpirc_device_<kind>_<id>`` (:data:`RESOURCE_PREFIX`): ``kind``
is one of :data:`KINDS`, ``id`` tells a node's devices of one kind apart.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from lpirc import __version__
from lpirc.errors import LpircError
from lpirc.holdout import content_sha256, open_holdout
from lpirc.results import MANIFEST, RESULTS

RESOURCE_PREFIX = "lpirc_device_"
KINDS = ("cpu", "edgetpu", "gpu")
HOLDOUT_ENV = "LPIRC_FLEET_HOLDOUT"  # set on a device node whose holdout lives elsewhere
WORK_ENV = "LPIRC_FLEET_WORK_DIR"  # where a device node keeps its run folders
_RESOURCE_RE = re.compile(rf"^{RESOURCE_PREFIX}({'|'.join(KINDS)})_([A-Za-z0-9][A-Za-z0-9.:-]*)$")


@dataclass(frozen=True)
class Device:
    """One device of the cluster: a resource on one node. ``label`` is unique in the fleet
    (``kind_id@node``). ``share`` = (position, count) among the node's ``cpu`` devices, which
    divide the node's cores; None for other kinds."""

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


# --- what crosses the boundary between head and device ---------------------------------------


@dataclass(frozen=True)
class CheckRequest:
    """What a device needs for its holdout check: the head's holdout path (used where the node
    sets no ``$LPIRC_FLEET_HOLDOUT``), the seed of the image order, the suggested work folder."""

    holdout: str
    seed: int
    work_dir: str


@dataclass(frozen=True)
class NodeReport:
    """A device's answer to the holdout check, sent before it takes any job.
    ``files_sha256``: the sha256 of the node's ordered holdout file list (the manifest's);
    ``content_sha256``: :func:`lpirc.holdout.content_sha256`, names and bytes (what the head
    compares); both None with ``error`` when the holdout could not be read."""

    pid: int
    holdout: str
    files_sha256: str | None
    content_sha256: str | None
    image_count: int
    error: str | None  # why the holdout could not be listed
    holds_ground_truth: bool
    cores: tuple[int, ...] | None
    lpirc_version: str
    work_dir: str


@dataclass(frozen=True)
class JobRequest:
    """What a device needs to run one attempt (the model bytes travel as a separate argument).
    ``job`` is a folder name (:func:`lpirc.fleet.jobs.job_names` makes it safe)."""

    job: str
    attempt: int
    model_name: str
    sidecar: bytes | None
    holdout: str  # the head's path: used where the node sets no $LPIRC_FLEET_HOLDOUT
    work_dir: str  # the head's suggestion: used where the node sets no $LPIRC_FLEET_WORK_DIR
    run_args: tuple[str, ...]  # lpirc run options besides --model, --holdout, --out
    stuck_after_s: float | None = None  # the run is killed this long after its start


@dataclass(frozen=True)
class AttemptResult:
    """What a device sends back: the run's exit code and one-line reason, the result log and
    manifest (bytes, as written), where the run folder stays on the node, and times (seconds
    since the epoch on the node's clock; ``run_s`` is the wall time of ``lpirc run``).
    ``stuck``: the run gave no result ``JobRequest.stuck_after_s`` after its start and was
    killed by the device's worker."""

    exit_code: int
    reason: str | None
    results: bytes | None
    manifest: bytes | None
    run_dir: str
    run_s: float
    started: float
    ended: float
    stuck: bool = False


def node_work_dir(suggested: str) -> Path:
    """Where this node keeps its run folders: ``$LPIRC_FLEET_WORK_DIR``, else ``suggested``."""
    return Path(os.environ.get(WORK_ENV) or suggested).absolute()


# Runs `lpirc run` for a device, in a child of the device's worker. Set up here, not in a
# preexec_fn (unsafe in a process with threads, as every Ray worker is): death with the worker
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


def child_command(args: list[str], cores: list[int] | None) -> list[str]:
    """The command line that runs ``lpirc <args>`` through :data:`_CHILD`."""
    return [sys.executable, "-c", _CHILD, str(os.getpid()),
            ",".join(map(str, cores)) if cores is not None else "", *args]


def fresh_folder(base: Path) -> Path:
    """``base``, made; one left there by a fleet whose ``fleet.json`` was removed is moved
    aside (``.old-<time>``), never overwritten."""
    if base.exists():
        base.rename(base.with_name(f"{base.name}.old-{time.time():.0f}"))
    base.mkdir(parents=True)
    return base


class DeviceWorker:
    """Holds one device for the fleet and runs its jobs one at a time (a Ray actor on the
    device's node, or an object of the head in :class:`lpirc.fleet.pool.LocalPool`)."""

    def __init__(self, device: Device) -> None:
        self.device = device
        self.cores: list[int] | None = None
        self._proc: subprocess.Popen | None = None
        self._killed = threading.Event()
        if device.share is not None and hasattr(os, "sched_getaffinity"):
            self.cores = share_cores(sorted(os.sched_getaffinity(0)), device.share)

    def check(self, holdout: str, seed: int, work_dir: str) -> NodeReport:
        """List this node's holdout with the function that computes the manifest's sha256."""
        path = os.environ.get(HOLDOUT_ENV) or holdout
        sha, content, count, error = None, None, 0, None
        try:
            h = open_holdout(path, seed=seed)
            sha, content, count = h.files_sha256, content_sha256(h), len(h.files)
        except LpircError as e:
            error = str(e)
        return NodeReport(os.getpid(), str(path), sha, content, count, error,
                          Path(path, "ground_truth.csv").is_file(),
                          tuple(self.cores) if self.cores is not None else None, __version__,
                          str(node_work_dir(work_dir)))

    def run_job(self, req: JobRequest, model: bytes) -> AttemptResult:
        """Write the model (and sidecar) into a fresh attempt folder and run ``lpirc run`` on
        it as a child process; return what it left.
        A run still going ``req.stuck_after_s`` after its start is killed (``stuck``)."""
        base = fresh_folder(node_work_dir(req.work_dir) / req.job / f"attempt-{req.attempt}")
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
        with subprocess.Popen(child_command(args, self.cores), stdin=subprocess.DEVNULL,
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                              start_new_session=True, cwd=base) as proc:
            self._proc = proc
            if self._killed.is_set():
                proc.kill()
            stuck = False
            try:
                _, stderr = proc.communicate(timeout=req.stuck_after_s)
            except subprocess.TimeoutExpired:
                stuck = True
                proc.kill()  # SIGKILL ends a stopped (SIGSTOP) process too
                _, stderr = proc.communicate()
        t1 = time.time()
        (base / "stderr.txt").write_bytes(stderr)
        reason = (f"stuck: no result {req.stuck_after_s:g} s after its start; the device's "
                  "worker killed the run" if stuck else run_reason(stderr, proc.returncode))
        return AttemptResult(proc.returncode, reason, read_bytes(run_dir / RESULTS),
                             read_bytes(run_dir / MANIFEST), str(run_dir), t1 - t0, t0, t1,
                             stuck)

    def kill(self) -> None:
        """End the running ``lpirc run`` child, if any (a Ray actor's child dies with the actor
        instead). Safe from another thread."""
        self._killed.set()
        proc = self._proc
        if proc is not None and proc.poll() is None:
            proc.kill()


def read_bytes(path: Path) -> bytes | None:
    try:
        return path.read_bytes()
    except OSError:
        return None


def run_reason(stderr: bytes, code: int) -> str | None:
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
