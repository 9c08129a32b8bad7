"""The inference backend: a small four-function API in the MLPerf spirit.

    model = open_model(path, threads=1, delegate="cpu", batch=1)   # load + allocate
    info = input_info(model)                                        # what to feed it
    scores = predict(model, batch)                                  # (n, classes) float32
    idx, vals = top_k(scores[0], 5, model.info.num_classes)        # ILSVRC 0..999 / -1

The interpreter module is chosen at run time: ``ai_edge_litert.interpreter``, else
``tflite_runtime.interpreter``, else ``tensorflow.lite`` (TensorFlow is never imported when
LiteRT is installed). Every failure a user can cause (missing, empty, truncated or non-flatbuffer
file, unresolved custom op, failure on invoke, delegate not available) raises a
:class:`ModelError` / :class:`DelegateError` whose text is one line naming the file.

``lpirc.probe.probe_model`` loads and invokes a model in a child process, so that an older
runtime that segfaults on a corrupt model reports a ModelError instead of killing the caller.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import importlib
import importlib.metadata
import os
import re
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from lpirc import delegates as dl
from lpirc.errors import DelegateError, ModelError

# ----------------------------------------------------------------------------------- runtime


@dataclass(frozen=True)
class Runtime:
    name: str  # "ai_edge_litert" | "tflite_runtime" | "tensorflow.lite"
    version: str
    module: Any = field(repr=False, compare=False)  # has Interpreter, load_delegate

    def to_json(self) -> dict:
        return {"name": self.name, "version": self.version}


_RUNTIME_CANDIDATES = (
    ("ai_edge_litert", "ai_edge_litert.interpreter", ("ai-edge-litert", "ai-edge-litert-nightly")),
    ("tflite_runtime", "tflite_runtime.interpreter", ("tflite-runtime", "tflite-runtime-nightly")),
    ("tensorflow.lite", "tensorflow", ("tensorflow", "tensorflow-cpu", "tf-nightly")),
)
_runtime_cache: dict[str | None, Runtime] = {}


def _dist_version(dists: tuple[str, ...], module: Any) -> str:
    for d in dists:
        try:
            return importlib.metadata.version(d)
        except importlib.metadata.PackageNotFoundError:
            continue
    return str(getattr(module, "__version__", "unknown"))


def load_runtime(prefer: str | None = None) -> Runtime:
    """The first importable runtime (or ``prefer``, one of the three names). Cached."""
    if prefer in _runtime_cache:
        return _runtime_cache[prefer]
    tried = []
    for name, modname, dists in _RUNTIME_CANDIDATES:
        if prefer and prefer != name:
            continue
        try:
            mod = importlib.import_module(modname)
        except Exception as e:  # noqa: BLE001  (ImportError, or a broken install)
            tried.append(f"{modname} ({type(e).__name__})")
            continue
        if name == "tensorflow.lite":
            lite = mod.lite
            mod = type("TFLiteShim", (), {
                "Interpreter": lite.Interpreter,
                "load_delegate": staticmethod(lite.experimental.load_delegate),
                "OpResolverType": getattr(lite.experimental, "OpResolverType", None),
            })
        rt = Runtime(name, _dist_version(dists, mod), mod)
        _runtime_cache[prefer] = rt
        return rt
    raise ModelError(
        "no TFLite runtime found (tried " + ", ".join(tried) + "); pip install ai-edge-litert"
    )


# ----------------------------------------------------------------------------------- records


@dataclass(frozen=True)
class TensorInfo:
    name: str  # the tensor's name, e.g. "PartitionedCall:0"
    shape: tuple
    dtype: str  # numpy dtype name: "uint8", "int8", "float32", ...
    scale: float  # 0.0 when not quantized
    zero_point: int
    shape_signature: tuple | None = None  # -1 marks a dynamic dimension; None: not reported
    signature_name: str | None = None  # its name in the model's signature, e.g. "predictions"

    def to_json(self) -> dict:
        return {"name": self.name, "signature_name": self.signature_name,
                "shape": list(self.shape),
                "shape_signature": (list(self.shape_signature)
                                    if self.shape_signature is not None else None),
                "dtype": self.dtype, "scale": self.scale, "zero_point": self.zero_point}

    @classmethod
    def from_json(cls, x: dict) -> TensorInfo:
        sig = x.get("shape_signature")
        return cls(x["name"], tuple(x["shape"]), x["dtype"], float(x["scale"]),
                   int(x["zero_point"]), tuple(sig) if sig is not None else None,
                   x.get("signature_name"))

    def describe(self, index: int | None = None) -> str:
        """``1 'predictions' (PartitionedCall:1) [1, 1000]``: index, signature name, tensor name,
        shape."""
        head = f"{index} " if index is not None else ""
        sig = f"{self.signature_name!r} " if self.signature_name else ""
        return f"{head}{sig}({self.name}) {list(self.shape)}"


@dataclass(frozen=True)
class ModelInfo:
    path: str
    size_bytes: int
    sha256: str
    input: TensorInfo
    output: TensorInfo  # the output that answers (see choose_output), else output 0
    num_classes: int
    ops: tuple  # op names in execution order, e.g. ("CONV_2D", "DEPTHWISE_CONV_2D", ...)
    outputs: tuple = ()  # every output, in the interpreter's order
    output_index: int = 0  # position of ``output`` in ``outputs``
    output_note: str | None = None  # why this output (others exist), or why none could be chosen
    #: a float input whose first op is QUANTIZE: that op's output (the int8 body's input scale)
    input_quantize: TensorInfo | None = None
    #: quantized int16 activations (a 16x8 model: int16 activations, int8 weights)
    int16_activations: int = 0

    def to_json(self) -> dict:
        return {"path": self.path, "size_bytes": self.size_bytes, "sha256": self.sha256,
                "num_classes": self.num_classes, "input": self.input.to_json(),
                "output": self.output.to_json(), "ops": list(self.ops),
                "outputs": [t.to_json() for t in self.outputs],
                "output_index": self.output_index, "output_note": self.output_note,
                "input_quantize": (self.input_quantize.to_json()
                                   if self.input_quantize is not None else None),
                "int16_activations": self.int16_activations}

    @classmethod
    def from_json(cls, d: dict) -> ModelInfo:
        t = TensorInfo.from_json
        return cls(d["path"], int(d["size_bytes"]), d["sha256"], t(d["input"]), t(d["output"]),
                   int(d["num_classes"]), tuple(d["ops"]),
                   tuple(t(x) for x in d.get("outputs", ())), int(d.get("output_index", 0)),
                   d.get("output_note"),
                   t(d["input_quantize"]) if d.get("input_quantize") else None,
                   int(d.get("int16_activations", 0)))


@dataclass
class Model:
    """An opened model. ``batch`` is the batch actually used (1 when the model pins it)."""

    path: str
    info: ModelInfo
    runtime: Runtime
    delegate_requested: str
    delegate_ran: str  # "xnnpack" | "edgetpu" | "gpu" | "external:/path" (+ fallbacks in note)
    batch: int
    threads: int
    note: str | None = None  # e.g. "batch 8 not supported by this model; using batch 1"
    interpreter: Any = field(default=None, repr=False)
    backend: str = "interpreter"  # "interpreter" | "compiled_model" (LiteRT GPU)
    last_invoke_s: float = 0.0  # wall time of the most recent invoke
    _delegate: Any = field(default=None, repr=False)  # keeps the TfLiteDelegate alive
    _in: Any = field(default=None, repr=False)
    _out: Any = field(default=None, repr=False)

    def delegate_json(self) -> dict:
        return {"requested": self.delegate_requested, "ran": self.delegate_ran, "note": self.note}


# ----------------------------------------------------------------------------------- helpers

_FLATBUFFER_ID = b"TFL3"


def _name(path) -> str:
    return Path(path).name


def _one_line(s: str) -> str:
    s = " ".join(str(s).split())
    return s if len(s) <= 300 else s[:297] + "..."


def _check_file(path) -> tuple[Path, bytes]:
    """Cheap checks that need no runtime; returns the path and the file's bytes."""
    p = Path(path)
    if not p.exists():
        raise ModelError(f"{p}: no such file")
    if p.is_dir():
        raise ModelError(f"{p}: is a directory, not a .tflite file")
    try:
        data = p.read_bytes()
    except OSError as e:
        raise ModelError(f"{p}: cannot read ({e.strerror or e})") from None
    if not data:
        raise ModelError(f"{_name(p)}: empty file (0 bytes)")
    if len(data) < 8 or data[4:8] != _FLATBUFFER_ID:
        raise ModelError(f"{_name(p)}: not a TFLite model (truncated or not a flatbuffer)")
    return p, data


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


