"""The fleet's scheduling policy (lpirc.fleet.policy) on the in-process pool (LocalPool): lost
device, hung job, refused node, stranded job, retries, resume, Ctrl-C, with no Ray.

The devices here are simulated hardware (there is no rack of phones in CI): each is a real
DeviceWorker (its holdout check is the real one) whose run_job does what the test says:
replay a result that a real `lpirc run` of the bundled submission made once per module (``ok``),
raise as a worker whose node is gone (``lose``), block until the pool kills it (``hang``),
report exit 130 (``stop``). The pool, the policy, the scoring on the head and the standings
database are the real ones. Each case runs in milliseconds."""

from __future__ import annotations

import dataclasses
import itertools
import json
import shutil
import sys
import threading
import time
from pathlib import Path

import pytest

from lpirc import fleet, leaderboard
from lpirc.fleet import AttemptResult, DeviceWorker, FleetConfig, LocalPool

from conftest import run_lpirc

RUNS = itertools.count()  # tells the replayed runs apart (their uid includes the start time)


@pytest.fixture(scope="module")
def recorded(tmp_path_factory, small_holdout, reference_model) -> dict:
    """results.jsonl and manifest.json of one real `lpirc run` of the bundled submission on the
    40-image holdout (about 1 s), which the ``ok`` devices send back."""
    out = tmp_path_factory.mktemp("recorded") / "run"
    r = run_lpirc("run", "--model", reference_model, "--holdout", small_holdout, "--out", out,
                  "--quiet", "--no-report")
    assert r.returncode == 0, r.stderr
    return {"results": (out / "results.jsonl").read_bytes(),
            "manifest": (out / "manifest.json").read_bytes()}


class SimDevice(DeviceWorker):
    """A device whose runs follow ``script[label]`` (one behaviour per attempt, the last one
    repeated: ok, lose, hang, stop), or ``script["*"]`` (per run of the fleet, on any device)."""

    def __init__(self, device, script: dict, recorded: dict, calls: list) -> None:
        super().__init__(device)
        self.script, self.recorded, self.calls = script, recorded, calls
        self.killed = threading.Event()

    def run_job(self, req, model) -> AttemptResult:
        if self.device.label in self.script:
            plan, before = self.script[self.device.label], [
                c for c in self.calls if c[0] == self.device.label]
        else:  # "*": the fleet's n-th run, whichever device it drew
            plan, before = self.script.get("*", ["ok"]), self.calls
        what = plan[min(len(before), len(plan) - 1)]
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


def two_nodes(recorded: dict, b_holdout: Path, per_node: int = 1):
    """A pool of simulated devices on nodes A and B (``per_node`` cpu devices each), node B's
    holdout at ``b_holdout`` (as a node's $LPIRC_FLEET_HOLDOUT would put it); (pool, calls,
    devices)."""

    class NodeB(SimDevice):
        def check(self, holdout, seed, work_dir):
            return super().check(str(b_holdout) if self.device.node_id == "B" else holdout,
                                 seed, work_dir)

    calls: list = []
    devs = [fleet.Device(n, "10.0.0.1", f"lpirc_device_cpu_{i}", "cpu", str(i), f"cpu_{i}@{n}")
            for n in ("A", "B") for i in range(per_node)]
    return LocalPool(lambda d: NodeB(d, {}, recorded, calls)), calls, devs


def swapped_copy(holdout: Path, to: Path) -> Path:
    """A copy of ``holdout`` with its first two images' bytes exchanged: the same names."""
    shutil.copytree(holdout, to)
    a, b = sorted(to.glob("*.jpg"))[:2]
    da, db_ = a.read_bytes(), b.read_bytes()
    a.write_bytes(db_), b.write_bytes(da)
    return to


@pytest.mark.slow
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


@pytest.mark.slow
def test_lost_device_job_retried_elsewhere_and_device_retired(tmp_path, small_holdout,
                                                              reference_model, recorded):
    subs = make_subs(tmp_path / "subs", reference_model, ["a", "b", "c"])
    pool, calls = sim_pool(recorded, {"cpu_0@local": ["lose"]})
    events: list = []
    out = run(subs, cfg(tmp_path, small_holdout), pool, fleet.local_devices(2), events)
    assert out.exit_code == 0
    victim = next(j for j in out.jobs if j.attempts[0].device == "cpu_0@local")
    first, second = victim.attempts
    assert first.outcome == "device_lost" and "node of cpu_0@local lost" in first.reason
    assert second.outcome == "done" and second.device == "cpu_1@local"
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
    assert [a.outcome for a in job.attempts] == ["stopped", "stopped"]
    assert job.reason.endswith("(gave up after 2 attempts)")


