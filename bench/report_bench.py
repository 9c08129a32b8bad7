#!/usr/bin/env python3
"""How long ``lpirc report`` takes on a 20,000-image run (goal: under 2 s).

Writes a synthetic run folder the way ``lpirc run`` writes it (``results.jsonl`` lines with the
keys of ``scoring.records.RECORD_KEYS``, a ``manifest.json``, a ground truth of 20,000 images over
the 1000 ILSVRC classes, a 10 Hz power log): 19,600 answers from 2 workers over 95 s (about 76 %
right, 100 failed with reasons, 400 never answered), then times

- ``lpirc report RUN`` as a user runs it (a new process: Python start-up and imports included),
- ``lpirc.report.write_report`` in a process that has already imported matplotlib,

each ``--repeats`` times, and prints the medians and the page size.

    python bench/report_bench.py                  # 20,000 images, 3 repeats
    python bench/report_bench.py --images 200000 --repeats 1
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from scoring import synsets  # noqa: E402
from scoring.records import RECORD_KEYS  # noqa: E402


def make_run(folder: Path, n: int, seed: int = 0) -> Path:
    """A run folder of ``n`` ground-truth images as lpirc run leaves it."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True)
    syn = synsets()
    labels = np.arange(n) % 1000
    (folder / "gt.csv").write_text("filename,label\n" + "".join(
        f"img_{i:06d}.jpg,{syn[k]}\n" for i, k in enumerate(labels)))
    answered = n - n // 50  # 2 % never answered
    t = np.sort(rng.uniform(0.2, 95.0, answered))
    inf = rng.normal(7.0, 1.0, answered).clip(3)
    lat = inf + rng.normal(2.0, 0.5, answered).clip(0.2)
    right = rng.random(answered) < 0.78
    failed = set(rng.choice(answered, n // 200, replace=False).tolist())
    reasons = ("decode: image file is truncated", "decode: cannot identify image file", "too many pixels")
    lines = []
    for j in range(answered):
        top1 = int(labels[j]) if right[j] else int((labels[j] + 1 + rng.integers(0, 5)) % 1000)
        err = reasons[j % 3] if j in failed else None
        rec = dict(zip(RECORD_KEYS, (f"img_{j:06d}.jpg", j, [] if err else [top1, 1, 2, 3, 4],
                                     [] if err else [0.8, 0.1, 0.05, 0.03, 0.02], err,
                                     round(float(t[j]), 4), round(float(lat[j]), 3), round(float(inf[j]), 3),
                                     j % 2, bool(t[j] > 90.0))))
        lines.append(json.dumps(rec, separators=(",", ":")))
    (folder / "results.jsonl").write_text("\n".join(lines) + "\n")
    start = 1_764_489_600.0  # 2025-11-30T08:00:00Z
    ts = np.arange(start - 2, start + 100, 0.1)
    (folder / "power.csv").write_text("timestamp,watts\n" + "".join(
        f"{x:.1f},{14 + 4 * np.sin(x / 5):.2f}\n" for x in ts))
    manifest = {
        "lpirc_version": "0.1.0", "status": "budget_exhausted",
        "runtime": {"name": "ai_edge_litert", "version": "2.3.0"},
        "delegate": {"requested": "cpu", "ran": "xnnpack", "note": None},
        "model": {"path": "/bench/mnv2.tflite", "size_bytes": 3_577_760, "sha256": "0" * 64},
        "holdout": {"path": "/bench/holdout", "image_count": n, "order_seed": 0,
                    "files_sha256": "1" * 64, "ground_truth": str(folder / "gt.csv")},
        "settings": {"rules": "lpirc-onsite", "workers": 2, "threads": 1, "batch": 1},
        "budget": {"clock": "wall", "time_limit_s": 90.0},
        "start_utc": "2025-11-30T08:00:00.000000Z", "end_utc": "2025-11-30T08:01:35.000000Z",
        "wall_time_s": 95.0, "inference_time_s": float(inf.sum() / 1000),
        "energy": {"wh": 0.37, "source": "measured", "method": "power log power.csv, 950 samples, trapezoid"},
        "machine": {"cpu": "bench"}, "notes": [],
        "images_answered": answered - len(failed), "images_failed": len(failed), "images_late": int((t > 90).sum()),
    }
    (folder / "manifest.json").write_text(json.dumps(manifest))
    return folder


def _children_cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--images", type=int, default=20_000)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        run = make_run(Path(tmp) / "run", args.images)
        cli, cli_cpu = [], []
        for _ in range(args.repeats):
            c0 = _children_cpu()
            t0 = time.perf_counter()
            subprocess.run([sys.executable, "-m", "lpirc", "report", str(run)], check=True, cwd=REPO,
                           capture_output=True)
            cli.append(time.perf_counter() - t0)
            cli_cpu.append(_children_cpu() - c0)
        from lpirc.report import write_report

        write_report([run], run / "warm.html")  # imports done
        warm = []
        for _ in range(args.repeats):
            t0 = time.perf_counter()
            write_report([run], run / "warm.html")
            warm.append(time.perf_counter() - t0)
        size = (run / "report.html").stat().st_size
    print(f"machine         {platform.processor() or platform.machine()}, Python {platform.python_version()}")
    print(f"run             {args.images} ground-truth images, {args.images - args.images // 50} answers")
    print(f"lpirc report    {statistics.median(cli):.2f} s (median of {len(cli)}: new process, imports included)  goal < 2 s: "
          f"{'met' if statistics.median(cli) < 2 else 'MISSED'}")
    print(f"                {statistics.median(cli_cpu):.2f} s of CPU (user + system; what an idle machine's wall time approaches)")
    print(f"load average    {os.getloadavg()[0]:.1f} over the last minute ({os.cpu_count()} cores)")
    print(f"write_report    {statistics.median(warm):.2f} s (median of {len(warm)}, in a warm process)")
    print(f"page            {size / 1024:.0f} KiB")


if __name__ == "__main__":
    main()
