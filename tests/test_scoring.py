"""scoring/ and `lpirc score` / `lpirc rules`: every rule set against hand-computed examples."""

from __future__ import annotations

import csv
import io
import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

import scoring
from scoring import ScoringError

from conftest import REPO, run_lpirc

SYN = scoring.synsets()


# --- helpers ----------------------------------------------------------------------------------


def write_gt(path: Path, labels: dict[str, int | str], header=True) -> Path:
    lines = ["filename,label"] if header else []
    lines += [f"{k},{SYN[v] if isinstance(v, int) else v}" for k, v in labels.items()]
    path.write_text("\n".join(lines) + "\n")
    return path


def answer(image, top1, t_s=1.0, inference_ms=10.0, error=None, top5=None, latency_ms=None):
    t5 = top5 if top5 is not None else ([] if error else [top1, 900, 901, 902, 903])
    return {"image": image, "index": 0, "top5": t5, "scores": [0.5] * len(t5), "error": error, "t_s": t_s,
            "latency_ms": latency_ms if latency_ms is not None else inference_ms + 1.0,
            "inference_ms": inference_ms, "worker": 0, "late": False}


def write_run(folder: Path, answers: list[dict], manifest: dict | None = None, tail: str = "") -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    text = "".join(json.dumps(a) + "\n" for a in answers) + tail
    (folder / "results.jsonl").write_text(text)
    if manifest is not None:
        (folder / "manifest.json").write_text(json.dumps(manifest))
    return folder


def manifest(gt=None, wh=0.5, source="estimated", wall=100.0, inf=50.0, status="complete", **budget):
    m = {"status": status, "wall_time_s": wall, "inference_time_s": inf,
         "holdout": {"path": "h", "image_count": 10, "ground_truth": str(gt) if gt else None},
         "model": {"path": "/x/mnv2.tflite"}, "budget": {"clock": "wall", **budget}}
    if wh is not None:
        m["energy"] = {"wh": wh, "source": source, "method": "CPU time x 4.0 W/core + 10 W idle"}
    return m


@pytest.fixture
def gt10(tmp_path) -> Path:
    return write_gt(tmp_path / "gt.csv", {f"img{i}.jpg": i for i in range(10)})


@pytest.fixture
def onsite_run(tmp_path, gt10) -> Path:
    """10 images: 4 correct in time, 1 correct but late (700 s), 1 wrong (right in top-5), 1 error,
    3 unanswered."""
    answers = [answer(f"img{i}.jpg", i, t_s=float(i + 1)) for i in range(4)]
    answers.append(answer("img4.jpg", 4, t_s=700.0))
    answers.append(answer("img5.jpg", 99, t_s=5.0, top5=[99, 98, 5, 97, 96]))
    answers.append(answer("img6.jpg", None, t_s=6.0, error="decode: cannot identify image file"))
    return write_run(tmp_path / "run", answers, manifest(gt10, wh=0.5))


def cli(*args):
    from lpirc.cli import main

    return CliRunner().invoke(main, [str(a) for a in args])


# --- labels and ground truth ------------------------------------------------------------------


def test_synset_index():
    assert scoring.synset_index("n01440764") == 0
    assert scoring.synset_index("n15075141") == 999
    assert scoring.synset_index("17") == 17
    for bad in ("n00000000", "1000", "-3", "cat"):
        with pytest.raises(ScoringError):
            scoring.synset_index(bad)


def test_read_ground_truth_header_optional_synset_or_index(tmp_path):
    p = tmp_path / "gt.csv"
    p.write_text("a.jpg,n01440764\nb.jpg,3\n")
    assert scoring.read_ground_truth(p) == {"a.jpg": 0, "b.jpg": 3}
    p.write_text("filename,label\na.jpg,n01443537\n")
    assert scoring.read_ground_truth(p) == {"a.jpg": 1}


def test_read_ground_truth_uncached_reads_the_same_and_keeps_nothing(tmp_path):
    """lpirc run checks the ground truth before the run without keeping it in memory."""
    import scoring._io as sio

    p = tmp_path / "gt.csv"
    p.write_text("\ufefffilename,label\r\na.jpg,n01440764\r\nb.jpg,7\r\n", encoding="utf-8")
    sio._read_ground_truth_cached.cache_clear()
    assert scoring.read_ground_truth(p, cache=False) == {"a.jpg": 0, "b.jpg": 7}
    assert sio._read_ground_truth_cached.cache_info().currsize == 0
    assert scoring.read_ground_truth(p) == {"a.jpg": 0, "b.jpg": 7}
    assert sio._read_ground_truth_cached.cache_info().currsize == 1
    p.write_bytes(b"a.jpg,0\n\xff\xfe,1\n")
    with pytest.raises(scoring.ScoringError, match="cannot decode as UTF-8"):
        scoring.read_ground_truth(p, cache=False)