class SlowSharedDevice(SimDevice):
    """Every device reports core 0 (more cpu devices than cores); cpu_1's check answers 1 s
    late (``delay_s``), after the one job has ended on cpu_0."""

    delay_s = 1.0

    def check(self, holdout, seed, work_dir):
        if self.device.label == "cpu_1@local":
            time.sleep(self.delay_s)
        return dataclasses.replace(super().check(holdout, seed, work_dir), cores=(0,))


def test_a_device_checked_after_the_last_job_still_gets_its_state_and_notes(
        tmp_path, small_holdout, reference_model, recorded):
    """The fleet waits (at most hang_margin_s) for devices still checking when its last job
    ends: the state file lists them ready, and the shared-core note is given (it was lost when
    the only job ended first: a CI failure)."""
    subs = make_subs(tmp_path / "subs", reference_model, ["a"])
    calls: list = []
    pool = LocalPool(lambda d: SlowSharedDevice(d, {}, recorded, calls))
    events: list = []
    out = run(subs, cfg(tmp_path, small_holdout), pool, fleet.local_devices(2), events)
    assert out.exit_code == 0 and calls == [("cpu_0@local", "a", "ok")]
    assert {d["device"]: d["state"] for d in out.devices} == {"cpu_0@local": "released",
                                                              "cpu_1@local": "released"}
    notes = [e.message for e in events if e.what == "note" and "shares core" in e.message]
    assert notes == ["cpu_1@local shares core(s) 0 with cpu_0@local (more cpu devices than "
                     "cores): their runs' times are not comparable"]


def test_a_device_that_never_answers_its_check_delays_the_end_by_at_most_the_margin(
        tmp_path, small_holdout, reference_model, recorded):
    class Silent(SlowSharedDevice):
        delay_s = 20.0

    subs = make_subs(tmp_path / "subs", reference_model, ["a"])
    calls: list = []
    pool = LocalPool(lambda d: Silent(d, {}, recorded, calls))
    t0 = time.monotonic()
    out = run(subs, cfg(tmp_path, small_holdout, hang_margin_s=0.2), pool,
              fleet.local_devices(2))
    took = time.monotonic() - t0
    assert out.exit_code == 0 and [j.status for j in out.jobs] == ["done"]
    assert took < 10, took  # cpu_1 answers after 20 s; the fleet waited 0.2 s at most for it
    assert {d["device"]: d["state"] for d in out.devices}["cpu_1@local"] != "idle"


def test_hung_job_device_ended_and_job_retried(tmp_path, small_holdout, reference_model,
                                               recorded):
    subs = make_subs(tmp_path / "subs", reference_model, ["a"])
    pool, calls = sim_pool(recorded, {"*": ["hang", "ok"]})
    events: list = []
    config = cfg(tmp_path, small_holdout, time_limit_s=0.05, hang_margin_s=0.05)
    t0 = time.monotonic()
    out = run(subs, config, pool, fleet.local_devices(2), events)
    took = time.monotonic() - t0
    job = out.jobs[0]
    assert job.status == "done" and took < 3, took
    first, second = job.attempts
    assert first.outcome == "device_lost"
    assert first.reason.startswith("stuck past its budget")
    assert second.device != first.device and second.outcome == "done"
    assert any(e.what == "note" and "no answer from its worker for a within 0.15 s" in e.message
               for e in events)
    assert {d["device"]: d["state"] for d in out.devices}[first.device] == "lost"


def test_node_with_another_holdout_refused_with_all_its_devices(tmp_path, small_holdout,
                                                                reference_model, recorded):
    other = tmp_path / "other"
    shutil.copytree(small_holdout, other)
    sorted(other.glob("*.jpg"))[0].unlink()
    pool, calls, devs = two_nodes(recorded, other, per_node=2)
    events: list = []
    subs = make_subs(tmp_path / "subs", reference_model, ["a", "b", "c"])
    out = run(subs, cfg(tmp_path, small_holdout), pool, devs, events)
    refused = [e for e in events if e.what == "refused"]
    assert len(refused) == 1 and "node B (cpu_0, cpu_1) refused" in refused[0].message
    assert "differs from the head's" in refused[0].message and "39 images" in refused[0].message
    assert out.exit_code == 0 and {c[0] for c in calls} <= {"cpu_0@A", "cpu_1@A"}
    states = {d["device"]: d["state"] for d in out.devices}
    assert states["cpu_0@B"] == states["cpu_1@B"] == "refused"


