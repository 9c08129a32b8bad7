"""Errors a user can act on. Each carries the exit code the CLI returns for it.

The CLI prints ``lpirc: error: <message>`` (one line, no traceback) and exits with
``exit_code``. Exit codes are documented in the README (its table) and per command in docs/:

    0  success
    1  a check failed (``lpirc submission check``) or the run produced no answers
    2  usage error (bad option or argument; click's own convention)
    3  bad model: missing, empty, truncated, not a flatbuffer, unresolved op, fails on invoke
    4  delegate unavailable (library absent or refused the model)
    5  bad input data: holdout folder, ground truth, result log, power log, config file; an
       output file that cannot be written (``lpirc meter log/idle --out``, checked first)
    6  nothing could be measured in the time allowed (``lpirc tune``)
    7  the power meter could not be opened or read, or stopped answering during ``lpirc meter
       log`` (its readings kept) (``lpirc meter ...``; ``lpirc run --meter`` never fails over
       its meter: it falls back and says so)
  130  interrupted (Ctrl-C); the partial log is kept and scored
"""

from __future__ import annotations

from scoring import ScoringError

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_MODEL = 3
EXIT_DELEGATE = 4
EXIT_INPUT = 5
EXIT_NO_TIME = 6
EXIT_METER = 7
EXIT_INTERRUPTED = 130


class LpircError(Exception):
    """Base: ``str(err)`` is the one line shown to the user."""

    exit_code = EXIT_FAILED


class ModelError(LpircError):
    exit_code = EXIT_MODEL


class DelegateError(LpircError):
    exit_code = EXIT_DELEGATE


class InputError(LpircError):
    exit_code = EXIT_INPUT


class NoTimeError(LpircError):
    exit_code = EXIT_NO_TIME


class MeterError(LpircError):
    """The power meter is absent, refused a command or stopped answering (lpirc.meters)."""

    exit_code = EXIT_METER


class FleetError(LpircError):
    """A fleet that cannot start: Ray missing, no cluster at the address, no device (exit 1)."""

    exit_code = EXIT_FAILED


#: Every error a user can act on: lpirc's own, and the scorer's (``scoring`` imports nothing of
#: lpirc; a ScoringError is bad input data, exit 5). Catch this tuple where such an error is
#: recorded instead of ending the command; lpirc/cli/_errors.py maps each to its exit code.
USER_ERRORS: tuple[type[Exception], ...] = (LpircError, ScoringError)
