"""``lpirc submission check MODEL``: will this .tflite run, and is it quantized sensibly?

Works without TensorFlow: everything comes from the TFLite interpreter (tensor details,
quantization parameters, constant weights via ``get_tensor``, activations with
``experimental_preserve_all_tensors=True``, and the op list from ``_get_ops_details()``).

Checks, in order (each is pass / warn / fail / skip):

  load          the model loads, allocates and invokes once in a child process (a runtime crash
                on a corrupt file is a failed check, not a crash of lpirc)
  input         one input [1, H, W, 3], 1 <= H, W <= 1000, uint8 or int8 (float32: warn)
  output        one output with 1000 or 1001 classes (1001: index 0 is background)
  ops           op histogram; ops the chosen delegate would not take (custom ops the runtime
                cannot resolve fail; ops that fall back to the CPU warn; a 16x8 model, int16
                activations, warns: XNNPACK takes none of its ops)
  invoke        one real image (first holdout image, else a generated natural-ish picture):
                latency of one image and whether the output looks like probabilities
  activations   quantized activations (8 or 16 bits) whose level, as a real range over 8 bits
                (scale x 255), exceeds --range-threshold
                (default 128, 1 level = 0.5; EfficientNet-Lite's -168..204 = range 372 is the documented case:
                1 level = 1.46, which starves 8 bits)
  depthwise     depthwise-conv weights with per-tensor scales whose channels are all zero or
                use at most --near-zero levels (the channel's filter is lost to quantization)
  accuracy      with --holdout (+ ground truth): top-1 / top-5; with --reference FLOAT.tflite
                also the drop versus the float model (warn above --max-drop; fail when the
                quantized top-1 is under half the reference's: collapsed in calibration)

A failed check means ``lpirc run`` would refuse the model (or cannot score it). Exit status of
the command: 0 no check failed, 1 a check failed, 2 usage error.
"""

from __future__ import annotations

import dataclasses
import json
import re
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from lpirc import __version__, preflight
from lpirc import runtime as rtm
from lpirc.delegates import parse_delegate
from lpirc.errors import USER_ERRORS, DelegateError, InputError, LpircError, ModelError
from lpirc.holdout import scan_folder
from lpirc.preprocess import (ImageError, InputShapeError, OptionError, PreprocessOptions,
                              crop_and_resize, float_feed_problem, input_range, load_image,
                              raw_codes_problem, to_input)
from lpirc.probe import probe_model, read_structure_isolated
from lpirc.runtime import choose_output
from lpirc.settings import resolve_preprocess, sidecar_path
from scoring import (ScoringError, ground_truth_notes, read_ground_truth, revise_label_notes,
                     synset_index)
from scoring.names import NameIndex, describe_loose
from submission.check_tensors import FAIL, PASS, SKIP, WARN, check_quantization

REPORT_FORMAT = "lpirc-check/1"
DEFAULT_RANGE_THRESHOLD = 128.0
DEFAULT_NEAR_ZERO_LEVELS = 1
DEFAULT_MAX_DROP = 0.05

