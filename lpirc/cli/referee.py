"""``lpirc referee ...``: the referee's commands (:mod:`lpirc.referee`); ``lpirc run
--referee``'s options and client are in :mod:`lpirc.cli._referee_run` (so ``lpirc run`` loads
none of these commands' modules).

The modules that need the ``referee`` extra (:mod:`~lpirc.referee.core` needs itsdangerous,
:mod:`~lpirc.referee.server` Starlette and uvicorn, :mod:`~lpirc.referee.client` httpx) are
imported inside the commands, after :func:`~lpirc.referee.require_extra` has said in one line
what is missing: ``lpirc referee --help`` works without the extra. ``referee serve``'s
shown defaults are read from :mod:`lpirc.referee.config` (no module of the extra there)."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from lpirc.cli._options import (account_password, login_limits, login_options, rules_option, setting,
                                time_limit_option)
from lpirc.energy import read_power_log
from lpirc.errors import InputError
from lpirc.holdout import files_sha256, list_images
from lpirc.referee import require_extra
from lpirc.referee.config import MIB, ConnLimits, RefereeConfig
from lpirc.referee.results import answers_csv, attempts, format_standings, standings
from lpirc.referee.store import PowerReading, Store


DB_OPTION = click.option("--db", type=click.Path(dir_okay=False, path_type=Path),
                         default=Path("referee.sqlite"), show_default=True,
                         help="The referee's SQLite database (made if absent).")
DB_READ_OPTION = click.option("--db", type=click.Path(dir_okay=False, path_type=Path),
                              default=Path("referee.sqlite"), show_default=True,
                              help="The referee's SQLite database (must exist: exit 5 if not).")


@click.group("referee")
def referee() -> None:
    """The LPIRC referee: serve the holdout over HTTP, take answers, meter and score sessions."""


#: ``lpirc referee serve``'s connection limits (the login gate's are :func:`login_options`):
#: (field of ConnLimits, option, type, help); the option's default is the field's
CONN_LIMITS = (
    ("request_timeout_s", "--request-timeout-s", click.FloatRange(min=0, min_open=True), "A connection that sends no complete request headers within this many seconds of connecting or of its previous reply is closed."),
    ("body_timeout_s", "--body-timeout-s", click.FloatRange(min=0, min_open=True), "Seconds a request's body may take to arrive (408 beyond)."),
    ("max_connections", "--max-connections", click.IntRange(min=1), "Open connections in all; a new one beyond closes the longest-idle one (lowered to the file-descriptor limit less 64)."),
    ("per_client", "--max-connections-per-client", click.IntRange(min=1), "Open connections from one client address; a new one beyond is closed at once."),
)


def conn_options(fn):
    """The options of :data:`CONN_LIMITS` (values in ``conns_<field>``), then the login gate's."""
    for name, flag, kind, text in reversed(CONN_LIMITS):
        fn = setting(ConnLimits, name, flag, f"conns_{name}", type=kind, help=text)(fn)
    return login_options(fn)


def limits_from_options(opts: dict) -> dict:
    """Pop the limit options from ``opts``: {"gate": GateLimits, "conns": ConnLimits}."""
    return {"gate": login_limits(opts),
            "conns": ConnLimits(**{name: opts.pop(f"conns_{name}") for name, *_ in CONN_LIMITS})}


C = RefereeConfig


@referee.command("serve")
@click.option("--holdout", required=True, type=click.Path(path_type=Path), help="Folder of holdout images (listed as lpirc run lists it).")
@click.option("--ground-truth", type=click.Path(path_type=Path), help="CSV filename,label. Default: HOLDOUT/ground_truth.csv. Never served.")
@time_limit_option(C, "Seconds from a team's login to the end of its session (LPIRC: 10 minutes).")
@DB_OPTION
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on (0.0.0.0: every interface).")
@click.option("--port", type=click.IntRange(0, 65535), default=8000, show_default=True, help="Port (0: any free port; the URL is printed).")
@rules_option(C, "Rule set sessions are scored under (see `lpirc rules`).")
@setting(C, "attempts", type=click.IntRange(min=1), help="Sessions each team may start; every one is kept and scored.")
@setting(C, "class_base", "--class-id-base", convert=str, type=click.Choice(["0", "1"]), help="0: CLASS_ID 0..999 (lpirc's sorted synsets, -1 background); 1: 1..1000 (0 background).")
@click.option("--runs-dir", type=click.Path(file_okay=False, path_type=Path), help="Where each scored session's run folder goes. Default: DB.runs/ beside the database.")
@click.option("--standings-db", type=click.Path(dir_okay=False, path_type=Path), help="Also add every scored session to this lpirc standings database.")
@setting(C, "max_body_bytes", "--max-body-mib", convert=lambda b: b / MIB, type=click.FloatRange(min=0.001), help="Largest request body accepted (413 beyond).")
@conn_options
def serve_cmd(holdout: Path, ground_truth: Path | None, db: Path, host: str, port: int,
              class_id_base: str, max_body_mib: float, **opts) -> None:
    """Serve the holdout to teams' devices until Ctrl-C; score each session when it ends."""
    require_extra("starlette", "uvicorn", "itsdangerous", "python_multipart")
    from lpirc.referee.server import serve  # the extra's modules, once it is known here

    cfg = RefereeConfig(holdout=holdout, ground_truth=ground_truth or holdout / "ground_truth.csv",
                        db=db, class_base=int(class_id_base),
                        max_body_bytes=int(max_body_mib * MIB), **limits_from_options(opts),
                        **opts)
    serve(cfg, host, port, announce=_announce)


