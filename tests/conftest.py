"""Fixtures shared by the test modules: ``lpirc`` (run ``python -m lpirc`` as a child process,
the way a user does), the real data beside the checkout (skipped when absent), the bundled
reference submission, and small holdouts generated in temp folders.

``REPO`` (the checkout) and :func:`run_lpirc` are imported by the test modules and helpers that
need them outside a fixture (``from conftest import REPO, run_lpirc``).

Markers (registered in pyproject.toml): ``slow`` (over about 5 s; ``pytest -m "not slow"`` is
the quick loop), ``ray``, ``browser``, ``tf``."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("LPIRC_SHARED_DATA") or REPO.parent / "shared" / "data")


def run_lpirc(*args, cwd: Path | str | None = REPO, env: dict | None = None, timeout: float = 180,
              input: str | None = None) -> subprocess.CompletedProcess:
    """Run ``python -m lpirc ARGS`` with this checkout's lpirc first on the path, to the end;
    the finished process (``returncode``, text ``stdout`` and ``stderr``). ``args`` become
    strings (paths, numbers); ``env`` is added to this process's environment; ``timeout`` in
    seconds (subprocess.TimeoutExpired beyond it: generous, the machine may be loaded)."""
    path = os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH")) if p)
    return subprocess.run([sys.executable, "-m", "lpirc", *map(str, args)], capture_output=True,
                          text=True, cwd=cwd, input=input, timeout=timeout,
                          env={**os.environ, "PYTHONPATH": path, **(env or {})})


@pytest.fixture(autouse=True)
def _close_online_clients():
    """After each test, close the online teams' HTTP clients it left open (online_helpers)."""
    yield
    helpers = sys.modules.get("online_helpers")
    if helpers is not None:
        helpers.close_teams()


@pytest.fixture
def lpirc():
    """:func:`run_lpirc`, for a test: ``lpirc("score", run_dir).returncode``."""
    return run_lpirc


@pytest.fixture(scope="session")
def shared_data() -> Path:
    if not (SHARED / "imagenet-dev").is_dir():
        pytest.skip(f"real data not available ({SHARED} absent)")
    return SHARED


@pytest.fixture(scope="session")
def reference_model() -> Path:
    from lpirc.settings import bundled_model

    path = bundled_model()
    assert path.is_file(), f"bundled reference submission missing: {path}"
    return path


@pytest.fixture(scope="session")
def small_holdout(tmp_path_factory) -> Path:
    """A 40-image demo holdout with ground_truth.csv, made once per test session."""
    from lpirc.demo import make_demo_holdout

    out = tmp_path_factory.mktemp("holdout") / "demo"
    make_demo_holdout(out, count=40, seed=7)
    return out
