"""Image sources and the dispatcher they feed: a folder listed up front, and a feed that grows
while the run goes (a thread adds images as a referee client would while it downloads them).
The pipeline is the real one: worker processes, the bundled model, real JPEGs."""

from __future__ import annotations

import itertools
import json
import os
import shutil
import threading
import time
from pathlib import Path

import pytest

from lpirc.holdout import open_holdout
from lpirc.runner import run
from lpirc.settings import resolve_settings
from lpirc.sources import FolderSource, GrowingSource, ImageSource
from scoring.records import MANIFEST_KEYS, RECORD_KEYS, Record


def _images(holdout: Path) -> list[str]:
    return sorted(p.name for p in holdout.iterdir() if p.suffix == ".jpg")


def test_folder_source_gives_the_holdout_order_in_chunks(small_holdout):
    src = FolderSource(small_holdout, seed=3)
    ref = open_holdout(small_holdout, seed=3)
    assert isinstance(src, ImageSource)
    assert src.total == len(ref.files) == 40 and src.root == small_holdout
    got = []
    while not src.exhausted():
        part = src.take(7, timeout_s=0.0)
        assert 0 < len(part) <= 7
        got += part
    assert tuple(got) == ref.files
    assert src.take(5) == [] and src.files_sha256() == ref.files_sha256


def test_growing_source_waits_for_names_and_ends_when_closed(tmp_path):
    feed = GrowingSource(tmp_path, total=5)
    t = time.monotonic()
    assert feed.take(4, timeout_s=0.05) == []  # nothing yet: returns after the timeout
    assert time.monotonic() - t >= 0.04
    assert not feed.exhausted()
    threading.Timer(0.05, feed.add, args=(["a.jpg", "b.jpg", "c.jpg"],)).start()
    assert feed.take(2, timeout_s=5.0) == ["a.jpg", "b.jpg"]  # woken by the other thread
    feed.add(["d.jpg"])
    with pytest.raises(ValueError, match="more than total=5"):
        feed.add(["e.jpg", "f.jpg"])
    feed.close()
    with pytest.raises(ValueError, match="after close"):
        feed.add(["g.jpg"])
    assert not feed.exhausted()  # closed, but two names not taken yet
    assert feed.take(10) == ["c.jpg", "d.jpg"]
    assert feed.exhausted() and feed.take(1, timeout_s=1.0) == []
    # the same digest a folder listing of those names in that order would have
    assert feed.files_sha256() == FolderSource.of_names(
        tmp_path, ["a.jpg", "b.jpg", "c.jpg", "d.jpg"]).files_sha256()


def _settings(model: Path, folder: Path, out: Path, **kw):
    return resolve_settings({"model": model, "holdout": folder, "out": out, "workers": 2,
                             "quiet": True, **kw}, set())


@pytest.mark.slow
def test_run_from_a_growing_source_answers_images_while_they_arrive(
        tmp_path, reference_model, small_holdout):
    """A thread copies the holdout's images into an empty folder in batches of 8, adding each
    batch to the feed; the run answers the early batches before the last one arrives, logs
    every image once, in the order added, shows each chunk to ``on_answers`` and scores it."""
    names = _images(small_holdout)
    incoming = tmp_path / "incoming"
    incoming.mkdir()
    shutil.copy(small_holdout / "ground_truth.csv", incoming)
    feed = GrowingSource(incoming)
    closed_at: list[float] = []
    seen: list[Record] = []
    t0 = time.monotonic()

    def download():
        for i in range(0, len(names), 8):
            for n in names[i:i + 8]:
                shutil.copy(small_holdout / n, incoming / n)
            feed.add(names[i:i + 8])
            time.sleep(0.4)
        closed_at.append(time.monotonic() - t0)
        feed.close()

    out = tmp_path / "run"
    threading.Thread(target=download, daemon=True).start()
    outcome = run(_settings(reference_model, incoming, out), progress=False, source=feed,
                  on_answers=seen.extend)
    assert outcome.status == "complete" and outcome.exit_code == 0, outcome.notes
    log = [json.loads(x) for x in (out / "results.jsonl").read_text().splitlines()]
    assert [r["image"] for r in sorted(log, key=lambda r: r["index"])] == names
    assert sorted(r["index"] for r in log) == list(range(len(names)))
    assert all(list(r) == list(RECORD_KEYS) for r in log)
    # on_answers saw exactly what was logged, typed
    assert [r.to_json() for r in seen] == log
    # answers came while the feed was still growing (the run started within the 2 s feed)
    assert min(r.t_s for r in seen) < closed_at[0] - 0.5
    m = outcome.manifest
    assert set(m) <= set(MANIFEST_KEYS) and json.loads((out / "manifest.json").read_text()) == m
    assert m["holdout"]["source"] == "GrowingSource"
    assert m["holdout"]["image_count"] == len(names) == m["images_logged"]
    assert m["holdout"]["files_sha256"] == FolderSource.of_names(incoming, names).files_sha256()
    assert outcome.score is not None and outcome.score["images_answered"] == len(names)
    assert outcome.score["top1"] > 0.5


