"""lpirc.holdout: run order, and `lpirc holdout make` from both source layouts."""

from __future__ import annotations

import csv
import hashlib
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from lpirc.cli import main
from lpirc.errors import InputError
from lpirc.holdout import make_holdout, open_holdout

SYNSETS = ["n01440764", "n01443537", "n01484850"]


def _img(seed: int, w: int = 48, h: int = 40) -> Image.Image:
    a = np.random.RandomState(seed).randint(0, 256, (h, w, 3)).astype(np.uint8)
    return Image.fromarray(a, "RGB")


@pytest.fixture
def flat_src(tmp_path) -> Path:
    src = tmp_path / "flat"
    src.mkdir()
    for k, s in enumerate(SYNSETS):
        for j in range(2):
            _img(10 * k + j).save(src / f"{s}_pic{j}.JPEG", "JPEG")
    (src / "notes.txt").write_text("ignored")
    return src


@pytest.fixture
def nested_src(tmp_path) -> Path:
    src = tmp_path / "nested"
    for k, s in enumerate(SYNSETS):
        (src / s).mkdir(parents=True)
        for j in range(2):
            _img(10 * k + j).save(src / s / f"photo{j}.jpg", "JPEG")
    return src


# --- open_holdout ---------------------------------------------------------------------------


def test_open_holdout_lists_images_only_and_orders_by_seed(tmp_path):
    root = tmp_path / "h"
    (root / "sub").mkdir(parents=True)
    (root / ".hidden").mkdir()
    names = [f"img_{i:03d}.jpg" for i in range(20)]
    for n in names:
        (root / n).write_bytes(b"x")
    (root / "sub" / "deep.png").write_bytes(b"x")
    for junk in (".DS_Store", "ground_truth.csv", "manifest.json", "README.TXT", ".hidden/a.jpg"):
        (root / junk).write_bytes(b"x")
    h0 = open_holdout(root, seed=0)
    assert sorted(h0.files) == sorted(names + ["sub/deep.png"])
    assert open_holdout(root, seed=0) == h0  # deterministic
    h1 = open_holdout(root, seed=1)
    assert h1.files != h0.files and sorted(h1.files) == sorted(h0.files)
    assert h0.files_sha256 == hashlib.sha256("\n".join(h0.files).encode()).hexdigest()
    assert h0.files_sha256 != h1.files_sha256
    assert h0.seed == 0 and h0.root == root


def test_open_holdout_errors_name_the_folder(tmp_path):
    for path, words in [
        (tmp_path / "missing", "not found"),
        (tmp_path / "file.jpg", "not a folder"),
        (tmp_path / "empty", "no images"),
    ]:
        if path.name == "file.jpg":
            path.write_bytes(b"x")
        elif path.name == "empty":
            path.mkdir()
            (path / "ground_truth.csv").write_text("filename,label\n")
        with pytest.raises(InputError) as ei:
            open_holdout(path)
        assert str(path) in str(ei.value) and words in str(ei.value)


# --- make_holdout ---------------------------------------------------------------------------


def _truth(out: Path) -> dict[str, str]:
    with open(out / "ground_truth.csv", newline="") as f:
        rows = list(csv.reader(f))
    assert rows[0] == ["filename", "label"]
    return dict(rows[1:])


@pytest.mark.parametrize("layout", ["flat_src", "nested_src"])
def test_make_from_both_layouts_with_more_images_than_sources(layout, request, tmp_path):
    src = request.getfixturevalue(layout)
    out = tmp_path / "out"
    gt = make_holdout(src, out, count=15, seed=3, progress=False)
    assert gt == out / "ground_truth.csv"
    truth = _truth(out)
    assert len(truth) == 15 and set(truth.values()) == set(SYNSETS)
    assert sorted(truth) == [f"img_{i:06d}.jpg" for i in range(1, 16)]
    assert not any(s in n for n in truth for s in SYNSETS)  # names hide the class
    h = open_holdout(out)
    assert sorted(h.files) == sorted(truth)
    # First pass copies the 6 sources byte for byte; the other 9 are re-encoded variants.
    src_bytes = {p.read_bytes() for p in src.rglob("*") if p.suffix.lower() in (".jpeg", ".jpg")}
    copies = [n for n in truth if (out / n).read_bytes() in src_bytes]
    assert len(copies) == 6
    for n in truth:
        with Image.open(out / n) as im:
            assert im.format == "JPEG"
            im.load()


def test_make_is_deterministic_and_seed_dependent(flat_src, tmp_path):
    def digest(out: Path) -> dict[str, str]:
        return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in out.iterdir()}

    make_holdout(flat_src, tmp_path / "a", count=10, seed=7, progress=False)
    make_holdout(flat_src, tmp_path / "b", count=10, seed=7, progress=False, workers=2)
    make_holdout(flat_src, tmp_path / "c", count=10, seed=8, progress=False)
    assert digest(tmp_path / "a") == digest(tmp_path / "b")
    assert digest(tmp_path / "a") != digest(tmp_path / "c")


def test_make_with_worker_processes(flat_src, tmp_path):
    out = tmp_path / "many"
    make_holdout(flat_src, out, count=60, seed=0, progress=False, workers=2)
    assert len(_truth(out)) == 60 and len(open_holdout(out).files) == 60


def test_make_subset_when_count_below_sources(nested_src, tmp_path):
    make_holdout(nested_src, tmp_path / "o", count=2, seed=0, progress=False)
    assert len(_truth(tmp_path / "o")) == 2


