"""The WT310 driver, the sampler and metered runs, against the simulated WT310 of
tests/wt310_sim.py (a SCPI server on 127.0.0.1; no meter hardware is used or claimed)."""

from __future__ import annotations

import socket
import sys
from pathlib import Path

import pytest

pytest.importorskip("pyvisa")
pytest.importorskip("pyvisa_py")

sys.path.insert(0, str(Path(__file__).resolve().parent))
from wt310_sim import SimWT310  # noqa: E402
from wt310_vxi11 import Vxi11Server  # noqa: E402

from lpirc.energy import power_log_wh, read_power_log  # noqa: E402
from lpirc.errors import InputError, MeterError  # noqa: E402
from lpirc.meters import open_meter, parse_spec  # noqa: E402
from lpirc.meters.wt310 import parse_value  # noqa: E402

from conftest import run_lpirc  # noqa: E402


@pytest.fixture
def sim():
    made = []

    def make(**kw) -> SimWT310:
        s = SimWT310(**kw)
        s.start()
        made.append(s)
        return s

    yield make
    for s in made:
        s.stop()


@pytest.fixture(scope="module")
def long_holdout(tmp_path_factory, small_holdout) -> Path:
    """The small holdout's images 15 times over (hard links, 600 images): a run long enough
    (a few seconds) for a fault to land in its middle."""
    import os

    out = tmp_path_factory.mktemp("holdout") / "long"
    out.mkdir()
    rows = (small_holdout / "ground_truth.csv").read_text().splitlines()
    lines = [rows[0]]
    for k in range(15):
        for row in rows[1:]:
            name, label = row.split(",")
            os.link(small_holdout / name, out / f"{k:02d}_{name}")
            lines.append(f"{k:02d}_{name},{label}")
    (out / "ground_truth.csv").write_text("\n".join(lines) + "\n")
    return out


def _wait_received(s: SimWT310, unit: str, timeout: float = 10.0) -> None:
    """Wait (bounded) until the simulation has handled ``unit``: a message written just
    before the connection closed is handled in the simulation's own thread."""
    import time

    end = time.monotonic() + timeout
    while unit not in s.received and time.monotonic() < end:
        time.sleep(0.01)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# --- the driver -------------------------------------------------------------------------------


def test_driver_identifies_sets_up_and_reads(sim):
    s = sim(watts=42.0, volts=230.0, serial="C2TEST123")
    m = open_meter("wt310:" + s.resource, timeout_s=1.0)
    try:
        assert (m.info.model, m.info.serial, m.info.firmware) == ("WT310", "C2TEST123", "F1.03")
        m.configure(0.1, "150,1")
        assert m.rate_s == 0.1
        r = m.read()
        assert r.valid and r.watts == pytest.approx(42.0) and r.volts == pytest.approx(230.0)
        assert r.ranges.watts == pytest.approx(150.0) and not r.ranges.auto
        assert m.accuracy().describe().startswith("+-(0.1% of reading + 0.1% of range), 45 Hz")
    finally:
        m.close()
    _wait_received(s, ":COMMunicate:REMote OFF")  # the last message, handled in the sim's thread
    sent = "\n".join(s.received)
    assert ":NUMeric:NORMal:ITEM3 P,1" in sent and ":RATE 100MS" in sent
    assert ":INPut:VOLTage:RANGe 150V" in sent and ":COMMunicate:REMote OFF" in sent


def test_short_and_long_mnemonics_and_the_error_queue(sim):
    s = sim()
    m = open_meter("wt310:" + s.resource, timeout_s=1.0)
    try:
        m.write(":NUM:NORM:ITEM3 P,1")
        assert m.query(":NUMERIC:NORMAL:ITEM3?") == m.query(":num:item3?") == "P,1"
        assert m.errors() == []
        m.write(":NUMB:ITEM3 P,1")  # NUMB is neither NUMeric's short nor its long form
        m.write(":FOO:BAR 1")
        assert m.errors() == ["113 Undefined header (x2)"]
        m.write(":INPut:VOLTage:RANGe 12V")
        assert m.errors() and m.errors() == []  # drained by the first call
    finally:
        m.close()


@pytest.mark.parametrize("text, value, flagged", [
    ("50.123E+00", 50.123, False), ("-1.5E-03", -0.0015, False), ("NAN", None, False),
    ("INF", None, True), ("-INF", None, True), ("9.9E+37", None, True), ("9.91E+37", None, True),
])
def test_numeric_error_data(text, value, flagged):
    assert parse_value(text) == (value, flagged)


def test_absent_meter_and_bad_address_are_one_line():
    with pytest.raises(MeterError, match=r"cannot open|no answer"):
        open_meter(f"wt310:TCPIP::127.0.0.1::{_free_port()}::SOCKET", timeout_s=0.5)
    with pytest.raises(MeterError, match="unknown meter kind 'foo'"):
        parse_spec("foo:USB0::1::2::INSTR")
    with pytest.raises(MeterError, match="expected KIND:RESOURCE"):
        parse_spec("wt310")
    # a new user's typos: an empty port, the '::' lost (PyVISA's own message named an attribute)
    with pytest.raises(MeterError, match="an empty field in the VISA resource name"):
        parse_spec("wt310:TCPIP::127.0.0.1::::SOCKET")
    with pytest.raises(MeterError, match="cannot open \\(not a VISA resource name PyVISA knows"):
        open_meter("wt310:USB00x0B210x0025C2SIMYAMLINSTR", timeout_s=0.5)


