"""lpirc submission check: verdicts on broken, badly quantized and real models."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
from tflite_models import convert_int8

from submission.check import check_submission, natural_test_image

from conftest import run_lpirc

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
MODELS = DATA / "models"


@pytest.fixture(scope="session")
def tf_models(tmp_path_factory):
    """Three tiny full-int8 models built once: clean, wide-range activation, dead DW channel."""
    tf = pytest.importorskip("tensorflow", reason="TensorFlow not installed (needed to build models)")
    out = tmp_path_factory.mktemp("check")
    size = 16
    tf.random.set_seed(0)

    def net(wide=False, kill_channel=False):
        inp = tf.keras.Input((size, size, 3))
        x = tf.keras.layers.Conv2D(8, 3, strides=2, padding="same", activation="relu")(inp)
        if wide:  # activations spanning about -400..400: one 8-bit level is ~3
            x = tf.keras.layers.Conv2D(8, 1, kernel_initializer=tf.keras.initializers.Constant(50.0),
                                       bias_initializer=tf.keras.initializers.Constant(-200.0))(x)
        dw = tf.keras.layers.DepthwiseConv2D(3, padding="same", activation="relu")
        x = dw(x)
        x = tf.keras.layers.GlobalAveragePooling2D()(x)
        out_ = tf.keras.layers.Dense(1000, activation="softmax")(x)
        m = tf.keras.Model(inp, out_)
        if kill_channel:
            k, b = dw.get_weights()
            k[..., 2, 0] = 0.0  # channel 2 all zero
            k[..., 5, 0] = 1e-4 * np.sign(k[..., 5, 0] + 1e-9)  # channel 5 tiny
            dw.set_weights([k, b])
        return m

    paths = {}
    vec = tf.keras.Sequential([tf.keras.Input((16,)), tf.keras.layers.Dense(1000, activation="softmax")])
    paths["vector"] = out / "vector.tflite"
    paths["vector"].write_bytes(convert_int8(tf, vec, size, shape=(16,)))
    # EfficientNet-Lite's documented case: one tensor spanning -168..204 (inputs calibrated on
    # [-1, 1], so x * 186 + 18 covers exactly that)
    inp = tf.keras.Input((size, size, 3))
    x = tf.keras.layers.Rescaling(186.0, offset=18.0, name="effnet_case")(inp)
    x = tf.keras.layers.GlobalAveragePooling2D()(x)
    paths["effnet"] = out / "effnet.tflite"
    paths["effnet"].write_bytes(convert_int8(
        tf, tf.keras.Model(inp, tf.keras.layers.Dense(1000, activation="softmax")(x)), size))
    for name, kw, conv_kw in [("clean", {}, {}), ("wide", {"wide": True}, {}),
                              ("dwzero", {"kill_channel": True}, {"per_tensor": True})]:
        p = out / f"{name}.tflite"
        p.write_bytes(convert_int8(tf, net(**kw), size, **conv_kw))
        paths[name] = p
    paths["float"] = out / "float.tflite"
    paths["float"].write_bytes(tf.lite.TFLiteConverter.from_keras_model(net()).convert())
    return paths


@pytest.fixture()
def broken(tmp_path):
    files = {"empty": b"", "garbage": os.urandom(3000), "text": b"hello\n" * 100}
    out = {}
    for k, v in files.items():
        p = tmp_path / f"{k}.tflite"
        p.write_bytes(v)
        out[k] = p
    out["missing"] = tmp_path / "missing.tflite"
    out["folder"] = tmp_path / "folder.tflite"
    out["folder"].mkdir()
    return out


@pytest.fixture()
def submission_copy(tmp_path, reference_model):
    """The bundled reference submission and its sidecar, copied where a test may change them."""
    d = tmp_path / "sub"
    d.mkdir()
    model = d / "model.tflite"
    model.write_bytes(reference_model.read_bytes())
    (d / "model.json").write_text(reference_model.with_suffix(".json").read_text())
    return model


def _status(rep):
    return {r.name: r.status for r in rep.results}


def _cli(*args, cwd):
    return run_lpirc("submission", "check", *args, cwd=cwd, timeout=300)


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["empty", "garbage", "text", "missing", "folder"])
def test_broken_models_fail_load(broken, kind):
    rep = check_submission(broken[kind])
    assert rep.failed
    load = rep.get("load")
    assert load.status == "fail" and f"{kind}.tflite" in load.message
    assert "\n" not in load.message
    assert rep.to_json()["verdict"] == "fail"


@pytest.mark.slow
def test_truncated_model_fails(reference_model, tmp_path):
    p = tmp_path / "trunc.tflite"
    p.write_bytes(reference_model.read_bytes()[:500])
    rep = check_submission(p)
    assert rep.get("load").status == "fail" and "not a TFLite model" in rep.get("load").message


@pytest.mark.slow
def test_runtime_crash_while_loading_is_a_failed_check(reference_model, tmp_path, monkeypatch):
    """The model is first loaded in a child process: a child killed by a signal (as an older
    runtime segfaults on a corrupt model) is a failed load check, not a crash of the checker."""
    crash = tmp_path / "crash"
    crash.mkdir()
    (crash / "sitecustomize.py").write_text("import os, signal\nos.kill(os.getpid(), signal.SIGSEGV)\n")
    monkeypatch.setenv("PYTHONPATH", str(crash))  # only new Python processes import it
    rep = check_submission(reference_model)
    load = rep.get("load")
    assert load.status == "fail" and "the runtime crashed loading it (signal 11)" in load.message
    # the structure is read in a child process too (it crashes as well), never in the checker
    assert {r.status for r in rep.results[1:]} == {"skip"}
    monkeypatch.delenv("PYTHONPATH")
    assert not check_submission(reference_model).failed


@pytest.mark.tf
@pytest.mark.slow
def test_clean_model_passes(tf_models):
    rep = check_submission(tf_models["clean"])
    st = _status(rep)
    assert not rep.failed, rep.to_json()
    assert st["load"] == st["input"] == st["output"] == st["ops"] == "pass"
    assert st["activations"] == "pass" and st["depthwise"] == "pass"
    assert st["invoke"] in ("pass", "warn")
    assert "1000 classes" in rep.get("output").message
    assert rep.get("invoke").details["latency_ms"] > 0


@pytest.mark.tf
@pytest.mark.slow
def test_float_model_warns_and_skips_the_quantization_checks(tf_models):
    rep = check_submission(tf_models["float"])
    st = _status(rep)
    assert not rep.failed
    assert st["input"] == "warn" and "float32" in rep.get("input").message
    assert st["activations"] == "skip" and "float model" in rep.get("activations").message
    assert st["depthwise"] == "skip"
    assert "(pixel - 127.5) / 127.5" in rep.get("sidecar").message


@pytest.mark.tf
@pytest.mark.slow
def test_wide_activation_is_flagged(tf_models):
    rep = check_submission(tf_models["wide"])
    r = rep.get("activations")
    assert r.status == "warn", r.message
    assert r.details["tensors"] and all(t["range"] > 128 for t in r.details["tensors"])
    assert all(t["tensor"] for t in r.details["tensors"])
    # a threshold above the widest range silences it
    widest = max(t["range"] for t in r.details["tensors"])
    assert check_submission(tf_models["wide"], range_threshold=widest + 1).get("activations").status == "pass"


@pytest.mark.tf
@pytest.mark.slow
def test_documented_effnet_range_is_flagged_by_name_and_threshold(tf_models, tmp_path):
    rep_file = tmp_path / "r.json"
    p = _cli(tf_models["effnet"], "--report", rep_file, cwd=tmp_path)
    assert p.returncode == 0, p.stdout + p.stderr  # a warning, not a failure
    line = next(ln for ln in p.stdout.splitlines() if "activations" in ln)
    assert line.startswith("WARN") and "effnet_case" in line and "wider than 128" in line
    act = next(c for c in json.loads(rep_file.read_text())["checks"] if c["name"] == "activations")
    case = next(t for t in act["details"]["tensors"]
                if "effnet_case" in t["tensor"] and t["tensor"].endswith("/add"))
    assert abs(case["min"] + 168) < 2 and abs(case["max"] - 204) < 2, case
    assert abs(case["range"] - 372) < 4 and case["observed"][0] >= case["min"]
    p = _cli(tf_models["effnet"], "--range-threshold", 400, "--no-report", cwd=tmp_path)
    assert "PASS  activations  none of" in p.stdout and "range wider than 400" in p.stdout


@pytest.mark.slow
def test_diagnostics_run_on_the_cpu_when_the_delegate_is_unavailable(submission_copy):
    rep = check_submission(submission_copy, delegate="/nonexistent/libdelegate.so")
    st = _status(rep)
    assert st["load"] == "fail" and st["invoke"] == "skip" and st["accuracy"] == "skip"
    assert st["activations"] == "pass" and st["depthwise"] == "pass"
    assert "inspected on the CPU" in rep.get("activations").message


@pytest.mark.tf
@pytest.mark.slow
def test_zero_depthwise_channel_is_flagged(tf_models):
    rep = check_submission(tf_models["dwzero"])
    r = rep.get("depthwise")
    assert r.status == "warn", r.message
    t = r.details["tensors"][0]
    assert 2 in t["all_zero"] and 5 in (t["near_zero"] + t["all_zero"])
    assert t["tensor"]


@pytest.mark.tf
@pytest.mark.slow
def test_accuracy_with_holdout_and_reference(tf_models, tmp_path):
    from PIL import Image

    hold = tmp_path / "hold"
    hold.mkdir()
    rows = ["filename,label"]
    for i in range(4):
        Image.fromarray(natural_test_image(64, 64, seed=i)).save(hold / f"img{i}.png")
        rows.append(f"img{i}.png,{i}")
    (hold / "ground_truth.csv").write_text("\n".join(rows) + "\n")
    rep = check_submission(tf_models["clean"], holdout=hold, reference=tf_models["clean"])
    r = rep.get("accuracy")
    assert r.status == "pass", r.message
    assert r.details["images"] == 4 and r.details["drop_top1"] == 0
    assert rep.get("invoke").details["image"].endswith("img0.png")


@pytest.mark.tf
@pytest.mark.slow
def test_cli_exit_codes_and_report(tf_models, broken, tmp_path):
    rep_file = tmp_path / "r.json"
    p = _cli(tf_models["clean"], "--report", rep_file, cwd=tmp_path)
    assert p.returncode == 0, p.stdout + p.stderr
    assert "PASS  load" in p.stdout
    data = json.loads(rep_file.read_text())
    assert data["format"] == "lpirc-check/1" and data["verdict"] == "pass"
    assert data["model"] == str(tf_models["clean"]) and data["lpirc"] and data["runtime"]["name"]
    assert data["counts"]["fail"] == 0 and data["counts"]["pass"] >= 6
    assert [c["name"] for c in data["checks"]] == ["load", "input", "output", "ops", "sidecar", "normalise",
                                                   "invoke", "activations", "depthwise", "accuracy"]
    p = _cli(broken["garbage"], cwd=tmp_path)
    assert p.returncode == 1 and "FAIL  load" in p.stdout
    assert (tmp_path / "garbage.check.json").is_file()  # default: ./<stem>.check.json
    assert "Traceback" not in p.stderr
    p = _cli(tf_models["clean"], "--range-threshold", "-1", cwd=tmp_path)
    assert p.returncode == 2
    p = _cli(tf_models["clean"], "--reference", tf_models["clean"], cwd=tmp_path)
    assert p.returncode == 2


@pytest.mark.slow
def test_cli_folder_as_model_is_a_failed_check_not_a_usage_error(broken, tmp_path):
    p = _cli(broken["folder"], "--report", tmp_path / "r.json", cwd=tmp_path)
    assert p.returncode == 1, p.stdout + p.stderr
    assert "FAIL  load" in p.stdout and "folder.tflite" in p.stdout and "directory" in p.stdout
    assert "Traceback" not in p.stderr
    assert json.loads((tmp_path / "r.json").read_text())["verdict"] == "fail"


@pytest.mark.slow
def test_cli_usage_errors_exit_2(submission_copy, tmp_path):
    for args in ([], [submission_copy, "--limit", "0"], [submission_copy, "--holdout", tmp_path / "nope"],
                 [submission_copy, "--near-zero", "-1"], [submission_copy, "--bogus-option"]):
        p = _cli(*args, cwd=tmp_path)
        assert p.returncode == 2, (args, p.stdout, p.stderr)
        assert "Traceback" not in p.stderr and "Error:" in p.stderr


@pytest.mark.slow
def test_sidecar_is_read_like_lpirc_run(submission_copy):
    """The check uses the sidecar's preprocessing, and fails on one `lpirc run` would refuse."""
    side = submission_copy.with_suffix(".json")
    rep = check_submission(submission_copy)
    r = rep.get("sidecar")
    assert r.status == "pass" and "model.json" in r.message and r.details["crop_fraction"] == 0.875
    data = json.loads(side.read_text())
    data["preprocess"]["crop_fraction"] = 0.5
    side.write_text(json.dumps(data))
    assert check_submission(submission_copy).get("sidecar").details["crop_fraction"] == 0.5
    data["preprocess"]["crop_fraction"] = 7
    side.write_text(json.dumps(data))
    rep = check_submission(submission_copy)
    assert rep.failed and rep.get("sidecar").status == "fail"
    assert "crop_fraction" in rep.get("sidecar").message and "model.json" in rep.get("sidecar").message
    assert rep.get("invoke").status != "fail"  # the other checks still run, on the defaults
    side.write_text("{not json")
    rep = check_submission(submission_copy)
    assert rep.get("sidecar").status == "fail" and "not a readable submission sidecar" in rep.get("sidecar").message


