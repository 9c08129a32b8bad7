"""The device pool: the four things the fleet's policy (:mod:`lpirc.fleet.policy`) asks of
whatever holds its devices, apart from what it does with the results (as Ray's ``ActorPool``
keeps pool mechanics apart from its callers' use of them):

- ``start(device, check)``: begin holding ``device`` (nothing else may use it meanwhile) and
  run its holdout check;
- ``submit(label, request, model)``: run one attempt of a job on the device ``label``;
- ``wait(timeout_s)``: the pieces of work that ended within ``timeout_s`` seconds, as
  :class:`Finished` records (a check's :class:`NodeReport`, a job's :class:`AttemptResult`, or
  the one-line reason the device is gone);
- ``kill(label)``: end the device's worker and its running job; a piece of work it had pending
  comes back from ``wait`` as lost. The device is not used again.

``head_node`` names the node the head runs on (a device there keeps its run folders in the
fleet folder).

Two pools: :class:`lpirc.fleet.ray_pool.RayPool` (one Ray actor per device, pinned to its node)
and :class:`LocalPool` here (one worker object per device in the head's process, each piece of
work on its own thread: a one-machine fleet without Ray, and the policy's tests).
"""

from __future__ import annotations

import queue
import threading
from dataclasses import dataclass
from typing import Any, Callable, Protocol

from lpirc.fleet.device import CheckRequest, Device, DeviceWorker, JobRequest


@dataclass(frozen=True)
class Finished:
    """One piece of work that ended: ``task`` is ``check`` or ``job`` of device ``device`` (its
    label). ``value``: the check's NodeReport or the job's AttemptResult; None when ``lost``
    says why the device is gone (its worker died, its node was lost, it was killed).
    ``start_failure``: the cause when the device's worker could not even start there (lpirc
    missing or another version on its node), as a ``SomeError: message`` line."""

    device: str
    task: str
    value: Any = None
    lost: str | None = None
    start_failure: str | None = None


class DevicePool(Protocol):
    head_node: str

    def start(self, device: Device, check: CheckRequest) -> None: ...

    def submit(self, label: str, request: JobRequest, model: bytes) -> None: ...

    def wait(self, timeout_s: float) -> list[Finished]: ...

    def kill(self, label: str) -> None: ...


def first_line(e: BaseException) -> str:
    """The first line of ``e``'s message, else its type's name."""
    text = str(e).strip().splitlines()
    return text[0] if text else type(e).__name__


class LocalPool:
    """A :class:`DevicePool` in this process: ``make_worker(device)`` makes each device's worker
    (by default :class:`DeviceWorker`, which runs ``lpirc run`` as a child process pinned to
    the device's cores); each check or job runs on its own daemon thread. A method of the worker
    that raises counts as the device lost (as a Ray actor's death does). ``kill`` calls the
    worker's ``kill()`` when it has one (DeviceWorker: the child process is killed) and reports
    the device's pending work lost at once, whatever its thread still does."""

    head_node = "local"

    def __init__(self, make_worker: Callable[[Device], Any] = DeviceWorker) -> None:
        self.make_worker = make_worker
        self._workers: dict[str, Any] = {}
        self._pending: dict[str, tuple[str, object]] = {}  # label -> (task, token)
        self._killed: set[str] = set()
        self._done: queue.Queue[Finished] = queue.Queue()
        self._lock = threading.Lock()

    def start(self, device: Device, check: CheckRequest) -> None:
        try:
            worker = self.make_worker(device)
        except Exception as e:  # noqa: BLE001 - whatever the worker raised, as Ray reports it
            self._done.put(Finished(device.label, "check", lost=first_line(e),
                                    start_failure=f"{type(e).__name__}: {first_line(e)}"))
            return
        self._workers[device.label] = worker
        self._spawn(device.label, "check",
                    lambda: worker.check(check.holdout, check.seed, check.work_dir))

    def submit(self, label: str, request: JobRequest, model: bytes) -> None:
        worker = self._workers[label]
        self._spawn(label, "job", lambda: worker.run_job(request, model))

    def _spawn(self, label: str, task: str, fn: Callable[[], Any]) -> None:
        token = object()
        with self._lock:
            if label in self._killed:
                self._done.put(Finished(label, task, lost="the device was killed"))
                return
            self._pending[label] = (task, token)

        def work() -> None:
            try:
                done = Finished(label, task, value=fn())
            except BaseException as e:  # noqa: BLE001 - the device is lost, whatever the cause
                done = Finished(label, task, lost=f"{type(e).__name__}: {first_line(e)}")
            with self._lock:
                if self._pending.get(label, (None, None))[1] is not token:
                    return  # killed meanwhile: already reported lost
                del self._pending[label]
            self._done.put(done)

        threading.Thread(target=work, name=f"lpirc-device-{label}", daemon=True).start()

    def wait(self, timeout_s: float) -> list[Finished]:
        try:
            out = [self._done.get(timeout=max(0.0, timeout_s))]
        except queue.Empty:
            return []
        while True:
            try:
                out.append(self._done.get_nowait())
            except queue.Empty:
                return out

    def kill(self, label: str) -> None:
        with self._lock:
            self._killed.add(label)
            pending = self._pending.pop(label, None)
        worker = self._workers.get(label)
        if worker is not None and hasattr(worker, "kill"):
            worker.kill()
        if pending is not None:
            self._done.put(Finished(label, pending[0], lost="the device was killed"))
