"""The procedural demo dataset (lpirc.demo): classes, determinism, holdout layout, cache."""

from __future__ import annotations

import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from lpirc import demo

from conftest import REPO, run_lpirc

SYNSETS = sorted((REPO / "scoring" / "ilsvrc2012_synsets.txt").read_text().split())


def _read_gt(folder: Path) -> list[tuple[str, str]]:
    lines = (folder / "ground_truth.csv").read_text().splitlines()
    assert lines[0] == "filename,label"
    return [tuple(line.split(",")) for line in lines[1:]]


def test_classes_map_to_distinct_real_synsets():
    assert 8 <= len(demo.DEMO_CLASSES) <= 12
    synsets = [c.synset for c in demo.DEMO_CLASSES]
    assert len(set(synsets)) == len(synsets)
    assert len({c.key for c in demo.DEMO_CLASSES}) == len(synsets)
    for c in demo.DEMO_CLASSES:
        assert c.synset in SYNSETS, c
        assert c.index == SYNSETS.index(c.synset)
        assert c.key in demo._DRAW


@pytest.mark.slow
def test_holdout_is_deterministic_and_valid(tmp_path):
    a = demo.make_demo_holdout(tmp_path / "a", count=30, seed=5)
    b = demo.make_demo_holdout(tmp_path / "b", count=30, seed=5)
    c = demo.make_demo_holdout(tmp_path / "c", count=30, seed=6)
    names = sorted(p.name for p in a.iterdir())
    assert names == sorted([f"img_{i:06d}.jpg" for i in range(1, 31)] + ["ground_truth.csv"])
    for n in names:
        assert (a / n).read_bytes() == (b / n).read_bytes(), n
    assert (a / "img_000001.jpg").read_bytes() != (c / "img_000001.jpg").read_bytes()

    gt = _read_gt(a)
    assert [f for f, _ in gt] == [f"img_{i:06d}.jpg" for i in range(1, 31)]
    valid = {c.synset for c in demo.DEMO_CLASSES}
    labels = [lab for _, lab in gt]
    assert set(labels) <= valid
    counts = {s: labels.count(s) for s in valid}
    assert set(counts.values()) == {3}  # balanced: 30 images, 10 classes
    for f, _ in gt:
        with Image.open(a / f) as im:
            assert im.format == "JPEG" and im.mode == "RGB"
            assert 160 <= im.width <= 320 and 160 <= im.height <= 320


@pytest.mark.slow
def test_sizes_vary_and_images_are_not_trivial(tmp_path):
    out = demo.make_demo_holdout(tmp_path / "h", count=20, seed=11)
    sizes = set()
    for f, _ in _read_gt(out):
        with Image.open(out / f) as im:
            sizes.add(im.size)
            a = np.asarray(im, np.float32)
        assert a.std() > 5  # not a flat picture
    assert len(sizes) > 10
    assert len({w / h for w, h in sizes}) > 5


def test_samples_are_deterministic_and_sliceable():
    full = [(np.asarray(im), k) for im, k in demo.demo_samples(12, seed=3)]
    again = [(np.asarray(im), k) for im, k in demo.demo_samples(12, seed=3)]
    part = [(np.asarray(im), k) for im, k in demo.demo_samples(12, seed=3, start=5, stop=9)]
    indices = {c.index for c in demo.DEMO_CLASSES}
    assert all(k in indices for _, k in full)
    for (x, k), (y, j) in zip(full, again):
        assert k == j and np.array_equal(x, y)
    for (x, k), (y, j) in zip(full[5:9], part):
        assert k == j and np.array_equal(x, y)
    assert len(part) == 4


@pytest.mark.slow
def test_demo_holdout_path_is_cached_and_atomic(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.setattr(demo, "DEMO_HOLDOUT_COUNT", 12)
    results, errors = [], []

    def worker():
        try:
            results.append(demo.demo_holdout_path())
        except Exception as e:  # pragma: no cover - reported below
            errors.append(e)

    threads = [threading.Thread(target=worker) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    root = tmp_path / "cache" / "lpirc"
    assert set(results) == {root / demo.DEMO_HOLDOUT_NAME}
    assert [p.name for p in root.iterdir()] == [demo.DEMO_HOLDOUT_NAME]  # no temp folders left
    path = results[0]
    assert len(_read_gt(path)) == 12
    stamp = (path / "ground_truth.csv").stat().st_mtime_ns
    assert demo.demo_holdout_path() == path
    assert (path / "ground_truth.csv").stat().st_mtime_ns == stamp  # not regenerated


def test_incomplete_cache_is_replaced(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    monkeypatch.setattr(demo, "DEMO_HOLDOUT_COUNT", 5)
    stale = tmp_path / "lpirc" / demo.DEMO_HOLDOUT_NAME
    stale.mkdir(parents=True)
    (stale / "img_000001.jpg").write_bytes(b"half")
    path = demo.demo_holdout_path()
    assert path == stale and len(_read_gt(path)) == 5
    assert Image.open(path / "img_000001.jpg").format == "JPEG"


@pytest.mark.slow
def test_unwritable_cache_is_one_line_naming_it(tmp_path):
    blocker = tmp_path / "cache-is-a-file"
    blocker.write_text("")
    r = run_lpirc("run", "--out", tmp_path / "run", "--quiet", env={"XDG_CACHE_HOME": str(blocker)})
    assert r.returncode == 5, r.stderr
    lines = [l for l in r.stderr.splitlines() if l.strip()]
    assert len(lines) == 1 and str(blocker) in lines[0] and "XDG_CACHE_HOME" in lines[0]
    assert "Traceback" not in r.stderr


@pytest.mark.slow
def test_demo_does_not_import_tensorflow():
    code = "import sys, lpirc.demo; sys.exit('tensorflow' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], cwd=REPO).returncode == 0


@pytest.mark.parametrize("count", [1, 7])
def test_small_counts(tmp_path, count):
    out = demo.make_demo_holdout(tmp_path / "h", count=count, seed=0)
    assert len(_read_gt(out)) == count
