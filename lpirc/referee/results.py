"""What the referee shows: the standings (table, CSV, JSON, the live HTML page) and the CSV
export of every answer, in the original referee's column order."""

from __future__ import annotations

import csv
import html
import io
import json

import scoring
from lpirc.referee.store import Store

STANDINGS_COLUMNS = ("rank", "ranked_among", "team", "attempt", "score", "top1", "images_total", "answered",
                     "duplicates", "wall_time_s", "energy_wh", "energy_source", "rules",
                     "end_reason", "status")
# The original referee's CSV of a team's submissions: image, class_id, confidence, xmin, ymin,
# xmax, ymax (write_csvfiles in referee.py, 2015); then what this referee adds.
ANSWER_COLUMNS = ("image_name", "CLASS_ID", "confidence", "xmin", "ymin", "xmax", "ymax",
                  "team", "attempt", "class_index", "received_s", "kept")


def attempts(store: Store) -> list[dict]:
    """One row per team session (scored or not), oldest first."""
    rows = []
    for s in store.sessions(kind="team"):
        sc = s.score or {}
        if not sc:  # open, or ended and waiting for its score: the answers stored so far
            got, dups = store.counts(s.id)
            sc = {"images_answered": got, "answers_duplicate": dups}
        rows.append({
            "team": s.team, "attempt": s.attempt, "session_id": s.id,
            "status": "open" if s.ended is None else ("scored" if s.score else "ended"),
            "score": sc.get("score"), "top1": sc.get("top1"),
            "images_total": sc.get("images_total", s.image_count),
            "answered": sc.get("images_answered"), "duplicates": sc.get("answers_duplicate"),
            "wall_time_s": sc.get("wall_time_s"), "energy_wh": sc.get("energy_wh"),
            "energy_source": sc.get("energy_source"), "rules": s.rules,
            "end_reason": s.end_reason, "run_dir": s.run_dir,
            "warnings": sc.get("warnings", []),
        })
    return rows


#: Energy sources ranked, each among its own: a self-reported figure is never ranked against
#: a metered one (a device's own estimate is not a measurement).
RANKED = ("metered", "self-reported")


def standings(store: Store) -> list[dict]:
    """Each team's best scored attempt (a metered one before any self-reported one), ranked by
    score among the attempts whose energy has the same source (RANKED: metered first, then
    self-reported, each ranked from 1; equal scores share a rank, as in ``scoring.ranks``);
    ``ranked_among`` says which. Teams with no score last, unranked."""
    def key(row):
        return (row["energy_source"] == "metered", row["score"] is not None,
                row["score"] if row["score"] is not None else 0.0)

    best: dict[str, dict] = {}
    for row in attempts(store):
        if row["status"] == "scored" and (row["team"] not in best
                                          or key(row) > key(best[row["team"]])):
            best[row["team"]] = row
    out = []
    for source in (*RANKED, None):
        group = [r for r in best.values() if (r["energy_source"] if r["score"] is not None
                                              else None) == source]
        ranks = scoring.ranks(group) if source else [None] * len(group)
        for row, rank in zip(group, ranks):
            row["rank"], row["ranked_among"] = rank, source
        out += sorted(group, key=lambda r: (r["rank"] is None, r["rank"] or 0, r["team"]))
    return out


def rank_label(row: dict, rows: list[dict]) -> str:
    """The rank as shown to people: ``3``, or ``s3`` for a self-reported rank when metered
    ranks are shown too (the two are ranked apart)."""
    if row.get("rank") is None:
        return "n/a"
    mixed = {r.get("ranked_among") for r in rows if r.get("rank") is not None} >= set(RANKED)
    return ("s" if mixed and row.get("ranked_among") == "self-reported" else "") + str(row["rank"])


_UNSCORED = {"open": "session open: answers so far", "ended": "ended, not scored yet",
             "scored": "absent"}


def _fmt(v) -> str:
    if v is None:
        return "n/a"
    if isinstance(v, float):
        return f"{v:.4g}"
    return str(v)


