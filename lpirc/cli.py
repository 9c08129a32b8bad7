"""The ``lpirc`` command line. Parsing and printing only: the work is done by the modules it calls.

Modules that do the work (runner, tune, settings, holdout, submission.*, and through them
LiteRT, OpenCV and TensorFlow) are imported inside the commands that need them, so that a
command loads only what it uses; everything light is imported here, at the top.
"""

from __future__ import annotations

import functools
import json
import sys
import time
from pathlib import Path

import click

import scoring
from lpirc import __version__
from lpirc.errors import EXIT_INTERRUPTED, InputError, LpircError
from lpirc.preprocess import channel_values, parse_input_size, units_problem
from lpirc.referee.cli import RefereeRun, referee_run_options


def friendly_errors(fn):
    """Turn an LpircError into one line on stderr and its documented exit code."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except LpircError as e:
            click.echo(f"lpirc: error: {e}", err=True)
            sys.exit(e.exit_code)
        except KeyboardInterrupt:
            # click would print "Aborted!" and exit 1; Ctrl-C has its own documented code
            click.echo("lpirc: interrupted", err=True)
            sys.exit(EXIT_INTERRUPTED)

    return wrapper


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="lpirc")
def main() -> None:
    """Run, time and score on-device image classifiers by the IEEE LPIRC rules."""


def _settings(ctx: click.Context, opts: dict, config: Path | None = None):
    """RunSettings from a command's options: the bundled submission and demo holdout when no
    model is given; options typed on the command line win over the config file."""
    from lpirc.settings import bundled_model, resolve_settings

    explicit = {k for k in opts if ctx.get_parameter_source(k) == click.core.ParameterSource.COMMANDLINE}
    if opts["model"] is None:
        opts["model"] = bundled_model()
        if opts["holdout"] is None:
            from lpirc.demo import demo_holdout_path

            opts["holdout"] = demo_holdout_path()
    if opts["holdout"] is None:
        raise click.UsageError("--holdout is required with --model")
    return resolve_settings(opts, explicit, config)


def _check_channels(ctx, param, value):
    """Click callback: --mean/--std syntax checked where it was typed (exit 2, naming it)."""
    if value is not None:
        try:
            vals = channel_values(param.name, value, positive=param.name == "std")
        except ValueError as e:
            raise click.BadParameter(str(e)) from None
        problem = units_problem(param.name, vals)
        if problem:
            raise click.BadParameter(problem)
    return value


def _check_input_size(ctx, param, value):
    """Click callback: --input-size must be HxW (or one number for a square)."""
    try:
        parse_input_size(value)
    except ValueError as e:
        raise click.BadParameter(str(e)) from None
    return value


def preprocess_options(fn):
    """The options of RunSettings.preprocess that `run` and `tune` share (see README
    "Preprocessing"); each also comes from --config or the model's sidecar X.json."""
    opts = [
        click.option("--mean", callback=_check_channels,
                     help="Normalisation mean in pixel units 0..255: one number or "
                     "R,G,B (ImageNet: 123.675,116.28,103.53). Float inputs get (pixel - mean) "
                     "/ std (default 127.5); quantized inputs are normalised, then quantized "
                     "with the input's own scale and zero point (default: raw pixel codes)."),
        click.option("--std", callback=_check_channels,
                     help="Normalisation std in pixel units: one number or R,G,B "
                     "(ImageNet: 58.395,57.12,57.375). Default 127.5 (float inputs)."),
        click.option("--channel-order", type=click.Choice(["rgb", "bgr"]), help="Channel "
                     "order the model takes. Default: rgb."),
        click.option("--crop", type=click.Choice(["central", "square"]), help="central: "
                     "tf.image.central_crop (TF-slim eval, aspect kept; default); square: the "
                     "TFLite ImageNet eval tool's centred square."),
        click.option("--input-size", callback=_check_input_size, help="HxW for a model whose input height/width are "
                     "dynamic (shape signature -1), e.g. 224x224."),
        click.option("--output", help="Output that answers, by signature name, tensor name or "
                     "index. Default: the one [1, 1000|1001] output."),
    ]
    for o in reversed(opts):
        fn = o(fn)
    return fn