# Builtin ops XNNPACK takes (quantized or float); others run on the reference CPU kernels.
XNNPACK_OPS = frozenset("""
ABS ADD AVERAGE_POOL_2D BATCH_MATMUL CEIL CONCATENATION CONV_2D DEPTH_TO_SPACE DEPTHWISE_CONV_2D
DEQUANTIZE DIV ELU EXP FLOOR FULLY_CONNECTED GELU HARD_SWISH LEAKY_RELU LOGISTIC MAX_POOL_2D
MAXIMUM MEAN MINIMUM MUL NEG PAD PRELU QUANTIZE RELU RELU6 RELU_N1_TO_1 RESHAPE
RESIZE_BILINEAR ROUND RSQRT SLICE SOFTMAX SPACE_TO_DEPTH SQRT SQUARE SQUARED_DIFFERENCE
STRIDED_SLICE SUB SUM TANH TRANSPOSE TRANSPOSE_CONV COS SIN
""".split())
# Ops LiteRT's GPU (ML Drift) backend is known to take; others fall back to the CPU.
GPU_OPS = frozenset("""
ABS ADD AVERAGE_POOL_2D BATCH_MATMUL CONCATENATION CONV_2D COS DEPTH_TO_SPACE DEPTHWISE_CONV_2D
DEQUANTIZE DIV ELU EXP FULLY_CONNECTED HARD_SWISH LOG LOGISTIC MAX_POOL_2D MAXIMUM MEAN
MINIMUM MUL PAD PRELU QUANTIZE RELU RELU6 RELU_N1_TO_1 LEAKY_RELU RESHAPE RESIZE_BILINEAR
RESIZE_NEAREST_NEIGHBOR RSQRT SIN SLICE SOFTMAX SPACE_TO_DEPTH SQRT SQUARE SQUARED_DIFFERENCE
STRIDED_SLICE SUB SUM TANH TRANSPOSE TRANSPOSE_CONV
""".split())
_IMAGE_EXT = {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm"}
_SYNSET_NAME = re.compile(r"^(n\d{8})[_.\-]")


@dataclass
class CheckResult:
    name: str
    status: str  # pass | warn | fail | skip
    message: str
    details: dict = field(default_factory=dict)

    def to_json(self) -> dict:
        return {"name": self.name, "status": self.status, "message": self.message,
                "details": self.details}


@dataclass
class CheckReport:
    model: str
    delegate: str
    results: list = field(default_factory=list)
    runtime: dict | None = None

    @property
    def failed(self) -> bool:
        return any(r.status == FAIL for r in self.results)

    def get(self, name: str) -> CheckResult | None:
        return next((r for r in self.results if r.name == name), None)

    def add(self, name, status, message, **details) -> CheckResult:
        r = CheckResult(name, status, message, details)
        self.results.append(r)
        return r

    def to_json(self) -> dict:
        counts = Counter(r.status for r in self.results)

        # the absolute path and the versions: the report is kept beside submissions and compared
        return {"format": REPORT_FORMAT, "model": str(Path(self.model).absolute()),
                "delegate": self.delegate, "lpirc": __version__, "runtime": self.runtime,
                "verdict": "fail" if self.failed else "pass",
                "counts": {k: counts.get(k, 0) for k in (PASS, WARN, FAIL, SKIP)},
                "checks": [r.to_json() for r in self.results]}

    def write(self, path) -> Path:
        p = Path(path)
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(json.dumps(self.to_json(), indent=2) + "\n")
        return p


def default_report_path(model) -> Path:
    """``<model stem>.check.json`` in the current directory (the model's folder may be read-only)."""
    return Path.cwd() / f"{Path(model).stem}.check.json"


# ------------------------------------------------------------------------------------ checks


def check_submission(model, *, delegate: str = "cpu", holdout=None, ground_truth=None,
                     reference=None, range_threshold: float = DEFAULT_RANGE_THRESHOLD,
                     near_zero_levels: int = DEFAULT_NEAR_ZERO_LEVELS,
                     max_drop: float = DEFAULT_MAX_DROP, limit: int | None = None,
                     timeout_s: float = 120.0, threads: int = 1, on_result=None,
                     preprocess: dict | None = None, config=None) -> CheckReport:
    """Run every check; never raises for a bad model (it is a failed check). ``on_result`` is
    called with each CheckResult as soon as it is known (for printing). ``preprocess`` holds
    the preprocessing options given on the command line (RunSettings names: mean, std, crop,
    input_size, output, ...) and ``config`` a tuned config file: layered over the model's
    sidecar exactly as ``lpirc run`` layers them."""

    rt = rtm.load_runtime()
    rep = CheckReport(model=str(model), delegate=delegate or "cpu", runtime=rt.to_json())

    def emit(name, status, message, **details):
        r = rep.add(name, status, message, **details)
        if on_result:
            on_result(r)
        return r

    opts, side_error = _resolve_options(model, preprocess or {}, config)
    info, loaded, delegate_missing = _check_load(model, delegate, opts, timeout_s, emit)
    if info is None:
        for n in ("input", "output", "ops", "sidecar", "normalise", "invoke", "activations",
                  "depthwise", "accuracy"):
            emit(n, SKIP, "model could not be read")
        return rep

    ok_input = _check_input(info, opts, emit)
    _check_output(model, info, opts, emit)
    _check_ops(info, delegate, rt, emit)
    if not ok_input:
        for n in ("sidecar", "normalise", "invoke", "activations", "depthwise", "accuracy"):
            emit(n, SKIP, "lpirc run cannot feed this input images")
        return rep
    spec = _check_sidecar(model, info, opts, side_error, emit)
    _check_normalise(info, spec, emit, opts)

    if not loaded:
        emit("invoke", SKIP, "model does not load with this delegate")
        # Quantization does not depend on the delegate: a team checking a GPU or Edge TPU
        # submission on a machine without one still learns about its ranges and weights.
        if delegate_missing and _loads_on_cpu(model, timeout_s):
            x, _ = _test_input(spec, [])
            check_quantization(model, rt, x, info, range_threshold, near_zero_levels,
                               lambda n, st, msg, **d: emit(
                                   n, st, f"{msg} (inspected on the CPU: the {delegate} delegate "
                                   "is unavailable here)", **d))
        else:
            for n in ("activations", "depthwise"):
                emit(n, SKIP, "model does not load with this delegate")
        emit("accuracy", SKIP, "model does not load with this delegate")
        return rep

    # An unusable holdout is the accuracy check's failure; the other checks still run on a
    # generated image, and the report is still written.
    holdout_error = skipped = None
    images: list[Path] = []
    if holdout:
        try:
            images, skipped = _holdout_images(holdout)
        except LpircError as e:
            holdout_error = str(e)
    try:
        x, source = _test_input(spec, images)
    except LpircError as e:
        emit("invoke", FAIL, str(e))
        return rep
    _check_invoke(model, delegate, threads, rt, x, source, info, opts, emit)
    check_quantization(model, rt, x, info, range_threshold, near_zero_levels, emit)
    if holdout_error:
        emit("accuracy", FAIL, holdout_error)
        return rep
    _check_accuracy(model, delegate, threads, rt, spec, opts, holdout, images, ground_truth,
                    reference, max_drop, limit, timeout_s, emit, skipped)
    return rep


def _check_load(model, delegate, opts, timeout_s, emit):
    """The load check, in a child process: (ModelInfo or None, loaded, delegate missing). A model
    that does not load still gets its structure read (an unresolved op still has tensors and
    ops), in a child process too; None when even that fails."""
    try:
        info = probe_model(model, timeout_s=timeout_s, delegate=delegate, output=opts.output,
                               input_size=opts.input_size)
    except LpircError as e:
        emit("load", FAIL, str(e), error_type=type(e).__name__)
        try:
            return read_structure_isolated(model, timeout_s), False, \
                isinstance(e, DelegateError)
        except LpircError:
            return None, False, False
    emit("load", PASS, f"loads and invokes with --delegate {delegate or 'cpu'}",
         size_bytes=info.size_bytes, sha256=info.sha256)
    return info, True, False


def _resolve_options(model, values: dict, config):
    """(PreprocessOptions lpirc run would use, the sidecar/config error or None): the command
    line's values over the config over the sidecar, by lpirc.settings' own rule. A sidecar the
    run would refuse is reported by the sidecar check; the other checks use the values given."""

    try:
        return resolve_preprocess(model, values, config), None
    except LpircError as e:
        err = str(e)
    try:
        return PreprocessOptions(**values), err
    except (OptionError, TypeError):
        return PreprocessOptions(), err


def _loads_on_cpu(model, timeout_s: float) -> bool:
    """Whether the model loads and invokes without a delegate (in a child process, as ever)."""

    try:
        probe_model(model, timeout_s=timeout_s, delegate="cpu")
    except LpircError:
        return False
    return True


def _check_input(info, opts, emit) -> bool:
    """Can lpirc run feed this input images? The same verdict as the run's workers
    (PreprocessOptions.spec_for): one [1, H, W, 3] uint8/int8/float32 input, a fixed height and
    width or --input-size for a dynamic one."""

    t = info.input
    shp = tuple(t.shape)
    sig = list(t.shape_signature) if t.shape_signature is not None else list(shp)
    d = {"shape": list(shp), "shape_signature": sig, "dtype": t.dtype, "scale": t.scale,
         "zero_point": t.zero_point}
    try:
        spec = opts.spec_for(shp, t.dtype, t.scale, t.zero_point, t.shape_signature)
    except InputShapeError as e:
        emit("input", FAIL, f"{e}; lpirc run refuses it", **d)
        return False
    h, w = spec.height, spec.width
    if len(shp) != 4 or shp[0] != 1:
        emit("input", FAIL, f"input {t.name!r} has shape {list(shp)}; expected [1, H, W, 3]", **d)
        return False
    if not (1 <= h <= 1000 and 1 <= w <= 1000):
        emit("input", FAIL, f"input {h}x{w} is outside 1..1000", **d)
        return False
    size = f"[1, {h}, {w}, 3]"
    if sig[1] < 0 or sig[2] < 0:
        size += f" (dynamic {sig}, set by --input-size {h}x{w})"
    if t.dtype in ("uint8", "int8"):
        emit("input", PASS, f"{size} {t.dtype} (scale {t.scale:g}, zero point {t.zero_point})",
             **d)
    else:
        emit("input", WARN, f"{size} float32: not a quantized input (allowed, but the "
                            "challenge expects uint8/int8)", **d)
    return True


def _check_output(model, info, opts, emit) -> None:
    """The output that answers, by the run's own rule (lpirc.runtime.choose_output)."""

    outs = tuple(info.outputs) or (info.output,)
    try:
        k, note = choose_output(model, outs, opts.output)
    except ModelError as e:
        emit("output", FAIL, str(e).split(": ", 1)[-1],
             outputs=[o.to_json() for o in outs])
        return
    t = outs[k]
    shp = tuple(t.shape)
    n = int(np.prod(shp)) if shp else 0
    d = {"shape": list(shp), "dtype": t.dtype, "classes": n, "index": k,
         "signature_name": t.signature_name, "tensor": t.name,
         "outputs": [o.to_json() for o in outs]}
    which = f"output {t.describe(k)}: " if len(outs) > 1 else ""
    extra = f" ({note})" if note else ""
    if not shp or shp[0] != 1 or n != shp[-1]:
        emit("output", FAIL, f"output {t.name!r} has shape {list(shp)}; expected [1, classes]", **d)
    elif n == 1001:
        emit("output", PASS, f"{which}1001 classes: index 0 is background, ILSVRC class k at "
                             f"k+1{extra}", **d)
    elif n == 1000:
        emit("output", PASS, f"{which}1000 classes: ILSVRC class indices 0..999{extra}", **d)
    else:
        emit("output", FAIL, f"{which}{n} classes; expected 1000 or 1001", **d)


def _check_ops(info, delegate, rt, emit) -> None:
    spec = parse_delegate(delegate)
    ops = list(info.ops)
    hist = dict(Counter(ops))
    custom = sorted({n for n in ops if not re.fullmatch(r"[A-Z0-9_]+", n)})
    d = {"ops": hist, "count": len(ops), "custom": custom}
    if spec.kind == "edgetpu":
        other_custom = [c for c in custom if c != "edgetpu-custom-op"]
        if other_custom:
            emit("ops", FAIL, f"custom ops no runtime resolves: {', '.join(other_custom)}", **d)
            return
        cpu = sorted({n for n in ops if n != "edgetpu-custom-op"})
        if "edgetpu-custom-op" not in ops:
            emit("ops", WARN, "no edgetpu-custom-op: not compiled with edgetpu_compiler, every op "
                              "runs on the CPU", cpu_ops=cpu, **d)
        elif cpu:
            emit("ops", WARN, f"{ops.count('edgetpu-custom-op')} Edge TPU segment(s); these ops fall "
                              f"back to the CPU: {', '.join(cpu)}", cpu_ops=cpu, **d)
        else:
            emit("ops", PASS, "the whole graph is one Edge TPU segment", cpu_ops=[], **d)
        return
    if "edgetpu-custom-op" in custom:
        emit("ops", FAIL, "needs the Edge TPU delegate (edgetpu-custom-op); run with "
                          "--delegate edgetpu", **d)
        return
    if custom:
        emit("ops", FAIL, f"custom ops the runtime cannot resolve: {', '.join(custom)}", **d)
        return
    if spec.kind == "gpu":
        cpu = sorted({n for n in ops if n not in GPU_OPS})
        if cpu:
            emit("ops", WARN, f"not known to run on the GPU (CPU fallback): {', '.join(cpu)}",
                 cpu_ops=cpu, **d)
        else:
            emit("ops", PASS, f"{len(ops)} ops, all known to run on the GPU", cpu_ops=[], **d)
        return
    if spec.kind == "external":
        emit("ops", PASS, f"{len(ops)} ops; which ones {spec.library} takes is up to it", **d)
        return
    slow = sorted({n for n in ops if n not in XNNPACK_OPS})
    summary = ", ".join(f"{k} x{v}" for k, v in sorted(hist.items(), key=lambda kv: -kv[1]))
    int16 = getattr(info, "int16_activations", 0)
    if int16:  # XNNPACK has no int16-activation kernels: every quantized op runs on reference
        emit("ops", WARN, f"{len(ops)} ops; a 16x8 model ({int16} int16 activations, int8 "
                          "weights): XNNPACK takes none of its int16 ops, they run on the "
                          "reference CPU kernels (much slower: about 240 ms per image measured "
                          "for a MobileNet-sized 16x8 model)",
             reference_ops=sorted(set(ops)), int16_activations=int16, **d)
        return
    if slow:
        emit("ops", WARN, f"{len(ops)} ops; not taken by XNNPACK (reference CPU kernels): "
                          f"{', '.join(slow)}", reference_ops=slow, **d)
    else:
        emit("ops", PASS, f"{len(ops)} ops, all taken by XNNPACK: {summary}", reference_ops=[], **d)


def _check_sidecar(model, info, opts, side_error, emit):
    """The preprocessing ``lpirc run`` will use: the sidecar ``X.json`` (and the options given)
    read exactly as the runner reads them (lpirc.settings), so a sidecar the run would refuse
    fails here too. Returns the PreprocessSpec the other checks feed."""

    t = info.input
    side = sidecar_path(model)
    spec = opts.spec_for(t.shape, t.dtype, t.scale, t.zero_point, t.shape_signature)
    if side_error:
        emit("sidecar", FAIL, side_error if str(side) in side_error else
             f"{side}: {side_error}; lpirc run cannot use it", path=str(side))
        return spec
    d = {"path": str(side) if side.is_file() else None, **spec.to_json()}
    what = (f"{spec.crop} crop {spec.crop_fraction:g}, {spec.resize} resize to "
            f"{spec.height}x{spec.width}, {spec.describe_input()}")
    if not side.is_file():
        emit("sidecar", PASS, f"no {side.name}: lpirc run uses its defaults ({what})", **d)
        return spec
    stale = _sidecar_mismatch(side, spec.height, spec.width, t.dtype, info.num_classes)
    if stale:
        emit("sidecar", WARN, f"{side.name} does not match the model ({stale}): written for "
                              f"another build?", **d)
    else:
        emit("sidecar", PASS, f"{side.name}: {what}", **d)
    return spec


def _check_normalise(info, spec, emit, opts=None) -> None:
    """Does the input's quantization range fit the values lpirc feeds? Raw pixel codes suit
    an input whose real range is one of _RAW_RANGES (within 5 %); an input calibrated on
    ImageNet mean/std (about -2.1..2.6) fails with the options to set; with mean/std given, a
    feed clipped by more than 2 levels, or using under half of the levels, warns. A float input
    whose first op quantizes (an int8 body behind float I/O) is judged by that op's range
    (preprocess.float_feed_problem) when no mean/std is given."""
    t = info.input
    rng = input_range(t.dtype, t.scale, t.zero_point)
    d = {"feed": spec.describe_input(), "input_range": list(rng) if rng else None}
    if rng is None:
        q = getattr(info, "input_quantize", None)
        given = opts is not None and (opts.mean is not None or opts.std is not None)
        if t.dtype == "float32" and q is not None:
            q_rng = input_range(q.dtype, q.scale, q.zero_point)
            d["first_op_quantizes_to"] = list(q_rng) if q_rng else None
            problem = None if given else float_feed_problem(q.dtype, q.scale, q.zero_point)
            if problem is not None:
                emit("normalise", FAIL if problem[1] else WARN, problem[0], **d)
                return
        emit("normalise", PASS if t.dtype == "float32" else SKIP,
             f"lpirc feeds {spec.describe_input()}", **d)
        return
    lo, hi = rng
    scale = t.scale
    if spec.quantize is None:
        problem = raw_codes_problem(t.dtype, t.scale, t.zero_point)
        if problem is None:
            emit("normalise", PASS, f"input range [{lo:.3g}, {hi:.3g}]: raw pixel codes fit it "
                                    f"({spec.describe_input()})", **d)
        else:
            emit("normalise", FAIL if problem[1] else WARN, problem[0], **d)
        return
    mean, std = np.asarray(spec.mean), np.asarray(spec.std)
    f_lo, f_hi = float(np.min(-mean / std)), float(np.max((255 - mean) / std))
    d["feed_range"] = [f_lo, f_hi]
    clip = max(lo - f_lo, f_hi - hi) / scale
    used = (min(f_hi, hi) - max(f_lo, lo)) / (hi - lo)
    msg = (f"lpirc feeds [{f_lo:.3g}, {f_hi:.3g}] into an input holding [{lo:.3g}, {hi:.3g}] "
           f"({spec.describe_input()})")
    if clip > 2:
        emit("normalise", WARN, f"{msg}: {clip:.0f} levels clipped: mean/std not the ones it "
                                "was calibrated with?", **d)
    elif used < 0.5:
        emit("normalise", WARN, f"{msg}: only {used:.0%} of its levels used: mean/std not the "
                                "ones it was calibrated with?", **d)
    else:
        emit("normalise", PASS, msg, **d)


def _sidecar_mismatch(side: Path, h: int, w: int, dtype: str, classes: int) -> str:
    """What the sidecar records about the model that the model contradicts ('' if nothing)."""
    try:
        data = json.loads(side.read_text())
        inp = data.get("input") or {}
        rec = {"height": inp.get("height"), "width": inp.get("width"),
               "dtype": inp.get("dtype"), "classes": data.get("classes")}
    except (OSError, ValueError, AttributeError):
        return ""
    real = {"height": h, "width": w, "dtype": dtype, "classes": classes}
    return ", ".join(f"{k} {rec[k]} recorded, {real[k]} in the model" for k in real
                     if rec[k] is not None and rec[k] != real[k])


def _holdout_images(holdout) -> tuple[list[Path], str | None]:
    """The holdout's images by the rule every command uses (lpirc.holdout.scan_folder), and the
    line saying what that rule skipped."""
    root = Path(holdout)
    listing = scan_folder(root, "holdout")
    return [root / f for f in listing.files], listing.skipped_line()


def natural_test_image(height: int = 256, width: int = 256, seed: int = 0) -> np.ndarray:
    """A smooth, natural-ish uint8 RGB picture: sky-like gradient, a few soft blobs, texture."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    yy /= max(height - 1, 1)
    xx /= max(width - 1, 1)
    img = np.empty((height, width, 3), np.float32)
    img[..., 0] = 90 + 80 * yy
    img[..., 1] = 130 + 60 * (1 - yy) * xx
    img[..., 2] = 200 - 120 * yy
    for _ in range(5):
        cy, cx = rng.uniform(0.2, 0.8, 2)
        r = rng.uniform(0.08, 0.25)
        col = rng.uniform(20, 235, 3)
        m = np.exp(-(((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * r * r)))[..., None]
        img = img * (1 - m) + col * m
    img += rng.normal(0, 6, img.shape)
    return np.clip(img, 0, 255).astype(np.uint8)


def _test_input(spec, images) -> tuple[np.ndarray, str]:
    for p in images[:10]:
        try:
            return load_image(p, spec)[None], str(p)
        except ImageError:
            continue
    try:
        pix = crop_and_resize(Image.fromarray(natural_test_image()), spec)
    except Exception:  # noqa: BLE001
        pix = natural_test_image(spec.height, spec.width)
    return to_input(pix, spec)[None], "generated test image"


def _check_invoke(model, delegate, threads, rt, x, source, info, opts, emit) -> None:
    try:
        m = rtm.open_model(model, threads=threads, delegate=delegate, runtime=rt,
                           output=opts.output, input_size=opts.input_size)
        s = rtm.predict(m, x)
        first = m.last_invoke_s
        times = []
        for _ in range(5):
            rtm.predict(m, x)
            times.append(m.last_invoke_s)
    except LpircError as e:
        emit("invoke", FAIL, str(e), image=source)
        return
    row = s[0]
    lat = float(np.median(times)) * 1000
    d = {"image": source, "latency_ms": round(lat, 3), "first_invoke_ms": round(first * 1000, 3),
         "delegate_ran": m.delegate_ran, "note": m.note}
    idx, vals = rtm.top_k(row, 5, info.num_classes)
    d["top5"], d["top5_scores"] = idx, [round(v, 5) for v in vals]
    if not np.all(np.isfinite(row)):
        emit("invoke", FAIL, "output has NaN or infinite values", **d)
        return
    total = float(row.sum())
    # quantized softmax outputs lose their many tiny probabilities: accept a sum from 0.5
    prob = bool(row.min() >= -1e-6 and row.max() <= 1 + 1e-6 and 0.5 <= total <= 1.1)
    d.update(probability_like=prob, output_sum=round(total, 4), output_min=float(row.min()),
             output_max=float(row.max()))
    # The latency is measured here, on this machine, with this delegate: say so in the line.
    timing = (f"{lat:.3g} ms per image (measured: median of 5 invokes, batch 1, {threads} "
              f"thread{'s' if threads != 1 else ''}) on {Path(source).name}")
    if float(row.max() - row.min()) == 0.0:
        emit("invoke", WARN, f"{timing}; output is constant (all {row[0]:g}): the model cannot "
                             "tell images apart", **d)
    elif prob:
        emit("invoke", PASS, f"{timing}; output is a probability vector (sum {total:.3f})", **d)
    else:
        emit("invoke", WARN, f"{timing}; output is not probability-like (sum {total:.3g}, range "
                             f"{row.min():.3g}..{row.max():.3g}): logits? top-k still works", **d)


def _labels_for(holdout, images, ground_truth) -> tuple[dict[str, int], str | None, list[str]]:
    """(filename relative to holdout -> class index, a note on loose matches or None, the
    ground truth's own notes (scoring.ground_truth_notes)). A ground truth's names
    are matched to the images by the scorer's rule (scoring.names: exact, NFC, bare name, stem,
    case; ambiguous names match nothing)."""

    root = Path(holdout)
    rels = [p.relative_to(root).as_posix() for p in images]
    gt = preflight.ground_truth_for(root, ground_truth)
    if gt is not None:
        truth = read_ground_truth(gt)
        notes = ground_truth_notes(gt)
        index = NameIndex(truth)
        pos, how = index.match_all(rels)
        values = list(truth.values())
        first: dict[int, str] = {}  # each ground-truth row counts once, as lpirc score counts it
        for j in sorted(range(len(rels)), key=lambda j: rels[j] not in truth):  # exact first
            if pos[j] >= 0:
                first.setdefault(int(pos[j]), rels[j])
        dups = int(np.count_nonzero(np.asarray(pos) >= 0)) - len(first)
        loose = "; ".join(n for n in (describe_loose(how), dups and (
            f"{dups} image(s) match a ground-truth row another image matches, not counted "
            "(lpirc score counts one answer per row)")) if n) or None
        return {r: values[i] for i, r in first.items()}, loose, notes
    labels = {}
    for p, rel in zip(images, rels):
        m = _SYNSET_NAME.match(p.name)
        if m:
            try:
                labels[rel] = synset_index(m.group(1))
            except ScoringError:
                pass
    return labels, None, []


def _accuracy(model, delegate, threads, rt, spec, root, items, labels, opts=None) -> dict:
    m = rtm.open_model(model, threads=threads, delegate=delegate, runtime=rt,
                       output=opts.output if opts else None,
                       input_size=opts.input_size if opts else None)
    top1 = top5 = n = failed = 0
    answers: list[tuple[int, list[int]]] = []  # (label, top-5) of each answered image
    for rel in items:
        try:
            x = load_image(root / rel, spec)
        except ImageError:
            failed += 1
            continue
        idx, _ = rtm.top_k(rtm.predict(m, x[None])[0], 5, m.info.num_classes)
        y = labels[rel]
        answers.append((y, (list(idx) + [-1] * 5)[:5]))
        n += 1
        top1 += bool(idx and idx[0] == y)
        top5 += y in idx
    return {"images": n, "unreadable": failed, "top1": top1 / n if n else 0.0,
            "top5": top5 / n if n else 0.0, "answers": answers}


def _reference_spec(reference, opts, timeout_s):
    """The float reference's preprocessing (the submission's crop/resize/mean/std at the
    reference's own input size), after loading it in a child process like the submission."""

    rinfo = probe_model(reference, timeout_s=timeout_s, delegate="cpu")
    ropts = dataclasses.replace(opts, output=None, input_size=None)
    try:
        return ropts.spec_for_model(rinfo)
    except InputShapeError as e:
        raise InputError(f"{Path(reference).name}: {e}") from None


#: A quantized model has collapsed when its top-1 is under this fraction of its float
#: reference's (the measured case: 7.6 % against 73.4 %), the reference being at least
#: _COLLAPSE_MIN_REFERENCE (else the holdout tells too little).
_COLLAPSE_FRACTION = 0.5
_COLLAPSE_MIN_REFERENCE = 0.2


def _collapsed(top1: float, ref_top1: float) -> bool:
    return ref_top1 >= _COLLAPSE_MIN_REFERENCE and top1 < _COLLAPSE_FRACTION * ref_top1


def _check_accuracy(model, delegate, threads, rt, spec, opts, holdout, images, ground_truth,
                    reference, max_drop, limit, timeout_s, emit, skipped=None) -> None:
    if not holdout:
        emit("accuracy", SKIP, "no --holdout given")
        return
    root = Path(holdout)
    try:
        labels, matched, gt_notes = _labels_for(holdout, images, ground_truth)
    except USER_ERRORS as e:
        emit("accuracy", FAIL, str(e))
        return
    items = sorted(labels)
    if limit:
        items = items[: int(limit)]
    if not items:
        emit("accuracy", SKIP, "no ground truth for the holdout images (give --ground-truth, or "
                               "name files <synset>_*.JPEG)")
        return
    t0 = time.perf_counter()
    try:
        acc = _accuracy(model, delegate, threads, rt, spec, root, items, labels, opts)
    except LpircError as e:
        emit("accuracy", FAIL, str(e))
        return
    answers = acc.pop("answers")
    gt_notes = revise_label_notes(gt_notes, [a[0] for a in answers], [a[1] for a in answers])
    matched = "; ".join(n for n in [matched, *gt_notes] if n) or None  # as lpirc score says
    d = dict(acc, seconds=round(time.perf_counter() - t0, 2))
    msg = f"top-1 {acc['top1']:.1%}, top-5 {acc['top5']:.1%} on {acc['images']} images"
    status = WARN if gt_notes else PASS  # labels the answers say are in another order
    if reference:
        try:
            rspec = _reference_spec(reference, opts, timeout_s)
            ref = _accuracy(reference, "cpu", threads, rt, rspec, root, items, labels)
            ref.pop("answers")
        except (LpircError, ValueError) as e:
            emit("accuracy", FAIL, f"--reference {e}", **d)
            return
        drop1, drop5 = ref["top1"] - acc["top1"], ref["top5"] - acc["top5"]
        d.update(reference=str(reference), reference_top1=ref["top1"],
                 reference_top5=ref["top5"], drop_top1=drop1, drop_top5=drop5, max_drop=max_drop)
        msg += (f"; reference {ref['top1']:.1%} / {ref['top5']:.1%}: drop {drop1 * 100:+.1f} / "
                f"{drop5 * 100:+.1f} points")
        if _collapsed(acc["top1"], ref["top1"]):
            d["collapsed"] = True
            emit("accuracy", FAIL, f"{msg}: the quantized model collapsed in calibration: its "
                                   "float reference scores far better on the same images with "
                                   "the same preprocessing, so the quantization lost it, not "
                                   "the input normalisation; recalibrate with real images "
                                   "preprocessed as lpirc feeds them (the representative "
                                   "dataset must span the activations real images produce)",
                 **d)
            return
        if drop1 > max_drop:
            status = WARN
            msg += f" (more than {max_drop * 100:g})"
    if acc["unreadable"]:
        msg += f"; {acc['unreadable']} unreadable image(s) skipped"
    for note in (matched, skipped):
        if note:
            msg += f"; {note}"
    d.update(names_matched=matched, listing_skipped=skipped)
    emit("accuracy", status, msg, **d)


__all__ = ["CheckResult", "CheckReport", "check_submission", "default_report_path",
           "natural_test_image", "DEFAULT_RANGE_THRESHOLD", "DEFAULT_NEAR_ZERO_LEVELS",
           "DEFAULT_MAX_DROP"]
