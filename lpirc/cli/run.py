"""``lpirc run``: one timed submission over a holdout (:func:`lpirc.runner.run`), its summary
(:func:`lpirc.summary.format_run_summary`) and its report page; ``--referee URL`` runs against
an LPIRC referee instead (:class:`lpirc.cli._referee_run.RefereeRun`)."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from lpirc.cli._options import (DELEGATE_HELP, MODEL_OPTION, clock_options, holdout_options, preprocess_options, rules_option, setting,
                                settings_from_options, time_limit_option)
from lpirc.cli.meter import meter_run_options
from lpirc.cli._referee_run import RefereeRun, referee_run_options
from lpirc.cli.report import run_report_line
from lpirc.errors import EXIT_INTERRUPTED
from lpirc.runner import run
from lpirc.settings import RunSettings
from lpirc.summary import format_run_summary

S = RunSettings


@click.command("run")
@MODEL_OPTION
@holdout_options("", "for scoring")
@click.option("--out", type=click.Path(path_type=Path), help="Run folder. Default: runs/<UTC time>-<model stem>/.")
@click.option("--config", type=click.Path(path_type=Path), help="Settings file from `lpirc tune` (best.json); options given here win over it.")
@time_limit_option(S, "Wall-clock budget in seconds (LPIRC: 10 minutes).")
@clock_options(S, "wall: everything counts (on-site rule); inference: summed invoke time against --ms-per-image x images (Track 1 / OVIC).",
               "Inference budget per image in ms, for --clock inference.")
@click.option("--workers", type=click.IntRange(min=1), help="Inference worker processes. Default: one per core.")
@setting(S, "threads", type=click.IntRange(min=1), help="Interpreter threads per worker.")
@setting(S, "batch", type=click.IntRange(min=1), help="Images per invoke (falls back to 1 if the model's batch cannot be resized).")
@setting(S, "decode_threads", type=click.IntRange(min=0), help="Decode threads per worker (0: decode inline; the Edge TPU's single process gets one per core).")
@setting(S, "delegate", help=DELEGATE_HELP)
@setting(S, "crop_fraction", type=click.FloatRange(min=0.01, max=1.0), help="Fraction kept by the --crop before resizing (the model's sidecar X.json, if any, overrides the default).")
@setting(S, "resize", type=click.Choice(["bilinear", "antialias"]), help="bilinear: TF v1 resize_bilinear (TFLite eval tool); antialias: Pillow's (the sidecar X.json, if any, overrides the default).")
@preprocess_options
@setting(S, "decode", type=click.Choice(["exact", "draft"]), help="draft: JPEG DCT-scaled decode of large images (faster, may cost accuracy).")
@setting(S, "seed", type=int, help="Seed of the image order (recorded).")
@setting(S, "max_image_pixels", type=click.IntRange(min=1), help="Decompression-bomb guard: a larger JPEG is decoded at 1/2..1/8 scale to fit, any other larger image is answered wrong.")
@rules_option(S, "Rule set for the score (see `lpirc rules`); with --clock inference the default is ovic-2018.")
@click.option("--power-log", type=click.Path(path_type=Path), help="External meter log, CSV timestamp,watts, integrated over the run (measured energy).")
@setting(S, "watts_per_core", type=click.FloatRange(min=0), help="Energy estimate: watts per busy core.")
@setting(S, "idle_watts", type=click.FloatRange(min=0), help="Energy estimate: idle watts of the machine.")
@setting(S, "powercap_root", type=click.Path(path_type=Path), help="Where RAPL counters are read.")
@setting(S, "grace_s", type=click.FloatRange(min=0, max=1.5), help="Seconds workers get to stop at the deadline before they are killed.")
@click.option("--quiet", is_flag=True, help="No progress bar.")
@click.option("--no-report", is_flag=True, help="Do not write report.html (lpirc report) into the run folder.")
@referee_run_options
@meter_run_options
@click.pass_context
def run_cmd(ctx: click.Context, config: Path | None, no_report: bool, **opts) -> None:
    """Run a timed submission over a holdout and score it.

    With no options: the bundled reference submission on a generated demo holdout.
    """
    referee = RefereeRun.from_options(opts)  # None without --referee
    try:
        settings = settings_from_options(ctx, opts, config)
        outcome = referee.run(settings) if referee else run(settings)
    except KeyboardInterrupt:  # before the run started (a started run returns "interrupted")
        click.echo("lpirc: interrupted before the run started (no image was handed out)", err=True)
        sys.exit(EXIT_INTERRUPTED)
    summary = format_run_summary(outcome)
    click.echo(referee.summary(summary) if referee else summary)
    if not no_report:
        click.echo(run_report_line(outcome.out_dir))
    sys.exit(outcome.exit_code)
