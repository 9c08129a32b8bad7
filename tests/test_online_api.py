"""``lpirc online``'s HTTP interface beyond the upload-to-score path: the login limits, the
``scoring`` state, the standings' ``?rank=``. A real ``lpirc online serve`` on 127.0.0.1;
other loopback addresses (127.0.0.2, 127.0.0.3) play other clients."""

from __future__ import annotations

import json
import re
import time
from pathlib import Path

import httpx
import pytest

from online_helpers import Online, Team, add_team, lpirc

SIDECAR = json.loads((Path(__file__).resolve().parents[1] / "submission" / "reference"
                      / "model.json").read_text())


def client(url: str, address: str) -> httpx.Client:
    """An HTTP client whose connections come from ``address`` (a loopback address)."""
    return httpx.Client(base_url=url, timeout=60,
                        transport=httpx.HTTPTransport(local_address=address))


@pytest.mark.slow
def test_failed_logins_limited_429_with_retry_after(small_holdout, tmp_path):
    """Past --login-client-burst failed logins, a client gets 429 with Retry-After and one line
    (JSON from the API, the login page from /login), even with a right password it never
    used; another client address still logs in; a name and password that logged in before
    still do; the service logs the refusal once."""
    db = tmp_path / "online.sqlite"
    add_team(db, "alpha", "pw-alpha")
    add_team(db, "beta", "pw-beta")
    with Online(small_holdout, db, "--login-client-burst", "2", "--login-client-every-s", "60",
                "--login-account-burst", "50") as server:
        alpha = Team(server.url, "alpha", "pw-alpha")  # from 127.0.0.1, before any failure
        flood = client(server.url, "127.0.0.2")
        wrong = [flood.post("/api/login", data={"username": "alpha", "password": f"x{i}"})
                 for i in range(2)]
        assert [r.status_code for r in wrong] == [401, 401], [r.text for r in wrong]
        t0 = time.monotonic()
        r = flood.post("/api/login", data={"username": "beta", "password": "pw-beta"})
        held_s = time.monotonic() - t0
        assert r.status_code == 429, r.text
        body = r.json()
        assert "Too many failed logins from 127.0.0.2" in body["detail"], body
        assert "\n" not in body["detail"] and set(body) == {"detail", "retry_after_s"}, body
        assert 30 <= body["retry_after_s"] <= 60, body  # one failure more per 60 s
        assert int(r.headers["Retry-After"]) == body["retry_after_s"], r.headers
        assert held_s >= 1.5, held_s  # held ~2 s before it is sent (a flood asks less often)
        page = flood.post("/login", data={"username": "beta", "password": "pw-beta"})
        assert page.status_code == 429 and "Retry-After" in page.headers, page.text
        assert "text/html" in page.headers["content-type"]
        assert "Too many failed logins from 127.0.0.2" in page.text
        assert "Traceback" not in page.text and "lpirc_online" not in page.headers.get("set-cookie", "")
        ok = flood.post("/api/login", data={"username": "alpha", "password": "pw-alpha"})
        assert ok.status_code == 200, ok.text  # logged in before: recognised, not limited
        other = client(server.url, "127.0.0.3")
        r = other.post("/api/login", data={"username": "beta", "password": "pw-beta"})
        assert r.status_code == 200 and r.json()["token"], r.text
        assert alpha.http.get("/api/me").json() == {"team": "alpha", "role": "team"}
        flood.close()
        other.close()
        alpha.close()
    refused = [ln for ln in server.lines if "login: client 127.0.0.2 over its failed-login rate" in ln]
    assert len(refused) == 1 and refused[0].startswith("lpirc online: "), server.lines


def watch_states(team: Team, sid: int, timeout_s: float = 120) -> tuple[list[str], dict | None, str | None]:
    """Poll a submission as fast as the service answers until it is scored or failed: the states
    seen in order (repeats dropped), its first view in ``scoring``, and its page and the team's
    page fetched just after the API said ``scoring``."""
    seen: list[str] = []
    view = page = None
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        v = team.get(sid).json()
        if not seen or seen[-1] != v["state"]:
            seen.append(v["state"])
        if v["state"] == "scoring" and page is None:
            view = v
            page = team.http.get(f"/submissions/{sid}").text + team.http.get("/team").text
        if v["state"] in ("scored", "failed"):
            return seen, view, page
    raise AssertionError(f"submission {sid} not settled in {timeout_s} s: {seen}")


