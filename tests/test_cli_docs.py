"""The README's promises about the command line: the two set-up commands, CI running the second,
and `--help` on every command."""

from __future__ import annotations

import functools
import re
from pathlib import Path

import pytest
from click.testing import CliRunner

from lpirc.cli import main

from conftest import REPO, run_lpirc


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


# The documentation: README.md and the manual in docs/, checked against the code.

DOCS = REPO / "docs"


def doc_files() -> list[Path]:
    return [REPO / "README.md", REPO / "bench" / "README.md", *sorted(DOCS.rglob("*.md"))]


def docs_text() -> str:
    return "\n".join(p.read_text() for p in sorted(DOCS.rglob("*.md")))


def test_readme_stays_short():
    lines = (REPO / "README.md").read_text().count("\n")
    assert lines <= 300, f"README.md has {lines} lines; the manual goes in docs/ (at most 300)"


@pytest.mark.parametrize("path", list(_commands(main)), ids=" ".join)
def test_every_command_is_in_the_docs(path):
    assert f"lpirc {' '.join(path)}" in docs_text(), f"lpirc {' '.join(path)} is on no page of docs/"


@functools.lru_cache(maxsize=1)
def exit_codes() -> dict[str, int]:
    """Every exit code the command line can give: the EXIT_* constants of lpirc/errors.py, the
    codes lpirc/cli/_errors.py maps errors to, and the ``exit_code`` every error class (a
    subclass of an ...Error or Exception) in lpirc, scoring and submission sets (read from the source, so no optional extra is needed)."""
    import ast

    import lpirc.errors
    from lpirc.cli._errors import EXIT_CODES

    consts = {k: v for k, v in vars(lpirc.errors).items() if k.startswith("EXIT_") and isinstance(v, int)}
    codes = dict(consts)
    codes |= {f"{kind.__name__} (lpirc/cli/_errors.py)": c for kind, c in EXIT_CODES.items() if c is not None}
    for path in sorted(p for pkg in ("lpirc", "scoring", "submission") for p in (REPO / pkg).rglob("*.py")):
        text = path.read_text()
        if not re.search(r"^\s+exit_code\s*(:[^=\n]*)?=", text, re.M):
            continue
        for cls in ast.walk(ast.parse(text)):
            bases = [getattr(b, "id", getattr(b, "attr", "")) for b in getattr(cls, "bases", [])]
            if not isinstance(cls, ast.ClassDef) or not any(b.endswith(("Error", "Exception")) for b in bases):
                continue  # only error classes: a dataclass's exit_code field is a record
            for stmt in cls.body:
                targets = stmt.targets if isinstance(stmt, ast.Assign) else [stmt.target] \
                    if isinstance(stmt, ast.AnnAssign) and stmt.value is not None else []
                if any(getattr(t, "id", None) == "exit_code" for t in targets):
                    v = stmt.value
                    code = v.value if isinstance(v, ast.Constant) else consts.get(getattr(v, "id", ""))
                    assert isinstance(code, int), f"{path.relative_to(REPO)}: {cls.name}.exit_code is not an int I can read"
                    codes[f"{path.relative_to(REPO)}:{cls.name}"] = code
    return codes


def readme_exit_code_table() -> set[int]:
    text = (REPO / "README.md").read_text()
    section = re.search(r"^#+ Exit codes\n(.*?)(?=^#)", text, re.S | re.M)
    assert section, "README has no 'Exit codes' section"
    return {int(m) for m in re.findall(r"^\| (\d+) \|", section.group(1), re.M)}


def test_readme_exit_code_table_is_every_exit_code():
    codes = exit_codes()
    table = readme_exit_code_table()
    missing = sorted({f"{c} ({k})" for k, c in codes.items() if c not in table})
    assert not missing, f"exit codes missing from the README's table: {missing}"
    stale = table - set(codes.values())
    assert not stale, f"README's table has codes lpirc never exits with: {sorted(stale)}"


def test_every_exit_code_is_documented_in_docs():
    said = lambda code: re.compile(rf"\bexit(?:s| code| codes| status)?:? {code}\b|^\| {code} \|", re.M)
    text = docs_text()
    missing = sorted({f"{c} ({k})" for k, c in exit_codes().items() if not said(c).search(text)})
    assert not missing, f"no page of docs/ says when these happen ('exit N'): {missing}"


def slug(heading: str) -> str:
    """The anchor GitHub gives a Markdown heading."""
    s = re.sub(r"[^\w\- ]", "", heading.strip().lower())
    return s.replace(" ", "-")


def anchors(path: Path) -> set[str]:
    seen: dict[str, int] = {}
    out = set()
    for line in strip_code(path.read_text()).splitlines():
        m = re.match(r"#{1,6} (.*)", line)
        if m:
            s = slug(m.group(1))
            n = seen.get(s, 0)
            seen[s] = n + 1
            out.add(s if n == 0 else f"{s}-{n}")
    return out


def strip_code(text: str) -> str:
    """Markdown without its fenced code blocks (whose text is not markup)."""
    return re.sub(r"^(```|~~~).*?^\1[^\n]*$", "", text, flags=re.S | re.M)


def relative_links(path: Path) -> list[str]:
    text = re.sub(r"`[^`\n]*`", "``", strip_code(path.read_text()))
    targets = re.findall(r"\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)", text)
    return [t for t in targets if not re.match(r"[a-z][a-z0-9+.-]*:", t)]


LINKS = [(p, t) for p in doc_files() for t in relative_links(p)]


def test_the_docs_link_to_each_other():
    assert len(LINKS) > 20, "README and docs/ should link to their pages"


