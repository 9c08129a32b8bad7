"""`lpirc referee`: the protocol call by call against a real server process on 127.0.0.1, the
time limit, kill -9 and restart, duplicates and malformed answers, tokens, isolation between
teams, path tricks, oversized bodies, attempts, power and scoring."""

from __future__ import annotations

import base64
import io
import json
import re
import socket
import subprocess
import sys
import threading
import time
import zipfile
import zlib
from pathlib import Path

import pytest
import scoring

from referee_helpers import (Referee, add_team, lpirc, make_distinct_holdout, read_gt, sha,
                             wait_for)


@pytest.fixture(scope="module")
def holdout(small_holdout, tmp_path_factory) -> tuple[Path, dict[str, str]]:
    """130 distinct images (two zips: 100 + 30), and sha256 -> file name."""
    out = tmp_path_factory.mktemp("ref") / "holdout"
    return out, make_distinct_holdout(small_holdout, out, 130)


def results_json(db: Path, *extra: str) -> list[dict]:
    r = lpirc("referee", "results", "--db", str(db), "--format", "json", *extra)
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout)


def answers(db: Path) -> list[list[str]]:
    r = lpirc("referee", "answers", "--db", str(db))
    assert r.returncode == 0, r.stderr
    return [ln.split(",") for ln in r.stdout.splitlines()[1:]]


def numbering(ref: Referee, token: str, by_sha: dict[str, str]) -> dict[int, str]:
    """Image number -> holdout file, from the bytes the referee serves in its zips."""
    out = {}
    for first in (1, 101):
        r = ref.post("/zipimages", token=token, image_name=str(first))
        assert r.status_code == 200, r.text
        with zipfile.ZipFile(io.BytesIO(r.content)) as z:
            for name in z.namelist():
                out[int(name[:-4])] = by_sha[sha(z.read(name))]
    return out


@pytest.mark.slow
def test_protocol_call_by_call(holdout, tmp_path):
    root, by_sha = holdout
    db = tmp_path / "r.sqlite"
    add_team(db, "alpha")
    with Referee(root, db) as ref:
        r = ref.post("/login", username="alpha")
        assert (r.status_code, r.text) == (401, "Missing username or password\n")
        r = ref.post("/login", username="alpha", password="nope")
        assert (r.status_code, r.text) == (401, "Invalid username or password\n")
        token = ref.login("alpha", "pw")
        # the token's payload (before the signature) carries neither password nor name; the
        # signature's random letters may spell anything, "pw" included
        payload = token.lstrip(".").split(".")[0]
        payload = base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4))
        if token.startswith("."):  # itsdangerous compresses a payload when that is shorter
            payload = zlib.decompress(payload)
        assert b"pw" not in payload and b"alpha" not in payload and b"sid" in payload
        assert ref.post("/get_token", username="alpha", password="pw").text == token  # same session
        assert ref.post("/verify", token=token).text == "Valid Token\n"
        r = ref.post("/verify", token=token[:-2] + ("AA" if token[-2:] != "AA" else "BB"))
        assert (r.status_code, r.text) == (401, "Invalid Token\n")
        r = ref.post("/no_of_images", token=token)
        assert (r.status_code, r.text) == (200, "130")
        assert ref.http.get(ref.url + "/no_of_images", params={"token": token}).text == "130"

        r = ref.post("/image", token=token, image_name="7")
        assert r.status_code == 200 and r.headers["content-type"] == "image/jpeg"
        assert 'filename="7.jpg"' in r.headers["content-disposition"]
        assert sha(r.content) in by_sha
        for bad in ("0", "131", "abc", "", "-1"):
            assert ref.post("/image", token=token, image_name=bad).status_code == 406, bad

        order = numbering(ref, token, by_sha)
        assert sorted(order) == list(range(1, 131))
        assert sorted(order.values()) == sorted(by_sha.values())  # a permutation of the holdout
        z = zipfile.ZipFile(io.BytesIO(ref.post("/zipimages", token=token, image_name="101").content))
        assert z.namelist() == [f"{k}.jpg" for k in range(101, 131)]  # flat; the last holds 30
        assert by_sha[sha(r.content)] == order[7]  # /image and /zipimages agree
        for bad in ("2", "100", "201", "x"):
            assert ref.post("/zipimages", token=token, image_name=bad).status_code == 406, bad

        r = ref.post("/result", token=token, image_name=["1", "2"], CLASS_ID=["3"], confidence=["0.5", "0.4"])
        assert r.status_code == 406 and "length mismatch" in r.text
        r = ref.post("/result", token=token, image_name=["1", "2.jpg"], CLASS_ID=["3", "n01440764"],
                     confidence=["0.5", "0.4"], xmin=["1", "2"], ymin=["1", "2"], xmax=["5", "6"],
                     ymax=["5", "6"])
        assert r.status_code == 200 and r.text.startswith("Result stored in the server database")
        assert "/zipimages" in ref.post("/help").text
        r = ref.post("/status", token=token)
        assert "answers 2\n" in r.text and "duplicates 0\n" in r.text
        assert ref.post("/logout", token=token).text == "Logout success\n"
        assert ref.post("/verify", token=token).status_code == 401
        assert ref.post("/image", token=token, image_name="1").status_code == 401
        rows = answers(db)
        assert [r[:7] for r in rows] == [["1", "3", "0.5", "1.0", "1.0", "5.0", "5.0"],
                                          ["2", "n01440764", "0.4", "2.0", "2.0", "6.0", "6.0"]]
        assert [r[9] for r in rows] == ["3", "0"]  # class index: as given, and the synset's
        assert ref.post("/nope").status_code == 404
        assert ref.http.put(ref.url + "/login", data={"username": "alpha"}).status_code == 405
        r = lpirc("referee", "serve", "--holdout", str(root), "--db", str(db), "--port", "0")
        assert r.returncode == 5 and "another lpirc referee is serving this database" in r.stderr
        err = ref.stop()  # SIGTERM: a clean shutdown, exit 0, nothing on stderr
        assert ref.proc.returncode == 0 and err == ""
        assert ref.lines[-1] == ("lpirc referee: stopped; 0 open session(s) continue on their "
                                 f"own clocks when it is started again on {db}")


