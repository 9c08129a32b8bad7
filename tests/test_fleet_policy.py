"""The fleet's scheduling policy (lpirc.fleet.policy) on the in-process pool (LocalPool): lost
device, hung job, refused node, stranded job, retries, resume, Ctrl-C, with no Ray.

The devices here are simulated hardware (there is no rack of phones in CI): each is a real
DeviceWorker (its holdout check is the real one) whose run_job does what the test says:
replay a result that a real `lpirc run` of the bundled submission made once per module (``ok``),
raise as a worker whose node is gone (``lose``), block until the pool kills it (``hang``),
report exit 130 (``stop``). The pool, the policy, the scoring on the head and the standings
database are the real ones. Each case runs in milliseconds."""

from __future__ import annotations

import itertools
import json
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from lpirc import fleet, leaderboard
from lpirc.fleet import AttemptResult, DeviceWorker, FleetConfig, LocalPool

REPO = Path(__file__).resolve().parents[1]
RUNS = itertools.count()  # tells the replayed runs apart (their uid includes the start time)


@pytest.fixture(scope="module")
def recorded(tmp_path_factory, small_holdout, reference_model) -> dict:
    """results.jsonl and manifest.json of one real `lpirc run` of the bundled submission on the
    40-image holdout (about 1 s), which the ``ok`` devices send back."""
    out = tmp_path_factory.mktemp("recorded") / "run"
    r = subprocess.run([sys.executable, "-m", "lpirc", "run", "--model", str(reference_model),
                        "--holdout", str(small_holdout), "--out", str(out), "--quiet",
                        "--no-report"], capture_output=True, text=True, cwd=REPO, timeout=120)
    assert r.returncode == 0, r.stderr
    return {"results": (out / "results.jsonl").read_bytes(),
            "manifest": (out / "manifest.json").read_bytes()}


class SimDevice(DeviceWorker):
    """A device whose runs follow ``script[label]`` (one behaviour per attempt, the last one
    repeated): ok, lose, hang, stop."""

    def __init__(self, device, script: dict, recorded: dict, calls: list) -> None:
        super().__init__(device)
        self.script, self.recorded, self.calls = script, recorded, calls
        self.killed = threading.Event()

    def run_job(self, req, model) -> AttemptResult:
        plan = self.script.get(self.device.label, ["ok"])
        mine = [c for c in self.calls if c[0] == self.device.label]
        what = plan[min(len(mine), len(plan) - 1)]
        self.calls.append((self.device.label, req.job, what))
        if what == "lose":
            raise ConnectionError(f"node of {self.device.label} lost")
        if what == "hang":
            self.killed.wait(30)
            raise RuntimeError("killed")
        t = time.time()
        if what == "stop":
            return AttemptResult(130, "interrupted", None, None, "/nowhere", 0.01, t, t)
        manifest = json.loads(self.recorded["manifest"])  # each run starts at its own time
        manifest["start_utc"] = f"{manifest['start_utc']}-{next(RUNS)}"
        return AttemptResult(0, None, self.recorded["results"], json.dumps(manifest).encode(),
                             "/nowhere", 0.01, t, t)

    def kill(self) -> None:
        self.killed.set()


def sim_pool(recorded: dict, script: dict | None = None) -> tuple[LocalPool, list]:
    calls: list = []
    return LocalPool(lambda d: SimDevice(d, script or {}, recorded, calls)), calls


def make_subs(folder: Path, model: Path, names: list[str]) -> list[fleet.Submission]:
    folder.mkdir(parents=True, exist_ok=True)
    for n in names:
        shutil.copy(model, folder / f"{n}.tflite")
    return fleet.find_submissions([folder])


def cfg(tmp_path: Path, holdout: Path, **kw) -> FleetConfig:
    return FleetConfig(holdout, holdout / "ground_truth.csv", tmp_path / "fleet",
                       db=tmp_path / "standings.sqlite", **kw)


def run(subs, config, pool, devices, events=None):
    return fleet.run_fleet(subs, config, (events if events is not None else []).append,
                           pool=pool, devices=devices)


def stored(db: Path) -> list[str]:
    conn = leaderboard.open_db(db)
    try:
        return sorted(e.submission for e in leaderboard.entries(conn))
    finally:
        conn.close()