_CUSTOM_OP = re.compile(r"unresolved custom op:?\s*([\w\-.]+)", re.I)


def _explain(path, e: BaseException, stage: str) -> ModelError:
    """One-line ModelError for an exception raised by the runtime at ``stage``."""
    n = _name(path)
    msg = str(e)
    m = _CUSTOM_OP.search(msg)
    if m:
        op = m.group(1).rstrip(".")
        if op == "edgetpu-custom-op":
            return ModelError(f"{n}: needs the Edge TPU delegate (unresolved custom op "
                              f"edgetpu-custom-op); run with --delegate edgetpu")
        return ModelError(f"{n}: unresolved custom op {op} (this runtime has no kernel for it)")
    if stage == "load" and isinstance(e, ValueError):
        base = f"{n}: not a TFLite model (truncated or not a flatbuffer)"
        low = msg.lower()
        if "flatbuffer" in low or "mmap" in low or "null" in low or not msg.strip():
            return ModelError(base)
        return ModelError(f"{base}: {_one_line(msg)}")
    first = _one_line(msg.split("Node number")[0] if "Node number" in msg else msg) or type(e).__name__
    what = {"load": "cannot be loaded", "allocate": "fails to prepare (allocate_tensors)",
            "invoke": "fails on invoke"}[stage]
    return ModelError(f"{n}: {what}: {first}")


