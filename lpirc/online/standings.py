"""A phase's standings: each team's counted submission, places, ties within the holdout's
sampling error, the side prizes; and their CSV/JSON exports.

- **Counted**: per phase the organiser chooses ``best`` (the team's highest score; an equal
  score: the earlier upload) or ``latest`` (the team's most recent scored upload; a later upload
  that failed does not replace it).
- **Places**: by the rule set's score, higher first, equal scores sharing a place
  (``scoring.ranks``: 1, 1, 3).
- **Sampling error**: top-1 on a holdout of n images is a binomial proportion. Each row gives
  its Wilson 95 % score interval, and is flagged ``within_error_of`` the row placed just above it
  when their top-1 difference is within the 95 % normal interval of a difference of two
  independent proportions, 1.96 x sqrt(p1 (1 - p1) / n + p2 (1 - p2) / n). Two runs on the same
  images are not independent; the interval is then conservative (wider than a paired one).
- **Side prizes**: :func:`lpirc.leaderboard.side_prizes` over the counted rows (top-1, energy).
"""

from __future__ import annotations

import csv
import io
import json
import math
from pathlib import Path
from typing import Any

import scoring
from lpirc.leaderboard import side_prizes
from lpirc.online.config import DEFAULT_COUNTS
from lpirc.online.store import Store, Submission, utc_iso

Z95 = 1.959964
INTERVAL = ("top-1 within the 95 % interval of a difference of two binomial proportions, "
            "1.96 x sqrt(p1(1-p1)/n + p2(1-p2)/n), n = holdout images (independent-sample "
            "approximation: conservative for runs on the same images); per row a Wilson 95 % "
            "score interval")
CSV_COLUMNS = ("place", "team", "id", "score", "top1", "top1_ci95_low", "top1_ci95_high",
               "top5", "energy_wh", "energy_source", "images", "wall_time_s", "uploaded_utc",
               "within_error_of", "prizes")


def wilson(p: float, n: int, z: float = Z95) -> tuple[float, float]:
    """Wilson score interval of a proportion ``p`` of ``n`` trials (fractions 0..1)."""
    if n <= 0:
        return 0.0, 1.0
    d = 1 + z * z / n
    c = (p + z * z / (2 * n)) / d
    h = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / d
    return max(0.0, c - h), min(1.0, c + h)


def within_error(p1: float, p2: float, n: int, z: float = Z95) -> bool:
    """True when top-1 ``p1`` and ``p2`` on ``n`` images cannot be told apart (see above)."""
    if n <= 0:
        return True
    half = z * math.sqrt(p1 * (1 - p1) / n + p2 * (1 - p2) / n)
    return abs(p1 - p2) <= half + 1e-12


def counted(subs: list[Submission], rule: str) -> list[Submission]:
    """The submission of each team that counts: ``best`` or ``latest`` of its scored ones."""
    by_team: dict[int, Submission] = {}
    for s in subs:
        if s.state != "scored" or not s.score:
            continue
        cur = by_team.get(s.team_id)
        if cur is None:
            by_team[s.team_id] = s
        elif rule == "latest":
            by_team[s.team_id] = s if s.id > cur.id else cur
        elif _key(s) > _key(cur):
            by_team[s.team_id] = s
    return list(by_team.values())


def _key(s: Submission) -> tuple:
    v = (s.score or {}).get("score")
    return (v is not None and math.isfinite(v), v if v is not None else 0.0, -s.id)


def comparable(sub: Submission, holdout_sha256: str | None, rules: str | None) -> bool:
    """Whether a scored submission was scored on this holdout (sha256 of its ordered file list)
    under these rules: a service restarted on another holdout or rule set does not rank its
    earlier scores with the new ones (None: anything)."""
    sc = sub.score or {}
    return ((holdout_sha256 is None or sc.get("holdout_sha256") == holdout_sha256)
            and (rules is None or sc.get("rules") == rules))


def rows(store: Store, phase: str, rule: str, holdout_sha256: str | None = None,
         rules: str | None = None) -> list[dict[str, Any]]:
    """The ranked rows of a phase (every field; visibility is the caller's), of the
    submissions scored on ``holdout_sha256`` under ``rules`` (:func:`comparable`)."""
    subs = [s for s in store.submissions(phase=phase) if comparable(s, holdout_sha256, rules)]
    chosen = counted(subs, rule)
    places = scoring.ranks([{"score": s.score.get("score")} for s in chosen])
    prizes = side_prizes([(s.score.get("top1"), s.score.get("energy_wh")) for s in chosen])
    uploads: dict[int, int] = {}
    for s in subs:
        uploads[s.team_id] = uploads.get(s.team_id, 0) + 1
    out = []
    for i, s in enumerate(chosen):
        sc = s.score
        n, top1 = sc.get("images_total") or 0, sc.get("top1")
        ci = wilson(top1, n) if top1 is not None else (None, None)
        out.append({"place": places[i], "team": s.team, "id": s.id, "score": sc.get("score"),
                    "top1": top1, "top1_ci95": list(ci), "top5": sc.get("top5"),
                    "energy_wh": sc.get("energy_wh"), "energy_source": sc.get("energy_source"),
                    "images": n, "wall_time_s": sc.get("wall_time_s"),
                    "uploaded_utc": utc_iso(s.created), "submissions": uploads[s.team_id],
                    "prizes": [name for name, won in prizes.items() if i in won],
                    "within_error_of": None})
    out.sort(key=lambda r: (r["place"] is None, r["place"] or 0, r["team"]))
    for above, row in zip(out, out[1:]):
        if (above["top1"] is not None and row["top1"] is not None and row["images"]
                and within_error(above["top1"], row["top1"], row["images"])):
            row["within_error_of"] = above["team"]
    return out


def manifests(store: Store) -> list[dict[str, Any]]:
    """Every submission (id, team, phase, state, failure class, score) with the manifest of
    its run (None when it has none: refused, queued, failed before a run)."""
    out = []
    for s in store.submissions():
        man = Path(s.run_dir) / "manifest.json" if s.run_dir else None
        out.append({"id": s.id, "team": s.team, "phase": s.phase, "state": s.state,
                    "failure_class": s.failure_class, "uploaded_utc": utc_iso(s.created),
                    "model_sha256": s.model_sha256, "score": s.score,
                    "manifest": json.loads(man.read_text()) if man and man.is_file() else None})
    return out


def export(store: Store, phase: str, rank: str | None = None) -> dict[str, Any]:
    """The organiser's export of a phase's standings, every score published or not, as the
    service was last started (its counting rule, holdout and rule set, kept in the database).
    ``rank`` (``best`` or ``latest``): which scored submission of each team counts, as the
    HTTP export's ``?rank=``; None: the phase's counting rule."""
    cfg = store.config()
    rule = rank or cfg.get("counts", {}).get(phase, DEFAULT_COUNTS[phase])
    sha = cfg.get("phases", {}).get(phase, {}).get("files_sha256")
    return {"phase": phase, "counts": rule, "rules": cfg.get("rules"), "interval": INTERVAL,
            "standings": rows(store, phase, rule, sha, cfg.get("rules"))}


def to_csv(table: list[dict[str, Any]]) -> str:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(CSV_COLUMNS)
    for r in table:
        lo, hi = r["top1_ci95"]
        w.writerow([r["place"], r["team"], r["id"], r["score"], r["top1"], lo, hi, r["top5"],
                    r["energy_wh"], r["energy_source"], r["images"], r["wall_time_s"],
                    r["uploaded_utc"], r["within_error_of"] or "", "; ".join(r["prizes"])])
    return buf.getvalue()
