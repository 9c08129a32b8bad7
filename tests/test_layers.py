"""The layering, read from the source with ``ast`` (every import statement, those inside
functions included; those under ``if TYPE_CHECKING:`` never run and are left out):

- the command line (``lpirc/cli/``, and ``lpirc/__main__.py`` that starts it) is the top layer:
  no other module imports click or ``lpirc.cli``;
- no import cycle among the modules of ``lpirc``, ``scoring`` and ``submission``;
- an import of lpirc's own modules inside a function is one of the few listed in LAZY, each
  with its reason (a heavy or optional third-party library behind it);
- no function longer than 80 lines.
"""

from __future__ import annotations

import ast
import functools
from dataclasses import dataclass
from pathlib import Path

import pytest

from conftest import REPO

PACKAGES = ("lpirc", "scoring", "submission")
TOP = ("lpirc.cli", "lpirc.__main__")  # the command line, and `python -m lpirc` that starts it
MAX_FUNCTION_LINES = 80
MAX_MODULE_LINES = 800  # issue 18: a module a newcomer can read whole

#: (importing module, imported module) pairs allowed inside a function, and why
LAZY = {
    ("lpirc.cli", "lpirc.cli._errors"): "numpy (lpirc.errors imports scoring): only once a "
                                        "command runs, never for `lpirc --help` or --version",
    ("lpirc.cli._options", "lpirc.login_gate"): "asyncio (~20 ms): only the servers' commands "
                                                "(referee serve, online serve), never run or tune",
    ("lpirc.report", "lpirc.report_figures"): "matplotlib, only when a figure is drawn",
    ("lpirc.online.scheduler", "lpirc.report_figures"): "matplotlib, loaded on the scoring thread",
    ("lpirc.cli.referee", "lpirc.referee.core"): "itsdangerous (referee extra)",
    ("lpirc.cli.referee", "lpirc.referee.server"): "Starlette and uvicorn (referee extra)",
    ("lpirc.cli._referee_run", "lpirc.referee.client"): "httpx (referee extra)",
    ("lpirc.cli.online", "lpirc.online.app"): "Starlette and uvicorn (online extra)",
    ("lpirc.cli.meter", "lpirc.meters.post"): "httpx (referee extra): only `lpirc meter post`",
}


@dataclass(frozen=True)
class Import:
    module: str  # the importing module, e.g. "lpirc.cli.run"
    target: str  # what it names, e.g. "lpirc.runner" or "click"
    line: int
    in_function: bool


def modules() -> dict[str, Path]:
    """Dotted name -> file, for every module of the three packages."""
    out = {}
    for pkg in PACKAGES:
        for path in sorted((REPO / pkg).rglob("*.py")):
            parts = list(path.relative_to(REPO).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            out[".".join(parts)] = path
    return out


MODULES = modules()


def _targets(node: ast.Import | ast.ImportFrom, module: str, is_package: bool) -> list[str]:
    """The modules an import statement names: ``from a.b import c`` names ``a.b.c`` when that
    is a module of ours, else ``a.b``; relative imports are made absolute."""
    if isinstance(node, ast.Import):
        return [a.name for a in node.names]
    base = node.module or ""
    if node.level:
        here = module.split(".") if is_package else module.split(".")[:-1]
        here = here[: len(here) - (node.level - 1)]
        base = ".".join(here + ([base] if base else []))
    subs = [f"{base}.{a.name}" for a in node.names if f"{base}.{a.name}" in MODULES]
    return subs or [base]


def _walk(node: ast.AST, module: str, is_package: bool, in_function: bool, out: list[Import]) -> None:
    for child in ast.iter_child_nodes(node):
        if isinstance(child, ast.If) and "TYPE_CHECKING" in ast.unparse(child.test):
            for other in child.orelse:  # the else branch does run
                _walk(other, module, is_package, in_function, out)
            continue
        if isinstance(child, (ast.Import, ast.ImportFrom)):
            out += [Import(module, t, child.lineno, in_function)
                    for t in _targets(child, module, is_package)]
        inner = in_function or isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda))
        _walk(child, module, is_package, inner, out)