@main.group()
def holdout() -> None:
    """Make and inspect holdout sets."""


@main.group()
def submission() -> None:
    """Build and check a quantized submission."""


# --- lpirc run ------------------------------------------------------------------------------


@main.command("run")
@click.option("--model", type=click.Path(path_type=Path), help="Submission .tflite. Default: the bundled reference submission.")
@click.option("--holdout", type=click.Path(path_type=Path), help="Folder of holdout images. Default with the bundled model: the generated demo holdout.")
@click.option("--ground-truth", type=click.Path(path_type=Path), help="CSV filename,label for scoring. Default: HOLDOUT/ground_truth.csv if present.")
@click.option("--out", type=click.Path(path_type=Path), help="Run folder. Default: runs/<UTC time>-<model stem>/.")
@click.option("--config", type=click.Path(path_type=Path), help="Settings file from `lpirc tune` (best.json); options given here win over it.")
@click.option("--time-limit-s", type=click.FloatRange(min=0.1), default=600.0, show_default=True, help="Wall-clock budget in seconds (LPIRC: 10 minutes).")
@click.option("--clock", type=click.Choice(["wall", "inference"]), default="wall", show_default=True, help="wall: everything counts (on-site rule); inference: summed invoke time against --ms-per-image x images (Track 1 / OVIC).")
@click.option("--ms-per-image", type=click.FloatRange(min=0.001), default=30.0, show_default=True, help="Inference budget per image in ms, for --clock inference.")
@click.option("--workers", type=click.IntRange(min=1), help="Inference worker processes. Default: one per core.")
@click.option("--threads", type=click.IntRange(min=1), default=1, show_default=True, help="Interpreter threads per worker.")
@click.option("--batch", type=click.IntRange(min=1), default=1, show_default=True, help="Images per invoke (falls back to 1 if the model's batch cannot be resized).")
@click.option("--decode-threads", type=click.IntRange(min=0), default=0, show_default=True, help="Decode threads per worker (0: decode inline; the Edge TPU's single process gets one per core).")
@click.option("--delegate", default="cpu", show_default=True, help="cpu (XNNPACK), gpu, edgetpu, or a path to a delegate library.")
@click.option("--crop-fraction", type=click.FloatRange(min=0.01, max=1.0), default=0.875, show_default=True, help="Fraction kept by the --crop before resizing (the model's sidecar X.json, if any, overrides the default).")
@click.option("--resize", type=click.Choice(["bilinear", "antialias"]), default="bilinear", show_default=True, help="bilinear: TF v1 resize_bilinear (TFLite eval tool); antialias: Pillow's (the sidecar X.json, if any, overrides the default).")
@preprocess_options
@click.option("--decode", type=click.Choice(["exact", "draft"]), default="exact", show_default=True, help="draft: JPEG DCT-scaled decode of large images (faster, may cost accuracy).")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of the image order (recorded).")
@click.option("--max-image-pixels", type=click.IntRange(min=1), default=40_000_000, show_default=True, help="Decompression-bomb guard: a larger JPEG is decoded at 1/2..1/8 scale to fit, any other larger image is answered wrong.")
@click.option("--rules", default="lpirc-onsite", show_default=True, help="Rule set for the score (see `lpirc rules`); with --clock inference the default is ovic-2018.")
@click.option("--power-log", type=click.Path(path_type=Path), help="External meter log, CSV timestamp,watts, integrated over the run (measured energy).")
@click.option("--watts-per-core", type=click.FloatRange(min=0), default=4.0, show_default=True, help="Energy estimate: watts per busy core.")
@click.option("--idle-watts", type=click.FloatRange(min=0), default=10.0, show_default=True, help="Energy estimate: idle watts of the machine.")
@click.option("--powercap-root", type=click.Path(path_type=Path), default=Path("/sys/class/powercap"), show_default=True, help="Where RAPL counters are read.")
@click.option("--grace-s", type=click.FloatRange(min=0, max=1.5), default=0.5, show_default=True, help="Seconds workers get to stop at the deadline before they are killed.")
@click.option("--quiet", is_flag=True, help="No progress bar.")
@click.option("--no-report", is_flag=True, help="Do not write report.html (lpirc report) into the run folder.")
@referee_run_options
@click.pass_context
@friendly_errors
def run_cmd(ctx: click.Context, config: Path | None, no_report: bool, **opts) -> None:
    """Run a timed submission over a holdout and score it.

    With no options: the bundled reference submission on a generated demo holdout.
    """
    from lpirc.runner import run

    referee = RefereeRun.from_options(opts)  # None without --referee
    try:
        settings = _settings(ctx, opts, config)
        outcome = referee.run(settings) if referee else run(settings)
    except KeyboardInterrupt:  # before the run started (a started run returns "interrupted")
        click.echo("lpirc: interrupted before the run started (no image was handed out)", err=True)
        sys.exit(EXIT_INTERRUPTED)
    summary = format_run_summary(outcome)
    click.echo(referee.summary(summary) if referee else summary)
    if not no_report:
        from lpirc.cli_pages import run_report_line

        click.echo(run_report_line(outcome.out_dir))
    sys.exit(outcome.exit_code)


