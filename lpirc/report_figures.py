"""The pictures of ``lpirc report``: matplotlib figures rendered to inline SVG strings.

matplotlib is imported here only (this module is imported lazily by lpirc.report), through its
object API (``matplotlib.figure.Figure``), never pyplot: no GUI backend, no global figure state.
Text is kept as SVG text (``svg.fonttype: none``) so a page stays small and uses the browser's
own sans-serif font; nothing refers outside the page. Each function takes
:class:`lpirc.report.RunData` objects and returns ``(svg, caption)``, or None when the runs have
nothing to draw (the page then says why).
"""

from __future__ import annotations

import io
import math
import re
import textwrap

import matplotlib
import numpy as np
from matplotlib.collections import Collection
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.patches import Patch
from matplotlib.text import Text
from matplotlib.ticker import (FuncFormatter, LogLocator, MaxNLocator, NullFormatter,
                               ScalarFormatter)

MAX_POINTS = 1500  # points per curve: a 20,000-answer run is drawn at this resolution
COLORS = ("#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#17becf", "#8c564b", "#e377c2")
_RC = {"svg.fonttype": "none", "font.size": 9, "axes.spines.top": False, "axes.spines.right": False,
       "axes.grid": True, "grid.alpha": 0.3, "font.family": "sans-serif",
       "text.parse_math": False}  # a name is plain text: "cost$5$each" stays as written
#: labels matplotlib gives artists that were not named (never shown in a legend)
_AUTO_LABEL = re.compile(r"_child\d+|_nolegend_")
_counter = iter(range(1, 1 << 30))


def to_svg(fig: Figure) -> str:
    """The figure as an inline ``<svg>`` element: no XML prolog, DOCTYPE or metadata, ids made
    unique within the page (a salt per figure). Drawn once: margins are set in :func:`_fig`, not
    by ``bbox_inches="tight"`` (which draws everything twice)."""
    buf = io.StringIO()
    for t in fig.findobj(Text):  # every name plain text, never mathtext ("$...$" crashed it)
        t.set_parse_math(False)
    with matplotlib.rc_context({**_RC, "svg.hashsalt": f"lpirc{next(_counter)}"}):
        fig.savefig(buf, format="svg", metadata={"Date": None})
    s = buf.getvalue()
    s = s[s.index("<svg"):]
    s = re.sub(r"<metadata>.*?</metadata>", "", s, flags=re.S)
    return s


def _fig(w: float = 7.5, h: float = 3.2, ncols: int = 1, left: float = 0.7, bottom: float = 0.5,
         top: float = 0.3, right: float = 0.3, gap: float = 0.8) -> tuple[Figure, list]:
    """A figure ``w`` x ``h`` inches with ``ncols`` axes; margins and the gap between axes in
    inches (room for tick labels and titles; on the right, half of a 5-character tick label
    centred on the axis' last tick, e.g. "0.175", which 0.15 in clipped)."""
    with matplotlib.rc_context(_RC):
        fig = Figure(figsize=(w, h))
        axes = [fig.add_subplot(1, ncols, i + 1) for i in range(ncols)]
    fig.subplots_adjust(left=left / w, right=1 - right / w, bottom=bottom / h, top=1 - top / h,
                        wspace=gap * ncols / max(w - left - right - gap * (ncols - 1), 1.0))
    return fig, axes


def _legend(ax, **kw):
    """``ax.legend`` over every artist given a label, those whose label starts with "_" too
    (matplotlib leaves those out: a run named "_x" vanished from the legends)."""
    handles = [a for a in ax.get_children() if isinstance(a, (Line2D, Patch, Collection))
               and a.get_label() and not _AUTO_LABEL.fullmatch(a.get_label())
               and a is not ax.patch and a not in ax.spines.values()]
    if not handles:
        return None
    return ax.legend(handles, [h.get_label() for h in handles], **kw)


