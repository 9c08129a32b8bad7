#!/usr/bin/env python3
"""Load benchmark of ``lpirc referee serve``: N devices at once pull the holdout as zips at a
set pace and post an answer for every image, as teams' devices do on the day (no inference).

For each device count (``--devices 2,4,8``) a fresh referee process is started on 127.0.0.1
with a fresh database; each device (a thread of this process, with its own keep-alive HTTP
connection) logs in, asks the count, then asks zip 1, 101, 201, ... each when it is due at
``--pace`` images/s (never ahead of time; late ones are asked at once), and after each zip posts
an answer for every image in it (``--batch`` answers per /result), then logs out. A device
stops at the end of the holdout or after ``--duration-s``.

Printed per device count, all measured on this machine:
  images/s served       images received by all devices / the level's wall time
  answers/s stored      answers in the database after the run / the level's wall time
  /zipimages, /result   p50 and p99 latency (ms), over every call of every device
  pace held             the slowest device's rate as a fraction of its pace: images received /
                        max(time to its last image, images / pace) (1.00 = never behind)
  5xx                   replies with a 5xx status (must be 0)
  lost answers          answers acknowledged (200) minus answers in the database (must be 0)

``--find-max`` then searches the highest pace (images/s per device) at which the largest
device count still gets >= 95 % of its pace. The load generator shares the machine with the
server: on a small machine its own CPU time is part of what limits the devices.

Usage (from the repository root)::

    python bench/referee_load.py                       # 2, 4, 8 devices at 250 img/s, 20,000 images
    python bench/referee_load.py --find-max --out referee_load.json
    python bench/referee_load.py --quick               # a smoke test on a tiny holdout
"""

from __future__ import annotations

import argparse
import http.client
import io
import json
import os
import platform
import random
import re
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlencode

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared" / "data"
DEFAULT_CACHE = REPO / "bench" / ".cache"
HOLD_FRACTION = 0.95
ZIP = 100


@dataclass
class Device:
    """One simulated device: its own connection, its own figures."""

    name: str
    host: str
    port: int
    pace: float
    batch: int
    duration_s: float
    zip_ms: list[float] = field(default_factory=list)
    result_ms: list[float] = field(default_factory=list)
    received: int = 0
    acked: int = 0
    errors_5xx: int = 0
    errors_other: list[str] = field(default_factory=list)
    last_s: float = 0.0
    login_ms: float = 0.0

    def call(self, conn: http.client.HTTPConnection, path: str, fields) -> tuple[int, bytes]:
        body = urlencode(fields, doseq=True)
        conn.request("POST", path, body=body,
                     headers={"Content-Type": "application/x-www-form-urlencoded"})
        resp = conn.getresponse()
        data = resp.read()
        if resp.status >= 500:
            self.errors_5xx += 1
        elif resp.status != 200 and len(self.errors_other) < 5:
            self.errors_other.append(f"{path} {resp.status} {data[:80]!r}")
        return resp.status, data

    def run(self, start: threading.Barrier) -> None:
        conn = http.client.HTTPConnection(self.host, self.port, timeout=60)
        t = time.perf_counter()
        _, token = self.call(conn, "/login", {"username": self.name, "password": "pw"})
        self.login_ms = (time.perf_counter() - t) * 1000
        token = token.decode()
        _, count = self.call(conn, "/no_of_images", {"token": token})
        n = int(count)
        rng = random.Random(self.name)
        start.wait()
        t0 = time.perf_counter()
        for first in range(1, n + 1, ZIP):
            due = t0 + (first - 1) / self.pace
            now = time.perf_counter()
            if now - t0 > self.duration_s:
                break
            if due > now:
                time.sleep(due - now)
            t = time.perf_counter()
            status, data = self.call(conn, "/zipimages", {"token": token, "image_name": first})
            self.zip_ms.append((time.perf_counter() - t) * 1000)
            if status != 200:
                continue
            ks = [int(m[:-4]) for m in zipfile.ZipFile(io.BytesIO(data)).namelist()]
            self.received += len(ks)
            self.last_s = time.perf_counter() - t0
            for i in range(0, len(ks), self.batch):
                part = ks[i:i + self.batch]
                fields = {"token": token, "image_name": part,
                          "CLASS_ID": [rng.randrange(1000) for _ in part],
                          "confidence": ["0.5"] * len(part)}
                t = time.perf_counter()
                status, _ = self.call(conn, "/result", fields)
                self.result_ms.append((time.perf_counter() - t) * 1000)
                if status == 200:
                    self.acked += len(part)
        self.call(conn, "/logout", {"token": token})
        conn.close()

    def pace_fraction(self) -> float:
        if not self.received:
            return 0.0
        return self.received / max(self.last_s, self.received / self.pace) / self.pace