@pytest.mark.slow
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


def test_an_attempt_left_running_by_a_killed_head_reads_back_cancelled():
    """kill -9 of the head leaves `outcome: running` in fleet.json; read back, that attempt is
    cancelled (its device was released with the head), and keys of another version are
    dropped."""
    a = fleet.Attempt.from_json({"attempt": 1, "device": "cpu_0@n", "node": "n",
                                 "started_utc": "2026-12-07T18:00:00Z", "outcome": "running",
                                 "from_the_future": 1})
    assert (a.outcome, a.reason) == ("cancelled", "the head stopped before its result")
    done = fleet.Attempt.from_json({"attempt": 2, "device": "d", "node": "n",
                                    "started_utc": "t", "outcome": "done", "run_s": 1.5})
    assert done.outcome == "done" and done.run_s == 1.5


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
    assert out.jobs[1].attempts[-1].outcome == "cancelled"
    saved = json.loads((tmp_path / "fleet" / "fleet.json").read_text())
    assert [j["status"] for j in saved["jobs"]] == ["done", "cancelled", "cancelled"]


# --- issue 19: the fleet's fault paths ------------------------------------------------------


def one_line_error(r) -> str:
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("lpirc: error: "), r.stderr
    return lines[0]


@pytest.mark.slow
@pytest.mark.ray
def test_resume_with_other_settings_is_refused_before_ray(tmp_path, small_holdout,
                                                          reference_model, recorded):
    """A fleet folder holds one fleet: resuming it with another budget, clock, rule set, seed,
    ground truth or holdout (even the same names with other bytes) is one line, exit 5, before
    Ray starts; the same settings resume it."""
    from click.testing import CliRunner

    from lpirc.cli import main

    ray = pytest.importorskip("ray")
    subs = make_subs(tmp_path / "subs", reference_model, ["a"])
    pool, _ = sim_pool(recorded)
    run(subs, cfg(tmp_path, small_holdout), pool, fleet.local_devices(1))
    saved = json.loads((tmp_path / "fleet" / "fleet.json").read_text())
    assert saved["settings"]["time_limit_s"] == 600.0
    swapped = swapped_copy(small_holdout, tmp_path / "swapped")
    other_gt = tmp_path / "gt.csv"
    rows = (small_holdout / "ground_truth.csv").read_text().splitlines()
    k = next(i for i in range(2, len(rows)) if rows[i].split(",")[1] != rows[1].split(",")[1])
    (n1, l1), (nk, lk) = rows[1].split(","), rows[k].split(",")
    rows[1], rows[k] = f"{n1},{lk}", f"{nk},{l1}"  # two labels exchanged
    other_gt.write_text("\n".join(rows) + "\n")
    base = ["fleet", "run", str(tmp_path / "subs"), "--holdout", str(small_holdout), "--out",
            str(tmp_path / "fleet"), "--db", str(tmp_path / "standings.sqlite")]
    for extra, says in [(["--time-limit-s", "1.5"], "--time-limit-s 600.0, this one 1.5"),
                        (["--clock", "inference"], "--clock wall, this one inference"),
                        (["--rules", "ovic-2018"], "--rules lpirc-onsite, this one ovic-2018"),
                        (["--seed", "3"], "--seed 0, this one 3"),
                        (["--ground-truth", str(other_gt)], "--ground-truth (its bytes)"),
                        (["--holdout", str(swapped), "--ground-truth",
                          str(small_holdout / "ground_truth.csv")],
                         "--holdout (its images' bytes)")]:
        r = CliRunner().invoke(main, base + extra)
        assert r.exit_code == 5, (extra, r.output)
        line = one_line_error(r)
        assert "fleet.json: the fleet in this folder ran with" in line and says in line, line
        assert "give the same settings to resume it, or choose another --out" in line
        assert not ray.is_initialized()
    # --ms-per-image does not count under the wall clock: the same fleet, resumed
    pool, calls = sim_pool(recorded)
    again = run(subs, cfg(tmp_path, small_holdout, ms_per_image=5.0), pool,
                fleet.local_devices(1))
    assert again.jobs[0].status == "done" and calls == []