def _resolver_kwargs(rt: Runtime, with_default_delegates: bool) -> dict:
    if with_default_delegates:
        return {}
    ort = getattr(rt.module, "OpResolverType", None)
    if ort is None or not hasattr(ort, "BUILTIN_WITHOUT_DEFAULT_DELEGATES"):
        return {}
    return {"experimental_op_resolver_type": ort.BUILTIN_WITHOUT_DEFAULT_DELEGATES}


def make_interpreter(path, *, runtime: Runtime | None = None, threads: int | None = 1,
                     delegates=None, default_delegates: bool = True,
                     preserve_all_tensors: bool = False):
    """A raw Interpreter (not allocated). ModelError on a file the runtime refuses."""
    rt = runtime or load_runtime()
    p, _ = _check_file(path)
    kw = dict(model_path=str(p), num_threads=threads,
              experimental_delegates=list(delegates) if delegates else None)
    kw.update(_resolver_kwargs(rt, default_delegates))
    if preserve_all_tensors:
        kw["experimental_preserve_all_tensors"] = True
    try:
        with _without_xnnpack_banner():
            return rt.module.Interpreter(**kw)
    except TypeError:  # an older runtime without some keyword
        kw.pop("experimental_preserve_all_tensors", None)
        kw.pop("experimental_op_resolver_type", None)
        try:
            return rt.module.Interpreter(**kw)
        except Exception as e:  # noqa: BLE001
            raise _explain(path, e, "load") from None
    except Exception as e:  # noqa: BLE001
        raise _explain(path, e, "load") from None