def format_run_summary(outcome) -> str:
    """The end-of-run table: what ran, then the same score table `lpirc score` prints."""
    m = outcome.manifest
    rt = m.get("runtime") or {}
    d = m.get("delegate") or {}
    lines = [
        f"run folder      {outcome.out_dir}",
        f"status          {outcome.status}",
        f"model           {m['model']['path']}",
        (f"runtime         {rt.get('name')} {rt.get('version')}, delegate {d.get('ran')}"
         f" (requested {d.get('requested')})" if rt else
         f"runtime         not reported: no worker loaded the model (requested delegate "
         f"{d.get('requested')})"),
        f"holdout         {m['holdout']['path']} ({m['holdout']['image_count']} images)",
        *([f"input           {pre['input']}; {pre['crop']} crop {pre['crop_fraction']:g}, "
           f"{pre['resize']} resize to {pre['height']}x{pre['width']}"]
          if (pre := m.get("preprocess")) and pre.get("input") else []),
        (f"first answer    {m['first_answer_s']} s after start (measured)"
         if m.get("first_answer_s") is not None else "first answer    none"),
    ]
    lines += [f"note            {n}" for n in outcome.notes]
    if outcome.score is not None:
        lines += ["", scoring.format_table([outcome.score])]
    else:
        e = m.get("energy") or {}
        lines += [
            f"answered        {m.get('images_answered')} of {m['holdout']['image_count']}"
            f" ({m.get('images_failed')} failed, {m.get('images_late')} late)",
            f"wall time       {m.get('wall_time_s')} s (measured)",
            f"energy          {e.get('wh')} Wh ({e.get('source')}: {e.get('method')})",
            "score           none: no ground truth (give --ground-truth, or `lpirc score` later)",
        ]
    return "\n".join(lines)


# --- lpirc score / lpirc rules --------------------------------------------------------------


