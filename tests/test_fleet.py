"""`lpirc fleet` end to end on real Ray clusters on this machine (marked ray and slow): a local
instance split into 2 simulated devices through the CLI, and a 3-node cluster
(ray.cluster_utils) in which one node's holdout differs and one device is killed mid-run. Real
runs of the bundled reference submission on a 40-image holdout; no mocks. The policy's cases
without Ray, in milliseconds: test_fleet_policy.py."""

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

from conftest import REPO, run_lpirc as lpirc

ray = pytest.importorskip("ray", reason="Ray is not installed (the `fleet` extra)")

from click.testing import CliRunner  # noqa: E402

from lpirc import delegates, fleet, leaderboard  # noqa: E402
from lpirc.cli import main  # noqa: E402

MB = 1024 * 1024


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


def start_fleet(subs: Path, holdout: Path, tmp_path: Path, devices: int = 2,
                **popen) -> subprocess.Popen:
    """`lpirc fleet run SUBS` into tmp_path/fleet as a process in its own session (a terminal's
    Ctrl-C reaches the whole process group: the head and its local Ray), pipes as text."""
    return subprocess.Popen([sys.executable, "-m", "lpirc", "fleet", "run", str(subs),
                             "--holdout", str(holdout), "--out", str(tmp_path / "fleet"),
                             "--devices", str(devices), "--db",
                             str(tmp_path / "standings.sqlite")], cwd=REPO,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True, **popen)


# --- the command line, a local instance of 2 simulated devices ------------------------------


@pytest.mark.ray
@pytest.mark.slow
def test_fleet_run_cli_two_simulated_devices_one_broken_submission(tmp_path, small_holdout,
                                                                   reference_model):
    subs = make_submissions(tmp_path / "subs", reference_model, ["alpha", "beta", "gamma",
                                                                  "broken"])
    out, db = tmp_path / "fleet", tmp_path / "standings.sqlite"
    args = ["fleet", "run", str(subs), "--holdout", str(small_holdout), "--out", str(out),
            "--devices", "2", "--db", str(db)]
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
    # what the score is, and whether the energy it divides by was measured or estimated
    score_line = next(ln for ln in table if ln.startswith("score "))
    assert "/ energy in Wh" in score_line and "(600 s)" in score_line, score_line
    assert any(w in score_line for w in ("energy estimated", "energy measured")), score_line
    # the head added the three scored runs to the standings database, as source "fleet"
    conn = leaderboard.open_db(db)
    stored = {e.submission: e for e in leaderboard.entries(conn)}
    conn.close()
    assert sorted(stored) == ["alpha", "beta", "gamma"]
    for name, e in stored.items():
        assert e.source == "fleet" and e.top1 == jobs[name]["score"]["top1"]
        assert e.run_dir == str((out / "runs" / name).resolve())
        assert jobs[name]["standings"].startswith("added to")


@pytest.mark.ray
@pytest.mark.slow
@pytest.mark.parametrize("stop", ["ctrl-c", "sigterm"])
def test_fleet_ctrl_c_cancels_running_jobs_and_keeps_finished_ones(tmp_path, small_holdout,
                                                                    reference_model, stop):
    """Ctrl-C, or a scheduler's SIGTERM to the head alone, cancels the running and queued jobs;
    the finished ones stay scored; exit 130 (SIGTERM was Ray's sys.exit(15) before)."""
    subs = make_submissions(tmp_path / "subs", reference_model, [f"s{i}" for i in range(5)])
    out = tmp_path / "fleet"
    p = start_fleet(subs, small_holdout, tmp_path)
    seen = []
    try:
        for line in p.stderr:
            seen.append(line)
            if line.startswith("done"):
                if stop == "ctrl-c":
                    os.killpg(p.pid, signal.SIGINT)
                else:
                    os.kill(p.pid, signal.SIGTERM)
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