def test_meter_settings_are_checked_before_the_run(tmp_path, reference_model, small_holdout):
    from lpirc.settings import resolve_settings

    base = {"model": reference_model, "holdout": small_holdout, "meter": "wt310:TCPIP::x::INSTR"}
    for extra, msg in (({"meter_rate_s": 0.3}, "update interval 0.3 s"),
                       ({"meter_ranges": "100,1"}, "100 V is not a WT310 range"),
                       ({"meter_ranges": "lots"}, "expected auto, keep or VOLTS,AMPS"),
                       ({"meter": "nope"}, "expected KIND:RESOURCE")):
        with pytest.raises(InputError, match=msg):
            resolve_settings({**base, **extra}, set(extra))


# --- metered runs (Python API) ----------------------------------------------------------------


def _stored_wh(wh: float, watts: float):
    """``wh`` as the manifest can hold it: its energy is rounded to 1e-9 Wh and its window's
    edges to 1e-6 s (so the window read back is up to 1e-6 s off the one integrated), which on
    a short run (0.07 s, 1e-4 Wh) is more than rel=1e-5 alone allows."""
    return pytest.approx(wh, rel=1e-5, abs=0.5e-9 + watts * 1e-6 / 3600.0)


def _run(tmp_path, model, holdout, sim_meter, **extra):
    from lpirc.runner import run
    from lpirc.settings import resolve_settings

    values = {"model": model, "holdout": holdout, "out": tmp_path / "run", "workers": 1,
              "quiet": True, "meter": "wt310:" + sim_meter.resource, **extra}
    return run(resolve_settings(values, set(values)), progress=False)


@pytest.mark.slow
def test_constant_power_gives_power_times_wall_time(tmp_path, reference_model, small_holdout, sim):
    s = sim(watts=50.0, serial="C2CONST01")
    out = _run(tmp_path, reference_model, small_holdout, s)
    e = out.manifest["energy"]
    assert e["source"] == "measured"
    assert e["method"].startswith("simulated WT310 C2CONST01, 0.1 s, ")
    start, end = e["meter"]["window"]
    # the window is the run's: from before the workers start to after the last answer
    assert end - start == pytest.approx(out.manifest["wall_time_s"], abs=0.1)
    assert end - start == pytest.approx(e["duration_s"], abs=0.002)
    assert e["wh"] == _stored_wh(50.0 * (end - start) / 3600.0, 50.0)
    assert e["uncertainty_wh"] == pytest.approx((0.001 * 50 + 0.001 * 150) * (end - start) / 3600,
                                                rel=1e-3)  # auto range stays at 150 V x 1 A
    # the meter's WH steps once per update: at most half an interval's energy off at each edge
    assert e["meter"]["integrator"]["wh"] == pytest.approx(e["wh"], abs=50.0 * 0.1 / 3600)
    assert ("meter ranging run (auto range): the meter chose up to 150 V and 1 A; measure with "
            "--meter-ranges 150,1") in out.notes
    # the log is a --power-log file: the same figure read back by the same rule
    log = read_power_log(out.out_dir / "power_log.csv")
    assert power_log_wh(log, start, end)[0] == _stored_wh(e["wh"], 50.0)
    assert out.score["energy_wh"] == e["wh"] and out.score["source"]["energy_wh"] == "measured"


@pytest.mark.slow
def test_square_wave_within_the_sampling_error(tmp_path, reference_model, long_holdout, sim):
    s = sim(watts=80.0, low_watts=20.0, pattern="square", period_s=1.0)
    out = _run(tmp_path, reference_model, long_holdout, s)
    e = out.manifest["energy"]
    assert e["source"] == "measured", e["method"]
    start, end = e["meter"]["window"]
    truth = s.energy_j(start, end) / 3600.0
    # readings are update-interval means placed at the middle of their interval (+-0.05 s):
    # at most half an interval's swing (60 W x 0.05 s) at each of the window's edges and at
    # each step of the square wave inside it
    steps = 2 * (end - start) / 1.0
    assert abs(e["wh"] - truth) <= 60.0 * 0.05 * (2 + steps + 1) / 3600.0


