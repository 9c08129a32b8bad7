"""Energy: estimate (works anywhere), RAPL and meter-log paths on fake files in tmp_path."""

from __future__ import annotations

import json
import multiprocessing
import os
import threading
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import pytest

from lpirc.energy import (
    EnergyConfig,
    EnergyReading,
    energy_source_preview,
    estimate_wh,
    finish_energy,
    format_wh,
    power_log_wh,
    rapl_delta_uj,
    rapl_domains,
    read_power_log,
    start_energy,
)
from lpirc.errors import InputError


def _no_rapl(tmp_path: Path) -> Path:
    root = tmp_path / "powercap-empty"
    root.mkdir(exist_ok=True)
    return root


def make_rapl(
    root: Path, domains: dict[str, tuple[int, int | None]], names: dict[str, str] | None = None
) -> Path:
    """Fake /sys/class/powercap: {dir name: (energy_uj, max_energy_range_uj)}."""
    root.mkdir(parents=True, exist_ok=True)
    (root / "intel-rapl").mkdir(exist_ok=True)  # the control-type dir, not a domain
    for name, (uj, mx) in domains.items():
        d = root / name
        d.mkdir(exist_ok=True)
        (d / "energy_uj").write_text(f"{uj}\n")
        if mx is not None:
            (d / "max_energy_range_uj").write_text(f"{mx}\n")
        label = (names or {}).get(name)
        if label is None:
            label = "core" if name.count(":") == 2 else f"package-{name.rsplit(':', 1)[1]}"
        (d / "name").write_text(label + "\n")
    return root


def set_uj(root: Path, name: str, uj: int) -> None:
    (root / name / "energy_uj").write_text(f"{uj}\n")


# --- estimate ------------------------------------------------------------------------------


def test_estimate_formula():
    # 360 CPU seconds at 4 W/core + 600 s at 10 W idle = 1440 + 6000 J = 7440 J = 2.0667 Wh
    assert estimate_wh(360, 600, 4.0, 10.0) == pytest.approx(7440 / 3600)
    assert estimate_wh(0, 0, 4.0, 10.0) == 0


def test_estimate_here_is_labelled(tmp_path):
    cfg = EnergyConfig(powercap_root=_no_rapl(tmp_path))
    assert energy_source_preview(cfg) == "estimated: CPU time x 4.0 W/core + 10 W idle"
    probe = start_energy(cfg)
    time.sleep(0.02)
    r = finish_energy(probe, cfg)
    assert r.source == "estimated"
    assert r.method == "CPU time x 4.0 W/core + 10 W idle"
    assert r.idle_watts == 10.0
    assert r.duration_s >= 0.02
    assert r.wh == pytest.approx(estimate_wh(r.cpu_s, r.duration_s, 4.0, 10.0))
    assert r.describe().endswith(" Wh (estimated: CPU time x 4.0 W/core + 10 W idle)")
    j = r.to_json()
    assert j["source"] == "estimated" and j["idle_watts"] == 10.0
    json.dumps(j)


def test_estimate_options_in_method(tmp_path):
    cfg = EnergyConfig(watts_per_core=2.5, idle_watts=3.25, powercap_root=_no_rapl(tmp_path))
    r = finish_energy(start_energy(cfg), cfg)
    assert r.method == "CPU time x 2.5 W/core + 3.25 W idle"
    assert r.idle_watts == 3.25


def _burn(seconds: float) -> None:
    end = time.process_time() + seconds
    x = 0
    while time.process_time() < end:
        x += 1


@pytest.mark.slow
def test_estimate_counts_joined_child_cpu(tmp_path):
    cfg = EnergyConfig(watts_per_core=4.0, idle_watts=0.0, powercap_root=_no_rapl(tmp_path))
    probe = start_energy(cfg)
    burn = 0.3
    p = multiprocessing.get_context("fork").Process(target=_burn, args=(burn,))
    p.start()
    p.join()
    assert p.exitcode == 0
    r = finish_energy(probe, cfg)
    assert r.cpu_s >= burn * 0.5
    assert r.wh == pytest.approx(r.cpu_s * 4.0 / 3600)
    assert r.wh >= burn * 0.5 * 4.0 / 3600