@pytest.mark.ray
@pytest.mark.slow
@pytest.mark.parametrize("stop", ["ctrl-c-background", "sigterm"])
def test_stop_during_ray_start_up_is_exit_130(tmp_path, small_holdout, reference_model, stop):
    """Ctrl-C to the process group of a head started as a shell's background job (SIGINT
    ignored for it), or SIGTERM to the head alone, while Ray starts (3-13 s): exit 130 with
    `lpirc: interrupted`, no job run (were: Ctrl-C ignored and the fleet run to exit 0; SIGTERM
    exit 15 with no message)."""
    subs = make_submissions(tmp_path / "subs", reference_model, ["one"])
    out = tmp_path / "fleet"
    background = stop == "ctrl-c-background"
    p = start_fleet(subs, small_holdout, tmp_path, devices=1,
                    preexec_fn=(lambda: signal.signal(signal.SIGINT, signal.SIG_IGN))
                    if background else None)
    try:
        first = p.stderr.readline()
        assert first.startswith("ray       starting: local instance"), first
        time.sleep(2.0)  # importing Ray, then inside ray.init
        if background:
            os.killpg(p.pid, signal.SIGINT)
        else:
            os.kill(p.pid, signal.SIGTERM)
        t0 = time.monotonic()
        stdout, rest = p.communicate(timeout=60)
        took = time.monotonic() - t0
    finally:
        if p.poll() is None:
            os.killpg(p.pid, signal.SIGKILL)
    assert p.returncode == 130, first + rest
    assert rest.strip().splitlines()[-1] == "lpirc: interrupted", rest
    assert "Traceback" not in rest and not (out / "runs").exists()
    assert took < 30, took


@pytest.mark.ray
@pytest.mark.slow
def test_ray_lines_go_to_its_log_not_the_fleet_output(tmp_path, small_holdout, reference_model):
    """A device worker killed mid-run makes Ray's driver print a coloured `(raylet) A worker
    died ...` line on stdout, between the standings' lines before: it goes to OUT/ray.log."""
    subs = make_submissions(tmp_path / "subs", reference_model, ["a", "b", "c"])
    out = tmp_path / "fleet"
    p = start_fleet(subs, small_holdout, tmp_path)
    seen, killed = [], None
    try:
        for line in p.stderr:
            seen.append(line)
            if line.startswith("running") and killed is None:
                worker = next(q for q in fleet_workers(p.pid)
                              if run_child(q.pid, timeout_s=30) is not None)
                killed = worker.pid
                worker.kill()
                break
        stdout, rest = p.communicate(timeout=120)
    finally:
        if p.poll() is None:
            os.killpg(p.pid, signal.SIGKILL)
    err = "".join(seen) + rest
    assert p.returncode == 0, err
    assert any(ln.startswith("lost ") for ln in err.splitlines()), err
    assert "\x1b[" not in stdout + err and "(raylet)" not in stdout + err, stdout + err
    assert stdout.startswith("Standings (lpirc-onsite;"), stdout
    words = ("ray ", "queued ", "device ", "running ", "done ", "lost ", "retry ", "note ")
    assert all(ln.startswith(words) for ln in err.splitlines()), err
    assert (out / "ray.log").is_file()


@pytest.mark.ray
@pytest.mark.slow
def test_fleet_started_beside_a_folder_named_lpirc_runs_its_jobs(tmp_path, small_holdout,
                                                                 reference_model):
    """An organiser runs `lpirc fleet` from the folder that holds their clone (`lpirc/`, no
    __init__.py there) with lpirc installed editable. Ray puts the head's folder first on every
    worker's sys.path; that folder must not shadow the installed package on the devices."""
    subs = make_submissions(tmp_path / "subs", reference_model, ["one"])
    here = tmp_path / "organiser"
    (here / "lpirc").mkdir(parents=True)  # a clone's top folder: no __init__.py
    (here / "lpirc" / "README.md").write_text("a clone\n")
    out = tmp_path / "fleet"
    # -P: the head itself does not put its folder on sys.path, as the `lpirc` script does not
    r = subprocess.run([sys.executable, "-P", "-m", "lpirc", "fleet", "run", str(subs),
                        "--holdout", str(small_holdout), "--out", str(out), "--devices", "1",
                        "--db", str(tmp_path / "standings.sqlite")], cwd=here,
                       capture_output=True, text=True, timeout=180)
    assert r.returncode == 0, r.stderr
    assert state(out)["one"]["status"] == "done"
    assert "first device ready after" in r.stdout


@pytest.mark.slow
@pytest.mark.ray
def test_cpu_devices_get_equal_core_shares():
    """A job's time must not depend on the device it drew: 3 devices on 4 cores get one core
    each (core 3 unused), not 1, 1 and 2; fewer cores than devices: shared, round robin."""
    assert [fleet.share_cores([0, 1, 2, 3], (i, 3)) for i in range(3)] == [[0], [1], [2]]
    assert [fleet.share_cores([4, 5, 6, 7], (i, 2)) for i in range(2)] == [[4, 5], [6, 7]]
    assert [fleet.share_cores([0, 1], (i, 3)) for i in range(3)] == [[0], [1], [0]]
    assert fleet.share_cores([0, 1], None) is None