@pytest.mark.slow
def test_scoring_state_between_running_and_scored(small_holdout, reference_model, tmp_path):
    """A run that ended on its device is ``scoring`` while the service scores it (not
    ``running``): the API, the events, the team's and the submission's pages say so, with the
    device it ran on; then ``scored``. The states only move forward."""
    db = tmp_path / "online.sqlite"
    add_team(db, "alpha", "pw-alpha")
    with Online(small_holdout, db) as server:
        alpha = Team(server.url, "alpha", "pw-alpha")
        sid = alpha.upload(reference_model, SIDECAR).json()["id"]
        seen, view, page = watch_states(alpha, sid)
        order = ["queued", "running", "scoring", "scored"]
        assert seen == [s for s in order if s in seen] and seen[-1] == "scored", seen
        events = alpha.http.get(f"/api/submissions/{sid}/events").json()["events"]
        assert [e["state"] for e in events] == order, events
        scoring = events[2]
        assert scoring["device"] == "cpu_0@local" and scoring["attempt"] == 1, scoring
        assert "ended on cpu_0@local" in scoring["message"] and "scoring on the service" in scoring["message"]
        assert "scoring" in seen, (f"never saw the scoring state in {seen}: the report alone "
                                   "takes ~1 s, the polls a few ms each")
        assert view["device"] == "cpu_0@local" and view["since_utc"].endswith("Z"), view
        assert view["score"] is None and view["position"] is None and view["failure"] is None
        assert 'id="state">scoring<' in page and "being scored on the service" in page, page
        assert f'data-id="{sid}" data-state="scoring"' in page and "(run on cpu_0@local)" in page
        log = alpha.http.get(f"/submissions/{sid}/log").text
        assert re.search(r"\n\S+\s+scoring\s+attempt 1 ended on cpu_0@local", log), log
        assert alpha.get(sid).json()["score"]["top1"] is not None
    scored = [ln for ln in server.lines if f"submission {sid} (alpha): scored" in ln]
    assert scored, server.lines
    print(f"\nstates seen by polling: {seen}; the service: {scored[0]}")


def test_schema_1_database_upgraded_in_place(tmp_path):
    """A database of schema 1 (before the scoring state) is upgraded when opened: its accounts,
    submissions and events kept, and its submissions can then be ``scoring``."""
    import sqlite3

    from lpirc.online import store as online_store
    from lpirc.online.store import Store
    from lpirc.referee.store import hash_password

    db = tmp_path / "v1.sqlite"
    v1 = online_store._SCHEMA.replace("'running', 'scoring', 'scored'", "'running', 'scored'")
    assert v1 != online_store._SCHEMA
    con = sqlite3.connect(db, isolation_level=None)  # what schema 1 made: no 'scoring'
    for stmt in v1.split(";"):
        con.execute(stmt)
    con.execute(f"PRAGMA application_id = {online_store.APPLICATION_ID}")
    con.execute("PRAGMA user_version = 1")
    now = time.time()
    con.execute("INSERT INTO teams VALUES (1, 'alpha', 'team', ?, ?)", (hash_password("pw"), now))
    con.execute("INSERT INTO submissions (id, team_id, phase, label, created, day, model_sha256, "
                "model_bytes, folder, has_sidecar, state, charged, attempts, device, started) "
                "VALUES (1, 1, 'dev', 'old', ?, '2026-12-07', ?, 1, '/x', 0, 'running', 1, 1, "
                "'cpu_0', ?)", (now, "0" * 64, now))
    con.execute("INSERT INTO events VALUES (1, 1, ?, 'running', 1, 'cpu_0', 'started')", (now,))
    with pytest.raises(sqlite3.IntegrityError):
        con.execute("UPDATE submissions SET state = 'scoring'")
    con.close()

    store = Store(db)
    assert store.check_login("alpha", "pw").name == "alpha"
    assert store.submission(1).state == "running" and store.submission(1).label == "old"
    assert store.mark_scoring(1, 1, time.time(), "cpu_0", "ended; scoring")
    assert [e.state for e in store.events(1)] == ["running", "scoring"]
    assert store.counts()["states"]["scoring"] == 1
    store.close()
    con = sqlite3.connect(db)
    assert con.execute("PRAGMA user_version").fetchone()[0] == 2
    assert {r[0] for r in con.execute("SELECT name FROM sqlite_master WHERE type = 'index'")} >= \
        {"submissions_team", "submissions_state", "events_submission"}
    assert "submissions_v2" not in str(con.execute("SELECT sql FROM sqlite_master").fetchall())
    con.close()


