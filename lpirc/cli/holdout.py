"""``lpirc holdout make``: an anonymised holdout from a labelled folder
(:func:`lpirc.holdout.make_holdout`)."""

from __future__ import annotations

import time
from pathlib import Path

import click

from lpirc.holdout import make_holdout


@click.group()
def holdout() -> None:
    """Make and inspect holdout sets."""


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
def holdout_make(src: Path, out: Path, count: int, seed: int, force: bool, quiet: bool,
                 ground_truth: Path | None) -> None:
    """Make an anonymised holdout OUT (img_000001.jpg ..., ground_truth.csv) from a labelled
    folder SRC of <synset>_*.JPEG files or <synset>/ subfolders (or any, with --ground-truth)."""
    t0 = time.perf_counter()
    gt = make_holdout(src, out, count, seed=seed, progress=not quiet, force=force,
                      ground_truth=ground_truth,
                      on_note=lambda n: click.echo(f"lpirc: note: {n}", err=True))
    click.echo(f"wrote {count} images and {gt} in {time.perf_counter() - t0:.1f} s")
