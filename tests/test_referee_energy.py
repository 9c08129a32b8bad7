"""Honest energy at the referee, against a real `lpirc referee serve` process on 127.0.0.1:
metered only where the meter's readings cover the session (no gap over 2 s), self-reported
figures under the 0.1 W floor refused, metered and self-reported sessions ranked apart."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from referee_helpers import Referee, add_team, lpirc, make_distinct_holdout, wait_for


@pytest.fixture(scope="module")
def holdout(small_holdout, tmp_path_factory):
    out = tmp_path_factory.mktemp("energy") / "holdout"
    make_distinct_holdout(small_holdout, out, 130)
    return out


def results(db, *extra: str) -> list[dict]:
    r = lpirc("referee", "results", "--db", str(db), "--format", "json", *extra)
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout)


@pytest.mark.slow
def test_metered_only_where_readings_cover_the_session(holdout, tmp_path):
    """Four teams, each answering image 1 and logging out after ~1.5 s: `dense` has a reading
    every 0.5 s across its session (metered), `gap` one reading before and one after (a gap over
    2 s: its own figure is used, and says why), `off` readings only long before (the meter was
    off), `tiny` self-reports 1e-9 Wh (under the floor: no energy, no score). The standings rank
    the metered team and the self-reported ones apart."""
    db = tmp_path / "r.sqlite"
    teams = ("dense", "gap", "off", "tiny")
    for t in teams:
        add_team(db, t)
    add_team(db, "meter", "mpw", "--meter")
    with Referee(holdout, db) as ref:
        meter = ref.login("meter", "mpw")
        for team in teams:
            t0 = time.time()
            if team == "off":
                ref.post("/powermeter", token=meter, player=team, power=["5", "5"],
                         timestamp=[str(t0 - 60), str(t0 - 59.5)])
            token = ref.login(team, "pw")
            assert ref.post("/result", token=token, image_name="1", CLASS_ID="1",
                            confidence="1").status_code == 200
            ref.post("/energy", token=token, energy_wh="1e-9" if team == "tiny" else "0.5",
                     method="estimated")
            time.sleep(1.5)
            assert ref.post("/logout", token=token).status_code == 200
            t1 = time.time()
            if team == "dense":
                ts = [t0 - 0.5 + 0.5 * i for i in range(int((t1 - t0) / 0.5) + 3)]
            elif team == "gap":
                ts = [t0 - 0.5, t1 + 0.5]
            else:
                continue
            r = ref.post("/powermeter", token=meter, player=team, power=["8"] * len(ts),
                         timestamp=[str(t) for t in ts])
            assert r.status_code == 200, r.text
        rows = wait_for(lambda: (lambda x: x if len(x) == 4 else None)(results(db)))
        table = lpirc("referee", "results", "--db", str(db)).stdout
        page = ref.http.get(ref.url + "/").text
    by = {r["team"]: r for r in rows}
    assert by["dense"]["energy_source"] == "metered"
    assert by["dense"]["energy_wh"] == pytest.approx(8 * by["dense"]["wall_time_s"] / 3600,
                                                     rel=1e-3)
    assert (by["gap"]["energy_source"], by["gap"]["energy_wh"]) == ("self-reported", 0.5)
    assert (by["off"]["energy_source"], by["off"]["energy_wh"]) == ("self-reported", 0.5)
    assert (by["tiny"]["energy_source"], by["tiny"]["score"]) == ("absent", None)
    scores = {t: json.loads((Path(by[t]["run_dir"]) / "score.json").read_text())["energy_method"]
              for t in teams}
    assert "largest gap" in scores["dense"] and "(at most 2 s)" in scores["dense"]
    assert "gap in the session (at most 2 s is metered)" in scores["gap"], scores["gap"]
    assert "do not reach both ends of the session" in scores["off"], scores["off"]
    assert "under the floor of 0.1 W" in scores["tiny"], scores["tiny"]
    # ranked apart: the metered team is 1; the two self-reported ones 1 among themselves
    assert (by["dense"]["rank"], by["dense"]["ranked_among"]) == (1, "metered")
    assert {by["gap"]["rank"], by["off"]["rank"]} == {1, 2} or \
        by["gap"]["rank"] == by["off"]["rank"] == 1
    assert by["gap"]["ranked_among"] == "self-reported" and by["tiny"]["rank"] is None
    assert "\n  s1  gap " in table and "ranked apart: metered sessions first" in table, table
    assert "ranked apart" in page and ">s1<" in page