# --- CLI ------------------------------------------------------------------------------------


def _cli(*args: str):
    return CliRunner().invoke(main, ["holdout", "make", *args])


def _one_error_line(res) -> str:
    assert res.exit_code == 5, res.output
    lines = [ln for ln in res.output.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("lpirc: error: "), res.output
    assert "Traceback" not in res.output
    return lines[0]


def test_cli_makes_holdout(flat_src, tmp_path):
    res = _cli(str(flat_src), str(tmp_path / "o"), "--count", "8", "--seed", "1", "--quiet")
    assert res.exit_code == 0, res.output
    assert len(_truth(tmp_path / "o")) == 8


def test_cli_refuses_non_empty_output_unless_force(flat_src, tmp_path):
    out = tmp_path / "o"
    assert _cli(str(flat_src), str(out), "--count", "8", "-q").exit_code == 0
    line = _one_error_line(_cli(str(flat_src), str(out), "--count", "4", "-q"))
    assert str(out) in line and "--force" in line
    res = _cli(str(flat_src), str(out), "--count", "4", "-q", "--force")
    assert res.exit_code == 0, res.output
    assert len(open_holdout(out).files) == 4  # the earlier 8 were removed


def test_cli_errors_are_one_line_exit_5(flat_src, tmp_path):
    line = _one_error_line(_cli(str(tmp_path / "nope"), str(tmp_path / "o"), "--count", "3"))
    assert "nope" in line
    bad = tmp_path / "bad"
    bad.mkdir()
    _img(0).save(bad / "cat.jpg", "JPEG")
    line = _one_error_line(_cli(str(bad), str(tmp_path / "o2"), "--count", "3"))
    assert "cat.jpg" in line and "class" in line
    wrong = tmp_path / "wrong"
    (wrong / "n99999999").mkdir(parents=True)
    _img(0).save(wrong / "n99999999" / "a.jpg", "JPEG")
    line = _one_error_line(_cli(str(wrong), str(tmp_path / "o3"), "--count", "3"))
    assert "n99999999" in line and "synset" in line
    # A broken source only matters when a variant must be decoded from it.
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "n01440764_x.JPEG").write_bytes(b"not a jpeg")
    line = _one_error_line(_cli(str(broken), str(tmp_path / "o4"), "--count", "3"))
    assert "n01440764_x.JPEG" in line and "decode" in line


def test_cli_count_must_be_positive(flat_src, tmp_path):
    res = _cli(str(flat_src), str(tmp_path / "o"), "--count", "0")
    assert res.exit_code == 2


@pytest.mark.slow
@pytest.mark.parametrize("workers", [1, 2])
def test_failed_make_leaves_no_half_holdout(flat_src, tmp_path, workers):
    """A source that cannot be re-encoded stops the make; what it had written is removed, so
    the next try is not refused as 'not empty' and no holdout without ground truth is left."""
    (flat_src / "n01443537_zzz.JPEG").write_bytes(b"not a jpeg")
    new = tmp_path / "new"
    with pytest.raises(InputError, match="n01443537_zzz.JPEG"):
        make_holdout(flat_src, new, count=100, seed=0, progress=False, workers=workers)
    assert not new.exists()
    kept = tmp_path / "kept"
    kept.mkdir()
    (kept / "mine.txt").write_text("not lpirc's")
    with pytest.raises(InputError):
        make_holdout(flat_src, kept, count=100, seed=0, progress=False, force=True,
                     workers=workers)
    assert sorted(p.name for p in kept.iterdir()) == ["mine.txt"]


@pytest.mark.slow
@pytest.mark.parametrize("how", ["ctrl-c", "ctrl-c-background"])
def test_ctrl_c_during_make_is_exit_130_and_leaves_nothing(flat_src, tmp_path, how):
    """Ctrl-C as a terminal sends it (to the process group): one line, exit 130, no half-made
    holdout left behind (click alone would print 'Aborted!' and exit 1). Also for a make started
    as a shell's background job (SIGINT ignored for it, as for a suite run under nohup or `&`:
    it was ignored and the make ran to the end, exit 0).

    Robust on a loaded machine: the interrupt goes out once images are being written, whenever
    that is (up to 180 s after the start), and may land at any instant of the make, the start of
    its worker pool included (make_holdout holds Ctrl-C back while the pool forks its workers
    and queues the work, so no worker is left holding the pipes); the make then has 180 s to
    stop and clean up."""
    import os
    import signal
    import subprocess
    import sys
    import time

    out = tmp_path / "big"
    p = subprocess.Popen([sys.executable, "-m", "lpirc", "holdout", "make", str(flat_src),
                          str(out), "--count", "200000", "--quiet"],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                         start_new_session=True,
                         preexec_fn=(lambda: signal.signal(signal.SIGINT, signal.SIG_IGN))
                         if how == "ctrl-c-background" else None)
    try:
        end = time.monotonic() + 180
        while time.monotonic() < end and p.poll() is None and not (
                out.is_dir() and len(os.listdir(out)) > 20):
            time.sleep(0.05)
        assert out.is_dir() and p.poll() is None, "the make never got going"
        os.killpg(p.pid, signal.SIGINT)
        _, stderr = p.communicate(timeout=180)
    finally:
        if p.poll() is None:  # a failed check must not leave the make (and its workers) running
            os.killpg(p.pid, signal.SIGKILL)
            p.communicate()
    assert p.returncode == 130, stderr
    assert "Traceback" not in stderr and "Aborted" not in stderr
    assert "interrupted" in stderr
    assert not out.exists()
