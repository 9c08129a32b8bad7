"""The ``lpirc`` command line: the top layer. Parsing and printing only; the work is done by the
library (lpirc's other modules, :mod:`scoring`, :mod:`submission`), which never imports click
or this package (tests/test_layers.py checks that).

One module per command group (``run``, ``score``, ``holdout``, ``tune``, ``submission``,
``report``, ``leaderboard``, ``referee``, ``fleet``, ``online``, ``meter``), each loaded only
when its command runs or its own ``--help`` is asked for (click's lazily loaded subcommands,
:class:`LpircGroup`): ``lpirc --help`` lists the commands from :data:`COMMANDS` alone and
imports none of them (nor numpy), and ``lpirc score`` never loads the runner's modules.
Errors become one line and an exit code in one place, :mod:`lpirc.cli._errors`; options
shared by several commands, with their defaults read from the settings dataclasses, are in
:mod:`lpirc.cli._options`.

A new command: a module ``lpirc/cli/<group>.py`` holding a click command or group, and one
line in :data:`COMMANDS` (tests/test_cli_lazy.py checks that its summary there is the first
sentence of its help).
"""

from __future__ import annotations

import importlib

import click

from lpirc import __version__

#: command name -> ("module:attribute" of its click command or group, its summary: the first
#: sentence of its help, which is all ``lpirc --help`` shows of it, so the module need not be
#: imported to list it)
COMMANDS = {
    "fleet": ("lpirc.cli.fleet:fleet_group",
              "Evaluate many submissions across many devices, on Ray (needs the fleet extra)."),
    "holdout": ("lpirc.cli.holdout:holdout", "Make and inspect holdout sets."),
    "leaderboard": ("lpirc.cli.leaderboard:leaderboard",
                    "Standings of scored runs, in a SQLite database (--db): add, show, remove."),
    "meter": ("lpirc.cli.meter:meter_group",
              "A power meter lpirc reads itself: a Yokogawa WT310 over VISA (the meter extra)."),
    "online": ("lpirc.cli.online:online", "The online track as a service: teams upload, devices "
               "run, standings publish themselves."),
    "referee": ("lpirc.cli.referee:referee", "The LPIRC referee: serve the holdout over HTTP, "
                "take answers, meter and score sessions."),
    "report": ("lpirc.cli.report:report_cmd", "Draw one run, or compare several, as one "
               "self-contained HTML page (no network request, prints well): summary, manifest, "
               "the race against the budget, throughput per worker, latency, worst classes and "
               "confusions, failed images, power."),
    "rules": ("lpirc.cli.score:rules_cmd",
              "List the rule sets `lpirc score --rules` knows, with their source year."),
    "run": ("lpirc.cli.run:run_cmd", "Run a timed submission over a holdout and score it."),
    "score": ("lpirc.cli.score:score_cmd", "Score result logs offline under one rule set."),
    "submission": ("lpirc.cli.submission:submission", "Build and check a quantized submission."),
    "tune": ("lpirc.cli.tune:tune_cmd", "Measure worker/thread/batch/decode settings with the "
             "run pipeline; write best.json."),
}


class LpircGroup(click.Group):
    """The ``lpirc`` group, click's ``LazyGroup``: each command imported from :data:`COMMANDS`
    when it is run or its own ``--help`` is shown; the group's ``--help`` lists the commands
    not yet imported by their summary there (shortened to the terminal as click shortens a
    command's help). Every command runs inside :func:`~lpirc.cli._errors.one_line_errors`.
    ``commands`` (click's dict) loads them all, for code that walks the tree (the docs tests)."""

    def __init__(self, *args, lazy: dict[str, tuple[str, str]], **kwargs) -> None:
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
        module, attr = self._lazy.pop(name)[0].split(":")
        self._commands[name] = getattr(importlib.import_module(module), attr)

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted({*self._commands, *self._lazy})

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        if name in self._lazy:
            self._load(name)
        return self._commands.get(name)

    def _listed(self, name: str) -> click.Command:
        """The command as ``--help`` lists it: itself once loaded, else a stand-in holding its
        summary (click shortens both the same way: first sentence, cut to the width)."""
        if name in self._lazy:
            return click.Command(name, help=self._lazy[name][1])
        return self._commands[name]

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        """click's own listing (``Group.format_commands``), without importing the commands."""
        commands = [(n, c) for n in self.list_commands(ctx) if not (c := self._listed(n)).hidden]
        if commands:
            limit = formatter.width - 6 - max(len(n) for n, _ in commands)
            with formatter.section("Commands"):
                formatter.write_dl([(n, c.get_short_help_str(limit)) for n, c in commands])

    def invoke(self, ctx: click.Context):
        # imported here: lpirc.errors imports scoring (numpy), which `lpirc --help` and
        # `--version` (never invoked) do without
        from lpirc.cli._errors import one_line_errors

        with one_line_errors():
            return super().invoke(ctx)


@click.group(cls=LpircGroup, lazy=COMMANDS, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="lpirc")
def main() -> None:
    """Run, time and score on-device image classifiers by the IEEE LPIRC rules."""
