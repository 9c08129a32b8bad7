"""Machine description for the manifest."""

from __future__ import annotations

import json
import platform
import time
from pathlib import Path

from lpirc.machine import cpu_model, has_rapl, machine_info


def test_machine_info_fields_and_cheap():
    machine_info()  # warm imports (psutil)
    t = time.perf_counter()
    info = machine_info()
    assert time.perf_counter() - t < 0.05
    assert set(info) >= {"cpu", "cores_logical", "cores_physical", "memory_bytes", "os", "python"}
    assert isinstance(info["cpu"], str) and info["cpu"]
    assert info["cores_logical"] >= 1
    assert info["cores_physical"] is None or 1 <= info["cores_physical"] <= info["cores_logical"]
    assert info["memory_bytes"] > 0
    assert info["python"] == platform.python_version()
    assert info["os"] == platform.platform()
    json.dumps(info)


def test_cpu_model_from_cpuinfo(tmp_path):
    x86 = tmp_path / "x86"
    x86.write_text("processor\t: 0\nvendor_id\t: GenuineIntel\nmodel\t\t: 85\n"
                   "model name\t: Intel(R) Xeon(R) Gold 6130 CPU @ 2.10GHz\n\nprocessor\t: 1\n")
    assert cpu_model(x86) == "Intel(R) Xeon(R) Gold 6130 CPU @ 2.10GHz"
    arm = tmp_path / "arm"
    arm.write_text("processor\t: 0\nBogoMIPS\t: 108.00\nCPU part\t: 0xd08\n\n"
                   "Hardware\t: BCM2835\nModel\t\t: Raspberry Pi 4 Model B Rev 1.4\n")
    assert cpu_model(arm) == "BCM2835"


def test_cpu_model_fallback(tmp_path):
    name = cpu_model(tmp_path / "no-cpuinfo")
    assert name == (platform.processor() or platform.machine() or "unknown")


def _domain(root: Path, name: str, content: str | None = "123\n") -> None:
    d = root / name
    d.mkdir(parents=True)
    (d / "name").write_text("package-0\n")
    if content is None:
        (d / "energy_uj").mkdir()  # unreadable, even for root
    else:
        (d / "energy_uj").write_text(content)


def test_has_rapl(tmp_path):
    assert not has_rapl(tmp_path / "absent")
    empty = tmp_path / "empty"
    empty.mkdir()
    assert not has_rapl(empty)
    ok = tmp_path / "ok"
    _domain(ok, "intel-rapl:0")
    assert has_rapl(ok)
    amd = tmp_path / "amd"
    _domain(amd, "amd-rapl:0")
    assert has_rapl(amd)
    bad = tmp_path / "bad"
    _domain(bad, "intel-rapl:0", content=None)
    assert not has_rapl(bad)
    sub_only = tmp_path / "sub"
    _domain(sub_only, "intel-rapl:0:0")
    assert not has_rapl(sub_only)


def test_has_rapl_here_default_does_not_raise():
    assert has_rapl() in (True, False)