def test_describe_and_format():
    r = EnergyReading(0.41, "estimated", "CPU time x 4.0 W/core + 10 W idle", 1.0, 2.0, 10.0)
    assert r.describe() == "0.41 Wh (estimated: CPU time x 4.0 W/core + 10 W idle)"
    assert format_wh(12.345) == "12.35"
    assert format_wh(0.0012) == "0.0012"
    assert format_wh(0.0) == "0.00"
    u = EnergyReading(None, "unknown", "no clock", None, 0.0, None)
    assert u.describe() == "unknown (no clock)"
    assert u.to_json()["wh"] is None


# --- RAPL ----------------------------------------------------------------------------------


def test_rapl_domains_top_level_only(tmp_path):
    root = make_rapl(
        tmp_path / "pc",
        {
            "intel-rapl:0": (1, 10),
            "intel-rapl:0:0": (1, 10),
            "intel-rapl:1": (1, 10),
            "intel-rapl:1:0": (1, 10),
            "intel-rapl:10": (1, 10),
            "amd-rapl:2": (1, 10),
            "intel-rapl:3": (1, 10),
        },
        names={"intel-rapl:3": "psys"},
    )
    names = [d.name for d in rapl_domains(root)]
    assert names == ["intel-rapl:0", "intel-rapl:1", "amd-rapl:2", "intel-rapl:10"]
    assert rapl_domains(tmp_path / "nope") == []


def test_rapl_measured(tmp_path):
    root = make_rapl(
        tmp_path / "pc",
        {
            "intel-rapl:0": (1_000_000, 10**12),
            "intel-rapl:0:0": (5, 10**12),
            "intel-rapl:1": (2_000_000, 10**12),
        },
    )
    cfg = EnergyConfig(powercap_root=root)
    assert energy_source_preview(cfg) == "measured: RAPL package counters (intel-rapl:0, intel-rapl:1)"
    probe = start_energy(cfg)
    set_uj(root, "intel-rapl:0", 1_000_000 + 3_600_000_000)  # 3600 J = 1 Wh
    set_uj(root, "intel-rapl:0:0", 10**11)  # subdomain: must not be counted
    set_uj(root, "intel-rapl:1", 2_000_000 + 1_800_000_000)  # 0.5 Wh
    r = finish_energy(probe, cfg)
    assert r.source == "measured"
    assert r.method == "RAPL package counters (intel-rapl:0, intel-rapl:1)"
    assert r.wh == pytest.approx(1.5)
    assert r.idle_watts is None
    assert r.describe() == "1.50 Wh (measured: RAPL package counters (intel-rapl:0, intel-rapl:1))"


def test_rapl_wraparound(tmp_path):
    mx = 262_143_328_850
    root = make_rapl(tmp_path / "pc", {"intel-rapl:0": (mx - 1_000_000_000, mx)})
    cfg = EnergyConfig(powercap_root=root)
    probe = start_energy(cfg)
    set_uj(root, "intel-rapl:0", 2_600_000_000)  # wrapped: 1e9 before the wrap + 2.6e9 after
    r = finish_energy(probe, cfg)
    assert r.source == "measured"
    assert r.wh == pytest.approx(3_600_000_000 / 3.6e9)
    assert rapl_delta_uj((900, 1000), (100, 1000)) == 200
    assert rapl_delta_uj((100, 1000), (300, None)) == 200
    with pytest.raises(ValueError):
        rapl_delta_uj((900, None), (100, None))


def test_rapl_backwards_without_max_falls_back(tmp_path):
    root = make_rapl(tmp_path / "pc", {"intel-rapl:0": (900, None)})
    cfg = EnergyConfig(powercap_root=root)
    probe = start_energy(cfg)
    set_uj(root, "intel-rapl:0", 100)
    r = finish_energy(probe, cfg)
    assert r.source == "estimated"
    assert "RAPL counters unreadable at run end" in r.method


