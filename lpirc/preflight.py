"""Checks every command makes before it starts work, written once.

``lpirc run``, ``lpirc tune`` and ``lpirc submission check`` share them: the model file, the
delegate (and whether only one process may own its device), the ground truth that is used when
none is given, what a model must look like to answer ImageNet, how a worker's failure becomes
the user's error, and the handling of Ctrl-C / SIGTERM. Everything here is cheap: nothing loads
a model (workers and child processes do that).
"""

from __future__ import annotations

import signal
import threading
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from lpirc import delegates, runtime
from lpirc.errors import DelegateError, InputError, LpircError, ModelError

#: The file a holdout's labels are read from when no ground truth is given.
GROUND_TRUTH_NAME = "ground_truth.csv"
#: Outputs an LPIRC submission may have (defined in lpirc.runtime, which picks the answering
#: output by it): the 1000 ILSVRC-2012 classes, or 1001 with background at index 0.
CLASS_COUNTS = runtime.CLASS_COUNTS


def check_model_file(path: str | Path) -> Path:
    """Fail fast, in the parent, on what needs no runtime to see.

    Returns:
      the path, as a Path.
    Raises:
      ModelError: missing, a folder, or empty.
    """
    path = Path(path)
    if not path.exists():
        raise ModelError(f"{path}: model file not found")
    if path.is_dir():
        raise ModelError(f"{path}: is a folder, not a .tflite model file")
    if path.stat().st_size == 0:
        raise ModelError(f"{path}: model file is empty")
    return path


def check_delegate(name: str) -> bool:
    """Look the delegate's library (or GPU) up before any worker starts.

    Args:
      name: ``cpu``, ``gpu``, ``edgetpu`` or a path to a delegate library.
    Returns:
      True when only one process may own the device (the Edge TPU): the run then uses one
      inference process fed by decode threads.
    Raises:
      DelegateError: the library is absent or fails to load (looked up in a forked child, so a
        library that crashes on load is reported, not suffered), or no usable GPU.
    """
    spec = delegates.parse_delegate(name)
    if spec.kind in ("edgetpu", "external"):
        _, reason = delegates.find_library_isolated(spec.library or "")
        if reason is not None:
            raise delegates.delegate_error(spec, reason)
    if spec.kind == "gpu":
        # imports the runtime library (heavy, hence only here); loads no model
        reason = delegates.gpu_unavailable_reason(runtime.load_runtime().name)
        if reason is not None:
            raise DelegateError(f"gpu: {reason}")
    return delegates.delegate_is_exclusive(name)


def ground_truth_for(holdout: str | Path, given: str | Path | None = None) -> Path | None:
    """The ground truth a command uses: ``given``, else ``HOLDOUT/ground_truth.csv`` when that
    file exists, else None. Resolved to an absolute path (a run's manifest and score name it
    wherever the run started).

    Raises:
      InputError: ``given`` is missing or not a file.
    """
    if given is None:
        default = Path(holdout) / GROUND_TRUTH_NAME
        return default.resolve() if default.is_file() else None
    gt = Path(given).resolve()
    if not gt.is_file():
        raise InputError(f"{gt}: ground truth not found" if not gt.exists()
                         else f"{gt}: ground truth is not a file")
    return gt


def failure_error(kind: str, message: str) -> LpircError:
    """A worker's fatal failure, ``(kind, message)`` as the pipeline reports it, as the error
    the command raises: DelegateError for ``delegate``, else ModelError."""
    return (DelegateError if kind == "delegate" else ModelError)(message)


@contextmanager
def stop_signals() -> Iterator[threading.Event]:
    """Within the block, SIGTERM (a scheduler's stop) raises KeyboardInterrupt as Ctrl-C does,
    and a SIGINT ignored at start-up (a shell's background job) gets Python's handler back, so
    the user's Ctrl-C to the process group still stops the command cleanly. Handlers are
    restored on exit. Off the main thread (where signals cannot be set) it does nothing.

    Yields an Event set by either signal: a KeyboardInterrupt raised where a library swallows
    it (a finalizer, a callback during Ray's start-up) is lost, the event is not, so the
    caller can check it at its next step (``raise_if_stopped``)."""
    stopped = threading.Event()
    if threading.current_thread() is not threading.main_thread():
        yield stopped
        return

    def on_stop(signum, frame):
        stopped.set()
        raise KeyboardInterrupt

    old = {signal.SIGTERM: signal.signal(signal.SIGTERM, on_stop)}
    if signal.getsignal(signal.SIGINT) in (signal.SIG_IGN, signal.default_int_handler):
        old[signal.SIGINT] = signal.signal(signal.SIGINT, on_stop)
    try:
        yield stopped
    finally:
        for sig, handler in old.items():
            signal.signal(sig, handler)


def raise_if_stopped(stopped: threading.Event) -> None:
    """KeyboardInterrupt when ``stopped`` (from :func:`stop_signals`) is set: a stop whose own
    KeyboardInterrupt was swallowed on the way still stops the command."""
    if stopped.is_set():
        raise KeyboardInterrupt


__all__ = ["CLASS_COUNTS", "GROUND_TRUTH_NAME", "check_delegate", "check_model_file",
           "failure_error", "ground_truth_for", "raise_if_stopped",
           "stop_signals"]