@pytest.mark.slow
def test_full_session_scored_with_meter(holdout, tmp_path):
    """Half the images answered right in 1-based numbering; alpha metered by the meter account,
    beta self-reported then metered from an imported log: top-1, energy and score are exactly
    what the answers and the readings give."""
    root, by_sha = holdout
    db = tmp_path / "r.sqlite"
    for t in ("alpha", "beta"):
        add_team(db, t)
    add_team(db, "wt310", "meterpw", "--meter")
    truth = {name: scoring.synset_index(label) for name, label in read_gt(root).items()}
    standings = tmp_path / "standings.sqlite"
    with Referee(root, db, "--class-id-base", "1", "--standings-db", str(standings)) as ref:
        meter = ref.login("wt310", "meterpw")
        t0 = time.time()
        r = ref.post("/powermeter", token=meter, player="alpha", power="12.0", voltage="5",
                     current="2.4", energy="0", elapsed="0", timestamp=str(t0 - 1))
        assert r.status_code == 200, r.text
        for team in ("alpha", "beta"):
            token = ref.login(team, "pw")
            order = numbering(ref, token, by_sha)
            ks = [k for k in order if k % 2 == 0]
            r = ref.post("/result", token=token, image_name=[str(k) for k in ks],
                         CLASS_ID=[str(truth[order[k]] + 1) for k in ks],  # 1-based
                         confidence=["0.9"] * len(ks))
            assert r.status_code == 200, r.text
            assert ref.post("/powermeter", token=token, player=team, power="5").status_code == 403
            if team == "beta":
                assert ref.post("/energy", token=token, energy_wh="9", method="RAPL").status_code == 200
            assert ref.post("/logout", token=token).status_code == 200
        t1 = time.time()
        steps = [t0 - 1 + 0.5 * i for i in range(1, int((t1 + 1 - t0) / 0.5) + 2)]
        r = ref.post("/powermeter", token=meter, player="alpha", power=["12.0"] * len(steps),
                     timestamp=[str(t) for t in steps])  # a reading every 0.5 s
        assert r.status_code == 200, r.text
        for again in ("", ", 1 already stored (same time and watts)"):  # a retried post
            r = ref.post("/powermeter", token=meter, player="alpha", power="12.0",
                         timestamp=str(t1 + 1))
            assert (r.status_code, r.text) == (200, "Readings stored in the server database: "
                                                    f"{0 if again else 1} reading(s) for alpha{again}\n")
        assert ref.post("/logout", token=meter).status_code == 200  # a meter is no attempt
        wait_for(lambda: any(ln.startswith("lpirc referee: wt310 (meter) ended (logout) after ")
                             for ln in ref.lines))
        rows = wait_for(lambda: (lambda x: x if len(x) == 2 else None)(results_json(db)))
        page = ref.http.get(ref.url + "/leaderboard").text
        assert "<h1>Standings</h1>" in page and "alpha" in page and "metered" in page
    by_team = {x["team"]: x for x in rows}
    alpha, beta = by_team["alpha"], by_team["beta"]
    assert alpha["answered"] == 65 and alpha["top1"] == pytest.approx(0.5)
    assert alpha["energy_source"] == "metered"
    assert alpha["energy_wh"] == pytest.approx(12 * alpha["wall_time_s"] / 3600, rel=1e-3,
                                               abs=12 * 1e-4 / 3600)
    assert alpha["score"] == pytest.approx(0.5 / alpha["energy_wh"])
    assert (beta["energy_source"], beta["energy_wh"]) == ("self-reported", 9)
    score = json.loads((Path(alpha["run_dir"]) / "score.json").read_text())
    assert score["images_unanswered"] == 65 and score["top5"] is None

    log = tmp_path / "meter.csv"
    ts = [t0 - 2 + 0.5 * i for i in range(int((t1 + 2 - (t0 - 2)) / 0.5) + 2)]
    log.write_text("timestamp,watts\n" + "".join(f"{t},20\n" for t in ts))
    r = lpirc("referee", "power", "beta", str(log), "--db", str(db))
    assert r.returncode == 0 and "(metered: power meter (import:meter.csv): " in r.stdout, r.stdout
    assert r.stdout.splitlines()[0] == f"imported {len(ts)} readings from {log} for beta"
    assert re.match(r"  attempt 1: score [0-9.e+]+ 1/Wh \(top-1 [0-9.]+ %, measured by the "
                    r"referee\), energy [0-9.e-]+ Wh \(metered: ", r.stdout.splitlines()[1]), r.stdout
    beta = {x["team"]: x for x in results_json(db)}["beta"]
    assert beta["energy_source"] == "metered"
    r = lpirc("referee", "power", "beta", str(log), "--db", str(db))  # the same log again
    assert r.returncode == 0 and r.stdout.splitlines()[0] == (
        f"imported 0 readings from {log} for beta ({len(ts)} already stored: same time and watts, "
        "skipped)")
    assert {x["team"]: x for x in results_json(db)}["beta"]["energy_wh"] == beta["energy_wh"]
    # wall_time_s is rounded to 0.1 ms: a session of a few ms is within that of 20 W x wall
    assert beta["energy_wh"] == pytest.approx(20 * beta["wall_time_s"] / 3600, rel=1e-3,
                                              abs=20 * 1e-4 / 3600)
    # lpirc's standings database has both sessions, beta's entry replaced by its rescoring
    from lpirc import leaderboard

    conn = leaderboard.open_db(standings)
    got = {e.team: e for e in leaderboard.entries(conn)}
    conn.close()
    assert set(got) == {"alpha", "beta"} and {e.source for e in got.values()} == {"referee"}
    assert (got["alpha"].energy_label, got["beta"].energy_label) == ("metered", "metered")
    assert got["beta"].energy_wh == pytest.approx(beta["energy_wh"])
    assert got["alpha"].score == pytest.approx(alpha["score"]) and got["alpha"].top5 is None
    r = lpirc("leaderboard", "show", "--db", str(standings))
    assert r.returncode == 0 and "alpha attempt 1" in r.stdout, r.stdout + r.stderr
    assert "run status" not in r.stdout  # a session ended by logout is a complete run


