"""Smoke test of bench/run_bench.py: a tiny holdout, tiny counts, one round. It checks that the
script runs end to end, prints the figures and ratios table and exits 0; it asserts nothing
about speed (timings belong to the benchmark, not to tests)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
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
                   "tuned/pure_inference", "default/hand", "goals"):
        assert needle in text, f"{needle!r} missing from:\n{text}"
    data = json.loads(out.read_text())
    assert data["figures"]["hand_ips"] > 0
    assert data["figures"]["tuned_ips"] > 0
    assert data["figures"]["pure_inference_ips"] > 0
    assert data["figures"]["peak_rss_mb"] > 0
    assert data["score"]["images_total"] == 24
    assert set(data["ratios"]) >= {"tuned/hand", "tuned/limit", "tuned/pure_inference"}
    # the memory check ran on a larger holdout of hard links
    assert data["big"]["holdout_images"] > 24


def test_bench_help():
    r = subprocess.run([sys.executable, str(REPO / "bench" / "run_bench.py"), "--help"],
                       capture_output=True, text=True, cwd=str(REPO), timeout=60)
    assert r.returncode == 0
    assert "--holdout" in r.stdout and "--quick" in r.stdout