@pytest.mark.parametrize("text, where", [
    ("a.jpg,0\nb.jpg,banana\n", ":2:"),
    ("a.jpg,0\na.jpg,1\n", ":2: duplicate"),
    ("a.jpg\n", ":1:"),
    ("filename,label\n", "no ground-truth rows"),
])
def test_read_ground_truth_errors_name_file_and_line(tmp_path, text, where):
    p = tmp_path / "gt.csv"
    p.write_text(text)
    with pytest.raises(ScoringError) as e:
        scoring.read_ground_truth(p)
    assert str(e.value).startswith(str(p)) and where in str(e.value) and "\n" not in str(e.value)


def test_missing_ground_truth(tmp_path, onsite_run):
    with pytest.raises(ScoringError, match="cannot read ground truth"):
        scoring.score_path(onsite_run, tmp_path / "nope.csv")


# --- lpirc-onsite -----------------------------------------------------------------------------


def test_onsite_hand_computed(onsite_run):
    s = scoring.score_path(onsite_run)  # ground truth from the manifest
    assert s["rules"] == "lpirc-onsite"
    assert s["images_total"] == 10
    assert s["images_answered"] == 6 and s["images_failed"] == 1 and s["images_unanswered"] == 3
    assert s["images_late"] == 1
    assert s["top1"] == pytest.approx(0.4)  # 4 correct in time / 10
    assert s["top5"] == pytest.approx(0.5)  # + img5 (class at rank 3)
    assert s["score"] == pytest.approx(0.4 / 0.5)
    assert s["energy_wh"] == 0.5 and s["energy_source"] == "estimated"
    assert s["source"]["energy_wh"] == "estimated" and s["source"]["top1"] == "measured"
    assert "W/core" in s["energy_method"]
    assert s["time_limit_s"] == 600
    assert s["model"] == "mnv2.tflite"
    assert s["warnings"] == []
    json.dumps(s, allow_nan=False)


def test_onsite_time_limit_option_and_manifest_budget(onsite_run, gt10, tmp_path):
    s = scoring.score_path(onsite_run, gt10, time_limit_s=3.5)
    assert s["top1"] == pytest.approx(0.3) and s["images_late"] == 3  # img3 (4 s), img5 (5 s), img4 (700 s)
    run2 = write_run(tmp_path / "run2", [answer("img4.jpg", 4, t_s=700.0)], manifest(gt10, time_limit_s=750))
    assert scoring.score_path(run2)["top1"] == pytest.approx(0.1)


def test_rule_description_names_the_parameters_used(onsite_run, gt10):
    """A run scored with other budgets is not described with the defaults."""
    cases = (({"time_limit_s": 3.5}, "lpirc-onsite", "wall budget (3.5 s)"),
             ({"ms_per_image": 3.0}, "ovic-2018", "within 3 ms x N"),
             ({"idle_watts": 0.5}, "lpcvc-2020", "idle 0.5 W"))
    for opts, rules, needle in cases:
        text = scoring.format_table([scoring.score_path(onsite_run, gt10, rules=rules, **opts)])
        assert needle in text, (needle, text)
    r = cli("rules")
    assert "wall budget (600 s)" in r.output and "30 ms x N" in r.output and "idle 1.961 W" in r.output


def test_bare_log_has_no_energy_unless_given(onsite_run, gt10):
    s = scoring.score_path(onsite_run / "results.jsonl", gt10)
    assert s["energy_wh"] is None and s["score"] is None and s["energy_source"] == "unknown"
    assert any("no energy" in w for w in s["warnings"])
    assert s["wall_time_s"] == 700.0 and "log" in s["source"]["wall_time_s"]
    s = scoring.score_path(onsite_run / "results.jsonl", gt10, energy_wh=0.25)
    assert s["score"] == pytest.approx(1.6) and s["energy_source"] == "given"


def test_no_ground_truth_anywhere(tmp_path):
    run = write_run(tmp_path / "r", [answer("a.jpg", 0)], manifest(None))
    with pytest.raises(ScoringError, match="no ground truth"):
        scoring.score_path(run)


# --- ovic-2018 --------------------------------------------------------------------------------


def test_ovic_2018_budget_in_t_s_order(tmp_path):
    gt = write_gt(tmp_path / "gt.csv", {f"i{k}.jpg": k for k in range(4)})
    # written in reverse t_s order: the two earliest (i0, i1) fit the 40 ms budget and are correct,
    # the later ones (i2 correct, i3 wrong) do not count.
    answers = [answer("i3.jpg", 99, t_s=4.0, inference_ms=15), answer("i2.jpg", 2, t_s=3.0, inference_ms=15),
               answer("i1.jpg", 1, t_s=2.0, inference_ms=15), answer("i0.jpg", 0, t_s=1.0, inference_ms=15)]
    run = write_run(tmp_path / "r", answers, manifest(gt))
    s = scoring.score_path(run, rules="ovic-2018", ms_per_image=10)
    assert s["budget_s"] == pytest.approx(0.04)
    assert s["runtime_s"] == pytest.approx(0.06)
    assert s["images_classified"] == 2
    assert s["top1"] == pytest.approx(0.5) and s["score"] == pytest.approx(0.5)
    assert s["accuracy_classified"] == pytest.approx(1.0)
    assert s["accuracy_per_s"] == pytest.approx(1.0 / 0.06)
    assert s["images_late"] == 2
    # default 30 ms/image: everything fits, 3 of 4 correct
    s = scoring.score_path(run, rules="ovic-2018")
    assert s["top1"] == pytest.approx(0.75) and s["ms_per_image"] == 30 and s["images_late"] == 0