@pytest.mark.slow
def test_time_limit_refuses_late_answers(holdout, tmp_path):
    root, _ = holdout
    db = tmp_path / "r.sqlite"
    add_team(db, "alpha")
    with Referee(root, db, time_limit_s=1.5) as ref:
        token = ref.login("alpha", "pw")
        assert ref.post("/result", token=token, image_name="1", CLASS_ID="3", confidence="1").status_code == 200
        time.sleep(1.7)
        r = ref.post("/result", token=token, image_name="2", CLASS_ID="3", confidence="1")
        assert r.status_code == 401 and "only results already transmitted will be counted" in r.text
        assert ref.post("/zipimages", token=token, image_name="1").status_code == 401
        row = wait_for(lambda: results_json(db))[0]
        events = wait_for(lambda: [ln for ln in ref.lines if "scored" in ln] and ref.lines)
        assert row["energy_source"] == "absent" and row["score"] is None
        # the device's own energy figure, made when its run stopped at the limit, is still
        # taken (answers are not), and the session is scored again with it
        r = ref.post("/energy", token=token, energy_wh="0.25", method="estimated")
        assert (r.status_code, r.text) == (200, "Energy stored: 0.25 Wh, self-reported "
                                                "(estimated), after the time limit (answers are not)\n")
        assert ref.post("/energy", token=token, energy_wh="-1").status_code == 406
        rescored = results_json(db)[0]
    assert row["end_reason"] == "time_limit" and row["answered"] == 1
    assert "alpha (team) attempt 1 started at" in events[0]
    assert "alpha attempt 1 ended (time_limit) after 1.5 s" in events[1]
    assert events[2].startswith("lpirc referee: alpha attempt 1 scored: n/a (top-1 ")
    assert row["wall_time_s"] == pytest.approx(1.5)
    assert len(answers(db)) == 1
    assert (rescored["energy_source"], rescored["energy_wh"]) == ("self-reported", 0.25)
    assert rescored["score"] == pytest.approx(rescored["top1"] / 0.25)


@pytest.mark.slow
def test_kill9_and_restart_keep_answers_and_clock(holdout, tmp_path):
    root, _ = holdout
    db = tmp_path / "r.sqlite"
    add_team(db, "alpha")
    ref = Referee(root, db, time_limit_s=60).start()
    try:
        token = ref.login("alpha", "pw")
        for first in range(1, 121, 20):  # six acknowledged batches
            ks = [str(k) for k in range(first, first + 20)]
            r = ref.post("/result", token=token, image_name=ks, CLASS_ID=["5"] * 20, confidence=["1"] * 20)
            assert r.status_code == 200
        left_before = float(ref.post("/status", token=token).text.split("time_left_s ")[1])
        ref.kill9()
        r = lpirc("referee", "serve", "--holdout", str(root), "--db", str(db), "--port", "0",
                  "--class-id-base", "1")  # the open session numbers classes from 0
        assert r.returncode == 5 and r.stderr.strip() == (
            f"lpirc: error: {db}: open session 1 (alpha, attempt 1) takes CLASS_ID from 0; "
            "serve with --class-id-base 0 until it has ended")
        time.sleep(1.0)
        ref.start()  # same database: same secret, same open session, same clock
        r = ref.post("/status", token=token)
        assert r.status_code == 200 and "answers 120\n" in r.text
        left_after = float(r.text.split("time_left_s ")[1])
        assert left_after < left_before - 0.9
        resumed = wait_for(lambda: [ln for ln in ref.lines if " resumed " in ln])
        assert resumed[0].startswith("lpirc referee: alpha attempt 1 resumed (started ")
        assert resumed[0].endswith("s left by its clock, 120 answer(s) and 0 duplicate(s) stored)")
        assert ref.login("alpha", "pw") == token
        assert ref.post("/logout", token=token).status_code == 200
        row = wait_for(lambda: results_json(db))[0]
        assert row["answered"] == 120
        assert Path(row["run_dir"]).is_absolute() and (Path(row["run_dir"]) / "score.json").is_file()
    finally:
        ref.stop()