def _tensor_info(d: dict, signature_names: dict | None = None) -> TensorInfo:
    q = d.get("quantization", (0.0, 0)) or (0.0, 0)
    sig = d.get("shape_signature")
    return TensorInfo(name=str(d.get("name", "")),
                      shape=tuple(int(x) for x in d.get("shape", ())),
                      dtype=np.dtype(d["dtype"]).name,
                      scale=float(q[0]), zero_point=int(q[1]),
                      shape_signature=tuple(int(x) for x in sig) if sig is not None else None,
                      signature_name=(signature_names or {}).get(int(d.get("index", -1))))


def _signature_names(it, kind: str) -> dict[int, str]:
    """tensor index -> name in the (first) signature, for ``kind`` "inputs" or "outputs"."""
    try:
        sigs = it._get_full_signature_list() or {}
    except Exception:  # noqa: BLE001  (older runtimes, models without signatures)
        return {}
    for sig in sigs.values():
        return {int(idx): str(name) for name, idx in (sig.get(kind) or {}).items()}
    return {}


#: Output widths that answer the ILSVRC-2012 classes (1001: background at index 0).
CLASS_COUNTS = (1000, 1001)


def _is_answer(t: TensorInfo) -> bool:
    shp = tuple(t.shape)
    return len(shp) == 2 and shp[-1] in CLASS_COUNTS


def choose_output(path, outputs: tuple, want: str | int | None = None) -> tuple[int, str | None]:
    """Which output answers: (its position in ``outputs``, a note or None).

    ``want`` (``--output``) is an index, a signature name or a tensor name. Without it the one
    output of shape [1, 1000|1001] answers (the note names the others when there are any).
    Raises ModelError, one line listing every output (index, signature name, tensor name,
    shape), when ``want`` names none of them, or when no output or several could answer."""
    listing = "; ".join(t.describe(i) for i, t in enumerate(outputs))
    n = _name(path)
    if want is not None:
        w = str(want).strip()
        if w.lstrip("-").isdigit() and -len(outputs) <= int(w) < len(outputs):
            k = int(w) % len(outputs)
        else:
            by_sig = [i for i, t in enumerate(outputs) if t.signature_name == w]
            by_name = [i for i, t in enumerate(outputs) if t.name == w]
            hits = by_sig or by_name
            if len(hits) != 1:
                raise ModelError(f"{n}: output {w!r} (--output, or \"output\" in the config "
                                 f"or sidecar) names no output; outputs: {listing}")
            k = hits[0]
        return k, None
    cands = [i for i, t in enumerate(outputs) if _is_answer(t)]
    if len(outputs) == 1:  # the classic single-output model: its width is checked by the caller
        return 0, None
    if len(cands) == 1:
        k = cands[0]
        others = "; ".join(t.describe(i) for i, t in enumerate(outputs) if i != k)
        return k, f"output {outputs[k].describe(k)} answers; ignored: {others}"
    why = "none is" if not cands else f"{len(cands)} are"
    raise ModelError(f"{n}: {len(outputs)} outputs and {why} [1, 1000|1001]: {listing}; choose "
                     f"one with --output NAME|INDEX (or \"output\" in the config or sidecar)")