def test_run_flags_late_exactly_where_ovic_2018_refuses(tmp_path, gt10):
    """The run's clock (lpirc.clock.Budget.late) and the scorer judge the inference budget with
    one rule in one unit. These 10 logged inference_ms sum past 0.03 ms x 10 at the last image
    when added in ms, as the scorer adds them, but not when added in seconds (0.3 / 1000), as the
    run once did: its log then said 0 late where the score said 1 (CI saw 7 against 8)."""
    from lpirc.clock import Budget

    ms = [0.03, 0.02, 0.043, 0.026, 0.045, 0.016, 0.035, 0.016, 0.034, 0.035]
    in_s = 0.0
    for x in ms:
        in_s += x / 1000.0
    assert not in_s > 0.03 * 10 / 1000.0  # the trap: summed in seconds, nothing is late
    budget = Budget("inference", 600.0, 0.03, 10)
    flags, summed = [], 0.0
    for x in ms:
        summed += x
        flags.append(budget.late(1.0, summed))
    answers = [answer(f"img{i}.jpg", i, t_s=1.0 + i / 100, inference_ms=x) for i, x in enumerate(ms)]
    for a, f in zip(answers, flags):
        a["late"] = f
    run = write_run(tmp_path / "r", answers, manifest(gt10, ms_per_image=0.03))
    s = scoring.score_path(run, rules="ovic-2018")
    assert flags == [False] * 9 + [True]
    assert s["images_late"] == sum(flags) == 1 and s["top1"] == pytest.approx(0.9)


# --- ovic-2019 --------------------------------------------------------------------------------


def test_ovic_2019_metric_and_buckets(tmp_path):
    gt = write_gt(tmp_path / "gt.csv", {f"i{k}.jpg": k for k in range(4)})
    run = write_run(tmp_path / "r", [answer(f"i{k}.jpg", k if k < 3 else 50, inference_ms=30) for k in range(4)],
                    manifest(gt))
    s = scoring.score_path(run, rules="ovic-2019", k=10, a0=20)
    assert s["latency_ms"] == pytest.approx(30)
    assert s["score"] == pytest.approx(75 - (10 * math.log(30) + 20))
    assert s["latency_bucket"].startswith("real-time")
    run2 = write_run(tmp_path / "r2", [answer(f"i{k}.jpg", k, inference_ms=100) for k in range(4)], manifest(gt))
    assert scoring.score_path(run2, rules="ovic-2019")["latency_bucket"].startswith("interactive")
    run3 = write_run(tmp_path / "r3", [answer(f"i{k}.jpg", k, inference_ms=50) for k in range(4)], manifest(gt))
    s3 = scoring.score_path(run3, rules="ovic-2019")
    assert s3["latency_bucket"] is None and any("bucket" in w for w in s3["warnings"])
    assert s3["frontier_k"] == scoring.rules.DEFAULT_K


# --- lpcvc-2020 -------------------------------------------------------------------------------


def test_lpcvc_2020_idle_subtracted(tmp_path):
    gt = write_gt(tmp_path / "gt.csv", {f"i{k}.jpg": k for k in range(4)})
    run = write_run(tmp_path / "r", [answer("i0.jpg", 0), answer("i1.jpg", 1)], manifest(gt, wh=1.0, wall=360.0))
    s = scoring.score_path(run, rules="lpcvc-2020", idle_watts=2.0)
    assert s["net_energy_wh"] == pytest.approx(0.8) and s["score"] == pytest.approx(0.5 / 0.8)
    s = scoring.score_path(run, rules="lpcvc-2020")
    assert s["idle_watts"] == pytest.approx(1.961, abs=1e-3)
    assert s["score"] == pytest.approx(0.5 / (1.0 - 0.000544746733 * 360))
    s = scoring.score_path(run, rules="lpcvc-2020", idle_watts=20.0)  # idle above total: no score
    assert s["score"] is None and any("not positive" in w for w in s["warnings"])


def _metered(gt, wh, unc_wh, idle_w, idle_unc_w, wall=0.5):
    """A run folder's manifest as ``lpirc run --meter --idle-seconds`` writes it: the meter's
    energy with its uncertainty, and the idle baseline with its own."""
    m = manifest(gt, wh=wh, source="measured", wall=wall)
    m["energy"].update({"method": "WT310 SIM, 0.1 s, 6 samples, trapezoid", "uncertainty_wh": unc_wh,
                        "idle": {"watts": idle_w, "uncertainty_w": idle_unc_w, "seconds": 1.0,
                                 "method": "measured: WT310 SIM idle for 1.0 s",
                                 "from": "measured before the run"}})
    return m