def _make_unreadable(path: Path) -> None:
    """Unreadable even for root: a directory where the counter file should be."""
    path.unlink()
    path.mkdir()


def test_rapl_unreadable_at_start_falls_back(tmp_path):
    root = make_rapl(tmp_path / "pc", {"intel-rapl:0": (1, 10**9)})
    _make_unreadable(root / "intel-rapl:0" / "energy_uj")
    cfg = EnergyConfig(powercap_root=root)
    preview = energy_source_preview(cfg)
    assert preview.startswith("estimated: CPU time x 4.0 W/core + 10 W idle; RAPL counters not readable (")
    r = finish_energy(start_energy(cfg), cfg)
    assert r.source == "estimated"
    assert r.method.startswith("CPU time x 4.0 W/core + 10 W idle; RAPL counters not readable (")
    assert r.wh is not None


@pytest.mark.skipif(os.name != "posix" or os.geteuid() == 0, reason="root reads files whatever their mode")
def test_rapl_permission_denied(tmp_path):
    root = make_rapl(tmp_path / "pc", {"intel-rapl:0": (1, 10**9)})
    (root / "intel-rapl:0" / "energy_uj").chmod(0o000)
    cfg = EnergyConfig(powercap_root=root)
    assert "RAPL counters not readable (permission denied)" in energy_source_preview(cfg)
    r = finish_energy(start_energy(cfg), cfg)
    assert r.source == "estimated" and "permission denied" in r.method


def test_rapl_permission_error_simulated(tmp_path, monkeypatch):
    """What a non-root user sees since Linux 5.10 (energy_uj is mode 0400), simulated for root."""
    root = make_rapl(tmp_path / "pc", {"intel-rapl:0": (1, 10**9)})
    real = Path.read_text

    def read_text(self, *a, **k):
        if self.name == "energy_uj":
            raise PermissionError(13, "Permission denied", str(self))
        return real(self, *a, **k)

    monkeypatch.setattr(Path, "read_text", read_text)
    cfg = EnergyConfig(powercap_root=root)
    assert energy_source_preview(cfg) == (
        "estimated: CPU time x 4.0 W/core + 10 W idle; RAPL counters not readable (permission denied)"
    )
    r = finish_energy(start_energy(cfg), cfg)
    assert r.source == "estimated"
    assert r.method == "CPU time x 4.0 W/core + 10 W idle; RAPL counters not readable (permission denied)"


def test_rapl_unreadable_at_end_falls_back(tmp_path):
    root = make_rapl(tmp_path / "pc", {"intel-rapl:0": (1, 10**9)})
    cfg = EnergyConfig(powercap_root=root)
    probe = start_energy(cfg)
    _make_unreadable(root / "intel-rapl:0" / "energy_uj")
    r = finish_energy(probe, cfg)
    assert r.source == "estimated"
    assert "RAPL counters unreadable at run end" in r.method


# --- power log -----------------------------------------------------------------------------


def write_log(path: Path, rows, header: str | None = "timestamp,watts") -> Path:
    lines = ([header] if header else []) + [f"{t},{w}" for t, w in rows]
    path.write_text("\n".join(lines) + "\n")
    return path


def test_read_power_log_unix_and_header(tmp_path):
    p = write_log(tmp_path / "m.csv", [(100.0, 5), (101.5, 6.5)])
    a = read_power_log(p)
    assert a.shape == (2, 2) and a.dtype == np.float64
    assert a.tolist() == [[100.0, 5.0], [101.5, 6.5]]
    p2 = write_log(tmp_path / "n.csv", [(100.0, 5), (101.5, 6.5)], header=None)
    assert read_power_log(p2).tolist() == a.tolist()