@pytest.mark.ray
@pytest.mark.slow
@pytest.mark.skipif(not hasattr(os, "sched_setaffinity"), reason="needs sched_setaffinity")
def test_devices_sharing_a_core_are_noted(tmp_path, small_holdout, reference_model):
    """2 simulated devices on a head pinned to one core share it: a note says their times are
    not comparable, and the fleet still runs."""
    subs = make_submissions(tmp_path / "subs", reference_model, ["one"])
    out = tmp_path / "fleet"
    argv = ["lpirc", "fleet", "run", str(subs), "--holdout", str(small_holdout), "--out",
            str(out), "--devices", "2", "--db", str(tmp_path / "standings.sqlite")]
    code = ("import os, runpy, sys; os.sched_setaffinity(0, {min(os.sched_getaffinity(0))}); "
            f"sys.argv = {argv!r}; runpy.run_module('lpirc', run_name='__main__')")
    r = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True,
                       timeout=180)
    assert r.returncode == 0, r.stderr
    notes = [ln for ln in r.stderr.splitlines() if ln.startswith("note") and "shares core" in ln]
    assert len(notes) == 1 and "times are not comparable" in notes[0], r.stderr
    assert state(out)["one"]["status"] == "done"


@pytest.mark.slow
@pytest.mark.ray
def test_fleet_bad_inputs_are_one_line_before_ray_starts(tmp_path, small_holdout,
                                                        reference_model):
    subs = make_submissions(tmp_path / "subs", reference_model, ["alpha"])
    not_db = tmp_path / "notes.txt"
    not_db.write_text("not a database\n" * 100)
    other_fleet = tmp_path / "other-fleet"
    other_fleet.mkdir()
    (other_fleet / "fleet.json").write_text(json.dumps({"jobs": [], "rules": "lpirc-onsite",
                                                        "holdout_files_sha256": "0" * 64}))
    cases = [
        (["missing.tflite"], 5, "missing.tflite: submission not found"),
        ([str(subs / "alpha.json")], 5, "a sidecar, not a model"),
        ([str(tmp_path)], 5, "folder holds no .tflite submission"),
        ([str(subs), "--holdout", str(tmp_path / "nope")], 5, "holdout folder not found"),
        ([str(subs), "--holdout", str(small_holdout), "--db", str(not_db)], 5,
         "not a SQLite database"),
        ([str(subs), "--holdout", str(small_holdout), "--out", str(other_fleet)], 5,
         "the fleet in this folder ran with --holdout (its file list) 000000000000"),
        ([str(subs), "--holdout", str(small_holdout), "--address", "127.0.0.1:1"], 1,
         "127.0.0.1:1: no Ray cluster reachable"),
    ]
    for args, code, message in cases:
        if "--holdout" not in args:
            args = [*args, "--holdout", str(small_holdout)]
        if "--db" not in args:
            args = [*args, "--db", str(tmp_path / "standings.sqlite")]
        if "--out" not in args:
            args = [*args, "--out", str(tmp_path / "out")]
        r = CliRunner().invoke(main, ["fleet", "run", *args])  # in process: no Ray starts
        assert r.exit_code == code, (args, r.stderr)
        lines = r.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("lpirc: error: "), r.stderr
        assert message in lines[0], r.stderr
        assert not ray.is_initialized()
    # a rule set mistyped on the command line is click's usage error naming the option
    r = CliRunner().invoke(main, ["fleet", "run", str(subs), "--holdout", str(small_holdout),
                                  "--out", str(tmp_path / "out"), "--rules", "nope"])
    assert r.exit_code == 2 and "Invalid value for '--rules'" in r.stderr, r.stderr
    assert not ray.is_initialized()
    r = CliRunner().invoke(main, ["fleet", "devices", "--address", "127.0.0.1:1"])
    assert r.exit_code == 1 and r.stderr.startswith("lpirc: error: 127.0.0.1:1: no Ray"), r.stderr
    assert not ray.is_initialized()


# --- a 3-node cluster on this machine --------------------------------------------------------