def test_energy_within_its_uncertainty_gives_no_score(tmp_path, lpirc):
    """50 W idle, 50 W running over 0.5 s: 7.8e-7 Wh above idle against +-2.8e-5 Wh (the
    meter's spec over the run, plus the idle baseline's over the same time) is no score, with
    the reason in score.json, the table `lpirc score` and `lpirc run` print, and the report."""
    gt = write_gt(tmp_path / "gt.csv", {f"i{k}.jpg": k for k in range(4)})
    answers = [answer(f"i{k}.jpg", k, t_s=0.1 * k) for k in range(4)]
    unc = 0.2 * 0.5 / 3600  # (0.1 % of reading + 0.1 % of the 150 W range) x 0.5 s
    run = write_run(tmp_path / "r", answers, _metered(gt, 50 * 0.5 / 3600 + 7.8e-7, unc, 50.0, 0.2))
    r = lpirc("score", run, "--rules", "lpcvc-2020", "--format", "json")
    assert r.returncode == 0, r.stderr
    s = json.loads(r.stdout)
    assert s["score"] is None and s["energy_uncertainty_wh"] == pytest.approx(unc)
    assert s["net_energy_wh"] == pytest.approx(7.8e-7, rel=1e-3)
    assert s["net_energy_uncertainty_wh"] == pytest.approx(2 * unc)  # the bounds added
    why = [w for w in s["warnings"] if "uncertainty" in w]
    assert len(why) == 1 and why[0].startswith("energy above idle is 7.8e-07 Wh, not larger than "
                                               "its uncertainty +-5.56e-05 Wh"), s["warnings"]
    assert why[0].endswith("no score (measure a longer run, or on a finer range)")
    assert f"lpirc: warning: {why[0]}" in r.stderr  # json keeps stdout for programs
    table = lpirc("score", run, "--rules", "lpcvc-2020").stdout
    assert f"warning: {why[0]}" in table and "net energy wh       7.800e-07 +-5.556e-05 Wh" in table
    assert "score               n/a" in table
    page = tmp_path / "report.html"
    assert lpirc("report", run, "--rules", "lpcvc-2020", "-o", page).returncode == 0
    assert "not larger than its uncertainty" in page.read_text()

    # 10 W above idle is well above the bounds: scored as before
    run2 = write_run(tmp_path / "r2", answers, _metered(gt, 60 * 0.5 / 3600, unc, 50.0, 0.2))
    s2 = scoring.score_path(run2, rules="lpcvc-2020")
    assert s2["score"] == pytest.approx(1.0 / (10 * 0.5 / 3600)), s2["warnings"]
    assert not any("uncertainty" in w for w in s2["warnings"])
    # the rule is the scorer's, for every rule set that divides by energy
    run3 = write_run(tmp_path / "r3", answers, _metered(gt, 1e-6, 2e-6, 50.0, 0.2))
    s3 = scoring.score_path(run3, rules="lpirc-onsite")
    assert s3["score"] is None and any(w.startswith("energy is 1e-06 Wh, not larger than its "
                                                    "uncertainty") for w in s3["warnings"])
    # an energy or idle power given by hand carries no uncertainty: the other figure's counts
    s4 = scoring.score_path(run, rules="lpcvc-2020", idle_watts=50.0)
    assert s4["net_energy_uncertainty_wh"] == pytest.approx(unc) and s4["score"] is None
    s5 = scoring.score_path(run, rules="lpcvc-2020", idle_watts=50.0,
                            energy_wh=50 * 0.5 / 3600 + 7.8e-7)
    assert s5["energy_uncertainty_wh"] is None and s5["net_energy_uncertainty_wh"] is None
    assert s5["score"] == pytest.approx(1.0 / 7.8e-7, rel=1e-3)


# --- messy logs -------------------------------------------------------------------------------


def test_duplicates_first_counts_and_unknown_images(tmp_path, gt10):
    answers = [answer("img0.jpg", 5), answer("img0.jpg", 0), answer("stray.jpg", 3), answer("img1.jpg", 1)]
    s = scoring.score_path(write_run(tmp_path / "r", answers, manifest(gt10)), gt10)
    assert s["top1"] == pytest.approx(0.1)  # only img1: img0's first answer was wrong
    assert s["answers_duplicate"] == 1 and s["answers_not_in_ground_truth"] == 1
    assert s["images_answered"] == 2
    text = " ".join(s["warnings"])
    assert "duplicate" in text and "first one counts" in text and "img0.jpg" in text and "stray.jpg" in text


def test_crashed_log_truncated_last_line(tmp_path, gt10):
    run = write_run(tmp_path / "r", [answer("img0.jpg", 0), answer("img1.jpg", 1)],
                    manifest(gt10, status="running"), tail='{"image": "img2.jpg", "top5": [2, 1')
    s = scoring.score_path(run)
    assert s["top1"] == pytest.approx(0.2)
    text = " ".join(s["warnings"])
    assert "results.jsonl:3: truncated last line" in text and "'running'" in text


