"""Helpers for the referee tests: a real ``lpirc referee serve`` process on 127.0.0.1 (any free
port), and a holdout whose images can be told apart by their bytes."""

from __future__ import annotations

import csv
import hashlib
import re
import selectors
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx

from conftest import run_lpirc as lpirc  # noqa: F401 (the referee tests import it from here)

URL_LINE = re.compile(r"listening on (http://127\.0\.0\.1:\d+)")


def add_team(db: Path, name: str, password: str = "pw", *extra: str) -> None:
    """``lpirc referee add-team NAME --db DB --password PASSWORD [EXTRA...]``, which must work."""
    r = lpirc("referee", "add-team", name, "--db", str(db), "--password", password, *extra)
    assert r.returncode == 0, r.stderr


class Referee:
    """``lpirc referee serve`` in a child process; ``.url`` once it listens; stopped on exit.
    (``COMMAND``: the lpirc command it runs; tests/online_helpers.py serves ``lpirc online``.)"""

    COMMAND = ("referee", "serve")

    def __init__(self, holdout: Path, db: Path, *extra: str, time_limit_s: float = 60) -> None:
        self.args = ["--holdout", str(holdout), "--db", str(db), "--port", "0",
                     "--time-limit-s", str(time_limit_s), *extra]
        self.proc: subprocess.Popen | None = None
        self.url = ""
        self.lines: list[str] = []  # the server's stdout after its URL line
        self.http = httpx.Client(timeout=30)

    def start(self) -> "Referee":
        self.proc = subprocess.Popen([sys.executable, "-m", "lpirc", *self.COMMAND, *self.args],
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        sel = selectors.DefaultSelector()
        sel.register(self.proc.stdout, selectors.EVENT_READ)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if sel.select(timeout=1):
                line = self.proc.stdout.readline()
                m = URL_LINE.search(line)
                if m:
                    self.url = m.group(1)
                    self._drainer = threading.Thread(target=self._drain, args=(self.proc.stdout,),
                                                     daemon=True)
                    self._drainer.start()
                    return self
                if not line:
                    break
        err = self.proc.stderr.read() if self.proc.poll() is not None else ""
        self.stop()
        raise RuntimeError(f"lpirc {' '.join(self.COMMAND)} did not start: {err.strip()}")

    def _drain(self, stream) -> None:
        """Keep the server's event lines (and never let its stdout pipe fill up)."""
        try:
            for line in stream:
                self.lines.append(line.rstrip("\n"))
        except ValueError:  # closed by stop()
            pass

    def post(self, path: str, **fields) -> httpx.Response:
        """POST URL-encoded fields (a list value repeats the field)."""
        return self.http.post(self.url + path, data=fields)

    def login(self, user: str, password: str) -> str:
        r = self.post("/login", username=user, password=password)
        assert r.status_code == 200, r.text
        return r.text

    def kill9(self) -> None:
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(timeout=30)
        self.proc.stdout.close()
        self.proc.stderr.close()

    def stop(self) -> str:
        """Stop the server (SIGTERM, then SIGKILL) and return its stderr."""
        if self.proc is None:
            return ""
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        err = self.proc.stderr.read() if not self.proc.stderr.closed else ""
        if getattr(self, "_drainer", None) is not None:
            self._drainer.join(timeout=10)  # the server's last lines, up to its EOF
        for f in (self.proc.stdout, self.proc.stderr):
            f.close()
        return err

    def __enter__(self) -> "Referee":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
        self.http.close()


def make_distinct_holdout(src: Path, out: Path, count: int) -> dict[str, str]:
    """``count`` images copied (cyclically) from the ``src`` holdout, each made unique by bytes
    after its JPEG end marker (decoders ignore them), with ``ground_truth.csv``. Returns
    sha256 of the bytes -> file name, so a test can tell which file an image number is."""
    out.mkdir(parents=True)
    with open(src / "ground_truth.csv", newline="") as f:
        rows = [r for r in csv.reader(f) if r and r[0] != "filename"]
    by_sha, gt = {}, ["filename,label"]
    for i in range(count):
        name, label = rows[i % len(rows)]
        data = (src / name).read_bytes() + f"copy{i}".encode()
        new = f"img_{i + 1:06d}.jpg"
        (out / new).write_bytes(data)
        by_sha[hashlib.sha256(data).hexdigest()] = new
        gt.append(f"{new},{label}")
    (out / "ground_truth.csv").write_text("\n".join(gt) + "\n")
    return by_sha


def read_gt(holdout: Path) -> dict[str, str]:
    with open(holdout / "ground_truth.csv", newline="") as f:
        return {r[0]: r[1] for r in csv.reader(f) if r and r[0] != "filename"}


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def wait_for(predicate, timeout: float = 30.0, step: float = 0.1):
    """Poll until predicate() is truthy; returns its value (AssertionError on timeout)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        v = predicate()
        if v:
            return v
        time.sleep(step)
    raise AssertionError("condition not met in time")

