"""The one settings object of a run, passed down from the CLI to every part."""

from __future__ import annotations

import dataclasses
import json
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import scoring
import submission
from lpirc.errors import InputError, MeterError
from lpirc.meters import check_config
from lpirc.results import read_json
from lpirc.preprocess import OptionError, PreprocessOptions

CLOCKS = ("wall", "inference")


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
    time_limit_s: float = scoring.DEFAULT_TIME_LIMIT_S
    clock: str = "wall"  # "wall" (LPIRC on-site) or "inference" (Track 1 / OVIC)
    ms_per_image: float = scoring.DEFAULT_MS_PER_IMAGE
    workers: int = dataclasses.field(default_factory=default_workers)
    threads: int = 1
    batch: int = 1
    decode_threads: int = 0  # per inference process; 0 = decode inline (Edge TPU: auto)
    delegate: str = "cpu"  # cpu | gpu | edgetpu | path to a delegate library
    crop_fraction: float = 0.875
    resize: str = "bilinear"  # bilinear (TF v1 resize_bilinear) | antialias (Pillow's)
    mean: Any = None  # pixel units 0..255, one or three (R,G,B); None: not given
    std: Any = None
    decode: str = "exact"  # exact | draft (JPEG DCT-scaled decode, faster on large images)
    idct: str = "fast"  # fast (tf.io.decode_jpeg's default) | accurate (Pillow's, torchvision's)
    crop: str = "central"  # central (tf.image.central_crop) | square (TFLite eval tool)
    channel_order: str = "rgb"  # rgb | bgr
    input_size: Any = None  # "HxW" for a model with a dynamic height/width
    output: Any = None  # name or index of the output that answers; None: the one [1, 1000|1001]
    seed: int = 0
    max_image_pixels: int = 40_000_000
    rules: str = scoring.DEFAULT_RULES
    power_log: Path | None = None
    watts_per_core: float = 4.0
    idle_watts: float = 10.0
    powercap_root: Path = Path("/sys/class/powercap")
    meter: str | None = None  # KIND:RESOURCE, e.g. wt310:USB0::0x0B21::0x0025::C2XXXXXXX::INSTR
    visa_library: str = "@py"  # what pyvisa.ResourceManager takes; file.yaml@sim: simulated
    meter_rate_s: float = 0.1  # the meter's update interval, sampled at the same rate
    meter_ranges: str = "auto"  # auto | keep | VOLTS,AMPS (fixed)
    meter_sync: str = "update"  # update: one reading per meter data update | poll (not synced)
    idle_baseline: Path | None = None  # an `lpirc meter idle --out` file
    idle_seconds: float = 0.0  # measure the idle baseline with --meter before the run
    grace_s: float = 0.5
    quiet: bool = False
    #: time.monotonic() by which the run ends whatever its own clock says (lpirc run --referee:
    #: the session's end less the time to post the last answers; the run's clock starts after
    #: its workers are forked, later than the session's); None: only time_limit_s. Not recorded.
    ends_at_monotonic: float | None = None
    #: the preprocessing fields above, checked once (OptionError naming the setting)
    preprocess: PreprocessOptions = dataclasses.field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "preprocess", PreprocessOptions(
            crop=self.crop, crop_fraction=self.crop_fraction, resize=self.resize,
            mean=self.mean, std=self.std, channel_order=self.channel_order,
            input_size=self.input_size, decode=self.decode,
            max_image_pixels=self.max_image_pixels, output=self.output, idct=self.idct))

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for f in dataclasses.fields(self):
            if f.name in ("preprocess", "ends_at_monotonic"):
                continue
            v = getattr(self, f.name)
            out[f.name] = str(v) if isinstance(v, Path) else v
        out.update({k: v for k, v in self.preprocess.to_json().items() if k in out})
        return out


#: Settings a tuned config may carry; anything else in the file is refused.
TUNABLE = ("workers", "threads", "batch", "decode", "decode_threads")


def read_config(path: Path) -> dict[str, Any]:
    """Read a ``best.json`` written by ``lpirc tune``: the settings under its ``settings`` key
    (or at top level). Only keys that are RunSettings fields are accepted."""
    data = read_json(path, "JSON config")
    if isinstance(data, dict) and isinstance(data.get("settings"), dict):
        data = data["settings"]
    if not isinstance(data, dict):
        raise InputError(f"{path}: config must be a JSON object")
    fields = {f.name for f in dataclasses.fields(RunSettings)}
    unknown = sorted(set(data) - fields)
    if unknown:
        raise InputError(f"{path}: unknown settings {', '.join(unknown)}")
    return _typed(Path(path), data)


def bundled_model() -> Path:
    """The project's own reference submission, installed with the package."""
    return Path(submission.__file__).resolve().parent / "reference" / "model.tflite"


def sidecar_path(model: Path) -> Path:
    """The submission's sidecar file, ``X.json`` beside ``X.tflite``: the one place its name is
    made (``lpirc submission build`` writes it, ``lpirc run`` and ``submission check`` read it)."""
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
    if not isinstance(data, dict):
        raise InputError(f"{path}: not a submission sidecar (a JSON object was expected)")
    pre = data.get("preprocess", {})
    if not isinstance(pre, dict):
        raise InputError(f"{path}: 'preprocess' must be an object")
    return _typed(path, {k: pre[k] for k in SIDECAR_KEYS if k in pre})


#: Preprocessing a sidecar's ``preprocess`` object may carry (anything else there is ignored).
SIDECAR_KEYS = ("crop", "crop_fraction", "resize", "mean", "std", "channel_order", "input_size",
                "output", "idct")