def test_malformed_middle_line_names_file_and_line(tmp_path, gt10):
    run = write_run(tmp_path / "r", [answer("img0.jpg", 0)], manifest(gt10))
    (run / "results.jsonl").write_text(json.dumps(answer("img0.jpg", 0)) + "\nnot json\n" + json.dumps(answer("img1.jpg", 1)) + "\n")
    with pytest.raises(ScoringError, match=r"results\.jsonl:2: not a valid JSON line"):
        scoring.score_path(run)
    (run / "results.jsonl").write_text(json.dumps({"image": "img0.jpg", "top5": ["cat"]}) + "\n")
    with pytest.raises(ScoringError, match=r"results\.jsonl:1: .*top5"):
        scoring.score_path(run)
    (run / "results.jsonl").write_text(json.dumps({"image": "img0.jpg", "top5": [1000]}) + "\n")
    with pytest.raises(ScoringError, match=r"results\.jsonl:1: class index out of range"):
        scoring.score_path(run)


def test_referee_format(tmp_path, gt10):
    log = tmp_path / "referee.txt"
    # header, stem ids, a synset label, an int label, an image not in the ground truth, a duplicate
    log.write_text("image_id class_id confidence\nimg0 0 0.9\nimg1 n01443537 0.8\nimg2 7 0.7\nimgX 3 0.5\nimg0 5 0.1\n")
    s = scoring.score_path(log, gt10, energy_wh=1.0)
    assert s["log_format"] == "referee"
    assert s["top1"] == pytest.approx(0.2)  # img0, img1
    assert s["images_answered"] == 3 and s["answers_duplicate"] == 1 and s["answers_not_in_ground_truth"] == 1
    assert s["score"] == pytest.approx(0.2)
    log.write_text("img0 0 0.9\nimg1 zebra 0.8\nimg2 2 0.7\n")
    with pytest.raises(ScoringError, match=r"referee\.txt:2: bad referee row"):
        scoring.score_path(log, gt10)
    log.write_text("img0 0 0.9\nimg1 1 0.8\nimg2 2")  # truncated last row
    s = scoring.score_path(log, gt10, energy_wh=1.0)
    assert s["top1"] == pytest.approx(0.2) and any("truncated" in w for w in s["warnings"])


def test_unknown_rules_and_options(onsite_run):
    with pytest.raises(ScoringError, match="unknown rule set"):
        scoring.score_path(onsite_run, rules="lpirc-1999")
    with pytest.raises(ScoringError, match="unknown rule option"):
        scoring.score_path(onsite_run, ms_per_imag=3)
    s = scoring.score_path(onsite_run, ms_per_image=3)
    assert any("does not apply" in w for w in s["warnings"])


def test_not_a_run_folder(tmp_path):
    with pytest.raises(ScoringError, match="no results.jsonl"):
        scoring.score_path(tmp_path)
    with pytest.raises(ScoringError, match="no such file"):
        scoring.score_path(tmp_path / "missing")


# --- outputs ----------------------------------------------------------------------------------


def test_csv_leaderboard_equal_scores_share_rank(tmp_path, gt10):
    runs = []
    for name, n_correct in (("a", 4), ("b", 2), ("c", 4)):
        runs.append(write_run(tmp_path / name, [answer(f"img{i}.jpg", i) for i in range(n_correct)], manifest(gt10)))
    scores = [scoring.score_path(r, rules="lpirc-onsite") for r in runs]
    rows = list(csv.DictReader(io.StringIO(scoring.format_csv(scores))))
    assert [(Path(r["run"]).name, r["rank"]) for r in rows] == [("a", "1"), ("c", "1"), ("b", "3")]
    assert rows[0]["energy_source"] == "estimated" and "W/core" in rows[0]["energy_method"]
    assert float(rows[0]["score"]) == pytest.approx(0.8)


def test_table_labels_every_figure(onsite_run):
    text = scoring.format_table([scoring.score_path(onsite_run)])
    for needle in ("top-1 accuracy", "40.00 %", "top-5 accuracy", "energy", "Wh", "estimated",
                   "W/core", "wall time", "(measured by lpirc run)", "score"):
        assert needle in text, needle


def test_per_class_with_and_without_labels(tmp_path, onsite_run, gt10):
    s = scoring.score_path(onsite_run, per_class=True)
    assert len(s["per_class"]) == 10
    worst = s["per_class"][0]
    assert worst["top1"] == 0 and worst["name"] == worst["synset"]
    assert s["confused"][0] == {"true": 5, "true_name": SYN[5], "predicted": 99, "predicted_name": SYN[99], "count": 1}
    labels = tmp_path / "labels.txt"
    labels.write_text("background\n" + "".join(f"class number {k}\n" for k in range(1000)))
    s = scoring.score_path(onsite_run, per_class=True, labels=labels)
    assert s["confused"][0]["predicted_name"] == "class number 99"
    assert "class number 99" in scoring.format_table([s])
    labels.write_text("just one\n")
    with pytest.raises(ScoringError, match="1000 or 1001"):
        scoring.score_path(onsite_run, per_class=True, labels=labels)


