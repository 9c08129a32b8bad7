"""`lpirc report`: real runs of the bundled model drawn and opened in a real headless Chromium
(no console error, no request, every picture drawn, a screenshot and a print), and a run written
the way `lpirc run` writes it with the awkward cases (unanswered, late, failed, a dead worker)."""

from __future__ import annotations

import json
import math
import os
import re
import shutil
import time
from pathlib import Path

import numpy as np
import pytest

import scoring
from chromium import PROBE_JS, Chromium, find_chromium, png_size
from conftest import run_lpirc as lpirc

SYN = scoring.synsets()
TENCH = "n01440764"  # a class the demo model never answers


@pytest.fixture(scope="module")
def browser():
    binary = find_chromium()
    if binary is None:
        pytest.skip("Chromium not installed (apt-get install chromium): browser checks skipped")
    b = Chromium(binary)
    yield b
    b.close()


@pytest.fixture(scope="module")
def real_runs(tmp_path_factory, reference_model, small_holdout) -> list[Path]:
    """Two real `lpirc run`s on a copy of the 40-image demo holdout with one undecodable image
    and one ground-truth label the model never answers (so there is a failure and a mistake);
    the first with a power meter's log (so there are readings), the second with one worker."""
    base = tmp_path_factory.mktemp("report-runs")
    hold = shutil.copytree(small_holdout, base / "holdout")
    (hold / "img_bad.jpg").write_bytes(b"not a JPEG at all")
    rows = (hold / "ground_truth.csv").read_text().splitlines()
    first = rows[1].split(",")[0]
    rows[1] = f"{first},{TENCH}"
    (hold / "ground_truth.csv").write_text("\n".join(rows + [f"img_bad.jpg,{TENCH}"]) + "\n")
    now = time.time()
    meter = base / "meter.csv"  # 20 samples/s from 5 s before to 5 min after now
    meter.write_text("timestamp,watts\n" + "".join(
        f"{now - 5 + i / 20:.3f},{12 + 3 * math.sin(i / 7):.3f}\n" for i in range(20 * 305)))
    runs = []
    for name, extra in (("metered", ["--power-log", meter]), ("one-worker", ["--workers", 1])):
        out = base / name
        r = lpirc("run", "--model", reference_model, "--holdout", hold, "--out", out, "--quiet", *extra)
        assert r.returncode == 0, r.stderr
        assert f"report          {out / 'report.html'}" in r.stdout  # the summary says where
        runs.append(out)
    return runs


def assert_clean_page(visit, figures: dict[str, set[str]]) -> None:
    """No request but the page itself, no console error, the pictures named per section (a run's
    name, or "compare") drawn and sized, a full-page screenshot and a PDF print."""
    assert visit.requests == [], visit.requests
    assert visit.errors == [], visit.errors
    assert visit.probe["external"] == 0  # no script, stylesheet link, iframe or image element
    drawn = {(f["section"], f["id"]): f for f in visit.probe["figures"]}
    want = {(sec, fid) for sec, ids in figures.items() for fid in ids}
    assert want <= set(drawn), sorted(set(drawn))
    for key in want:
        f = drawn[key]
        assert f["svg"] and f["missing"] is None, f
        assert f["width"] > 300 and f["height"] > 100, f  # laid out at a readable size
        assert f["shapes"] >= 10, f  # axes, ticks and data, not an empty frame
        assert f["clipped"] == [], f  # no label runs past the picture's edge
        assert f["overlaps"] == [] and f["covered"] == [], f  # no words over words or data
    w, h = png_size(visit.screenshot)
    assert w == 1200 and h > 1500, (w, h)
    assert len(visit.screenshot) > 50_000
    assert visit.pdf.startswith(b"%PDF") and visit.pdf.count(b"/Type /Page") >= 2
    # printed: the folded manifest.json is shown in full, its toggle is not
    assert visit.print_probe == {"folded_shown": True, "toggle_shown": False, "too_wide": []}, visit.print_probe


ONE_RUN = {"race", "throughput", "latency", "classes", "confusion", "power"}


