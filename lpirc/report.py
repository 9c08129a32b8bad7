"""``lpirc report``: one self-contained HTML page of one run, or several compared.

    from lpirc.report import write_report
    write_report(["runs/a", "runs/b"], "report.html")

The page holds everything it shows: figures as inline SVG (matplotlib, :mod:`lpirc.report_figures`),
CSS inline, no script, no font file, no link or image outside it, so it opens offline in any
current browser and makes no request. It prints on A4/Letter (``@media print``: one run per
page, figures never split). Text is autoescaped (Jinja2): a log's error strings or file names
cannot inject markup.
"""

from __future__ import annotations

import datetime as dt
import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np

import scoring
from lpirc import __version__
from lpirc.energy import read_power_log
from lpirc.errors import InputError
from lpirc.summary import format_run_summary

REPORT = "report.html"
MAX_FAILED_ROWS = 100  # failed images listed one by one; the rest are counted by reason


@dataclass
class RunData:
    """One run as the report draws it: the log's columns (log order), the manifest, its score.

    Arrays are (n,) over the log's answers: t_s (s since start, nan unknown), latency_ms and
    inference_ms (nan unknown), worker (-1 unknown), error (bool), late (bool, logged late).
    ``pos`` is each answer's ground-truth row (-1: none), ``keep`` the answers that count.
    """

    path: Path
    name: str
    manifest: dict
    score: dict | None
    images: list[str]
    pred: np.ndarray  # (n,) top-1 answer (-2: none)
    error: np.ndarray
    errors: list
    t_s: np.ndarray
    latency_ms: np.ndarray
    inference_ms: np.ndarray
    late: np.ndarray
    worker: np.ndarray
    labels: np.ndarray | None  # (n,) true class per answer, -1 where not in the ground truth
    keep: np.ndarray
    power: np.ndarray | None = None  # (m, 2) seconds since start, watts
    notes: list[str] = field(default_factory=list)

    # -- figures' questions ------------------------------------------------------------------
    @property
    def images_total(self) -> int | None:
        if self.score:
            return self.score["images_total"]
        return (self.manifest.get("holdout") or {}).get("image_count")

    def _inference_clock(self) -> bool:
        return bool(self.score) and self.score.get("budget_s") is not None

    def race_xlabel(self) -> str:
        if self._inference_clock():
            return "summed inference time (s), answers in time order"
        return "wall time since the run started (s)"

    def deadline_s(self) -> float | None:
        s = self.score or {}
        for key in ("budget_s", "time_limit_s"):
            if _finite(s.get(key)):
                return float(s[key])
        b = self.manifest.get("budget") or {}
        return float(b["time_limit_s"]) if _finite(b.get("time_limit_s")) else None

    def _race_x(self) -> tuple[np.ndarray, np.ndarray] | None:
        """(order of the counted answers by time, their x), or None without times."""
        k = self.keep
        t = self.t_s[k]
        if not np.isfinite(t).any():
            return None
        order = np.argsort(t, kind="stable")
        if self._inference_clock():
            x = np.cumsum(np.nan_to_num(self.inference_ms[k][order], nan=0.0)) / 1000.0
        else:
            x = t[order]
        return order, x

    def _late(self, order: np.ndarray, x: np.ndarray) -> np.ndarray:
        """Late, in race order: logged late by lpirc run, or past the rule set's deadline."""
        deadline = self.deadline_s()
        late = self.late[self.keep[order]]
        return late | (x > deadline) if deadline is not None else late

    def race_curves(self):
        """(x, cumulative correct in time, cumulative answered) over the counted answers by time."""
        got = self._race_x()
        if got is None:
            return None, None, None
        order, x = got
        k = self.keep[order]
        right = (self.pred[k] == self.labels[k]) & ~self.error[k] & ~self._late(order, x) \
            if self.labels is not None else np.zeros(len(k), dtype=bool)
        return x, np.cumsum(right), np.arange(1, len(k) + 1)

    def late_points(self):
        """(x, cumulative answered) of the late answers, or None without times."""
        got = self._race_x()
        if got is None:
            return None
        order, x = got
        late = self._late(order, x)
        return x[late], np.nonzero(late)[0] + 1

    def top1(self) -> float | None:
        return (self.score or {}).get("top1")

    def mean_inference_ms(self) -> float | None:
        v = self.inference_ms[np.isfinite(self.inference_ms) & ~self.error]
        return float(v.mean()) if v.size else None

    def energy_wh(self) -> float | None:
        e = self.manifest.get("energy") or {}
        return float(e["wh"]) if _finite(e.get("wh")) else None

    def energy_label(self) -> str:
        e = self.manifest.get("energy") or {}
        return (e.get("source") or "unknown") if self.energy_wh() is not None else "absent"

    def energy_text(self) -> str:
        wh = self.energy_wh()
        return "energy absent" if wh is None else f"{wh:.4g} Wh ({self.energy_label()})"


