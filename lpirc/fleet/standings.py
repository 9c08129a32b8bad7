"""A fleet's results in the standings: each scored job added to the database of ``lpirc
leaderboard`` (source ``fleet``), and the fleet's own final table."""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any

import scoring
from lpirc import leaderboard
from lpirc.errors import USER_ERRORS, LpircError
from lpirc.fleet.jobs import FleetOutcome
from lpirc.fleet.pool import first_line


def add_to_standings(db: Path, run_dir: Path, ground_truth: Path, rules: str,
                     submission: str, score: dict | None = None) -> str:
    """Add one scored run folder to the standings database of ``lpirc leaderboard`` (source
    ``fleet``, its uid the run's: the same run is never added twice). Returns what happened,
    for ``fleet.json``: ``added``, ``already in the standings``, or why it was not recorded
    (the result stays scored in its run folder; ``lpirc leaderboard add`` can add it later).
    ``score``: the run's score object just computed by the head, so it is not scored twice.
    Never raises for the database: a file damaged mid-fleet costs no result."""
    try:
        conn = leaderboard.open_db(db)
    except LpircError as e:
        return f"not recorded: {e}"
    try:
        entry = leaderboard.entry_from_run(run_dir, ground_truth, rules, submission=submission,
                                           source="fleet", score=score)
        added = leaderboard.add_entry(conn, entry)
    except (*USER_ERRORS, ValueError, OSError) as e:
        return f"not recorded: {first_line(e)}"
    except sqlite3.Error as e:  # a file damaged (or locked past the timeout) mid-fleet
        return f"not recorded: {db}: {first_line(e)}"
    finally:
        conn.close()
    return f"added to {db} ({entry.uid[:8]})" if added else (
        f"already in {db} ({entry.uid[:8]}), not added twice")


def num(v: Any) -> str:
    return f"{v:.4g}" if isinstance(v, (int, float)) else "n/a"


def format_standings(outcome: FleetOutcome) -> str:
    """The final table: done jobs ranked by score (``scoring.ranks``: equal scores share a
    rank), then the jobs that failed or were cancelled, with their one-line reasons."""
    done = [j for j in outcome.jobs if j.status == "done"]
    rk = scoring.ranks([j.score or {} for j in done])
    order = sorted(range(len(done)), key=lambda i: (rk[i] is None, rk[i] or 0))
    width = max([len(j.name) for j in outcome.jobs] + [10])
    lines = [f"Standings ({outcome.rules}; scored on the head from the result logs the devices "
             "sent back)",
             f"  rank  {'submission':<{width}}  {'score':>10}  {'top-1':>8}  {'wall s':>7}  "
             "attempts  device"]
    for i in order:
        j, s = done[i], done[i].score or {}
        top1 = "n/a" if s.get("top1") is None else f"{100 * s['top1']:.2f}%"
        wall = "n/a" if s.get("wall_time_s") is None else f"{s['wall_time_s']:.2f}"
        lines.append(f"  {rk[i] or '-':>4}  {j.name:<{width}}  {num(s.get('score')):>10}  "
                     f"{top1:>8}  {wall:>7}  {len(j.attempts):>8}  {j.device}")
    for j in outcome.jobs:
        if j.status != "done":
            lines.append(f"  {j.status:<9} {j.name:<{width}}  {j.reason}")
    st = [j.status for j in outcome.jobs]
    lines.append(f"jobs            {len(st)}: {st.count('done')} done, {st.count('failed')} "
                 f"failed, {st.count('cancelled')} cancelled")
    lines.append("wall s          measured by lpirc run on the device; top-1 measured")
    rule = scoring.RULES.get(outcome.rules)
    if done and rule is not None:  # the score's formula, and whether its energy was measured
        sources = sorted({str((j.score or {}).get("energy_source") or "none") for j in done})
        lines.append(f"score           {rule.describe(done[0].score)}; energy "
                     f"{' / '.join(sources)} (lpirc run's energy source on the device)")
    return "\n".join(lines)
