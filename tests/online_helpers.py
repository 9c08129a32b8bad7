"""Helpers for the online service's tests: a real ``lpirc online serve`` process on 127.0.0.1
(any free port), a team's HTTP client, and waiting for submissions to settle."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import httpx

from referee_helpers import Referee, lpirc  # noqa: F401  (lpirc: the tests import it from here)

_REPO = Path(__file__).resolve().parents[1]
#: the shared data's models: $LPIRC_SHARED_DATA, else ../shared/data beside the checkout (or
#: beside the folder of worktrees holding it)
SHARED_MODELS = [Path(p) / "models" for p in (
    os.environ.get("LPIRC_SHARED_DATA"), _REPO.parent / "shared" / "data",
    _REPO.parent.parent / "shared" / "data") if p]


class Online(Referee):
    """``lpirc online serve`` in a child process (the referee tests' server process, another
    command); ``.url`` once it listens; ``lines``: its event lines; ``kill9()``; stopped on
    exit."""

    COMMAND = ("online", "serve")

    def __init__(self, holdout: Path, db: Path, *extra: str, devices: int = 1,
                 time_limit_s: float = 60) -> None:
        super().__init__(holdout, db)
        self.args = ["--holdout", str(holdout), "--db", str(db), "--port", "0", "--devices",
                     str(devices), "--time-limit-s", str(time_limit_s), *extra]


#: Every Team made in the current test; conftest closes them after it (a client left open
#: is an unclosed socket that the garbage collector reports inside a later test's frames).
OPEN_TEAMS: list["Team"] = []


def close_teams() -> None:
    while OPEN_TEAMS:
        OPEN_TEAMS.pop().close()


class Team:
    """A team's client: logs in, uploads, reads its submissions."""

    def __init__(self, url: str, name: str, password: str) -> None:
        self.url, self.name = url, name
        self.http = httpx.Client(base_url=url, timeout=120)
        OPEN_TEAMS.append(self)
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