def test_read_power_log_iso(tmp_path):
    p = tmp_path / "iso.csv"
    p.write_text(
        "time,watts,volts\n"
        "2024-05-01T12:00:00Z,10,230\n"
        "# a comment\n\n"
        "2024-05-01T12:00:01.500+00:00,20,230\n"
        "2024-05-01 12:00:03+00:00,30\n"
    )
    a = read_power_log(p)
    t0 = datetime(2024, 5, 1, 12, tzinfo=timezone.utc).timestamp()
    assert a[:, 0].tolist() == [t0, t0 + 1.5, t0 + 3]
    assert a[:, 1].tolist() == [10, 20, 30]


@pytest.mark.parametrize(
    "text, msg",
    [
        ("", "no samples"),
        ("timestamp,watts\n", "no samples"),
        ("100,5\n101,abc\n", "line 2: watts 'abc' is not a number"),
        ("100,5\nyesterday,5\n", "line 2: timestamp 'yesterday' is neither"),
        ("100,5\n101\n", "line 2: expected 'timestamp,watts'"),
        ("100,5\n99,5\n", "line 2: timestamp goes backwards"),
        ("100,5\n101,-1\n", "line 2: watts '-1' must be"),
        ("100,5\n101,nan\n", "line 2: watts 'nan' must be"),
    ],
)
def test_read_power_log_malformed(tmp_path, text, msg):
    p = tmp_path / "bad.csv"
    p.write_text(text)
    with pytest.raises(InputError) as e:
        read_power_log(p)
    s = str(e.value)
    assert s.startswith(f"{p}: ") and msg in s and "\n" not in s


def test_read_power_log_missing(tmp_path):
    with pytest.raises(InputError, match="power log not found"):
        read_power_log(tmp_path / "absent.csv")


def test_read_power_log_partial_last_line_dropped(tmp_path):
    p = tmp_path / "live.csv"
    p.write_text("100,5\n101,6\n102,")  # meter mid-write
    assert read_power_log(p).tolist() == [[100, 5], [101, 6]]


def test_power_log_trapezoid_with_edge_interpolation():
    s = np.array([[0.0, 0.0], [10.0, 100.0], [20.0, 100.0]])
    # window [5, 15]: 50 W at 5 s (interpolated), 100 W at 10 s, 100 W at 15 s
    wh, n = power_log_wh(s, 5.0, 15.0)
    assert n == 1
    assert wh == pytest.approx((0.5 * (50 + 100) * 5 + 100 * 5) / 3600)
    # exact-edge samples; constant 36 W for 100 s = 1 Wh
    c = np.array([[0.0, 36.0], [50.0, 36.0], [100.0, 36.0]])
    assert power_log_wh(c, 0.0, 100.0)[0] == pytest.approx(1.0)
    # window between two samples
    assert power_log_wh(c, 10.0, 20.0) == (pytest.approx(10 * 36 / 3600), 0)


@pytest.mark.parametrize("start, end", [(-1.0, 5.0), (5.0, 101.0)])
def test_power_log_not_covering(start, end):
    c = np.array([[0.0, 36.0], [100.0, 36.0]])
    with pytest.raises(InputError, match=r"meter.csv: power log does not cover the run \(log 1970"):
        power_log_wh(c, start, end, "meter.csv")


def test_finish_with_power_log_measured(tmp_path):
    now = time.time()
    p = write_log(tmp_path / "meter.csv", [(now - 10 + i, 36.0) for i in range(0, 40)])
    cfg = EnergyConfig(power_log=p, powercap_root=_no_rapl(tmp_path))
    assert energy_source_preview(cfg) == "measured: power log meter.csv"
    probe = start_energy(cfg)
    time.sleep(0.05)
    r = finish_energy(probe, cfg)
    assert r.source == "measured"
    assert r.method.startswith("power log meter.csv, ") and r.method.endswith(" samples, trapezoid")
    # 36 W constant: Wh = window seconds / 100
    window = r.duration_s
    assert r.wh == pytest.approx(window * 36 / 3600, rel=0.05, abs=1e-6)
    assert r.idle_watts is None