@pytest.fixture(scope="module")
def cluster(tmp_path_factory, small_holdout):
    """Head node (a cpu device and an Edge TPU one), node B (a cpu device), node C (a cpu
    device, another holdout): every node offers lpirc_device_cpu_0, told apart by node."""
    from ray.cluster_utils import Cluster

    base = tmp_path_factory.mktemp("cluster")
    other = base / "other-holdout"
    shutil.copytree(small_holdout, other)
    sorted(other.glob("*.jpg"))[0].unlink()  # one image fewer: another ordered file list
    work = {n: base / f"work-{n}" for n in ("b", "c")}
    common = dict(num_cpus=1, resources={"lpirc_device_cpu_0": 1}, object_store_memory=80 * MB)
    head = common | {"resources": {"lpirc_device_cpu_0": 1, "lpirc_device_edgetpu_usb0": 1}}
    c = Cluster(initialize_head=True, head_node_args=dict(include_dashboard=False, **head))
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
    return fleet.FleetConfig(holdout, holdout / "ground_truth.csv", tmp_path / "fleet",
                             db=tmp_path / "standings.sqlite", **kw)


def fleet_workers(head_pid: int) -> list[psutil.Process]:
    """The Ray device workers (``ray::DeviceWorker``) below the fleet head ``head_pid`` (its
    local Ray instance's raylet starts them): not another fleet's on the same machine, which a
    test once killed instead, in two test runs side by side."""
    try:
        below = psutil.Process(head_pid).children(recursive=True)
    except psutil.Error:
        return []
    out = []
    for q in below:
        try:
            if (q.cmdline() or [""])[0].startswith("ray::DeviceWorker"):
                out.append(q)
        except psutil.Error:
            continue
    return out


