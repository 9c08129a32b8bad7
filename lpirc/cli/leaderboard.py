"""``lpirc leaderboard add | show | remove``: the command line of the standings database
(:mod:`lpirc.leaderboard`), and the standings as a table, CSV, JSON or an HTML page."""

from __future__ import annotations

import csv
import datetime as dt
import io
import json
import sys
from dataclasses import replace
from pathlib import Path

import click
import jinja2

import scoring
from lpirc import __version__
from lpirc import leaderboard as lb
from lpirc.cli._options import rules_option
from lpirc.errors import USER_ERRORS, InputError


# --- lpirc leaderboard ----------------------------------------------------------------------


_db_option = click.option(
    "--db", type=click.Path(dir_okay=False, path_type=Path), envvar=lb.DB_ENV, default=lb.DEFAULT_DB,
    show_default=True, help=f"Standings database (SQLite); also ${lb.DB_ENV}.")


@click.group("leaderboard")
def leaderboard() -> None:
    """Standings of scored runs, in a SQLite database (--db): add, show, remove."""


@leaderboard.command("add")
@click.argument("runs", nargs=-1, required=True, type=click.Path(path_type=Path))
@_db_option
@click.option("--ground-truth", type=click.Path(path_type=Path), help="CSV filename,label. Default: the one each run's manifest names.")
@rules_option(None, "Rule set stored with the entry. Default: the one each run was scored under.")
@click.option("--name", help="Submission name shown (one run only). Default: the run folder's name.")
@click.option("--team", help="Team that submitted the run(s).")
def add_cmd(runs, db, ground_truth, rules, name, team) -> None:
    """Score run folders and add them. A run already there changes nothing.

    A run that cannot be read is one error line; the others are still added (exit 5 then).
    """
    if name and len(runs) > 1:
        raise click.UsageError("--name names one run; give one RUN with it")
    conn = lb.open_db(db)
    errors = []
    for run in runs:
        try:
            e = lb.entry_from_run(run, ground_truth, rules, submission=name, team=team)
        except USER_ERRORS as err:
            click.echo(f"lpirc: error: {err}", err=True)
            errors.append(err)
            continue
        added = lb.add_entry(conn, e)
        if not added:  # the stored entry stays: say what is stored, not what was offered
            stored = lb.get_entry(conn, e.uid) or e
            where = f" (stored from {stored.run_dir})" if stored.run_dir != e.run_dir else ""
            e = replace(stored, submission=stored.submission + where)
        click.echo(f"{'added        ' if added else 'already there'}  {e.uid[:12]}  {lb.one_line(e.submission)}  "
                   f"{e.rules} score {_num(e.score)}, top-1 {_pct(e.top1)}, energy {_energy(e)}")
    conn.close()
    if errors:
        sys.exit(InputError.exit_code)


def _has_db(db: Path) -> bool:
    """A file with something in it: `show` and `remove` must not turn a missing or empty file
    (SQLite reads a 0-byte file as an empty database) into a standings database."""
    p = Path(db)
    return p.is_file() and p.stat().st_size > 0


@leaderboard.command("show")
@_db_option
@click.option("--format", "fmt", type=click.Choice(["table", "csv", "json", "html"]), default="table", show_default=True,
              help="table: for people; csv/json: for programs; html: one self-contained page.")
@rules_option(None, "Rank under this rule set, re-scoring from each entry's log where it was stored under another. Default: each as stored.")
@click.option("-o", "--out", type=click.Path(dir_okay=False, path_type=Path), help="Write to this file instead of stdout.")
def show_cmd(db, fmt, rules, out) -> None:
    """Print the standings: ranked by score within each holdout (equal scores share a place),
    with the LPIRC side prizes."""
    if not _has_db(db):
        raise InputError(f"{db}: no standings database here (add runs with `lpirc leaderboard add RUN`)")
    conn = lb.open_db(db)
    rows = lb.standings(conn, rules)
    conn.close()
    text = {"table": format_table, "csv": format_csv, "json": format_json, "html": format_html}[fmt](rows, db, rules)
    if out:
        try:
            Path(out).write_text(text, encoding="utf-8")
        except OSError as e:
            raise InputError(f"{out}: cannot write ({e.strerror or e})") from None
        click.echo(f"wrote {out} ({len(rows)} entries)")
    else:
        click.echo(text.rstrip("\n"))


