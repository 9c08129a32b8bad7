"""The device pool on Ray (:class:`lpirc.fleet.pool.DevicePool`): one actor per device, pinned
to the device's node and holding its resource (``lpirc_device_<kind>_<id>``, amount 1) for
the whole fleet, so two jobs (or two fleets) never share a device. The actor is a
:class:`lpirc.fleet.device.DeviceWorker`; its ``lpirc run`` child dies with it."""

from __future__ import annotations

import re
import time
from typing import Any

from lpirc.fleet.cluster import import_ray
from lpirc.fleet.device import CheckRequest, Device, DeviceWorker, JobRequest
from lpirc.fleet.pool import Finished, first_line

_EXCEPTION_LINE = re.compile(r"^(?:[A-Za-z_][\w.]*\.)?[A-Za-z_]\w*(?:Error|Exception): \S")


def start_failure(e: BaseException) -> str | None:
    """The cause of a device actor that failed to start (its ``__init__`` raised, or its
    worker could not import lpirc), as the last ``SomeError: message`` line of the traceback
    Ray wraps it in; None when ``e`` is not such a failure (a device lost otherwise)."""
    text = str(e)
    if "creation task" not in text:
        return None
    causes = [ln.strip() for ln in text.splitlines() if _EXCEPTION_LINE.match(ln.strip())]
    return causes[-1] if causes else first_line(e)


class RayPool:
    """A :class:`DevicePool` over the connected Ray cluster (see :func:`lpirc.fleet.cluster.
    connect`)."""

    def __init__(self) -> None:
        self.ray = import_ray()
        self.head_node = self.ray.get_runtime_context().get_node_id()
        self._actors: dict[str, Any] = {}
        self._refs: dict[Any, tuple[str, str]] = {}  # ObjectRef -> (label, task)

    def start(self, device: Device, check: CheckRequest) -> None:
        from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

        actor = self.ray.remote(DeviceWorker).options(
            num_cpus=0, resources={device.resource: 1}, max_restarts=0, max_task_retries=0,
            scheduling_strategy=NodeAffinitySchedulingStrategy(device.node_id, soft=False),
        ).remote(device)
        self._actors[device.label] = actor
        ref = actor.check.remote(check.holdout, check.seed, check.work_dir)
        self._refs[ref] = (device.label, "check")

    def submit(self, label: str, request: JobRequest, model: bytes) -> None:
        ref = self._actors[label].run_job.remote(request, model)
        self._refs[ref] = (label, "job")

    def wait(self, timeout_s: float) -> list[Finished]:
        if not self._refs:
            time.sleep(max(0.0, timeout_s))
            return []
        ready, _ = self.ray.wait(list(self._refs), num_returns=1, timeout=max(0.0, timeout_s))
        out = []
        for ref in ready:
            label, task = self._refs.pop(ref)
            try:
                out.append(Finished(label, task, value=self.ray.get(ref)))
            except self.ray.exceptions.RayError as e:
                out.append(Finished(label, task, lost=first_line(e),
                                    start_failure=start_failure(e)))
        return out

    def kill(self, label: str) -> None:
        actor = self._actors.get(label)
        if actor is not None:
            try:
                self.ray.kill(actor)
            except Exception:  # noqa: BLE001 - already gone ("unavailable" may be a blip)
                pass
