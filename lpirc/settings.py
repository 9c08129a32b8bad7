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
TUNABLE = ("workers", "threads", "batch", "decode")


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