@pytest.mark.slow
def test_stale_sidecar_warns_and_absent_sidecar_passes(submission_copy):
    side = submission_copy.with_suffix(".json")
    data = json.loads(side.read_text())
    data["input"]["height"] = 99
    data["classes"] = 1001
    side.write_text(json.dumps(data))
    r = check_submission(submission_copy).get("sidecar")
    assert r.status == "warn"
    assert "height 99 recorded, 64 in the model" in r.message and "classes 1001 recorded" in r.message
    side.unlink()
    r = check_submission(submission_copy).get("sidecar")
    assert r.status == "pass" and "defaults" in r.message and r.details["path"] is None


@pytest.mark.slow
def test_invoke_line_says_the_latency_is_measured(submission_copy):
    r = check_submission(submission_copy).get("invoke")
    assert r.details["latency_ms"] > 0
    assert "measured: median of 5 invokes" in r.message and "generated test image" in r.message


@pytest.mark.slow
def test_empty_holdout_is_a_failed_accuracy_check_with_a_report(submission_copy, tmp_path):
    (tmp_path / "empty").mkdir()
    rep_file = tmp_path / "r.json"
    p = _cli(submission_copy, "--holdout", tmp_path / "empty", "--report", rep_file, cwd=tmp_path)
    assert p.returncode == 1, p.stdout + p.stderr
    assert "FAIL  accuracy" in p.stdout and "holdout folder holds no images" in p.stdout
    assert "PASS  invoke" in p.stdout or "WARN  invoke" in p.stdout  # ran on a generated image
    checks = {c["name"]: c["status"] for c in json.loads(rep_file.read_text())["checks"]}
    assert checks["accuracy"] == "fail" and checks["load"] == "pass"
    assert p.stderr.strip() == ""


