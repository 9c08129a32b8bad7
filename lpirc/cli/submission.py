"""``lpirc submission build`` (quantize a float model: :func:`submission.build.build_submission`,
needs TensorFlow, imported there when a build runs) and ``lpirc submission check``
(:func:`submission.check.check_submission`)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import click

from lpirc.cli._options import check_channels, preprocess_options
from lpirc.settings import sidecar_path
from submission.build import build_submission
from submission.check import check_submission, default_report_path


@click.group()
def submission() -> None:
    """Build and check a quantized submission."""


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
@click.option("--mean", default="127.5", show_default=True, callback=check_channels,
              help="Float model input = (pixel - mean) / std, pixel units 0..255: one number or "
                   "R,G,B (ImageNet: 123.675,116.28,103.53). Written to the sidecar.")
@click.option("--std", default="127.5", show_default=True, callback=check_channels,
              help="One number or R,G,B (ImageNet: 58.395,57.12,57.375).")
@click.option("--output", default=None, help="The output that answers, when several are "
              "[1, 1000|1001] (e.g. an auxiliary head): signature name, tensor name or index; "
              "written to the sidecar.")
@click.option("--quiet", "-q", is_flag=True, help="No progress bar.")
def submission_build(saved_model, keras_file, representative, out, dtype, num_images,
                     crop_fraction, mean, std, output, quiet) -> None:
    """Quantize a float model to a full-integer .tflite submission (needs TensorFlow)."""
    if (saved_model is None) == (keras_file is None):
        raise click.UsageError("give exactly one of --saved-model DIR or --keras FILE")
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
def submission_check(model, delegate, holdout, ground_truth, reference, limit, range_threshold,
                     near_zero, max_drop, threads, timeout_s, report, no_report, config, **pre):
    """Check that MODEL will run and is sensibly quantized: one line per check.

    Exit status: 0 when no check failed, 1 when one did, 2 for usage errors.
    """
    if reference and not holdout:
        raise click.UsageError("--reference needs --holdout")
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
