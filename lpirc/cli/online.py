"""``lpirc online ...``: the commands of the online service (:mod:`lpirc.online`). The module
that needs the ``online`` extra (:mod:`lpirc.online.app`: Starlette, uvicorn, itsdangerous) is
imported inside ``serve``, after :func:`lpirc.online.require_extra` has said in one line what
is missing; the others (accounts, phases, publishing, exports) need only the store."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import click

from lpirc.cli._options import (account_password, clock_options, login_limits, login_options,
                                rules_option, setting, time_limit_option)
from lpirc.errors import InputError
from lpirc.online import require_extra
from lpirc.online import standings as st
from lpirc.online.config import COUNTS, DEFAULT_COUNTS, OnlineConfig, PhaseData
from lpirc.online.store import Store

C = OnlineConfig

DB_OPTION = click.option("--db", type=click.Path(dir_okay=False, path_type=Path),
                         default=Path("online.sqlite"), show_default=True,
                         help="The service's SQLite database (add-team and serve make it if absent, "
                              "in a folder that exists; the other commands need it); its "
                              "uploads and run folders go to DB.d/.")


def _store(db: Path, must_exist: bool = True):
    if must_exist and not db.is_file():
        raise InputError(f"{db}: online database not found")
    return Store(db)


@click.group("online")
def online() -> None:
    """The online track as a service: teams upload, devices run, standings publish themselves."""


@online.command("add-team")
@click.argument("name")
@DB_OPTION
@click.option("--password", help="The account's password. Default: a random one, printed once.")
@click.option("--organiser", is_flag=True, help="An organiser account (queue, devices, phases, publishing, exports) instead of a team.")
def add_team_cmd(name: str, db: Path, password: str | None, organiser: bool) -> None:
    """Add an account NAME (its password is stored as a scrypt hash, never in clear)."""
    password, shown = account_password(password)
    _store(db, must_exist=False).add_team(name, password, "organiser" if organiser else "team")
    click.echo(f"added {'organiser' if organiser else 'team'} {name} to {db}"
               + (f"; password: {password} (shown once)" if shown else ""))


@online.command("serve")
@click.option("--holdout", required=True, type=click.Path(path_type=Path), help="Development phase holdout folder (public).")
@click.option("--ground-truth", type=click.Path(path_type=Path), help="Its CSV filename,label. Default: HOLDOUT/ground_truth.csv. Kept by the service, never sent to a device.")
@click.option("--final-holdout", type=click.Path(path_type=Path), help="Final phase holdout folder (hidden); the organiser opens the phase with `lpirc online phase final`.")
@click.option("--final-ground-truth", type=click.Path(path_type=Path), help="Its CSV filename,label (keep it outside the holdout folder). Default: FINAL_HOLDOUT/ground_truth.csv.")
@DB_OPTION
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on.")
@click.option("--port", type=click.IntRange(0, 65535), default=8000, show_default=True, help="Port (0: any free port; the URL is printed).")
@setting(C, "devices", type=click.IntRange(min=1), help="Devices of the local pool (or of the local Ray instance with --executor ray); they divide the cores.")
@click.option("--address", help="A Ray cluster (what `ray start --head` printed): its lpirc devices run the jobs (implies --executor ray).")
@setting(C, "executor", type=click.Choice(["local", "ray"]), help="local: lpirc run processes on this machine; ray: the fleet's Ray devices.")
@click.option("--per-team-per-day", type=click.IntRange(min=1), help="Submissions charged per team per UTC day (429 beyond). Default: no limit.")
@click.option("--per-team-at-once", type=click.IntRange(min=1), help="Submissions per team queued, running or scoring at once (429 beyond). Default: no limit.")
@click.option("--dev-counts", type=click.Choice(COUNTS), default=DEFAULT_COUNTS["dev"], show_default=True, help="Which scored submission of a team counts in the development standings.")
@click.option("--final-counts", type=click.Choice(COUNTS), default=DEFAULT_COUNTS["final"], show_default=True, help="Which scored submission of a team counts in the final standings.")
@rules_option(C, "Rule set every run is scored under (see `lpirc rules`).")
@time_limit_option(C, "Each run's wall-clock budget in seconds.")
@clock_options(C, "Budget clock of each run (see lpirc run).", "Inference budget per image in ms, for --clock inference.")
@setting(C, "hang_margin_s", type=click.FloatRange(min=1), help="A run silent this long past its time limit is ended: failure class timeout.")
@setting(C, "max_attempts", type=click.IntRange(min=1), help="Tries of a submission whose device was lost (infrastructure, never charged).")
@click.option("--max-model-mib", type=click.FloatRange(min=0.001), default=64.0, show_default=True, help="Largest model upload taken (413 beyond).")
@login_options
def serve_cmd(holdout, ground_truth, final_holdout, final_ground_truth, db, host, port,
              devices, address, executor, per_team_per_day, per_team_at_once, dev_counts,
              final_counts, rules, time_limit_s, clock, ms_per_image, hang_margin_s,
              max_attempts, max_model_mib, **login) -> None:
    """Serve the online track until Ctrl-C: uploads, the queue on the devices, scores,
    standings. Exit status: 0 after Ctrl-C/SIGTERM; 1 the online extra is missing or no
    device starts; 5 a bad holdout, ground truth or database, or the port is taken."""
    require_extra()
    from lpirc.online.app import serve  # Starlette, uvicorn: the online extra

    phases = {"dev": PhaseData("dev", holdout, ground_truth or holdout / "ground_truth.csv")}
    if final_holdout is not None:
        phases["final"] = PhaseData("final", final_holdout,
                                    final_ground_truth or final_holdout / "ground_truth.csv")
    elif final_ground_truth is not None:
        raise click.UsageError("--final-ground-truth goes with --final-holdout")
    cfg = OnlineConfig(db=db, phases=phases, per_team_per_day=per_team_per_day,
                       per_team_at_once=per_team_at_once,
                       max_model_bytes=int(max_model_mib * 1024 * 1024), devices=devices,
                       address=address, executor="ray" if address else executor, rules=rules,
                       time_limit_s=time_limit_s, clock=clock, ms_per_image=ms_per_image,
                       hang_margin_s=hang_margin_s, max_attempts=max_attempts,
                       counts={"dev": dev_counts, "final": final_counts},
                       login=login_limits(login))
    serve(cfg, host, port, announce=_announce)


def _announce(line: str) -> None:
    click.echo(line)
    sys.stdout.flush()  # a supervisor (or a test) reads the URL from a pipe


@online.command("phase")
@click.argument("phase", type=click.Choice(["dev", "final"]))
@DB_OPTION
def phase_cmd(phase: str, db: Path) -> None:
    """Open PHASE for uploads (a running service takes it at its next upload)."""
    _store(db).set_phase(phase)
    click.echo(f"{db}: uploads now go to the {phase} phase")


@online.command("publish")
@DB_OPTION
@click.option("--hide", is_flag=True, help="Hide the final scores from teams again.")
def publish_cmd(db: Path, hide: bool) -> None:
    """Show the final phase's scores and standings to the teams (or --hide them again)."""
    _store(db).publish(not hide)
    click.echo(f"{db}: final-phase scores {'hidden from teams' if hide else 'published'}")


@online.command("export")
@DB_OPTION
@click.option("--phase", type=click.Choice(["dev", "final"]), default="dev", show_default=True)
@click.option("--format", "fmt", type=click.Choice(["csv", "json", "manifests"]), default="csv", show_default=True, help="csv/json: the phase's standings; manifests: every submission with its run's manifest (JSON).")
@click.option("--rank", type=click.Choice(COUNTS), default=None, help="csv/json: which scored submission of each team counts, as the HTTP export's ?rank=.  [default: the phase's --dev-counts/--final-counts]")
def export_cmd(db: Path, phase: str, fmt: str, rank: str | None) -> None:
    """Print the standings (every score, published or not: the organiser's export) or every
    submission's manifest."""
    store = _store(db)
    if fmt == "manifests":
        click.echo(json.dumps({"submissions": st.manifests(store)}, indent=1))
        return
    data = st.export(store, phase, rank)
    click.echo(st.to_csv(data["standings"]) if fmt == "csv" else json.dumps(data, indent=1),
               nl=fmt != "csv")