@pytest.mark.slow
def test_standings_rank_query(small_holdout, reference_model, tmp_path):
    """``?rank=best|latest`` on the standings API, page and export chooses which scored
    submission of a team counts (default: the serve option); another value is 400 in one line
    (JSON from the API, a page from the page), never a 500."""
    db = tmp_path / "online.sqlite"
    add_team(db, "alpha", "pw-alpha")
    add_team(db, "org", "pw-org", "--organiser")
    worse = json.loads(json.dumps(SIDECAR))
    worse["preprocess"]["crop_fraction"] = 0.2  # top-1 0.25 on this holdout, 0.95 at 0.875
    with Online(small_holdout, db) as server:
        alpha = Team(server.url, "alpha", "pw-alpha")
        first = alpha.upload(reference_model, SIDECAR).json()["id"]
        alpha.wait([first])
        last = alpha.upload(reference_model, worse).json()["id"]
        views = alpha.wait([first, last])
        assert all(v["state"] == "scored" for v in views.values()), views
        best = max((first, last), key=lambda i: (views[i]["score"]["score"], -i))
        http = httpx.Client(base_url=server.url, timeout=60)
        default = http.get("/api/standings").json()
        assert default["counts"] == default["counts_default"] == "best", default
        assert default["standings"][0]["id"] == best
        for rank, want in (("best", best), ("latest", last)):
            d = http.get(f"/api/standings?phase=dev&rank={rank}").json()
            assert d["counts"] == rank and d["counts_default"] == "best", d
            assert [(r["team"], r["id"]) for r in d["standings"]] == [("alpha", want)], d
            assert d["standings"][0]["submissions"] == 2
        page = http.get("/standings?rank=latest")
        assert page.status_code == 200 and "latest scored submission of each team counts" in page.text
        assert re.search(rf'<td class="num">{last}</td>', page.text), page.text
        assert '"&rank=" + encodeURIComponent(rank)' in page.text and 'const rank = "latest"' in page.text
        assert 'href="/standings?phase=dev&amp;rank=best"' in page.text
        assert http.get("/api/standings?rank=").json()["counts"] == "best"
        for bad in ("worst", "BEST", "x" * 500):
            r = http.get("/api/standings", params={"rank": bad})
            assert r.status_code == 400, r.text
            assert "expected one of best, latest" in r.json()["detail"] and "\n" not in r.json()["detail"]
            assert len(r.json()["detail"]) < 120, r.json()
        r = http.get("/standings?rank=worst")
        assert r.status_code == 400 and "text/html" in r.headers["content-type"]
        assert "expected one of best, latest" in r.text and "Traceback" not in r.text
        org = Team(server.url, "org", "pw-org")
        csv_text = org.http.get("/api/admin/export/standings.csv?phase=dev&rank=latest").text
        assert csv_text.splitlines()[1].split(",")[2] == str(last), csv_text
        assert org.http.get("/api/admin/export/standings.json?rank=nope").status_code == 400
        http.close()
    # the command-line export takes the same choice (the service stopped: only the store)
    for rank, want in ((None, best), ("best", best), ("latest", last)):
        r = lpirc("online", "export", "--db", str(db), "--format", "json",
                  *(("--rank", rank) if rank else ()))
        data = json.loads(r.stdout)
        assert r.returncode == 0 and data["counts"] == (rank or "best"), r.stdout + r.stderr
        assert [row["id"] for row in data["standings"]] == [want], data
    r = lpirc("online", "export", "--db", str(db), "--rank", "worst")
    assert r.returncode == 2 and "'worst' is not one of 'best', 'latest'" in r.stderr, r.stderr