@functools.cache
def trees() -> dict[str, ast.Module]:
    """Every module's syntax tree, parsed once for the tests below."""
    return {name: ast.parse(path.read_text(), str(path)) for name, path in MODULES.items()}


@functools.cache
def imports() -> tuple[Import, ...]:
    out: list[Import] = []
    for name, tree in trees().items():
        _walk(tree, name, MODULES[name].name == "__init__.py", False, out)
    return tuple(out)


def own(target: str) -> str | None:
    """The module of ours an import names (the longest dotted prefix that is one), or None."""
    parts = target.split(".")
    while parts:
        if ".".join(parts) in MODULES:
            return ".".join(parts)
        parts.pop()
    return None


def is_top(module: str) -> bool:
    return any(module == t or module.startswith(t + ".") for t in TOP)


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in sorted(edges.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                found.append(sorted(comp))

    for v in sorted(edges):
        if v not in index:
            visit(v)
    return found


def test_the_parser_sees_every_kind_of_import():
    """Guard for the tests below: the walk finds a top-level, an in-function and a relative
    import, and skips a TYPE_CHECKING one."""
    src = ("from typing import TYPE_CHECKING\nimport click\nfrom . import runner\n"
           "if TYPE_CHECKING:\n    import lpirc.cli\n"
           "def f():\n    from lpirc.cli import main\n")
    out: list[Import] = []
    _walk(ast.parse(src), "lpirc.x", False, False, out)
    assert [(i.target, i.in_function) for i in out] == [
        ("typing", False), ("click", False), ("lpirc.runner", False), ("lpirc.cli", True)]
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_only_the_command_line_imports_click_or_the_cli():
    bad = [f"{MODULES[i.module].relative_to(REPO)}:{i.line} imports {i.target}"
           for i in imports() if not is_top(i.module)
           and (i.target.split(".")[0] == "click" or is_top(own(i.target) or ""))]
    assert not bad, ("the library must not import click or lpirc.cli (raise a typed error from "
                     "lpirc/errors.py; the CLI maps it to an exit code):\n" + "\n".join(bad))


def test_no_import_cycle():
    edges: dict[str, set[str]] = {m: set() for m in MODULES}
    for i in imports():
        target = own(i.target)
        if target and target != i.module:
            edges[i.module].add(target)
    found = cycles(edges)
    assert not found, "import cycles (each a set of modules that import one another):\n" + \
        "\n".join(" <-> ".join(c) for c in found)


def test_in_function_imports_of_our_modules_are_the_listed_few():
    lazy = [i for i in imports() if i.in_function and own(i.target) not in (None, i.module)]
    bad = [f"{MODULES[i.module].relative_to(REPO)}:{i.line} imports {own(i.target)} inside a function"
           for i in lazy if not {(i.module, own(i.target)), (i.module, i.target)} & set(LAZY)
           and own(i.target) != "lpirc"]
    assert not bad, ("import lpirc's own modules at the top (only a heavy or optional "
                     "third-party library behind one is a reason to wait; then add it to "
                     "LAZY with that reason):\n" + "\n".join(bad))


@pytest.mark.parametrize("pkg", PACKAGES)
def test_no_function_over_80_lines(pkg):
    long = []
    for name, path in MODULES.items():
        if name.split(".")[0] != pkg:
            continue
        for node in ast.walk(trees()[name]):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                n = node.end_lineno - node.lineno + 1
                if n > MAX_FUNCTION_LINES:
                    long.append(f"{path.relative_to(REPO)}:{node.lineno} {node.name}: {n} lines")
    assert not long, f"functions over {MAX_FUNCTION_LINES} lines:\n" + "\n".join(long)


@pytest.mark.parametrize("pkg", PACKAGES)
def test_no_module_over_800_lines(pkg):
    long = [f"{path.relative_to(REPO)}: {n} lines" for name, path in MODULES.items()
            if name.split(".")[0] == pkg
            and (n := len(path.read_text(encoding="utf-8").splitlines())) > MAX_MODULE_LINES]
    assert not long, f"modules over {MAX_MODULE_LINES} lines (split by concern):\n" + "\n".join(long)