@pytest.mark.slow
def test_duplicates_and_malformed_answers(holdout, tmp_path):
    root, _ = holdout
    db = tmp_path / "r.sqlite"
    team = "<i>alpha</i>"  # a name the standings page must escape
    add_team(db, team)
    with Referee(root, db) as ref:
        token = ref.login(team, "pw")
        r = ref.post("/result", token=token, image_name=["4", "4"], CLASS_ID=["10", "11"], confidence=["1", "1"])
        assert r.status_code == 200 and "1 new, 1 duplicate" in r.text
        r = ref.post("/result", token=token, image_name="4", CLASS_ID="12", confidence="1")
        assert "0 new, 1 duplicate" in r.text
        bad = [
            {},  # zero answers
            {"image_name": "5", "CLASS_ID": "cat", "confidence": "1"},
            {"image_name": "99999", "CLASS_ID": "1", "confidence": "1"},
            {"image_name": "5", "CLASS_ID": "1000", "confidence": "1"},
            {"image_name": "5", "CLASS_ID": "-2", "confidence": "1"},
            {"image_name": "5", "CLASS_ID": "1", "confidence": "nan"},
            {"image_name": "5", "CLASS_ID": "1", "confidence": "high"},
            {"image_name": ["5", "6"], "CLASS_ID": ["1", "2"], "confidence": ["1", "x"]},  # one bad row
            {"image_name": "5", "CLASS_ID": "1", "confidence": "1", "xmin": "1"},  # box incomplete
            {"image_name": "5", "CLASS_ID": "1"},
        ]
        for fields in bad:
            r = ref.post("/result", token=token, **fields)
            assert r.status_code == 406, (fields, r.text)
            assert r.text.count("\n") == 1 and len(r.text) < 200  # one line with the reason
        r = ref.http.post(ref.url + "/result", content=b"token=" + token.encode() + b"&image_name=\xff",
                          headers={"content-type": "application/x-www-form-urlencoded"})
        assert r.status_code == 406
        assert "duplicates 2\n" in ref.post("/status", token=token).text
        r = lpirc("referee", "results", "--db", str(db), "--all")  # the session is still open
        assert r.returncode == 0 and "None" not in r.stdout, r.stdout
        line = next(ln for ln in r.stdout.splitlines() if team[:20] in ln)
        assert line.split()[5:8] == ["1/130", "2", "n/a"], line  # answered so far, duplicates
        assert line.endswith("n/a (session open: answers so far)"), line
        assert "every attempt, oldest first, unranked" in r.stdout
        r = lpirc("referee", "results", "--db", str(db), "--all", "--format", "csv")
        head, row = r.stdout.splitlines()
        assert head.endswith(",end_reason,status") and row.endswith(",open"), r.stdout
        assert dict(zip(head.split(","), row.split(",")))["answered"] == "1"
        ref.post("/logout", token=token)
        row = wait_for(lambda: results_json(db))[0]
        page = ref.http.get(ref.url + "/").text
        assert "&lt;i&gt;alpha&lt;/i&gt;" in page and team not in page
    rows = answers(db)
    assert [(r[0], r[1], r[-1]) for r in rows] == [("4", "10", "1"), ("4", "11", "0"), ("4", "12", "0")]
    assert row["answered"] == 1 and row["duplicates"] == 2


