"""The ``lpirc`` command line: the top layer. Parsing and printing only; the work is done by the
library (lpirc's other modules, :mod:`scoring`, :mod:`submission`), which never imports click
or this package (tests/test_layers.py checks that).

One module per command group (``run``, ``score``, ``holdout``, ``tune``, ``submission``,
``report``, ``leaderboard``, ``referee``, ``fleet``, ``online``, ``meter``), each loaded only when its command runs
or ``--help`` lists it (:data:`COMMANDS`), so ``lpirc score`` never loads the runner's
modules. Errors become one line and an exit code in one place, :mod:`lpirc.cli._errors`;
options shared by several commands, with their defaults read from the settings dataclasses,
are in :mod:`lpirc.cli._options`.

A new command: a module ``lpirc/cli/<group>.py`` holding a click command or group, and one
line in :data:`COMMANDS`.
"""

from __future__ import annotations

import importlib

import click

from lpirc import __version__
from lpirc.cli._errors import one_line_errors

#: command name -> "module:attribute" of its click command or group
COMMANDS = {
    "fleet": "lpirc.cli.fleet:fleet_group",
    "holdout": "lpirc.cli.holdout:holdout",
    "leaderboard": "lpirc.cli.leaderboard:leaderboard",
    "meter": "lpirc.cli.meter:meter_group",
    "online": "lpirc.cli.online:online",
    "referee": "lpirc.cli.referee:referee",
    "report": "lpirc.cli.report:report_cmd",
    "rules": "lpirc.cli.score:rules_cmd",
    "run": "lpirc.cli.run:run_cmd",
    "score": "lpirc.cli.score:score_cmd",
    "submission": "lpirc.cli.submission:submission",
    "tune": "lpirc.cli.tune:tune_cmd",
}


class LpircGroup(click.Group):
    """The ``lpirc`` group: each command imported from :data:`COMMANDS` on first use, and every
    command run inside :func:`~lpirc.cli._errors.one_line_errors`. ``commands`` (click's dict)
    loads them all, for code that walks the tree, such as the docs tests."""

    def __init__(self, *args, lazy: dict[str, str], **kwargs) -> None:
        self._lazy = dict(lazy)
        super().__init__(*args, **kwargs)

    @property
    def commands(self) -> dict[str, click.Command]:  # type: ignore[override]
        for name in list(self._lazy):
            self._load(name)
        return self._commands

    @commands.setter
    def commands(self, value: dict[str, click.Command]) -> None:
        self._commands = value

    def _load(self, name: str) -> None:
        module, attr = self._lazy.pop(name).split(":")
        self._commands[name] = getattr(importlib.import_module(module), attr)

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted({*self._commands, *self._lazy})

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        if name in self._lazy:
            self._load(name)
        return self._commands.get(name)

    def invoke(self, ctx: click.Context):
        with one_line_errors():
            return super().invoke(ctx)


@click.group(cls=LpircGroup, lazy=COMMANDS, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="lpirc")
def main() -> None:
    """Run, time and score on-device image classifiers by the IEEE LPIRC rules."""