@pytest.mark.browser
@pytest.mark.slow
def test_run_writes_its_report_and_chromium_shows_it_clean(browser, real_runs):
    metered = real_runs[0]
    visit = browser.visit(metered / "report.html", PROBE_JS)
    assert_clean_page(visit, {"metered": ONE_RUN})
    text = visit.probe["text"]
    assert "measured" in text and "power log meter.csv" in text  # the energy says how
    assert "img_bad.jpg" in text and "decode:" in text  # the failed image, with its reason
    assert TENCH in text  # the class the model never gets is among the worst
    score = json.loads((metered / "score.json").read_text())
    assert f"{100 * score['top1']:.2f} %" in text
    manifest = json.loads((metered / "manifest.json").read_text())
    assert manifest["model"]["sha256"] in text and manifest["holdout"]["files_sha256"] in text


@pytest.mark.browser
@pytest.mark.slow
def test_several_runs_compared(browser, real_runs, tmp_path):
    out = tmp_path / "compare.html"
    r = lpirc("report", *real_runs, "-o", out)
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith(f"wrote {out}")
    visit = browser.visit(out, PROBE_JS)
    assert_clean_page(visit, {"compare": {"race", "throughput", "latency", "accuracy", "power"},
                              "metered": ONE_RUN, "one-worker": ONE_RUN - {"power"}})
    assert visit.probe["runs"] == ["metered", "one-worker"]
    ids = [f["id"] for f in visit.probe["figures"]]
    assert ids.count("race") == 3  # overlaid, then one per run
    assert "Not ranked" not in visit.probe["text"]  # same holdout, same rules: ranked


@pytest.mark.slow
def test_no_report_flag(real_runs, tmp_path, reference_model, small_holdout):
    out = tmp_path / "quiet"
    r = lpirc("run", "--model", reference_model, "--holdout", small_holdout, "--out", out, "--quiet", "--no-report")
    assert r.returncode == 0, r.stderr
    assert not (out / "report.html").exists() and "report  " not in r.stdout


# --- a run with everything that can go wrong, written as lpirc run writes it --------------