def pct(values: list[float], q: float) -> float | None:
    if not values:
        return None
    v = sorted(values)
    return v[min(len(v) - 1, int(round(q / 100 * (len(v) - 1))))]


class Flood:
    """``n`` connections from ``source`` (another loopback address) posting wrong passwords to
    /login, each at most ``rate`` requests/s: half name an existing team (``dev1``), half an
    account that does not exist. Counts replies by status and their latency."""

    def __init__(self, host: str, port: int, n: int, rate: float, source: str) -> None:
        self.host, self.port, self.n, self.rate, self.source = host, port, n, rate, source
        self.stop = threading.Event()
        self.status: dict[int, int] = {}
        self.ms: list[float] = []
        self.lock = threading.Lock()
        self.threads = [threading.Thread(target=self._one, args=(i,), daemon=True)
                        for i in range(n)]

    def start(self) -> "Flood":
        for t in self.threads:
            t.start()
        return self

    def finish(self) -> None:
        self.stop.set()
        for t in self.threads:
            t.join(timeout=70)

    def _one(self, i: int) -> None:
        user = "dev1" if i % 2 == 0 else f"nobody{i}"
        body = urlencode({"username": user, "password": f"wrong{i}"})
        conn = None
        while not self.stop.is_set():
            t = time.perf_counter()
            try:
                if conn is None:
                    conn = http.client.HTTPConnection(self.host, self.port, timeout=60,
                                                      source_address=(self.source, 0))
                conn.request("POST", "/login", body=body, headers={
                    "Content-Type": "application/x-www-form-urlencoded"})
                resp = conn.getresponse()
                resp.read()
                code = resp.status
            except (OSError, http.client.HTTPException):
                code, conn = 0, None
            ms = (time.perf_counter() - t) * 1000
            with self.lock:
                self.status[code] = self.status.get(code, 0) + 1
                self.ms.append(ms)
            self.stop.wait(max(0.0, 1 / self.rate - ms / 1000))
        if conn is not None:
            conn.close()

    def figures(self) -> dict:
        sent = sum(self.status.values())
        return {"flood_connections": self.n, "flood_rate_per_conn": self.rate,
                "flood_requests": sent, "flood_status": {str(k): v for k, v in
                                                         sorted(self.status.items())},
                "flood_p50_ms": pct(self.ms, 50)}


class Server:
    """A real ``lpirc referee serve`` process on 127.0.0.1 (any free port), of the lpirc
    checkout ``repo``."""

    def __init__(self, holdout: Path, work: Path, devices: int, repo: Path = REPO) -> None:
        self.db = work / "referee.sqlite"
        env = {**os.environ, "PYTHONPATH": str(repo)}
        for i in range(devices):
            subprocess.run([sys.executable, "-m", "lpirc", "referee", "add-team", f"dev{i + 1}",
                            "--db", str(self.db), "--password", "pw"], check=True,
                           capture_output=True, env=env, cwd=repo)
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "lpirc", "referee", "serve", "--holdout", str(holdout),
             "--db", str(self.db), "--port", "0", "--time-limit-s", "3600"],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=repo)
        line = self.proc.stdout.readline()
        m = re.search(r"http://127\.0\.0\.1:(\d+)", line)
        if not m:
            raise SystemExit(f"referee_load: error: the referee did not start: "
                             f"{line}{self.proc.stderr.read()[-500:]}")
        self.port = int(m.group(1))
        # its event lines must not fill the pipe
        threading.Thread(target=self.proc.stdout.read, daemon=True).start()

    def stop(self) -> int:
        """Stop the server; returns the answers in its database."""
        self.proc.terminate()
        self.proc.wait(timeout=30)
        with sqlite3.connect(self.db) as db:
            (n,) = db.execute("SELECT COUNT(*) FROM answers").fetchone()
        return n


