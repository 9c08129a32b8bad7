"""The one place where an error becomes what the user sees: one line on stderr,
``lpirc: error: <message>``, and the exit code documented in :mod:`lpirc.errors` (and the
README). No traceback for an error a user can act on; anything else is a bug and keeps its
traceback.

The library raises typed errors and never exits: :class:`~lpirc.errors.LpircError` and its
subclasses carry their exit code; :class:`scoring.ScoringError` (the scorer imports nothing of
lpirc) is bad input data, exit 5. Ctrl-C is exit 130. The ``lpirc`` group
(:mod:`lpirc.cli`) runs every command inside :func:`one_line_errors`, so commands need no
decorator of their own.
"""

from __future__ import annotations

import contextlib
import sys
from typing import Iterator

import click

import scoring
from lpirc.errors import EXIT_INPUT, EXIT_INTERRUPTED, LpircError

#: error type -> exit code; None: the error's own ``exit_code`` (every LpircError subclass).
EXIT_CODES: dict[type[Exception], int | None] = {
    LpircError: None,
    scoring.ScoringError: EXIT_INPUT,
}


def exit_code(e: BaseException) -> int | None:
    """The documented exit code for ``e``; None for an error that is not the user's to act on."""
    for kind, code in EXIT_CODES.items():
        if isinstance(e, kind):
            return e.exit_code if code is None else code  # type: ignore[attr-defined]
    return None


def fail(message: object, code: int) -> None:
    """Print ``lpirc: error: <message>`` on stderr and exit with ``code``."""
    click.echo(f"lpirc: error: {message}", err=True)
    sys.exit(code)


@contextlib.contextmanager
def one_line_errors() -> Iterator[None]:
    """Run a command: a known error is one line and its exit code, Ctrl-C ``lpirc:
    interrupted`` and 130 (click would print "Aborted!" and exit 1)."""
    try:
        yield
    except KeyboardInterrupt:
        click.echo("lpirc: interrupted", err=True)
        sys.exit(EXIT_INTERRUPTED)
    except Exception as e:  # noqa: BLE001 - mapped below, or raised again unchanged
        code = exit_code(e)
        if code is None:
            raise
        fail(e, code)