def _text_in(labels, per_char: float = 0.06, pad: float = 0.25) -> float:
    """Inches a column of 7-pt labels needs: ~0.06 in a character, what the widest of the
    browsers' sans-serif fonts (DejaVu Sans) takes on average (0.052 clipped a 44-character
    class name at the figure's edge)."""
    return pad + per_char * max((len(x) for x in labels), default=0)


def _thin(x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """At most MAX_POINTS points of a monotone curve, the last one kept."""
    if len(x) <= MAX_POINTS:
        return x, y
    idx = np.unique(np.linspace(0, len(x) - 1, MAX_POINTS).astype(int))
    return x[idx], y[idx]


def _color(i: int) -> str:
    return COLORS[i % len(COLORS)]


# --- the race: correct answers over time against the budget -----------------------------------


def race(runs: list) -> tuple[str, str] | None:
    """Correct answers (as the rule set counts them) over time, the deadline, the images never
    answered; several runs as fractions of their holdout."""
    several = len(runs) > 1
    rows = _legend_rows([r.name for r in runs] + ["late answers (do not count)"]) if several else 1
    # the legend goes above the axes: inside, it covered a slow run's late answers
    fig, (ax,) = _fig(7.5, 3.6 + 0.17 * rows, top=0.3 + 0.17 * rows)
    drawn = late_drawn = to_scale = False
    notes = []
    xmax = 0.0
    for i, r in enumerate(runs):
        x, correct, answered = r.race_curves()
        if x is None:
            notes.append(f"{r.name}: no answer times in the log")
            continue
        drawn = True
        total = r.images_total or max(1, len(x))
        scale = 100.0 / total if several else 1.0
        xs, ys = _thin(np.concatenate(([0.0], x)), np.concatenate(([0], correct)) * scale)
        label = r.name if several else "correct top-1 (counted)"
        ax.step(xs, ys, where="post", color=_color(i), lw=1.6, label=label)
        xa, ya = _thin(np.concatenate(([0.0], x)), np.concatenate(([0], answered)) * scale)
        ax.step(xa, ya, where="post", color=_color(i), lw=0.9, ls="--",
                label=None if several else "answered (right or wrong)")  # several: one entry a run
        late = r.late_points()
        if late is not None and len(late[0]):
            lx, ly = _thin(late[0], late[1])
            ax.plot(lx, ly * scale, "x", color=_color(i) if several else "#d62728", ms=4,
                    label="late answers (do not count)" if not late_drawn else None)
            late_drawn = True
        if not several:
            _mark_unanswered(ax, x, answered, total, _color(i))
        reach, off = _mark_deadline(ax, r, x, i, several)
        to_scale = to_scale or _deadline_reach(r, x) is not None
        xmax = max(xmax, reach)
        if off:
            notes.append(off)
    if not drawn:
        return None
    ax.set_xlim(0, xmax or 1.0)
    ax.set_xlabel(_race_xlabel(runs))
    ax.set_ylabel("% of holdout images" if several else "images")
    ax.set_ylim(bottom=0, top=ax.get_ylim()[1] * 1.06)  # room for "holdout: N images"
    _legend(ax, loc="lower left", bbox_to_anchor=(0.0, 1.01), fontsize=7, frameon=False,
            ncols=_legend_cols([r.name for r in runs] + ["late answers (do not count)"])
            if several else 3, borderaxespad=0.0, columnspacing=1.2, handlelength=1.6)
    cap = "Correct top-1 answers over time (solid), all answers (dashed). " + _race_time_caption(runs)
    if several:
        cap += (" Each run's deadline is a vertical dash-dot line in its colour, its late answers "
                "(x) too; answers after a deadline do not count.")
    else:
        cap += (" The red line is the deadline; answers after it do not count." if to_scale else
                " The deadline is off the chart (its note is in red); answers after it would not count."
                if runs[0].deadline_s() is not None else " No deadline is recorded for this run.")
        cap += " The grey band is the images never answered: they count as wrong."
    return to_svg(fig), cap + (" " + "; ".join(notes) if notes else "")


def _legend_cols(labels: list[str], width_in: float = 6.5) -> int:
    """Columns of 7-pt legend entries that fit ``width_in`` inches side by side."""
    widest = 0.45 + 0.06 * max((len(x) for x in labels), default=0)
    return max(1, min(len(labels), int(width_in // widest)))


def _legend_rows(labels: list[str]) -> int:
    return -(-len(labels) // _legend_cols(labels))


def _race_clocks(runs: list) -> dict[str, list[str]]:
    """{x-axis label: names of the runs raced on that clock}, in the runs' order."""
    out: dict[str, list[str]] = {}
    for r in runs:
        out.setdefault(r.race_xlabel(), []).append(r.name)
    return out


def _race_xlabel(runs: list) -> str:
    """The race's x label: the clock, or with several clocks which runs are on which (the most
    common clock last, as 'the others' when naming them would not fit), wrapped to the axis."""
    clocks = _race_clocks(runs)
    if len(clocks) == 1:
        return next(iter(clocks))
    parts = sorted(clocks.items(), key=lambda cn: len(cn[1]))
    names = [", ".join(n) for _, n in parts]
    if sum(map(len, names)) > 60:
        names[-1] = "the others"
    text = "time (s): " + "; ".join(f"{c.split(' (s)')[0]} for {n}" for (c, _), n in zip(parts, names))
    return "\n".join(textwrap.wrap(text, 100))


def _race_time_caption(runs: list) -> str:
    """Which clock each run is raced on, and where its times come from."""
    how = {"wall time since the run started (s)": "wall time since the run started, measured by lpirc run "
                                                  "(t_s of each answer)",
           "summed inference time (s), answers in time order": "summed inference time, answers in the "
                                                                 "order they were logged, measured by lpirc "
                                                                 "run (inference_ms of each answer)"}
    clocks = _race_clocks(runs)
    if len(clocks) == 1:
        return f"Time is {how[next(iter(clocks))]}."
    return ("The runs are raced on different clocks, as their rule sets count time: "
            + "; ".join(f"{', '.join(n)}: {how[c]}" for c, n in clocks.items()) + ".")


def _mark_unanswered(ax, x: np.ndarray, answered: np.ndarray, total: int, color: str) -> None:
    ax.axhline(total, color="#555", lw=0.8, ls=":")
    end = x[-1] if len(x) else 0.0
    got = int(answered[-1]) if len(answered) else 0
    ax.text(0, total, f" holdout: {total} images", va="bottom", ha="left", fontsize=7, color="#555")
    missing = total - got
    if missing > 0:
        ax.axhspan(got, total, color="#999", alpha=0.25, lw=0)
        thin = missing < 0.08 * total  # a narrow band: the words go under it, not on it
        # at the band's left end: every curve stays below the band, and the deadline's label
        # (at the foot of its line) and the late answers (past it) are to the right
        ax.text(0.01 * end, got if thin else (got + total) / 2, f" {missing} never answered ",
                va="top" if thin else "center", ha="left", fontsize=8, color="#333",
                bbox={"facecolor": "white", "edgecolor": "none", "alpha": 0.7, "pad": 0.5})


def _deadline_reach(r, x: np.ndarray) -> float | None:
    """How far the x axis reaches when the run's deadline is drawn to scale; None when it is
    not (no deadline, or the run used under a quarter of it)."""
    deadline = r.deadline_s()
    end = float(x[-1]) if len(x) else 0.0
    if deadline is None or end < 0.25 * deadline:
        return None
    return max(end, deadline) * 1.03


def _mark_deadline(ax, r, x: np.ndarray, i: int, several: bool) -> tuple[float, str | None]:
    """Draw the run's deadline. Returns (how far the x axis must reach, a caption note where
    the deadline is off the chart and several runs share it)."""
    deadline = r.deadline_s()
    end = float(x[-1]) if len(x) else 0.0
    if deadline is None:
        return end * 1.05, None
    if end >= 0.25 * deadline:  # the budget fits on the axis: draw it to scale
        color = _color(i) if several else "#d62728"
        ax.axvline(deadline, color=color, lw=1.2, ls="-." if several else "-")
        # at the foot of the line: the curves there are high (they rise to the deadline) and
        # the images never answered are a band at the top
        ax.text(deadline, 0.03 + 0.07 * i, f" {r.name + ': ' if several else ''}deadline {deadline:g} s ",
                transform=ax.get_xaxis_transform(), color=color, fontsize=7,
                ha="right" if end > deadline else "left", va="bottom",
                bbox={"facecolor": "white", "edgecolor": "none", "alpha": 0.8, "pad": 0.5})
        return _deadline_reach(r, x), None
    if several:  # a sliver of the budget: the deadline is off the chart
        return end * 1.1, f"{r.name}: deadline at {deadline:g} s, off the chart (the run ended at {end:.3g} s)"
    used = 100.0 * end / deadline if deadline else 0.0
    ax.annotate(f"deadline at {deadline:g} s, off the chart \u2192 "
                f"(the run ended at {end:.3g} s: {used:.2g} % of the budget)",
                xy=(0.02, 0.88), xycoords="axes fraction", ha="left", va="top", fontsize=7, color="#d62728")
    return end * 1.1, None


# --- throughput per worker --------------------------------------------------------------------


def _bins(span: float, n: int) -> np.ndarray:
    nb = int(min(80, max(8, n // 25)))
    return np.linspace(0.0, max(span, 1e-6), nb + 1)


def worker_rates(t_s: np.ndarray, worker: np.ndarray, edges: np.ndarray) -> dict[int, np.ndarray]:
    """Answers per second of each worker in the bins ``edges`` (s since the run started).

    Answers reach the log in batches (a worker's chunk of images arrives at once, with one t_s),
    so counting answers by their t_s alone makes a bin that no batch happens to land in look
    like a stall. Each batch is spread instead over the time since that worker's previous batch
    (the time it was being computed in): the worker's answers so far, interpolated linearly
    between its log times, differenced at the bin edges. A worker's first batch is spread over
    the typical gap between its batches before it (not from 0, so a replacement worker started
    late does not look busy from the start); after its last batch the worker counts nothing,
    so a dead or stalled worker falls to zero.

    Args:
        t_s: (n,) log time of each answer, s since the run started (finite).
        worker: (n,) worker id of each answer (-1: unknown, counted as one worker).
        edges: (m + 1,) increasing bin edges, s.
    Returns:
        {worker id: (m,) answers per second in each bin}.
    """
    out: dict[int, np.ndarray] = {}
    width = np.diff(edges)
    gaps = {}
    times = {}
    for w in np.unique(worker):
        u, c = np.unique(t_s[worker == w], return_counts=True)
        times[int(w)] = (u, c)
        if len(u) > 1:
            gaps[int(w)] = float(np.median(np.diff(u)))
    fallback = float(np.median(list(gaps.values()))) if gaps else None
    for w, (u, c) in times.items():
        gap = gaps.get(w, fallback)
        start = max(0.0, float(u[0]) - gap) if gap is not None else 0.0
        xs, cum = u, np.cumsum(c, dtype=float)
        if start < u[0]:  # ramp up to the first batch; else it is a step at u[0]
            xs, cum = np.concatenate(([start], xs)), np.concatenate(([0.0], cum))
        got = np.interp(edges, xs, cum, left=0.0, right=cum[-1])
        out[w] = np.diff(got) / width
    return out


def throughput(runs: list) -> tuple[str, str] | None:
    """Answers per second over wall time: per worker for one run (a stall or a dead worker shows
    as a line falling to zero), in total per run for several (see :func:`worker_rates`)."""
    fig, (ax,) = _fig()
    several = len(runs) > 1
    drawn = False
    top = 0.0
    for i, r in enumerate(runs):
        ok = np.isfinite(r.t_s)
        t = r.t_s[ok]
        if not len(t):
            continue
        drawn = True
        edges = _bins(float(t.max()), len(t))
        rates = worker_rates(t, r.worker[ok], edges)
        total = np.sum(list(rates.values()), axis=0)
        top = max(top, float(total.max()))
        if several:
            ax.stairs(total, edges, color=_color(i), lw=1.4, label=r.name)
            continue
        for j, (w, rate) in enumerate(rates.items()):
            ax.stairs(rate, edges, color=_color(j), lw=1.2 + 0.6 * (len(rates) - 1 - j) / max(1, len(rates) - 1),
                      label=f"worker {w}" if w >= 0 else "worker unknown")
        ax.stairs(total, edges, color="#333", lw=0.8, ls="--", label="all workers")
    if not drawn:
        return None
    ax.set_xlabel("wall time since the run started (s)")
    ax.set_ylabel("answers / s")
    ax.set_ylim(0, 1.3 * top or 1.0)  # headroom: the legend sits above the lines, hiding none
    _legend(ax, loc="upper right", fontsize=7, ncols=2)
    cap = ("Throughput: answers per second of wall time, in bins, from the log's t_s (measured by "
           "lpirc run). Answers are logged in batches; each batch is spread over the time since its "
           "worker's previous one, so a bin between two batches is not a false stall. "
           + ("Each run's total." if several else "One line per worker process (a replacement "
              "for a dead worker is a new line; earlier workers' lines are drawn wider, so equal "
              "rates stay visible), dashed: all workers."))
    return to_svg(fig), cap


# --- latency ----------------------------------------------------------------------------------


def latency(runs: list) -> tuple[str, str] | None:
    """Histograms of per-image latency (decode + preprocess + inference in the worker) and of
    inference (invoke) time, with medians; the slowest 0.5 % are counted, not drawn."""
    fig, axes = _fig(7.5, 3.0, ncols=2, top=0.35)
    drawn = False
    notes = []
    for ax, key, title in zip(axes, ("latency_ms", "inference_ms"), ("latency per image", "inference per image")):
        vals = [getattr(r, key)[np.isfinite(getattr(r, key))] for r in runs]
        allv = np.concatenate(vals) if vals else np.array([])
        if not allv.size:
            ax.set_title(f"{title}: not in the log")
            ax.set_axis_off()
            continue
        drawn = True
        hi = float(np.percentile(allv, 99.5))
        lo = float(allv.min())
        lo = 0.0 if lo < 0.25 * hi else lo - 0.05 * (hi - lo)  # zoom in on a narrow spread
        edges = np.linspace(lo, max(hi, lo + 1e-3), 50)
        for i, v in enumerate(vals):
            if not v.size:
                continue
            h, _ = np.histogram(np.minimum(v, hi), edges)
            label = f"{r_name(runs, i)}median {np.median(v):.3g} ms, p99 {np.percentile(v, 99):.3g} ms"
            ax.stairs(h, edges, color=_color(i), fill=len(runs) == 1, alpha=0.6 if len(runs) == 1 else 1.0,
                      lw=1.2, label=label)
            ax.axvline(float(np.median(v)), color=_color(i), lw=0.8, ls="--")
            over = int(np.count_nonzero(v > hi))
            if over:
                notes.append(f"{r_name(runs, i)}{over} {key} values above {hi:.3g} ms are in the last bin")
        ax.set_title(title, fontsize=9)
        ax.set_xlabel("ms")
        ax.set_ylabel("images")
        _legend(ax, fontsize=6.5, loc="best")
    if not drawn:
        return None
    cap = ("Per-image latency (decode + preprocess + inference, in the worker) and inference "
           "(model invoke) time, measured by lpirc run; dashed: medians.")
    return to_svg(fig), cap + (" " + "; ".join(notes[:4]) + "." if notes else "")


def r_name(runs: list, i: int) -> str:
    return f"{runs[i].name}: " if len(runs) > 1 else ""


# --- classes ----------------------------------------------------------------------------------


def worst_classes(run, count: int = 15) -> tuple[str, str] | None:
    """Horizontal bars: top-1 of the worst classes (by accuracy, then most images), by name."""
    every = (run.score or {}).get("per_class") or []
    if not every:
        return None
    rows = every[:count]
    fig, (ax,) = _fig(7.5, 0.8 + 0.22 * len(rows), left=_text_in(_class_label(r) for r in rows), top=0.15)
    y = np.arange(len(rows))[::-1]
    acc = [100.0 * r["top1"] for r in rows]
    ax.barh(y, [100.0] * len(rows), color="#eeeeee")  # the scale, so a 0 % class still shows a bar
    ax.barh(y, acc, color="#d62728", alpha=0.75)
    ax.set_yticks(y, [_class_label(r) for r in rows], fontsize=7)
    for yy, r, a in zip(y, rows, acc):
        inside = a > 85
        ax.text(a - 1 if inside else a + 1, yy, f"{r['correct']}/{r['images']}", va="center", fontsize=7,
                ha="right" if inside else "left", color="white" if inside else "black")
    ax.set_xlim(0, 100)
    ax.set_xlabel("top-1 accuracy of the class (%)")
    cap = (f"The {len(rows)} worst classes of this run: top-1 over all ground-truth images of the "
           f"class (unanswered count as wrong), correct/images. Names: {run.score.get('label_names')}.")
    last = rows[-1]["top1"]
    tied = sum(1 for r in every if r["top1"] == last)
    if len(every) > len(rows) and every[len(rows)]["top1"] == last:
        cap += (f" {tied} classes have {100 * last:.3g} % top-1; {tied - sum(1 for r in rows if r['top1'] == last)} "
                "of them are not shown (ties go by most images, then class index).")
    return to_svg(fig), cap


def _class_label(r: dict) -> str:
    name = r["name"] if len(r["name"]) <= 32 else r["name"][:31] + "\u2026"
    return name if r["name"] == r["synset"] else f"{name} ({r['synset']})"


def confusion(run) -> tuple[str, str] | None:
    """A small confusion matrix of the classes in the most frequent mistakes (true rows,
    predicted columns, counts written in the cells)."""
    pairs = (run.score or {}).get("confused") or []
    if not pairs:
        return None
    trues = list(dict.fromkeys(p["true_name"] for p in pairs))
    preds = list(dict.fromkeys(p["predicted_name"] for p in pairs))
    m = np.zeros((len(trues), len(preds)))
    for p in pairs:
        m[trues.index(p["true_name"]), preds.index(p["predicted_name"])] = p["count"]
    fig, (ax,) = _fig(7.5, 1.2 + 0.3 * len(trues) + 0.03 * max(len(_short(p)) for p in preds),
                      left=_text_in(_short(t) for t in trues) + 0.35,
                      bottom=0.45 + 0.6 * _text_in((_short(p) for p in preds), pad=0), top=0.15)
    ax.grid(False)
    # vector cells (pcolormesh), not imshow's embedded PNG: the page holds no image data URL
    ax.pcolormesh(np.arange(len(preds) + 1) - 0.5, np.arange(len(trues) + 1) - 0.5,
                  np.ma.masked_equal(m, 0), cmap="Reds", vmin=0, edgecolors="white", linewidth=0.5)
    ax.set_xlim(-0.5, len(preds) - 0.5)
    ax.set_ylim(len(trues) - 0.5, -0.5)
    ax.set_xticks(range(len(preds)), [_short(p) for p in preds], rotation=35, ha="right", fontsize=7)
    ax.set_yticks(range(len(trues)), [_short(t) for t in trues], fontsize=7)
    for (i, j), c in np.ndenumerate(m):
        if c:
            ax.text(j, i, f"{int(c)}", ha="center", va="center", fontsize=7,
                    color="white" if c > 0.6 * m.max() else "black")
    ax.set_xlabel("predicted (top-1)")
    ax.set_ylabel("true class")
    cap = (f"The {len(pairs)} most frequent mistakes (true class -> top-1 answer), as counts of "
           "images; failed images are left out (see below).")
    if run.labels is not None:
        k = run.keep[~run.error[run.keep] & (run.labels[run.keep] >= 0)]  # answers that count
        wrong = int(np.count_nonzero(run.pred[k] != run.labels[k]))
        shown = sum(int(p["count"]) for p in pairs)
        if wrong > shown:
            cap += f" They are {shown} of the run's {wrong} wrong answers (late ones included)."
    return to_svg(fig), cap


def _short(s: str) -> str:
    return s if len(s) <= 24 else s[:23] + "\u2026"


# --- power ------------------------------------------------------------------------------------


def power(runs: list) -> tuple[str, str] | None:
    """Power over the run (a meter's log), with the energy it integrates to."""
    with_power = [(i, r) for i, r in enumerate(runs) if r.power is not None]
    if not with_power:
        return None
    fig, (ax,) = _fig()
    for i, r in with_power:
        t, w = r.power[:, 0], r.power[:, 1]
        xs, ys = _thin(t, w)
        ax.plot(xs, ys, color=_color(i), lw=1.2, label=f"{r.name}: {r.energy_text()}")
        if len(with_power) == 1:
            ax.fill_between(xs, ys, color=_color(i), alpha=0.15, lw=0)
    ax.set_xlabel("wall time since the run started (s)")
    ax.set_ylabel("W")
    ax.set_ylim(bottom=0)
    _legend(ax, fontsize=7)
    return to_svg(fig), ("Power over the run, from the meter's log (--power-log), as recorded: "
                         "the run's energy is its trapezoid integral over the run (measured).")


# --- several runs as points -------------------------------------------------------------------


def accuracy_vs_cost(runs: list) -> tuple[str, str] | None:
    """Top-1 of each run against its mean inference time per image (log x; with the OVIC 2019
    frontier a(t) = k ln t + a0 where a run is scored under ovic-2019) and against its energy."""
    pts = [(r, r.top1(), r.mean_inference_ms(), r.energy_wh()) for r in runs]
    if not any(a is not None for _, a, _, _ in pts):
        return None
    fig, (ax_t, ax_e) = _fig(7.5, 3.4, ncols=2, right=0.5)
    frontier = None
    ts = [t for _, a, t, _ in pts if t and a is not None]
    es = [e for _, a, _, e in pts if e and a is not None]
    names_t, names_e = [], []  # (text, x, y): placed once the axes' scales are set
    for i, (r, a, t, e) in enumerate(pts):
        if a is None:
            continue
        if t:
            ax_t.plot([t], [100 * a], "o", color=_color(i))
            names_t.append((r.name, t, 100 * a))
        if e:
            ax_e.plot([e], [100 * a], "o", color=_color(i))
            names_e.append((f"{r.name} ({r.energy_label()})", e, 100 * a))
        s = r.score or {}
        if s.get("rules") == "ovic-2019" and s.get("frontier_k") is not None:
            frontier = (s["frontier_k"], s["frontier_a0"])
    if frontier and ts:
        k, a0 = frontier
        grid = np.geomspace(min(ts) / 2, max(ts) * 2, 100)
        ax_t.plot(grid, k * np.log(grid) + a0, color="#555", lw=1, ls="--",
                  label=f"OVIC 2019 frontier {k:g} ln t + {a0:g}")
        _legend(ax_t, fontsize=7, loc="best")  # where it hides no point
    for ax, xs, names in ((ax_t, ts, names_t), (ax_e, es, names_e)):
        _cost_axis(ax, xs)
        _point_labels(ax, names, xs)
        ax.set_ylabel("top-1 (%)")
    ax_t.set_xlabel("mean inference time per image (ms)")
    ax_e.set_xlabel("energy of the run (Wh)")
    cap = ("Each run as a point: top-1 (as its rule set counts it) against mean model-invoke time "
           "per image (measured) and against the run's energy (label in brackets).")
    if frontier:
        cap += (f" Dashed: the OVIC 2019 frontier a(t) = k ln(t) + a0, t in ms, a in % (k = "
                f"{frontier[0]:g}, a0 = {frontier[1]:g}; see `lpirc rules`): a run above it gains.")
    return to_svg(fig), cap


def _cost_axis(ax, xs: list[float]) -> None:
    """Log x where the runs span a decade, ticks written plainly (0.02, not 2x10^-2); at most
    about 5 tick labels on the axis' 3 inches, so that labels such as "0.0005" never touch."""
    if xs and max(xs) > 10 * min(xs):
        decades = math.log10(max(xs) / min(xs))
        ax.set_xscale("log")  # ticks at 1, 2, 5 x 10^n over a decade or two, else 10^n
        ax.xaxis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0) if decades < 1.5
                                              else (1.0, 3.0) if decades < 2.5 else (1.0,)))
        ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
        ax.xaxis.set_minor_formatter(NullFormatter())
    else:
        ax.xaxis.set_major_locator(MaxNLocator(nbins=4))
        fmt = ScalarFormatter(useOffset=False)
        fmt.set_scientific(False)
        ax.xaxis.set_major_formatter(fmt)


def _point_labels(ax, names: list[tuple[str, float, float]], xs: list[float]) -> None:
    """Name each point (see :func:`_point_label`), moving a name down a line, or up, while it
    would overlap one already placed (runs close in cost, or at one point, wrote their names
    over each other)."""
    if not names:
        return
    ax.autoscale_view()
    ppt = ax.figure.dpi / 72.0  # display pixels per point
    placed: list[tuple[float, float, float, float]] = []
    for text, x, y in sorted(names, key=lambda n: (-n[2], n[1])):
        left = _label_left(x, xs)
        ax_, ay = ax.transData.transform((x, y))
        w, h = 0.06 * 72 * len(text) * ppt, 9 * ppt  # ~0.06 in a 7-pt character
        for k in (0, *[j for i in range(1, 2 * len(names) + 1) for j in (-i, i)]):
            dy = 3 + 9 * k
            x0 = ax_ + (-4 * ppt - w if left else 4 * ppt)
            box = (x0, ay + dy * ppt, x0 + w, ay + dy * ppt + h)
            if not any(box[0] < b[2] and b[0] < box[2] and box[1] < b[3] and b[1] < box[3]
                       for b in placed):
                break
        placed.append(box)
        _point_label(ax, text, x, y, xs, dy=dy)


def _label_left(x: float, xs: list[float]) -> bool:
    lo, hi = min(xs), max(xs)
    if hi > 10 * lo > 0:  # drawn on a log axis (see accuracy_vs_cost)
        x_, lo, hi = math.log(x), math.log(lo), math.log(hi)
    else:
        x_ = x
    return hi > lo and (x_ - lo) / (hi - lo) > 0.55


def _point_label(ax, text: str, x: float, y: float, xs: list[float], dy: float = 3) -> None:
    """Name a point: to its right, or to its left when it lies in the right part of the axis's
    range (a label running past the axis would be cut off at the figure's edge)."""
    left = _label_left(x, xs)
    ax.annotate(text, (x, y), textcoords="offset points", xytext=(-4 if left else 4, dy),
                ha="right" if left else "left", fontsize=7)


def is_finite(v) -> bool:
    return isinstance(v, (int, float)) and math.isfinite(v)
