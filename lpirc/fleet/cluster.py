"""Ray cluster helpers for a fleet: import Ray (the ``fleet`` extra), connect to a cluster or
start a local instance offering simulated devices, list the devices a cluster offers.

Ray is imported only inside these functions."""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import socket
import sys
import tempfile
import threading
from pathlib import Path
from typing import Iterator, TextIO

from lpirc.errors import FleetError
from lpirc.fleet.device import RESOURCE_PREFIX, Device, devices_from_nodes
from lpirc.fleet.pool import first_line

RAY_LOG = "ray.log"  # in the fleet folder: what Ray prints while the fleet runs
_OBJECT_STORE_BYTES = 128 * 1024 * 1024  # local instance: results and models are small

# Ray puts the folder its driver starts in first on every worker's sys.path, on every node. A
# folder named lpirc there (the clone beside an editable install, an old copy) would shadow
# the installed package and no device would start; the checkout or site-packages there would
# put their modules before the standard library's. So the head starts Ray in a folder that
# holds nothing importable: <temp>/lpirc-fleet, where nodes keep their run folders (named
# "<fleet>-<hash>", never a module name).
RAY_START_DIR = Path(tempfile.gettempdir()) / "lpirc-fleet"


def import_ray():
    """The ``ray`` module; FleetError (one line) when the ``fleet`` extra is not installed."""
    try:
        import ray
    except ImportError:
        raise FleetError("lpirc fleet needs Ray: pip install '.[fleet]' in lpirc's checkout") from None
    return ray


@contextlib.contextmanager
def _in_ray_start_dir() -> Iterator[None]:
    """Chdir to :data:`RAY_START_DIR` (made if missing) for the duration (to start Ray in)."""
    here = os.getcwd()
    RAY_START_DIR.mkdir(parents=True, exist_ok=True)
    os.chdir(RAY_START_DIR)
    try:
        yield
    finally:
        os.chdir(here)


def _init(ray, **kwargs) -> None:
    """``ray.init(**kwargs)`` in :data:`RAY_START_DIR`, stoppable like the rest of the fleet.
    Ray replaces the SIGTERM handler first thing (its own ``sys.exit(15)``, which would end the
    head with code 15 and no message): the caller's handler is put back afterwards, and a
    SIGTERM that reached Ray's meanwhile becomes KeyboardInterrupt, as Ctrl-C does. Whatever
    stops ``ray.init`` half-way, what it started is shut down."""
    main = threading.current_thread() is threading.main_thread()
    term = signal.getsignal(signal.SIGTERM) if main else None
    try:
        with _in_ray_start_dir():
            ray.init(**kwargs)
    except SystemExit as e:
        ray.shutdown()
        if e.code == signal.SIGTERM:
            raise KeyboardInterrupt from None
        raise
    except BaseException:
        ray.shutdown()
        raise
    finally:
        if term is not None:
            signal.signal(signal.SIGTERM, term)


@contextlib.contextmanager
def local_cluster(devices: int, num_cpus: int | None = None,
                  object_store_bytes: int = _OBJECT_STORE_BYTES) -> Iterator[None]:
    """A Ray instance on this machine offering ``devices`` simulated cpu devices
    (``lpirc_device_cpu_0`` ...), which divide the machine's cores between them. No dashboard;
    shut down on exit."""
    ray = import_ray()
    if num_cpus is None:
        num_cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (
            os.cpu_count() or 1)
    _init(ray, address="local", num_cpus=num_cpus, include_dashboard=False,
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
    ray = import_ray()
    if ray.is_initialized():
        yield
        return
    if address is None:
        with local_cluster(devices):
            yield
        return
    probe_address(address)
    try:
        _init(ray, address=address, log_to_driver=False, logging_level=logging.ERROR)
    except Exception as e:  # ConnectionError, ValueError, RuntimeError, by Ray version
        hint = "" if os.environ.get("RAY_AUTH_MODE") else (
            "; a cluster with token authentication needs RAY_AUTH_MODE=token and its token here")
        raise FleetError(f"{address}: no Ray cluster reachable ({first_line(e)}){hint}") from None
    try:
        yield
    finally:
        ray.shutdown()


def probe_address(address: str, timeout_s: float = 5.0) -> None:
    """A TCP connection to ``host:port`` first: Ray itself waits minutes (and logs a line every
    few seconds) on an address where nothing listens. ``auto`` is left to Ray."""
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


def _own_fds() -> bool:
    """Whether sys.stdout and sys.stderr are file descriptors 1 and 2 (not an in-memory
    capture, as in click's test runner)."""
    try:
        return sys.stdout.fileno() == 1 and sys.stderr.fileno() == 2
    except (AttributeError, OSError, ValueError):
        return False


@contextlib.contextmanager
def ray_output_to(log: Path) -> Iterator[tuple[TextIO, TextIO]]:
    """For the duration, what Ray prints goes to ``log`` (appended): its ``(raylet) ...``
    lines (its driver's error listener prints them, coloured, on sys.stdout: a worker that
    died, memory pressure), its C++ core's log lines (file descriptor 2), and those of the
    processes a local instance starts meanwhile. Yields (stdout, stderr) streams that still
    reach the original outputs, for the fleet's own lines. File descriptors 1 and 2 are
    redirected only where sys.stdout/sys.stderr are them (not an in-memory capture)."""
    log.parent.mkdir(parents=True, exist_ok=True)
    old_out, old_err = sys.stdout, sys.stderr
    fds = _own_fds()
    with open(log, "a", buffering=1, encoding="utf-8", errors="replace") as sink:
        out, err, saved = old_out, old_err, []
        if fds:
            old_out.flush()
            old_err.flush()
            saved = [(fd, os.dup(fd)) for fd in (1, 2)]
            out = os.fdopen(os.dup(saved[0][1]), "w", buffering=1, encoding=old_out.encoding,
                            errors="replace")
            err = os.fdopen(os.dup(saved[1][1]), "w", buffering=1, encoding=old_err.encoding,
                            errors="replace")
            for fd in (1, 2):
                os.dup2(sink.fileno(), fd)
        sys.stdout = sys.stderr = sink
        try:
            yield out, err
        finally:
            sys.stdout, sys.stderr = old_out, old_err
            for fd, dup in saved:
                os.dup2(dup, fd)
                os.close(dup)
            if fds:
                out.close()
                err.close()


def cluster_devices() -> list[Device]:
    """The devices the connected Ray cluster offers (its alive nodes' lpirc_device_* resources)."""
    return devices_from_nodes(import_ray().nodes())


def no_device_error() -> FleetError:
    return FleetError("no lpirc device in the Ray cluster: a device node offers resources "
                      f"named {RESOURCE_PREFIX}<kind>_<id> (ray start --resources ...)")