@leaderboard.command("remove")
@click.argument("uids", nargs=-1, required=True)
@_db_option
def remove_cmd(uids, db) -> None:
    """Remove entries by uid, or by the start of it (as `show` prints it).

    Every uid is tried: one that matches no entry, or several, is an error line naming it and
    the others are still removed (exit 5 then)."""
    if not _has_db(db):
        raise InputError(f"{db}: no standings database here")
    conn = lb.open_db(db)
    failed = []
    try:
        for uid in uids:
            try:
                e = lb.remove(conn, uid)
            except InputError as err:
                click.echo(f"lpirc: error: {err}", err=True)
                failed.append(uid)
                continue
            click.echo(f"removed  {e.uid[:12]}  {lb.one_line(e.submission)}")
    finally:
        conn.close()
    if failed:
        click.echo(f"lpirc: {len(failed)} of {len(uids)} not removed: {', '.join(failed)}", err=True)
        sys.exit(InputError.exit_code)


# --- formats --------------------------------------------------------------------------------


def _num(v, digits: int = 4) -> str:
    if v is None:
        return "n/a"
    return f"{v:.{digits}g}" if abs(v) >= 1e-3 or v == 0 else f"{v:.3e}"


def _pct(v) -> str:
    return "n/a" if v is None else f"{100 * v:.2f} %"


def _energy(e: lb.Entry) -> str:
    return "absent" if e.energy_wh is None else f"{_num(e.energy_wh)} Wh ({e.energy_label})"


def groups(rows: list[lb.Standing]) -> list[list[lb.Standing]]:
    out: dict[int, list[lb.Standing]] = {}
    for r in rows:
        out.setdefault(r.group, []).append(r)
    return [out[k] for k in sorted(out)]


APART = ("entries on different holdouts, ground truths, rule sets or budgets are never ranked "
         "together")


def group_title(g: list[lb.Standing]) -> str:
    rule = scoring.RULES[g[0].rules]
    key = g[0].group_key or (None, None, None, g[0].entry.holdout_sha256)
    hold, gt = key[3], key[2]
    known = [x for x in (hold, gt) if x and x != "?"]
    return (f"holdout {hold[:12] if hold in known else '(not recorded)'} ({g[0].entry.images} images), "
            f"ground truth {gt[:12] if gt in known else '(not readable)'}, "
            f"rules {rule.name}: {rule.describe(dict(g[0].params))}; {len(g)} entr{'y' if len(g) == 1 else 'ies'}")


def prize_lines(g: list[lb.Standing]) -> list[str]:
    """How the side prizes were decided in one group, with the thresholds."""
    th = lb.prize_thresholds(lb.prize_field(g))
    if th is None:
        return [f"side prizes: not awarded (fewer than {lb.MIN_PRIZE_FIELD} entries with both top-1 and energy "
                "from a run that completed and answered)"]
    won = {p: [r.entry.submission for r in g if p in r.prizes] for p in (lb.PRIZE_LOW_ENERGY, lb.PRIZE_HIGH_ACCURACY)}
    return [
        f"{lb.PRIZE_LOW_ENERGY}: {', '.join(won[lb.PRIZE_LOW_ENERGY]) or 'none'} "
        f"(lowest energy among top-1 >= mean + 1 std = {_pct(th[0])})",
        f"{lb.PRIZE_HIGH_ACCURACY}: {', '.join(won[lb.PRIZE_HIGH_ACCURACY]) or 'none'} "
        f"(highest top-1 among energy <= mean - 1 std = {_num(th[1])} Wh)",
    ]


_MARKS = {lb.PRIZE_LOW_ENERGY: "E", lb.PRIZE_HIGH_ACCURACY: "A"}


