"""Build an LPIRC submission: full-integer post-training quantization of a float model.

``lpirc submission build`` calls :func:`build_submission`. It converts a TensorFlow SavedModel or
a Keras model file to a ``.tflite`` whose every op is int8 (``TFLITE_BUILTINS_INT8``) and whose
input/output tensors are ``uint8`` (the LPIRC Track-1 format, the default) or ``int8``. The
calibration ("representative") data are images from a folder, decoded, cropped and resized by
:mod:`lpirc.preprocess`, exactly as ``lpirc run`` does, then normalised on the float path
``(pixel - mean) / std``. The model's input height and width are read from the model.

Beside ``X.tflite`` it writes the sidecar ``X.json`` that ``lpirc run`` reads (input size and
dtype, preprocessing, number of classes).

TensorFlow is needed here only (``pip install '.[build]'``); ``lpirc run`` and the scorer never
import it.
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
import tempfile
import zipfile
from pathlib import Path
from typing import Any, Iterable

import numpy as np
from tqdm import tqdm

from lpirc import __version__, preflight
from lpirc.errors import EXIT_USAGE, InputError, LpircError, ModelError
from lpirc.holdout import scan_folder
from lpirc.preprocess import ImageError, PreprocessSpec, channel_values, load_image
from lpirc.runtime import choose_output, model_info
from lpirc.settings import sidecar_path

SIDECAR_FORMAT = "lpirc-submission/1"
TF_MISSING = "TensorFlow is not installed; install the build extra: pip install '.[build]'"
_SKIPPED_SHOWN = 20  # unreadable calibration files named in the sidecar (the count is exact)


class OutPathError(LpircError):
    """``--out`` names something the model cannot be written to: a usage error."""

    exit_code = EXIT_USAGE


def _import_tf():
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    try:
        # TF 2.21 prints absl/oneDNN start-up chatter on fd 2 whatever TF_CPP_MIN_LOG_LEVEL says
        with _quiet_native_stderr():
            import tensorflow as tf  # noqa: PLC0415
    except ImportError as e:
        raise LpircError(TF_MISSING) from e
    try:
        tf.get_logger().setLevel("ERROR")
    except Exception:  # pragma: no cover - logging is cosmetic
        pass
    return tf


def _one_line(e: BaseException) -> str:
    text = str(e).strip() or type(e).__name__
    return text.splitlines()[0][:300]


def list_images(folder: Path, on_note=None) -> list[Path]:
    """Image files under ``folder`` by lpirc's one listing rule (lpirc.holdout.scan_images:
    linked folders followed, hidden files, __MACOSX/, OS junk and .csv/.json/.txt/.md skipped),
    sorted; ``on_note`` receives the line saying what was skipped. InputError for a missing
    folder or one without images."""

    folder = Path(folder)
    listing = scan_folder(folder, "representative image", on_note)
    return [folder / f for f in listing.files]


def _pick(files: list[Path], n: int) -> list[Path]:
    """Up to ``n`` files spread evenly over the sorted list (deterministic)."""
    if len(files) <= n:
        return files
    idx = np.linspace(0, len(files) - 1, n).round().astype(int)
    return [files[i] for i in sorted(set(idx.tolist()))]


def load_representative(folder: Path, height: int, width: int, num_images: int = 300,
                        crop_fraction: float = 0.875, mean: Any = 127.5, std: Any = 127.5,
                        resize: str = "bilinear", progress: bool = True
                        ) -> tuple[np.ndarray, list[str]]:
    """Decode and preprocess up to ``num_images`` images, float path, as ``lpirc run`` does.

    Returns a float32 array (n, height, width, 3) and the files skipped as undecodable
    (``"name: reason"``); InputError if none is left.
    """

    files = _pick(list_images(folder), max(1, int(num_images)))
    spec = PreprocessSpec(height=int(height), width=int(width), dtype="float32",
                          crop_fraction=float(crop_fraction), resize=resize, mean=mean, std=std)
    out, bad = [], []
    it: Iterable[Path] = files
    if progress:
        it = tqdm(files, desc="representative images", unit="img", leave=False, disable=None)
    for p in it:
        try:
            out.append(np.asarray(load_image(p, spec), np.float32))
        except ImageError as e:
            bad.append(f"{p.name}: {e}")
    if not out:
        first = f" (e.g. {bad[0]})" if bad else ""
        raise InputError(f"{folder}: none of the {len(files)} files could be decoded as an image{first}")
    return np.stack(out), bad


def _check_out(out: Path) -> None:
    """Refuse an ``--out`` that cannot hold the model, before any slow work is done."""
    if out.suffix.lower() == ".json":
        raise OutPathError(f"--out {out}: a model named .json would be overwritten by its own "
                           "sidecar; use a .tflite name")
    if out.is_dir():
        raise OutPathError(f"--out {out}: is a folder; give a file name such as {out / 'sub.tflite'}")


def _write_outputs(out: Path, tflite: bytes, sidecar: dict) -> None:
    """Model then sidecar, each through a temporary file, so a failed write leaves no half file."""
    for path, data in ((out, tflite), (sidecar_path(out), (json.dumps(sidecar, indent=2) + "\n").encode())):
        tmp = path.with_name(path.name + ".tmp")
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp.write_bytes(data)
            os.replace(tmp, path)
        except OSError as e:
            with contextlib.suppress(OSError):
                tmp.unlink()
            where = f": {e.filename}" if e.filename and str(e.filename) != str(tmp) else ""
            raise OutPathError(f"{path}: cannot write ({e.strerror or e}{where})") from None


def _input_hw(shape, where: str) -> tuple[int, int]:
    dims = [None if d is None else int(d) for d in shape]
    ok = (len(dims) == 4 and dims[0] in (1, None) and dims[3] == 3
          and all(isinstance(d, int) and d > 0 for d in dims[1:3]))
    if not ok:
        shown = "[" + ", ".join("None" if d is None else str(d) for d in dims) + "]"
        hint = ("; a dynamic height/width cannot be calibrated: build from a model with a fixed "
                "input size, e.g. tf.keras.Input((224, 224, 3))"
                if len(dims) == 4 and dims[3] == 3 and None in dims[1:3] else "")
        raise ModelError(f"{where}: model input shape {shown} is not [1|None, H, W, 3]{hint}")
    return dims[1], dims[2]


def _from_keras(tf, keras_model: Any, tmp: Path):
    """(converter, (H, W), source description) for a Keras model object or file."""
    if isinstance(keras_model, (str, os.PathLike)):
        path = Path(keras_model)
        if not path.exists():
            raise ModelError(f"{path}: Keras model file not found")
        try:
            model = tf.keras.models.load_model(path, compile=False)
        except Exception as e:
            raise ModelError(f"{path}: cannot load Keras model ({_one_line(e)})") from e
        where = str(path)
    else:
        model = keras_model
        where = f"Keras model '{getattr(model, 'name', 'model')}'"
    inputs = getattr(model, "inputs", None) or []
    if len(inputs) != 1:
        raise ModelError(f"{where}: model must have exactly one input (has {len(inputs)})")
    h, w = _input_hw(tuple(inputs[0].shape), where)
    # Through a SavedModel (variables frozen by the converter): works for Keras 2 and 3 alike.
    sm = tmp / "saved_model"
    try:
        if hasattr(model, "export"):
            try:
                model.export(str(sm), verbose=False)
            except TypeError:
                model.export(str(sm))
        else:  # pragma: no cover - Keras 2
            tf.saved_model.save(model, str(sm))
        conv = tf.lite.TFLiteConverter.from_saved_model(str(sm))
    except Exception as e:
        raise ModelError(f"{where}: cannot export the Keras model ({_one_line(e)})") from e
    return conv, (h, w), where


_HDF5_SIGNATURE = b"\x89HDF\r\n\x1a\n"


def _check_keras_file(path: Path) -> None:
    """Refuse what Keras would misreport (it calls a corrupt .keras file 'File not found')."""
    if path.is_dir():
        hint = " (a SavedModel: use --saved-model)" if (path / "saved_model.pb").is_file() else ""
        raise ModelError(f"{path}: is a folder, not a Keras model file{hint}")
    if not path.is_file():
        raise ModelError(f"{path}: Keras model file not found")
    size = path.stat().st_size
    if size == 0:
        raise ModelError(f"{path}: empty file (0 bytes)")
    with path.open("rb") as f:
        head = f.read(8)
    if not (zipfile.is_zipfile(path) or head == _HDF5_SIGNATURE):
        raise ModelError(f"{path}: not a Keras model file (neither a .keras zip archive nor an "
                         "HDF5 .h5 file)")


def _check_saved_model_dir(path: Path) -> None:
    if not path.exists():
        raise ModelError(f"{path}: SavedModel folder not found")
    if not path.is_dir() or not ((path / "saved_model.pb").is_file() or (path / "saved_model.pbtxt").is_file()):
        raise ModelError(f"{path}: not a SavedModel folder (no saved_model.pb)")


def _from_saved_model(tf, path: Path):
    path = Path(path)
    _check_saved_model_dir(path)
    try:
        loaded = tf.saved_model.load(str(path))
        sig = loaded.signatures["serving_default"]
    except KeyError as e:
        raise ModelError(f"{path}: SavedModel has no 'serving_default' signature") from e
    except Exception as e:
        raise ModelError(f"{path}: cannot load SavedModel ({_one_line(e)})") from e
    specs = list(sig.structured_input_signature[1].values())
    if len(specs) != 1:
        raise ModelError(f"{path}: model must have exactly one input (has {len(specs)})")
    if specs[0].dtype != tf.float32:
        raise ModelError(f"{path}: model input dtype is {specs[0].dtype.name}, expected float32")
    h, w = _input_hw(tuple(specs[0].shape), str(path))
    try:
        conv = tf.lite.TFLiteConverter.from_saved_model(str(path))
    except Exception as e:
        raise ModelError(f"{path}: cannot read SavedModel ({_one_line(e)})") from e
    return conv, (h, w), str(path)


@contextlib.contextmanager
def _quiet_native_stderr():
    """Silence what the TFLite converter/interpreter C++ code prints on fd 2 (progress chatter
    such as 'fully_quantize: 0, ...'). Our own errors are raised, not printed, so none is lost."""
    try:
        fd = sys.stderr.fileno()
    except (AttributeError, OSError, ValueError):  # e.g. a captured stream without a descriptor
        yield
        return
    sys.stderr.flush()
    saved = os.dup(fd)
    try:
        with open(os.devnull, "wb") as null:
            os.dup2(null.fileno(), fd)
        yield
    finally:
        os.dup2(saved, fd)
        os.close(saved)


def _answer(tflite_bytes: bytes, tmp: Path, source: str, output) -> tuple:
    """(input TensorInfo, answering output TensorInfo, note or None) of the converted model.

    The answer is chosen by lpirc run's rule (runtime.choose_output): ``output`` (a signature
    name, tensor name or index) if given, else the one [1, 1000|1001] output. ModelError, one
    line listing every output, when that cannot be told, or for a width other than 1000/1001."""
    probe = tmp / "converted.tflite"
    probe.write_bytes(tflite_bytes)
    with _quiet_native_stderr():
        info = model_info(probe)
    k, note = choose_output(source, info.outputs, output)
    out = info.outputs[k]
    classes = int(out.shape[-1]) if out.shape else 0
    if classes not in preflight.CLASS_COUNTS:
        which = f"output {out.describe(k)}" if len(info.outputs) > 1 else "model"
        raise ModelError(f"{source}: {which} has {classes} classes; an ILSVRC-2012 classifier "
                         "needs 1000 or 1001 (index 0 = background)")
    return info.input, out, note


def _checked_values(dtype: str, mean, std, crop_fraction: float) -> tuple[tuple, tuple]:
    """The per-channel mean and std; InputError naming the option for a bad value."""
    if dtype not in ("uint8", "int8"):
        raise InputError(f"--dtype {dtype}: must be uint8 or int8")
    if not 0 < crop_fraction <= 1:
        raise InputError(f"--crop-fraction {crop_fraction}: must be in (0, 1]")
    try:
        return channel_values("mean", mean), channel_values("std", std, positive=True)
    except ValueError as e:
        raise InputError(f"--{e}") from None


def _one_or_three(v: tuple) -> float | list:
    """A number when the three channels agree (as before), else the R, G, B list."""
    return float(v[0]) if len(set(v)) == 1 else [float(x) for x in v]


def _quantize(tf, conv, data: np.ndarray, dtype: str, mean_c, std_c, source: str) -> bytes:
    """Full-integer conversion calibrated on ``data`` (N, H, W, 3 float32, normalised): every
    op int8, input and output ``dtype``. Raises ModelError when the converter fails."""
    # Pin the calibrated input range to the full pixel range [(0-mean)/std, (255-mean)/std],
    # so the quantized input is (close to) the raw pixel (uint8) or pixel-128 (int8),
    # which is what `lpirc run` feeds. Two pixels of the first image are changed for that.
    data = data.copy()
    m, sd = np.asarray(mean_c, np.float32), np.asarray(std_c, np.float32)
    data[0, 0, 0, :] = (0.0 - m) / sd
    data[0, 0, -1, :] = (255.0 - m) / sd

    def representative_dataset():
        for k in range(len(data)):
            yield [data[k:k + 1]]

    conv.optimizations = [tf.lite.Optimize.DEFAULT]
    conv.representative_dataset = representative_dataset
    conv.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
    conv.inference_input_type = tf.uint8 if dtype == "uint8" else tf.int8
    conv.inference_output_type = tf.uint8 if dtype == "uint8" else tf.int8
    try:
        with _quiet_native_stderr():
            return conv.convert()
    except Exception as e:
        raise ModelError(f"{source}: full-integer conversion failed ({_one_line(e)})") from e


def build_submission(out: Path, representative: Path, *, saved_model: Path | None = None,
                     keras_model: Any = None, dtype: str = "uint8", num_images: int = 300,
                     crop_fraction: float = 0.875, mean: Any = 127.5, std: Any = 127.5,
                     resize: str = "bilinear", progress: bool = True,
                     output: str | int | None = None, on_note=None) -> Path:
    """Quantize a float model to a full-integer TFLite submission; write ``out`` and its sidecar.

    Exactly one of ``saved_model`` (a SavedModel folder) or ``keras_model`` (a ``.keras``/``.h5``
    file, or an in-memory ``tf.keras.Model``) is given. The model takes one float32 input
    ``[1|None, H, W, 3]`` normalised as ``(pixel - mean) / std`` and returns class scores with
    1000 (ILSVRC-2012 order) or 1001 (index 0 = background) outputs. ``mean``/``std`` are in
    pixel units 0..255, one number or three (R, G, B; a list or ``"R,G,B"``), written to the
    sidecar so that ``lpirc run`` normalises and quantizes the same way.

    ``representative`` is an image folder; up to ``num_images`` images spread over it are used
    for calibration. ``dtype`` is the input/output tensor type, ``"uint8"`` or ``"int8"``.
    ``output`` names the output that answers (signature name, tensor name or index) when the
    model has several [1, 1000|1001] ones (e.g. an auxiliary head); it is written to the
    sidecar's ``preprocess.output`` so that ``lpirc run`` answers from it too. ``on_note``
    receives one-line notes: what the folder listing skipped, which output answers.

    Raises ModelError (bad/missing model, conversion failure), InputError (image folder missing,
    empty or undecodable), OutPathError (``out`` a folder, named .json, or not writable) and
    LpircError (TensorFlow missing). Returns ``out``.
    """
    if (saved_model is None) == (keras_model is None):
        raise InputError("give exactly one of a SavedModel folder or a Keras model")
    mean_c, std_c = _checked_values(dtype, mean, std, crop_fraction)
    out = Path(out)
    # Fail fast on paths, before TensorFlow (slow to import, maybe absent) is imported.
    _check_out(out)
    if saved_model is not None:
        _check_saved_model_dir(Path(saved_model))
    elif isinstance(keras_model, (str, os.PathLike)):
        _check_keras_file(Path(keras_model))
    list_images(representative, on_note)
    tf = _import_tf()

    with tempfile.TemporaryDirectory(prefix="lpirc-build-") as tmpdir:
        if saved_model is not None:
            conv, (h, w), source = _from_saved_model(tf, Path(saved_model))
        else:
            conv, (h, w), source = _from_keras(tf, keras_model, Path(tmpdir))

        data, skipped = load_representative(representative, h, w, num_images, crop_fraction,
                                            mean_c, std_c, resize, progress)
        tflite = _quantize(tf, conv, data, dtype, mean_c, std_c, source)
        name = source if saved_model is None and not isinstance(keras_model, (str, os.PathLike)) \
            else Path(source).name
        t_in, t_out, note = _answer(tflite, Path(tmpdir), name, output)  # ModelError
    if note and on_note is not None:
        on_note(note)
    classes = int(t_out.shape[-1])
    preprocess = {"crop_fraction": float(crop_fraction), "resize": resize,
                  "mean": _one_or_three(mean_c), "std": _one_or_three(std_c)}
    if output is not None:
        preprocess["output"] = t_out.signature_name or t_out.name

    sidecar = {
        "format": SIDECAR_FORMAT,
        "input": {"height": h, "width": w, "dtype": dtype},
        "preprocess": preprocess,
        "classes": classes,
        "labels": "ilsvrc2012",
        "built_by": f"lpirc submission build {__version__}",
        "tensorflow": tf.__version__,
        "source": name,
        "representative_images": int(len(data)),
        "representative_skipped": len(skipped),
        "representative_skipped_files": skipped[:_SKIPPED_SHOWN],
        "quantization": {"input": {"scale": t_in.scale, "zero_point": t_in.zero_point},
                         "output": {"scale": t_out.scale, "zero_point": t_out.zero_point}},
    }
    _write_outputs(out, tflite, sidecar)
    return out