def test_job_names_cannot_collide_or_escape(tmp_path, small_holdout, reference_model,
                                            recorded):
    """dA/m, dB/m, dC/m-2 are three jobs with three folders; a file named ..tflite is job '_'
    (its stem '.' would be OUT/runs itself)."""
    files = []
    for folder, name in (("dA", "m"), ("dB", "m"), ("dC", "m-2"), ("dD", "."), ("dE", "a b")):
        (tmp_path / folder).mkdir()
        files.append(Path(shutil.copy(reference_model, tmp_path / folder / f"{name}.tflite")))
    subs = fleet.find_submissions(files)
    assert [s.name for s in subs] == ["m", "m-3", "m-2", "_", "a_b"]
    assert fleet.job_names([Path("x/M.tflite"), Path("y/m.tflite")]) == ["M", "m-2"]
    pool, calls = sim_pool(recorded)
    out = run(subs, cfg(tmp_path, small_holdout), pool, fleet.local_devices(2))
    assert out.exit_code == 0 and len(calls) == 5
    runs = tmp_path / "fleet" / "runs"
    assert sorted(p.name for p in runs.iterdir()) == ["_", "a_b", "m", "m-2", "m-3"]
    assert all((runs / n / "score.json").is_file() for n in ("_", "a_b", "m", "m-2", "m-3"))
    assert stored(tmp_path / "standings.sqlite") == ["_", "a_b", "m", "m-2", "m-3"]


def damage(db: Path) -> None:
    """Overwrite the start of every page of a SQLite file but the first (its schema, which
    open_db reads, stays readable)."""
    leaderboard.open_db(db).close()
    data = bytearray(db.read_bytes())
    for page in range(4096, len(data), 4096):
        data[page:page + 200] = b"\x7f" * 200
    db.write_bytes(bytes(data))
    for extra in ("-wal", "-shm"):
        Path(f"{db}{extra}").unlink(missing_ok=True)


@pytest.mark.slow
@pytest.mark.ray
def test_damaged_standings_refused_at_start_and_mid_fleet_costs_no_result(
        tmp_path, small_holdout, reference_model, recorded):
    from click.testing import CliRunner

    from lpirc.cli import main

    ray = pytest.importorskip("ray")
    bad = tmp_path / "bad.sqlite"
    damage(bad)
    r = CliRunner().invoke(main, ["fleet", "run", str(reference_model), "--holdout",
                                  str(small_holdout), "--out", str(tmp_path / "o"), "--db",
                                  str(bad)])
    assert r.exit_code == 5 and not ray.is_initialized()
    line = one_line_error(r)
    assert f"{bad}: damaged standings database" in line, line
    # damaged while the fleet runs: every job still done and scored, the database's error kept
    subs = make_subs(tmp_path / "subs", reference_model, ["a", "b"])
    db = tmp_path / "standings.sqlite"

    def on_event(ev):
        if ev.what == "done" and ev.job == "a":
            damage(db)

    pool, _ = sim_pool(recorded)
    out = fleet.run_fleet(subs, cfg(tmp_path, small_holdout), on_event, pool=pool,
                          devices=fleet.local_devices(1))
    assert out.exit_code == 0 and [j.status for j in out.jobs] == ["done", "done"]
    b = out.jobs[1]
    assert b.standings.startswith(f"not recorded: {db}: ") and "malformed" in b.standings
    assert (tmp_path / "fleet" / "runs" / "b" / "score.json").is_file()
    # the recovery step: `lpirc leaderboard add OUT/runs/<job>`, no --ground-truth needed
    good = tmp_path / "good.sqlite"
    r = run_lpirc("leaderboard", "add", tmp_path / "fleet" / "runs" / "b", "--db", good)
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith("added") and " b " in r.stdout
    entry = json.loads((tmp_path / "fleet" / "runs" / "b" / "score.json").read_text())
    assert f"top-1 {100 * entry['top1']:.2f}" in r.stdout.replace("%", "")


def test_holdout_with_the_same_names_but_other_bytes_is_refused(tmp_path, small_holdout,
                                                                reference_model, recorded):
    pool, calls, devs = two_nodes(recorded, swapped_copy(small_holdout, tmp_path / "swapped"))
    events: list = []
    out = run(make_subs(tmp_path / "subs", reference_model, ["a", "b"]),
              cfg(tmp_path, small_holdout), pool, devs, events)
    refused = [e.message for e in events if e.what == "refused"]
    assert len(refused) == 1 and "node B (cpu_0) refused" in refused[0], refused
    assert "(the same names, other bytes: content sha256" in refused[0]
    assert out.exit_code == 0 and {c[0] for c in calls} == {"cpu_0@A"}


