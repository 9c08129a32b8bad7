"""`lpirc run --referee` when things go wrong, against real referee processes on 127.0.0.1: the
referee restarted on a new database mid-run, the referee gone for good, the client killed and
run again, an original-style referee that wants bounding boxes or refuses every answer."""

from __future__ import annotations

import json
import os
import signal
import socket
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from referee_helpers import Referee, add_team, lpirc, make_distinct_holdout, wait_for


@pytest.fixture(scope="module")
def big(small_holdout, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("client") / "big"
    make_distinct_holdout(small_holdout, out, 2000)
    return out


def held(db: Path) -> int:
    try:
        with sqlite3.connect(db, timeout=5) as conn:
            return conn.execute("SELECT COUNT(*) FROM answers").fetchone()[0]
    except sqlite3.Error:
        return 0


def results(db: Path) -> list[dict]:
    r = lpirc("referee", "results", "--db", str(db), "--format", "json", "--all")
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout)


def start_client(model: Path, url: str, out: Path, *extra: str, env=None) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "lpirc", "run", "--model", str(model),
                             "--referee", url, "--user", "alpha", "--password", "pw", "--out",
                             str(out), "--quiet", "--no-report", "--workers", "1", *extra],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, **(env or {})})


def free_port() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return str(s.getsockname()[1])


def one_line_each(stdout: str) -> None:
    """Every referee line of the summary is one short line: no repeated 'no reply', no HTML."""
    for ln in stdout.splitlines():
        assert "no reply no reply" not in ln and "<html" not in ln.lower(), ln
        assert len(ln) < 400, ln


@pytest.mark.slow
def test_referee_restarted_on_a_new_database(big, reference_model, tmp_path):
    """Referee A is killed mid-run and B starts on the same port with a new database: the
    client's login again gives a new session, so it posts nothing more (its answers are for
    A's numbering), exits 1 saying so, and leaves B's session open; run again, it answers B's
    session from its first image. Before: 2,000 'posted', exit 0, B's top-1 near chance."""
    port = free_port()
    a_db, b_db = tmp_path / "a.sqlite", tmp_path / "b.sqlite"
    add_team(a_db, "alpha")
    add_team(b_db, "alpha")
    ref_a = Referee(big, a_db, "--port", port, time_limit_s=120).start()
    ref_b = Referee(big, b_db, "--port", port, time_limit_s=120)
    try:
        client = start_client(reference_model, ref_a.url, tmp_path / "run")
        wait_for(lambda: held(a_db) >= 100 or client.poll() is not None, timeout=120, step=0.02)
        ref_a.kill9()
        ref_b.start()
        out, err = client.communicate(timeout=180)
        assert client.returncode == 1, out + err
        assert "referee FAILED  the session was lost: the referee gave a new session at a " \
               "login again" in out, out
        one_line_each(out)
        assert held(b_db) == 0  # not one answer under a numbering the client did not download
        row, = results(b_db)
        assert row["status"] == "open"  # left open for the rerun
        again = start_client(reference_model, ref_b.url, tmp_path / "run2")
        out, err = again.communicate(timeout=180)
        assert again.returncode == 0, out + err
        row = wait_for(lambda: (lambda r: r[0] if r and r[0]["status"] == "scored" else None)(
            results(b_db)))
    finally:
        ref_a.stop()
        ref_b.stop()
    assert row["answered"] == 2000 and row["top1"] > 0.8, row  # the model: ~93 % on the demo


@pytest.mark.slow
def test_referee_gone_client_stops_at_the_session_end(big, reference_model, tmp_path):
    """The referee dies after the login and never comes back: the client stops retrying at the
    session's end by the referee's clock (6 s), not at its own --time-limit-s (600 s), and
    exits 1, its reasons one short line each."""
    db = tmp_path / "r.sqlite"
    add_team(db, "alpha")
    ref = Referee(big, db, time_limit_s=6).start()
    try:
        t0 = time.monotonic()
        client = start_client(reference_model, ref.url, tmp_path / "run", "--time-limit-s", "600")
        wait_for(lambda: held(db) >= 50 or client.poll() is not None, timeout=60, step=0.02)
        ref.kill9()
        out, err = client.communicate(timeout=120)
        took = time.monotonic() - t0
    finally:
        ref.stop()
    assert client.returncode == 1, out + err
    assert took < 40, took  # model loading and the run's own wind-down included
    assert "never stored by the referee (exit 1)" in out, out
    assert "not stored      " in out and "no reply from the referee (ConnectError" in out, out
    one_line_each(out)


def settled(read, quiet_s: float = 1.0, timeout: float = 30.0):
    """read() once it has returned the same value for ``quiet_s`` seconds."""
    deadline = time.monotonic() + timeout
    last, since = read(), time.monotonic()
    while time.monotonic() < deadline:
        time.sleep(0.1)
        now = read()
        if now != last:
            last, since = now, time.monotonic()
        elif time.monotonic() - since >= quiet_s:
            return now
    raise AssertionError(f"still changing after {timeout} s (last {last})")


