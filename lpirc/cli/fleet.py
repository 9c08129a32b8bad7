"""``lpirc fleet run`` and ``lpirc fleet devices``: many submissions across many devices, on
Ray (:mod:`lpirc.fleet`; Ray is imported there when a fleet starts, the ``fleet`` extra)."""

from __future__ import annotations

import sys
import time
from pathlib import Path

import click

from lpirc import leaderboard, preflight
from lpirc.cli._options import rules_option
from lpirc.fleet import (KINDS, RAY_LOG, STATE, FleetConfig, FleetEvent, check_inputs,
                         cluster_devices, connect, find_submissions, format_standings,
                         no_device_error, probe_address, ray_output_to, run_fleet)


def event_line(ev: FleetEvent) -> str:
    """One progress line: what happened, then the jobs queued/running/done/failed."""
    q, r, d, f = ev.counts
    return f"{ev.what:<9} {ev.message}   [{q} queued, {r} running, {d} done, {f} failed]"


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
@rules_option(FleetConfig, "Rule set the head scores with (see `lpirc rules`).")
@click.option("--time-limit-s", type=click.FloatRange(min=0.1), default=FleetConfig.time_limit_s, show_default=True, help="Each run's wall-clock budget in seconds.")
@click.option("--clock", type=click.Choice(["wall", "inference"]), default=FleetConfig.clock, show_default=True, help="Budget clock of each run (see lpirc run).")
@click.option("--ms-per-image", type=click.FloatRange(min=0.001), default=FleetConfig.ms_per_image, show_default=True, help="Inference budget per image in ms, for --clock inference.")
@click.option("--seed", type=int, default=FleetConfig.seed, show_default=True, help="Seed of the image order (the holdout check lists the holdout in this order).")
@click.option("--max-attempts", type=click.IntRange(min=1), default=FleetConfig.max_attempts, show_default=True, help="Tries per job when its device is lost, its run stopped from outside or stuck.")
@click.option("--hang-margin-s", type=click.FloatRange(min=1.0), default=FleetConfig.hang_margin_s, show_default=True, help="A run with no result this long past --time-limit-s is stuck: killed, its job retried on another device.")
@click.option("--device-reports", is_flag=True, help="Let each device write report.html into its run folder (device time; `lpirc report OUT/runs/<job>` makes it on the head).")
@click.option("--db", type=click.Path(dir_okay=False, path_type=Path), envvar=leaderboard.DB_ENV, help=f"Standings database the results are added to (lpirc leaderboard's). Default: ${leaderboard.DB_ENV}, else {leaderboard.DEFAULT_DB}.")
@click.option("--quiet", is_flag=True, help="No progress lines.")
def fleet_run(submissions, holdout, ground_truth, out, address, devices, kind, rules,
              time_limit_s, clock, ms_per_image, seed, max_attempts, hang_margin_s,
              device_reports, db, quiet) -> None:
    """Run every SUBMISSION (a .tflite with its optional sidecar, or a folder of them) as one
    job on one device of a Ray cluster, score the results on the head, add them to the
    standings database (`lpirc leaderboard show`), print this fleet's standings. Ray's own
    log lines go to OUT/ray.log.

    Exit status: 0 when every job is done, 1 when one failed (its reason is in the table and
    OUT/fleet.json), Ray is missing, or no cluster or device answers; 2 usage (an unknown
    --rules among them); 5 for a bad submission path, holdout, ground truth, a damaged --db, or an --out holding a fleet run with
    other settings (before Ray starts); 130 after Ctrl-C or SIGTERM, also during Ray's
    start-up (finished jobs stay scored).
    """
    if ground_truth is None:
        ground_truth = Path(holdout) / "ground_truth.csv"
    cfg = FleetConfig(Path(holdout), Path(ground_truth), Path(out), rules, time_limit_s, clock,
                      ms_per_image, seed, max_attempts, db, hang_margin_s, device_reports)
    subs = find_submissions(list(submissions), kind)
    inputs = check_inputs(cfg, subs)
    if address is not None:
        probe_address(address)  # nothing listening there: one line, before anything is printed
    # from here on SIGTERM ends the fleet as Ctrl-C does, and Ctrl-C works also when started
    # as a background job (SIGINT ignored), Ray's start-up included
    with preflight.stop_signals() as stopping, ray_output_to(cfg.out / RAY_LOG) as (_, err):
        def say(line: str) -> None:
            if not quiet:
                click.echo(line, file=err)

        where = address or f"local instance, {devices} simulated devices"
        say(f"ray       starting: {where} (its own log: {cfg.out / RAY_LOG})")
        t0 = time.monotonic()
        with connect(address, devices):
            # a Ctrl-C or SIGTERM during Ray's start-up whose KeyboardInterrupt Ray's code
            # swallowed (seen once in a full test run: the fleet then ran to exit 0)
            preflight.raise_if_stopped(stopping)
            say(f"ray       connected in {time.monotonic() - t0:.1f} s (measured): {where}")
            outcome = run_fleet(subs, cfg, lambda ev: say(event_line(ev)), inputs=inputs)
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
        raise no_device_error()