@main.command("score")
@click.argument("paths", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option("--ground-truth", type=click.Path(path_type=Path), help="CSV filename,label (synset or class index 0..999). Default: the ground truth named in each run's manifest.")
@click.option("--rules", "rules_name", default="lpirc-onsite", show_default=True, help="Rule set (see `lpirc rules`).")
@click.option("--format", "fmt", type=click.Choice(["table", "json", "csv"]), default="table", show_default=True, help="table: for people; json: the score.json object (a list for several runs); csv: ranked leaderboard, one row per run.")
@click.option("--per-class", is_flag=True, help="Add per-class top-1 accuracy and the most confused class pairs.")
@click.option("--labels", type=click.Path(path_type=Path), help="Class names for the per-class view (implies --per-class): 1000 or 1001 lines (e.g. imagenet_labels.txt). Default: synset IDs.")
@click.option("--time-limit-s", type=click.FloatRange(min=0), help="lpirc-onsite: wall budget in seconds; answers with t_s above it are wrong. Default: the run's budget, else 600.")
@click.option("--ms-per-image", type=click.FloatRange(min=0), help="ovic-2018: inference budget per image in ms (budget = this x images). Default: the run's, else 30.")
@click.option("--idle-watts", type=click.FloatRange(min=0), help="lpcvc-2020: idle power in watts subtracted over the run's wall time. Default: 1.961.")
@click.option("--k", "k", type=float, help="ovic-2019: slope of the Pareto frontier k ln(latency_ms) + a0, in accuracy percent per ln(ms). Default: 9.163 (our fit to the 2019 reference models).")
@click.option("--a0", "a0", type=float, help="ovic-2019: intercept of the Pareto frontier, in accuracy percent. Default: 35.279.")
@click.option("--energy-wh", type=click.FloatRange(min=0), help="Energy of the run in watt-hours, for logs without a manifest (or to override it); marked 'given'.")
@friendly_errors
def score_cmd(paths, ground_truth, rules_name, fmt, per_class, labels, **rule_options) -> None:
    """Score result logs offline under one rule set.

    PATHS: run folders (results.jsonl + manifest.json), bare results.jsonl files, or LPIRC referee
    result files (image_id class_id confidence per row). Needs only numpy.
    """
    # one bad run folder must not cost the leaderboard the others: score them, then fail (exit 5)
    scores, errors = [], []
    for p in paths:
        try:
            scores.append(scoring.score_path(p, ground_truth, rules_name, per_class=per_class or labels is not None,
                                             labels=labels, **rule_options))
        except scoring.ScoringError as e:
            if str(e) not in errors:
                errors.append(str(e))
    if scores:
        if fmt == "json":
            out = json.dumps(scores[0] if len(paths) == 1 else scores, indent=2)
        elif fmt == "csv":
            out = scoring.format_csv(scores).rstrip("\n")
        else:
            out = scoring.format_table(scores).rstrip("\n")
        if fmt != "table":  # keep stdout machine-readable; the table shows warnings itself
            for s in scores:
                for w in s["warnings"]:
                    click.echo(f"lpirc: warning: {w}", err=True)
        click.echo(out)
    for e in errors[:-1]:
        click.echo(f"lpirc: error: {e}", err=True)
    if errors:
        raise InputError(errors[-1])


@main.command("rules")
@friendly_errors
def rules_cmd() -> None:
    """List the rule sets `lpirc score --rules` knows, with their source year."""
    width = max(len(n) for n in scoring.RULES)
    for name, r in scoring.RULES.items():
        click.echo(f"{name:<{width}}  {r.year:<9}  {r.describe()}  [{r.source}]")


# --- lpirc holdout make ---------------------------------------------------------------------


@holdout.command("make")
@click.argument("src", type=click.Path(path_type=Path))
@click.argument("out", type=click.Path(path_type=Path))
@click.option("--count", "-n", type=click.IntRange(min=1), required=True,
              help="Number of images to write (may exceed the sources: variants are added).")
@click.option("--seed", type=int, default=0, show_default=True,
              help="Seed for the order, the subset and the variants.")
@click.option("--force", is_flag=True, help="Write into a non-empty OUT folder.")
@click.option("--quiet", "-q", is_flag=True, help="No progress bar.")
@click.option("--ground-truth", type=click.Path(path_type=Path), help="Labels of SRC's images "
              "(CSV filename,label or 'filename label' lines, e.g. val_map.txt) instead of "
              "<synset> names.")
@friendly_errors
def holdout_make(src: Path, out: Path, count: int, seed: int, force: bool, quiet: bool,
                 ground_truth: Path | None) -> None:
    """Make an anonymised holdout OUT (img_000001.jpg ..., ground_truth.csv) from a labelled
    folder SRC of <synset>_*.JPEG files or <synset>/ subfolders (or any, with --ground-truth)."""
    from lpirc.holdout import make_holdout

    t0 = time.perf_counter()
    gt = make_holdout(src, out, count, seed=seed, progress=not quiet, force=force,
                      ground_truth=ground_truth,
                      on_note=lambda n: click.echo(f"lpirc: note: {n}", err=True))
    click.echo(f"wrote {count} images and {gt} in {time.perf_counter() - t0:.1f} s")


# --- lpirc tune -----------------------------------------------------------------------------


@main.command("tune")
@click.option("--model", type=click.Path(path_type=Path), help="Submission .tflite. Default: the bundled reference submission.")
@click.option("--holdout", type=click.Path(path_type=Path), help="Folder of holdout images (a sample is measured). Default with the bundled model: the demo holdout.")
@click.option("--ground-truth", type=click.Path(path_type=Path), help="CSV filename,label for each setting's top-1. Default: HOLDOUT/ground_truth.csv if present.")
@click.option("--out", type=click.Path(path_type=Path), help="Folder for best.json and tune.json. Default: runs/tune-<UTC time>-<model stem>/.")
@click.option("--max-time-s", type=click.FloatRange(min=1), default=120.0, show_default=True, help="Wall-clock time the whole tune may take.")
@click.option("--sample", type=click.IntRange(min=8), help="Answers per trial (the holdout is cycled if smaller). Default: sized to fit --max-time-s.")
@click.option("--repeats", type=click.IntRange(min=1), default=3, show_default=True, help="Measurements of each of the best few settings (median kept).")
@click.option("--finalists", type=click.IntRange(min=1), default=3, show_default=True, help="How many of the fastest settings are re-measured.")
@click.option("--cooldown-s", type=click.FloatRange(min=0), default=0.5, show_default=True, help="Pause between trials.")
@click.option("--compare-defaults/--no-compare-defaults", default=True, show_default=True, help="At the end, measure best vs default settings interleaved (A B A B) and print the ratio.")
@click.option("--pairs", type=click.IntRange(min=1), default=3, show_default=True, help="A/B pairs for --compare-defaults.")
@click.option("--seed", "tune_seed", type=int, default=0, show_default=True, help="Seed of the sample and of the shuffled trial order.")
@click.option("--max-top1-drop", type=click.FloatRange(min=0), default=0.01, show_default=True, help="A faster decode is chosen only if its top-1 is within this fraction of the exact decode's.")
@click.option("--time-limit-s", type=click.FloatRange(min=0.1), default=600.0, show_default=True, help="The run's budget, for the 'fits' column (LPIRC: 10 minutes).")
@click.option("--clock", type=click.Choice(["wall", "inference"]), default="wall", show_default=True, help="Budget clock of the run the settings are for (see lpirc run).")
@click.option("--ms-per-image", type=click.FloatRange(min=0.001), default=30.0, show_default=True, help="Inference budget per image, for --clock inference.")
@click.option("--delegate", default="cpu", show_default=True, help="cpu (XNNPACK), gpu, edgetpu, or a path to a delegate library.")
@click.option("--crop-fraction", type=click.FloatRange(min=0.01, max=1.0), help="Fraction kept by the --crop (default: the model's sidecar, else 0.875).")
@click.option("--resize", type=click.Choice(["bilinear", "antialias"]), help="Resize method (default: the sidecar's, else bilinear).")
@preprocess_options
@click.option("--quiet", is_flag=True, help="No progress bar.")
@click.pass_context
@friendly_errors
def tune_cmd(ctx: click.Context, out: Path | None, max_time_s: float, sample: int | None,
             repeats: int, finalists: int, cooldown_s: float, compare_defaults: bool, pairs: int,
             tune_seed: int, max_top1_drop: float, **opts) -> None:
    """Measure worker/thread/batch/decode settings with the run pipeline; write best.json.

    Use the result with `lpirc run --config OUT/best.json` (options given to lpirc run win).
    """
    from lpirc.tune import format_summary, tune

    settings = _settings(ctx, opts)
    result = tune(settings, max_time_s, sample=sample, repeats=repeats, finalists=finalists,
                  cooldown_s=cooldown_s, compare_defaults=compare_defaults, compare_pairs=pairs,
                  seed=tune_seed, out=out, max_top1_drop=max_top1_drop)
    click.echo(format_summary(result))
    if result.interrupted:  # what was measured is printed and kept in tune.json
        click.echo("lpirc: interrupted", err=True)
        sys.exit(EXIT_INTERRUPTED)


# --- lpirc submission build -----------------------------------------------------------------


@submission.command("build")
@click.option("--saved-model", "saved_model", type=click.Path(path_type=Path), default=None,
              help="TensorFlow SavedModel folder (float32 input [1|None, H, W, 3]).")
@click.option("--keras", "keras_file", type=click.Path(path_type=Path), default=None,
              help="Keras model file (.keras or .h5) instead of a SavedModel.")
@click.option("--representative", required=True, type=click.Path(path_type=Path),
              help="Folder of calibration images (a few hundred, like the holdout).")
@click.option("--out", "-o", "out", required=True, type=click.Path(path_type=Path),
              help="Output .tflite; the sidecar .json is written beside it.")
@click.option("--dtype", type=click.Choice(["uint8", "int8"]), default="uint8", show_default=True,
              help="Input/output tensor type (uint8 = LPIRC Track-1 format).")
@click.option("--num-images", type=click.IntRange(min=1), default=300, show_default=True,
              help="Calibration images used, spread over the folder.")
@click.option("--crop-fraction", type=click.FloatRange(0, 1, min_open=True), default=0.875,
              show_default=True, help="Central crop before resizing, as lpirc run does.")
@click.option("--mean", default="127.5", show_default=True, callback=_check_channels,
              help="Float model input = (pixel - mean) / std, pixel units 0..255: one number or "
                   "R,G,B (ImageNet: 123.675,116.28,103.53). Written to the sidecar.")
@click.option("--std", default="127.5", show_default=True, callback=_check_channels,
              help="One number or R,G,B (ImageNet: 58.395,57.12,57.375).")
@click.option("--output", default=None, help="The output that answers, when several are "
              "[1, 1000|1001] (e.g. an auxiliary head): signature name, tensor name or index; "
              "written to the sidecar.")
@click.option("--quiet", "-q", is_flag=True, help="No progress bar.")
@friendly_errors
def submission_build(saved_model, keras_file, representative, out, dtype, num_images,
                     crop_fraction, mean, std, output, quiet) -> None:
    """Quantize a float model to a full-integer .tflite submission (needs TensorFlow)."""
    if (saved_model is None) == (keras_file is None):
        raise click.UsageError("give exactly one of --saved-model DIR or --keras FILE")
    from lpirc.settings import sidecar_path
    from submission.build import build_submission

    path = build_submission(out, representative, saved_model=saved_model, keras_model=keras_file,
                            dtype=dtype, num_images=num_images, crop_fraction=crop_fraction,
                            mean=mean, std=std, progress=not quiet, output=output,
                            on_note=lambda n: click.echo(f"lpirc: note: {n}", err=True))
    meta = json.loads(sidecar_path(path).read_text())
    click.echo(f"wrote {path} ({path.stat().st_size / 1024:.0f} KiB, {dtype} in/out, "
               f"{meta['input']['height']}x{meta['input']['width']}, {meta['classes']} classes, "
               f"{meta['representative_images']} calibration images) and {sidecar_path(path)}")
    if meta.get("representative_skipped"):
        shown = "; ".join(meta["representative_skipped_files"][:3])
        click.echo(f"lpirc: warning: {representative}: {meta['representative_skipped']} file(s) "
                   f"skipped, not decodable as images ({shown})", err=True)


# --- lpirc submission check -----------------------------------------------------------------


@submission.command("check")
@click.argument("model", type=click.Path(path_type=Path))  # a folder is a failed load check
@click.option("--delegate", default="cpu", show_default=True,
              help="cpu | edgetpu | gpu | path to an external delegate library.")
@click.option("--holdout", type=click.Path(exists=True, file_okay=False, path_type=Path),
              help="Image folder: its first image is the invoke test; with labels, accuracy.")
@click.option("--ground-truth", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="CSV filename,label (default: HOLDOUT/ground_truth.csv, else labels from "
                   "<synset>_*.JPEG file names).")
@click.option("--reference", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="Float .tflite to compare accuracy with (needs --holdout).")
@click.option("--limit", type=click.IntRange(min=1), help="Use at most N holdout images.")
@click.option("--range-threshold", type=click.FloatRange(min=0, min_open=True),
              default=128.0, show_default=True,
              help="Warn for quantized activations whose range (scale x 255) is wider.")
@click.option("--near-zero", "near_zero", type=click.IntRange(min=0), default=1,
              show_default=True,
              help="Depthwise channels using at most this many quantization levels are flagged.")
@click.option("--max-drop", type=click.FloatRange(min=0), default=0.05, show_default=True,
              help="Warn when top-1 drops more than this (fraction) versus --reference.")
@click.option("--threads", type=click.IntRange(min=1), default=1, show_default=True)
@click.option("--timeout", "timeout_s", type=click.FloatRange(min=1), default=120.0,
              show_default=True, help="Seconds allowed for loading the model in a child process.")
@click.option("--report", "report", type=click.Path(dir_okay=False, path_type=Path),
              help="JSON report path [default: ./<model stem>.check.json].")
@click.option("--no-report", is_flag=True, help="Do not write the JSON report.")
@click.option("--config", type=click.Path(path_type=Path), help="Settings file (best.json) as "
              "for lpirc run: its preprocessing is checked too.")
@preprocess_options
@friendly_errors
def submission_check(model, delegate, holdout, ground_truth, reference, limit, range_threshold,
                     near_zero, max_drop, threads, timeout_s, report, no_report, config, **pre):
    """Check that MODEL will run and is sensibly quantized: one line per check.

    Exit status: 0 when no check failed, 1 when one did, 2 for usage errors.
    """
    if reference and not holdout:
        raise click.UsageError("--reference needs --holdout")
    from submission.check import check_submission, default_report_path

    marks = {"pass": "PASS", "warn": "WARN", "fail": "FAIL", "skip": "skip"}

    def show(r):
        click.echo(f"{marks[r.status]:4}  {r.name:<11}  {r.message}")

    rep = check_submission(model, delegate=delegate, holdout=holdout, ground_truth=ground_truth,
                           reference=reference, range_threshold=range_threshold,
                           near_zero_levels=near_zero, max_drop=max_drop, limit=limit,
                           timeout_s=timeout_s, threads=threads, on_result=show,
                           preprocess={k: v for k, v in pre.items() if v is not None},
                           config=config)
    if not no_report:
        out = report or default_report_path(model)
        try:
            rep.write(out)
        except OSError as e:
            click.echo(f"lpirc: warning: cannot write {out} ({e.strerror or e})", err=True)
        else:
            click.echo(f"report: {out}")
    verdict = "FAILED" if rep.failed else "ok"
    click.echo(f"{Path(model).name}: {verdict}")
    sys.exit(1 if rep.failed else 0)


# --- lpirc report, lpirc leaderboard (lpirc/cli_pages.py) ----------------------------------

from lpirc.cli_pages import leaderboard as _leaderboard, report_cmd as _report_cmd  # noqa: E402

main.add_command(_report_cmd)
main.add_command(_leaderboard)

from lpirc.referee.cli import referee  # noqa: E402  (the group lives with its package)

main.add_command(referee)

# --- lpirc fleet (lpirc/cli_fleet.py; Ray is imported only when a fleet command runs) ------------

from lpirc.cli_fleet import fleet_group  # noqa: E402

main.add_command(fleet_group)

from lpirc.cli_online import online  # noqa: E402  (lpirc online: lpirc/online/)

main.add_command(online)