@pytest.mark.slow
def test_client_killed_and_run_again_continues(big, reference_model, tmp_path):
    """The client is killed (-9) mid-run: its scratch folder is left behind. Run again, it
    removes that folder, asks the referee what it holds, answers only the other images, and
    labels its energy as covering this run only."""
    db = tmp_path / "r.sqlite"
    add_team(db, "alpha")
    tmp = tmp_path / "tmp"
    tmp.mkdir()
    env = {"TMPDIR": str(tmp)}
    with Referee(big, db, time_limit_s=120) as ref:
        first = start_client(reference_model, ref.url, tmp_path / "run1", env=env)
        wait_for(lambda: held(db) >= 300 or first.poll() is not None, timeout=120, step=0.02)
        first.send_signal(signal.SIGKILL)
        first.communicate(timeout=30)
        # posts the server had already received are still stored after the kill: read the
        # count once it has stopped moving (it moved by 12 after the kill on a loaded run)
        before = settled(lambda: held(db))
        assert 300 <= before < 2000 and list(tmp.glob("lpirc-referee-*"))
        again = start_client(reference_model, ref.url, tmp_path / "run2", env=env)
        out, err = again.communicate(timeout=180)
        assert again.returncode == 0, out + err
        row = wait_for(lambda: (lambda r: r[0] if r and r[0]["status"] == "scored" else None)(
            results(db)))
    assert list(tmp.iterdir()) == []  # the dead run's scratch and its own, both gone
    manifest = json.loads((tmp_path / "run2" / "manifest.json").read_text())
    rep = manifest["referee"]
    assert rep["held_before"] == before and rep["stale_scratch_removed"] == 1
    assert rep["downloaded"] <= 2000 - before + 100  # only zips with unanswered images
    assert f"resumed the session held {before} answer(s)" in out, out
    assert "covers this run only" in rep["energy"]
    assert row["answered"] == 2000 and row["duplicates"] < 200, row
    assert row["top1"] > 0.8, row


class Standin:
    """tests/original_referee_standin.py in its own process."""

    def __init__(self, holdout: Path, mode: str) -> None:
        self.proc = subprocess.Popen([sys.executable, str(Path(__file__).with_name(
            "original_referee_standin.py")), str(holdout), mode], stdout=subprocess.PIPE,
            text=True)
        self.url = self.proc.stdout.readline().split()[-1]
        self.posts = holdout.parent / "posts.jsonl"
        self.posts.unlink(missing_ok=True)

    def __enter__(self) -> "Standin":
        return self

    def __exit__(self, *exc) -> None:
        self.proc.terminate()
        self.proc.wait(timeout=30)
        self.proc.stdout.close()


@pytest.mark.slow
def test_original_referee_gets_boxes_and_refusals_fail_the_run(small_holdout, reference_model,
                                                             tmp_path):
    """Against a stand-in of the original referee (no /help numbering, boxes required): every
    answer carries a whole-image box and is stored, exit 0. When it refuses every answer, or a
    proxy answers every post with an HTML 502 page, the run exits 1 and its summary says why in
    one short line (the page's title, not the page)."""
    from lpirc.referee.client import jpeg_size

    with Standin(small_holdout, "boxes") as ref:
        out = tmp_path / "boxes"
        r = start_client(reference_model, ref.url, out, "--time-limit-s", "60")
        stdout, err = r.communicate(timeout=180)
        posts = [json.loads(ln) for ln in ref.posts.read_text().splitlines()]
    assert r.returncode == 0, stdout + err
    assert "40 answers posted (200), 0 refused, 0 never posted" in stdout, stdout
    sent = {k: (int(x1), int(y1)) for p in posts for k, x0, y0, x1, y1 in zip(
        p["image_name"], p["xmin"], p["ymin"], p["xmax"], p["ymax"]) if x0 == y0 == "0"}
    assert len(sent) == 40
    # the box is the image's own size (the image k.jpg the stand-in served from its holdout)
    files = sorted(p.name for p in small_holdout.iterdir() if p.suffix == ".jpg")
    assert all(sent[k] == jpeg_size(small_holdout / files[int(k) - 1]) for k in sent)

    for mode, why in (("refuse", "the referee refused every answer posted (40) (exit 1)"),
                      ("html", "never stored by the referee (exit 1)")):
        with Standin(small_holdout, mode) as ref:
            r = start_client(reference_model, ref.url, tmp_path / mode, "--time-limit-s", "5")
            stdout, err = r.communicate(timeout=180)
        assert r.returncode == 1, (mode, stdout + err)
        assert f"referee FAILED  {why}" in stdout if mode == "refuse" else why in stdout, stdout
        one_line_each(stdout)
        if mode == "html":
            assert "no reply from the referee (HTTP 502: 502 Bad Gateway (an HTML page))" in \
                stdout, stdout
        else:
            assert "not stored      40: HTTP 406: Missing result field" in stdout, stdout
