"""Helpers for the online service's tests: a real ``lpirc online serve`` process on 127.0.0.1
(any free port), a team's HTTP client, and waiting for submissions to settle."""

from __future__ import annotations

import json
import os
import re
import selectors
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx

URL_LINE = re.compile(r"listening on (http://127\.0\.0\.1:\d+)")
_REPO = Path(__file__).resolve().parents[1]
#: the shared data's models: $LPIRC_SHARED_DATA, else ../shared/data beside the checkout (or
#: beside the folder of worktrees holding it)
SHARED_MODELS = [Path(p) / "models" for p in (
    os.environ.get("LPIRC_SHARED_DATA"), _REPO.parent / "shared" / "data",
    _REPO.parent.parent / "shared" / "data") if p]


def lpirc(*args: str, cwd: Path | None = None, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "lpirc", *args], capture_output=True, text=True,
                          cwd=cwd, timeout=timeout)


class Online:
    """``lpirc online serve`` in a child process; ``.url`` once it listens; stopped on exit.
    ``lines``: its stdout (one line per event) after the URL line."""

    def __init__(self, holdout: Path, db: Path, *extra: str, devices: int = 1,
                 time_limit_s: float = 60) -> None:
        self.args = ["--holdout", str(holdout), "--db", str(db), "--port", "0", "--devices",
                     str(devices), "--time-limit-s", str(time_limit_s), *extra]
        self.proc: subprocess.Popen | None = None
        self.url = ""
        self.lines: list[str] = []
        self.startup_s = 0.0

    def start(self) -> "Online":
        t0 = time.monotonic()
        self.proc = subprocess.Popen([sys.executable, "-m", "lpirc", "online", "serve",
                                      *self.args], stdout=subprocess.PIPE,
                                     stderr=subprocess.PIPE, text=True)
        sel = selectors.DefaultSelector()
        sel.register(self.proc.stdout, selectors.EVENT_READ)
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            if sel.select(timeout=1):
                line = self.proc.stdout.readline()
                m = URL_LINE.search(line)
                if m:
                    self.url = m.group(1)
                    self.startup_s = time.monotonic() - t0
                    threading.Thread(target=self._drain, daemon=True).start()
                    return self
                if not line:
                    break
        err = self.proc.stderr.read() if self.proc.poll() is not None else ""
        self.stop()
        raise RuntimeError(f"lpirc online did not start: {err.strip()}")

    def _drain(self) -> None:
        try:
            for line in self.proc.stdout:
                self.lines.append(line.rstrip("\n"))
        except ValueError:
            pass

    def kill9(self) -> None:
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(timeout=30)

    def stop(self) -> str:
        """SIGTERM (then SIGKILL); the service's stderr."""
        if self.proc is None:
            return ""
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        err = self.proc.stderr.read() if not self.proc.stderr.closed else ""
        for f in (self.proc.stdout, self.proc.stderr):
            f.close()
        return err

    def __enter__(self) -> "Online":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


class Team:
    """A team's client: logs in, uploads, reads its submissions."""

    def __init__(self, url: str, name: str, password: str) -> None:
        self.url, self.name = url, name
        self.http = httpx.Client(base_url=url, timeout=120)
        r = self.http.post("/api/login", data={"username": name, "password": password})
        assert r.status_code == 200, r.text
        self.token = r.json()["token"]
        self.http.headers["Authorization"] = f"Bearer {self.token}"

    def upload(self, model: Path, sidecar: dict | Path | None = None,
               label: str | None = None) -> httpx.Response:
        files = {"model": (model.name, model.read_bytes(), "application/octet-stream")}
        if sidecar is not None:
            data = (json.dumps(sidecar).encode() if isinstance(sidecar, dict)
                    else Path(sidecar).read_bytes())
            files["sidecar"] = ("model.json", data, "application/json")
        return self.http.post("/api/submissions", files=files,
                              data={"label": label} if label else None)

    def get(self, sid: int) -> httpx.Response:
        return self.http.get(f"/api/submissions/{sid}")

    def wait(self, sids, timeout_s: float = 120, states=("scored", "failed")) -> dict[int, dict]:
        """Each submission's view once every one is in ``states``."""
        deadline = time.monotonic() + timeout_s
        while True:
            views = {sid: self.get(sid).json() for sid in sids}
            if all(v["state"] in states for v in views.values()):
                return views
            if time.monotonic() > deadline:
                raise AssertionError(f"not settled in {timeout_s} s: {views}")
            time.sleep(0.2)

    def close(self) -> None:
        self.http.close()


def add_team(db: Path, name: str, password: str, *extra: str) -> None:
    r = lpirc("online", "add-team", name, "--password", password, "--db", str(db), *extra)
    assert r.returncode == 0, r.stderr


def broken_model(tmp: Path) -> Path:
    """A model that is a TFLite flatbuffer but cannot be loaded: the shared data's
    model_invoking_error.tflite (an unresolved custom op) when present, else the bundled model
    cut short (a flatbuffer the runtime cannot read: class format)."""
    for folder in SHARED_MODELS:
        if (folder / "model_invoking_error.tflite").is_file():
            return folder / "model_invoking_error.tflite"
    from lpirc.settings import bundled_model

    out = tmp / "broken.tflite"
    out.write_bytes(bundled_model().read_bytes()[:64])  # the TFL3 identifier, then nothing
    return out