def test_finish_with_iso_power_log(tmp_path):
    now = time.time()
    rows = [(datetime.fromtimestamp(now - 5 + i, tz=timezone.utc).isoformat(), 72.0) for i in range(20)]
    p = write_log(tmp_path / "iso.csv", rows)
    cfg = EnergyConfig(power_log=p, powercap_root=_no_rapl(tmp_path))
    r = finish_energy(start_energy(cfg), cfg)
    assert r.source == "measured"
    assert r.wh == pytest.approx(r.duration_s * 72 / 3600, rel=0.05, abs=1e-6)


def test_finish_power_log_rejected_falls_back(tmp_path):
    now = time.time()
    p = write_log(tmp_path / "old.csv", [(now - 100, 50), (now - 90, 50)])  # stopped long ago
    cfg = EnergyConfig(power_log=p, powercap_root=_no_rapl(tmp_path))
    t = time.monotonic()
    r = finish_energy(start_energy(cfg), cfg)
    assert time.monotonic() - t < 1.0  # did not wait for a meter that stopped
    assert r.source == "estimated"
    assert r.method.startswith(
        "CPU time x 4.0 W/core + 10 W idle; power log old.csv rejected: power log does not cover the run"
    )
    assert r.describe().startswith(f"{format_wh(r.wh)} Wh (estimated: CPU time x")


def test_finish_power_log_malformed_or_missing_falls_back(tmp_path):
    bad = tmp_path / "bad.csv"
    bad.write_text("1,2\n3,x\n")
    for path, why in [(bad, "rejected: line 2: watts 'x' is not a number"),
                      (tmp_path / "absent.csv", "rejected: power log not found")]:
        cfg = EnergyConfig(power_log=path, powercap_root=_no_rapl(tmp_path))
        r = finish_energy(start_energy(cfg), cfg)
        assert r.source == "estimated"
        assert why in r.method and "\n" not in r.method


def test_finish_waits_for_meter_still_writing(tmp_path):
    """The meter logs concurrently: the sample after the run end arrives a moment later."""
    p = tmp_path / "live.csv"
    now = time.time()
    write_log(p, [(now - 2 + 0.2 * i, 20.0) for i in range(11)], header=None)  # up to now
    cfg = EnergyConfig(power_log=p, powercap_root=_no_rapl(tmp_path))
    probe = start_energy(cfg)
    time.sleep(0.05)

    def meter():
        time.sleep(0.3)
        with open(p, "a") as f:
            f.write(f"{time.time() + 0.1},20.0\n")

    th = threading.Thread(target=meter)
    th.start()
    r = finish_energy(probe, cfg, max_wait_s=3.0)
    th.join()
    assert r.source == "measured", r.method
    assert r.wh == pytest.approx(r.duration_s * 20 / 3600, rel=0.05, abs=1e-6)


def test_power_log_overrides_rapl(tmp_path):
    root = make_rapl(tmp_path / "pc", {"intel-rapl:0": (1, 10**12)})
    now = time.time()
    p = write_log(tmp_path / "meter.csv", [(now - 5, 10), (now + 30, 10)])
    cfg = EnergyConfig(power_log=p, powercap_root=root)
    probe = start_energy(cfg)
    set_uj(root, "intel-rapl:0", 10**11)
    r = finish_energy(probe, cfg)
    assert r.source == "measured" and r.method.startswith("power log meter.csv")


def test_config_from_run_settings(tmp_path):
    from lpirc.settings import RunSettings

    s = RunSettings(model=Path("m.tflite"), holdout=tmp_path, power_log=Path("meter.csv"), watts_per_core=3.0,
                    idle_watts=7.5)
    cfg = EnergyConfig.from_settings(s)
    assert cfg == EnergyConfig(power_log=Path("meter.csv"), watts_per_core=3.0, idle_watts=7.5,
                               powercap_root=Path("/sys/class/powercap"))