@pytest.mark.slow
@pytest.mark.parametrize("fault, holdout_kind, status, says", [
    ("overrange", "small", "over-range", "over range in"),
    ("errors", "small", "errors", "reported errors (390 Overrun error"),
    ("silent", "long", "partial", "partial, not a measurement of the run"),
])
def test_meter_faults_fall_back_and_say_why(tmp_path, reference_model, small_holdout,
                                            long_holdout, sim, fault, holdout_kind, status, says):
    """Through `lpirc run --meter` (a real process): the run completes, every image answered,
    and the energy is the estimate with what the meter did."""
    import json

    s = sim(fault=fault, fault_after_reads=0 if holdout_kind == "small" else 3)
    holdout = small_holdout if holdout_kind == "small" else long_holdout
    r = lpirc_cmd("run", "--model", str(reference_model), "--holdout", str(holdout), "--out",
                  str(tmp_path / "run"), "--quiet", "--no-report", "--workers", "1",
                  "--meter", "wt310:" + s.resource)
    assert r.returncode == 0, r.stderr
    m = json.loads((tmp_path / "run" / "manifest.json").read_text())
    e = m["energy"]
    assert m["status"] == "complete" and m["images_answered"] == m["holdout"]["image_count"]
    assert e["source"] == "estimated" and e["meter"]["status"] == status
    assert e["method"].startswith("CPU time x ") and says in e["method"], e["method"]
    assert e["uncertainty_wh"] is None and e["wh"] > 0
    energy_line = next(ln for ln in r.stdout.splitlines() if ln.strip().startswith("energy"))
    assert "(estimated, CPU time x " in energy_line and says in energy_line


@pytest.mark.slow
def test_disconnect_and_back_is_a_gap_not_a_measurement(tmp_path, reference_model, long_holdout, sim):
    import json

    s = sim(watts=30.0, fault="disconnect", fault_after_reads=3, down_s=0.3)
    r = lpirc_cmd("run", "--model", str(reference_model), "--holdout", str(long_holdout),
                  "--out", str(tmp_path / "run"), "--quiet", "--no-report", "--workers", "1",
                  "--meter", "wt310:" + s.resource)
    assert r.returncode == 0, r.stderr
    m = json.loads((tmp_path / "run" / "manifest.json").read_text())
    e = m["energy"]
    assert m["status"] == "complete"
    if e["meter"]["status"] == "partial":  # a slow machine: the run ended before the meter was back
        pytest.skip("the run ended before the meter came back")
    assert e["meter"]["status"] == "gap" and e["source"] == "estimated"
    assert "gap(s) in the readings" in e["method"] and "not a full measurement" in e["method"]
    # the gap is counted inside the run, and a bridged gap claims no meter-spec uncertainty
    run_s = e["meter"]["window"][1] - e["meter"]["window"][0]
    assert all(0 < g["s"] <= run_s + 1e-6 for g in e["meter"]["gaps"]), (e["meter"]["gaps"], run_s)
    assert e["uncertainty_wh"] is None and "meter spec" not in e["method"], e["method"]
    assert any("reconnected" in ev for ev in e["meter"]["events"])
    text = (tmp_path / "run" / "power_log.csv").read_text()
    assert "meter: lost" in text and "meter: reconnected" in text


@pytest.mark.slow
def test_absent_meter_costs_nothing_and_says_so(tmp_path, reference_model, small_holdout):
    from lpirc.runner import run
    from lpirc.settings import resolve_settings

    values = {"model": reference_model, "holdout": small_holdout, "out": tmp_path / "run",
              "workers": 1, "quiet": True,
              "meter": f"wt310:TCPIP::127.0.0.1::{_free_port()}::SOCKET"}
    out = run(resolve_settings(values, set(values)), progress=False)
    e = out.manifest["energy"]
    assert out.status == "complete" and out.score["top1"] > 0
    assert e["source"] == "estimated" and e["meter"]["status"] == "absent"
    assert "gave no measurement (meter " in e["method"]
    assert "Connection refused" in e["method"] or "cannot open" in e["method"]
    assert any(n.startswith("meter: meter ") for n in out.notes)


@pytest.mark.slow
def test_meter_plugged_in_late_is_partial(tmp_path, reference_model, long_holdout):
    import threading

    s = SimWT310(watts=40.0)
    s.port = _free_port()
    threading.Timer(0.8, s.start).start()  # absent when the run starts, there a moment later
    try:
        out = _run(tmp_path, reference_model, long_holdout, s)
    finally:
        s.stop()
    e = out.manifest["energy"]
    assert out.status == "complete" and e["source"] == "estimated"
    if e["meter"]["readings"] == 0:
        pytest.skip("the run ended before the meter was tried again")
    assert e["meter"]["status"] == "partial" and "covered " in e["method"]
    assert any("reconnected" in ev for ev in e["meter"]["events"])
    assert any(n.startswith("meter: ") for n in out.notes)


@pytest.mark.slow
def test_idle_baseline_is_subtracted_by_lpcvc_2020(tmp_path, reference_model, small_holdout, sim):
    import json

    from lpirc.meters.measure import measure_idle
    from lpirc.meters.sampler import MeterConfig

    s = sim(watts=12.0)
    out = _run(tmp_path, reference_model, small_holdout, s, idle_seconds=0.5, rules="lpcvc-2020")
    idle = out.manifest["energy"]["idle"]
    assert idle["watts"] == pytest.approx(12.0) and idle["from"] == "measured before the run"
    assert out.score["idle_watts"] == pytest.approx(12.0)
    assert "idle for 0.5 s" in out.score["source"]["idle_watts"]

    baseline = measure_idle(MeterConfig("wt310:" + s.resource), 0.5)
    (tmp_path / "idle.json").write_text(json.dumps(baseline))
    s.watts = 30.0  # the device now works: 18 W above idle
    out = _run(tmp_path / "2", reference_model, small_holdout, s,
               idle_baseline=tmp_path / "idle.json", rules="lpcvc-2020")
    assert out.manifest["energy"]["idle"]["from"] == "file idle.json"
    net = out.score["net_energy_wh"]
    assert net == pytest.approx(18.0 * out.manifest["wall_time_s"] / 3600.0, rel=0.1)
    assert out.score["score"] == pytest.approx(out.score["top1"] / net)