@pytest.mark.slow
def test_tokens_teams_and_paths(holdout, tmp_path):
    """Tampered tokens, a token of another referee, a team reaching for another's session,
    meter-only calls, path tricks in image_name and URL paths."""
    root, _ = holdout
    db = tmp_path / "r.sqlite"
    for t in ("alpha", "beta"):
        add_team(db, t)
    other_db = tmp_path / "other.sqlite"
    add_team(other_db, "alpha")
    with Referee(root, other_db) as other:
        foreign = other.login("alpha", "pw")
    with Referee(root, db) as ref:
        a, b = ref.login("alpha", "pw"), ref.login("beta", "pw")
        assert a != b
        payload_b, sig_b = b.split(".")
        payload_a, sig_a = a.split(".")
        for forged in (payload_a + "." + sig_b, foreign, a + "x", "", "null", "." * 40):
            assert ref.post("/no_of_images", token=forged).status_code == 401, forged
        za = zipfile.ZipFile(io.BytesIO(ref.post("/zipimages", token=a, image_name="1").content))
        zb = zipfile.ZipFile(io.BytesIO(ref.post("/zipimages", token=b, image_name="1").content))
        assert [sha(za.read(n)) for n in za.namelist()] != [sha(zb.read(n)) for n in zb.namelist()]
        ref.post("/result", token=b, image_name="1", CLASS_ID="1", confidence="1")
        assert "answers 0\n" in ref.post("/status", token=a).text
        assert "team alpha\n" in ref.post("/status", token=a).text
        assert ref.post("/powermeter", token=a, player="beta", power="1").status_code == 403
        ref.post("/logout", token=b)
        assert ref.post("/verify", token=a).status_code == 200  # beta's logout is beta's
        tricks = ["../ground_truth.csv", "ground_truth.csv", "/etc/passwd", "1/../2", "..%2F1",
                  "1 ", " 1", "+1", "0x1", "1e2", "\u0661", "1.0", "99999999999999999999", "1;2"]
        for trick in tricks:
            r = ref.post("/image", token=a, image_name=trick)
            assert r.status_code == 406 and b"filename" not in r.content, trick
        for path in ("/../ground_truth.csv", "/image/../ground_truth.csv", "/ground_truth.csv",
                     "/%2e%2e/ground_truth.csv"):
            r = ref.http.get(ref.url + path)
            assert r.status_code == 404 and b"n0" not in r.content, path
        assert ref.post("/result", token=a, image_name="../1", CLASS_ID="1", confidence="1").status_code == 406


@pytest.mark.slow
def test_oversized_body_and_attempts(holdout, tmp_path):
    root, _ = holdout
    db = tmp_path / "r.sqlite"
    add_team(db, "alpha")
    with Referee(root, db, "--max-body-mib", "0.01", "--attempts", "2") as ref:
        token = ref.login("alpha", "pw")
        big = {"token": token, "image_name": ["1"] * 3000, "CLASS_ID": ["1"] * 3000,
               "confidence": ["1"] * 3000}
        r = ref.post("/result", **big)
        assert r.status_code == 413 and "too large" in r.text

        def chunks():
            yield b"token=" + token.encode()
            for _ in range(600):  # 22 KB, over the 10 KB limit
                yield b"&image_name=1&CLASS_ID=1&confidence=1"

        r = ref.http.post(ref.url + "/result", content=chunks(),
                          headers={"content-type": "application/x-www-form-urlencoded"})
        assert r.status_code == 413  # no Content-Length: counted as it streams
        assert "answers 0\n" in ref.post("/status", token=token).text
        ref.post("/logout", token=token)
        second = ref.login("alpha", "pw")
        assert second != token and "attempt 2 of 2" in ref.post("/status", token=second).text
        ref.post("/logout", token=second)
        r = ref.post("/login", username="alpha", password="pw")
        assert r.status_code == 403 and "No attempts left" in r.text
        wait_for(lambda: len([x for x in results_json(db, "--all") if x["status"] == "scored"]) == 2)


@pytest.mark.slow
def test_cli_errors(holdout, tmp_path):
    root, _ = holdout
    db = tmp_path / "r.sqlite"
    r = lpirc("referee", "add-team", "alpha", "--db", str(db))
    assert r.returncode == 0 and "password: " in r.stdout
    r = lpirc("referee", "add-team", "alpha", "--db", str(db), "--password", "x")
    assert r.returncode == 5 and r.stderr.strip() == f"lpirc: error: {db}: team 'alpha' already exists"
    r = lpirc("referee", "add-team", "beta", "--db", str(db), "--password", "")
    assert r.returncode == 2 and "'--password': must not be empty" in r.stderr
    r = lpirc("referee", "results", "--db", str(tmp_path / "none.sqlite"))
    assert r.returncode == 5 and "referee database not found" in r.stderr
    r = lpirc("referee", "answers", "--db", str(db), "--team", "nobody")
    assert r.returncode == 5 and r.stderr.strip() == f"lpirc: error: {db}: no team 'nobody'"
    r = lpirc("referee", "answers", "--db", str(db), "--team", "alpha")
    assert r.returncode == 0 and r.stdout.startswith("image_name,CLASS_ID,confidence,")
    r = lpirc("referee", "serve", "--holdout", str(tmp_path / "nowhere"), "--db", str(db))
    assert r.returncode == 5 and "holdout folder not found" in r.stderr
    assert not Path(f"{db}.lock").exists()  # nothing left behind by a referee that never started
    r = lpirc("referee", "results", "--db", str(db))
    assert r.returncode == 0 and "no scored session yet" in r.stdout
    stray = tmp_path / "stray"  # two labelled images and a zip left in the folder
    stray.mkdir()
    for name in ("img_000001.jpg", "img_000002.jpg"):
        (stray / name).write_bytes((root / name).read_bytes())
    gt = read_gt(root)
    (stray / "ground_truth.csv").write_text("".join(f"{n},{gt[n]}\n" for n in sorted(gt)[:2]))
    (stray / "images.zip").write_bytes(b"PK\x05\x06" + bytes(18))
    r = lpirc("referee", "serve", "--holdout", str(stray), "--db", str(db))
    assert r.returncode == 5 and "no label for 1 holdout image(s), e.g. images.zip" in r.stderr
    r = lpirc("run", "--referee", "http://127.0.0.1:9", "--user", "alpha")
    assert r.returncode == 2 and "--referee needs --user and --password" in r.stderr
    r = lpirc("run", "--user", "alpha", "--password", "pw")
    assert r.returncode == 2 and "--user and --password go with --referee URL" in r.stderr
    r = lpirc("run", "--quiet", "--no-report", "--out", tmp_path / "local", cwd=None,
              env={"LPIRC_REFEREE_PASSWORD": "pw"})
    assert r.returncode == 0, r.stderr  # an exported referee password does not stop a local run
    r = lpirc("run", "--referee", "127.0.0.1:8000", "--user", "alpha", "--password", "pw")
    assert r.returncode == 2 and "--referee '127.0.0.1:8000': expected http://HOST:PORT" in r.stderr
    r = lpirc("run", "--referee", "http://127.0.0.1:9", "--user", "alpha", "--password", "pw",
              "--holdout", str(root))
    assert r.returncode == 2 and "--holdout does not go with --referee" in r.stderr
    with socket.socket() as s:  # a port nobody listens on: refused at once, retried, then exit 1
        s.bind(("127.0.0.1", 0))
        closed = s.getsockname()[1]
    r = lpirc("run", "--referee", f"http://127.0.0.1:{closed}", "--user", "alpha", "--password",
              "pw", "--time-limit-s", "2", "--quiet", "--out", str(tmp_path / "unreached"))
    assert r.returncode == 1 and r.stderr.startswith(
        f"lpirc: error: http://127.0.0.1:{closed}/help: cannot reach the referee (tried for ")
    assert "Connection refused" in r.stderr and r.stderr.count("\n") == 1