def _info_from_interpreter(path, data: bytes, it, output=None, strict: bool = False) -> ModelInfo:
    """ModelInfo of an interpreter. ``output``: see choose_output; ``strict`` raises its
    ModelError, else the model's structure is still returned (output 0, ``output_note`` = why)."""
    ins, outs = it.get_input_details(), it.get_output_details()
    if not ins or not outs:
        raise ModelError(f"{_name(path)}: model has no inputs or no outputs")
    try:
        details = it._get_ops_details()
        ops = tuple(str(o.get("op_name", "?")) for o in details)
    except Exception:  # noqa: BLE001  (older runtimes)
        details, ops = [], ()
    input_quantize, int16 = _quantized_body(it, ins[0], details)
    in_names, out_names = _signature_names(it, "inputs"), _signature_names(it, "outputs")
    outputs = tuple(_tensor_info(d, out_names) for d in outs)
    try:
        k, note = choose_output(path, outputs, output)
    except ModelError as e:
        if strict:
            raise
        k, note = 0, str(e).split(": ", 1)[-1]
    out = outputs[k]
    return ModelInfo(path=str(path), size_bytes=len(data), sha256=_sha256(data),
                     input=_tensor_info(ins[0], in_names), output=out,
                     num_classes=int(out.shape[-1]) if out.shape else 0, ops=ops,
                     outputs=outputs, output_index=k, output_note=note,
                     input_quantize=input_quantize, int16_activations=int16)


def _quantized_body(it, inp: dict, ops: list) -> tuple[TensorInfo | None, int]:
    """(the QUANTIZE output a float input goes into first, or None; how many int16 quantized
    tensors the ops produce). From the interpreter's op and tensor details."""
    try:
        tensors = {d["index"]: d for d in it.get_tensor_details()}
    except Exception:  # noqa: BLE001  (older runtimes)
        return None, 0
    first = None
    if np.dtype(inp["dtype"]).name == "float32":
        for op in ops:
            if int(inp["index"]) in [int(i) for i in op.get("inputs", ())]:
                if op.get("op_name") == "QUANTIZE" and len(op.get("outputs", ())) == 1:
                    d = tensors.get(int(op["outputs"][0]))
                    if d is not None and d.get("quantization", (0.0, 0))[0]:
                        first = _tensor_info(d, {})
                break
    int16 = 0
    for op in ops:
        for i in op.get("outputs", ()):
            d = tensors.get(int(i))
            if d is not None and np.dtype(d["dtype"]).name == "int16" and \
                    d.get("quantization", (0.0, 0))[0]:
                int16 += 1
    return first, int16


def model_info(path, runtime: Runtime | None = None, output=None) -> ModelInfo:
    """The model's structure, read without a delegate and without allocating tensors.

    ModelError when the file is missing, empty, or not a TFLite flatbuffer. A model with an
    unresolved custom op still has an info (its ops list names the custom op); one whose answer
    cannot be told from its outputs has output 0 and says why in ``output_note``.
    """
    _, data = _check_file(path)
    it = make_interpreter(path, runtime=runtime, threads=1, default_delegates=False)
    return _info_from_interpreter(path, data, it, output=output)


def dynamic_size_problem(signature) -> str | None:
    """Why an input of shape ``signature`` ([N, H, W, C], -1 = dynamic) cannot be fed without
    ``--input-size``, or None when its height and width are fixed. One wording for the worker
    (before the tensors are allocated) and for the preprocessing spec."""
    sig = [int(x) for x in signature or ()]
    if len(sig) == 4 and (sig[1] < 0 or sig[2] < 0):
        return (f"input {sig} has a dynamic height/width; give --input-size HxW (or input_size "
                "in the config or sidecar)")
    return None


def _input_shape(info: ModelInfo, batch: int, input_size) -> list[int] | None:
    """The input shape to resize to, or None to keep the model's own. Only dynamic dimensions
    (-1 in the shape signature) change, and the batch."""
    shape = list(info.input.shape)
    sig = list(info.input.shape_signature or shape)
    new = list(shape)
    if batch > 1 and shape:
        new[0] = batch
    if input_size is not None and len(shape) == 4 and len(sig) == 4:
        h, w = input_size
        if sig[1] < 0:
            new[1] = int(h)
        if sig[2] < 0:
            new[2] = int(w)
    return new if new != shape else None


# ----------------------------------------------------------------------------------- open


