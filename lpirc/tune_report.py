"""What ``lpirc tune`` prints and writes: the table of settings, the summary, ``best.json`` and
``tune.json``. Kept apart from the search (:mod:`lpirc.tune`), which only measures and decides."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

from lpirc import __version__, machine
from lpirc.results import new_run_dir, write_json
from lpirc.settings import RunSettings, resolve_preprocess
from lpirc.tune_data import Row, TuneResult


def default_tune_dir(model: Path, base: Path = Path("runs")) -> Path:
    """``runs/tune-<UTC time>-<model stem>/``, not yet existing."""
    return new_run_dir(model, prefix="tune-", base=base)


def preprocess_given(base: RunSettings) -> dict:
    """The preprocessing the tune ran with where it differs from what ``lpirc run`` takes from
    the model's sidecar and the defaults (options given to tune: ``--mean``/``--std``,
    ``--output``, ``--input-size``, ``--crop``, ...), as config values. best.json carries them,
    so that ``lpirc run --config best.json`` feeds and answers as was measured."""
    own = resolve_preprocess(Path(base.model), {}).to_json()
    used = base.preprocess.to_json()
    return {k: v for k, v in used.items() if k != "decode" and v != own.get(k)}


def write_files(result: TuneResult, base: RunSettings, out: Path | None = None) -> Path:
    """Write ``best.json`` (not for an interrupted tune) and ``tune.json`` to ``out`` (default
    ``runs/tune-<UTC time>-<model stem>/``); returns the folder.

    ``best.json`` is ``{"settings": {...}, "measurements": {...}}`` (read by ``lpirc run
    --config``); ``tune.json`` the same measurements plus every trial, the machine and the
    settings the tune started from."""
    out_dir = Path(out) if out else default_tune_dir(Path(base.model))
    out_dir.mkdir(parents=True, exist_ok=True)
    best_row = next((r for r in result.rows if r.candidate == result.best), None)
    default_row = next((r for r in result.rows if r.candidate == result.default), None)
    measured = {
        "lpirc_version": __version__,
        "created_utc": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "model": str(Path(base.model).resolve()),
        "holdout": str(Path(base.holdout).resolve()),
        "holdout_images": result.holdout_size,
        "sample_images": result.sample_size,
        "ground_truth": str(result.ground_truth) if result.ground_truth else None,
        "cores": result.cores,
        "time_limit_s": base.time_limit_s,
        "images_per_s_definition": "answers after every worker's first chunk / time from then "
                                   "to the last answer (start-up excluded); projected_s adds "
                                   "the measured start-up back",
        "best": best_row.to_json() if best_row else None,
        "default": default_row.to_json() if default_row else None,
        "best_vs_default_ratio": result.ratio,
        "ratio_pairs": [round(x, 4) for x in result.ratio_pairs],
        "ratio_pairs_counted": result.ratio_counted,
        "load_corrected_ratio_pairs": [round(x, 4) for x in result.corrected_ratio_pairs],
        "table": [r.to_json() for r in result.rows],
        "notes": result.notes,
        "busy": result.busy,
        "foreign_load": result.foreign_load,
        "interrupted": result.interrupted,
    }
    if not result.interrupted:
        write_json(out_dir / "best.json", {"settings": {**result.best.settings(),
                                                        **preprocess_given(base)},
                                           "measurements": measured})
    write_json(out_dir / "tune.json", {
        **measured,
        "base_settings": base.to_json(),
        "max_time_s": result.max_time_s,
        "elapsed_s": round(result.elapsed_s, 2),
        "machine": machine.machine_info(),
        "probe": result.probe.to_json() if result.probe else None,
        "warmup": result.warmup.to_json() if result.warmup else None,
        "trials": [t.to_json() for t in result.trials],
    })
    return out_dir



def format_table(result: TuneResult) -> str:
    """The table ``lpirc tune`` prints, fastest first."""
    lim = result.time_limit_s
    head = ["", "workers", "threads", "batch", "decode", "images/s", "spread", "n", "load",
            "invoke ms", "top-1", f"{result.holdout_size} images", f"fits {lim:g} s"
            + (f" + {result.ms_per_image:g} ms" if result.clock == "inference" else "")]
    body = []
    for r in result.rows:
        mark = "*" if r.candidate == result.best else ("d" if r.candidate == result.default else "")
        if r.candidate == result.best and r.candidate == result.default:
            mark = "*d"
        body.append([
            mark, str(r.candidate.workers), str(r.candidate.threads), str(r.candidate.batch),
            r.candidate.decode + ("" if r.eligible else " (acc)"),
            f"{r.images_per_s:.1f}",
            "-" if r.spread is None else f"±{r.spread * 100:.1f}%",
            str(r.n),
            "-" if r.load is None else f"{r.load:.0%}",
            "-" if r.inference_ms is None else f"{r.inference_ms:.2f}",
            "-" if r.top1 is None else f"{r.top1 * 100:.1f}%",
            _projection(r),
            "yes" if r.fits else "NO",
        ])
    widths = [max(len(x) for x in col) for col in zip(head, *body)]
    right = {5, 6, 7, 8, 9, 10, 11}

    def line(cells):
        return "  ".join(c.rjust(w) if i in right else c.ljust(w)
                         for i, (c, w) in enumerate(zip(cells, widths))).rstrip()

    out = [line(head)] + [line(b) for b in body]
    out.append("* best (chosen)   d defaults of lpirc run   (acc) top-1 dropped too much to choose")
    return "\n".join(out)


def _projection(r: Row) -> str:
    """The projected time of a full run: one figure, or the range it may fall in when the
    trials disagree by more than 5 % (a busy machine)."""
    lo, hi = r.projected_low_s, r.projected_high_s
    if lo is None or hi is None or hi <= lo * 1.05:
        return f"{r.projected_s:.1f} s"
    return f"{lo:.1f}-{hi:.1f} s"


def format_summary(result: TuneResult) -> str:
    lines = [format_table(result), ""]
    lines.append(f"sample          {result.sample_size} answers per trial from "
                 f"{min(result.sample_size, result.holdout_size)} of the {result.holdout_size} "
                 f"holdout images; {len(result.trials)} pipeline runs in "
                 f"{result.elapsed_s:.0f} s on {result.cores} cores")
    lines.append("images/s        steady state (worker start-up excluded; the projected time "
                 "adds it back); median of the trials on a quiet machine, else of trials "
                 "divided by (1 - the CPU share other processes took: the load column)")
    lines.append("invoke ms       model time per image (what --clock inference sums)")
    if result.clock == "inference":
        lines.append("ranked by       invoke ms per image (--clock inference sums invoke time)")
    for n in result.notes:
        lines.append(f"note            {n}")
    lines.append(f"{'best so far' if result.interrupted else 'best':<16}{result.best.label}")
    k = len(result.ratio_pairs)
    of = (f"median of {result.ratio_counted} of {k} interleaved pairs, the others taken while "
          f"other processes used more of the CPUs" if 0 < result.ratio_counted < k
          else f"median of {k}, interleaved")
    if result.challenger is not None and result.ratio is None:
        lines.append(f"best/default images/s ratio: 1.00 (the defaults are kept: "
                     f"{result.challenger.label} was not compared with them)")
    elif result.challenger is not None:
        lines.append(f"best/default images/s ratio: 1.00 (the defaults are kept: "
                     f"{result.challenger.label} measured {result.ratio:.2f}x them, {of})")
    elif result.ratio is not None:
        lines.append(f"best/default images/s ratio: {result.ratio:.2f} "
                     + (f"({of})" if k else "(best is the default)"))
    elif result.interrupted:
        lines.append("best/default images/s ratio: not measured (interrupted)")
    else:
        lines.append("best/default images/s ratio: not measured (--no-compare-defaults, or no "
                     "time left for it)")
    if result.out_dir is not None and result.interrupted:
        lines.append(f"wrote           {result.out_dir / 'tune.json'} (interrupted: no best.json)")
    elif result.out_dir is not None:
        lines.append(f"wrote           {result.out_dir / 'best.json'} and "
                     f"{result.out_dir / 'tune.json'}")
        lines.append(f"use it          lpirc run --config {result.out_dir / 'best.json'} ...")
    return "\n".join(lines)


__all__ = ["default_tune_dir", "format_summary", "format_table", "write_files"]