def run_child(pid: int, timeout_s: float = 30) -> psutil.Process | None:
    """The `lpirc run` child of a device worker, once it is running (polled every 5 ms)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            kids = [k for k in psutil.Process(pid).children() if "run" in k.cmdline()]
        except psutil.Error:
            kids = []
        if kids:
            return kids[0]
        time.sleep(0.005)
    return None


@pytest.mark.ray
@pytest.mark.slow
def test_node_with_another_holdout_is_refused(cluster, tmp_path, small_holdout,
                                              reference_model):
    subs = make_submissions(tmp_path / "subs", reference_model, ["one", "two", "three"])
    shutil.copy(subs / "three.tflite", subs / "tpu_edgetpu.tflite")  # asks for an Edge TPU
    gpu = make_submissions(tmp_path / "gpu", reference_model, ["viagpu"])
    jobs_given = fleet.find_submissions([subs]) + fleet.find_submissions([gpu], kind="gpu")
    events: list[fleet.FleetEvent] = []
    outcome = fleet.run_fleet(jobs_given, _cfg(tmp_path, small_holdout), events.append)
    refused = [e for e in events if e.what == "refused"]
    assert len(refused) == 1, [e.message for e in events]
    assert str(cluster["other"]) in refused[0].message
    assert "differs from the head's" in refused[0].message and "39 images" in refused[0].message
    refused_label = refused[0].device
    jobs = {j.name: j for j in outcome.jobs}
    for name in ("one", "two", "three"):
        assert jobs[name].status == "done"
        assert all(a.device != refused_label for a in jobs[name].attempts)
    # a job goes to a device of the kind it asks for, or fails with the reason
    tpu = jobs["tpu_edgetpu"]
    assert [a.device.split("@")[0] for a in tpu.attempts] == ["edgetpu_usb0"]
    if delegates.find_library(delegates.edgetpu_library_name())[0] is None:  # no Edge TPU here
        assert tpu.status == "failed" and "edgetpu" in tpu.reason, tpu.reason
        assert tpu.attempts[0].exit_code == 4  # lpirc run's "delegate unavailable"
    assert jobs["viagpu"].status == "failed" and jobs["viagpu"].attempts == []
    assert jobs["viagpu"].reason.startswith("no gpu device in the cluster")
    assert outcome.exit_code == 1
    states = {d["device"]: d["state"] for d in outcome.devices}
    assert states[refused_label] == "refused"
    assert not cluster["work"]["c"].exists()  # the refused node ran nothing

    # the same fleet again: done jobs are kept, not run or scored again; one whose database
    # add was cut short (its standings field lost) is offered again and not stored twice
    score_file = tmp_path / "fleet" / "runs" / "one" / "score.json"
    before = score_file.stat().st_mtime_ns
    state_file = tmp_path / "fleet" / "fleet.json"
    saved = json.loads(state_file.read_text())
    next(j for j in saved["jobs"] if j["name"] == "one")["standings"] = None
    state_file.write_text(json.dumps(saved))
    events.clear()
    again = fleet.run_fleet(fleet.find_submissions([subs]), _cfg(tmp_path, small_holdout),
                            events.append)
    jobs2 = {j.name: j for j in again.jobs}
    for name in ("one", "two", "three"):
        assert jobs2[name].status == "done"
        assert jobs2[name].attempts == jobs[name].attempts
        assert any(e.what == "note" and e.job == name and "not run or scored again" in e.message
                   for e in events)
    assert not any(e.what == "running" and e.job in ("one", "two", "three") for e in events)
    assert any(e.what == "running" and e.job == "tpu_edgetpu" for e in events)  # failed: again
    # only done jobs given: no device is even asked
    events.clear()
    done_only = [s for s in fleet.find_submissions([subs]) if s.name != "tpu_edgetpu"]
    third = fleet.run_fleet(done_only, _cfg(tmp_path, small_holdout), events.append)
    assert not any(e.what in ("device", "running", "refused") for e in events)
    assert all(j.status == "done" for j in third.jobs if j.name in ("one", "two", "three"))
    assert score_file.stat().st_mtime_ns == before
    conn = leaderboard.open_db(tmp_path / "standings.sqlite")
    assert sorted(e.submission for e in leaderboard.entries(conn)) == ["one", "three", "two"]
    assert jobs2["one"].standings.startswith("already in")
    conn.close()


@pytest.mark.ray
@pytest.mark.slow
def test_device_killed_mid_run_job_retried_on_another_device(cluster, tmp_path, small_holdout,
                                                             reference_model):
    subs = make_submissions(tmp_path / "subs", reference_model, ["first", "second"])
    killed: dict = {}

    def kill_when_running(pid: int) -> None:
        child = run_child(pid)
        if child is not None:
            killed["child"] = child
            os.kill(pid, signal.SIGKILL)

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
    assert first.outcome == "device_lost" and first.device == killed["device"]
    assert second.outcome == "done" and second.device != killed["device"]
    # the partial run folder of the lost attempt stays on its node, apart from the scored run
    assert first.run_dir.endswith(f"{victim.name}/attempt-1/run")
    manifest = json.loads((tmp_path / "fleet" / "runs" / victim.name / "manifest.json")
                          .read_text())
    assert f"{victim.name}/attempt-2/" in manifest["model"]["path"]
    # the killed device's run did not outlive it, and the device got no further job
    killed["child"].wait(timeout=10)
    assert {d["device"]: d["state"] for d in outcome.devices}[killed["device"]] == "lost"
    other = [j for j in outcome.jobs if j is not victim][0]
    assert other.status == "done" and len(other.attempts) == 1
    # scored once each: one standings entry per job, the victim's from its second attempt
    conn = leaderboard.open_db(tmp_path / "standings.sqlite")
    stored = {e.submission: e for e in leaderboard.entries(conn)}
    conn.close()
    assert sorted(stored) == sorted(j.name for j in outcome.jobs)
    assert stored[victim.name].extra["status"] == "complete"


@pytest.mark.ray
@pytest.mark.slow
def test_stopped_device_worker_is_ended_and_its_job_retried(cluster, tmp_path, small_holdout,
                                                            reference_model):
    """A device whose worker itself stops answering (its Ray actor SIGSTOPped mid-run: it
    cannot kill its run or answer): the head ends it (Ray kills the actor, the run child dies
    with it) time_limit_s + 2 x hang_margin_s after the job was sent, and retries the job
    elsewhere. A run that is stuck while its worker answers is test_fleet_policy's case."""
    subs = make_submissions(tmp_path / "subs", reference_model, ["stuck"])
    stopped: dict = {}

    def stop_when_running(pid: int) -> None:
        child = run_child(pid)
        if child is not None:
            stopped["child"] = child
            psutil.Process(pid).suspend()  # SIGSTOP the device's worker, not its run

    def on_event(ev: fleet.FleetEvent) -> None:
        if ev.what == "running" and not stopped:
            stopped["device"], stopped["t"] = ev.device, time.monotonic()
            threading.Thread(target=stop_when_running, args=(ev.pid,), daemon=True).start()

    # margin 8 s: the retry must end within its budget + margin, also on a loaded machine
    cfg = _cfg(tmp_path, small_holdout, time_limit_s=2.0, hang_margin_s=8.0)
    events: list[tuple[float, fleet.FleetEvent]] = []
    outcome = fleet.run_fleet(fleet.find_submissions([subs]), cfg,
                              lambda ev: (events.append((time.monotonic(), ev)), on_event(ev)))
    assert "child" in stopped
    job = outcome.jobs[0]
    assert job.status == "done", "\n".join(e.message for _, e in events)
    first, second = job.attempts
    assert first.device == stopped["device"] and first.outcome == "device_lost"
    assert first.reason.startswith("stuck past its budget")
    assert second.outcome == "done" and second.device != stopped["device"]
    ended = next(t for t, e in events if e.what == "note" and "no answer from its worker for "
                 "stuck within 18 s (budget + 2 x 8 s); device ended" in e.message)
    assert 17 < ended - stopped["t"] < 22, ended - stopped["t"]
    stopped["child"].wait(timeout=10)  # the stopped worker's run died with it