# --- the CLI ----------------------------------------------------------------------------------


def test_cli_score_formats(onsite_run, gt10):
    r = cli("score", onsite_run, "--ground-truth", gt10)
    assert r.exit_code == 0, r.output
    assert "40.00 %" in r.output and "estimated" in r.output
    r = cli("score", onsite_run, "--format", "json")
    assert r.exit_code == 0, r.output
    data = json.loads(r.stdout)
    assert data["score"] == pytest.approx(0.8) and data["rules"] == "lpirc-onsite"
    r = cli("score", onsite_run, onsite_run / "results.jsonl", "--ground-truth", gt10, "--format", "csv",
            "--energy-wh", "1.0")
    assert r.exit_code == 0, r.output
    rows = list(csv.DictReader(io.StringIO(r.stdout)))
    assert [row["rank"] for row in rows] == ["1", "1"]  # same answers, same given energy: a tie
    r = cli("score", onsite_run, "--rules", "ovic-2018", "--ms-per-image", "0.001", "--format", "json")
    assert json.loads(r.stdout)["top1"] == 0


def test_cli_rules_lists_every_rule_set():
    r = cli("rules")
    assert r.exit_code == 0
    for name, rule in scoring.RULES.items():
        assert name in r.output and rule.year in r.output


@pytest.mark.parametrize("make_args", [
    lambda t, run, gt: ["score", t / "missing"],
    lambda t, run, gt: ["score", run, "--ground-truth", t / "missing.csv"],
    lambda t, run, gt: ["score", run, "--ground-truth", (t / "bad.csv").write_text("a.jpg,zebra\nb.jpg,zebra\n") and t / "bad.csv"],
    lambda t, run, gt: ["score", (run / "results.jsonl").write_text("{\n{}\n") and run],
])
def test_cli_bad_input_one_line_exit_5(tmp_path, onsite_run, gt10, make_args):
    r = cli(*make_args(tmp_path, onsite_run, gt10))
    assert r.exit_code == 5, r.output
    assert "Traceback" not in r.output
    lines = [ln for ln in r.output.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("lpirc: error: ")


@pytest.mark.slow
def test_cli_subprocess_python_m_lpirc(onsite_run):
    r = run_lpirc("score", onsite_run, "--format", "json")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["top1"] == pytest.approx(0.4)


# --- isolation and speed ----------------------------------------------------------------------


@pytest.mark.slow
def test_import_isolation_and_scoring_in_subprocess(onsite_run):
    code = (
        "import scoring, sys, json\n"
        f"s = scoring.score_path({str(onsite_run)!r})\n"
        "heavy = [m for m in ('ai_edge_litert', 'tflite_runtime', 'tensorflow', 'PIL', 'lpirc', 'click') if m in sys.modules]\n"
        "print(json.dumps({'heavy': heavy, 'top1': s['top1']}))\n"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, timeout=60)
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert out["heavy"] == [] and out["top1"] == pytest.approx(0.4)


@pytest.mark.slow
def test_scoring_20000_answers(tmp_path):
    n = 20_000
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 1000, n)
    gt = tmp_path / "gt.csv"
    gt.write_text("".join(f"img_{i:06d}.jpg,{SYN[k]}\n" for i, k in enumerate(labels)))
    pred = np.where(rng.random(n) < 0.7, labels, rng.integers(0, 1000, n))
    lines = [json.dumps(answer(f"img_{i:06d}.jpg", int(p), t_s=i * 0.01, inference_ms=4.0)) for i, p in enumerate(pred)]
    run = tmp_path / "run"
    run.mkdir()
    (run / "results.jsonl").write_text("\n".join(lines) + "\n")
    (run / "manifest.json").write_text(json.dumps(manifest(gt, wall=200.0)))
    # correctness at full size only: the time it takes is bench/run_bench.py's job (no timed asserts)
    for rules in scoring.RULES:
        s = scoring.score_path(run, gt, rules=rules)
        assert s["top1"] == pytest.approx(float(np.mean(pred == labels)))
        assert s["images_answered"] == n and s["answers_duplicate"] == 0


def test_cli_per_class_labels_and_multi_run_table(tmp_path, onsite_run, gt10):
    labels = tmp_path / "labels.txt"
    labels.write_text("".join(f"name {k}\n" for k in range(1000)))  # 1000 lines: no background
    r = cli("score", onsite_run, "--labels", labels)  # --labels implies --per-class
    assert r.exit_code == 0, r.output
    assert "most confused" in r.output and "name 5 -> name 99" in r.output
    other = write_run(tmp_path / "other", [answer("img0.jpg", 0)], manifest(gt10, wh=0.5, source="measured"))
    r = cli("score", onsite_run, other)
    assert r.exit_code == 0, r.output
    assert "Ranking (equal scores share a rank):" in r.output and "(measured" in r.output


def test_real_labels_file(shared_data, onsite_run):
    s = scoring.score_path(onsite_run, per_class=True, labels=shared_data / "models" / "imagenet_labels.txt")
    names = {row["class"]: row["name"] for row in s["per_class"]}
    assert names[0].startswith("tench") and names[1].startswith("goldfish")  # 1001 lines: background dropped