def _allocate(path, it):
    try:
        with _without_xnnpack_banner():  # XNNPACK is applied (and announced) here
            it.allocate_tensors()
    except Exception as e:  # noqa: BLE001
        raise _explain(path, e, "allocate") from None


def open_model(path, threads: int = 1, delegate: str = "cpu", batch: int = 1,
               runtime: Runtime | None = None, delegate_options: dict | None = None,
               output=None, input_size: tuple | None = None) -> Model:
    """Load, delegate and allocate a model for inference.

    ``batch > 1`` resizes the input; a model that pins batch 1 (most 2018-era quantized models:
    "XNNPack delegate failed to reshape runtime") falls back to batch 1, recorded in
    ``Model.batch`` and ``Model.note``. ``input_size`` (height, width) sets the dynamic
    height/width of a model whose shape signature has -1 there. ``output`` chooses the output
    that answers (see choose_output). Raises ModelError / DelegateError (one line).
    """
    rt = runtime or load_runtime()
    spec = dl.parse_delegate(delegate, delegate_options)
    p, data = _check_file(path)
    threads = max(1, int(threads or 1))
    batch = max(1, int(batch or 1))
    if spec.kind == "gpu":
        return _open_gpu(p, data, rt, spec, threads, batch, output)

    def build(b: int):
        tfl_delegate = dl.load_tflite_delegate(spec, rt.module)
        it = make_interpreter(p, runtime=rt, threads=threads,
                              delegates=[tfl_delegate] if tfl_delegate is not None else None)
        info = _info_from_interpreter(p, data, it, output=output, strict=True)
        problem = None if input_size else dynamic_size_problem(info.input.shape_signature)
        if problem:  # allocating at the placeholder 1 x 1 fails, or feeds one pixel
            raise ModelError(f"{_name(p)}: {problem}")
        shape = _input_shape(info, b, input_size)
        if shape is not None:
            try:
                it.resize_tensor_input(it.get_input_details()[0]["index"], shape)
            except Exception as e:  # noqa: BLE001
                raise _explain(p, e, "allocate") from None
        _allocate(p, it)
        if input_size is not None:  # the shapes after resizing; the ops as the file has them
            # (read again now, they would include the delegate's own DELEGATE node)
            info = dataclasses.replace(
                _info_from_interpreter(p, data, it, output=output, strict=True), ops=info.ops)
        return it, info, tfl_delegate

    note = None
    used = batch
    try:
        it, info, tfl_delegate = build(batch)
    except ModelError as e:
        if batch == 1:
            raise
        # retry at batch 1: if that works the model simply pins its batch size
        it, info, tfl_delegate = build(1)
        used = 1
        reason = str(e).split(": ", 1)[-1]
        note = f"batch {batch} not supported by this model ({reason}); using batch 1"
    ran = spec.ran_name
    if spec.kind == "edgetpu" and "edgetpu-custom-op" not in info.ops:
        note = _join(note, "model has no edgetpu-custom-op (not compiled with edgetpu_compiler): "
                           "every op ran on the CPU")
    model = Model(path=str(p), info=_with_batch(info, it), runtime=rt,
                  delegate_requested=spec.requested, delegate_ran=ran, batch=used,
                  threads=threads, note=note, interpreter=it, _delegate=tfl_delegate)
    model._in = it.get_input_details()[0]
    model._out = it.get_output_details()[info.output_index]
    return model


def _join(a: str | None, b: str) -> str:
    return b if not a else f"{a}; {b}"


def _with_batch(info: ModelInfo, it) -> ModelInfo:
    """ModelInfo always describes one image (batch dimension 1), whatever batch was allocated."""
    def one(t: TensorInfo) -> TensorInfo:
        if t.shape and t.shape[0] != 1:
            return TensorInfo(t.name, (1,) + tuple(t.shape[1:]), t.dtype, t.scale, t.zero_point)
        return t
    return dataclasses.replace(info, input=one(info.input), output=one(info.output),
                               outputs=tuple(one(t) for t in info.outputs))


