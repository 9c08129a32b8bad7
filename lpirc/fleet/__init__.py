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
else the head's ``--holdout`` path) with :func:`lpirc.holdout.open_holdout` and digests it,
names and bytes (:func:`lpirc.holdout.content_sha256`); a digest other than the head's refuses
that node's devices in one line. The manifest each run returns is checked again against the
head's ordered-name digest (``holdout.files_sha256``).

Faults. A device whose worker dies mid-run (node lost, worker killed) gets no further job; its
job is queued again for another device, the attempt is recorded (device, reason, where its
partial run folder stays), and nothing of that attempt is scored. A run with no result
``FleetConfig.hang_margin_s`` past its budget is killed by its device's worker and its job goes
to another device (:mod:`lpirc.fleet.policy`). A submission that fails (bad model, delegate
missing) is recorded with ``lpirc run``'s one-line reason and the others go on. Ctrl-C on the
head cancels every job; what finished stays scored. A job is scored once: a re-run with the same
``--out`` (and the same settings) skips the jobs ``fleet.json`` records as done.

Without an address, :func:`local_cluster` starts a Ray instance on this machine offering
``devices`` simulated ``cpu`` devices (``lpirc_device_cpu_0`` ...), the cores divided between
them.

The package, from the bottom up (nothing here imports click or the CLI, which is
``lpirc.cli.fleet``):

- :mod:`~lpirc.fleet.device`: devices, the frozen messages between head and device, and
  :class:`DeviceWorker`, which runs each job as an ``lpirc run`` child (no Ray);
- :mod:`~lpirc.fleet.jobs`: submissions, :class:`FleetConfig`, job state, events, outcome, and
  reading back an earlier run of the same fleet folder (no Ray);
- :mod:`~lpirc.fleet.pool`: the device-pool protocol (start, submit, wait, kill) and
  :class:`LocalPool`, a pool in the head's process;
- :mod:`~lpirc.fleet.policy`: the scheduling policy (:class:`Fleet`) over any pool;
- :mod:`~lpirc.fleet.ray_pool`: the pool on Ray, one actor per device;
- :mod:`~lpirc.fleet.cluster`: connecting to Ray or starting a local instance;
- :mod:`~lpirc.fleet.standings`: the standings database and the final table;
- :mod:`~lpirc.fleet.head`: one fleet end to end (:func:`run_fleet`).

Ray is imported only inside the functions that need it (the ``fleet`` extra).
"""

from lpirc.errors import FleetError
from lpirc.fleet.cluster import (RAY_LOG, RAY_START_DIR, cluster_devices, connect, import_ray,
                                 local_cluster, no_device_error, probe_address, ray_output_to)
from lpirc.fleet.device import (HOLDOUT_ENV, KINDS, RESOURCE_PREFIX, WORK_ENV, AttemptResult,
                                CheckRequest, Device, DeviceWorker, JobRequest, NodeReport,
                                devices_from_nodes, parse_resource, share_cores)
from lpirc.fleet.head import check_inputs, local_devices, run_fleet
from lpirc.fleet.jobs import (STATE, Attempt, FleetConfig, FleetEvent, FleetOutcome, HeadInputs,
                              JobState, Submission, find_submissions, job_names, load_jobs,
                              parse_kind, safe_name)
from lpirc.fleet.policy import Fleet
from lpirc.fleet.pool import DevicePool, Finished, LocalPool
from lpirc.fleet.ray_pool import RayPool, start_failure
from lpirc.fleet.standings import add_to_standings, format_standings

__all__ = [
    "HOLDOUT_ENV", "KINDS", "RAY_LOG", "RAY_START_DIR", "RESOURCE_PREFIX", "STATE", "WORK_ENV",
    "Attempt", "AttemptResult", "CheckRequest", "Device", "DevicePool", "DeviceWorker",
    "Finished", "Fleet", "FleetConfig", "FleetError", "FleetEvent", "FleetOutcome",
    "HeadInputs", "JobRequest", "JobState", "LocalPool", "NodeReport", "RayPool", "Submission",
    "add_to_standings", "check_inputs", "cluster_devices", "connect",
    "devices_from_nodes", "find_submissions", "format_standings", "import_ray", "job_names",
    "load_jobs", "local_cluster", "local_devices", "no_device_error", "parse_kind",
    "parse_resource", "probe_address", "ray_output_to", "run_fleet", "safe_name", "share_cores",
    "start_failure",
]
