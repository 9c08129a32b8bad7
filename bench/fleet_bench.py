#!/usr/bin/env python3
"""Benchmark ``lpirc fleet``: N small submissions on K simulated devices of a local Ray
instance, against the same N run one after another with ``lpirc run``.

Every figure is measured here, as wall time on this machine:

* sequential: each ``lpirc run --model SUB --holdout H --quiet`` as its own process, one after
  another (default workers: one per core), summed;
* fleet: one ``lpirc fleet run SUBS --holdout H --devices K`` process, end to end (Python and
  Ray start-up, the jobs, scoring on the head, Ray shut-down), and the parts it reports: Ray's
  start-up (``ray       connected in ... s``), the device start-up (actors started and holdout
  checked, from ``fleet.json``'s attempt times), per job the ``lpirc run`` process time on the
  device and the fleet's overhead around it (head's dispatch to result received, minus that
  process time: model sent, attempt folder written, result log and manifest sent back) and the
  head's scoring time.

The submissions are copies of the bundled reference submission (with its sidecar) under
different names; the holdout is the demo holdout, generated with ``--images`` images.

Usage (from the repository root)::

    python bench/fleet_bench.py                          # 6 submissions, 2 devices, 300 images
    python bench/fleet_bench.py --jobs 12 --devices 4 --images 1000 --out fleet-bench.json

Exit codes: 0 when the report is printed, 1 when a run or the fleet fails (its stderr is shown),
2 for a bad option.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def lpirc(*args: str) -> tuple[float, subprocess.CompletedProcess]:
    t0 = time.perf_counter()
    r = subprocess.run([sys.executable, "-m", "lpirc", *args], capture_output=True, text=True,
                       cwd=REPO)
    return time.perf_counter() - t0, r


def prepare(work: Path, jobs: int, images: int) -> tuple[Path, Path]:
    from lpirc.demo import make_demo_holdout
    from lpirc.settings import bundled_model

    holdout = make_demo_holdout(work / "holdout", count=images, seed=11)
    subs = work / "subs"
    subs.mkdir()
    model = bundled_model()
    for i in range(jobs):
        shutil.copy(model, subs / f"sub{i:02d}.tflite")
        shutil.copy(model.with_suffix(".json"), subs / f"sub{i:02d}.json")
    return holdout, subs


def sequential(work: Path, holdout: Path, subs: Path) -> list[float]:
    times = []
    for model in sorted(subs.glob("*.tflite")):
        dt, r = lpirc("run", "--model", str(model), "--holdout", str(holdout), "--out",
                      str(work / "seq" / model.stem), "--quiet")
        if r.returncode != 0:
            sys.exit(f"fleet_bench: lpirc run {model.name} failed ({r.returncode}):\n{r.stderr}")
        times.append(dt)
    return times


def fleet(work: Path, holdout: Path, subs: Path, devices: int) -> dict:
    out = work / "fleet"
    dt, r = lpirc("fleet", "run", str(subs), "--holdout", str(holdout), "--out", str(out),
                  "--devices", str(devices))
    if r.returncode != 0:
        sys.exit(f"fleet_bench: lpirc fleet run failed ({r.returncode}):\n{r.stderr}")
    m = re.search(r"connected in ([0-9.]+) s", r.stderr)
    state = json.loads((out / "fleet.json").read_text())
    attempts = [j["attempts"][-1] for j in state["jobs"]]
    return {"total_s": dt, "ray_start_s": float(m.group(1)) if m else None,
            "devices_ready_s": state["devices_ready_s"], "fleet_wall_s": state["wall_s"],
            "run_s": [a["run_s"] for a in attempts],
            "overhead_s": [a["overhead_s"] for a in attempts],
            "score_s": [a["score_s"] for a in attempts],
            "devices_used": sorted({a["device"] for a in attempts})}


def report(args, seq: list[float], fl: dict) -> dict:
    med = statistics.median
    figures = {
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
                   f"Python {platform.python_version()}",
        "load_average_at_start": args.load_at_start,
        "jobs": args.jobs, "devices": args.devices, "images": args.images,
        "sequential_total_s": round(sum(seq), 2),
        "sequential_per_job_s": round(med(seq), 3),
        "fleet_total_s": round(fl["total_s"], 2),
        "fleet_ray_start_s": fl["ray_start_s"],
        "fleet_after_ray_start_s": round(fl["total_s"] - (fl["ray_start_s"] or 0), 2),
        "fleet_devices_ready_s": fl["devices_ready_s"],
        "fleet_jobs_wall_s": fl["fleet_wall_s"],
        "fleet_run_process_per_job_s": round(med(fl["run_s"]), 3),
        "fleet_overhead_per_job_s": round(med(fl["overhead_s"]), 3),
        "fleet_overhead_max_s": round(max(fl["overhead_s"]), 3),
        "fleet_score_per_job_s": round(med(fl["score_s"]), 3),
        "devices_used": fl["devices_used"],
    }
    rows = [
        ("sequential lpirc run, total", f"{figures['sequential_total_s']} s",
         f"{args.jobs} processes one after another, median {figures['sequential_per_job_s']} s"),
        ("lpirc fleet run, total", f"{figures['fleet_total_s']} s",
         "one process: Ray start-up, jobs, scoring, Ray shut-down"),
        ("  Ray start-up (local instance)", f"{figures['fleet_ray_start_s']} s",
         "`ray       connected in` line"),
        ("  fleet total minus Ray start-up", f"{figures['fleet_after_ray_start_s']} s",
         "devices, jobs, Ray shut-down, Python start-up"),
        ("  first device ready", f"{figures['fleet_devices_ready_s']} s",
         "after Ray connected: actor started, holdout checked"),
        ("  fleet, Ray connected to last job", f"{figures['fleet_jobs_wall_s']} s",
         "fleet.json wall_s"),
        ("  lpirc run process on a device", f"{figures['fleet_run_process_per_job_s']} s",
         "median per job (1 of the cores each)"),
        ("  fleet overhead per job", f"{figures['fleet_overhead_per_job_s']} s",
         f"median (max {figures['fleet_overhead_max_s']} s): dispatch, model and results sent"),
        ("  scoring on the head per job", f"{figures['fleet_score_per_job_s']} s",
         "median: write, score, standings"),
    ]
    print(f"{args.jobs} submissions, {args.devices} simulated devices, {args.images}-image demo "
          f"holdout; {figures['machine']}; load average at start {args.load_at_start}; "
          "all measured")
    for name, value, how in rows:
        print(f"{name:<34} {value:>9}   {how}")
    return figures


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--jobs", type=int, default=6, help="submissions (default 6)")
    ap.add_argument("--devices", type=int, default=2, help="simulated devices (default 2)")
    ap.add_argument("--images", type=int, default=300, help="demo holdout size (default 300)")
    ap.add_argument("--out", type=Path, help="write every figure as JSON here")
    args = ap.parse_args()
    if min(args.jobs, args.devices, args.images) < 1:
        ap.error("--jobs, --devices and --images must be at least 1")
    args.load_at_start = "/".join(f"{x:.1f}" for x in os.getloadavg())
    with tempfile.TemporaryDirectory(prefix="lpirc-fleet-bench-") as tmp:
        work = Path(tmp)
        holdout, subs = prepare(work, args.jobs, args.images)
        seq = sequential(work, holdout, subs)
        fl = fleet(work, holdout, subs, args.devices)
    figures = report(args, seq, fl)
    if args.out:
        args.out.write_text(json.dumps(figures, indent=2) + "\n")


if __name__ == "__main__":
    main()