# --- audit fixes ------------------------------------------------------------------------------


def test_jsonl_with_utf8_bom_is_read_as_jsonl(tmp_path, gt10):
    log = tmp_path / "results.jsonl"
    log.write_bytes(b"\xef\xbb\xbf" + "".join(json.dumps(answer(f"img{i}.jpg", i)) + "\n" for i in range(3)).encode())
    s = scoring.score_path(log, gt10, energy_wh=1.0)
    assert s["log_format"] == "results.jsonl" and s["top1"] == pytest.approx(0.3)


def test_bad_first_row_is_an_error_not_a_header(tmp_path, gt10):
    ref = tmp_path / "referee.txt"
    ref.write_text("img0 zebra 0.9\nimg1 1 0.8\n")
    with pytest.raises(ScoringError, match=r"referee\.txt:1: bad referee row"):
        scoring.score_path(ref, gt10)
    ref.write_text("[1, 2]\n")  # not a referee file at all
    with pytest.raises(ScoringError, match=r"referee\.txt:1: bad referee row"):
        scoring.score_path(ref, gt10)
    gt = tmp_path / "gt.csv"
    for first in ("img0.jpg,zebra", "img0.jpg,n0000", "img0,n0000", "img0,12x"):
        gt.write_text(f"{first}\nimg1.jpg,1\n")
        with pytest.raises(ScoringError, match=r"gt\.csv:1: label"):
            scoring.read_ground_truth(gt)
    gt.write_text("image,class\nimg1.jpg,1\n")  # a header is still a header
    assert scoring.read_ground_truth(gt) == {"img1.jpg": 1}


def test_referee_format_has_no_top5(tmp_path, gt10):
    ref = tmp_path / "referee.txt"
    ref.write_text("img0 0 0.9\nimg1 5 0.8\n")
    s = scoring.score_path(ref, gt10, energy_wh=1.0)
    assert s["top1"] == pytest.approx(0.1)
    assert s["top5"] is None and s["source"]["top5"].startswith("unknown")
    assert any("no top-5" in w for w in s["warnings"])
    assert "top-5 accuracy      n/a" in scoring.format_table([s])


def test_ovic_2018_runtime_unknown_without_inference_times(tmp_path, gt10):
    ref = tmp_path / "referee.txt"
    ref.write_text("img0 0 0.9\nimg1 1 0.8\n")
    s = scoring.score_path(ref, gt10, rules="ovic-2018")
    assert s["runtime_s"] is None and s["accuracy_per_s"] is None  # not 0 s, not accuracy / budget
    assert s["images_classified"] == 2 and s["top1"] == pytest.approx(0.2)


@pytest.mark.parametrize("rules", ["ovic-2018", "ovic-2019", "lpcvc-2020"])
def test_answers_logged_late_by_the_run_are_wrong(tmp_path, gt10, rules):
    # 4 correct answers, the last two logged after the run's deadline ("late": true)
    answers = [answer(f"img{i}.jpg", i, t_s=float(i), inference_ms=30.0) for i in range(4)]
    for a in answers[2:]:
        a["late"] = True
    run = write_run(tmp_path / "r", answers, manifest(gt10, wh=1.0, wall=360.0))
    s = scoring.score_path(run, rules=rules, idle_watts=2.0, k=10, a0=20)
    assert s["top1"] == pytest.approx(0.2) and s["top5"] == pytest.approx(0.2)
    assert s["images_late"] == 2 and s["images_answered"] == 4
    # ovic-2018: 4 x 30 ms is well within 30 ms x 10, so only the run's flags refuse the two
    expected = {"ovic-2018": 0.2, "ovic-2019": 20 - (10 * math.log(30) + 20),
                "lpcvc-2020": 0.2 / (1.0 - 2.0 * 0.1)}[rules]
    assert s["score"] == pytest.approx(expected)


@pytest.mark.parametrize("opt", [{"k": math.nan}, {"a0": math.inf}, {"time_limit_s": math.inf},
                                 {"idle_watts": math.nan}])
def test_non_finite_options_are_refused(onsite_run, opt):
    with pytest.raises(ScoringError, match="expected a finite number"):
        scoring.score_path(onsite_run, rules="ovic-2019", **opt)


def test_per_class_finds_labels_beside_the_model(tmp_path, gt10):
    models = tmp_path / "models"
    models.mkdir()
    m = manifest(gt10)
    m["model"] = {"path": str(models / "net.tflite")}
    run = write_run(tmp_path / "r", [answer("img0.jpg", 7)], m)
    s = scoring.score_path(run, per_class=True)
    assert s["confused"][0]["predicted_name"] == SYN[7] and "synset IDs" in s["label_names"]
    (models / "imagenet_labels.txt").write_text("background\n" + "".join(f"thing {k}\n" for k in range(1000)))
    s = scoring.score_path(run, per_class=True)
    assert s["label_names"] == str(models / "imagenet_labels.txt")
    assert s["confused"][0] == {"true": 0, "true_name": "thing 0", "predicted": 7, "predicted_name": "thing 7",
                                "count": 1}
    (models / "net_labels.txt").write_text("too short\n")  # preferred name, unusable: said, then skipped
    s = scoring.score_path(run, per_class=True)
    assert s["label_names"].endswith("imagenet_labels.txt") and any("net_labels.txt" in w for w in s["warnings"])