@pytest.mark.slow
def test_a_feed_that_never_closes_ends_at_the_wall_budget(tmp_path, reference_model,
                                                           small_holdout):
    feed = GrowingSource(small_holdout)
    feed.add(_images(small_holdout)[:6])  # and nothing more, never closed
    out = tmp_path / "run"
    outcome = run(_settings(reference_model, small_holdout, out, time_limit_s=2.0),
                  progress=False, source=feed)
    assert outcome.status == "budget_exhausted"
    assert outcome.manifest["images_logged"] == 6 and outcome.manifest["wall_time_s"] < 4.0


def test_a_feed_closed_empty_answers_nothing_and_exits_1(tmp_path, reference_model,
                                                         small_holdout):
    feed = GrowingSource(small_holdout)
    feed.close()
    outcome = run(_settings(reference_model, small_holdout, tmp_path / "run"), progress=False,
                  source=feed)
    assert outcome.status == "complete" and outcome.exit_code == 1
    assert outcome.manifest["images_logged"] == 0


@pytest.mark.slow
def test_chunks_are_small_at_the_start_and_end_and_large_between(tmp_path, reference_model,
                                                                 small_holdout):
    """Answers of one chunk arrive together (same worker, same t_s): with one worker, its first
    two chunks and the tail of a holdout listed up front are 4 images, the middle 16."""
    hold = tmp_path / "h"
    hold.mkdir()
    rows = ["filename,label"]
    for c in range(5):  # 200 images as hard links
        for row in (small_holdout / "ground_truth.csv").read_text().splitlines()[1:]:
            name, label = row.split(",")
            os.link(small_holdout / name, hold / f"c{c}_{name}")
            rows.append(f"c{c}_{name},{label}")
    (hold / "ground_truth.csv").write_text("\n".join(rows) + "\n")
    out = tmp_path / "run"
    outcome = run(_settings(reference_model, hold, out, workers=1), progress=False)
    assert outcome.status == "complete"
    log = [json.loads(x) for x in (out / "results.jsonl").read_text().splitlines()]
    sizes = [len(list(g)) for _, g in itertools.groupby(log, key=lambda r: r["t_s"])]
    assert sum(sizes) == 200
    assert sizes[:2] == [4, 4] and set(sizes[2:-1]) <= {4, 16} and 16 in sizes
    assert sizes[-4:] == [4, 4, 4, 4]  # fewer left than keep one worker busy at 16
    # and in order: once small again, it stays small
    first_small_tail = next(i for i in range(len(sizes) - 1, 0, -1) if sizes[i - 1] == 16)
    assert set(sizes[first_small_tail:]) == {4}


@pytest.mark.slow
def test_an_on_answers_that_raises_ends_the_run_and_keeps_the_log(tmp_path, reference_model,
                                                                   small_holdout):
    """A client's callback failing (say, its referee went away) stops the run: the error
    propagates, no worker is left running, and every answer that arrived is in the log (the
    log is written before the callback is called), also when the callback keeps failing while
    the workers stop."""
    psutil = pytest.importorskip("psutil")

    class Gone(Exception):
        pass

    for fail_from in (2, 1):
        calls = []

        def post(records):
            calls.append(len(records))
            if len(calls) >= fail_from:
                raise Gone("referee unreachable")

        out = tmp_path / f"run{fail_from}"
        with pytest.raises(Gone):
            run(_settings(reference_model, small_holdout, out), progress=False,
                on_answers=post)
        log = (out / "results.jsonl").read_text().splitlines()
        assert len(log) == sum(calls) >= 4 and len(calls) >= fail_from
        m = json.loads((out / "manifest.json").read_text())
        assert m["status"] == "failed" and m["error"]["kind"] == "on_answers"
        assert "Gone: referee unreachable" in m["error"]["message"]
        assert not [p for p in psutil.Process().children(recursive=True)
                    if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]