def _announce(line: str) -> None:
    click.echo(line)
    sys.stdout.flush()  # a supervisor (or a test) reads the URL from a pipe


@referee.command("add-team")
@click.argument("team")
@DB_OPTION
@click.option("--password", help="The team's password. Default: a random one, printed once.")
@click.option("--meter", is_flag=True, help="A power-meter account (posts /powermeter readings) instead of a team.")
def add_team_cmd(team: str, db: Path, password: str | None, meter: bool) -> None:
    """Add an account TEAM (its password is stored hashed, never in clear)."""
    password, shown = account_password(password)
    Store(db).add_team(team, password, "meter" if meter else "team")
    role = "meter account" if meter else "team"
    click.echo(f"added {role} {team} to {db}" + (f"; password: {password} (shown once)"
                                                  if shown else ""))


@referee.command("results")
@DB_READ_OPTION
@click.option("--format", "fmt", type=click.Choice(["table", "csv", "json"]), default="table", show_default=True, help="table: for people; csv/json: for programs.")
@click.option("--all", "every", is_flag=True, help="Every attempt, not only each team's best.")
def results_cmd(db: Path, fmt: str, every: bool) -> None:
    """Print the standings: each team's best scored attempt, ranked."""
    store = _open(db)
    rows = attempts(store) if every else standings(store)
    if every:
        for r in rows:
            r.setdefault("rank", None)
    click.echo(format_standings(rows, fmt, every))


@referee.command("answers")
@DB_READ_OPTION
@click.option("--team", help="Only this team's answers.")
def answers_cmd(db: Path, team: str | None) -> None:
    """Export every answer received as CSV (the original referee's columns first: image_name,
    CLASS_ID, confidence, xmin, ymin, xmax, ymax), duplicates included (kept = 0)."""
    store = _open(db)
    if team is not None and store.team(team) is None:
        raise InputError(f"{db}: no team {team!r}")
    click.echo(answers_csv(store, team), nl=False)


@referee.command("power")
@click.argument("team")
@click.argument("file", type=click.Path(path_type=Path))
@DB_READ_OPTION
def power_cmd(team: str, file: Path, db: Path) -> None:
    """Import a meter log FILE (CSV timestamp,watts, as `lpirc run --power-log` reads) for
    TEAM, and rescore its ended sessions with the metered energy."""
    store = _open(db)
    who = store.team(team)
    if who is None or who.role != "team":
        raise InputError(f"{db}: no team {team!r}")
    samples = read_power_log(file)
    n = store.add_power(who.id, [PowerReading(t=float(t), power=float(w)) for t, w in samples],
                        f"import:{file.name}")
    again = len(samples) - n
    click.echo(f"imported {n} readings from {file} for {team}"
               + (f" ({again} already stored: same time and watts, skipped)" if again else ""))
    for score in _rescore(store, db, who.id):
        click.echo(_rescored_line(score))


def _rescored_line(score: dict) -> str:
    """One rescored attempt: score (top-1 / Wh, or n/a without energy), top-1 as the referee
    measured it, energy with its source and how it was obtained."""
    e, top1 = score.get("energy_wh"), score.get("top1")
    value = "n/a (no energy)" if score.get("score") is None else f"{score['score']:.4g} 1/Wh"
    top1 = "n/a" if top1 is None else f"{100 * top1:.2f} %"
    return (f"  attempt {score['attempt']}: score {value} (top-1 {top1}, measured by the "
            f"referee), energy {'n/a' if e is None else f'{e:.4g} Wh'} "
            f"({score['energy_source']}: {score['energy_method']})")


def _open(db: Path):
    """An existing referee database; InputError (exit 5, nothing written) for a missing file or
    one that is not a referee database."""
    return Store(db, create=False)


def _rescore(store, db: Path, team_id: int) -> list[dict]:
    """Score again every ended session of a team, with the holdout and ground truth the server
    was last started with (recorded in the database)."""

    from lpirc.referee.core import score_session  # needs itsdangerous (the referee extra)

    cfg = store.config()
    done = []
    for row in store.sessions(team_id=team_id, kind="team"):
        if row.ended is None:
            continue
        if not cfg:
            raise InputError(f"{db}: the server has never run on it: nothing to rescore")
        root = Path(cfg["holdout"])
        files = list_images(root)
        if files_sha256(files) != row.holdout_sha256:
            raise InputError(f"{root}: the holdout changed since attempt {row.attempt}; "
                             "cannot rescore it")
        standings = cfg.get("standings_db")
        done.append(score_session(store, row, root, files, Path(cfg["ground_truth"]),
                                  Path(cfg["runs_dir"]), Path(standings) if standings else None))
    return done
