"""How long an upload to `lpirc online` takes to be scored, and where the time goes.

Starts a real `lpirc online serve` on 127.0.0.1 (local executor, --devices D) over a demo
holdout of H images, uploads the bundled reference submission N times from one team (no
quota), and polls each submission every 50 ms from the client. Per submission:

- upload: the POST's wall time (multipart, the upload checks: load and invoke in a child
  process, the files synced, the row committed) until the 202;
- wait: 202 to first seen `running` (the queue);
- run + score: first seen `running` to first seen `scored` (lpirc run on the device, then
  scoring and the report on the service);
- total: POST sent to first seen `scored`.

Also `lpirc run` alone on the same holdout (subprocess wall time, --no-report), the floor a
device cannot beat. Medians over the submissions; all figures measured on this machine.

    python bench/online_bench.py                       # N=6, H=200, D=2
    python bench/online_bench.py --uploads 2 --images 40 --devices 1
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from online_helpers import Online, Team, add_team  # noqa: E402

from lpirc.demo import make_demo_holdout  # noqa: E402
from lpirc.settings import bundled_model  # noqa: E402


def run_alone(model: Path, holdout: Path, out: Path) -> float:
    t0 = time.monotonic()
    subprocess.run([sys.executable, "-m", "lpirc", "run", "--model", str(model), "--holdout",
                    str(holdout), "--out", str(out), "--quiet", "--no-report"], check=True,
                   capture_output=True)
    return time.monotonic() - t0


def measure(team: Team, model: Path, sidecar: dict, n: int, alone: bool) -> list[dict]:
    """``n`` uploads: one at a time, each followed until it ends (``alone``: the latency on an
    idle queue), or all at once, then followed (the throughput)."""
    if alone:
        return [row for _ in range(n) for row in measure(team, model, sidecar, 1, False)]
    rows = []
    for _ in range(n):
        t0 = time.monotonic()
        r = team.upload(model, sidecar)
        assert r.status_code == 202, r.text
        rows.append({"id": r.json()["id"], "sent": t0, "acked": time.monotonic()})
    pending = {row["id"]: row for row in rows}
    while pending:
        for sid, row in list(pending.items()):
            state = team.get(sid).json()["state"]
            now = time.monotonic()
            if state in ("running", "scoring", "scored", "failed") and "running" not in row:
                row["running"] = now
            if state in ("scored", "failed"):
                row["end"], row["state"] = now, state
                del pending[sid]
        time.sleep(0.05)
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--uploads", type=int, default=6)
    ap.add_argument("--images", type=int, default=200)
    ap.add_argument("--devices", type=int, default=2)
    ap.add_argument("--json", type=Path, help="Write the figures here too.")
    a = ap.parse_args()
    model = bundled_model()
    sidecar = json.loads(model.with_suffix(".json").read_text())
    with tempfile.TemporaryDirectory(prefix="lpirc-online-bench-") as tmp:
        tmp = Path(tmp)
        holdout = make_demo_holdout(tmp / "holdout", count=a.images, seed=11)
        alone = [run_alone(model, holdout, tmp / f"alone-{i}") for i in range(2)]
        db = tmp / "o.sqlite"
        add_team(db, "bench", "pw")
        with Online(holdout, db, devices=a.devices) as server:
            team = Team(server.url, "bench", "pw")
            one = measure(team, model, sidecar, 2, alone=True)
            rows = measure(team, model, sidecar, a.uploads, alone=False)
            wall = max(r["end"] for r in rows) - min(r["sent"] for r in rows)
            log = [ln for ln in server.lines if "scored:" in ln or "running on" in ln]
    med = lambda xs: statistics.median(xs)  # noqa: E731
    figures = {
        "uploads": a.uploads, "images": a.images, "devices": a.devices,
        "states": sorted({r["state"] for r in one + rows}),
        "upload_s": med([r["acked"] - r["sent"] for r in one]),
        "wait_s": med([r["running"] - r["acked"] for r in one]),
        "run_and_score_s": med([r["end"] - r["running"] for r in one]),
        "total_s": med([r["end"] - r["sent"] for r in one]),
        "batch_total_s": med([r["end"] - r["sent"] for r in rows]),
        "all_scored_s": wall, "lpirc_run_alone_s": min(alone),
    }
    print(f"the reference model, {a.images}-image holdout, {a.devices} local device(s), "
          "measured from the client; upload..total: medians of 2 uploads one at a time; "
          f"batch: {a.uploads} uploads at once")
    for k in ("upload_s", "wait_s", "run_and_score_s", "total_s", "batch_total_s",
              "all_scored_s", "lpirc_run_alone_s"):
        print(f"  {k:<20} {figures[k]:7.2f} s")
    print(f"  states               {', '.join(figures['states'])}")
    print("the service's own lines (lpirc run's wall time on the device, scoring and report):")
    for ln in log:
        print("  " + ln)
    if a.json:
        a.json.write_text(json.dumps(figures, indent=1) + "\n")


if __name__ == "__main__":
    main()