def format_table(rows: list[lb.Standing], db, rules) -> str:
    """The standings for people: one block per group (holdout and rule set)."""
    if not rows:
        return f"Standings in {db}: no entries yet (lpirc leaderboard add RUN)\n"
    head = f"Standings in {db}: {len(rows)} entries, " + (f"ranked under {rules} (re-scored from the logs where stored under another)"
                                                           if rules else "each under the rule set it was stored with")
    out = [head, "Equal scores share a place. Prizes: E = least energy with high accuracy, A = highest accuracy with low energy."]
    gs = groups(rows)
    if len(gs) > 1:
        out.append(f"Note: {len(gs)} groups; {APART}.")
    cols = ("place", "submission", "score", "top-1", "top-5", "energy", "wall s", "answered/images", "prize", "uid")
    for g in gs:
        table = [cols] + [(
            str(r.place) if r.place else "-",
            lb.one_line(r.entry.submission) + (f" ({lb.one_line(r.entry.team)})" if r.entry.team else ""),
            _num(r.score), _pct(r.top1), _pct(r.top5), _energy(r.entry), _num(r.entry.wall_s),
            f"{r.entry.answered}/{r.entry.images}", "".join(_MARKS[p] for p in r.prizes), r.entry.uid[:12],
        ) for r in g]
        widths = [max(len(row[i]) for row in table) for i in range(len(cols))]
        out += ["", f"Group {g[0].group}: {group_title(g)}"]
        right = {0, 2, 3, 4, 6, 7}
        for row in table:
            out.append("  " + "  ".join(c.rjust(w) if i in right else c.ljust(w)
                                        for i, (c, w) in enumerate(zip(row, widths))).rstrip())
        out += ["  " + line for line in prize_lines(g)]
        shared = [n for n in g[0].notes if all(n in r.notes for r in g)] if len(g) > 1 else []
        out += [f"  note: {n}" for n in shared]  # a note on the whole group, once
        for r in g:
            for n in r.notes:
                if n not in shared:
                    out.append(f"  note: {lb.one_line(r.entry.submission)}: {n}")
    return "\n".join(out) + "\n"


CSV_COLUMNS = ("group", "place", "submission", "team", "rules", "params", "score", "top1", "top5", "images",
               "answered", "failed", "unanswered", "late", "wall_s", "inference_s", "energy_wh",
               "energy_label", "prizes", "holdout_sha256", "model_sha256", "lpirc_version", "runtime",
               "device", "source", "created_utc", "uid", "rescored", "notes", "run_dir")


def format_csv(rows: list[lb.Standing], db=None, rules=None) -> str:
    """One row per entry, group by group, best first; prizes and notes joined with ' | '."""
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(CSV_COLUMNS)
    for r in rows:
        d = r.to_json()
        d["prizes"] = " | ".join(r.prizes)
        d["notes"] = " | ".join(r.notes)
        d["params"] = " ".join(f"{k}={v:g}" for k, v in r.params)  # e.g. time_limit_s=600
        w.writerow(["" if d.get(c) is None else (repr(d[c]) if isinstance(d[c], float) else d[c]) for c in CSV_COLUMNS])
    return buf.getvalue()


def format_json(rows: list[lb.Standing], db=None, rules=None) -> str:
    """``{"db", "schema_version", "rules", "std", "groups", "standings": [Standing.to_json()]}``."""
    return json.dumps({
        "db": str(db), "schema_version": lb.SCHEMA_VERSION, "rules": rules or "as stored",
        "std": "population (ddof=0)",
        "groups": [{"group": g[0].group, "title": group_title(g), "prizes": prize_lines(g)} for g in groups(rows)],
        "standings": [r.to_json() for r in rows],
    }, indent=2) + "\n"


def format_html(rows: list[lb.Standing], db=None, rules=None) -> str:
    """A self-contained page (inline CSS, no script), like `lpirc report`'s."""
    env = jinja2.Environment(loader=jinja2.PackageLoader("lpirc", "templates"), autoescape=True,
                             trim_blocks=True, lstrip_blocks=True)
    page = {
        "title": "lpirc standings", "db": str(db), "version": __version__,
        "generated": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "rules": rules, "apart": APART, "groups": [{"title": group_title(g), "prizes": prize_lines(g), "rows": [
            {"place": r.place, "submission": r.entry.submission, "team": r.entry.team, "score": _num(r.score),
             "top1": _pct(r.top1), "top5": _pct(r.top5), "energy": _energy(r.entry),
             "wall": _num(r.entry.wall_s), "answered": f"{r.entry.answered}/{r.entry.images}",
             "prizes": r.prizes, "uid": r.entry.uid[:12], "notes": r.notes, "runtime": r.entry.runtime,
             "device": r.entry.device, "model": (r.entry.model_sha256 or "?")[:12]} for r in g]} for g in groups(rows)],
    }
    return env.get_template("standings.html.j2").render(page=page, css=env.get_template("page.css").render())