def test_bad_idle_baseline_file_is_refused_before_the_run(tmp_path, reference_model,
                                                          small_holdout):
    from lpirc.runner import run
    from lpirc.settings import resolve_settings

    (tmp_path / "idle.json").write_text('{"watts": "lots"}')
    values = {"model": reference_model, "holdout": small_holdout, "out": tmp_path / "run",
              "idle_baseline": tmp_path / "idle.json"}
    with pytest.raises(InputError, match="idle.json: idle baseline needs 'watts'"):
        run(resolve_settings(values, set(values)), progress=False)
    assert not (tmp_path / "run").exists()


# --- the command line (real processes) --------------------------------------------------------


def lpirc_cmd(*args: str, timeout: float = 120):
    return run_lpirc(*args, cwd=None, timeout=timeout)


@pytest.mark.slow
def test_lpirc_run_meter_end_to_end(tmp_path, reference_model, small_holdout, sim):
    import json

    s = sim(watts=25.0, serial="C2E2E0042")
    r = lpirc_cmd("run", "--model", str(reference_model), "--holdout", str(small_holdout),
                  "--out", str(tmp_path / "run"), "--quiet", "--no-report", "--workers", "1",
                  "--meter", "wt310:" + s.resource, "--meter-ranges", "30,1")
    assert r.returncode == 0, r.stderr
    energy_line = next(ln for ln in r.stdout.splitlines() if ln.strip().startswith("energy"))
    assert "(measured, simulated WT310 C2E2E0042, 0.1 s, " in energy_line, energy_line
    e = json.loads((tmp_path / "run" / "manifest.json").read_text())["energy"]
    start, end = e["meter"]["window"]
    assert e["wh"] == _stored_wh(25.0 * (end - start) / 3600.0, 25.0)
    assert e["meter"]["ranges"][0] == {"volts": 30.0, "amps": 1.0, "watts": 30.0, "auto": False}
    assert e["meter"]["info"]["firmware"] == "F1.03"
    assert "IM WT310-17EN" in e["meter"]["info"]["driver"] and "simulation" in e["meter"]["info"]["driver"]
    assert e["uncertainty_wh"] == pytest.approx((0.001 * 25 + 0.001 * 30) * (end - start) / 3600,
                                                rel=1e-3)
    assert ":INPut:CURRent:RANGe 1A" in s.received
    # how the readings were timed: one per data update of the meter, none repeated
    sync = e["meter"]["sync"]
    assert sync["mode"] == "update" and ":COMMunicate:WAIT 1" in sync["how"], sync
    assert sync["duplicates_skipped"] == 0 and sync["updates_read"] >= 3, sync
    dupes, _ = _dupes_and_misses(s.served)
    assert dupes == 0, s.served


@pytest.mark.slow
def test_bad_meter_options_are_one_line(tmp_path, reference_model, small_holdout):
    r = lpirc_cmd("run", "--model", str(reference_model), "--holdout", str(small_holdout),
                  "--out", str(tmp_path / "run"), "--meter", "wt999:USB0::1::INSTR")
    assert r.returncode == 5 and r.stderr.strip() == (
        "lpirc: error: meter 'wt999:USB0::1::INSTR': unknown meter kind 'wt999' (known: wt310)")
    assert not (tmp_path / "run").exists()
    r = lpirc_cmd("meter", "read", "wt310:TCPIP::127.0.0.1::1::SOCKET", "--ranges", "100,1")
    assert r.returncode == 2 and "100 V is not a WT310 range" in r.stderr
    r = lpirc_cmd("meter", "read", f"wt310:TCPIP::127.0.0.1::{_free_port()}::SOCKET")
    assert r.returncode == 7 and len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert r.stderr.startswith("lpirc: error: meter TCPIP::127.0.0.1::")


@pytest.mark.slow
def test_meter_read_log_and_idle(tmp_path, sim):
    import json

    s = sim(watts=7.5, volts=5.0, serial="C2BENCH01", mode="DC")
    m = "wt310:" + s.resource
    r = lpirc_cmd("meter", "read", m, "--ranges", "15,2")
    assert r.returncode == 0, r.stderr
    lines = dict(ln.split(None, 1) for ln in r.stdout.splitlines())
    assert lines["meter"].startswith("YOKOGAWA WT310, serial C2BENCH01, firmware F1.03")
    # DC: 0.1% of 7.5 W + 0.2% of the 15 V x 2 A range = 0.0675 W
    assert lines["power"] == "7.5 W +- 0.0675 W (meter spec)"
    assert lines["ranges"] == "15 V, 2 A (fixed)" and lines["errors"] == "none"
    assert lines["accuracy"] == "+-(0.1% of reading + 0.2% of range), DC (IM WT310-02EN 7.3.2)"

    r = lpirc_cmd("meter", "log", m, "--out", str(tmp_path / "m.csv"), "--seconds", "1")
    assert r.returncode == 0 and r.stdout.startswith(f"{tmp_path / 'm.csv'}: "), r.stderr
    log = read_power_log(tmp_path / "m.csv")
    assert 5 <= len(log) <= 14 and set(log[:, 1]) == {7.5}

    r = lpirc_cmd("meter", "idle", m, "--seconds", "1", "--out", str(tmp_path / "idle.json"))
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith("idle power 7.5 W +- 0.0") and "idle for 1.0 s" in r.stdout
    base = json.loads((tmp_path / "idle.json").read_text())
    assert base["watts"] == pytest.approx(7.5) and base["meter"]["info"]["serial"] == "C2BENCH01"


