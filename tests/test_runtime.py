"""lpirc.runtime and lpirc.delegates: backend selection, bad models, batching, delegates."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from tflite_models import convert_int8

from lpirc import delegates as dl
from lpirc import probe
from lpirc import runtime as rt
from lpirc.errors import DelegateError, ModelError

from conftest import REPO

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
MODELS = DATA / "models"


def _need_data():
    if not MODELS.is_dir():
        pytest.skip(f"{MODELS} absent (shared data not beside the checkout)")


def build_tiny_int8(path: Path, classes: int = 1000, size: int = 16) -> Path:
    """Full-int8 PTQ of a tiny Keras model (uint8 in/out would be the 2018 style; int8 here)."""
    tf = pytest.importorskip("tensorflow", reason="TensorFlow not installed (needed to build models)")
    tf.random.set_seed(0)
    inp = tf.keras.Input((size, size, 3), batch_size=None)
    x = tf.keras.layers.Conv2D(8, 3, strides=2, padding="same", activation="relu")(inp)
    x = tf.keras.layers.DepthwiseConv2D(3, padding="same", activation="relu")(x)
    x = tf.keras.layers.GlobalAveragePooling2D()(x)
    out = tf.keras.layers.Dense(classes, activation="softmax")(x)
    model = tf.keras.Model(inp, out)
    path.write_bytes(convert_int8(tf, model, size))
    return path


@pytest.fixture(scope="session")
def tiny_int8(tmp_path_factory) -> Path:
    return build_tiny_int8(tmp_path_factory.mktemp("rt") / "tiny_int8.tflite")


@pytest.fixture()
def bad_files(tmp_path):
    good = bytearray(b"\x1c\x00\x00\x00TFL3" + bytes(200))
    files = {
        "empty": b"",
        "garbage": os.urandom(4096),
        "short": b"TF",
        "header_only": bytes(good),  # right identifier, nonsense tables
        "text": b"this is not a model\n" * 50,
    }
    out = {}
    for k, v in files.items():
        p = tmp_path / f"{k}.tflite"
        p.write_bytes(v)
        out[k] = p
    return out


# ---------------------------------------------------------------------------- runtime choice

def test_load_runtime_prefers_litert_and_records_version():
    r = rt.load_runtime()
    assert r.name in ("ai_edge_litert", "tflite_runtime", "tensorflow.lite")
    assert r.version and r.version != "unknown"
    assert hasattr(r.module, "Interpreter")
    assert r.to_json() == {"name": r.name, "version": r.version}


def test_tensorflow_not_imported_when_litert_present():
    code = ("import sys; from lpirc.runtime import load_runtime; r = load_runtime(); "
            "print(r.name, 'tensorflow' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)}, timeout=60)
    name, tf_loaded = out.stdout.split()
    if name == "ai_edge_litert":
        assert tf_loaded == "False"


# ---------------------------------------------------------------------------- bad models

def test_missing_model(tmp_path):
    with pytest.raises(ModelError, match="no such file"):
        rt.open_model(tmp_path / "nope.tflite")


def test_directory_model(tmp_path):
    with pytest.raises(ModelError, match="directory"):
        rt.model_info(tmp_path)


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["empty", "garbage", "short", "header_only", "text"])
def test_corrupt_models_are_one_line_model_errors(bad_files, kind):
    for fn in (rt.open_model, rt.model_info):
        with pytest.raises(ModelError) as ei:
            fn(bad_files[kind])
        msg = str(ei.value)
        assert msg.startswith(f"{kind}.tflite: ")
        assert "\n" not in msg
        assert ("empty" in msg) if kind == "empty" else ("not a TFLite model" in msg)


@pytest.mark.tf
@pytest.mark.slow
def test_truncated_real_model(tiny_int8, tmp_path):
    data = tiny_int8.read_bytes()
    for cut in (len(data) // 2, 64):
        p = tmp_path / f"cut{cut}.tflite"
        p.write_bytes(data[:cut])
        with pytest.raises(ModelError, match="not a TFLite model"):
            rt.open_model(p)


@pytest.mark.tf
@pytest.mark.slow
def test_probe_model_reports_bad_files(bad_files, tiny_int8):
    with pytest.raises(ModelError, match="not a TFLite model"):
        probe.probe_model(bad_files["garbage"], timeout_s=60)
    info = probe.probe_model(tiny_int8, timeout_s=60)
    assert info.num_classes == 1000 and info.input.dtype == "int8"


@pytest.mark.slow
@pytest.mark.tf
def test_probe_model_reports_a_crash_as_signal(tiny_int8, monkeypatch):
    # Simulate an older runtime that segfaults: the child kills itself with SIGSEGV.
    if sys.platform.startswith("win"):
        pytest.skip("signals are POSIX")
    monkeypatch.setattr(probe, "_PROBE_SNIPPET", "import os, signal; os.kill(os.getpid(), signal.SIGSEGV)")
    with pytest.raises(ModelError, match=r"tiny_int8.tflite: the runtime crashed loading it \(signal 11\)"):
        probe.probe_model(tiny_int8, timeout_s=60)


@pytest.mark.tf
@pytest.mark.slow
def test_probe_model_timeout(tiny_int8, monkeypatch):
    monkeypatch.setattr(probe, "_PROBE_SNIPPET", "import time; time.sleep(30)")
    with pytest.raises(ModelError, match="did not finish"):
        probe.probe_model(tiny_int8, timeout_s=1)


def test_edgetpu_model_needs_edgetpu_delegate():
    _need_data()
    p = MODELS / "mobilenet_v1_0.75_192_quant_edgetpu.tflite"
    with pytest.raises(ModelError) as ei:
        rt.open_model(p)
    assert str(ei.value) == (
        "mobilenet_v1_0.75_192_quant_edgetpu.tflite: needs the Edge TPU delegate "
        "(unresolved custom op edgetpu-custom-op); run with --delegate edgetpu")
    info = rt.model_info(p)  # structure is still readable
    assert "edgetpu-custom-op" in info.ops


def test_unresolved_custom_op_model():
    _need_data()
    with pytest.raises(ModelError, match="model_invoking_error.tflite: unresolved custom op fake-op-double"):
        rt.open_model(MODELS / "model_invoking_error.tflite")
    with pytest.raises(ModelError, match="fake-op-double"):
        probe.probe_model(MODELS / "model_invoking_error.tflite", timeout_s=60)


# ---------------------------------------------------------------------------- running

@pytest.mark.slow
@pytest.mark.tf
def test_open_predict_topk_tiny(tiny_int8):
    m = rt.open_model(tiny_int8, threads=1)
    assert m.delegate_ran == "xnnpack" and m.batch == 1 and m.note is None
    t = rt.input_info(m)
    assert t.shape == (1, 16, 16, 3) and t.dtype == "int8" and t.scale > 0
    assert m.info.num_classes == 1000 and m.info.sha256 and m.info.size_bytes > 0
    assert "CONV_2D" in m.info.ops and "DEPTHWISE_CONV_2D" in m.info.ops
    x = np.random.default_rng(1).integers(-128, 127, (3, 16, 16, 3)).astype(np.int8)
    s = rt.predict(m, x)
    assert s.shape == (3, 1000) and s.dtype == np.float32
    assert np.all(s >= 0) and np.all(s <= 1) and float(s[0].sum()) <= 1.1  # dequantized softmax
    assert m.last_invoke_s > 0
    idx, vals = rt.top_k(s[0], 5, 1000)
    assert len(idx) == 5 and vals == sorted(vals, reverse=True)
    # a single image without a batch dimension works too
    assert rt.predict(m, x[0]).shape == (1, 1000)


@pytest.mark.slow
@pytest.mark.tf
def test_batch_resize_on_resizable_model(tiny_int8):
    assert rt.batch_resizable(tiny_int8)
    m = rt.open_model(tiny_int8, batch=4)
    assert m.batch == 4 and m.note is None
    assert m.info.input.shape == (1, 16, 16, 3)  # info always describes one image
    x = np.random.default_rng(2).integers(-128, 127, (6, 16, 16, 3)).astype(np.int8)
    s4 = rt.predict(m, x)  # 6 images: a full batch and a padded one
    s1 = rt.predict(rt.open_model(tiny_int8), x)
    assert s4.shape == (6, 1000)
    np.testing.assert_allclose(s4, s1, atol=1e-6)


def test_batch_falls_back_to_one_on_pinned_model():
    _need_data()
    p = MODELS / "mobilenet_v2_1.0_224_quant.tflite"
    assert rt.batch_resizable(p) is False
    m = rt.open_model(p, batch=8)
    assert m.batch == 1
    assert m.note and "batch 8 not supported" in m.note and "using batch 1" in m.note
    s = rt.predict(m, np.full((2, 224, 224, 3), 128, np.uint8))
    assert s.shape == (2, 1001)


def test_top_k_background_and_ties():
    s = np.zeros(1001, np.float32)
    s[0], s[5], s[7] = 0.9, 0.5, 0.5
    idx, vals = rt.top_k(s, 3, 1001)
    assert idx == [-1, 4, 6] and vals == [pytest.approx(0.9), 0.5, 0.5]
    idx, _ = rt.top_k(np.arange(1000, dtype=np.float32), 2, 1000)
    assert idx == [999, 998]
    assert rt.top_k(np.ones(3), 0, 1000) == ([], [])


@pytest.mark.slow
@pytest.mark.tf
def test_predict_rejects_wrong_shape(tiny_int8):
    m = rt.open_model(tiny_int8)
    with pytest.raises(ModelError, match="does not match"):
        rt.predict(m, np.zeros((1, 8, 8, 3), np.int8))


@pytest.mark.slow
@pytest.mark.tf
def test_modelinfo_json_roundtrip(tiny_int8):
    info = rt.model_info(tiny_int8)
    assert rt.ModelInfo.from_json(info.to_json()) == info


# ---------------------------------------------------------------------------- delegates

def test_parse_delegate_and_exclusivity():
    assert dl.parse_delegate("cpu").ran_name == "xnnpack"
    assert dl.parse_delegate(None).kind == "cpu"
    assert dl.parse_delegate("edgetpu").library == dl.edgetpu_library_name()
    assert dl.parse_delegate("gpu").kind == "gpu"
    ext = dl.parse_delegate("/opt/libfoo_delegate.so")
    assert ext.kind == "external" and ext.ran_name == "external:/opt/libfoo_delegate.so"
    assert dl.delegate_is_exclusive("edgetpu") is True
    assert dl.delegate_is_exclusive("cpu") is False
    assert dl.delegate_is_exclusive("gpu") is False


@pytest.mark.slow
@pytest.mark.tf
def test_edgetpu_delegate_absent_is_one_line(tiny_int8):
    if dl.find_library(dl.edgetpu_library_name())[0] is not None:
        pytest.skip("an Edge TPU runtime is installed here")
    with pytest.raises(DelegateError) as ei:
        rt.open_model(tiny_int8, delegate="edgetpu")
    assert str(ei.value).startswith("edgetpu: libedgetpu.so.1 not found (install the Edge TPU runtime")


@pytest.mark.slow
@pytest.mark.tf
def test_bogus_delegate_paths(tiny_int8, tmp_path, monkeypatch):
    # the delegate is named once, as typed, then the problem
    missing = str(tmp_path / "libnothing.so")
    with pytest.raises(DelegateError) as ei:
        rt.open_model(tiny_int8, delegate=missing)
    assert str(ei.value) == f"{missing}: not found"
    junk = tmp_path / "libjunk.so"
    junk.write_bytes(b"not an ELF")
    with pytest.raises(DelegateError, match="cannot be loaded") as ei:
        rt.open_model(tiny_int8, delegate=str(junk))
    assert str(ei.value).count(str(junk)) == 1
    # a bare name is looked up like dlopen does, not in this folder: say how to mean the file
    monkeypatch.chdir(tmp_path)
    with pytest.raises(DelegateError, match=r"write \./libjunk\.so"):
        rt.open_model(tiny_int8, delegate="libjunk.so")


@pytest.mark.slow
@pytest.mark.tf
def test_gpu_unavailable_is_a_delegate_error(tiny_int8):
    reason = dl.gpu_unavailable_reason(rt.load_runtime().name)
    if reason is None:
        pytest.skip("a GPU accelerator may be usable here")
    with pytest.raises(DelegateError, match="^gpu: "):
        rt.open_model(tiny_int8, delegate="gpu")


@pytest.mark.tf
@pytest.mark.slow
@pytest.mark.parametrize("delegate", ["edgetpu", "/nonexistent/libdelegate.so", "gpu"])
def test_cli_delegate_errors_have_no_traceback(tiny_int8, delegate):
    code = ("import sys\nfrom lpirc.runtime import open_model\nfrom lpirc.errors import LpircError\n"
            "try:\n    open_model(sys.argv[1], delegate=sys.argv[2])\n"
            "except LpircError as e:\n    print('ERR', e); sys.exit(e.exit_code)\n")
    p = subprocess.run([sys.executable, "-c", code, str(tiny_int8), delegate], capture_output=True,
                       text=True, env={**os.environ, "PYTHONPATH": str(REPO)}, timeout=60)
    if p.returncode == 0:
        pytest.skip(f"{delegate} is usable here")
    assert p.returncode == 4, p.stderr
    assert "Traceback" not in p.stderr and "Exception ignored" not in p.stderr


def test_top_k_by_partition_orders_as_a_full_sort():
    """top_k sorts only the values at or above the k-th largest: the result must be the full
    sort's (best first, ties by the lower index, NaN last), on many ties and on NaN."""
    rng = np.random.default_rng(0)
    cases = [rng.random(1001).astype(np.float32),
             (rng.integers(0, 4, 1001) / 255).astype(np.float32),  # heavy ties, as uint8 outputs
             np.zeros(1000, np.float32), rng.random(1000).astype(np.float32)]
    cases[2][[7, 500, 900]] = 1.0
    cases[3][[3, 40]] = np.nan
    for s in cases:
        for k in (1, 5, 7):
            full = np.lexsort((np.arange(s.size), -s))[:k]
            shift = 1 if s.size == 1001 else 0
            idx, vals = rt.top_k(s, k, s.size)
            assert idx == [int(i) - shift for i in full]
            np.testing.assert_array_equal(vals, s[full])