def test_every_job_done_scored_once_and_in_the_standings(tmp_path, small_holdout,
                                                         reference_model, recorded):
    subs = make_subs(tmp_path / "subs", reference_model, ["a", "b", "c", "d"])
    pool, calls = sim_pool(recorded)
    t0 = time.monotonic()
    out = run(subs, cfg(tmp_path, small_holdout), pool, fleet.local_devices(2))
    assert time.monotonic() - t0 < 5
    assert out.exit_code == 0 and [j.status for j in out.jobs] == ["done"] * 4
    assert len(calls) == 4 and {c[0] for c in calls} <= {"cpu_0@local", "cpu_1@local"}
    for j in out.jobs:
        assert j.score["images_answered"] == 40 and j.standings.startswith("added to")
        assert json.loads((tmp_path / "fleet" / "runs" / j.name / "score.json").read_text())
    assert stored(tmp_path / "standings.sqlite") == ["a", "b", "c", "d"]


def test_lost_device_job_retried_elsewhere_and_device_retired(tmp_path, small_holdout,
                                                              reference_model, recorded):
    subs = make_subs(tmp_path / "subs", reference_model, ["a", "b", "c"])
    pool, calls = sim_pool(recorded, {"cpu_0@local": ["lose"]})
    events: list = []
    out = run(subs, cfg(tmp_path, small_holdout), pool, fleet.local_devices(2), events)
    assert out.exit_code == 0
    victim = next(j for j in out.jobs if j.attempts[0]["device"] == "cpu_0@local")
    first, second = victim.attempts
    assert first["outcome"] == "device_lost" and "node of cpu_0@local lost" in first["reason"]
    assert second["outcome"] == "done" and second["device"] == "cpu_1@local"
    assert [c for c in calls if c[0] == "cpu_0@local"] == [("cpu_0@local", victim.name, "lose")]
    assert {d["device"]: d["state"] for d in out.devices}["cpu_0@local"] == "lost"
    assert any(e.what == "retry" and e.job == victim.name for e in events)
    assert stored(tmp_path / "standings.sqlite") == ["a", "b", "c"]  # none twice


def test_retries_end_after_max_attempts(tmp_path, small_holdout, reference_model, recorded):
    """Every device stops the run from outside (exit 130): the job is retried, then fails
    after --max-attempts tries with the reason."""
    subs = make_subs(tmp_path / "subs", reference_model, ["a"])
    pool, calls = sim_pool(recorded, {"cpu_0@local": ["stop"], "cpu_1@local": ["stop"]})
    out = run(subs, cfg(tmp_path, small_holdout, max_attempts=2), pool, fleet.local_devices(2))
    job = out.jobs[0]
    assert out.exit_code == 1 and job.status == "failed" and len(calls) == 2
    assert [a["outcome"] for a in job.attempts] == ["stopped", "stopped"]
    assert job.reason.endswith("(gave up after 2 attempts)")


def test_hung_job_device_ended_and_job_retried(tmp_path, small_holdout, reference_model,
                                               recorded):
    subs = make_subs(tmp_path / "subs", reference_model, ["a"])
    pool, calls = sim_pool(recorded, {"cpu_0@local": ["hang"]})
    events: list = []
    config = cfg(tmp_path, small_holdout, time_limit_s=0.05, hang_margin_s=0.05)
    t0 = time.monotonic()
    out = run(subs, config, pool, fleet.local_devices(1) + [
        fleet.Device("local", "127.0.0.1", "lpirc_device_cpu_9", "cpu", "9", "cpu_9@local")],
        events)
    took = time.monotonic() - t0
    job = out.jobs[0]
    assert job.status == "done" and took < 3, took
    first, second = job.attempts
    assert first["device"] == "cpu_0@local" and first["outcome"] == "device_lost"
    assert first["reason"].startswith("stuck past its budget")
    assert second["device"] == "cpu_9@local" and second["outcome"] == "done"
    assert any(e.what == "note" and "no result from a within" in e.message for e in events)


def test_node_with_another_holdout_refused_with_all_its_devices(tmp_path, small_holdout,
                                                                reference_model, recorded):
    other = tmp_path / "other"
    shutil.copytree(small_holdout, other)
    sorted(other.glob("*.jpg"))[0].unlink()

    class OtherHoldout(SimDevice):
        def check(self, holdout, seed, work_dir):
            return super().check(str(other) if self.device.node_id == "B" else holdout, seed,
                                 work_dir)

    calls: list = []
    pool = LocalPool(lambda d: OtherHoldout(d, {}, recorded, calls))
    devs = [fleet.Device(n, "10.0.0.1", f"lpirc_device_cpu_{i}", "cpu", str(i), f"cpu_{i}@{n}")
            for n in ("A", "B") for i in (0, 1)]
    events: list = []
    subs = make_subs(tmp_path / "subs", reference_model, ["a", "b", "c"])
    out = run(subs, cfg(tmp_path, small_holdout), pool, devs, events)
    refused = [e for e in events if e.what == "refused"]
    assert len(refused) == 1 and "node B (cpu_0, cpu_1) refused" in refused[0].message
    assert "differs from the head's" in refused[0].message and "39 images" in refused[0].message
    assert out.exit_code == 0 and {c[0] for c in calls} <= {"cpu_0@A", "cpu_1@A"}
    states = {d["device"]: d["state"] for d in out.devices}
    assert states["cpu_0@B"] == states["cpu_1@B"] == "refused"