def _dupes_and_misses(served: list[int]) -> tuple[int, int]:
    """(updates read twice, updates never read) between the first and last update read."""
    steps = [b - a for a, b in zip(served, served[1:])]
    return sum(1 for d in steps if d == 0), sum(d - 1 for d in steps if d > 1)


@pytest.mark.slow
@pytest.mark.parametrize("sync", ["update", "poll"])
def test_meter_log_reads_each_update_once(tmp_path, sim, sync):
    """Through `lpirc meter log`: a meter whose updates come every 0.13 s on the host's clock
    (its :RATE is 0.1 s, its clock 30% slow: an exaggerated drift). Synchronised, every update
    is read once (none twice; misses only where this host was late by a whole interval);
    polled at 0.1 s on the host's clock, updates are read twice (the old sampler's fault)."""
    s = sim(watts=9.0, update_skew=0.3)
    out = tmp_path / "m.csv"
    r = lpirc_cmd("meter", "log", "wt310:" + s.resource, "--out", str(out), "--seconds", "3",
                  "--sync", sync)
    assert r.returncode == 0, r.stderr
    values = [u for u in s.received if "VAL" in u.upper()]
    dupes, misses = _dupes_and_misses(s.served)
    log = read_power_log(out)
    if sync == "poll":
        assert "polled, not synchronised" in r.stdout
        # 0.1 s polls on 0.13 s updates: a repeat every ~4 polls (a late poll: a miss)
        assert dupes + misses >= 1, s.served
        return
    assert "one per data update (" in r.stdout, r.stdout
    assert ":STATus:FILTer1 FALL" in s.received and ":COMMunicate:WAIT 1" in s.received
    assert len(s.served) >= 10 and dupes == 0, s.served
    assert misses <= len(s.served) // 4, s.served  # a loaded 2-core machine may be late
    assert len(log) == len(values) == len(s.served)  # every update read is one row


@pytest.mark.slow
def test_meter_that_does_not_wait_is_not_read_twice(tmp_path, sim):
    """A bridge that answers :COMMunicate:WAIT at once: the meter's EESR says whether an update
    ended since the last reading; readings without one are skipped, counted, never logged."""
    s = sim(watts=9.0, fault="nowait")
    out = tmp_path / "m.csv"
    r = lpirc_cmd("meter", "log", "wt310:" + s.resource, "--out", str(out), "--seconds", "2")
    assert r.returncode == 0, r.stderr
    skipped = int(r.stdout.split(" repeated and skipped")[0].rsplit(" ", 1)[1])
    assert skipped >= 1, r.stdout  # read every half interval: about every other one repeats
    text = out.read_text()
    assert text.count("no new data update") == skipped
    assert len(read_power_log(out)) == len(s.served) - skipped


@pytest.mark.slow
@pytest.mark.parametrize("how", ["SIGINT", "SIGINT-background", "SIGTERM"])
def test_meter_log_until_ctrl_c(tmp_path, sim, how):
    """Ctrl-C, or a scheduler's SIGTERM, ends the log: exit 0, the summary, every row whole.
    Ctrl-C also for a logger started as a shell's background job (SIGINT ignored for it, as for
    a suite run under nohup or `&`: it was ignored and the logger ran on). The logger never
    outlives a failed check."""
    import signal
    import subprocess
    import time

    s = sim(watts=3.0)
    out = tmp_path / "m.csv"
    background = how.endswith("-background")
    p = subprocess.Popen([sys.executable, "-m", "lpirc", "meter", "log", "wt310:" + s.resource,
                          "--out", str(out)], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                         text=True, preexec_fn=(lambda: signal.signal(signal.SIGINT, signal.SIG_IGN))
                         if background else None)
    try:
        deadline = time.monotonic() + 120  # start-up on a loaded machine included
        while time.monotonic() < deadline and p.poll() is None and (
                not out.exists() or out.read_text().count("\n") < 8):
            time.sleep(0.1)
        assert p.poll() is None and out.exists() and out.read_text().count("\n") >= 8, \
            "the log never got going"
        p.send_signal(getattr(signal, how.split("-")[0]))
        stdout, stderr = p.communicate(timeout=60)
    finally:
        if p.poll() is None:
            p.kill()
            p.communicate()
    assert p.returncode == 0, stderr
    assert "(Ctrl-C stops)" in stderr and stdout.startswith(f"{out}: ")
    log = read_power_log(out)  # complete: every row whole
    assert len(log) >= 6 and set(log[:, 1]) == {3.0}


