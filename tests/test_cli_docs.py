"""The README's promises about the command line: the two set-up commands, CI running the second,
and `--help` on every command."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from click.testing import CliRunner

from lpirc.cli import main

REPO = Path(__file__).resolve().parents[1]


def setup_commands() -> list[str]:
    text = (REPO / "README.md").read_text()
    block = re.search(r"```\n(.*?)```", text, re.S)
    assert block, "README has no code block"
    return [line for line in block.group(1).splitlines() if line.strip()]


def test_readme_has_exactly_two_setup_commands_and_ci_runs_the_test_one():
    cmds = setup_commands()
    assert len(cmds) == 2
    assert "lpirc run" in cmds[0]
    assert "pytest" in cmds[1]
    assert cmds[1] in (REPO / ".ci" / "run").read_text()


def _commands(group, prefix=()):
    for name, cmd in group.commands.items():
        yield prefix + (name,)
        if hasattr(cmd, "commands"):
            yield from _commands(cmd, prefix + (name,))


@pytest.mark.parametrize("path", list(_commands(main)), ids=" ".join)
def test_every_command_has_help(path):
    r = CliRunner().invoke(main, [*path, "--help"])
    assert r.exit_code == 0, r.output
    assert "Usage:" in r.output


def test_every_command_is_in_the_readme():
    text = (REPO / "README.md").read_text()
    for path in _commands(main):
        assert f"lpirc {' '.join(path)}" in text, path


def test_default_install_gets_the_tf_exact_decoder_and_no_opencv():
    """`pip install .` (the README's first command) must bring simplejpeg (TF's JPEG decode,
    libjpeg-turbo with the fast IDCT) as a core dependency, and nothing whose release can change
    lpirc's pixels: no OpenCV; the resize is lpirc's own numpy."""
    import tomllib

    from lpirc.decoding import decoder_json
    from lpirc.preprocess import resize_backend

    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    core = [d.replace(" ", "") for d in project["dependencies"]]
    assert any(d.startswith("simplejpeg") for d in core)
    assert not any("opencv" in d for d in core)
    assert resize_backend().startswith("lpirc numpy")
    assert decoder_json("fast")["jpeg_decoder"].startswith("simplejpeg ")
