"""Smoke test of bench/run_bench.py: a tiny holdout, tiny counts, one round. It checks that the
script runs end to end, prints the figures and ratios table and exits 0; it asserts nothing
about speed (timings belong to the benchmark, not to tests)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from conftest import REPO

SHARED = REPO.parent / "shared" / "data"
MODEL = SHARED / "models" / "mobilenet_v2_1.0_224_quant.tflite"
SRC = SHARED / "imagenet-dev"


def test_bench_quick_prints_table_and_ratios(tmp_path):
    if not MODEL.is_file() or not SRC.is_dir():
        pytest.skip(f"real data not available ({SHARED} absent)")
    cfg = tmp_path / "best.json"
    cfg.write_text(json.dumps({"settings": {"workers": 1, "threads": 2}}))
    out = tmp_path / "bench.json"
    r = subprocess.run(
        [sys.executable, str(REPO / "bench" / "run_bench.py"), "--quick", "--count", "24",
         "--time-limit-s", "2", "--cache-dir", str(tmp_path / "cache"), "--tuned-config",
         str(cfg), "--out", str(out)],
        capture_output=True, text=True, cwd=str(REPO), timeout=240)
    assert r.returncode == 0, r.stderr[-2000:]
    text = r.stdout
    for needle in ("hand-written loop", "lpirc run, default settings",
                   "lpirc run, lpirc tune's best settings", "pure inference",
                   "end-to-end limit", "peak RSS, whole process tree", "first answer",
                   "lpirc score", "ratios", "tuned/hand", "tuned/limit",
                   "tuned/pure_inference", "default/hand", "goals",
                   "--quick: a smoke test", "derived: ", "resize path: lpirc run used ",
                   "where the CPU of an answer goes", "lpirc worker path, chunks of 16",
                   "CPU ms"):
        assert needle in text, f"{needle!r} missing from:\n{text}"
    data = json.loads(out.read_text())
    assert data["figures"]["hand_ips"] > 0
    assert data["figures"]["tuned_ips"] > 0
    assert data["figures"]["pure_inference_ips"] > 0
    assert data["figures"]["peak_rss_mb"] > 0
    assert data["score"]["images_total"] == 24
    # which resize implementation ran is reported, from the run's own manifest
    from lpirc.preprocess import resize_backend
    assert data["figures"]["resize_backend_run"] == resize_backend()
    assert data["figures"]["resize_backend_preprocess"] == resize_backend()
    # the parts' CPU time and the in-process breakdown were measured, and are CPU times
    f = data["figures"]
    for k in ("preprocess_cpu_ms", "inference_cpu_ms", "path_apart_cpu_ms",
              "path_interleaved_cpu_ms", "path_worker_cpu_ms", "path_worker_small_cpu_ms"):
        assert f[k] > 0, k
    assert f["path_chunk"] == 16
    assert set(data["ratios"]) >= {"tuned/hand", "tuned/limit", "tuned/pure_inference"}
    # the memory check ran on a larger holdout of hard links
    assert data["big"]["holdout_images"] > 24


def test_bench_help():
    r = subprocess.run([sys.executable, str(REPO / "bench" / "run_bench.py"), "--help"],
                       capture_output=True, text=True, cwd=str(REPO), timeout=60)
    assert r.returncode == 0
    assert "--holdout" in r.stdout and "--quick" in r.stdout


def bench(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(REPO / "bench" / "run_bench.py"), *args],
                          capture_output=True, text=True, cwd=str(REPO), timeout=timeout)


def load_bench():
    """bench/run_bench.py as a module (it is a script, not part of the package)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("run_bench", REPO / "bench" / "run_bench.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.mark.slow
@pytest.mark.parametrize("case", ["missing", "no_images", "no_ground_truth", "config",
                                  "repeats", "seconds"])
def test_bench_bad_options_are_one_line(tmp_path, reference_model, case):
    (tmp_path / "empty").mkdir()
    (tmp_path / "nogt").mkdir()
    (tmp_path / "nogt" / "a.jpg").write_bytes(b"\xff\xd8 not really")
    args = {"missing": ["--holdout", str(tmp_path / "nope")],
            "no_images": ["--holdout", str(tmp_path / "empty")],
            "no_ground_truth": ["--holdout", str(tmp_path / "nogt")],
            "config": ["--tuned-config", str(tmp_path / "nope.json")],
            "repeats": ["--repeats", "0"],
            "seconds": ["--time-limit-s", "-3"]}[case]
    r = bench("--quick", "--model", str(reference_model), "--cache-dir", str(tmp_path / "c"),
              *args, timeout=60)
    assert r.returncode == 2, (r.returncode, r.stderr)
    assert "Traceback" not in r.stderr
    errors = [ln for ln in r.stderr.splitlines() if "error" in ln or ln.startswith("run_bench:")]
    assert len(errors) == 1, r.stderr
    named = {"missing": "nope", "no_images": "no images", "no_ground_truth": "ground_truth.csv",
             "config": "nope.json", "repeats": "--repeats", "seconds": "--time-limit-s"}[case]
    assert named in errors[0]
    assert not (tmp_path / "c").exists() or not any((tmp_path / "c").iterdir())


@pytest.mark.slow
def test_bench_model_that_cannot_run_is_one_line(tmp_path, small_holdout):
    bad = tmp_path / "broken.tflite"
    bad.write_bytes(b"\x00garbage" * 64)
    r = bench("--model", str(bad), "--holdout", str(small_holdout), "--no-tune", "--quick",
              "--cache-dir", str(tmp_path / "c"), timeout=60)
    assert r.returncode == 1, (r.returncode, r.stderr[-2000:])
    assert "Traceback" not in r.stderr
    errors = [ln for ln in r.stderr.splitlines() if ln.startswith("run_bench: error:")]
    assert len(errors) == 1 and "broken.tflite" in errors[0], r.stderr


@pytest.mark.slow
def test_bench_contenders_take_the_models_input(tmp_path, reference_model, small_holdout):
    # the bundled submission takes int8 64x64 inputs and has 1000 classes (no background):
    # the hand loop, the preprocess cost and the inference cost must feed it what it takes
    rb = load_bench()
    res = tmp_path / "hand.jsonl"
    hand = rb._hand_loop({"model": str(reference_model), "holdout": str(small_holdout),
                          "threads": 1, "time_limit_s": 30, "images": 12, "results": str(res)})
    assert hand["images"] == 12
    answers = [json.loads(ln) for ln in res.read_text().splitlines()]
    assert len(answers) == 12 and all(0 <= a["top5"][0] < 1000 for a in answers)
    # the demo model gets most of its own demo images right: the input is fed as it expects
    import scoring

    gt = scoring.read_ground_truth(small_holdout / "ground_truth.csv")
    right = sum(a["top5"][0] == gt[a["image"]] for a in answers if a["image"] in gt)
    assert right >= 8, answers
    for mode in ("lpirc", "pillow"):
        pre = rb._preprocess_cost({"model": str(reference_model), "holdout": str(small_holdout),
                                   "mode": mode, "time_limit_s": 0.05, "min_images": 5})
        assert pre["images"] >= 5 and pre["ms_per_image"] > 0
        assert pre["input"] == [64, 64, "int8"]  # not a 224 x 224 uint8 cost
    inf = rb._inference({"model": str(reference_model), "threads": 1, "time_limit_s": 0.05})
    assert inf["images"] >= 1 and inf["ms_per_image"] > 0