@pytest.mark.slow
def test_pyvisa_sim_definition_on_usb(tmp_path, reference_model, small_holdout):
    """`--visa-library file.yaml@sim`: pyvisa-sim's fixed answers, on a USB resource name that
    `lpirc meter list` recognises by its vendor and product IDs."""
    import json

    pytest.importorskip("pyvisa_sim")
    lib = str(Path(__file__).resolve().parent / "wt310_sim.yaml") + "@sim"
    r = lpirc_cmd("meter", "list", "--visa-library", lib)
    assert r.returncode == 0 and r.stdout.startswith("wt310  USB0::0x0B21::0x0025::C2SIMYAML::"), r.stdout
    res = "wt310:USB0::0x0B21::0x0025::C2SIMYAML::INSTR"
    r = lpirc_cmd("run", "--model", str(reference_model), "--holdout", str(small_holdout), "--out",
                  str(tmp_path / "run"), "--quiet", "--no-report", "--workers", "1", "--meter",
                  res, "--visa-library", lib, "--meter-ranges", "15,2")
    assert r.returncode == 0, r.stderr
    e = json.loads((tmp_path / "run" / "manifest.json").read_text())["energy"]
    assert e["source"] == "measured" and e["method"].startswith("simulated WT310 C2SIMYAML, 0.1 s, ")
    start, end = e["meter"]["window"]
    assert e["wh"] == _stored_wh(5.0 * (end - start) / 3600.0, 5.0)
    assert e["meter"]["accuracy"]["signal"] == "DC"


