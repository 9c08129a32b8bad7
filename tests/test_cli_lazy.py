"""``lpirc --help`` lists the commands without importing them (click's lazily loaded
subcommands, :class:`lpirc.cli.LpircGroup`) and prints what click prints with every command
loaded; a command's own ``--help`` imports its module and no other command group's.

What a process imported is read from its sys.modules after it ran ``python -m lpirc ...``, not
timed: a time would not hold on the shared 2-core machine.
The figures (wall time, before and after) are in docs/architecture.md.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys

import click
import pytest

from lpirc.cli import COMMANDS, LpircGroup

from conftest import REPO

#: the command groups' modules (lpirc.cli.run, lpirc.cli.fleet, ...)
GROUP_MODULES = {target.split(":")[0] for target, _ in COMMANDS.values()}
#: what no --help needs: the runtimes and the extras' libraries
HEAVY = {"tensorflow", "ai_edge_litert", "tflite_runtime", "ray", "starlette", "uvicorn", "httpx",
         "itsdangerous", "matplotlib", "pyvisa"}


#: runs ``python -m lpirc ARGS`` (lpirc/__main__.py, as the command line does) and then writes
#: the names in sys.modules, one a line, to the file named in LPIRC_MODULES_OUT
PROBE = """
import os, runpy, sys
sys.argv = ["lpirc", *sys.argv[1:]]
try:
    runpy.run_module("lpirc", run_name="__main__", alter_sys=True)
except SystemExit as e:
    code = e.code
else:
    code = 0
with open(os.environ["LPIRC_MODULES_OUT"], "w") as f:
    f.write("\\n".join(sorted(sys.modules)))
sys.exit(code)
"""


def imported(tmp_path, *args: str) -> set[str]:
    """The modules in sys.modules after ``python -m lpirc ARGS`` (which must exit 0)."""
    out = tmp_path / "modules.txt"
    path = os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH")) if p)
    r = subprocess.run([sys.executable, "-c", PROBE, *args], capture_output=True, text=True,
                       timeout=180, cwd=REPO,
                       env={**os.environ, "PYTHONPATH": path, "LPIRC_MODULES_OUT": str(out)})
    assert r.returncode == 0, r.stderr[-2000:]
    assert "Usage:" in r.stdout or args == ("--version",), r.stdout
    return set(out.read_text().split())


def load(name: str) -> click.Command:
    module, attr = COMMANDS[name][0].split(":")
    return getattr(__import__(module, fromlist=[attr]), attr)


@pytest.mark.slow
@pytest.mark.parametrize("args", [("--help",), ("--version",)], ids=" ".join)
def test_lpirc_help_imports_no_command(args, tmp_path):
    """`lpirc --help` and `lpirc --version`: click and lpirc/__init__, lpirc.cli; no command
    group's module, and not numpy or scoring (lpirc.errors imports scoring)."""
    mods = imported(tmp_path, *args)
    assert "click" in mods and "lpirc.cli" in mods  # the parse is what it claims to be
    loaded = sorted(m for m in mods if m in GROUP_MODULES or m.split(".")[0] in
                    {"numpy", "scoring", "PIL", *HEAVY})
    assert not loaded, f"lpirc {' '.join(args)} imported {loaded}"


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(COMMANDS))
def test_a_commands_help_imports_only_its_group(name, tmp_path):
    """`lpirc NAME --help` imports NAME's module, and of the other groups only those whose
    options or code it shares (run's --meter options are the meter group's, its report line the
    report command's; its --referee options are not in lpirc.cli.referee but in
    lpirc.cli._referee_run), and none of the runtimes or the extras' libraries."""
    shares = {"run": {"lpirc.cli.meter", "lpirc.cli.report"}}
    module = COMMANDS[name][0].split(":")[0]
    mods = imported(tmp_path, name, "--help")
    assert module in mods
    others = sorted(GROUP_MODULES & mods - {module} - shares.get(name, set()))
    assert not others, f"lpirc {name} --help imported other groups' modules: {others}"
    heavy = sorted(m for m in mods if m.split(".")[0] in HEAVY)
    assert not heavy, f"lpirc {name} --help imported {heavy}"


@pytest.mark.parametrize("name", sorted(COMMANDS))
def test_summary_is_the_first_sentence_of_the_commands_help(name):
    """COMMANDS' summary shortens, at every width, to what the command's own help does."""
    summary, cmd = COMMANDS[name][1], load(name)
    stand_in = click.Command(name, help=summary)
    for limit in range(5, 250):
        assert stand_in.get_short_help_str(limit) == cmd.get_short_help_str(limit), (limit, cmd.help)
    assert not cmd.hidden and not cmd.deprecated and not cmd.short_help


@pytest.mark.parametrize("width", [40, 60, 80, 100, 130, 200])
def test_help_lists_what_click_lists_with_every_command_loaded(width):
    """The group's listing, lazily (nothing imported) and click's own (Group.format_commands
    over the loaded commands), at each terminal width."""
    def listing(group: click.Group) -> str:
        ctx = click.Context(group, info_name="lpirc", terminal_width=width)
        formatter = ctx.make_formatter()
        group.format_commands(ctx, formatter)
        return formatter.getvalue()

    lazy = LpircGroup(name="lpirc", lazy=COMMANDS)
    loaded = click.Group(name="lpirc", commands={name: load(name) for name in COMMANDS})
    assert listing(lazy) == listing(loaded)
    assert not lazy._commands  # listed without loading
    assert len(listing(lazy).splitlines()) > len(COMMANDS)