def resolve_settings(values: dict[str, Any], explicit: set[str],
                     config: Path | None = None) -> RunSettings:
    """Build the run's settings. Precedence: options given on the command line, then the tuned
    config file, then the model's sidecar, then the defaults."""
    merged: dict[str, Any] = {k: v for k, v in values.items() if v is not None}
    layered: dict[str, Any] = {}
    origin: dict[str, Path] = {}  # which file a setting came from, for the error line
    model = merged.get("model") or bundled_model()
    side = read_sidecar(model)
    layered.update(side)
    origin.update({k: sidecar_path(model) for k in side})
    if config is not None:
        conf = read_config(config)
        layered.update(conf)
        origin.update({k: Path(config) for k in conf})
    for k, v in layered.items():
        if k not in explicit:
            merged[k] = v
        else:
            origin.pop(k, None)
    if merged.get("clock") == "inference" and "rules" not in explicit and "rules" not in layered:
        # the Track-1 clock is scored by the Track-1 rules unless asked otherwise: under
        # lpirc-onsite the answers past the inference budget would still count
        merged["rules"] = "ovic-2018"
    for k in ("model", "holdout", "ground_truth", "out", "power_log", "powercap_root",
              "idle_baseline"):
        if merged.get(k) is not None:
            merged[k] = Path(merged[k])
    def where(k: str) -> str:
        return f"{origin[k]}: " if k in origin else ""

    if merged.get("clock", "wall") not in CLOCKS:
        raise InputError(f"{where('clock')}clock must be one of {', '.join(CLOCKS)}")
    for k in ("workers", "threads", "batch"):
        if k in merged and int(merged[k]) < 1:
            raise InputError(f"{where(k)}{k} must be at least 1 (got {merged[k]})")
    try:
        settings = RunSettings(**merged)
    except TypeError as e:
        raise InputError(f"bad settings: {e}") from None
    except OptionError as e:
        raise InputError(f"{where(e.setting)}{e}") from None
    check_settings(settings, origin)
    return settings


def resolve_preprocess(model: Path, values: dict[str, Any],
                       config: Path | None = None) -> PreprocessOptions:
    """The preprocessing ``lpirc run`` would use for ``model``: ``values`` (command-line
    options, RunSettings names) over ``config`` over the model's sidecar over the defaults, by
    the same rule as :func:`resolve_settings`. InputError naming the file of a bad value."""
    given = {k: v for k, v in values.items() if v is not None}
    merged = dict(given, model=Path(model), holdout=Path("."))
    return resolve_settings(merged, set(given), config).preprocess


def check_settings(s: RunSettings, origin: dict[str, Path] | None = None) -> None:
    """Refuse values that would only fail inside a worker, or after the run (a sidecar or config
    file can carry them as well as the command line). InputError naming the setting, and the
    file it came from when ``origin`` says."""
    def bad(name: str, why: str) -> InputError:
        src = f"{origin[name]}: " if origin and name in origin else ""
        return InputError(f"{src}{name} {why} (got {getattr(s, name)!r})")

    for name in ("time_limit_s", "ms_per_image"):
        v = getattr(s, name)
        if not isinstance(v, (int, float)) or not math.isfinite(v) or v <= 0:
            raise bad(name, "must be a positive number")
    for name in ("grace_s", "watts_per_core", "idle_watts", "idle_seconds"):
        v = getattr(s, name)
        if not isinstance(v, (int, float)) or not math.isfinite(v) or v < 0:
            raise bad(name, "must be a finite number >= 0")
    # the preprocessing options were checked when ``s`` was made (RunSettings.preprocess)
    if not isinstance(s.decode_threads, int) or s.decode_threads < 0:
        raise bad("decode_threads", "must be an integer >= 0")
    if s.meter is not None or s.meter_ranges != "auto" or s.meter_rate_s != 0.1 \
            or s.meter_sync != "update":
        try:
            check_config(s.meter, s.meter_rate_s, s.meter_ranges, s.meter_sync)
        except MeterError as e:
            raise InputError(str(e)) from None
    # the rule set must exist before the run, not only when it is scored
    if s.rules not in scoring.RULES:
        src = f"{origin['rules']}: " if origin and "rules" in origin else ""
        raise InputError(f"{src}unknown rule set {s.rules!r} (known: {', '.join(scoring.RULES)})")


def _typed(source: Path, data: dict[str, Any]) -> dict[str, Any]:
    """The values of a config or sidecar file, checked against the type of each setting, so a
    hand-edited ``"workers": "two"`` is one line naming the file, not a crash."""
    defaults = {f.name: f for f in dataclasses.fields(RunSettings)}
    out: dict[str, Any] = {}
    for k, v in data.items():
        f = defaults[k]
        want = f.type if isinstance(f.type, str) else getattr(f.type, "__name__", str(f.type))
        if want == "int":
            ok = isinstance(v, int) and not isinstance(v, bool)
        elif want == "float":
            ok = isinstance(v, (int, float)) and not isinstance(v, bool)
            v = float(v) if ok else v
        elif want == "str":
            ok = isinstance(v, str)
        elif want == "bool":
            ok = isinstance(v, bool)
        elif want == "Any":  # preprocessing values: checked by PreprocessOptions
            ok = True
        else:  # paths: a string, or null where the setting is optional
            ok = isinstance(v, str) or (v is None and "None" in want)
        if not ok:
            kind = {"int": "an integer", "float": "a number", "str": "a string",
                    "bool": "true or false"}.get(want, "a path")
            raise InputError(f"{source}: {k} must be {kind}, got {json.dumps(v)}")
        out[k] = v
    return out