@pytest.mark.slow
def test_reference_that_does_not_load_is_one_clear_line(submission_copy, small_holdout, broken):
    rep = check_submission(submission_copy, holdout=small_holdout, reference=broken["garbage"],
                           limit=3)
    r = rep.get("accuracy")
    assert r.status == "fail" and r.message.startswith("--reference garbage.tflite: not a TFLite")
    assert r.details["images"] == 3  # the submission's own figures are kept


@pytest.mark.tf
@pytest.mark.slow
def test_reference_with_a_non_image_input_is_refused(submission_copy, small_holdout, tf_models):
    r = check_submission(submission_copy, holdout=small_holdout, reference=tf_models["vector"],
                         limit=3).get("accuracy")
    assert r.status == "fail" and "vector.tflite: input [-1, 16] is not one [1, H, W, 3] image" in r.message


@pytest.mark.tf
@pytest.mark.slow
@pytest.mark.parametrize("delegate", ["edgetpu", "/nonexistent/libdelegate.so"])
def test_cli_missing_delegate_fails_without_traceback(tf_models, tmp_path, delegate):
    p = _cli(tf_models["clean"], "--delegate", delegate, "--no-report", cwd=tmp_path)
    if p.returncode == 0:
        pytest.skip(f"{delegate} usable here")
    assert p.returncode == 1
    assert "FAIL  load" in p.stdout and (delegate.split("/")[-1] in p.stdout or "edgetpu" in p.stdout)
    assert "Traceback" not in p.stderr and "Exception ignored" not in p.stderr


