"""Fixtures shared by the test modules: the real data beside the checkout (skipped when absent),
the bundled reference submission, and small holdouts generated in temp folders."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("LPIRC_SHARED_DATA") or REPO.parent / "shared" / "data")


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