@pytest.mark.slow
def test_meter_post_meters_a_referee_session(tmp_path, reference_model, small_holdout, sim):
    """LPIRC's way: the meter's host posts to the referee's /powermeter with the meter account
    while a device runs a session; the referee scores that session with the metered energy."""
    import json
    import subprocess
    import time

    from referee_helpers import Referee, wait_for

    s = sim(watts=20.0)
    db = tmp_path / "r.sqlite"
    for args in (("alpha", "--password", "pw"), ("wt310", "--password", "mpw", "--meter")):
        assert lpirc_cmd("referee", "add-team", args[0], "--db", str(db), *args[1:]).returncode == 0
    with Referee(small_holdout, db, time_limit_s=120) as ref:
        post = subprocess.Popen(
            [sys.executable, "-m", "lpirc", "meter", "post", "wt310:" + s.resource, "--referee",
             ref.url, "--user", "wt310", "--password", "mpw", "--team", "alpha", "--seconds", "12"],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        time.sleep(2.0)  # readings before the session starts
        r = lpirc_cmd("run", "--model", str(reference_model), "--referee", ref.url, "--user",
                      "alpha", "--password", "pw", "--out", str(tmp_path / "run"), "--quiet",
                      "--no-report", "--workers", "1")
        assert r.returncode == 0, r.stderr
        out, err = post.communicate(timeout=60)
        assert post.returncode == 0, err
        assert "readings posted to" in out and "posting simulated WT310 C2SIM0001 to" in err

        def scored():
            rr = lpirc_cmd("referee", "results", "--db", str(db), "--format", "json")
            rows = json.loads(rr.stdout) if rr.returncode == 0 else []
            return rows if rows and rows[0]["energy_source"] == "metered" else None

        row = wait_for(scored, timeout=30)[0]
    assert row["energy_wh"] == pytest.approx(20.0 * row["wall_time_s"] / 3600, rel=0.02)


@pytest.mark.slow
def test_the_simulation_runs_as_a_process_for_a_new_user(tmp_path):
    """docs/meter.md's "Without a meter": `python tests/wt310_sim.py` prints the meter's address
    on its first line, and `lpirc meter read` and `lpirc run --meter` on that address measure
    its power (50 W x the run's window)."""
    import json
    import subprocess

    p = subprocess.Popen([sys.executable, str(Path(__file__).parent / "wt310_sim.py"), "--watts", "50"],
                         stdout=subprocess.PIPE, text=True)
    try:
        spec = p.stdout.readline().strip()
        assert spec.startswith("wt310:TCPIP::127.0.0.1::") and spec.endswith("::SOCKET"), spec
        r = run_lpirc("meter", "read", spec)
        assert r.returncode == 0, r.stderr
        assert "serial C2SIM0001" in r.stdout and "50 W" in r.stdout, r.stdout
        r = run_lpirc("run", "--meter", spec, "--out", tmp_path / "run", "--no-report")
        assert r.returncode == 0, r.stderr
        energy = json.loads((tmp_path / "run" / "manifest.json").read_text())["energy"]
        a, b = energy["meter"]["window"]
        assert energy["source"] == "measured" and "simulated WT310 C2SIM0001" in energy["method"]
        assert energy["wh"] == pytest.approx(50 * (b - a) / 3600, rel=1e-4)
    finally:
        p.terminate()
        assert p.wait(timeout=10) == 0


# --- Ethernet: VXI-11 through pyvisa-py ---------------------------------------------------------


@pytest.mark.slow
def test_vxi11_resource_through_pyvisa_py(tmp_path, reference_model, small_holdout):
    """The meter's Ethernet port speaks VXI-11 (TCPIP::<address>::INSTR): `lpirc meter read`
    and `lpirc run --meter` through pyvisa-py's VXI-11 client against the simulation served
    over VXI-11 (its port in the name, as there is no portmapper on 127.0.0.1)."""
    import json

    s = SimWT310(watts=21.0, serial="C2VXI0042")
    server = Vxi11Server(s)
    server.start()
    try:
        spec = "wt310:" + server.resource
        r = lpirc_cmd("meter", "read", spec, "--ranges", "30,1")
        assert r.returncode == 0, r.stderr
        assert "serial C2VXI0042" in r.stdout and "21 W" in r.stdout, r.stdout
        r = lpirc_cmd("run", "--model", str(reference_model), "--holdout", str(small_holdout),
                      "--out", str(tmp_path / "run"), "--quiet", "--no-report", "--workers", "1",
                      "--meter", spec)
        assert r.returncode == 0, r.stderr
    finally:
        server.stop()
    e = json.loads((tmp_path / "run" / "manifest.json").read_text())["energy"]
    start, end = e["meter"]["window"]
    assert e["source"] == "measured" and e["method"].startswith("simulated WT310 C2VXI0042, 0.1 s, ")
    assert e["wh"] == _stored_wh(21.0 * (end - start) / 3600.0, 21.0)
    assert e["meter"]["info"]["resource"] == server.resource
    assert e["meter"]["sync"]["mode"] == "update" and _dupes_and_misses(s.served)[0] == 0


def test_vxi11_without_a_meter_is_one_line():
    """TCPIP::<address>::INSTR with nothing there (no portmapper on 127.0.0.1): exit 7, one
    line naming the address."""
    r = lpirc_cmd("meter", "read", "wt310:TCPIP::127.0.0.1::INSTR", timeout=60)
    assert r.returncode == 7 and len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert r.stderr.startswith("lpirc: error: meter TCPIP::127.0.0.1::INSTR: "), r.stderr


@pytest.mark.slow
def test_the_simulation_serves_vxi11_as_a_process():
    """docs/meter.md: `python tests/wt310_sim.py --vxi11` prints a TCPIP::127.0.0.1,PORT::INSTR
    address that `lpirc meter read` opens through pyvisa-py's VXI-11 client."""
    import subprocess

    p = subprocess.Popen([sys.executable, str(Path(__file__).parent / "wt310_sim.py"), "--vxi11",
                          "--watts", "12"], stdout=subprocess.PIPE, text=True)
    try:
        spec = p.stdout.readline().strip()
        assert spec.startswith("wt310:TCPIP::127.0.0.1,") and spec.endswith("::INSTR"), spec
        r = run_lpirc("meter", "read", spec, timeout=60)
        assert r.returncode == 0, r.stderr
        assert "serial C2SIM0001" in r.stdout and "12 W" in r.stdout, r.stdout
    finally:
        p.terminate()
        assert p.wait(timeout=10) == 0


# --- a new user's defects: bad --out, a meter lost mid-log, provenance of every figure ----------


@pytest.fixture
def sim_process():
    """``tests/wt310_sim.py ARGS`` as a real process on 127.0.0.1: its address (the first line
    it prints). Terminated (bounded) after the test."""
    import subprocess

    procs = []

    def start(*args: str) -> str:
        p = subprocess.Popen([sys.executable, str(Path(__file__).parent / "wt310_sim.py"), *args],
                             stdout=subprocess.PIPE, text=True)
        procs.append(p)
        spec = p.stdout.readline().strip()
        assert spec.startswith("wt310:TCPIP::127.0.0.1::"), spec
        return spec

    yield start
    for p in procs:
        p.terminate()
        try:
            p.wait(timeout=10)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()


@pytest.mark.slow
def test_out_that_cannot_be_written_is_refused_before_measuring(tmp_path, sim_process):
    """`lpirc meter log/idle --out` a missing folder, or a folder: one line naming the file and
    the problem, exit 5 (bad input), before the meter is read (an idle of 600 s would outlast
    the subprocess's timeout)."""
    spec = sim_process("--watts", "5")
    cases = [
        (("log", "--out", tmp_path / "nope" / "x.csv", "--seconds", "600"),
         f"{tmp_path / 'nope' / 'x.csv'}: cannot write the meter log: the folder "
         f"{tmp_path / 'nope'} does not exist"),
        (("log", "--out", tmp_path, "--seconds", "600"),
         f"{tmp_path}: cannot write the meter log: it is a folder (give a file name)"),
        (("idle", "--out", tmp_path / "nope" / "x.json", "--seconds", "600"),
         f"{tmp_path / 'nope' / 'x.json'}: cannot write the idle baseline: the folder "
         f"{tmp_path / 'nope'} does not exist"),
        (("idle", "--out", tmp_path, "--seconds", "600"),
         f"{tmp_path}: cannot write the idle baseline: it is a folder (give a file name)"),
    ]
    for args, says in cases:
        r = run_lpirc("meter", args[0], spec, *args[1:], timeout=90)
        assert r.returncode == 5 and r.stderr.strip() == f"lpirc: error: {says}", r.stderr
        assert r.stdout == ""
    assert not (tmp_path / "nope").exists()


@pytest.mark.slow
def test_meter_lost_during_the_log_keeps_its_readings_and_exits_7(tmp_path, sim_process):
    """A meter that stops answering after 5 readings of a 3 s log: the 5 readings are written,
    the summary says it was lost, when, and the updates not read; exit 7 (docs/meter.md)."""
    spec = sim_process("--watts", "9", "--fault", "silent", "--fault-after-reads", "5")
    out = tmp_path / "m.csv"
    r = run_lpirc("meter", "log", spec, "--out", out, "--seconds", "3", timeout=120)
    assert r.returncode == 7, (r.stdout, r.stderr)
    err = r.stderr.strip()
    assert len(err.splitlines()) == 1 and err.startswith(
        "lpirc: error: meter simulated WT310 C2SIM0001 stopped answering (found gone "), err
    assert err.endswith(f"the 5 readings taken are in {out}"), err
    summary = r.stdout.strip()
    assert summary.startswith(f"{out}: 5 readings of simulated WT310 C2SIM0001 at 0.1 s, "), summary
    assert "meter lost after its reading at " in summary
    assert "did not answer again before the end: about " in summary
    not_read = int(summary.split("about ")[1].split(" update(s) not read")[0])
    missed = int(summary.split("one per data update (")[1].split(" update(s) missed")[0])
    # lost for the last ~2.5 s of 3 at 0.1 s: ~25 updates (a loaded machine starts late)
    assert 8 <= not_read <= 40 and missed >= not_read, summary
    log = read_power_log(out)
    assert len(log) == 5 and set(log[:, 1]) == {9.0}
    assert "meter: lost: " in out.read_text()


@pytest.mark.slow
def test_simulated_meter_is_labelled_in_read_manifest_summary_and_report(tmp_path, sim_process):
    """A figure from the simulation never passes for a metered one: `meter read`, `run`'s
    summary line, manifest.json and the report say "simulated"."""
    import json

    spec = sim_process("--watts", "40")
    r = run_lpirc("meter", "read", spec)
    assert r.returncode == 0, r.stderr
    assert r.stdout.splitlines()[0].endswith(", SIMULATED (not a meter)"), r.stdout
    r = run_lpirc("run", "--meter", spec, "--out", tmp_path / "run", "--workers", "1")
    assert r.returncode == 0, r.stderr
    energy_line = next(ln for ln in r.stdout.splitlines() if ln.strip().startswith("energy"))
    assert "(measured, simulated WT310 C2SIM0001, 0.1 s, " in energy_line, energy_line
    e = json.loads((tmp_path / "run" / "manifest.json").read_text())["energy"]
    assert e["source"] == "measured" and e["method"].startswith("simulated WT310 C2SIM0001, ")
    assert e["meter"]["info"]["simulated"] is True
    reports = list((tmp_path / "run").glob("*.html"))
    assert reports and "simulated WT310 C2SIM0001" in reports[0].read_text()


@pytest.mark.slow
def test_how_readings_were_synchronised_is_recorded(tmp_path, sim_process):
    """`meter read` says how it read; the `meter log` file says, in a # line that the
    --power-log reader skips, which meter and which synchronisation it was logged with."""
    spec = sim_process("--watts", "6")
    for sync, says in (("poll", "sync       polled: read now, not synchronised with the meter's "
                                "updates"),
                       ("update", "sync       one data update, waited for (:COMMunicate:WAIT)")):
        r = run_lpirc("meter", "read", spec, "--sync", sync)
        assert r.returncode == 0 and says in r.stdout.splitlines(), r.stdout
        out = tmp_path / f"{sync}.csv"
        r = run_lpirc("meter", "log", spec, "--out", out, "--seconds", "1", "--sync", sync)
        assert r.returncode == 0, r.stderr
        head = out.read_text().splitlines()[1]
        assert head.startswith("# meter: simulated WT310 C2SIM0001, firmware F1.03; interval "
                               f"0.1 s; sync (requested) {sync}: "), head
        assert len(read_power_log(out)) >= 3
    r = run_lpirc("run", "--out", tmp_path / "run", "--power-log", tmp_path / "poll.csv",
                  "--no-report", "--workers", "1")
    assert r.returncode == 0, r.stderr  # the reader takes the file (coverage aside)


@pytest.mark.slow
def test_instrument_that_cannot_signal_updates_is_not_called_synchronised(tmp_path):
    """pyvisa-sim (tests/wt310_sim.yaml) answers every :COMMunicate:WAIT at once with EESR 1:
    about two readings per 0.1 s interval. The summary and the log say they are not one per
    data update (they are as polled)."""
    pytest.importorskip("pyvisa_sim")
    lib = str(Path(__file__).resolve().parent / "wt310_sim.yaml") + "@sim"
    out = tmp_path / "y.csv"
    r = run_lpirc("meter", "log", "wt310:USB0::0x0B21::0x0025::C2SIMYAML::INSTR", "--visa-library",
                  lib, "--out", out, "--seconds", "2")
    assert r.returncode == 0, r.stderr
    assert "one per data update" not in r.stdout, r.stdout
    assert "simulated WT310 C2SIMYAML at 0.1 s, not synchronised: " in r.stdout, r.stdout
    assert "meter: sync checked at the end: not synchronised: " in out.read_text()
    assert len(read_power_log(out)) >= 5