@contextlib.contextmanager
def _capture_native_stderr():
    """Redirect fd 2 (C++ logging) into a buffer; yields a list that receives the text."""
    out: list[str] = []
    try:
        sys.stderr.flush()
        saved = os.dup(2)
    except (OSError, ValueError):
        yield out
        return
    with tempfile.TemporaryFile() as tmp:
        os.dup2(tmp.fileno(), 2)
        try:
            yield out
        finally:
            os.dup2(saved, 2)
            os.close(saved)
            tmp.seek(0)
            out.append(tmp.read().decode("utf-8", "replace"))


@contextlib.contextmanager
def _without_xnnpack_banner():
    """LiteRT prints "INFO: Created TensorFlow Lite XNNPACK delegate for CPU." from C++ for
    every interpreter (once per worker): keep it off the user's terminal, pass the rest on."""
    with _capture_native_stderr() as native:
        yield
    for text in native:
        for line in text.splitlines():
            if line.strip() and not line.startswith("INFO: Created TensorFlow Lite"):
                print(line, file=sys.stderr)


def _open_gpu(p: Path, data: bytes, rt: Runtime, spec, threads: int, batch: int,
              output=None) -> Model:
    """LiteRT 2.x CompiledModel on the GPU accelerator (WebGPU/Vulkan), batch 1, fixed input
    size. The chosen output is read from the output buffer at its index (untested on a GPU with
    several outputs)."""
    reason = dl.gpu_unavailable_reason(rt.name)
    if reason:
        raise DelegateError(f"gpu: {reason}")
    it = make_interpreter(p, runtime=rt, threads=1, default_delegates=False)
    info = _with_batch(_info_from_interpreter(p, data, it, output=output, strict=True), None)
    from ai_edge_litert.compiled_model import CompiledModel
    from ai_edge_litert.hardware_accelerator import HardwareAccelerator as HA

    with _capture_native_stderr() as log:
        try:
            cm = CompiledModel.from_file(str(p), hardware_accel=HA.GPU | HA.CPU)
            ins, outs = cm.create_input_buffers(0), cm.create_output_buffers(0)
            full = bool(cm.is_fully_accelerated())
        except Exception as e:  # noqa: BLE001
            err = e
        else:
            err = None
    if err is not None:
        text = "\n".join(log)
        why = [ln.split("]", 1)[-1].strip() for ln in text.splitlines()
               if "ERROR" in ln and ("WebGPU" in ln or "adapter" in ln.lower())]
        detail = why[0] if why else _one_line(str(err).splitlines()[-1] if str(err) else "")
        raise DelegateError(f"gpu: LiteRT's GPU accelerator failed on {p.name} ({detail})")
    note = None if full else "not fully accelerated: some ops run on the CPU (XNNPACK)"
    if batch > 1:
        note = _join(note, f"batch {batch} not supported on the GPU path; using batch 1")
    m = Model(path=str(p), info=info, runtime=rt, delegate_requested=spec.requested,
              delegate_ran="gpu", batch=1, threads=threads, note=note, interpreter=cm,
              backend="compiled_model")
    m._in, m._out = ins, outs
    return m


# ----------------------------------------------------------------------------------- run


def input_info(model: Model) -> TensorInfo:
    """What ``predict`` expects per image: shape (1, H, W, C), dtype and quantization."""
    return model.info.input


def _dequantize(raw: np.ndarray, t: TensorInfo) -> np.ndarray:
    if t.dtype in ("uint8", "int8", "int16", "int32") and t.scale:
        return ((raw.astype(np.float32) - np.float32(t.zero_point)) * np.float32(t.scale))
    return raw.astype(np.float32, copy=False)


