"""Printing scores: a table for people, a ranked CSV leaderboard."""

from __future__ import annotations

import csv
import io

from scoring.groups import comparable
from scoring.rules import RULES, rule_params

COMMON = (
    "rules", "run", "model", "score", "top1", "top5", "images_total", "images_answered",
    "images_failed", "images_unanswered", "images_late", "answers_not_in_ground_truth",
    "answers_duplicate", "wall_time_s", "inference_time_s", "images_per_s", "energy_wh",
    "energy_source", "energy_method", "energy_uncertainty_wh",
)
_SKIP = set(COMMON) | {"options", "source", "warnings", "per_class", "confused", "log", "log_format",
                       "ground_truth", "ground_truth_sha256", "holdout_id"}


def _key(score) -> float:
    return round(score, 12) if score is not None else float("-inf")


def ranks(scores: list[dict]) -> list[int | None]:
    """Competition ranks (1, 1, 3, ...) by score, higher first; equal scores share a rank; a run
    without a score gets None."""
    out: list[int | None] = [None] * len(scores)
    ordered = sorted(range(len(scores)), key=lambda i: -_key(scores[i].get("score")))
    prev, rank = None, 0
    for pos, i in enumerate(ordered):
        s = scores[i].get("score")
        if s is None:
            continue
        if prev is None or _key(s) != prev:
            rank, prev = pos + 1, _key(s)
        out[i] = rank
    return out


def grouped_ranks(scores: list[dict]) -> tuple[list[int | None], list[int]]:
    """Competition ranks within each :func:`scoring.groups.comparable` group.

    Returns:
        (ranks, group): ranks as :func:`ranks` computes them inside a run's group (None without
        a score); group, each run's group number (0, 1, ... in order of first appearance).
    """
    keys: dict[tuple, int] = {}
    group = [keys.setdefault(comparable(s), len(keys)) for s in scores]
    out: list[int | None] = [None] * len(scores)
    for g in range(len(keys)):
        members = [i for i, x in enumerate(group) if x == g]
        for i, r in zip(members, ranks([scores[i] for i in members])):
            out[i] = r
    return out, group


def _fmt(v, digits=4) -> str:
    if v is None:
        return "n/a"
    if isinstance(v, float):
        return f"{v:.{digits}g}" if abs(v) >= 1e-3 or v == 0 else f"{v:.3e}"
    return str(v)


def _unit(v, unit: str) -> str:
    return "n/a" if v is None else f"{_fmt(v)} {unit}"


def _pct(v) -> str:
    return "n/a" if v is None else f"{100 * v:.2f} %"


_UNITS = {
    "time_limit_s": "s", "budget_s": "s", "runtime_s": "s", "ms_per_image": "ms", "latency_ms": "ms",
    "idle_watts": "W", "net_energy_wh": "Wh", "accuracy_per_wh": "1/Wh", "accuracy_per_s": "1/s",
    "frontier_accuracy_pct": "%", "gain_pct_points": "points",
}