def test_stranded_jobs_fail_with_the_reason(tmp_path, small_holdout, reference_model,
                                            recorded):
    """A job whose kind no device offers fails at once; one whose devices are all lost fails
    once the last is gone. The others go on."""
    subs = make_subs(tmp_path / "subs", reference_model, ["a", "b"])
    gpu = fleet.find_submissions([shutil.copy(reference_model, tmp_path / "g.tflite")],
                                 kind="gpu")
    pool, _ = sim_pool(recorded, {"cpu_0@local": ["lose"]})
    out = run(subs + gpu, cfg(tmp_path, small_holdout), pool, fleet.local_devices(1))
    jobs = {j.name: j for j in out.jobs}
    assert jobs["g"].status == "failed" and jobs["g"].attempts == []
    assert jobs["g"].reason.startswith("no gpu device in the cluster")
    lost = [j for j in jobs.values() if j.kind == "cpu"]
    assert all(j.status == "failed" for j in lost)
    assert any(j.reason == "no cpu device left (0 refused, 1 lost)" for j in lost)


def test_device_that_cannot_start_is_named_with_its_cause(tmp_path, small_holdout,
                                                          reference_model, recorded):
    def make(d):
        if d.device_id == "0":
            raise ImportError("cannot import name '__version__' from 'lpirc'")
        return SimDevice(d, {}, recorded, [])

    events: list = []
    subs = make_subs(tmp_path / "subs", reference_model, ["a"])
    out = run(subs, cfg(tmp_path, small_holdout), LocalPool(make), fleet.local_devices(2),
              events)
    assert out.exit_code == 0
    lost = [e.message for e in events if e.what == "lost"]
    assert lost == ["cpu_0@local: could not start on its node (ImportError: cannot import name "
                    "'__version__' from 'lpirc'); is lpirc installed there, importable by the "
                    "Python of its `ray start`, in the head's version?"]


def test_resume_keeps_done_jobs_and_reruns_the_others(tmp_path, small_holdout,
                                                      reference_model, recorded):
    subs = make_subs(tmp_path / "subs", reference_model, ["a", "b"])
    pool, calls = sim_pool(recorded, {"cpu_0@local": ["ok", "stop"]})
    first = run(subs, cfg(tmp_path, small_holdout, max_attempts=1), pool,
                fleet.local_devices(1))
    assert [j.status for j in first.jobs] == ["done", "failed"]
    score = tmp_path / "fleet" / "runs" / "a" / "score.json"
    before = score.stat().st_mtime_ns
    pool, calls = sim_pool(recorded)
    events: list = []
    again = run(subs, cfg(tmp_path, small_holdout), pool, fleet.local_devices(1), events)
    assert [j.status for j in again.jobs] == ["done", "done"]
    assert [c[1] for c in calls] == ["b"]  # a is kept, not run or scored again
    assert any(e.what == "note" and e.job == "a" and "not run or scored again" in e.message
               for e in events)
    assert score.stat().st_mtime_ns == before
    assert stored(tmp_path / "standings.sqlite") == ["a", "b"]


def test_ctrl_c_cancels_running_and_queued_jobs_keeps_done_ones(tmp_path, small_holdout,
                                                                reference_model, recorded):
    subs = make_subs(tmp_path / "subs", reference_model, ["a", "b", "c"])
    pool, _ = sim_pool(recorded, {"cpu_0@local": ["ok", "hang"]})

    def on_event(ev):
        if ev.what == "running" and ev.job == "b":
            raise KeyboardInterrupt

    out = fleet.run_fleet(subs, cfg(tmp_path, small_holdout), on_event, pool=pool,
                          devices=fleet.local_devices(1))
    assert out.interrupted and out.exit_code == 130
    assert [j.status for j in out.jobs] == ["done", "cancelled", "cancelled"]
    assert out.jobs[1].attempts[-1]["outcome"] == "cancelled"
    saved = json.loads((tmp_path / "fleet" / "fleet.json").read_text())
    assert [j["status"] for j in saved["jobs"]] == ["done", "cancelled", "cancelled"]