@pytest.mark.slow
def test_original_sample_client_pycurl(holdout, tmp_path):
    """The sample client's pycurl calls (tests/referee_sample_client.py), unchanged protocol:
    every image by /image and by /zipimages, answers with boxes five per POST, logout."""
    # pycurl is imported in the client's own process: in this one, a libcurl that another
    # library loaded first can make its import fail (a link-time version check)
    probe = subprocess.run([sys.executable, "-c", "import pycurl"], capture_output=True, text=True)
    if probe.returncode:
        pytest.skip(f"pycurl not importable: {probe.stderr.strip().splitlines()[-1]}")
    root, by_sha = holdout
    db = tmp_path / "r.sqlite"
    add_team(db, "lpirc", "pass")
    truth = {name: scoring.synset_index(label) for name, label in read_gt(root).items()}
    with Referee(root, db) as ref:
        host, port = ref.url[len("http://"):].split(":")
        im, tmp = tmp_path / "images", tmp_path / "temp"
        im.mkdir()
        tmp.mkdir()
        # the answers: right for the first 100 images by the client's own downloads
        golden = tmp_path / "golden_output.csv"
        proc_args = [sys.executable, str(Path(__file__).with_name("referee_sample_client.py")),
                     "--ip", host, "--port", port, "--user", "lpirc", "--pass", "pass",
                     "--in", str(golden), "--im_dir", str(im), "--temp_dir", str(tmp)]
        # the client's login joins this open session: read its numbering to write right answers
        token = ref.login("lpirc", "pass")
        order = numbering(ref, token, by_sha)
        golden.write_text("".join(f"{k} {truth[order[k]]} 0.9 1 2 3 4\n" for k in range(1, 101)))
        r = subprocess.run(proc_args, capture_output=True, text=True, timeout=120)
        assert r.returncode == 0, r.stdout + r.stderr
        assert "images 130 fetched one by one, 130 in zips, 100 answers posted" in r.stdout
        assert sorted(by_sha[sha((im / f"{k}.jpg").read_bytes())] for k in range(1, 131)) == \
            sorted(by_sha.values())
        row = wait_for(lambda: results_json(db))[0]
    assert row["answered"] == 100 and row["top1"] == pytest.approx(100 / 130)
    assert answers(db)[0][3:7] == ["1.0", "2.0", "3.0", "4.0"]


