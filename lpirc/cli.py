"""The ``lpirc`` command line. Parsing and printing only: the work is done by the modules it calls.

Heavy modules (LiteRT, TensorFlow, Pillow) are imported inside the commands that need them, so
``lpirc score`` and ``lpirc rules`` run where only numpy is installed.
"""

from __future__ import annotations

import functools
import sys
from pathlib import Path

import click

from lpirc import __version__
from lpirc.errors import LpircError


def friendly_errors(fn):
    """Turn an LpircError into one line on stderr and its documented exit code."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except LpircError as e:
            click.echo(f"lpirc: error: {e}", err=True)
            sys.exit(e.exit_code)

    return wrapper


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="lpirc")
def main() -> None:
    """Run, time and score on-device image classifiers by the IEEE LPIRC rules."""


@main.group()
def holdout() -> None:
    """Make and inspect holdout sets."""


@main.group()
def submission() -> None:
    """Build and check a quantized submission."""


# --- lpirc run ------------------------------------------------------------------------------


# --- lpirc score / lpirc rules --------------------------------------------------------------


# --- lpirc holdout make ---------------------------------------------------------------------


# --- lpirc tune -----------------------------------------------------------------------------


# --- lpirc submission build -----------------------------------------------------------------


# --- lpirc submission check -----------------------------------------------------------------