def _finite(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


# --- loading ----------------------------------------------------------------------------------


def load_run(path, ground_truth=None, rules: str | None = None, labels=None) -> RunData:
    """Read a run folder (or a bare results.jsonl) and score it with per-class figures.

    Args:
        path: run folder (results.jsonl + manifest.json) or a result log.
        ground_truth: CSV; None = the one the manifest names.
        rules: rule set; None = the run's own (its settings), else lpirc-onsite.
        labels: class names file (1000 or 1001 lines) for the per-class view.
    Raises:
        InputError: no such folder or log, a malformed log, manifest or labels file. A run
            that cannot be scored (no ground truth) is still reported, with a note.
    """
    p = Path(path)
    if p.is_dir():
        log_path, man_path = p / "results.jsonl", p / "manifest.json"
    elif p.is_file():
        log_path, man_path = p, None
    else:
        raise InputError(f"{p}: no such run folder or result log")
    log = scoring.read_log(log_path)
    manifest = _read_manifest(man_path) if man_path is not None and man_path.is_file() else {}
    if labels is not None:
        scoring.read_label_names(labels)
    settings = manifest.get("settings") if isinstance(manifest.get("settings"), dict) else {}
    notes: list[str] = []
    score = None
    try:
        score = scoring.score_path(p, ground_truth, rules or settings.get("rules") or scoring.DEFAULT_RULES,
                                   per_class=True, labels=labels, log=log)
    except scoring.ScoringError as e:
        notes.append(f"not scored: {e}")
    n = len(log)
    true_cls, keep = None, np.arange(n)
    if score is not None:
        gt = scoring.read_ground_truth(score["ground_truth"])
        pos, keep = scoring.match_answers(log.images, list(gt))
        gt_labels = np.fromiter(gt.values(), dtype=np.int64, count=len(gt))
        true_cls = np.where(pos >= 0, gt_labels[np.maximum(pos, 0)], -1)
    run = RunData(path=p, name=p.name if p.is_dir() else p.stem, manifest=manifest, score=score,
                  images=log.images, pred=log.top5[:, 0] if n else np.zeros(0, np.int64),
                  error=log.error, errors=log.errors, t_s=log.t_s, latency_ms=log.latency_ms,
                  inference_ms=log.inference_ms, late=log.late, worker=_workers(log_path, n),
                  labels=true_cls, keep=keep, notes=notes)
    run.power = _power(run)
    return run


def _read_manifest(path: Path) -> dict:
    return scoring.read_manifest(path)


_WORKER = re.compile(rb'"worker"\s*:\s*(-?\d+|null)')


def _workers(log_path: Path, n: int) -> np.ndarray:
    """The ``worker`` of each answer (the scorer does not read it): -1 where unknown. One regex
    pass over the log (a third JSON parse of it would cost more than all the figures); a log
    where some line has no single worker field is read line by line."""
    out = np.full(n, -1, dtype=np.int64)
    try:
        data = log_path.read_bytes()
    except OSError:
        return out
    lines = [ln for ln in data.split(b"\n") if ln.strip()][:n]
    found = _WORKER.findall(data)
    if len(found) == len(lines) == n:  # (a name cannot fake one: JSON escapes its quotes)
        vals = [-1 if f == b"null" else int(f) for f in found]
        return np.asarray(vals, dtype=np.int64)
    for i, ln in enumerate(lines):
        m = _WORKER.findall(ln)
        if len(m) == 1 and m[0] != b"null":
            out[i] = int(m[0])
    return out


def _utc_seconds(s) -> float | None:
    if not isinstance(s, str):
        return None
    try:
        return dt.datetime.fromisoformat(s.replace("Z", "+00:00")).timestamp()
    except ValueError:
        return None


def _power(run: RunData) -> np.ndarray | None:
    """Power readings over the run: the meter log the run integrated (``--power-log``), or a
    ``power.csv`` (timestamp,watts) in the run folder; (m, 2) seconds since start, watts."""
    settings = run.manifest.get("settings") or {}
    cands = [Path(settings["power_log"])] if settings.get("power_log") else []
    if run.path.is_dir():
        cands.append(run.path / "power.csv")
    start = _utc_seconds(run.manifest.get("start_utc"))
    end = _utc_seconds(run.manifest.get("end_utc"))
    for c in cands:
        if not c.is_file():
            if c != run.path / "power.csv":
                run.notes.append(f"power log {c} is not here now: power over time not drawn")
            continue
        try:
            samples = read_power_log(c)
        except InputError as e:
            run.notes.append(f"power readings not drawn: {e}")
            continue
        if start is None:
            run.notes.append(f"power readings {c.name} not drawn: the manifest has no start time")
            continue
        t = samples[:, 0] - start
        stop = (end - start) if end is not None else t.max()
        inside = (t >= -0.05 * stop) & (t <= stop * 1.05)
        if inside.sum() >= 2:
            return np.column_stack([t[inside], samples[inside, 1]])
        run.notes.append(f"power readings {c.name} do not cover the run: not drawn")
    return None


# --- the page ---------------------------------------------------------------------------------


def _num(v, unit: str = "", digits: int = 4) -> str:
    if not _finite(v):
        return "n/a"
    s = f"{v:.{digits}g}" if abs(v) >= 1e-3 or v == 0 else f"{v:.3e}"
    return f"{s} {unit}".rstrip()


def _pct(v) -> str:
    return f"{100 * v:.2f} %" if _finite(v) else "n/a"


def _figure(fid: str, title: str, made, why_not: str) -> dict:
    if made is None:
        return {"id": fid, "title": title, "missing": why_not}
    svg, caption = made
    return {"id": fid, "title": title, "svg": svg, "caption": caption}


#: what a run's status means, said at the top of its section (a complete run says nothing)
STATUS_NOTES = {
    "interrupted": "interrupted: Ctrl-C or SIGTERM stopped this run before its holdout was done; "
                   "the answers logged before it stopped are the ones counted",
    "budget_exhausted": "out of time: the budget ran out before every image was answered; answers "
                        "after it do not count",
    "failed": "failed: the run stopped on an error (see the manifest's error below)",
    "running": "unfinished: the manifest still says running (the run was killed, or is still "
               "going); the log holds what it wrote",
}


STATUS_WORDS = {"running": "unfinished"}


def status_note(run: RunData) -> str | None:
    """One line on a run that did not complete (None for a complete run or a bare log)."""
    status = run.manifest.get("status")
    if status in (None, "complete"):
        return None
    note = STATUS_NOTES.get(status, f"status {status}")
    err = run.manifest.get("error") or {}
    return note + (f" ({err.get('message')})" if status == "failed" and err.get("message") else "")


def image_counts(run: RunData) -> dict[str, Any]:
    """answered, failed, unanswered, late, total and where they come from: the score when the
    run was scored, else counted in the result log against the holdout's image count from the
    manifest (unanswered None when that is unknown)."""
    s = run.score or {}
    if "images_answered" in s:
        return {k: s.get(f"images_{k}") for k in ("answered", "failed", "unanswered", "late",
                                                  "total")} | {"source": "scored"}
    total = run.images_total
    seen = len(set(run.images))
    failed = int(np.count_nonzero(run.error))
    return {"answered": len(run.images) - failed, "failed": failed, "late": int(np.count_nonzero(run.late)),
            "unanswered": max(0, total - seen) if isinstance(total, int) else None, "total": total,
            "source": "counted in the result log (not scored)"}


def key_figures(run: RunData) -> list[tuple[str, str, str]]:
    """(what, value, how it was obtained) for the top of a run's section."""
    s = run.score or {}
    src = s.get("source") or {}
    rule = scoring.RULES.get(s.get("rules"))
    e = run.manifest.get("energy") or {}
    c = image_counts(run)
    rows = [
        ("rule set", s.get("rules") or "not scored", rule.describe(s) if rule else "; ".join(run.notes)),
        ("score", _num(s.get("score")), f"{rule.source}" if rule else ""),
        ("top-1", _pct(s.get("top1")), src.get("top1", "")),
        ("top-5", _pct(s.get("top5")), src.get("top5", "")),
        ("images", f"{c['answered']} answered of {_known(c['total'])}",
         f"{c['failed']} failed, {_known(c['unanswered'])} unanswered, {c['late']} late"
         + ("" if c["source"] == "scored" else f"; {c['source']}")),
        ("wall time", _num(s.get("wall_time_s", run.manifest.get("wall_time_s")), "s"),
         src.get("wall_time_s", "measured by lpirc run")),
        ("inference time", _num(s.get("inference_time_s", run.manifest.get("inference_time_s")), "s"),
         src.get("inference_time_s", "summed model invoke time")),
        ("energy", _num(run.energy_wh(), "Wh"), f"{run.energy_label()}: {e.get('method') or 'no figure'}"),
    ]
    return rows


def _known(v) -> str:
    return "?" if v is None else str(v)


def manifest_rows(m: dict) -> list[tuple[str, str]]:
    """The manifest's facts a reader checks first, as (label, text)."""
    if not m:
        return [("manifest", "none (a bare result log): no model, runtime or machine facts")]
    model, hold = m.get("model") or {}, m.get("holdout") or {}
    rt, d, mach = m.get("runtime") or {}, m.get("delegate") or {}, m.get("machine") or {}
    st = m.get("settings") or {}
    inp = model.get("input") or {}
    keys = ("workers", "threads", "batch", "decode_threads", "decode", "crop_fraction", "resize",
            "clock", "time_limit_s", "ms_per_image", "rules", "seed")
    mem = mach.get("memory_bytes")
    return [
        ("model", f"{model.get('path')} ({model.get('size_bytes')} bytes)"),
        ("model sha256", str(model.get("sha256"))),
        ("model input", f"{inp.get('shape')} {inp.get('dtype')}, {model.get('num_classes')} classes"
         if inp else "not reported"),
        ("runtime", f"{rt.get('name')} {rt.get('version')}" if rt else "not reported"),
        ("delegate", f"asked {d.get('requested')}, ran {d.get('ran')}" + (f" ({d['note']})" if d.get("note") else "")),
        ("settings", ", ".join(f"{k} {st[k]}" for k in keys if k in st)),
        ("machine", f"{mach.get('cpu')}, {mach.get('cores_logical')} logical cores"
         + (f", {mem / 2**30:.1f} GiB" if _finite(mem) else "") + f", {mach.get('os')}, Python {mach.get('python')}"),
        ("holdout", f"{hold.get('path')} ({hold.get('image_count')} images, order seed {hold.get('order_seed')})"),
        ("holdout sha256", f"{hold.get('files_sha256')} (of the ordered file list)"),
        ("ground truth", str(hold.get("ground_truth"))),
        ("lpirc", str(m.get("lpirc_version"))),
        ("started / ended", f"{m.get('start_utc')} / {m.get('end_utc')} (UTC)"),
        ("status", f"{m.get('status')}; first answer {m.get('first_answer_s')} s after start"),
    ] + [("note", n) for n in m.get("notes") or []]


def failed_table(run: RunData) -> dict:
    """Failed images: counts by reason, and the first MAX_FAILED_ROWS one by one."""
    idx = np.nonzero(run.error)[0]
    by_reason: dict[str, list[str]] = {}
    for i in idx:
        by_reason.setdefault(str(run.errors[i]), []).append(run.images[i])
    reasons = sorted(by_reason.items(), key=lambda kv: (-len(kv[1]), kv[0]))
    rows = [(run.images[i], str(run.errors[i]), _num(run.t_s[i], "s"),
             str(run.worker[i]) if run.worker[i] >= 0 else "?") for i in idx[:MAX_FAILED_ROWS]]
    return {"count": len(idx), "reasons": [(r, len(v), ", ".join(v[:3])) for r, v in reasons],
            "rows": rows, "more": max(0, len(idx) - MAX_FAILED_ROWS)}


def summary_text(run: RunData) -> str:
    """The summary exactly as `lpirc run` prints it (its header needs a manifest)."""
    # lpirc run's score has no per-class part: the report draws that below
    score = {k: v for k, v in run.score.items() if k not in ("per_class", "confused", "label_names")} \
        if run.score else None
    plain = scoring.format_table([score]) if score else "\n".join(run.notes)
    if not run.manifest.get("model"):
        return plain
    outcome = SimpleNamespace(out_dir=run.path, status=run.manifest.get("status"), manifest=run.manifest,
                              notes=tuple(run.manifest.get("notes") or ()), score=score)
    try:
        return format_run_summary(outcome)
    except (KeyError, TypeError, AttributeError):  # an older or hand-written manifest
        return plain


def run_section(run: RunData) -> dict[str, Any]:
    from lpirc import report_figures as rf

    no_gt = "no ground truth: give --ground-truth" if run.score is None else \
        "no wrong answers (failed and unanswered images are not drawn here)"
    no_times = "no answers in the log" if not len(run.images) else \
        "no answer times in the log (a referee's result file has none)"
    power_why = (f"no power readings over time: the energy is {run.energy_label()}"
                 f" ({(run.manifest.get('energy') or {}).get('method') or 'no figure'}); "
                 "run with --power-log for a meter's readings")
    return {
        "name": run.name, "path": str(run.path), "key": key_figures(run),
        "summary": summary_text(run), "manifest": manifest_rows(run.manifest),
        "manifest_json": json.dumps(run.manifest, indent=2),
        "notes": [n for n in (status_note(run), *run.notes) if n],
        "figures": [
            _figure("race", "Correct answers over time, against the budget", rf.race([run]), no_times),
            _figure("throughput", "Throughput per worker", rf.throughput([run]), no_times),
            _figure("latency", "Latency and inference time", rf.latency([run]),
                    no_times.replace("answer times", "per-image times")),
            _figure("classes", "Worst classes", rf.worst_classes(run), "not scored: " + no_gt
                    if run.score is None else "no classes in the ground truth"),
            _figure("confusion", "Most frequent mistakes", rf.confusion(run), no_gt),
            _figure("power", "Power over time", rf.power([run]), power_why),
        ],
        "confused": (run.score or {}).get("confused") or [],
        "failed": failed_table(run),
    }


def compare_section(runs: list[RunData]) -> dict[str, Any]:
    """The comparison table (places only among runs on one holdout under one rule set) and the
    overlaid figures."""
    from lpirc import report_figures as rf

    scores = [r.score or {} for r in runs]
    why_not = _not_comparable(runs, scores)
    places = scoring.ranks(scores) if not why_not else [None] * len(runs)
    rows = []
    for r, s, place in zip(runs, scores, places):
        c = image_counts(r)
        hold = (r.manifest.get("holdout") or {}).get("files_sha256")
        model = (r.manifest.get("model") or {}).get("sha256")
        status = r.manifest.get("status")
        rows.append([str(place) if place else "-",
                     r.name + (f" ({STATUS_WORDS.get(status, status)})"  # out of time: the usual end
                               if status not in (None, "complete", "budget_exhausted") else ""),
                     s.get("rules") or "not scored", _num(s.get("score")),
                     _pct(s.get("top1")), _pct(s.get("top5")), _known(c["answered"]),
                     _known(c["failed"]), _known(c["unanswered"]),
                     _known(c["late"]), _num(s.get("wall_time_s"), "s"),
                     _num(s.get("inference_time_s"), "s"), _num(r.mean_inference_ms(), "ms"),
                     _num(r.energy_wh(), "Wh") + f" ({r.energy_label()})",
                     (model or "?")[:12], (hold or "?")[:12]])
    note = None if not why_not else (
        f"Not ranked: {'; '.join(why_not)}. Their figures are shown side by side, not ranked.")
    return {
        "header": ["place", "run", "rules", "score", "top-1", "top-5", "answered", "failed",
                   "unanswered", "late", "wall", "inference", "mean inference", "energy",
                   "model sha256", "holdout sha256"],
        "rows": rows, "note": note,
        "figures": [
            _figure("race", "Correct answers over time (overlaid)", rf.race(runs), "no answer times"),
            _figure("throughput", "Throughput (overlaid)", rf.throughput(runs), "no answer times"),
            _figure("latency", "Latency and inference time (overlaid)", rf.latency(runs), "no per-image times"),
            _figure("accuracy", "Accuracy against time and energy", rf.accuracy_vs_cost(runs),
                    "no run was scored"),
            _figure("power", "Power over time (overlaid)", rf.power(runs), "no run has power readings over time"),
        ],
    }


def _not_comparable(runs: list[RunData], scores: list[dict]) -> list[str]:
    """Why these runs cannot be ranked together (empty: they can): a run without a holdout
    record or a score, different holdouts, rule sets or budgets (``scoring.rule_params``), each
    value with the runs that have it."""
    # the components of scoring.groups.comparable, the rule lpirc score and the standings use
    holds = [s.get("holdout_id") or scoring.groups.holdout_id(r.manifest.get("holdout"))
             for r, s in zip(runs, scores)]
    gts = [s.get("ground_truth_sha256") for s in scores]
    rules = [s.get("rules") for s in scores]
    budgets = [", ".join(f"{k} {v:g}" for k, v in scoring.rule_params(s)) or None if s else None for s in scores]
    why = []
    for what, values in (("no holdout record", [h is None for h in holds]), ("not scored", [x is None for x in rules])):
        if any(values):
            why.append(f"{what}: " + ", ".join(r.name for r, v in zip(runs, values) if v))
    for what, values in (("different holdouts (sha256 of the image list)", [h and h[:12] for h in holds]),
                         ("different ground truths (sha256 of the file)", [g and g[:12] for g in gts]),
                         ("different rule sets", rules), ("different budgets", budgets)):
        groups: dict[str, list[str]] = {}
        for r, v in zip(runs, values):
            if v:
                groups.setdefault(v, []).append(r.name)
        if len(groups) > 1:
            why.append(f"{what}: " + "; ".join(f"{v} ({', '.join(n)})" for v, n in groups.items()))
            if what == "different rule sets":
                break  # budgets only mean something under one rule set
    return why


def render(runs: list[RunData], title: str | None = None) -> str:
    """The whole page as one HTML string."""
    import jinja2

    env = jinja2.Environment(loader=jinja2.PackageLoader("lpirc", "templates"),
                             autoescape=True, trim_blocks=True, lstrip_blocks=True)
    names = [r.name for r in runs]
    for i, r in enumerate(runs):  # two runs called alike must still be told apart
        if names.count(r.name) > 1:
            r.name = f"{r.name} [{i + 1}]"
    page = {
        "title": title or (f"lpirc report: {runs[0].name}" if len(runs) == 1 else f"lpirc report: {len(runs)} runs"),
        "generated": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "version": __version__,
        "compare": compare_section(runs) if len(runs) > 1 else None,
        "runs": [run_section(r) for r in runs],
    }
    return env.get_template("report.html.j2").render(page=page, css=env.get_template("page.css").render())


def write_report(paths, out, ground_truth=None, rules: str | None = None, labels=None,
                 title: str | None = None) -> Path:
    """Load, score and draw the runs at ``paths``; write the page to ``out`` (atomically).

    Returns:
        the path written.
    Raises:
        InputError: a run that cannot be read (see :func:`load_run`) or an unwritable ``out``.
    """
    if not paths:
        raise InputError("report: no run given")
    runs = [load_run(p, ground_truth, rules, labels) for p in paths]
    html = render(runs, title)
    out = Path(out)
    tmp = out.with_name(out.name + ".tmp")
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp.write_text(html, encoding="utf-8")
        tmp.replace(out)
    except OSError as e:
        raise InputError(f"{out}: cannot write the report ({e.strerror or e})") from None
    return out
