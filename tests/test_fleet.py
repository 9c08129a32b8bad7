"""`lpirc fleet` on real Ray clusters on this machine: a local instance split into 2 simulated
devices through the CLI, and a 3-node cluster (ray.cluster_utils) in which one node's holdout
differs and one device is killed mid-run. Real runs of the bundled reference submission on a
40-image holdout; no mocks."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import psutil
import pytest

ray = pytest.importorskip("ray", reason="Ray is not installed (the `fleet` extra)")

from lpirc import fleet  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
MB = 1024 * 1024


def lpirc(*args: str, timeout: float = 180) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "lpirc", *args], capture_output=True, text=True,
                          cwd=REPO, timeout=timeout)


def make_submissions(folder: Path, model: Path, names: list[str]) -> Path:
    """Copies of the bundled submission (with its sidecar) named NAME.tflite; 'broken' is the
    first third of the file (a truncated .tflite)."""
    folder.mkdir(parents=True, exist_ok=True)
    for n in names:
        if n == "broken":
            data = model.read_bytes()
            (folder / f"{n}.tflite").write_bytes(data[: len(data) // 3])
            continue
        shutil.copy(model, folder / f"{n}.tflite")
        shutil.copy(model.with_suffix(".json"), folder / f"{n}.json")
    return folder


def state(out: Path) -> dict:
    data = json.loads((out / "fleet.json").read_text())
    return {j["name"]: j for j in data["jobs"]} | {"_devices": data["devices"]}


# --- the command line, a local instance of 2 simulated devices ------------------------------


def test_fleet_run_cli_two_simulated_devices_one_broken_submission(tmp_path, small_holdout,
                                                                   reference_model):
    subs = make_submissions(tmp_path / "subs", reference_model, ["alpha", "beta", "gamma",
                                                                  "broken"])
    out = tmp_path / "fleet"
    args = ["fleet", "run", str(subs), "--holdout", str(small_holdout), "--out", str(out),
            "--devices", "2"]
    r = lpirc(*args)
    assert r.returncode == 1, r.stderr  # one job failed: exit 1, the others scored
    assert "Traceback" not in r.stderr
    jobs = state(out)
    for name in ("alpha", "beta", "gamma"):
        assert jobs[name]["status"] == "done", jobs[name]
        assert len(jobs[name]["attempts"]) == 1
        score = json.loads((out / "runs" / name / "score.json").read_text())
        assert score["images_total"] == 40 and score["images_answered"] == 40
        assert score["top1"] > 0.5  # a real model on real (generated) images
        manifest = json.loads((out / "runs" / name / "manifest.json").read_text())
        assert manifest["holdout"]["files_sha256"] == json.loads(
            (out / "fleet.json").read_text())["holdout_files_sha256"]
        assert manifest["settings"]["workers"] == 1  # 2 cores divided between 2 devices
        assert jobs[name]["score"]["top1"] == score["top1"]
    assert jobs["broken"]["status"] == "failed"
    assert "not a TFLite model" in jobs["broken"]["reason"]
    assert not (out / "runs" / "broken").exists()
    assert sorted(p.name for p in (out / "runs").iterdir()) == ["alpha", "beta", "gamma"]
    assert {d["resource"] for d in jobs["_devices"]} == {"lpirc_device_cpu_0",
                                                         "lpirc_device_cpu_1"}
    assert sorted(tuple(d["cores"]) for d in jobs["_devices"]) == [(0,), (1,)]
    # progress lines and the standings table
    for word in ("queued", "running", "done", "failed"):
        assert any(line.startswith(word) for line in r.stderr.splitlines()), word
    table = r.stdout.splitlines()
    ranked = [ln.split() for ln in table if ln.strip()[:1].isdigit()]
    assert sorted(row[1] for row in ranked) == ["alpha", "beta", "gamma"]
    assert any("failed" in ln and "broken" in ln and "not a TFLite model" in ln for ln in table)


def test_fleet_ctrl_c_cancels_running_jobs_and_keeps_finished_ones(tmp_path, small_holdout,
                                                                    reference_model):
    subs = make_submissions(tmp_path / "subs", reference_model, [f"s{i}" for i in range(5)])
    out = tmp_path / "fleet"
    # a terminal's Ctrl-C reaches the whole process group: the head and its local Ray
    p = subprocess.Popen([sys.executable, "-m", "lpirc", "fleet", "run", str(subs), "--holdout",
                          str(small_holdout), "--out", str(out), "--devices", "2"], cwd=REPO,
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                         start_new_session=True)
    seen = []
    try:
        for line in p.stderr:
            seen.append(line)
            if line.startswith("done"):
                os.killpg(p.pid, signal.SIGINT)
                break
        stdout, rest = p.communicate(timeout=60)
    finally:
        if p.poll() is None:
            os.killpg(p.pid, signal.SIGKILL)
    assert p.returncode == 130, "".join(seen) + rest
    jobs = state(out)
    statuses = [jobs[f"s{i}"]["status"] for i in range(5)]
    assert statuses.count("done") >= 1 and "cancelled" in statuses
    assert set(statuses) <= {"done", "cancelled"}
    for i in range(5):
        scored = (out / "runs" / f"s{i}" / "score.json").is_file()
        assert scored == (statuses[i] == "done")
    assert "cancelled by Ctrl-C" in stdout
    assert "Traceback" not in rest


# --- a 3-node cluster on this machine --------------------------------------------------------


@pytest.fixture(scope="module")
def cluster(tmp_path_factory, small_holdout):
    """Head node (one device), node B (one device), node C (one device, another holdout):
    every node offers lpirc_device_cpu_0, told apart by node."""
    from ray.cluster_utils import Cluster

    base = tmp_path_factory.mktemp("cluster")
    other = base / "other-holdout"
    shutil.copytree(small_holdout, other)
    sorted(other.glob("*.jpg"))[0].unlink()  # one image fewer: another ordered file list
    work = {n: base / f"work-{n}" for n in ("b", "c")}
    common = dict(num_cpus=1, resources={"lpirc_device_cpu_0": 1}, object_store_memory=80 * MB)
    c = Cluster(initialize_head=True, head_node_args=dict(include_dashboard=False, **common))
    c.add_node(env_vars={fleet.WORK_ENV: str(work["b"])}, **common)
    c.add_node(env_vars={fleet.WORK_ENV: str(work["c"]), fleet.HOLDOUT_ENV: str(other)},
               **common)
    ray.init(address=c.address, log_to_driver=False, logging_level="ERROR")
    try:
        yield {"cluster": c, "work": work, "other": other}
    finally:
        ray.shutdown()
        c.shutdown()


def _cfg(tmp_path: Path, holdout: Path, **kw) -> fleet.FleetConfig:
    return fleet.FleetConfig(holdout, holdout / "ground_truth.csv", tmp_path / "fleet", **kw)


def test_node_with_another_holdout_is_refused(cluster, tmp_path, small_holdout,
                                              reference_model):
    subs = make_submissions(tmp_path / "subs", reference_model, ["one", "two", "three"])
    shutil.copy(subs / "three.tflite", subs / "tpu_edgetpu.tflite")  # asks for an Edge TPU
    events: list[fleet.FleetEvent] = []
    outcome = fleet.run_fleet(fleet.find_submissions([subs]), _cfg(tmp_path, small_holdout),
                              events.append)
    refused = [e for e in events if e.what == "refused"]
    assert len(refused) == 1, [e.message for e in events]
    assert str(cluster["other"]) in refused[0].message
    assert "differs from the head's" in refused[0].message and "39 images" in refused[0].message
    refused_label = refused[0].device
    jobs = {j.name: j for j in outcome.jobs}
    for name in ("one", "two", "three"):
        assert jobs[name].status == "done"
        assert all(a["device"] != refused_label for a in jobs[name].attempts)
    assert jobs["tpu_edgetpu"].status == "failed"
    assert jobs["tpu_edgetpu"].reason.startswith("no edgetpu device in the cluster")
    assert outcome.exit_code == 1
    states = {d["device"]: d["state"] for d in outcome.devices}
    assert states[refused_label] == "refused"
    assert not cluster["work"]["c"].exists()  # the refused node ran nothing

    # the same fleet again: done jobs are kept, not run or scored again
    score_file = tmp_path / "fleet" / "runs" / "one" / "score.json"
    before = score_file.stat().st_mtime_ns
    events.clear()
    again = fleet.run_fleet(fleet.find_submissions([subs]), _cfg(tmp_path, small_holdout),
                            events.append)
    jobs2 = {j.name: j for j in again.jobs}
    for name in ("one", "two", "three"):
        assert jobs2[name].status == "done"
        assert jobs2[name].attempts == jobs[name].attempts
        assert any(e.what == "note" and e.job == name and "not run or scored again" in e.message
                   for e in events)
    assert not any(e.what == "running" for e in events)
    assert score_file.stat().st_mtime_ns == before


def test_device_killed_mid_run_job_retried_on_another_device(cluster, tmp_path, small_holdout,
                                                             reference_model):
    subs = make_submissions(tmp_path / "subs", reference_model, ["first", "second"])
    killed: dict = {}

    def kill_when_running(pid: int) -> None:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:  # the device's `lpirc run` child is running
            try:
                kids = [k for k in psutil.Process(pid).children() if "run" in k.cmdline()]
            except psutil.Error:
                kids = []
            if kids:
                killed["child"] = kids[0]
                os.kill(pid, signal.SIGKILL)
                return
            time.sleep(0.005)

    def on_event(ev: fleet.FleetEvent) -> None:
        if ev.what == "running" and not killed:
            killed["device"], killed["job"] = ev.device, ev.job
            threading.Thread(target=kill_when_running, args=(ev.pid,), daemon=True).start()

    outcome = fleet.run_fleet(fleet.find_submissions([subs]), _cfg(tmp_path, small_holdout),
                              on_event)
    assert "child" in killed, "the device's run was not caught running"
    jobs = {j.name: j for j in outcome.jobs}
    victim = jobs[killed["job"]]
    assert victim.status == "done" and outcome.exit_code == 0
    first, second = victim.attempts
    assert first["outcome"] == "device_lost" and first["device"] == killed["device"]
    assert second["outcome"] == "done" and second["device"] != killed["device"]
    # the partial run folder of the lost attempt stays on its node, apart from the scored run
    assert first["run_dir"].endswith(f"{victim.name}/attempt-1/run")
    manifest = json.loads((tmp_path / "fleet" / "runs" / victim.name / "manifest.json")
                          .read_text())
    assert f"{victim.name}/attempt-2/" in manifest["model"]["path"]
    # the killed device's run did not outlive it, and the device got no further job
    killed["child"].wait(timeout=10)
    assert {d["device"]: d["state"] for d in outcome.devices}[killed["device"]] == "lost"
    other = [j for j in outcome.jobs if j is not victim][0]
    assert other.status == "done" and len(other.attempts) == 1
