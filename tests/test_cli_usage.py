"""What the command line says to a user who mistypes: a usage error is click's (exit 2, naming
the option), a bad file is one line (exit 5), `lpirc` alone is its help (exit 2), and a command
that fails before it starts leaves nothing behind."""

from __future__ import annotations

import socket

import pytest
from click.testing import CliRunner

import scoring
from lpirc.cli import main

#: every command that takes --rules: (its words, the arguments it needs to get to parsing)
RULES_COMMANDS = [
    (["run"], []),
    (["score"], ["runs/x"]),
    (["report"], ["runs/x"]),
    (["leaderboard", "add"], ["runs/x"]),
    (["leaderboard", "show"], []),
    (["referee", "serve"], ["--holdout", "h"]),
    (["online", "serve"], ["--holdout", "h"]),
    (["fleet", "run"], ["sub.tflite", "--holdout", "h", "--out", "o"]),
]


def invoke(*args: str):
    return CliRunner().invoke(main, list(args), prog_name="lpirc")


@pytest.mark.parametrize("words,args", RULES_COMMANDS, ids=lambda a: " ".join(a))
def test_unknown_rules_on_the_command_line_is_a_usage_error_naming_it(words, args):
    r = invoke(*words, *args, "--rules", "nosuch")
    assert r.exit_code == 2, r.output
    lines = r.stderr.strip().splitlines()
    assert lines[0].startswith(f"Usage: lpirc {' '.join(words)} [OPTIONS]"), r.stderr
    assert lines[1] == f"Try 'lpirc {' '.join(words)} --help' for help."
    assert lines[-1] == ("Error: Invalid value for '--rules': 'nosuch' is not one of "
                         + ", ".join(f"'{n}'" for n in scoring.RULES) + ".")


@pytest.mark.parametrize("words,args", RULES_COMMANDS, ids=lambda a: " ".join(a))
def test_every_rules_option_lists_the_rule_sets_in_its_help(words, args):
    r = invoke(*words, "--help")
    assert r.exit_code == 0, r.output
    assert f"--rules [{'|'.join(scoring.RULES)}]" in r.output


def test_a_real_run_with_an_unknown_rule_set_exits_2(lpirc, tmp_path):
    """Through a real process; nothing is run (no run folder)."""
    r = lpirc("run", "--rules", "nosuch", "--out", tmp_path / "run", cwd=tmp_path)
    assert r.returncode == 2, r.stderr
    assert "Error: Invalid value for '--rules': 'nosuch'" in r.stderr
    assert not (tmp_path / "run").exists()


def test_lpirc_alone_prints_its_help_and_exits_2(lpirc, tmp_path):
    r = lpirc(cwd=tmp_path)
    assert r.returncode == 2 and r.stdout == ""
    # (python -m lpirc: click names the program so; the installed script is `lpirc`)
    assert r.stderr.startswith("Usage: python -m lpirc [OPTIONS] COMMAND [ARGS]...")
    assert "Commands:" in r.stderr
    r = lpirc("--help", cwd=tmp_path)
    assert r.returncode == 0 and r.stdout.startswith("Usage: python -m lpirc [OPTIONS] COMMAND")


def test_online_serve_help_counts_scoring_submissions_against_the_at_once_quota():
    r = CliRunner(env={"COLUMNS": "200"}).invoke(main, ["online", "serve", "--help"], terminal_width=200)
    assert r.exit_code == 0
    assert "Submissions per team queued, running or scoring at once (429 beyond)." in r.output


@pytest.mark.parametrize("group", ["online", "referee"])
def test_add_team_in_a_missing_folder_says_it_cannot_create_the_database(group, tmp_path):
    db = tmp_path / "nonexistent" / "x.sqlite"
    r = invoke(group, "add-team", "zed", "--db", str(db), "--password", "pw-long-enough")
    assert r.exit_code == 5, r.output
    assert r.stderr == (f"lpirc: error: {db}: cannot create the {group} database "
                        "(No such file or directory)\n")
    assert not db.parent.exists()


def serve_on_a_taken_port(lpirc, tmp_path, holdout, db):
    """`lpirc referee serve` on a port another socket listens on."""
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        return lpirc("referee", "serve", "--holdout", holdout, "--db", db, "--port", port,
                     cwd=tmp_path), port


def test_referee_serve_on_a_port_in_use_leaves_no_lock_file(lpirc, tmp_path, small_holdout):
    pytest.importorskip("starlette")
    db = tmp_path / "referee.sqlite"
    r, port = serve_on_a_taken_port(lpirc, tmp_path, small_holdout, db)
    assert r.returncode == 5, r.stderr
    assert r.stderr.startswith(f"lpirc: error: 127.0.0.1:{port}: cannot listen (")
    assert not (tmp_path / "referee.sqlite.lock").exists(), sorted(p.name for p in tmp_path.iterdir())
    # a lock file that was there before (another referee's, a previous run's) is left alone
    (tmp_path / "referee.sqlite.lock").write_text("")
    r, port = serve_on_a_taken_port(lpirc, tmp_path, small_holdout, db)
    assert r.returncode == 5 and (tmp_path / "referee.sqlite.lock").exists(), r.stderr