def run_level(holdout: Path, devices: int, pace: float, batch: int, duration_s: float,
              flood: dict | None = None, repo: Path = REPO) -> dict:
    """One device count at one pace against a fresh server; returns its figures. ``flood``
    (n, rate, source): a login flood that starts 1 s before the devices log in."""
    flooding = None
    with tempfile.TemporaryDirectory(prefix="referee-load-") as tmp:
        server = Server(holdout, Path(tmp), devices, repo)
        try:
            if flood:
                flooding = Flood("127.0.0.1", server.port, **flood).start()
                time.sleep(1.0)
            devs = [Device(f"dev{i + 1}", "127.0.0.1", server.port, pace, batch, duration_s)
                    for i in range(devices)]
            barrier = threading.Barrier(devices + 1)
            threads = [threading.Thread(target=d.run, args=(barrier,)) for d in devs]
            for t in threads:
                t.start()
            barrier.wait()
            t0 = time.perf_counter()
            for t in threads:
                t.join()
            wall = time.perf_counter() - t0
        finally:
            if flooding is not None:
                flooding.finish()
            stored = server.stop()
    zip_ms = [x for d in devs for x in d.zip_ms]
    res_ms = [x for d in devs for x in d.result_ms]
    acked = sum(d.acked for d in devs)
    return {
        "devices": devices, "pace_img_s": pace, "wall_s": wall,
        "images_served": sum(d.received for d in devs),
        "images_per_s": sum(d.received for d in devs) / wall,
        "answers_acked": acked, "answers_stored": stored, "answers_per_s": stored / wall,
        "lost_answers": acked - stored,
        "zip_p50_ms": pct(zip_ms, 50), "zip_p99_ms": pct(zip_ms, 99),
        "result_p50_ms": pct(res_ms, 50), "result_p99_ms": pct(res_ms, 99),
        "pace_held_min": min(d.pace_fraction() for d in devs),
        "errors_5xx": sum(d.errors_5xx for d in devs),
        "errors_other": [e for d in devs for e in d.errors_other][:5],
        "login_ms_max": max(d.login_ms for d in devs),
        **(flooding.figures() if flooding is not None else {}),
    }


def fmt_level(r: dict) -> str:
    ok = r["pace_held_min"] >= HOLD_FRACTION and r["errors_5xx"] == 0 and r["lost_answers"] == 0
    return (f"{r['devices']:>7}  {r['pace_img_s']:>8.0f}  {r['images_per_s']:>9.0f}  "
            f"{r['answers_per_s']:>9.0f}  {r['zip_p50_ms']:>7.1f}  {r['zip_p99_ms']:>7.1f}  "
            f"{r['result_p50_ms']:>7.1f}  {r['result_p99_ms']:>7.1f}  "
            f"{r['pace_held_min']:>6.2f}  {r['errors_5xx']:>4}  {r['lost_answers']:>5}  "
            f"{'holds' if ok else 'MISS'}"
            + (f"\n         login {r['login_ms_max']:.0f} ms; flood: {r['flood_requests']} bad "
               f"logins from {r['flood_connections']} connections, replies "
               f"{r['flood_status']}, p50 {r['flood_p50_ms'] or 0:.0f} ms"
               if "flood_requests" in r else ""))


HEADER = ("devices  pace/dev  served/s  stored/s  zip p50  zip p99  res p50  res p99  "
          "held    5xx   lost  goal (>= 95 % of pace, 0 5xx, 0 lost)")


def find_max(holdout: Path, devices: int, start: float, batch: int, duration_s: float,
             steps: int, report) -> tuple[float | None, list[dict]]:
    """Highest pace (of a doubling / halving search, then bisection) at which every device
    holds >= 95 % of its pace."""
    levels, good, bad = [], None, None
    pace = start
    for _ in range(steps):
        r = run_level(holdout, devices, pace, batch, duration_s)
        levels.append(r)
        report(fmt_level(r))
        holds = r["pace_held_min"] >= HOLD_FRACTION and r["errors_5xx"] == 0
        if holds:
            good = pace if good is None else max(good, pace)
        else:
            bad = pace if bad is None else min(bad, pace)
        if good is None:
            pace = pace / 2
        elif bad is None:
            pace = pace * 2
        else:
            pace = (good + bad) / 2
            if bad - good < 0.1 * good:
                break
    return good, levels