def format_standings(rows: list[dict], fmt: str = "table", every: bool = False) -> str:
    """The standings as ``table`` (for people), ``csv`` or ``json``; ``every``: the rows are
    every attempt (``attempts``), unranked, and the table says so."""
    if fmt == "json":
        return json.dumps(rows, indent=2)
    if fmt == "csv":
        buf = io.StringIO()
        w = csv.writer(buf, lineterminator="\n")
        w.writerow(STANDINGS_COLUMNS)
        for r in rows:
            w.writerow(["" if r.get(c) is None else r.get(c) for c in STANDINGS_COLUMNS])
        return buf.getvalue().rstrip("\n")
    if not rows:
        return "no scored session yet"
    head = (f"{'rank':>4}  {'team':<20} {'try':>3}  {'score':>10}  {'top-1':>8}  "
            f"{'answered':>9}  {'dups':>5}  {'wall s':>8}  energy (source)")
    lines = [head]
    for r in rows:
        top1 = "n/a" if r["top1"] is None else f"{100 * r['top1']:.2f} %"
        energy = ("n/a" if r["energy_wh"] is None else f"{r['energy_wh']:.4g} Wh") \
            + f" ({r['energy_source'] or _UNSCORED[r['status']]})"
        lines.append(f"{rank_label(r, rows):>4}  {r['team'][:20]:<20} {r['attempt']:>3}  "
                     f"{_fmt(r['score']):>10}  {top1:>8}  "
                     f"{_fmt(r['answered']) + '/' + _fmt(r['images_total']):>9}  "
                     f"{_fmt(r['duplicates']):>5}  {_fmt(r['wall_time_s']):>8}  {energy}")
    lines.append(f"rules {rows[0]['rules']}: score = top-1 accuracy within the time limit / "
                 "energy in Wh (top-1 measured by the referee; unanswered images count wrong)"
                 if rows[0]["rules"] == "lpirc-onsite" else f"rules {rows[0]['rules']}")
    lines.append("wall s: the referee's clock, login to logout or time limit; energy: metered "
                 "(the referee's meter), self-reported (the device's own figure) or absent")
    if any(r.get("ranked_among") == "self-reported" for r in rows) and not every:
        lines.append("ranked apart: metered sessions first, then self-reported ones (rank sN), "
                     "never compared with each other")
    if every:
        lines.append("every attempt, oldest first, unranked (without --all: each team's best, "
                     "ranked)")
    return "\n".join(lines)


def answers_csv(store: Store, team: str | None = None) -> str:
    """Every answer received (kept and duplicate), the original referee's columns first."""
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(ANSWER_COLUMNS)
    for s in store.sessions(kind="team"):
        if team is not None and s.team != team:
            continue
        for kept, rows in ((1, store.answers(s.id)), (0, store.answers(s.id, duplicates=True))):
            for k, cls, given, conf, x0, y0, x1, y1, t in rows:
                box = ["" if v is None else v for v in (x0, y0, x1, y1)]
                w.writerow([k, given, conf, *box, s.team, s.attempt, cls,
                            round(t - s.started, 4), kept])
    return buf.getvalue()


def standings_html(store: Store, live: dict, now: float) -> str:
    """The live standings page: best attempt per team, then the sessions under way."""
    rows = standings(store)
    esc = html.escape
    rules = rows[0]["rules"] if rows else None
    onsite = rules in (None, "lpirc-onsite")
    body = [f"<tr><th>rank</th><th>team</th><th>attempt</th><th>score{' (1/Wh)' * onsite}</th>"
            "<th>top-1 (measured)</th><th>answered</th><th>duplicates</th>"
            "<th>energy (source)</th></tr>"]
    for r in rows:
        top1 = "n/a" if r["top1"] is None else f"{100 * r['top1']:.2f} %"
        energy = "n/a" if r["energy_wh"] is None else f"{r['energy_wh']:.4g} Wh"
        body.append(f"<tr><td>{esc(rank_label(r, rows))}</td><td>{esc(r['team'])}</td>"
                    f"<td>{r['attempt']}</td><td>{esc(_fmt(r['score']))}</td><td>{top1}</td>"
                    f"<td>{esc(_fmt(r['answered']))}/{esc(_fmt(r['images_total']))}</td>"
                    f"<td>{esc(_fmt(r['duplicates']))}</td>"
                    f"<td>{esc(energy)} ({esc(str(r['energy_source']))})</td></tr>")
    if not rows:
        body.append("<tr><td colspan='8' style='text-align:left'>no scored session yet</td></tr>")
    running = [f"<li>{esc(lv.row.team)}, attempt {lv.row.attempt}: "
               f"{store.counts(lv.row.id)[0]} of {lv.row.image_count} images answered so far, "
               f"{max(0.0, lv.row.deadline - now):.0f} s left by the referee's clock</li>"
               for lv in list(live.values()) if lv.row.kind == "team"]
    return ("<!doctype html><html><head><meta charset='utf-8'><meta http-equiv='refresh' "
            "content='5'><link rel='icon' href='data:,'><title>LPIRC standings</title>"
            "<style>body{font-family:sans-serif}td,th{padding:2px 10px;text-align:right}</style>"
            "</head><body>"
            "<h1>Standings</h1><table>" + "".join(body) + "</table>"
            + ("<h2>Under way</h2><ul>" + "".join(running) + "</ul>" if running else "")
            + ("<p>score = top-1 accuracy within the time limit / energy in Wh (rules "
               "lpirc-onsite)" if onsite else f"<p>score under rules {esc(rules)} (lpirc rules)")
            + "; top-1 measured by the referee, unanswered images count wrong; energy metered "
              "(the referee's meter), "
              "self-reported (the device's own figure) or absent (no score); metered and "
              "self-reported sessions are ranked apart (self-reported ranks shown sN when both "
              "are). Refreshes every 5 s.</p></body></html>")