@pytest.mark.ray
@pytest.mark.slow
def test_device_that_cannot_start_is_named_with_its_cause(cluster):
    """A device actor whose start fails on its node (here DeviceWorker given no device; on a
    real node, lpirc missing or another version) is reported with the error that stopped it,
    not Ray's wrapper text."""
    actor = ray.remote(fleet.DeviceWorker).options(num_cpus=0).remote(None)
    with pytest.raises(ray.exceptions.RayError) as err:
        ray.get(actor.check.remote("/nowhere", 0, "/nowhere"), timeout=60)
    assert fleet.start_failure(err.value) == (
        "AttributeError: 'NoneType' object has no attribute 'share'")
    assert fleet.start_failure(RuntimeError("a node died")) is None


@pytest.mark.ray
@pytest.mark.slow
def test_fleet_devices_lists_each_node_device(cluster):
    r = CliRunner().invoke(main, ["fleet", "devices"])  # Ray already connected: that cluster
    assert r.exit_code == 0, r.output
    rows = [ln for ln in r.stdout.splitlines() if ln.startswith("cpu_0@")]
    assert len(rows) == 3 and len({row.split()[0] for row in rows}) == 3  # one per node
    assert all("lpirc_device_cpu_0" in row for row in rows)
    assert sum(ln.startswith("edgetpu_usb0@") for ln in r.stdout.splitlines()) == 1
    assert r.stdout.splitlines()[-1] == "4 device(s)"


@pytest.mark.ray
@pytest.mark.slow
def test_node_lost_mid_run_job_retried_on_another_node(cluster, tmp_path, small_holdout,
                                                       reference_model):
    """A whole node dies (its raylet and every process of it killed) while a job runs there.
    Last test of the module: it takes a node away."""
    c = cluster["cluster"]
    c.add_node(num_cpus=1, resources={"lpirc_device_cpu_0": 1},
                       object_store_memory=80 * MB,
                       env_vars={fleet.WORK_ENV: str(tmp_path / "work-d")})
    removable = {n.node_id[:6]: n for n in c.worker_nodes}  # not the head: it holds the GCS
    subs = make_submissions(tmp_path / "subs", reference_model, ["n1", "n2", "n3", "n4"])
    lost: dict = {}

    def remove_when_running(pid: int, node) -> None:
        if run_child(pid) is not None:
            c.remove_node(node, allow_graceful=False)
            lost["removed"] = True

    def on_event(ev: fleet.FleetEvent) -> None:
        node = removable.get((ev.device or "#").rsplit("#", 1)[-1])
        if ev.what == "running" and node is not None and not lost:
            lost["device"], lost["job"] = ev.device, ev.job
            threading.Thread(target=remove_when_running, args=(ev.pid, node),
                             daemon=True).start()

    outcome = fleet.run_fleet(fleet.find_submissions([subs]), _cfg(tmp_path, small_holdout),
                              on_event)
    assert lost.get("removed"), "no job was caught running on a removable node"
    jobs = {j.name: j for j in outcome.jobs}
    assert all(j.status == "done" for j in jobs.values()), [j.reason for j in jobs.values()]
    victim = jobs[lost["job"]]
    assert victim.attempts[0].device == lost["device"]
    assert victim.attempts[0].outcome == "device_lost"
    assert victim.attempts[-1].outcome == "done"
    assert all(a.device != lost["device"] for a in victim.attempts[1:])
    assert {d["device"]: d["state"] for d in outcome.devices}[lost["device"]] == "lost"
