"""``lpirc run --referee URL``: its options (:func:`referee_run_options`) and the run against
an LPIRC referee (:class:`RefereeRun`, :mod:`lpirc.referee.client`). Apart from the referee's
own commands (:mod:`lpirc.cli.referee`), so that ``lpirc run`` loads none of their modules;
httpx (the ``referee`` extra) only once a run with ``--referee`` starts."""

from __future__ import annotations

from pathlib import Path
from urllib.parse import urlsplit

import click

from lpirc.referee import require_extra

_RUN_OPTIONS = (
    click.option("--referee", "referee_url", metavar="URL", help="An LPIRC referee (http://host:port): log in, download the holdout from it, post the answers (the referee scores them). No --holdout then."),
    click.option("--user", "referee_user", help="The team's account on the referee (with --referee)."),
    click.option("--password", "referee_password", envvar="LPIRC_REFEREE_PASSWORD", show_envvar=True, help="Its password (with --referee); from the environment keeps it out of the process list."),
    click.option("--referee-ahead", type=click.IntRange(min=100), default=1000, show_default=True, help="Images downloaded ahead of the answers, at most (bounds disk use)."),
    click.option("--referee-class-base", type=click.Choice(["auto", "0", "1"]), default="auto", show_default=True, help="CLASS_ID numbering the referee takes: 0 (0..999, lpirc's) or 1 (1..1000); auto: what its /help says, else 0. A number that contradicts its /help is exit 1."),
)


def referee_run_options(fn):
    """The ``lpirc run`` options of the referee client."""
    for opt in reversed(_RUN_OPTIONS):
        fn = opt(fn)
    return fn


class RefereeRun:
    """``lpirc run --referee``: what the options asked for; ``run(settings)`` runs it and keeps
    the report for ``summary()``."""

    def __init__(self, url: str, user: str, password: str, ahead: int,
                 class_base: int | None) -> None:
        self.url, self.user, self.password = url, user, password
        self.ahead, self.class_base = ahead, class_base
        self.report: dict | None = None

    @classmethod
    def from_options(cls, opts: dict) -> "RefereeRun | None":
        """Pop the referee options from ``opts``; None without --referee. UsageError when
        --user or --password is missing, or given without --referee."""
        url, user, password = (opts.pop(k) for k in ("referee_url", "referee_user",
                                                      "referee_password"))
        ahead, base = opts.pop("referee_ahead"), opts.pop("referee_class_base")
        base = None if base == "auto" else int(base)
        if not url:
            ctx = click.get_current_context(silent=True)
            from_env = ctx is not None and ctx.get_parameter_source("referee_password") \
                == click.core.ParameterSource.ENVIRONMENT  # an exported password: not an error
            if user or (password and not from_env):
                raise click.UsageError("--user and --password go with --referee URL")
            return None
        if not user or password is None:
            raise click.UsageError("--referee needs --user and --password")
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise click.UsageError(f"--referee {url!r}: expected http://HOST:PORT")
        for name in ("holdout", "ground_truth"):
            if opts.get(name) is not None:  # the referee serves the holdout and keeps its truth
                raise click.UsageError(f"--{name.replace('_', '-')} does not go with --referee "
                                       "(the referee serves the holdout and keeps its ground truth)")
        opts["holdout"] = Path(".")  # replaced by the download folder
        return cls(url, user, password, ahead, base)

    def run(self, settings):
        require_extra("httpx")
        from lpirc.referee.client import run_with_referee

        outcome, self.report = run_with_referee(settings, self.url, self.user, self.password,
                                                ahead=self.ahead, class_base=self.class_base)
        return outcome

    def summary(self, run_summary: str) -> str:
        """``lpirc run``'s summary, its score line saying who scores, then the referee's lines."""
        from lpirc.referee.client import format_report

        lines = [("score           by the referee, which keeps the ground truth "
                  "(lpirc referee results)" if ln.startswith("score           none:") else ln)
                 for ln in run_summary.splitlines()]
        return "\n".join(lines + ([format_report(self.report)] if self.report else []))