def format_table(scores: list[dict]) -> str:
    """Human-readable report: one labelled block per run, then a ranking when there are several."""
    blocks = []
    rk, group = grouped_ranks(scores)
    size = [group.count(g) for g in group]
    for s, r, n in zip(scores, rk, size):
        rule = RULES.get(s.get("rules"))
        src = s.get("source", {})
        lines = [f"Run: {s.get('run')}" + (f"   model: {s['model']}" if s.get("model") else "")]
        lines.append(f"  rules               {s.get('rules')}" + (f"  ({rule.describe(s)}; {rule.year})" if rule else ""))
        lines.append(f"  score               {_fmt(s.get('score'))}" + (f"   rank {r} of {n}" if r and n > 1 else ""))
        lines.append(f"  top-1 accuracy      {_pct(s.get('top1'))}   ({src.get('top1', 'measured')})")
        lines.append(f"  top-5 accuracy      {_pct(s.get('top5'))}   ({src.get('top5', 'measured')})")
        lines.append(
            f"  images              {s.get('images_total')} in ground truth: {s.get('images_answered')} answered, "
            f"{s.get('images_failed')} failed, {s.get('images_unanswered')} unanswered, {s.get('images_late')} late"
        )
        if s.get("answers_not_in_ground_truth") or s.get("answers_duplicate"):
            lines.append(
                f"  ignored answers     {s.get('answers_not_in_ground_truth')} not in ground truth, "
                f"{s.get('answers_duplicate')} duplicates"
            )
        lines.append(f"  wall time           {_unit(s.get('wall_time_s'), 's')}   ({src.get('wall_time_s', 'unknown')})")
        lines.append(f"  inference time      {_unit(s.get('inference_time_s'), 's')}   ({src.get('inference_time_s', 'unknown')})")
        lines.append(f"  throughput          {_unit(s.get('images_per_s'), 'images/s')}   (answers / wall time)")
        e_src = s.get("energy_source") or "unknown"
        method = f", {s['energy_method']}" if s.get("energy_method") else ""
        lines.append(f"  energy              {_unit(s.get('energy_wh'), 'Wh')}   ({e_src}{method})")
        for k, v in s.items():
            if k in _SKIP or k == "net_energy_uncertainty_wh":  # shown with net_energy_wh
                continue
            unit = _UNITS.get(k, "")
            label = k.replace("_", " ")
            val = _pct(v) if k.startswith("accuracy") and k not in _UNITS else _fmt(v)
            if k == "net_energy_wh" and v is not None and s.get("net_energy_uncertainty_wh") is not None:
                val += f" +-{_fmt(s['net_energy_uncertainty_wh'])}"
            lines.append(f"  {label:<19} {val}{' ' + unit if unit and v is not None else ''}")
        if s.get("per_class"):
            lines.append("  worst classes (top-1, images):")
            for row in s["per_class"][:10]:
                syn = f" ({row['synset']})" if row["name"] != row["synset"] else ""
                lines.append(f"    {_pct(row['top1']):>9}  {row['correct']}/{row['images']}  {row['name']}{syn}")
        if s.get("confused"):
            lines.append("  most confused (true -> predicted, count):")
            for c in s["confused"]:
                lines.append(f"    {c['count']:>5}  {c['true_name']} -> {c['predicted_name']}")
        for w in s.get("warnings", []):
            lines.append(f"  warning: {w}")
        blocks.append("\n".join(lines))
    if len(scores) > 1:
        blocks.extend(_ranking_blocks(scores, rk, group))
    return "\n\n".join(blocks) + "\n"


def _ranking_blocks(scores: list[dict], rk: list, group: list[int]) -> list[str]:
    """One ranking per comparable group; with several, each says what its runs share."""
    blocks = []
    for g in sorted(set(group)):
        idx = [i for i in range(len(scores)) if group[i] == g]
        order = sorted(idx, key=lambda i: (rk[i] is None, rk[i] or 0))
        head = "Ranking (equal scores share a rank):"
        if len(set(group)) > 1:
            s = scores[idx[0]]
            params = ", ".join(f"{k} {_fmt(v)}" for k, v in rule_params(s))
            head = (f"Ranking {g + 1} (equal scores share a rank; runs under {s.get('rules')}"
                    f"{' (' + params + ')' if params else ''}, ground truth "
                    f"{s.get('ground_truth')} (sha256 {str(s.get('ground_truth_sha256'))[:12]}, "
                    f"{s.get('images_total')} images), holdout {str(s.get('holdout_id'))[:12]}; "
                    f"runs that differ in any of these are ranked apart):")
        lines = [head]
        for i in order:
            lines.append(f"  {rk[i] if rk[i] else '-':>4}  score {_fmt(scores[i].get('score')):>10}  "
                         f"top-1 {_pct(scores[i].get('top1')):>9}  {scores[i].get('run')}")
        blocks.append("\n".join(lines))
    return blocks


def format_csv(scores: list[dict]) -> str:
    """Leaderboard: one row per run, best first; equal scores share a rank; runs without a score
    last with an empty rank. Runs that are not :func:`comparable` are ranked apart, each group
    numbered in the ``group`` column. Columns: rank, group, the common fields, then each rule's
    own fields."""
    rk, group = grouped_ranks(scores)
    extra: list[str] = []
    for s in scores:
        for k in s:
            if k not in _SKIP and k not in extra:
                extra.append(k)
    cols = ["rank", "group", *COMMON, *extra, "warnings"]
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(cols)
    order = sorted(range(len(scores)),
                   key=lambda i: (group[i], rk[i] is None, rk[i] or 0, str(scores[i].get("run"))))
    for i in order:
        s = scores[i]
        row = [rk[i] if rk[i] is not None else "", group[i] + 1]
        for c in cols[2:]:
            v = s.get(c)
            if c == "warnings":
                v = " | ".join(v or [])
            row.append("" if v is None else (repr(v) if isinstance(v, float) else v))
        w.writerow(row)
    return buf.getvalue()