# ------------------------------------------------------------------ the shared real models

def _need_models():
    if not MODELS.is_dir():
        pytest.skip(f"{MODELS} absent (shared data not beside the checkout)")


def test_real_edgetpu_model_needs_edgetpu_under_cpu(tmp_path):
    _need_models()
    p = _cli(MODELS / "mobilenet_v1_0.75_192_quant_edgetpu.tflite", "--delegate", "cpu",
             "--no-report", cwd=tmp_path)
    assert p.returncode == 1
    assert "needs the Edge TPU delegate" in p.stdout


def test_real_invoking_error_model_fails(tmp_path):
    _need_models()
    p = _cli(MODELS / "model_invoking_error.tflite", "--no-report", cwd=tmp_path)
    assert p.returncode == 1
    assert "FAIL  load" in p.stdout and "fake-op-double" in p.stdout


def test_real_mobilenet_v2_passes(tmp_path):
    _need_models()
    args = [MODELS / "mobilenet_v2_1.0_224_quant.tflite", "--report", tmp_path / "r.json"]
    dev = DATA / "imagenet-dev"
    if dev.is_dir():
        args += ["--holdout", dev, "--limit", "20"]
    p = _cli(*args, cwd=tmp_path)
    assert p.returncode == 0, p.stdout + p.stderr
    data = json.loads((tmp_path / "r.json").read_text())
    st = {c["name"]: c["status"] for c in data["checks"]}
    assert st["load"] == "pass" and st["output"] == "pass" and st["ops"] == "pass"
    assert "1001 classes" in next(c for c in data["checks"] if c["name"] == "output")["message"]
    if dev.is_dir():
        acc = next(c for c in data["checks"] if c["name"] == "accuracy")
        assert acc["status"] == "pass" and acc["details"]["top1"] > 0.5
