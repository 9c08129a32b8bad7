#!/usr/bin/env python3
"""The referee-restart case: ``lpirc run --referee`` while its referee is killed (-9) and a new
one is started on the same port with a NEW database (the organisers' mistake on the day).

A clean session first (referee C: the model's top-1 on this holdout as the referee scores it),
then the restart case: referee A serves the team until at least ``--kill-after`` answers are
stored, is killed, and referee B (new database, same account) takes the port. Printed, all
measured by the referees on this machine: the clean session's top-1; what B holds of the team
(answers, top-1 over the whole holdout, top-1 over the images answered, i.e. how many answers
went to the right image); the client's exit code and its referee lines; where the client
stopped without posting to B, a second run of it against B and B's top-1 after it.

Usage (from the repository root)::

    python bench/referee_restart.py --holdout HOLDOUT [--repo OTHER_CHECKOUT] [--out x.json]
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def lpirc(repo: Path, *args: str) -> list[str]:
    """``python -m lpirc ARGS``, run with PYTHONPATH=repo (the caller's env) to use that lpirc."""
    return [sys.executable, "-m", "lpirc", *args]


class Ref:
    def __init__(self, repo: Path, holdout: Path, db: Path, port: int, limit: float) -> None:
        self.env = {**os.environ, "PYTHONPATH": str(repo)}
        subprocess.run(lpirc(repo, "referee", "add-team", "alpha", "--db", str(db),
                             "--password", "pw"), check=True, capture_output=True, env=self.env)
        self.db = db
        self.proc = subprocess.Popen(
            lpirc(repo, "referee", "serve", "--holdout", str(holdout), "--db", str(db), "--port",
                  str(port), "--time-limit-s", str(limit)),
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=self.env)
        line = self.proc.stdout.readline()
        if "listening" not in line:
            raise SystemExit(f"referee did not start: {line}{self.proc.stderr.read()[-800:]}")
        threading.Thread(target=self.proc.stdout.read, daemon=True).start()

    def answers(self) -> int:
        try:
            with sqlite3.connect(self.db, timeout=5) as c:
                return c.execute("SELECT COUNT(*) FROM answers").fetchone()[0]
        except sqlite3.Error:
            return 0

    def results(self, repo: Path) -> list[dict]:
        for _ in range(100):
            r = subprocess.run(lpirc(repo, "referee", "results", "--db", str(self.db),
                                     "--format", "json", "--all"), capture_output=True,
                               text=True, env=self.env)
            rows = json.loads(r.stdout or "[]")
            if rows and rows[0]["status"] == "scored":
                return rows
            time.sleep(0.2)
        return rows

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(timeout=30)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def client(repo: Path, model: Path | None, port: int, out: Path, workers: int):
    cmd = lpirc(repo, "run", "--referee", f"http://127.0.0.1:{port}", "--user", "alpha",
                "--password", "pw", "--out", str(out), "--quiet", "--no-report", "--workers",
                str(workers), "--time-limit-s", "120")
    if model:
        cmd += ["--model", str(model)]
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "PYTHONPATH": str(repo)})


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--holdout", type=Path, required=True)
    ap.add_argument("--repo", type=Path, default=REPO)
    ap.add_argument("--model", type=Path, help="Default: the bundled reference submission.")
    ap.add_argument("--workers", type=int, default=1)
    ap.add_argument("--kill-after", type=int, default=300, help="Answers stored before the kill.")
    ap.add_argument("--out", type=Path)
    a = ap.parse_args(argv)
    fig: dict = {"repo": str(a.repo)}
    with tempfile.TemporaryDirectory(prefix="referee-restart-") as tmp:
        tmp = Path(tmp)
        port = free_port()
        c = Ref(a.repo, a.holdout, tmp / "clean.sqlite", port, 300)
        p = client(a.repo, a.model, port, tmp / "clean-run", a.workers)
        p.communicate(timeout=300)
        c.stop()
        clean = c.results(a.repo)[0]
        fig["clean_top1"] = clean["top1"]
        fig["clean_answered"] = clean["answered"]

        ra = Ref(a.repo, a.holdout, tmp / "a.sqlite", port, 300)
        p = client(a.repo, a.model, port, tmp / "run", a.workers)
        t0 = time.monotonic()
        while ra.answers() < a.kill_after and p.poll() is None and time.monotonic() - t0 < 120:
            time.sleep(0.05)
        ra.proc.kill()
        ra.proc.wait()
        fig["a_answers_at_kill"] = ra.answers()
        rb = Ref(a.repo, a.holdout, tmp / "b.sqlite", port, 300)
        out, err = p.communicate(timeout=300)
        fig["client_exit"] = p.returncode
        fig["client_referee_lines"] = [ln for ln in out.splitlines() if ln.startswith(
            ("referee", "never posted"))] + [ln for ln in err.splitlines() if ln.strip()][-3:]
        # the client logs out of B's session at its end: B scores it; a client that stopped
        # instead (the session lost) is run again, and answers B's session from its image 1
        fig["b_answers"] = rb.answers()
        if fig["b_answers"] == 0:
            p = client(a.repo, a.model, port, tmp / "rerun", a.workers)
            out, _ = p.communicate(timeout=300)
            fig["rerun_exit"] = p.returncode
            fig["b_answers_after_rerun"] = rb.answers()
        rows = rb.results(a.repo) if rb.answers() else []
        rb.stop()
        if rows:
            fig["b_top1"] = rows[0]["top1"]
            fig["b_right_of_answered"] = rows[0]["top1"] * rows[0]["images_total"] / rows[0]["answered"]
    for k, v in fig.items():
        print(f"{k:24} {v}")
    if a.out:
        a.out.write_text(json.dumps(fig, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