def test_table_without_label_names_prints_each_synset_once(onsite_run):
    text = scoring.format_table([scoring.score_path(onsite_run, per_class=True)])
    assert f"0/1  {SYN[5]}\n" in text and f"{SYN[5]} ({SYN[5]})" not in text


def test_cli_one_bad_run_does_not_cost_the_others(tmp_path, onsite_run, gt10):
    other = write_run(tmp_path / "other", [answer("img0.jpg", 0)], manifest(gt10))
    empty = tmp_path / "empty"
    empty.mkdir()
    r = cli("score", onsite_run, empty, other, "--format", "csv")
    assert r.exit_code == 5
    rows = list(csv.DictReader(io.StringIO(r.stdout)))
    assert [Path(row["run"]).name for row in rows] == ["run", "other"] and rows[0]["rank"] == "1"
    errors = [ln for ln in r.stderr.splitlines() if ln.startswith("lpirc: error: ")]
    assert len(errors) == 1 and "no results.jsonl" in errors[0] and "Traceback" not in r.output
    r = cli("score", onsite_run, other, "--ground-truth", tmp_path / "missing.csv")  # same error once
    assert r.exit_code == 5 and r.stdout == ""
    assert len([ln for ln in r.stderr.splitlines() if ln.strip()]) == 1
    r = cli("score", onsite_run, empty, "--format", "json")
    assert r.exit_code == 5 and isinstance(json.loads(r.stdout), list)  # several paths: still a list


def test_odd_manifest_values_fall_back_to_defaults(tmp_path, gt10):
    m = manifest(gt10, time_limit_s=float("nan"), ms_per_image=-5)
    m["model"] = {"path": "/"}  # no file name: no labels to look for beside it
    run = write_run(tmp_path / "r", [answer("img0.jpg", 0)], m)
    assert scoring.score_path(run, per_class=True)["time_limit_s"] == 600
    assert scoring.score_path(run, rules="ovic-2018")["ms_per_image"] == 30


def test_runs_on_other_ground_truths_or_budgets_are_ranked_apart(tmp_path, gt10):
    """A run on a smaller ground truth, or under a shorter time limit, is never ranked against
    the others: `lpirc score A B C` gives one ranking per comparable group and says why."""
    small = write_gt(tmp_path / "small.csv", {f"img{i}.jpg": i for i in range(3)})
    runs = [
        write_run(tmp_path / "big_a", [answer(f"img{i}.jpg", i) for i in range(5)], manifest(gt10)),
        write_run(tmp_path / "big_b", [answer(f"img{i}.jpg", i) for i in range(3)], manifest(gt10)),
        write_run(tmp_path / "demo", [answer(f"img{i}.jpg", i) for i in range(3)], manifest(small)),
        write_run(tmp_path / "short", [answer(f"img{i}.jpg", i) for i in range(9)],
                  manifest(gt10, wall=4.0, time_limit_s=4.0)),
    ]
    scores = [scoring.score_path(r, rules="lpirc-onsite") for r in runs]
    rows = list(csv.DictReader(io.StringIO(scoring.format_csv(scores))))
    got = {Path(r["run"]).name: (r["group"], r["rank"]) for r in rows}
    assert got["big_a"] == ("1", "1") and got["big_b"] == ("1", "2")
    # the demo (3 images, all right) and the short-limit run would top a single ranking
    assert got["demo"][1] == "1" and got["short"][1] == "1"
    assert len({got["demo"][0], got["short"][0], "1"}) == 3
    text = scoring.format_table(scores)
    assert text.count("Ranking ") == 3 and "ranked apart" in text
    assert "rank 1 of 2" in text and "rank 1 of 4" not in text


def test_bare_log_keeps_the_runs_own_late_flags_under_onsite_rules(tmp_path, gt10):
    """A bare results.jsonl (no manifest, so no budget) scored lpirc-onsite: answers lpirc run
    logged late stay late, not counted under the 600 s default limit; an explicit
    --time-limit-s re-scores by t_s alone."""
    answers = [answer(f"img{i}.jpg", i, t_s=1.0 + i) for i in range(6)]
    for a in answers[4:]:
        a["late"] = True
    log = write_run(tmp_path / "bare", answers) / "results.jsonl"
    s = scoring.score_path(log, gt10, rules="lpirc-onsite")
    assert s["top1"] == pytest.approx(0.4) and s["images_late"] == 2
    s = scoring.score_path(log, gt10, rules="lpirc-onsite", time_limit_s=100.0)
    assert s["top1"] == pytest.approx(0.6) and s["images_late"] == 0