@pytest.mark.slow
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="SIGSTOP, /proc")
def test_stopped_run_is_found_at_budget_plus_margin_and_its_device_kept(
        tmp_path, small_holdout, reference_model, recorded):
    """A real `lpirc run` child, stopped with SIGSTOP right after it starts (a device that
    hangs): its worker kills it time_limit_s + hang_margin_s after its start, the job goes to
    the other device, and the first device stays in service (one stuck run)."""
    import psutil

    stopped: dict = {}
    cpu0_running = threading.Event()

    class AfterCpu0(SimDevice):
        """cpu_1 answers its check only once cpu_0 runs a job: on a loaded machine cpu_0's
        real check could come last and cpu_1 take both jobs (a CI failure: nothing to stop)."""

        def check(self, holdout, seed, work_dir):
            cpu0_running.wait(60)
            return super().check(holdout, seed, work_dir)

    def make(d):
        return DeviceWorker(d) if d.device_id == "0" else AfterCpu0(d, {}, recorded, [])

    def stop_child():
        me = psutil.Process()
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and "child" not in stopped:
            for kid in me.children():
                try:  # another child may end between children() and cmdline(): skip it
                    cmd = kid.cmdline()
                except psutil.Error:
                    continue
                if "run" in cmd and "--no-report" in cmd:
                    kid.suspend()
                    stopped["child"], stopped["t"] = kid, time.monotonic()
                    return
            time.sleep(0.002)

    events: list = []

    def on_event(ev):
        events.append((time.monotonic(), ev))
        if ev.what == "running" and ev.device == "cpu_0@local" and not stopped:
            threading.Thread(target=stop_child, daemon=True).start()
            cpu0_running.set()

    # the first job goes to cpu_0, ready first; cpu_1 takes the second, then the first again
    subs = make_subs(tmp_path / "subs", reference_model, ["a", "b"])
    config = cfg(tmp_path, small_holdout, time_limit_s=1.0, hang_margin_s=1.0)
    out = fleet.run_fleet(subs, config, on_event, pool=LocalPool(make),
                          devices=fleet.local_devices(2))
    assert "child" in stopped, [e.message for _, e in events]
    assert out.exit_code == 0 and all(j.status == "done" for j in out.jobs)
    victim = next(j for j in out.jobs if j.attempts[0].device == "cpu_0@local")
    first, second = victim.attempts
    assert first.outcome == "stuck" and second.device == "cpu_1@local"
    assert first.reason.startswith("stuck: no result 2 s after its start"), first
    found = next(t for t, e in events if e.what == "retry" and e.job == victim.name)
    detected_s = found - stopped["t"]
    print(f"stopped run: job queued again {detected_s:.2f} s after the stop")
    assert 1.5 < detected_s < 4.0, detected_s  # 2 s after the run's start, measured here
    stopped["child"].wait(timeout=10)  # killed, not left stopped
    assert {d["device"]: d["state"] for d in out.devices}["cpu_0@local"] != "lost"


@pytest.mark.slow
def test_real_runs_in_process_leave_no_device_report_and_the_head_can_report(
        tmp_path, small_holdout, reference_model):
    """Real `lpirc run` children on the in-process pool (no Ray): no report.html on the device
    unless --device-reports; `lpirc report OUT/runs/<job>` scores the job on the head."""
    subs = make_subs(tmp_path / "subs", reference_model, ["a"])
    out = fleet.run_fleet(subs, cfg(tmp_path, small_holdout), pool=LocalPool(),
                          devices=fleet.local_devices(1))
    assert out.exit_code == 0, out.jobs[0].reason
    attempt = tmp_path / "fleet" / "attempts" / "a" / "attempt-1" / "run"
    assert (attempt / "results.jsonl").is_file() and not (attempt / "report.html").exists()
    job = tmp_path / "fleet" / "runs" / "a"
    r = run_lpirc("report", job, "-o", tmp_path / "a.html")
    assert r.returncode == 0, r.stderr
    assert "not scored" not in r.stdout + r.stderr
    page = (tmp_path / "a.html").read_text()
    assert "not scored" not in page and "lpirc-onsite" in page
    score = json.loads((job / "score.json").read_text())
    assert f"{100 * score['top1']:.1f}" in page
    # asked for: the device writes its report
    again = fleet.run_fleet(make_subs(tmp_path / "subs2", reference_model, ["b"]),
                            cfg(tmp_path, small_holdout, device_reports=True),
                            pool=LocalPool(), devices=fleet.local_devices(1))
    assert again.exit_code == 0
    assert (tmp_path / "fleet" / "attempts" / "b" / "attempt-1" / "run" / "report.html").is_file()