def awkward_run(folder: Path, correct_first: int = 18, inference_ms: float = 20.0) -> Path:
    """30 ground-truth images, 25 answered: 2 failed (one reason is HTML), the last 3 after the
    2 s budget (logged late), worker 1 silent after 1 s, 5 never answered."""
    folder.mkdir(parents=True)
    gt = folder / "gt.csv"
    gt.write_text("filename,label\n" + "".join(f"img{i:02d}.jpg,{SYN[i]}\n" for i in range(30)))
    lines = []
    for i in range(25):
        t = 0.08 * i if i < 22 else 2.2 + 0.1 * i
        worker = 0 if t > 1.0 else i % 2
        err = {3: "decode: cannot identify image file", 7: "<script>alert('x')</script> reason"}.get(i)
        top1 = i if i < correct_first else (i + 1)
        lines.append({"image": f"img{i:02d}.jpg", "index": i, "top5": [] if err else [top1, 1, 2, 3, 4],
                      "scores": [] if err else [0.9, 0.1, 0, 0, 0], "error": err, "t_s": round(t, 3),
                      "latency_ms": inference_ms + 5 + i % 4, "inference_ms": inference_ms + i % 3,
                      "worker": worker, "late": t > 2.0})
    (folder / "results.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines))
    (folder / "manifest.json").write_text(json.dumps({
        "lpirc_version": "0.1.0", "status": "budget_exhausted",
        "runtime": {"name": "ai_edge_litert", "version": "2.3.0"},
        "delegate": {"requested": "cpu", "ran": "xnnpack", "note": None},
        "model": {"path": f"/nowhere/{folder.name}.tflite", "size_bytes": 1, "sha256": "ab" * 32},
        "holdout": {"path": "/h", "image_count": 30, "order_seed": 0, "files_sha256": "cd" * 32,
                    "ground_truth": str(gt)},
        "settings": {"rules": "lpirc-onsite", "workers": 2}, "budget": {"clock": "wall", "time_limit_s": 2.0},
        "start_utc": "2026-11-30T08:00:00.000000Z", "end_utc": "2026-11-30T08:00:05.000000Z",
        "wall_time_s": 4.7, "inference_time_s": 0.5, "first_answer_s": 0.0,
        "energy": {"wh": 0.01, "source": "estimated", "method": "CPU time x 4.0 W/core + 10 W idle"},
        "machine": {"cpu": "test"}, "notes": ["worker 1 died (signal 9); its images were retried"],
        "images_answered": 23, "images_failed": 2, "images_late": 3}))
    return folder


@pytest.mark.browser
@pytest.mark.slow
def test_awkward_run_shows_what_went_wrong(browser, tmp_path):
    run = awkward_run(tmp_path / "awkward")
    r = lpirc("report", run)
    assert r.returncode == 0, r.stderr
    html = (run / "report.html").read_text()
    assert "5 never answered" in html  # in the race picture
    assert "deadline 2 s" in html
    assert "late answers (do not count)" in html
    assert "worker 0" in html and "worker 1" in html
    # a log's text is escaped, never markup
    assert "&lt;script&gt;alert(" in html and "<script>" not in html
    visit = browser.visit(run / "report.html", PROBE_JS)
    assert_clean_page(visit, {"awkward": ONE_RUN - {"power"}})
    missing = {f["id"]: f["missing"] for f in visit.probe["figures"]}
    assert "no power readings" in missing["power"]
    assert "Failed images (2)" in visit.probe["text"]


@pytest.mark.slow
def test_ovic_2019_frontier_drawn_where_it_applies(tmp_path):
    a = awkward_run(tmp_path / "fast", correct_first=20, inference_ms=10.0)
    b = awkward_run(tmp_path / "slow", correct_first=22, inference_ms=40.0)
    for rules, frontier in (("ovic-2019", True), ("lpirc-onsite", False)):
        out = tmp_path / f"{rules}.html"
        r = lpirc("report", a, b, "-o", out, "--rules", rules)
        assert r.returncode == 0, r.stderr
        html = out.read_text()
        assert ("OVIC 2019 frontier" in html) is frontier
        assert html.count('data-plot="accuracy"') == 1


@pytest.mark.slow
def test_report_errors_are_one_line(tmp_path):
    r = lpirc("report", tmp_path / "nope", "-o", tmp_path / "x.html")
    assert r.returncode == 5 and r.stderr.strip() == f"lpirc: error: {tmp_path / 'nope'}: no such run folder or result log"
    run = awkward_run(tmp_path / "r")
    (tmp_path / "labels.txt").write_text("just\nthree\nlines\n")
    r = lpirc("report", run, "--labels", tmp_path / "labels.txt")
    assert r.returncode == 5 and "expected 1000 or 1001 label lines" in r.stderr
    assert "Traceback" not in r.stderr and not (run / "report.html").exists()


@pytest.mark.slow
def test_a_run_without_ground_truth_is_still_drawn(tmp_path):
    run = awkward_run(tmp_path / "nogt")
    (run / "gt.csv").unlink()
    r = lpirc("report", run)
    assert r.returncode == 0, r.stderr
    html = (run / "report.html").read_text()
    assert "not scored" in html and 'data-plot="throughput"' in html and "<svg" in html


@pytest.mark.slow
def test_page_style_is_not_escaped(tmp_path):
    """The inline CSS is ours, verbatim: quotes in it must not become entities (the page would
    silently fall back to the browser's default font)."""
    run = awkward_run(tmp_path / "css")
    assert lpirc("report", run).returncode == 0
    html = (run / "report.html").read_text()
    assert '"DejaVu Sans"' in html and "&#34;" not in html.split("</style>")[0]


@pytest.mark.slow
def test_runs_raced_on_different_clocks_say_so(tmp_path):
    """A run scored on the wall clock and one on summed inference time (ovic-2018) share the
    race's x axis: the axis and the caption say which run is on which clock, and a single
    inference-clock run's caption names inference_ms, not t_s, as its times."""
    wall = awkward_run(tmp_path / "wallrun")
    inf = awkward_run(tmp_path / "infrun")
    m = json.loads((inf / "manifest.json").read_text())
    m["settings"]["rules"] = "ovic-2018"
    m["budget"] = {"clock": "inference", "ms_per_image": 10.0}
    (inf / "manifest.json").write_text(json.dumps(m))
    out = tmp_path / "both.html"
    r = lpirc("report", wall, inf, "-o", out)
    assert r.returncode == 0, r.stderr
    race = out.read_text().split('data-plot="race"')[1].split("</figure>")[0]
    assert "time (s): wall time since the run started for wallrun; summed inference time for infrun" in race
    assert "raced on different clocks" in race and "infrun: summed inference time" in race
    assert "in its colour" in race  # several deadlines: each in its run's colour, not all red
    more = [shutil.copytree(wall, tmp_path / f"another-wall-clock-run-{i}") for i in range(4)]
    assert lpirc("report", wall, *more, inf, "-o", out).returncode == 0
    race = out.read_text().split('data-plot="race"')[1].split("</figure>")[0]
    # five names would run off the picture: the most common clock is 'the others'
    assert "time (s): summed inference time for infrun; wall time since the run started for the others" in race
    r = lpirc("report", inf)
    assert r.returncode == 0, r.stderr
    race = (inf / "report.html").read_text().split('data-plot="race"')[1].split("</figure>")[0]
    assert "inference_ms of each answer" in race and "t_s of each answer" not in race
    assert "deadline 0.3 s" in race  # 10 ms x 30 images


def test_throughput_spreads_logged_batches_and_shows_a_dead_worker():
    """Answers reach the log 16 at a time: a steady worker is drawn at its steady rate in every
    bin (counting batches by their log time alone gives 26.7 or 53.3 answers/s by how many
    batches a 0.6 s bin catches: false stalls and bursts), a worker that dies falls to zero, and
    no answer is lost or invented."""
    from lpirc.report_figures import _bins, worker_rates

    steady = np.repeat(np.arange(1, 13) * 0.5, 16)  # worker 0: 16 answers every 0.5 s to 6 s
    dies = np.repeat(np.arange(1, 5) * 0.5, 16)  # worker 1: the same, until 2 s
    t = np.concatenate((steady, dies))
    w = np.concatenate((np.zeros(len(steady), int), np.ones(len(dies), int)))
    edges = _bins(6.0, len(t))
    assert np.allclose(np.diff(edges), 0.6)
    naive = np.histogram(steady, edges)[0] / 0.6
    assert naive.min() < 27 and naive.max() > 53  # what the old picture showed
    rates = worker_rates(t, w, edges)
    assert np.allclose(rates[0], 32.0)  # 16 answers / 0.5 s, in every bin
    assert np.allclose(rates[1][edges[1:] <= 2.0], 32.0)
    assert np.all(rates[1][edges[:-1] >= 2.0] == 0.0)  # dead after its last batch
    for k, n in ((0, len(steady)), (1, len(dies))):
        assert np.isclose((rates[k] * np.diff(edges)).sum(), n)
    # a replacement worker started at 4 s is not drawn busy before it started
    late = worker_rates(np.repeat([4.5, 5.0, 5.5], 16), np.full(48, 2), edges)[2]
    assert np.all(late[edges[1:] <= 4.0] == 0.0) and np.allclose(late[(edges[:-1] >= 4.0) & (edges[1:] <= 5.5)], 32.0)


@pytest.mark.slow
def test_point_labels_stay_inside_the_accuracy_figure(tmp_path):
    """The run furthest right on each axis of 'accuracy against time and energy' is named to
    the left of its point (a label to its right ran off the figure and was cut: 'mnv2-full (e')."""
    a = awkward_run(tmp_path / "fast", correct_first=20, inference_ms=10.0)
    b = awkward_run(tmp_path / "slow", correct_first=22, inference_ms=40.0)
    m = json.loads((b / "manifest.json").read_text())
    m["energy"]["wh"] = 0.05
    (b / "manifest.json").write_text(json.dumps(m))
    out = tmp_path / "two.html"
    assert lpirc("report", a, b, "-o", out, "--rules", "ovic-2019").returncode == 0
    fig = out.read_text().split('data-plot="accuracy"')[1].split("</figure>")[0]
    texts = dict((t, "text-anchor: end" in style) for style, t in
                 re.findall(r'<text style="([^"]*)"[^>]*>([^<]*)</text>', fig))
    assert texts["slow"] and texts["slow (estimated)"], texts
    assert not texts["fast"] and not texts["fast (estimated)"], texts
    # energies a decade and more apart (0.002 and 0.05 Wh): a log axis with plain ticks at 1, 2,
    # 5 x 10^n (it had one tick, written 10^-2)
    m = json.loads((a / "manifest.json").read_text())
    m["energy"]["wh"] = 0.002
    (a / "manifest.json").write_text(json.dumps(m))
    assert lpirc("report", a, b, "-o", out).returncode == 0
    fig = out.read_text().split('data-plot="accuracy"')[1].split("</figure>")[0]
    ticks = set(re.findall(r'<text style="[^"]*"[^>]*>([^<]*)</text>', fig))
    assert {"0.005", "0.01", "0.02"} <= ticks, ticks


@pytest.mark.slow
def test_comparison_says_why_runs_are_not_ranked(tmp_path):
    """Runs on one holdout under one rule set but with different budgets are not ranked
    together (a 2 s run against a 5 s one), and the note says what differs; equal budgets are
    ranked."""
    a = awkward_run(tmp_path / "two-s")
    b = awkward_run(tmp_path / "five-s")
    m = json.loads((b / "manifest.json").read_text())
    m["budget"]["time_limit_s"] = 5.0
    (b / "manifest.json").write_text(json.dumps(m))
    out = tmp_path / "c.html"
    assert lpirc("report", a, b, "-o", out).returncode == 0
    html = out.read_text()
    assert "Not ranked: different budgets: time_limit_s 2 (two-s); time_limit_s 5 (five-s)." in html
    c = awkward_run(tmp_path / "also-two-s", correct_first=10)
    assert lpirc("report", a, c, "-o", out).returncode == 0
    table = out.read_text().split('<table class="compare">')[1].split("</table>")[0]
    assert "Not ranked" not in out.read_text()
    assert re.findall(r'<tr><td class="num">(\d)</td><td>([\w-]+)</td>', table) == [("1", "two-s"), ("2", "also-two-s")]
    m = json.loads((c / "manifest.json").read_text())
    m["holdout"]["files_sha256"] = "ef" * 32
    (c / "manifest.json").write_text(json.dumps(m))
    assert lpirc("report", a, c, "-o", out).returncode == 0
    assert ("Not ranked: different holdouts (sha256 of the image list): cdcdcdcdcdcd (two-s); "
            "efefefefefef (also-two-s).") in out.read_text()


@pytest.mark.slow
def test_worst_classes_caption_counts_the_ties_it_cannot_show(tmp_path):
    """30 classes of one image, 4 right (0, 1, 2, 4: image 3 failed): 26 classes at 0 %, of
    which the 15 bars show 15; the caption says 11 more are as bad. The same for the mistakes:
    the 10 drawn are said to be 10 of 19."""
    run = awkward_run(tmp_path / "ties", correct_first=5)
    assert lpirc("report", run).returncode == 0
    fig = (run / "report.html").read_text().split('data-plot="classes"')[1].split("</figure>")[0]
    assert "26 classes have 0 % top-1; 11 of them are not shown (ties go by most images, then class index)." in fig
    conf = (run / "report.html").read_text().split('data-plot="confusion"')[1].split("</figure>")[0]
    # 23 answers that ran (25 less 2 failed), 4 right: the 10 mistakes drawn are 10 of 19
    assert "They are 10 of the run&#39;s 19 wrong answers (late ones included)." in conf


@pytest.mark.slow
def test_race_caption_matches_the_deadline_drawn(tmp_path):
    """The caption speaks of a red deadline line only when one is drawn: a run that used a
    sliver of its budget has its deadline off the chart, and the caption says so."""
    run = awkward_run(tmp_path / "sliver")
    m = json.loads((run / "manifest.json").read_text())
    m["budget"]["time_limit_s"] = 600.0
    (run / "manifest.json").write_text(json.dumps(m))
    assert lpirc("report", run).returncode == 0
    race = (run / "report.html").read_text().split('data-plot="race"')[1].split("</figure>")[0]
    assert "deadline at 600 s, off the chart" in race
    assert "The red line is the deadline" not in race and "The deadline is off the chart" in race
    drawn = awkward_run(tmp_path / "drawn")
    assert lpirc("report", drawn).returncode == 0
    assert "The red line is the deadline" in (drawn / "report.html").read_text()


@pytest.mark.browser
@pytest.mark.slow
def test_long_class_names_stay_inside_their_pictures(browser, tmp_path):
    """Class names as long as ImageNet's longest (cut at 32 characters, plus the synset ID) are
    drawn whole inside the worst-classes and confusion pictures: 0.052 in a character clipped
    'spotted salamander, Ambystoma m... (n01632458)' at the figure's left edge."""
    run = awkward_run(tmp_path / "long-names", correct_first=5)
    labels = tmp_path / "labels.txt"
    labels.write_text("".join(f"Wwwww Mmmmm spotted salamander {i:04d}, Ambystoma maculatum\n" for i in range(1000)))
    assert lpirc("report", run, "--labels", labels).returncode == 0
    visit = browser.visit(run / "report.html", PROBE_JS)
    figs = {f["id"]: f for f in visit.probe["figures"]}
    assert figs["classes"]["svg"] and figs["confusion"]["svg"]
    assert figs["classes"]["clipped"] == [] and figs["confusion"]["clipped"] == [], figs


# --- names as plain text, crowded pictures, unfinished runs (issue 19 item 15) --------------


def out_of_time_run(folder: Path, energy_wh: float = 0.01, total: int = 200) -> Path:
    """A slow run that ran out of its 2 s budget: 33 of 200 images answered in time at 0.06 s
    each, 3 more logged late (2.05-2.15 s), 164 never answered; every third answer wrong."""
    awkward_run(folder)
    gt = folder / "gt.csv"
    gt.write_text("filename,label\n" + "".join(f"img{i:03d}.jpg,{SYN[i]}\n" for i in range(total)))
    lines = []
    for i in range(36):
        t = 0.06 * (i + 1) if i < 33 else 2.0 + 0.05 * (i - 32)
        lines.append({"image": f"img{i:03d}.jpg", "index": i, "top5": [i if i % 3 else 999, 1, 2, 3, 4],
                      "scores": [0.9, 0.1, 0, 0, 0], "error": None, "t_s": round(t, 3), "latency_ms": 50.0,
                      "inference_ms": 45.0, "worker": i % 2, "late": t > 2.0})
    (folder / "results.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines))
    m = json.loads((folder / "manifest.json").read_text())
    m.update({"wall_time_s": 2.15, "images_answered": 36, "images_failed": 0, "images_late": 3,
              "energy": {"wh": energy_wh, "source": "estimated", "method": "CPU time x 4.0 W/core + 10 W idle"}})
    m["holdout"]["image_count"] = total
    (folder / "manifest.json").write_text(json.dumps(m))
    return folder


def figures_of(visit) -> dict[tuple[str, str], dict]:
    return {(f["section"], f["id"]): f for f in visit.probe["figures"]}


@pytest.mark.slow
@pytest.mark.browser
def test_names_are_plain_text_in_every_picture(browser, tmp_path):
    """Run folders and class labels with dollar signs or a leading underscore: mathtext crashed
    the report on "$\\alpha_{$", drew "cost$5$each" as cost, an italic 5 and each, and
    matplotlib left "_x" out of every legend. Each is drawn exactly as written."""
    names = ["$\\alpha_{$", "cost$5$each", "_x"]
    runs = [awkward_run(tmp_path / n) for n in names]
    labels = tmp_path / "labels.txt"
    labels.write_text("".join(f"{names[i - 18] if 18 <= i < 21 else f'class {i}'}\n" for i in range(1000)))
    out = tmp_path / "names.html"
    r = lpirc("report", *runs, "-o", out, "--labels", labels)
    assert r.returncode == 0 and "Traceback" not in r.stderr, r.stderr
    figs = figures_of(browser.visit(out, PROBE_JS))
    for fid in ("race", "throughput", "latency"):
        drawn = " | ".join(figs[("compare", fid)]["texts"])
        for n in names:
            assert n in drawn, (fid, n, drawn)  # in the legend, whole
    for n in names:
        texts = figs[(n, "classes")]["texts"] + figs[(n, "confusion")]["texts"]
        assert any("cost$5$each" in t for t in texts) and any("$\\alpha_{$" in t for t in texts), texts


@pytest.mark.slow
@pytest.mark.browser
def test_a_run_out_of_time_keeps_its_late_answers_and_labels_apart(browser, tmp_path):
    """A slow run that ran out of time: its late answers sit low on the right, where the legend
    used to be, and the deadline's label was printed over "164 never answered"."""
    run = out_of_time_run(tmp_path / "slow")
    assert lpirc("report", run).returncode == 0
    visit = browser.visit(run / "report.html", PROBE_JS)
    race = figures_of(visit)[("slow", "race")]
    assert " 164 never answered " in race["texts"] and " deadline 2 s " in race["texts"]
    assert race["covered"] == [] and race["overlaps"] == [], race
    assert race["clipped"] == []
    assert "out of time" in visit.probe["text"]


@pytest.mark.slow
@pytest.mark.browser
def test_comparison_labels_do_not_overlap(browser, tmp_path):
    """Three runs close in energy and equal in accuracy and invoke time: their names, and the
    energy axis' tick labels, are drawn apart (they were written over each other)."""
    runs = [out_of_time_run(tmp_path / n, e) for n, e in (("slow", 0.0123), ("slower", 0.0456),
                                                         ("slowest", 0.00987))]
    wide = [out_of_time_run(tmp_path / n, e) for n, e in (("tiny", 0.0001), ("huge", 0.2))]
    for i, group in enumerate((runs, runs + wide)):
        out = tmp_path / f"cmp{i}.html"
        assert lpirc("report", *group, "-o", out).returncode == 0
        visit = browser.visit(out, PROBE_JS)
        figs = figures_of(visit)
        for fid in ("accuracy", "race", "throughput"):
            f = figs[("compare", fid)]
            assert f["overlaps"] == [] and f["clipped"] == [] and f["covered"] == [], (fid, f)


@pytest.mark.slow
def test_interrupted_and_unscored_runs_say_what_is_known(tmp_path):
    """An interrupted run's page says so at the top of its section and in the comparison; a run
    without ground truth shows the counts its log holds, not "? answered"."""
    run = awkward_run(tmp_path / "stopped")
    m = json.loads((run / "manifest.json").read_text())
    m["status"] = "interrupted"
    (run / "manifest.json").write_text(json.dumps(m))
    nogt = awkward_run(tmp_path / "nogt")
    (nogt / "gt.csv").unlink()
    out = tmp_path / "both.html"
    assert lpirc("report", run, nogt, "-o", out).returncode == 0
    html = out.read_text()
    section = html.split('data-run="stopped"')[-1]
    assert '<div class="note">interrupted: Ctrl-C or SIGTERM stopped this run' in section
    assert "stopped (interrupted)" in html  # the comparison's row
    mine = html.split('data-run="nogt"')[-1]
    assert "? answered" not in html and "23 answered of 30" in mine
    assert "2 failed, 5 unanswered, 3 late; counted in the result log (not scored)" in mine
