"""``lpirc tune``: measure worker/thread/batch/decode settings with the run pipeline
(:func:`lpirc.tune.tune`) and write best.json for ``lpirc run --config``."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from lpirc.cli._options import (DELEGATE_HELP, MODEL_OPTION, clock_options, field_default, holdout_options, preprocess_options, setting,
                                settings_from_options, time_limit_option)
from lpirc.errors import EXIT_INTERRUPTED
from lpirc.settings import RunSettings
from lpirc.tune import TuneOptions, format_summary, tune

T = TuneOptions


@click.command("tune")
@MODEL_OPTION
@holdout_options(" (a sample is measured)", "for each setting's top-1")
@click.option("--out", type=click.Path(path_type=Path), help="Folder for best.json and tune.json. Default: runs/tune-<UTC time>-<model stem>/.")
@setting(T, "max_time_s", type=click.FloatRange(min=1), help="Wall-clock time the whole tune may take.")
@click.option("--sample", type=click.IntRange(min=8), help="Answers per trial (the holdout is cycled if smaller). Default: sized to fit --max-time-s.")
@setting(T, "repeats", type=click.IntRange(min=1), help="Measurements of each of the best few settings (median kept).")
@setting(T, "finalists", type=click.IntRange(min=1), help="How many of the fastest settings are re-measured.")
@setting(T, "cooldown_s", type=click.FloatRange(min=0), help="Pause between trials.")
@setting(T, "compare_defaults", "--compare-defaults/--no-compare-defaults", help="At the end, measure best vs default settings interleaved (A B A B) and print the ratio.")
@setting(T, "compare_pairs", "--pairs", type=click.IntRange(min=1), help="A/B pairs for --compare-defaults.")
@setting(T, "seed", "--seed", "tune_seed", type=int, help="Seed of the sample and of the shuffled trial order.")
@setting(T, "max_top1_drop", type=click.FloatRange(min=0), help="A faster decode is chosen only if its top-1 is within this fraction of the exact decode's.")
@time_limit_option(RunSettings, "The run's budget, for the 'fits' column (LPIRC: 10 minutes).")
@clock_options(RunSettings, "Budget clock of the run the settings are for (see lpirc run).",
               "Inference budget per image, for --clock inference.")
@setting(RunSettings, "delegate", help=DELEGATE_HELP)
@click.option("--crop-fraction", type=click.FloatRange(min=0.01, max=1.0), help="Fraction kept by the --crop (default: the model's sidecar, else "
              f"{field_default(RunSettings, 'crop_fraction'):g}).")
@click.option("--resize", type=click.Choice(["bilinear", "antialias"]), help="Resize method (default: the sidecar's, else "
              f"{field_default(RunSettings, 'resize')}).")
@preprocess_options
@click.option("--quiet", is_flag=True, help="No progress bar.")
@click.pass_context
def tune_cmd(ctx: click.Context, out: Path | None, max_time_s: float, sample: int | None,
             repeats: int, finalists: int, cooldown_s: float, compare_defaults: bool, pairs: int,
             tune_seed: int, max_top1_drop: float, **opts) -> None:
    """Measure worker/thread/batch/decode settings with the run pipeline; write best.json.

    Use the result with `lpirc run --config OUT/best.json` (options given to lpirc run win).
    """
    settings = settings_from_options(ctx, opts)
    result = tune(settings, max_time_s, sample=sample, repeats=repeats, finalists=finalists,
                  cooldown_s=cooldown_s, compare_defaults=compare_defaults, compare_pairs=pairs,
                  seed=tune_seed, out=out, max_top1_drop=max_top1_drop)
    click.echo(format_summary(result))
    if result.interrupted:  # what was measured is printed and kept in tune.json
        click.echo("lpirc: interrupted", err=True)
        sys.exit(EXIT_INTERRUPTED)