def default_holdout(cache: Path, count: int) -> Path:
    """``lpirc holdout make`` of the shared ImageNet dev images (cached), else a demo holdout."""
    out = cache / f"holdout-{count}-s0"
    if (out / "ground_truth.csv").is_file():
        return out
    cache.mkdir(parents=True, exist_ok=True)
    if (SHARED / "imagenet-dev").is_dir():
        cmd = ["holdout", "make", str(SHARED / "imagenet-dev"), str(out), "--count", str(count),
               "--seed", "0", "--quiet", "--force"]
        subprocess.run([sys.executable, "-m", "lpirc", *cmd], check=True, cwd=REPO)
    else:
        sys.path.insert(0, str(REPO))
        from lpirc.demo import make_demo_holdout

        make_demo_holdout(out, count=count, seed=0)
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--holdout", type=Path, help="Holdout folder with ground_truth.csv (default: "
                    "bench/.cache/holdout-20000-s0, made from ../shared/data/imagenet-dev)")
    ap.add_argument("--devices", default="2,4,8", help="Device counts, comma-separated.")
    ap.add_argument("--pace", type=float, default=250.0, help="Images/s each device asks for.")
    ap.add_argument("--batch", type=int, default=100, help="Answers per /result request.")
    ap.add_argument("--duration-s", type=float, default=80.0,
                    help="Seconds each device pulls at most (20,000 images at 250/s take 80 s).")
    ap.add_argument("--find-max", action="store_true",
                    help="Then search the highest pace that the largest device count holds.")
    ap.add_argument("--max-steps", type=int, default=5, help="Levels the --find-max search runs.")
    ap.add_argument("--search-duration-s", type=float, default=30.0,
                    help="Seconds each device pulls at most in a --find-max level.")
    ap.add_argument("--quick", action="store_true", help="Smoke test: tiny holdout, 2 s.")
    ap.add_argument("--cache-dir", type=Path, default=DEFAULT_CACHE)
    ap.add_argument("--out", type=Path, help="Write every figure as JSON.")
    ap.add_argument("--login-flood", type=int, default=0, metavar="N",
                    help="Also N connections posting wrong passwords to /login from "
                         "--flood-source, each at most --flood-rate requests/s.")
    ap.add_argument("--flood-rate", type=float, default=10.0)
    ap.add_argument("--flood-source", default="127.0.0.2",
                    help="Source address of the flood (another loopback address: the referee "
                         "tells clients apart by address).")
    ap.add_argument("--repo", type=Path, default=REPO,
                    help="The lpirc checkout whose referee is served (to compare versions).")
    a = ap.parse_args(argv)
    try:
        counts = [int(x) for x in a.devices.split(",")]
    except ValueError:
        ap.error(f"--devices {a.devices!r}: expected numbers like 2,4,8")
    if a.quick:
        a.duration_s, counts = min(a.duration_s, 2.0), counts[:1]
    holdout = a.holdout or default_holdout(a.cache_dir, 300 if a.quick else 20000)
    if not (holdout / "ground_truth.csv").is_file():
        ap.error(f"{holdout}: no ground_truth.csv (not a holdout folder?)")
    images = sum(1 for p in holdout.iterdir() if p.suffix.lower() in (".jpg", ".jpeg"))
    mb = sum(p.stat().st_size for p in holdout.iterdir()) / images / 1e3 if images else 0
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
          f"Python {platform.python_version()}; load average at start "
          + "/".join(f"{x:.1f}" for x in os.getloadavg()))
    print(f"holdout: {holdout} ({images} images, {mb:.0f} kB each on average); each device pulls "
          f"zips at {a.pace:g} img/s for at most {a.duration_s:g} s, {a.batch} answers per "
          "/result; server and load generator share this machine" + ("  [--quick: a smoke "
                                                                    "test]" if a.quick else ""))
    print("measured: served/s and stored/s over the level's wall time; latencies in ms; held = "
          "slowest device's rate / its pace")
    print(HEADER)
    levels = []
    for n in counts:
        flood = ({"n": a.login_flood, "rate": a.flood_rate, "source": a.flood_source}
                 if a.login_flood else None)
        levels.append(run_level(holdout, n, a.pace, a.batch, a.duration_s, flood, a.repo))
        print(fmt_level(levels[-1]), flush=True)
    best = None
    if a.find_max:
        print(f"search: highest pace that {max(counts)} devices hold (from {2 * a.pace:g} "
              f"img/s, doubling, halving, then bisecting; "
              f"{min(a.duration_s, a.search_duration_s):g} s per level)")
        best, more = find_max(holdout, max(counts), a.pace * 2, a.batch,
                              min(a.duration_s, a.search_duration_s), a.max_steps,
                              lambda line: print(line, flush=True))
        levels += more
        print(f"highest pace held by {max(counts)} devices: "
              + (f"{best:.0f} img/s each ({best * max(counts):.0f} img/s in all)" if best else
                 "none of the paces tried"))
    for r in levels:
        for e in r["errors_other"]:
            print(f"note: {r['devices']} devices: refused call: {e}")
    if a.out:
        a.out.write_text(json.dumps({"levels": levels, "highest_pace_held": best}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
