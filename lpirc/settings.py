"""The one settings object of a run, passed down from the CLI to every part."""

from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lpirc.errors import InputError

CLOCKS = ("wall", "inference")
DECODES = ("exact", "draft")


def default_workers() -> int:
    """One worker per core the process may use."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not Linux
        return max(1, os.cpu_count() or 1)


@dataclass(frozen=True)
class RunSettings:
    """Everything that decides what ``lpirc run`` does. Recorded whole in the manifest."""

    model: Path
    holdout: Path
    ground_truth: Path | None = None
    out: Path | None = None
    time_limit_s: float = 600.0
    clock: str = "wall"  # "wall" (LPIRC on-site) or "inference" (Track 1 / OVIC)
    ms_per_image: float = 30.0
    workers: int = dataclasses.field(default_factory=default_workers)
    threads: int = 1
    batch: int = 1
    decode_threads: int = 0  # per inference process; 0 = decode inline (Edge TPU: auto)
    delegate: str = "cpu"  # cpu | gpu | edgetpu | path to a delegate library
    crop_fraction: float = 0.875
    resize: str = "bilinear"  # bilinear (TF v1 resize_bilinear) | antialias (Pillow's)
    mean: float = 127.5
    std: float = 127.5
    decode: str = "exact"  # exact | draft (JPEG DCT-scaled decode, faster on large images)
    seed: int = 0
    max_image_pixels: int = 40_000_000
    rules: str = "lpirc-onsite"
    power_log: Path | None = None
    watts_per_core: float = 4.0
    idle_watts: float = 10.0
    powercap_root: Path = Path("/sys/class/powercap")
    grace_s: float = 0.5
    quiet: bool = False

    def to_json(self) -> dict[str, Any]:
        return {k: (str(v) if isinstance(v, Path) else v) for k, v in dataclasses.asdict(self).items()}


#: Settings a tuned config may carry; anything else in the file is refused.
TUNABLE = ("workers", "threads", "batch", "decode", "decode_threads")


def read_config(path: Path) -> dict[str, Any]:
    """Read a ``best.json`` written by ``lpirc tune``: the settings under its ``settings`` key
    (or at top level). Only keys that are RunSettings fields are accepted."""
    try:
        data = json.loads(Path(path).read_text())
    except FileNotFoundError:
        raise InputError(f"{path}: config file not found") from None
    except (OSError, ValueError) as e:
        raise InputError(f"{path}: not a readable JSON config ({e})") from None
    if isinstance(data, dict) and isinstance(data.get("settings"), dict):
        data = data["settings"]
    if not isinstance(data, dict):
        raise InputError(f"{path}: config must be a JSON object")
    fields = {f.name for f in dataclasses.fields(RunSettings)}
    unknown = sorted(set(data) - fields)
    if unknown:
        raise InputError(f"{path}: unknown settings {', '.join(unknown)}")
    return data


def bundled_model() -> Path:
    """The project's own reference submission, installed with the package."""
    import submission

    return Path(submission.__file__).resolve().parent / "reference" / "model.tflite"


def sidecar_path(model: Path) -> Path:
    return Path(model).with_suffix(".json")


def read_sidecar(model: Path) -> dict[str, Any]:
    """Preprocessing recorded by ``lpirc submission build`` beside the model (``X.json`` for
    ``X.tflite``), as RunSettings fields. Absent sidecar: nothing."""
    path = sidecar_path(model)
    if not path.is_file():
        return {}
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise InputError(f"{path}: not a readable submission sidecar ({e})") from None
    pre = data.get("preprocess", {}) if isinstance(data, dict) else {}
    if not isinstance(pre, dict):
        raise InputError(f"{path}: 'preprocess' must be an object")
    return {k: pre[k] for k in ("crop_fraction", "resize", "mean", "std") if k in pre}


def resolve_settings(values: dict[str, Any], explicit: set[str],
                     config: Path | None = None) -> RunSettings:
    """Build the run's settings. Precedence: options given on the command line, then the tuned
    config file, then the model's sidecar, then the defaults."""
    merged: dict[str, Any] = {k: v for k, v in values.items() if v is not None}
    layered: dict[str, Any] = {}
    layered.update(read_sidecar(merged.get("model") or bundled_model()))
    if config is not None:
        layered.update(read_config(config))
    for k, v in layered.items():
        if k not in explicit:
            merged[k] = v
    for k in ("model", "holdout", "ground_truth", "out", "power_log", "powercap_root"):
        if merged.get(k) is not None:
            merged[k] = Path(merged[k])
    if merged.get("clock", "wall") not in CLOCKS:
        raise InputError(f"clock must be one of {', '.join(CLOCKS)}")
    if merged.get("decode", "exact") not in DECODES:
        raise InputError(f"decode must be one of {', '.join(DECODES)}")
    for k in ("workers", "threads", "batch"):
        if k in merged and int(merged[k]) < 1:
            raise InputError(f"{k} must be at least 1 (got {merged[k]})")
    try:
        return RunSettings(**merged)
    except TypeError as e:
        raise InputError(f"bad settings: {e}") from None