@pytest.mark.parametrize("page,target", LINKS, ids=[f"{p.relative_to(REPO)}->{t}" for p, t in LINKS])
def test_every_relative_link_resolves(page, target):
    file, _, anchor = target.partition("#")
    dest = (page.parent / file).resolve() if file else page
    assert dest.exists(), f"{page.relative_to(REPO)}: link to {target}: no such file"
    assert REPO in dest.parents or dest == REPO, f"{page.relative_to(REPO)}: {target} leaves the repository"
    if anchor:
        assert dest.suffix == ".md", f"{page.relative_to(REPO)}: {target}: an anchor into a non-Markdown file"
        assert anchor in anchors(dest), f"{page.relative_to(REPO)}: {target}: no heading with that anchor"


def test_every_page_of_docs_is_in_the_index_and_the_readme():
    index = (DOCS / "README.md").read_text()
    readme = (REPO / "README.md").read_text()
    for page in sorted(DOCS.glob("*.md")):
        if page.name != "README.md":
            assert f"]({page.name})" in index, f"docs/{page.name} is not linked from docs/README.md"
            assert f"](docs/{page.name})" in readme, f"docs/{page.name} is not linked from README.md"


def transcript_labels(text: str) -> list[str]:
    """The label column of `lpirc run`'s printout: each line's text before its first run of two
    or more spaces or its first colon (`run folder`, `Run`, `top-1 accuracy`, ...)."""
    return [re.split(r"\s{2,}|: ", line.strip())[0] for line in text.splitlines() if line.strip()]


@pytest.mark.slow
def test_readme_transcript_is_what_the_first_command_prints(tmp_path):
    """The README shows what `lpirc run` printed; the same lines, in the same order, must come
    out today (the figures and paths differ from machine to machine, the labels must not)."""
    blocks = re.findall(r"```\n(.*?)```", (REPO / "README.md").read_text(), re.S)
    shown = next(b for b in blocks if b.startswith("run folder"))
    r = run_lpirc("run", cwd=tmp_path, timeout=300)
    assert r.returncode == 0, r.stderr
    assert transcript_labels(r.stdout) == transcript_labels(shown), r.stdout


def _options():
    import click

    for path in _commands(main):
        cmd = main
        for name in path:
            cmd = cmd.commands[name]
        for p in cmd.params:
            # p.opts only: a --x/--no-x flag's --x is its name (--no-x alone named once let
            # --compare-defaults go undocumented)
            longs = [o for o in p.opts if o.startswith("--")] if isinstance(p, click.Option) else []
            if longs:
                yield path, tuple(longs)


@pytest.mark.parametrize("path,names", list(_options()), ids=lambda v: " ".join(v) if isinstance(v, tuple) else v)
def test_every_option_is_named_in_the_docs(path, names):
    """Each option of each command is named somewhere in README.md or docs/ (its page says what
    it does beyond --help's line)."""
    text = "\n".join(p.read_text() for p in doc_files())
    assert any(re.search(rf"{re.escape(n)}(?![\w-])", text) for n in names), \
        f"lpirc {' '.join(path)} {names[0]}: named on no page of README.md or docs/"


def test_docs_quote_the_setup_lines_as_the_readme_has_them():
    """A page that shows a set-up line (`pip install ... && ...`) shows the README's own."""
    cmds = setup_commands()
    for page in sorted(DOCS.rglob("*.md")):
        for line in page.read_text().splitlines():
            if re.match(r"python3 -m pip install .*&& ", line.strip()):
                assert line.strip() in cmds, f"docs/{page.name}: '{line.strip()}' is not the README's"


def test_no_page_or_message_installs_lpirc_from_pypi():
    """lpirc is not on PyPI: `pip install 'lpirc[meter]'` ends in 'No matching distribution
    found for lpirc' (a new user's walk through docs/meter.md). Extras are installed from the
    checkout, `pip install '.[meter]'`, in every page and every error message."""
    files = list(doc_files()) + [p for d in ("lpirc", "scoring", "submission")
                                 for p in (REPO / d).rglob("*.py")]
    bad = [f"{p.relative_to(REPO)}:{i}" for p in files
           for i, line in enumerate(p.read_text().splitlines(), 1)
           if re.search(r"pip install ['\"]?lpirc\[", line)]
    assert not bad, f"pip install 'lpirc[...]' (not on PyPI) at {bad}"


def test_every_command_in_the_readme_table_exists():
    """The other way round: a command the README's table names is one `lpirc` has (a new user
    types what the table says)."""
    text = (REPO / "README.md").read_text()
    table = re.search(r"^\| command \|.*?\n(.*?)\n\n", text, re.S | re.M)
    assert table, "README has no command table"
    known = {" ".join(p) for p in _commands(main)}
    named = {m for row in table.group(1).splitlines()
             for m in re.findall(r"`lpirc ([a-z][a-z -]*?)`", row.split("|")[1])}
    assert named, "no command found in the README's table"
    assert not named - known, f"the README's table names commands lpirc does not have: {sorted(named - known)}"


def test_the_architecture_names_every_module():
    """docs/architecture.md's layout names every module (by file name) of lpirc, scoring,
    submission and bench, so a module added without a word there fails here."""
    text = (DOCS / "architecture.md").read_text()
    mods = [p for d in ("lpirc", "scoring", "submission", "bench") for p in (REPO / d).rglob("*.py")
            if p.name != "__init__.py"]
    missing = sorted(str(p.relative_to(REPO)) for p in mods if p.name not in text)
    assert not missing, f"docs/architecture.md's layout does not name: {missing}"