def _invoke(model: Model, x: np.ndarray) -> np.ndarray:
    """Run exactly ``model.batch`` images; returns raw (undequantized) output (batch, classes)."""
    t0 = time.perf_counter()
    try:
        if model.backend == "compiled_model":
            cm = model.interpreter
            model._in[0].write(np.ascontiguousarray(x))
            cm.run_by_index(0, model._in, model._out)
            n = int(np.prod(model.info.output.shape))
            raw = model._out[model.info.output_index].read(n, np.dtype(model.info.output.dtype))
        else:
            it = model.interpreter
            it.set_tensor(model._in["index"], x)
            it.invoke()
            raw = it.get_tensor(model._out["index"])
    except Exception as e:  # noqa: BLE001
        raise _explain(model.path, e, "invoke") from None
    finally:
        model.last_invoke_s = time.perf_counter() - t0
    return np.asarray(raw).reshape(x.shape[0], -1)


def predict(model: Model, batch: np.ndarray) -> np.ndarray:
    """Scores for ``n`` images ``(n, H, W, C)`` -> ``(n, classes)`` float32, dequantized.

    ``n`` may differ from ``model.batch``: larger inputs are run in chunks, a short last chunk
    is zero-padded. ``model.last_invoke_s`` is the total invoke time of this call.
    """
    t = model.info.input
    x = np.asarray(batch)
    if x.ndim == len(t.shape) - 1:
        x = x[None]
    if tuple(x.shape[1:]) != tuple(t.shape[1:]):
        raise ModelError(f"{_name(model.path)}: input of shape {tuple(x.shape)} does not match "
                         f"the model's {t.shape}")
    want = np.dtype(t.dtype)
    if x.dtype != want:
        x = x.astype(want)
    n, b = x.shape[0], model.batch
    outs, total = [], 0.0
    for start in range(0, n, b):
        chunk = x[start:start + b]
        k = chunk.shape[0]
        if k < b:
            pad = np.zeros((b - k,) + chunk.shape[1:], dtype=want)
            chunk = np.concatenate([chunk, pad])
        outs.append(_invoke(model, np.ascontiguousarray(chunk))[:k])
        total += model.last_invoke_s
    model.last_invoke_s = total
    raw = np.concatenate(outs) if outs else np.zeros((0, model.info.num_classes))
    return _dequantize(raw, model.info.output)


def top_k(scores_row, k: int, num_classes: int) -> tuple[list[int], list[float]]:
    """Best ``k`` classes, best first, ties broken by the lower index.

    Indices are ILSVRC 0..999: for 1001-output models index 0 (background) maps to -1 and
    class k+1 to k. Values are the scores as given.
    """
    s = np.asarray(scores_row, dtype=np.float32).ravel()
    k = max(0, min(int(k), s.size))
    if k == 0:
        return [], []
    if s.size > 4 * k and not np.isnan(s).any():
        # only the values >= the k-th largest need sorting (a partition is linear): the same
        # order as a full sort, ties broken by the lower index
        kth = np.partition(s, s.size - k)[s.size - k]
        cand = np.flatnonzero(s >= kth)
        order = cand[np.lexsort((cand, -s[cand]))][:k]
    else:  # NaN sorts last in the full sort; a partition would not place it so
        order = np.lexsort((np.arange(s.size), -s))[:k]
    shift = 1 if int(num_classes) == 1001 else 0
    return [int(i) - shift for i in order], [float(s[i]) for i in order]


def batch_resizable(path, runtime: Runtime | None = None, batch: int = 2) -> bool:
    """Whether the model (on CPU/XNNPACK) accepts a batch dimension of ``batch``."""
    try:
        m = open_model(path, threads=1, delegate="cpu", batch=batch, runtime=runtime)
    except ModelError:
        return False
    return m.batch == batch


__all__ = [
    "Runtime", "TensorInfo", "ModelInfo", "Model", "load_runtime", "model_info", "open_model",
    "input_info", "predict", "top_k", "choose_output", "CLASS_COUNTS", "batch_resizable", "make_interpreter",
]