@pytest.mark.slow
def test_load_bench_quick(holdout, tmp_path):
    """bench/referee_load.py end to end on a small holdout: it prints its table; no 5xx and no
    lost answer (correctness; its speed figures belong to the benchmark, not to tests)."""
    root, _ = holdout
    out = tmp_path / "load.json"
    r = subprocess.run([sys.executable, str(Path(__file__).parents[1] / "bench" / "referee_load.py"),
                        "--quick", "--holdout", str(root), "--devices", "2", "--out", str(out)],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr[-2000:]
    assert "served/s" in r.stdout and "[--quick: a smoke test]" in r.stdout
    (level,) = json.loads(out.read_text())["levels"]
    assert level["devices"] == 2 and level["images_served"] > 0
    assert level["errors_5xx"] == 0 and level["lost_answers"] == 0
    assert level["answers_stored"] == level["answers_acked"] == level["images_served"]


@pytest.mark.slow
def test_lpirc_run_against_referee(small_holdout, reference_model, tmp_path):
    """A full session of the real client: `lpirc run --referee` downloads the holdout as zips,
    answers with the pipeline, posts every answer, its energy, and logs out; the referee's
    answers are the run's own, image by image."""
    db = tmp_path / "r.sqlite"
    add_team(db, "alpha")
    out = tmp_path / "run"
    with Referee(small_holdout, db, "--class-id-base", "1", time_limit_s=120) as ref:
        r = lpirc("run", "--model", str(reference_model), "--referee", ref.url, "--user", "alpha",
                  "--password", "pw", "--out", str(tmp_path / "off"), "--quiet",
                  "--referee-class-base", "0")  # contradicts the referee: refused before login
        assert r.returncode == 1 and r.stderr.strip() == (
            f"lpirc: error: {ref.url}: the referee numbers CLASS_ID from 1 (its /help), not from "
            "0 (--referee-class-base): every answer would be off by one")
        assert results_json(db, "--all") == []  # no session started
        r = lpirc("run", "--model", str(reference_model), "--referee", ref.url, "--user", "alpha",
                  "--password", "pw", "--out", str(out), "--quiet",  # --time-limit-s 600
                  "--no-report", "--referee-ahead", "100")  # numbering: the referee's /help
        assert r.returncode == 0, r.stdout + r.stderr
        assert ("40 downloaded, 40 answers posted (200), 0 refused, 0 never posted; CLASS_ID "
                "from 1 (the referee's /help)") in r.stdout
        assert "referee energy  posted" in r.stdout and "referee logout  ok" in r.stdout
        r = lpirc("run", "--model", reference_model, "--referee", ref.url, "--user", "alpha",
                  "--out", tmp_path / "run2", "--quiet", cwd=None,
                  env={"LPIRC_REFEREE_PASSWORD": "wrong"})
        assert r.returncode == 1 and r.stderr.strip() == \
            f"lpirc: error: {ref.url}/login: HTTP 401: Invalid username or password"
        row = wait_for(lambda: results_json(db))[0]
    # 2,000 images for one worker in 1 s: on a quiet 2-core machine two workers answered all
    # 2,000 in 1.2 s, so one worker (about half that pace, model loading included) cannot
    big = tmp_path / "big"
    make_distinct_holdout(small_holdout, big, 2000)
    add_team(tmp_path / "late.sqlite", "late")
    with Referee(big, tmp_path / "late.sqlite", time_limit_s=1.0) as ref:
        r = lpirc("run", "--model", str(reference_model), "--referee", ref.url, "--user", "late",
                  "--password", "pw", "--out", str(tmp_path / "late"), "--quiet", "--no-report",
                  "--workers", "1")
        assert r.returncode == 0 and "status          budget_exhausted" in r.stdout, r.stdout + r.stderr
        assert "referee energy  posted" in r.stdout, r.stdout  # taken just after the limit
        # every answer made within the run's budget (the session's, less the time to post the
        # last batch) reached the referee in time: before, the last batch was refused
        assert "0 refused, 0 never posted" in r.stdout, r.stdout
        # its run ends just before the session (to post its last answers): whether its logout
        # came before the referee's limit (a wind-down quicker than the margin: a quiet
        # machine) or just after it (a loaded one) is timing; the summary must say what the
        # referee says happened
        ended = wait_for(lambda: [ln for ln in ref.lines
                                  if ln.startswith("lpirc referee: late attempt 1 ended (")])[0]
        logout = {"logout": "referee logout  ok;",
                  "time_limit": "referee logout  none needed: the session had already ended "
                                "(HTTP 401: Time limit reached);"}
        reason = ended.split("(", 1)[1].split(")", 1)[0]
        assert reason in logout and logout[reason] in r.stdout, (ended, r.stdout)
        late = wait_for(lambda: (lambda x: x if x and x[0]["energy_source"] != "absent" else None)(
            results_json(tmp_path / "late.sqlite")))[0]
        assert late["energy_source"] == "self-reported" and late["score"] is not None
    local = {int(json.loads(ln)["image"][:-4]): json.loads(ln)["top5"][0]
             for ln in (out / "results.jsonl").read_text().splitlines()}
    remote = {int(a[0]): int(a[9]) for a in answers(db)}  # class index, from 1-based CLASS_IDs
    assert remote == local and len(remote) == 40
    assert {int(a[1]) for a in answers(db)} == {k + 1 for k in local.values()}
    posts = [json.loads(ln) for ln in (out / "referee_posts.jsonl").read_text().splitlines()]
    assert len(posts) == 40 and {p["post"] for p in posts} == {"posted"}
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["referee"]["posted"] == 40 and manifest["referee"]["logout"] is True
    assert 100 < manifest["budget"]["time_limit_s"] < 120  # the referee's 120 s clock rules
    assert row["answered"] == 40 and row["top1"] >= 0.8  # the reference model: 93 % on the demo
    assert row["energy_source"] == "self-reported" and row["score"] == pytest.approx(
        row["top1"] / row["energy_wh"])


@pytest.mark.slow
def test_referee_client_retries_across_a_restart(holdout, tmp_path):
    """The client's calls are retried with backoff: a referee that is down at first, and one
    killed (-9) and restarted on the same port mid-session, lose nothing."""
    from lpirc.referee.client import RefereeClient

    root, _ = holdout
    db = tmp_path / "r.sqlite"
    add_team(db, "alpha")
    with Referee(root, db) as probe:  # a free port for the fixed-port servers below
        port = probe.url.rsplit(":", 1)[1]
    ref = Referee(root, db, "--port", port)
    late, again = threading.Timer(1.0, ref.start), threading.Timer(1.0, ref.start)
    late.start()
    client = RefereeClient(f"http://127.0.0.1:{port}", "alpha", "pw",
                           deadline=time.monotonic() + 60)
    try:
        client.login()  # retried until the referee listens
        late.join()
        assert client.count() == 130
        r = client.authed("/result", {"image_name": ["1", "2"], "CLASS_ID": ["1", "2"],
                                      "confidence": ["1", "1"]})
        assert r.status == 200
        ref.kill9()
        again.start()
        r = client.authed("/result", {"image_name": ["3"], "CLASS_ID": ["3"], "confidence": ["1"]})
        assert r.status == 200 and client.retries >= 2
        assert "answers 3\n" in client.authed("/status", {}).text
    finally:
        client.close()
        for t in (late, again):
            if t.is_alive():
                t.join()
        ref.stop()


@pytest.mark.slow
def test_multipart_forms(holdout, tmp_path):
    """Fields sent as multipart/form-data (curl -F, pycurl's HTTPPOST) are read like URL-encoded
    ones; a broken multipart body or a file part is a 406 with one line, never a 500."""
    root, _ = holdout
    db = tmp_path / "r.sqlite"
    add_team(db, "alpha")
    with Referee(root, db) as ref:
        def multipart(path: str, **fields) -> "httpx.Response":
            parts = [(k, (None, v)) for k, vs in fields.items()
                     for v in (vs if isinstance(vs, list) else [vs])]
            return ref.http.post(ref.url + path, files=parts)

        r = multipart("/login", username="alpha", password="pw")
        assert r.status_code == 200, r.text
        token = r.text
        r = multipart("/result", token=token, image_name=["1", "2"], CLASS_ID=["3", "4"],
                      confidence=["0.5", "0.4"])
        assert (r.status_code, r.text) == (
            200, "Result stored in the server database: 2 new, 0 duplicate(s) "
                 "(an image's first answer counts)\n")
        r = multipart("/result", token=token, image_name="3", CLASS_ID=["3", "4"], confidence="1")
        assert r.status_code == 406 and "length mismatch" in r.text
        r = ref.http.post(ref.url + "/result", files={"token": (None, token),
                                                      "image_name": ("a.txt", b"4")})
        assert r.status_code == 406 and r.text.startswith("Malformed multipart form")
        r = ref.http.post(ref.url + "/result", content=b"--x\r\nnot a part",
                          headers={"content-type": "multipart/form-data; boundary=x"})
        assert 400 <= r.status_code < 500 and r.text.count("\n") <= 1, (r.status_code, r.text)
        assert "answers 2\n" in ref.post("/status", token=token).text
        err = ref.stop()
    assert "Traceback" not in err


STANDINGS_PROBE = """(() => ({
  headers: [...document.querySelectorAll('th')].map(e => e.textContent),
  rows: [...document.querySelectorAll('tr')].slice(1).map(
      tr => [...tr.querySelectorAll('td')].map(e => e.textContent)),
  under: [...document.querySelectorAll('li')].map(e => e.textContent),
  note: document.querySelector('p').textContent,
}))()"""


@pytest.mark.browser
@pytest.mark.slow
def test_standings_page_in_chromium(holdout, tmp_path):
    """The live standings page (`/`) in a real headless Chromium: each column says its unit or
    source, a scored team's row, a session under way with its answers so far; no page errors,
    nothing asked of any other host."""
    from chromium import Chromium, find_chromium, png_size

    binary = find_chromium()
    if binary is None:
        pytest.skip("Chromium not installed (apt-get install chromium): browser checks skipped")
    root, _ = holdout
    db = tmp_path / "r.sqlite"
    for team in ("alpha", "beta"):
        add_team(db, team)
    with Referee(root, db) as ref:
        a = ref.login("alpha", "pw")
        ref.post("/result", token=a, image_name=["1", "2"], CLASS_ID=["1", "2"], confidence=["1", "1"])
        ref.post("/energy", token=a, energy_wh="0.5", method="estimated")
        ref.post("/logout", token=a)
        b = ref.login("beta", "pw")
        ref.post("/result", token=b, image_name=["1", "2", "3"], CLASS_ID=["1"] * 3,
                 confidence=["1"] * 3)
        alpha = wait_for(lambda: results_json(db))[0]
        browser = Chromium(binary)
        try:
            visit = browser.visit(ref.url + "/", STANDINGS_PROBE)
        finally:
            browser.close()
    page = visit.probe
    assert page["headers"] == ["rank", "team", "attempt", "score (1/Wh)", "top-1 (measured)",
                               "answered", "duplicates", "energy (source)"]
    assert page["rows"] == [["1", "alpha", "1", f"{alpha['score']:.4g}",
                             f"{100 * alpha['top1']:.2f} %", "2/130", "0",
                             "0.5 Wh (self-reported)"]]
    (under,) = page["under"]
    assert under.startswith("beta, attempt 1: 3 of 130 images answered so far, ")
    assert under.endswith(" s left by the referee's clock")
    assert "energy in Wh (rules lpirc-onsite)" in page["note"] and "absent (no score)" in page["note"]
    assert visit.errors == [] and all(u.startswith(ref.url) for u in visit.requests), visit.requests
    assert png_size(visit.screenshot)[0] >= 800
