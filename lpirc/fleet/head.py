"""One fleet, end to end, on the head: check the head's own inputs, read back an earlier run
of the same fleet folder, run the policy over a device pool, keep the state file."""

from __future__ import annotations

from pathlib import Path
from typing import Callable

import scoring
from lpirc import leaderboard
from lpirc.errors import InputError
from lpirc.fleet.cluster import cluster_devices, no_device_error
from lpirc.fleet.device import RESOURCE_PREFIX, Device
from lpirc.fleet.jobs import (FleetConfig, FleetEvent, FleetOutcome, HeadInputs, Submission,
                              load_jobs)
from lpirc.fleet.policy import Fleet
from lpirc.fleet.pool import DevicePool, LocalPool
from lpirc.fleet.ray_pool import RayPool
from lpirc.fleet.standings import add_to_standings
from lpirc.holdout import content_sha256, open_holdout
from lpirc.results import file_sha256


def local_devices(count: int, kind: str = "cpu") -> list[Device]:
    """``count`` devices of this machine for a :class:`LocalPool` (``cpu`` ones divide the
    cores between them, as a local Ray instance's simulated devices do)."""
    return [Device(LocalPool.head_node, "127.0.0.1", f"{RESOURCE_PREFIX}{kind}_{i}", kind,
                   str(i), f"{kind}_{i}@local", (i, count) if kind == "cpu" else None)
            for i in range(count)]


def check_inputs(cfg: FleetConfig, subs: list[Submission]) -> HeadInputs:
    """What the head must have before any device is asked: its holdout, a ground truth that
    parses, a known rule set, a fleet folder it can write (whose ``fleet.json``, if any, is of
    this fleet: same identity), a standings database that reads. InputError (one line naming
    the file) otherwise. Reads every holdout image once (its content digest)."""
    head = open_holdout(cfg.holdout, seed=cfg.seed)  # its one-line error
    if cfg.rules not in scoring.RULES:
        raise InputError(f"unknown rule set {cfg.rules!r} (known: {', '.join(scoring.RULES)})")
    if not Path(cfg.ground_truth).is_file():
        raise InputError(f"{cfg.ground_truth}: ground truth not found")
    scoring.read_ground_truth(cfg.ground_truth, cache=False)
    try:
        cfg.out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise InputError(f"{cfg.out}: cannot create the fleet folder ({e.strerror or e})") from None
    leaderboard.open_db(cfg.db_path).close()  # not a standings database, or damaged: one line
    content = content_sha256(head)
    inputs = HeadInputs(head.files_sha256, content, len(head.files), cfg.identity() | {
        "holdout_files_sha256": head.files_sha256, "holdout_content_sha256": content,
        "ground_truth_sha256": file_sha256(cfg.ground_truth)})
    load_jobs(cfg, subs, inputs.identity)
    return inputs


def run_fleet(subs: list[Submission], cfg: FleetConfig,
              on_event: Callable[[FleetEvent], None] | None = None, *,
              pool: DevicePool | None = None, devices: list[Device] | None = None,
              inputs: HeadInputs | None = None) -> FleetOutcome:
    """Run every submission as a job on ``devices`` held by ``pool``; by default the connected
    Ray cluster's devices (see :func:`lpirc.fleet.cluster.connect`) in a
    :class:`lpirc.fleet.ray_pool.RayPool`. Returns when every job is done, failed or, after
    Ctrl-C, cancelled. Writes ``OUT/fleet.json`` as it goes and ``OUT/runs/<job>/`` for each
    scored job. ``inputs``: what :func:`check_inputs` returned (checked again when None).

    Raises InputError for the head's own inputs (holdout, ground truth, fleet folder) and
    FleetError when the cluster offers no lpirc device."""
    inputs = inputs or check_inputs(cfg, subs)
    if pool is None:
        pool = RayPool()
        devices = cluster_devices() if devices is None else devices
    if not devices:
        raise no_device_error()
    fleet = Fleet(cfg, load_jobs(cfg, subs, inputs.identity), pool, inputs, on_event)
    _resume(fleet, cfg, {s.name for s in subs})
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
                        fleet.wall_s, cfg.rules)


def _resume(fleet: Fleet, cfg: FleetConfig, given: set[str]) -> None:
    """Announce the queued jobs and those an earlier run of this fleet finished; add to the
    standings a done job whose database add an earlier run did not complete."""
    for j in fleet.jobs:
        if j.status == "queued":
            fleet.emit("queued", f"{j.name} (asks for a {j.kind} device)", j)
        elif j.status == "done" and j.name in given:
            fleet.emit("note", f"{j.name}: done in an earlier run of this fleet; kept, not run "
                               "or scored again", j)
        if j.status == "done" and not (j.standings or "").startswith(("added", "already")):
            # an earlier run stopped between scoring and the database: the run's uid makes
            # this add safe to repeat
            j.standings = add_to_standings(cfg.db_path, cfg.out / "runs" / j.name,
                                           cfg.ground_truth, cfg.rules, j.name)
