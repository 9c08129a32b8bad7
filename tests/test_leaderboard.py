"""lpirc/leaderboard.py (the standings database) and `lpirc leaderboard`: real runs, and runs
written the way `lpirc run` writes them with hand-computed standings and side prizes."""

from __future__ import annotations

import csv
import io
import json
import os
import re
import shutil
import sqlite3
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest

import scoring
from lpirc import leaderboard as lb
from lpirc.errors import InputError

from conftest import REPO, run_lpirc as lpirc

SYN = scoring.synsets()
N = 20  # images in the hand-made ground truth


# --- runs written the way lpirc run writes them ---------------------------------------------


def write_gt(path: Path) -> Path:
    path.write_text("filename,label\n" + "".join(f"img{i:02d}.jpg,{SYN[i]}\n" for i in range(N)))
    return path


def fake_run(folder: Path, gt: Path, correct: int, wh: float, files_sha="h" * 64,
             start="2026-11-30T08:00:00.000000Z", source="estimated", time_limit_s=600.0,
             ms_per_image=30.0) -> Path:
    """A run folder whose first ``correct`` of N answers are right (the rest wrong), each with
    10 ms of inference at t_s = 0.1 s x index, and an energy of ``wh``."""
    folder.mkdir(parents=True)
    lines = []
    for i in range(N):
        top1 = i if i < correct else (i + 1) % 1000
        lines.append({"image": f"img{i:02d}.jpg", "index": i, "top5": [top1, 900, 901, 902, 903],
                      "scores": [0.9, 0.05, 0.03, 0.01, 0.01], "error": None, "t_s": 0.1 * i,
                      "latency_ms": 12.0, "inference_ms": 10.0, "worker": i % 2, "late": False})
    (folder / "results.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines))
    manifest = {
        "lpirc_version": "0.1.0", "status": "complete",
        "runtime": {"name": "ai_edge_litert", "version": "2.3.0"},
        "delegate": {"requested": "cpu", "ran": "xnnpack", "note": None},
        "model": {"path": f"/m/{folder.name}.tflite", "sha256": "m" * 64},
        "holdout": {"path": "/h", "image_count": N, "order_seed": 0, "files_sha256": files_sha,
                    "ground_truth": str(gt)},
        "settings": {"rules": "lpirc-onsite"},
        "budget": {"clock": "wall", "time_limit_s": time_limit_s, "ms_per_image": ms_per_image},
        "start_utc": start, "wall_time_s": 2.0, "inference_time_s": 0.2,
        "energy": {"wh": wh, "source": source, "method": "test"},
        "machine": {"cpu": "test CPU", "cores_logical": 2, "arch": "x86_64"},
        "notes": [], "images_answered": N, "images_failed": 0, "images_late": 0,
    }
    (folder / "manifest.json").write_text(json.dumps(manifest))
    return folder


# Six submissions on one 20-image holdout: (correct answers, energy Wh).
FIELD = {"A": (20, 1.0), "B": (20, 0.9), "C": (18, 0.8), "D": (12, 0.5), "E": (10, 0.2), "F": (6, 0.25)}
# Hand-computed, lpirc-onsite (score = top-1 / Wh):
#   A 1.0/1.0 = 1.0   B 1.0/0.9 = 1.111   C 0.9/0.8 = 1.125   D 0.6/0.5 = 1.2   E 0.5/0.2 = 2.5
#   F 0.3/0.25 = 1.2  ->  places E 1, D 2, F 2 (equal scores share), C 4, B 5, A 6.
# Side prizes (population std):
#   accuracy mean = 4.3 / 6 = 0.71667; deviations .28333 .28333 .18333 -.11667 -.21667 -.41667;
#   squares sum = 0.42833, / 6 = 0.071389, std = 0.26719; threshold 0.98385 -> {A, B};
#   least energy among them: B (0.9 Wh).
#   energy mean = 3.65 / 6 = 0.60833; squares sum = 0.58208, / 6 = 0.097014, std = 0.31147;
#   threshold 0.29686 -> {E 0.2, F 0.25}; highest accuracy among them: E (0.5).
#   (With the sample std, 0.29269, the accuracy threshold would be 1.0094: no winner.)
PLACES = {"E": 1, "D": 2, "F": 2, "C": 4, "B": 5, "A": 6}
SCORES = {"A": 1.0, "B": 1.0 / 0.9, "C": 0.9 / 0.8, "D": 1.2, "E": 2.5, "F": 1.2}


@pytest.fixture
def field_runs(tmp_path) -> dict[str, Path]:
    gt = write_gt(tmp_path / "gt.csv")
    return {name: fake_run(tmp_path / name, gt, c, wh, start=f"2026-11-30T08:00:0{i}.000000Z")
            for i, (name, (c, wh)) in enumerate(FIELD.items())}


@pytest.fixture
def db(tmp_path):
    conn = lb.open_db(tmp_path / "db" / "standings.sqlite")
    yield conn
    conn.close()


def test_hand_computed_standings_and_side_prizes(db, field_runs):
    for run in field_runs.values():
        assert lb.add_entry(db, lb.entry_from_run(run)) is True
    rows = lb.standings(db)
    assert [r.entry.submission for r in rows] == ["E", "D", "F", "C", "B", "A"]
    assert {r.entry.submission: r.place for r in rows} == PLACES
    for r in rows:
        assert r.score == pytest.approx(SCORES[r.entry.submission])
        assert r.group == 1 and not r.rescored
    prizes = {r.entry.submission: r.prizes for r in rows if r.prizes}
    assert prizes == {"B": (lb.PRIZE_LOW_ENERGY,), "E": (lb.PRIZE_HIGH_ACCURACY,)}


def test_side_prizes_directly():
    res = [(FIELD[k][0] / N, FIELD[k][1]) for k in "ABCDEF"]
    assert lb.side_prizes(res) == {lb.PRIZE_LOW_ENERGY: [1], lb.PRIZE_HIGH_ACCURACY: [4]}
    # unknown energy: left out of both prizes and of the mean and std
    assert lb.side_prizes(res + [(1.0, None)]) == {lb.PRIZE_LOW_ENERGY: [1], lb.PRIZE_HIGH_ACCURACY: [4]}
    # ties share the prize; too small a field gets none
    # (accuracy mean 0.5, std 0.4: threshold 0.9 exactly; energy mean 5, std 4: threshold 1 exactly)
    tied = [(0.9, 1.0), (0.9, 1.0), (0.1, 9.0), (0.1, 9.0)]
    assert lb.side_prizes(tied) == {lb.PRIZE_LOW_ENERGY: [0, 1], lb.PRIZE_HIGH_ACCURACY: [0, 1]}
    assert lb.side_prizes([(0.9, 1.0), (0.1, 9.0)]) == {lb.PRIZE_LOW_ENERGY: [], lb.PRIZE_HIGH_ACCURACY: []}


def test_rescored_under_other_rules(db, field_runs):
    for run in field_runs.values():
        lb.add_entry(db, lb.entry_from_run(run))
    # ovic-2018: 20 answers x 10 ms = 200 ms, within 30 ms x 20: score = top-1
    rows = lb.standings(db, rules="ovic-2018")
    assert all(r.rescored and r.rules == "ovic-2018" for r in rows)
    assert {r.entry.submission: (r.place, r.score) for r in rows} == {
        "A": (1, 1.0), "B": (1, 1.0), "C": (3, 0.9), "D": (4, 0.6), "E": (5, 0.5), "F": (6, 0.3)}
    # a budget of 5 ms x 20 = 100 ms counts only the first 10 answers
    rows = lb.standings(db, rules="ovic-2018", ms_per_image=5.0)
    assert {r.entry.submission: r.top1 for r in rows}["A"] == 0.5


def test_same_run_twice_changes_nothing(db, field_runs, tmp_path):
    e = lb.entry_from_run(field_runs["A"])
    assert lb.add_entry(db, e) is True
    assert lb.add_entry(db, e) is False
    copy = shutil.copytree(field_runs["A"], tmp_path / "copy-of-A")  # same run, other folder
    assert lb.add_entry(db, lb.entry_from_run(copy)) is False
    assert [x.uid for x in lb.entries(db)] == [e.uid]
    assert lb.get_entry(db, e.uid) == e  # round trip through the file


def test_different_holdouts_are_ranked_apart(db, tmp_path):
    gt = write_gt(tmp_path / "gt.csv")
    lb.add_entry(db, lb.entry_from_run(fake_run(tmp_path / "x", gt, 20, 1.0, files_sha="1" * 64)))
    lb.add_entry(db, lb.entry_from_run(fake_run(tmp_path / "y", gt, 10, 1.0, files_sha="1" * 64,
                                                start="2026-11-30T09:00:00Z")))
    lb.add_entry(db, lb.entry_from_run(fake_run(tmp_path / "z", gt, 5, 1.0, files_sha="2" * 64,
                                                start="2026-11-30T10:00:00Z")))
    rows = lb.standings(db)
    assert [(r.group, r.place, r.entry.submission) for r in rows] == [(1, 1, "x"), (1, 2, "y"), (2, 1, "z")]
    from lpirc.cli.leaderboard import format_table

    assert "entries on different holdouts, ground truths, rule sets or budgets are never ranked together" in format_table(rows, "db", None)


@pytest.mark.slow
def test_different_budgets_are_ranked_apart_and_titled_with_their_own(tmp_path):
    """A run with a 1 s wall budget is not ranked against runs that had 600 s, and each group's
    title gives the budget its entries had (not the rule set's default); under ovic-2018 the
    same for ms per image."""
    gt = write_gt(tmp_path / "gt.csv")
    runs = [fake_run(tmp_path / "long-a", gt, 20, 1.0), fake_run(tmp_path / "long-b", gt, 10, 1.0, start="2026-11-30T09:00:00Z"),
            fake_run(tmp_path / "short", gt, 20, 0.1, start="2026-11-30T10:00:00Z", time_limit_s=1.0, ms_per_image=10.0)]
    dbf = tmp_path / "s.sqlite"
    assert lpirc("leaderboard", "add", *runs, "--db", dbf).returncode == 0
    r = lpirc("leaderboard", "show", "--db", dbf)
    assert r.returncode == 0, r.stderr
    blocks = r.stdout.split("\n\nGroup ")[1:]
    assert len(blocks) == 2, r.stdout
    assert "wall budget (600 s)" in blocks[0].splitlines()[0] and "2 entries" in blocks[0].splitlines()[0]
    assert "long-a" in blocks[0] and "long-b" in blocks[0] and "short" not in blocks[0]
    assert "wall budget (1 s)" in blocks[1].splitlines()[0] and "short" in blocks[1]
    assert "(600 s)" not in blocks[1]
    # the short run's answers after 1 s were late: t_s = 0.1 s x index, so 11 of 20 count
    # (0.0 .. 1.0 s): top-1 0.55, score 0.55 / 0.1 Wh = 5.5
    assert re.search(r"short\s+5\.5\s+55\.00 %", blocks[1]), blocks[1]
    r = lpirc("leaderboard", "show", "--db", dbf, "--rules", "ovic-2018", "--format", "json")
    groups = json.loads(r.stdout)["groups"]
    assert [g["title"].split("rules ")[1].split(";")[0] for g in groups] == [
        "ovic-2018: accuracy within 30 ms x N of summed inference time (Pixel 2 track)",
        "ovic-2018: accuracy within 10 ms x N of summed inference time (Pixel 2 track)"]
    rows = json.loads(r.stdout)["standings"]
    assert {x["submission"]: x["params"] for x in rows}["short"] == {"ms_per_image": 10.0}
    r = lpirc("leaderboard", "show", "--db", dbf, "--format", "csv")
    rows = list(csv.DictReader(io.StringIO(r.stdout)))
    assert {x["submission"]: (x["group"], x["params"]) for x in rows} == {
        "long-a": ("1", "time_limit_s=600"), "long-b": ("1", "time_limit_s=600"), "short": ("2", "time_limit_s=1")}


def test_missing_log_is_unranked_with_a_note(db, field_runs):
    lb.add_entry(db, lb.entry_from_run(field_runs["A"]))
    lb.add_entry(db, lb.entry_from_run(field_runs["B"]))
    shutil.rmtree(field_runs["A"])
    rows = lb.standings(db, rules="ovic-2018")
    assert [(r.entry.submission, r.place) for r in rows] == [("B", 1), ("A", None)]
    assert "cannot re-score under ovic-2018" in rows[1].notes[0]
    assert [r.place for r in lb.standings(db)] == [1, 2]  # stored scores need no log


def test_remove_by_uid_prefix(db, field_runs):
    a = lb.entry_from_run(field_runs["A"])
    b = lb.entry_from_run(field_runs["B"])
    lb.add_entry(db, a)
    lb.add_entry(db, b)
    with pytest.raises(InputError, match="2 entries"):
        lb.remove(db, os.path.commonprefix([a.uid, b.uid]))
    with pytest.raises(InputError, match="no entry"):
        lb.remove(db, "zz")
    assert lb.remove(db, a.uid[:8]) == a
    assert [x.uid for x in lb.entries(db)] == [b.uid]


def test_entry_validation():
    base = dict(uid="u", submission="s", source="run", rules="lpirc-onsite", score=1.0, top1=0.5,
                top5=0.6, images=10, answered=10, failed=0, unanswered=0, late=0, wall_s=1.0,
                inference_s=0.5, energy_wh=1.0, energy_label="measured", model_sha256=None,
                holdout_sha256=None, lpirc_version=None, runtime=None, device=None,
                created_utc="2026-11-30T00:00:00Z")
    lb.Entry(**base)
    for bad, msg in [({"source": "web"}, "source"), ({"energy_label": "guessed"}, "energy_label"),
                     ({"energy_wh": None}, "absent"), ({"top1": 1.5}, "top1"),
                     ({"images": -1}, "images"), ({"rules": "nope"}, "rules"), ({"uid": ""}, "uid")]:
        with pytest.raises(ValueError, match=msg):
            lb.Entry(**{**base, **bad})


# --- the file: versions, migrations, foreign files ----------------------------------------


def test_new_file_is_wal_versioned_and_marked(tmp_path):
    conn = lb.open_db(tmp_path / "a" / "b.sqlite")
    assert lb.schema_version(conn) == lb.SCHEMA_VERSION
    assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert conn.execute("PRAGMA application_id").fetchone()[0] == lb.APPLICATION_ID
    assert [r[0] for r in conn.execute("SELECT version FROM schema_migrations")] == [1]
    conn.close()
    lb.open_db(tmp_path / "a" / "b.sqlite").close()  # reopening migrates nothing, fails nothing


def test_migrations_apply_in_order_on_open(tmp_path, monkeypatch, field_runs):
    path = tmp_path / "old.sqlite"
    conn = lb.open_db(path)
    lb.add_entry(conn, lb.entry_from_run(field_runs["A"]))
    conn.close()
    seen = []

    def v2(c):
        seen.append(2)
        c.execute("ALTER TABLE entries ADD COLUMN note2 TEXT")

    def v3(c):
        seen.append(3)
        c.execute("UPDATE entries SET note2 = 'v3 was here'")

    monkeypatch.setattr(lb, "MIGRATIONS", lb.MIGRATIONS + (lb.Migration(3, "three", v3), lb.Migration(2, "two", v2)))
    conn = lb.open_db(path)
    assert seen == [2, 3] and lb.schema_version(conn) == 3
    assert conn.execute("SELECT note2 FROM entries").fetchone()[0] == "v3 was here"
    assert [r[0] for r in conn.execute("SELECT version FROM schema_migrations ORDER BY version")] == [1, 2, 3]
    assert len(lb.entries(conn)) == 1
    conn.close()


def test_foreign_and_newer_files_are_one_line_errors(tmp_path):
    text = tmp_path / "notes.txt"
    text.write_text("hello, I am not a database\n" * 100)
    with pytest.raises(InputError, match=r"notes.txt: not a SQLite database"):
        lb.open_db(text)
    other = tmp_path / "other.sqlite"
    c = sqlite3.connect(other)
    c.execute("CREATE TABLE t (x)")
    c.commit()
    c.close()
    with pytest.raises(InputError, match="not an lpirc standings database"):
        lb.open_db(other)
    newer = tmp_path / "newer.sqlite"
    lb.open_db(newer).close()
    c = sqlite3.connect(newer)
    c.execute(f"PRAGMA user_version = {lb.SCHEMA_VERSION + 1}")
    c.close()
    with pytest.raises(InputError, match="newer than this lpirc knows"):
        lb.open_db(newer)
    with pytest.raises(InputError, match="is a folder"):
        lb.open_db(tmp_path)


def test_bad_run_folder_is_one_line(tmp_path):
    with pytest.raises(scoring.ScoringError, match="no results.jsonl"):  # exit 5 on the CLI
        lb.entry_from_run(tmp_path)


# --- real runs --------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def real_runs(tmp_path_factory, reference_model, small_holdout) -> list[Path]:
    """Two real `lpirc run`s of the bundled reference model on a 40-image holdout, image orders
    seeded 0 and 1: one holdout by content (its sorted names), two orders."""
    base = tmp_path_factory.mktemp("real")
    out = []
    for seed in (0, 1):
        run = base / f"seed{seed}"
        r = lpirc("run", "--model", reference_model, "--holdout", small_holdout, "--out", run,
                  "--seed", seed, "--quiet", "--no-report")
        assert r.returncode == 0, r.stderr
        out.append(run)
    return out


@pytest.mark.slow
def test_real_runs_as_entries(tmp_path, real_runs):
    conn = lb.open_db(tmp_path / "s.sqlite")
    for run in real_runs:
        e = lb.entry_from_run(run)
        score = json.loads((run / "score.json").read_text())
        manifest = json.loads((run / "manifest.json").read_text())
        assert (e.score, e.top1, e.top5, e.images) == (score["score"], score["top1"], score["top5"], 40)
        assert e.model_sha256 == manifest["model"]["sha256"]
        assert e.holdout_sha256 == manifest["holdout"]["files_sha256"]
        assert e.energy_label == manifest["energy"]["source"] and e.energy_wh == manifest["energy"]["wh"]
        assert e.runtime.startswith("ai_edge_litert ") and e.lpirc_version == manifest["lpirc_version"]
        assert lb.add_entry(conn, e) and not lb.add_entry(conn, lb.entry_from_run(run))
    rows = lb.standings(conn, rules="ovic-2019")
    # another --seed is the same holdout (scoring.groups, as lpirc score groups them)
    assert [r.group for r in rows] == [1, 1] and rows[0].place == 1
    assert len({r.group_key for r in rows}) == 1
    for r in rows:
        direct = scoring.score_path(r.entry.run_dir, rules="ovic-2019")
        assert r.rescored and r.score == pytest.approx(direct["score"])
    conn.close()


@pytest.mark.slow
def test_two_writers_at_once(tmp_path):
    """Two processes open a new file at the same moment and add 25 entries each: both migrate
    safely (one of them does), no write is lost, no 'database is locked'."""
    code = """
import sys
from lpirc import leaderboard as lb
conn = lb.open_db(sys.argv[1])
for i in range(25):
    e = lb.Entry(uid=f"{sys.argv[2]}-{i}", submission=f"s{i}", source="fleet", rules="ovic-2018",
                 score=i / 25, top1=i / 25, top5=None, images=25, answered=25, failed=0,
                 unanswered=0, late=0, wall_s=1.0, inference_s=None, energy_wh=None,
                 energy_label="absent", model_sha256=None, holdout_sha256="h", lpirc_version=None,
                 runtime=None, device=sys.argv[2], created_utc="2026-11-30T00:00:00Z")
    assert lb.add_entry(conn, e)
"""
    db = tmp_path / "shared.sqlite"
    procs = [subprocess.Popen([sys.executable, "-c", code, str(db), name], cwd=REPO,
                              stderr=subprocess.PIPE, text=True) for name in ("dev1", "dev2")]
    for p in procs:
        assert p.wait(timeout=60) == 0, p.stderr.read()
    conn = lb.open_db(db)
    assert len(lb.entries(conn)) == 50
    assert [r.place for r in lb.standings(conn)][:2] == [1, 1]  # 24/25 on both devices
    conn.close()


# --- lpirc leaderboard (the command line) -----------------------------------------------------


@pytest.mark.slow
def test_cli_add_show_remove(tmp_path, field_runs):
    db = tmp_path / "cli.sqlite"
    runs = [field_runs[k] for k in "ABCDEF"]
    r = lpirc("leaderboard", "add", *runs, tmp_path / "missing", "--db", db)
    assert r.returncode == 5  # the bad one is an error line, the six others are in
    assert r.stderr.strip().splitlines() == [f"lpirc: error: {tmp_path / 'missing'}: no such file or folder"]
    assert r.stdout.count("added ") == 6
    r = lpirc("leaderboard", "add", field_runs["A"], "--db", db)
    assert r.returncode == 0 and r.stdout.startswith("already there")
    # a copy of A's folder under another name is A: the line names the entry stored, not the copy
    copy = shutil.copytree(field_runs["A"], tmp_path / "copy-of-A")
    r = lpirc("leaderboard", "add", copy, "--db", db)
    assert r.returncode == 0, r.stderr
    assert re.match(rf"already there  \w{{12}}  A \(stored from {re.escape(str(field_runs['A']))}\)  lpirc-onsite", r.stdout), r.stdout

    table = lpirc("leaderboard", "show", "--db", db)
    assert table.returncode == 0, table.stderr
    lines = table.stdout.splitlines()
    ranked = [ln.split()[:3] for ln in lines if re.match(r"\s+\d+\s+[A-F]\s", ln)]
    assert ranked == [["1", "E", "2.5"], ["2", "D", "1.2"], ["2", "F", "1.2"], ["4", "C", "1.125"],
                      ["5", "B", "1.111"], ["6", "A", "1"]]
    assert "least energy with high accuracy: B (lowest energy among top-1 >= mean + 1 std = 98.39 %)" in table.stdout
    assert "highest accuracy with low energy: E (highest top-1 among energy <= mean - 1 std = 0.2969 Wh)" in table.stdout

    data = json.loads(lpirc("leaderboard", "show", "--db", db, "--format", "json", "--rules", "ovic-2018").stdout)
    assert data["rules"] == "ovic-2018" and data["std"].startswith("population")
    assert [(s["submission"], s["place"], s["rescored"]) for s in data["standings"]][:3] == [
        ("A", 1, True), ("B", 1, True), ("C", 3, True)]
    rows = list(csv.DictReader(io.StringIO(lpirc("leaderboard", "show", "--db", db, "--format", "csv").stdout)))
    assert [(row["submission"], row["place"], row["prizes"]) for row in rows][:2] == [
        ("E", "1", lb.PRIZE_HIGH_ACCURACY), ("D", "2", "")]
    assert all(row["holdout_sha256"] == "h" * 64 and row["energy_label"] == "estimated" for row in rows)

    uid = next(row["uid"] for row in rows if row["submission"] == "E")
    r = lpirc("leaderboard", "remove", uid[:10], "--db", db)
    assert r.returncode == 0 and r.stdout.startswith(f"removed  {uid[:12]}  E")
    r = lpirc("leaderboard", "remove", uid[:10], "--db", db)
    assert r.returncode == 5 and "no entry's uid starts with" in r.stderr
    assert "  E  " not in lpirc("leaderboard", "show", "--db", db).stdout


@pytest.mark.slow
def test_failed_run_is_ranked_but_wins_no_side_prize(tmp_path, field_runs):
    """A run that failed (a model that could not run: status failed, nothing answered, a sliver
    of energy) is ranked last at its score of 0, but is not in the running for the side prizes:
    it neither wins 'highest accuracy with low energy' at 0 % nor moves the thresholds (the
    hand-computed prizes of the six-run field stand)."""
    failed = fake_run(tmp_path / "failed", field_runs["A"].parent / "gt.csv", 0, 0.0003, start="2026-11-30T09:30:00Z")
    (failed / "results.jsonl").write_text("")
    m = json.loads((failed / "manifest.json").read_text())
    m.update(status="failed", images_answered=0)
    m["energy"]["source"] = "measured"  # the others' are estimated: the group mixes labels
    (failed / "manifest.json").write_text(json.dumps(m))
    db = tmp_path / "f.sqlite"
    assert lpirc("leaderboard", "add", *field_runs.values(), failed, "--db", db).returncode == 0
    r = lpirc("leaderboard", "show", "--db", db)
    assert r.returncode == 0, r.stderr
    assert re.search(r"\n\s+7\s+failed\s+0\s+0\.00 %.*0/20\s+\w{12}\n", r.stdout), r.stdout
    assert "least energy with high accuracy: B (lowest energy among top-1 >= mean + 1 std = 98.39 %)" in r.stdout
    assert "highest accuracy with low energy: E (highest top-1 among energy <= mean - 1 std = 0.2969 Wh)" in r.stdout
    assert "note: failed: run status failed: no side prize" in r.stdout
    assert "answered nothing" not in r.stdout  # one reason a row, the first
    # a run whose budget ran out before any answer (status budget_exhausted): the same, said so
    m.update(status="budget_exhausted", start_utc="2026-11-30T09:40:00Z")
    (failed / "manifest.json").write_text(json.dumps(m))
    assert lpirc("leaderboard", "add", failed, "--db", db, "--name", "empty").returncode == 0
    r = lpirc("leaderboard", "show", "--db", db)
    assert "note: empty: answered nothing: no side prize" in r.stdout
    assert "highest accuracy with low energy: E (" in r.stdout
    # a note on the whole group is printed once, not once per entry
    assert r.stdout.count("energy figures of mixed provenance") == 1
    assert "\n  note: energy figures of mixed provenance (estimated, measured)\n" in r.stdout


@pytest.mark.slow
def test_cli_show_errors(tmp_path):
    r = lpirc("leaderboard", "show", "--db", tmp_path / "none.sqlite")
    assert r.returncode == 5 and "no standings database here" in r.stderr
    assert not (tmp_path / "none.sqlite").exists()  # show never creates one
    empty = tmp_path / "empty.sqlite"
    empty.touch()
    for cmd in (("show",), ("remove", "abc")):  # nor turns an empty file into one
        r = lpirc("leaderboard", *cmd, "--db", empty)
        assert r.returncode == 5 and r.stderr.strip().startswith(f"lpirc: error: {empty}: no standings database here")
        assert empty.stat().st_size == 0
    bad = tmp_path / "bad.sqlite"
    bad.write_text("x" * 4096)
    r = lpirc("leaderboard", "show", "--db", bad)
    assert r.returncode == 5 and r.stderr.strip() == f"lpirc: error: {bad}: not a SQLite database (expected an lpirc standings database)"


@pytest.mark.slow
def test_cli_db_from_environment(tmp_path, field_runs):
    env = {"LPIRC_DB": str(tmp_path / "env.sqlite")}
    assert lpirc("leaderboard", "add", field_runs["A"], env=env).returncode == 0
    assert (tmp_path / "env.sqlite").is_file()
    assert "  A  " in lpirc("leaderboard", "show", env=env).stdout


@pytest.mark.browser
@pytest.mark.slow
def test_standings_page_in_chromium(tmp_path, field_runs):
    from chromium import PROBE_JS, Chromium, find_chromium

    binary = find_chromium()
    if binary is None:
        pytest.skip("Chromium not installed (apt-get install chromium): browser check skipped")
    db = tmp_path / "page.sqlite"
    lpirc("leaderboard", "add", *field_runs.values(), "--team", "<b>team</b>", "--db", db)
    out = tmp_path / "standings.html"
    r = lpirc("leaderboard", "show", "--db", db, "--format", "html", "-o", out)
    assert r.returncode == 0, r.stderr
    assert "&lt;b&gt;team&lt;/b&gt;" in out.read_text()
    browser = Chromium(binary)
    try:
        visit = browser.visit(out, PROBE_JS)
    finally:
        browser.close()
    assert visit.requests == [] and visit.errors == [] and visit.probe["external"] == 0
    assert "least energy with high accuracy" in visit.probe["text"]
    assert visit.probe["tables"] == 1
    assert visit.print_probe["too_wide"] == []  # printed, the table fits the paper


def test_entry_from_score_for_a_referee_session(db, tmp_path, field_runs):
    """What the referee does: score its own result file (one class per image, no timing), add it
    with its meter's energy as 'metered'; the standings re-score it under another rule set."""
    gt = write_gt(tmp_path / "gt.csv")
    ref = tmp_path / "session-7.txt"
    ref.write_text("".join(f"img{i:02d} {i if i < 15 else 999} 0.9\n" for i in range(N)))
    score = scoring.score_path(ref, gt, "lpirc-onsite", energy_wh=0.25)
    e = lb.entry_from_score(score, uid=lb.make_uid({"session": 7}), submission="team-7", source="referee",
                            energy_label="metered", device="team 7's board", holdout_sha256="h" * 64)
    assert (e.top1, e.top5, e.score, e.energy_label, e.run_dir) == (0.75, None, 3.0, "metered", str(ref.resolve()))
    assert lb.add_entry(db, e) and not lb.add_entry(db, e)
    lb.add_entry(db, lb.entry_from_run(field_runs["B"]))  # 1.0 / 0.9 Wh = 1.11
    rows = lb.standings(db)
    assert [(r.entry.submission, r.place, r.group) for r in rows] == [("team-7", 1, 1), ("B", 2, 1)]
    assert any("mixed provenance (estimated, metered)" in n for n in rows[0].notes)
    rows = lb.standings(db, rules="lpcvc-2020")  # needs the wall time a referee file lacks
    assert {r.entry.submission: r.place for r in rows} == {"B": 1, "team-7": None}
    assert rows[1].rescored and rows[1].score is None


@pytest.mark.slow
def test_one_grouping_rule_for_score_and_standings(tmp_path):
    """`lpirc score` and the standings group by one rule (scoring.groups): the same holdout in
    another order (--seed: another files_sha256, the same names_sha256) with the ground truth
    copied elsewhere ranks with the original; a ground truth that differs in one label, or a
    shorter budget, ranks apart. Before, the standings split the seed and mixed the ground
    truths, and `lpirc score` did the opposite."""
    gt = write_gt(tmp_path / "gt.csv")
    copy = tmp_path / "elsewhere" / "gt.csv"
    copy.parent.mkdir()
    shutil.copy(gt, copy)
    other = tmp_path / "other.csv"
    rows = gt.read_text().splitlines()
    rows[1] = rows[1].split(",")[0] + "," + SYN[999]
    other.write_text("\n".join(rows) + "\n")
    runs = {"a": fake_run(tmp_path / "a", gt, 20, 1.0, files_sha="1" * 64),
            "b": fake_run(tmp_path / "b", copy, 10, 1.0, files_sha="2" * 64, start="2026-11-30T09:00:00Z"),
            "c": fake_run(tmp_path / "c", other, 15, 1.0, files_sha="1" * 64, start="2026-11-30T10:00:00Z"),
            "d": fake_run(tmp_path / "d", gt, 5, 1.0, files_sha="1" * 64, start="2026-11-30T11:00:00Z",
                          time_limit_s=1.0)}
    for name, run in runs.items():
        m = json.loads((run / "manifest.json").read_text())
        m["holdout"]["names_sha256"] = "n" * 64  # one set of images, whatever the order
        m["holdout"]["order_seed"] = {"b": 1}.get(name, 0)
        (run / "manifest.json").write_text(json.dumps(m))

    def partition(pairs) -> set[frozenset[str]]:
        by: dict[str, set[str]] = {}
        for name, g in pairs:
            by.setdefault(str(g), set()).add(name)
        return {frozenset(v) for v in by.values()}

    want = {frozenset("ab"), frozenset("c"), frozenset("d")}
    r = lpirc("score", *runs.values(), "--format", "csv")
    assert r.returncode == 0, r.stderr
    scored = [(Path(x["run"]).name, x["group"]) for x in csv.DictReader(io.StringIO(r.stdout))]
    assert partition(scored) == want, scored
    db = tmp_path / "s.sqlite"
    assert lpirc("leaderboard", "add", *runs.values(), "--db", db).returncode == 0
    r = lpirc("leaderboard", "show", "--db", db, "--format", "json")
    assert r.returncode == 0, r.stderr
    shown = [(x["submission"], x["group"]) for x in json.loads(r.stdout)["standings"]]
    assert partition(shown) == want, shown


# --- fault paths (issue 19 item 16) ----------------------------------------------------------


def damage(src: Path, dst: Path, how: str) -> Path:
    """A copy of a standings file with one kind of damage: the entries table's page (page 3)
    overwritten from its cells on, an index page (4) overwritten, or the file cut short."""
    shutil.copy(src, dst)
    with open(dst, "r+b") as f:
        if how == "entries":
            f.seek(2 * 4096 + 200)
            f.write(bytes((i * 37 + 11) % 256 for i in range(3800)))
        elif how == "index":
            f.seek(3 * 4096)
            f.write(bytes((i * 37 + 11) % 256 for i in range(4096)))
    if how == "cut":
        os.truncate(dst, 6000)
    return dst


@pytest.mark.slow
@pytest.mark.parametrize("how", ["entries", "index", "cut"])
def test_damaged_database_is_one_line_exit_5_and_never_written(tmp_path, field_runs, how):
    """Damaged pages gave a traceback on show and remove, and `add` wrote into the file and
    exited 0: now each command is one line naming the file, exit 5, the file unchanged."""
    good = tmp_path / "good.sqlite"
    assert lpirc("leaderboard", "add", *(field_runs[k] for k in "ABCD"), "--db", good).returncode == 0
    bad = damage(good, tmp_path / f"{how}.sqlite", how)
    before = bad.read_bytes()
    for cmd in (["show"], ["add", field_runs["E"]], ["remove", "abc"]):
        r = lpirc("leaderboard", *cmd, "--db", bad)
        assert r.returncode == 5, (cmd, r.stderr)
        lines = r.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith(f"lpirc: error: {bad}: damaged standings database"), r.stderr
        assert "Traceback" not in r.stderr and r.stdout == ""
        assert bad.read_bytes() == before and not Path(f"{bad}-wal").exists()


@pytest.mark.slow
def test_remove_tries_every_uid_and_names_the_bad_ones(tmp_path, field_runs):
    db = tmp_path / "r.sqlite"
    assert lpirc("leaderboard", "add", *(field_runs[k] for k in "ABC"), "--db", db).returncode == 0
    rows = json.loads(lpirc("leaderboard", "show", "--db", db, "--format", "json").stdout)["standings"]
    uid = {x["submission"]: x["uid"] for x in rows}
    r = lpirc("leaderboard", "remove", uid["A"][:10], "nosuchuid", uid["C"][:10], "--db", db)
    assert r.returncode == 5
    assert r.stdout.splitlines() == [f"removed  {uid['A'][:12]}  A", f"removed  {uid['C'][:12]}  C"]
    assert r.stderr.splitlines() == ["lpirc: error: remove: no entry's uid starts with 'nosuchuid'",
                                     "lpirc: 1 of 3 not removed: nosuchuid"]
    left = json.loads(lpirc("leaderboard", "show", "--db", db, "--format", "json").stdout)["standings"]
    assert [x["submission"] for x in left] == ["B"]


@pytest.mark.slow
def test_a_name_with_a_newline_is_refused(tmp_path, field_runs):
    db = tmp_path / "n.sqlite"
    for option in ("--name", "--team"):
        r = lpirc("leaderboard", "add", field_runs["A"], option, "A\nplace 1  Z  99", "--db", db)
        assert r.returncode == 5 and "Traceback" not in r.stderr
        assert r.stderr.strip().splitlines() == [
            f"lpirc: error: {option[2:].replace('name', 'submission')} name 'A\\nplace 1  Z  99' has \\n: a "
            "name is one line of text (no newline or other control character)"]
    assert not db.exists() or lb.entries(lb.open_db(db)) == []


@pytest.mark.slow
@pytest.mark.parametrize("change, says", [
    ({"lpirc_version": "99.0.0"}, "written by lpirc 99.0.0, newer than this lpirc"),
    ({"lpirc_version": "banana"}, "lpirc_version 'banana' is not a version"),
    ({"holdout": "h"}, "manifest field 'holdout' is str \"h\", expected dict"),
    ({"wall_time_s": "2 s"}, "manifest field 'wall_time_s' is str \"2 s\", expected float | None"),
    ({"images_answered": True}, "manifest field 'images_answered' is bool true, expected int"),
])
def test_manifest_from_the_future_or_with_wrong_types_is_refused(tmp_path, field_runs, change, says):
    run = shutil.copytree(field_runs["A"], tmp_path / "odd")
    m = json.loads((run / "manifest.json").read_text())
    m.update(change)
    (run / "manifest.json").write_text(json.dumps(m))
    db = tmp_path / "m.sqlite"
    r = lpirc("leaderboard", "add", run, "--db", db)
    assert r.returncode == 5 and "Traceback" not in r.stderr, r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"lpirc: error: {run / 'manifest.json'}: ") and says in lines[0], lines
    assert lb.entries(lb.open_db(db)) == []
