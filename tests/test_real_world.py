"""Submissions and holdouts as people really make them (issue 10): models converted with an
ImageNet mean/std, several outputs, dynamic input sizes; the square crop; folders with linked
class folders and OS junk; ground truths with loose names, other formats and 1-based labels.

Every model is built here with TensorFlow's converter (tests/tflite_models.py); every folder in
a temp dir. `run`, `score`, `submission check`, `tune` and `holdout make` must agree.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import unicodedata
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from tflite_models import (IMAGENET_MEAN, IMAGENET_STD, constant_head, convert_float, convert_int8,
                           convert_int8_imagenet, grey_level_classifier, imagenet_normalised)

import scoring
from lpirc.errors import InputError
from lpirc.preprocess import (OptionError, PreprocessOptions, PreprocessSpec, crop_box, input_lut,
                              load_image, raw_codes_problem, to_input)
from submission.check import check_submission

from conftest import REPO, run_lpirc as lpirc

ANSWER = 278  # the constant models' class (kit fox in lpirc's sorted-synset order)
MEAN = ",".join(f"{255 * m:g}" for m in IMAGENET_MEAN)  # 123.675,116.28,103.53
STD = ",".join(f"{255 * s:g}" for s in IMAGENET_STD)  # 58.395,57.12,57.375


def error_lines(p: subprocess.CompletedProcess) -> list[str]:
    return [ln for ln in p.stderr.splitlines() if ln.startswith("lpirc: error:")]


def flat_png(path: Path, rgb, size=(12, 10)) -> Path:
    """A flat colour image (PNG: lossless, so crop and resize keep the colour exactly)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, tuple(int(v) for v in rgb)).save(path, "PNG")
    return path


def run_dir(tmp_path: Path, name: str) -> Path:
    return tmp_path / "runs" / name


def refused_line(model: Path, holdout: Path, out: Path) -> str:
    """``lpirc run`` of a model it must refuse: exit 3, no traceback; returns the one error line."""
    p = lpirc("run", "--model", model, "--holdout", holdout, "--out", out, "--quiet",
              "--workers", "1")
    assert p.returncode == 3, p.stderr
    (line,) = error_lines(p)
    assert "Traceback" not in p.stderr
    return line


@pytest.fixture(scope="session")
def models(tmp_path_factory) -> dict[str, Path]:
    """Small real models, built once: an ImageNet-normalised int8 classifier, a Keras model with
    an auxiliary head, one with an embedding output, one with a dynamic input, a constant one."""
    tf = pytest.importorskip("tensorflow", reason="TensorFlow not installed (needed to build models)")
    out = tmp_path_factory.mktemp("models")
    paths: dict[str, Path] = {}
    tf.random.set_seed(0)

    grey, centres = grey_level_classifier(tf)
    paths["imagenet"] = out / "imagenet.tflite"
    paths["imagenet"].write_bytes(convert_int8_imagenet(tf, grey, 8))
    paths["imagenet_keras"] = grey  # the float truth
    paths["centres"] = centres

    inp = tf.keras.Input((8, 8, 3))
    x = tf.keras.layers.GlobalAveragePooling2D()(inp)
    two = tf.keras.Model(inp, {"predictions": constant_head(tf, x, "predictions", ANSWER),
                               "aux_logits": constant_head(tf, x, "aux_logits", 3)})
    paths["aux"] = out / "aux.tflite"
    paths["aux"].write_bytes(convert_float(tf, two))

    emb = tf.keras.layers.Dense(1280, name="embedding")(x)
    both = tf.keras.Model(inp, {"embedding": emb, "probs": constant_head(tf, x, "probs", ANSWER)})
    paths["embedding"] = out / "embedding.tflite"
    paths["embedding"].write_bytes(convert_float(tf, both))

    dyn_in = tf.keras.Input((None, None, 3))
    dx = tf.keras.layers.GlobalAveragePooling2D()(dyn_in)
    paths["dynamic"] = out / "dynamic.tflite"
    paths["dynamic"].write_bytes(convert_float(
        tf, tf.keras.Model(dyn_in, constant_head(tf, dx, "probs", ANSWER))))

    conv_in = tf.keras.Input((None, None, 3))  # a 3x3 convolution cannot be allocated at 1x1
    cx = tf.keras.layers.GlobalAveragePooling2D()(tf.keras.layers.Conv2D(4, 3)(conv_in))
    paths["dynamic_conv"] = out / "dynamic_conv.tflite"
    paths["dynamic_conv"].write_bytes(convert_float(
        tf, tf.keras.Model(conv_in, constant_head(tf, cx, "probs", ANSWER))))

    paths["constant"] = out / "constant.tflite"
    paths["constant"].write_bytes(convert_float(
        tf, tf.keras.Model(inp, constant_head(tf, x, "probs", ANSWER))))

    plain = tf.keras.Model(inp, tf.keras.layers.Dense(1000, activation="softmax")(x))
    paths["int8_plain"] = out / "int8_plain.tflite"  # TF2 PTQ, calibrated on [-1, 1]
    paths["int8_plain"].write_bytes(convert_int8(tf, plain, 8))
    return paths


@pytest.fixture()
def answer_holdout(tmp_path) -> Path:
    """Four flat images and a ground truth naming them all with the constant models' answer."""
    root = tmp_path / "answer"
    for i in range(4):
        flat_png(root / f"img_{i}.png", (40 * i, 90, 200))
    synset = scoring.synsets()[ANSWER]
    (root / "ground_truth.csv").write_text(
        "filename,label\n" + "".join(f"img_{i}.png,{synset}\n" for i in range(4)))
    return root


# --- 1. input quantization and normalisation -------------------------------------------------


@pytest.mark.tf
@pytest.mark.slow
def test_imagenet_normalised_int8_model_answers_like_its_float_model(models, tmp_path):
    """Fed (pixel - mean_c) / std_c quantized with its own scale (0.01866) and zero point (-14),
    the int8 model answers like the float model on every grey level; raw pixel codes do not."""
    centres = models["centres"]
    levels = [int(np.clip(round(255 * (c * IMAGENET_STD[2] + IMAGENET_MEAN[2])), 0, 255))
              for c in centres]
    root = tmp_path / "grey"
    for lv in levels:
        flat_png(root / f"grey_{lv:03d}.png", (lv, lv, lv))
    x = imagenet_normalised(np.array(levels)[:, None, None, None].repeat(8, 1).repeat(8, 2)
                            .repeat(3, 3))
    truth = models["imagenet_keras"].predict(x, verbose=0).argmax(axis=1)
    assert sorted(truth.tolist()) == list(range(len(centres)))  # every level its own class
    (root / "ground_truth.csv").write_text(
        "".join(f"grey_{lv:03d}.png,{int(k)}\n" for lv, k in zip(levels, truth)))

    model = models["imagenet"]
    p = lpirc("run", "--model", model, "--holdout", root, "--mean", MEAN, "--std", STD,
              "--out", run_dir(tmp_path, "normalised"), "--quiet", "--workers", "1")
    assert p.returncode == 0, p.stderr
    score = json.loads((run_dir(tmp_path, "normalised") / "score.json").read_text())
    assert score["top1"] == 1.0 and score["images_answered"] == len(levels)
    pre = json.loads((run_dir(tmp_path, "normalised") / "manifest.json").read_text())["preprocess"]
    assert pre["quantize"][1] == -14 and abs(pre["quantize"][0] - 0.01866) < 1e-4
    assert pre["mean"] == pytest.approx([123.675, 116.28, 103.53])

    # the same values from the model's sidecar (per channel, as lists)
    side = model.with_suffix(".json")
    side.write_text(json.dumps({"preprocess": {"mean": [123.675, 116.28, 103.53],
                                               "std": [58.395, 57.12, 57.375]}}))
    try:
        p = lpirc("run", "--model", model, "--holdout", root, "--out",
                  run_dir(tmp_path, "sidecar"), "--quiet", "--workers", "1")
        assert p.returncode == 0, p.stderr
        assert json.loads((run_dir(tmp_path, "sidecar") / "score.json").read_text())["top1"] == 1.0
        assert check_submission(model).get("normalise").status == "pass"
    finally:
        side.unlink()

    # today's raw codes (pixel - 128) answer some levels wrong: the test can fail
    p = lpirc("run", "--model", model, "--holdout", root, "--out", run_dir(tmp_path, "raw"),
              "--quiet", "--workers", "1")
    assert p.returncode == 0, p.stderr
    assert json.loads((run_dir(tmp_path, "raw") / "score.json").read_text())["top1"] < 1.0
    # ... and the run says so, with what to set (the rule submission check's normalise uses)
    raw_notes = json.loads((run_dir(tmp_path, "raw") / "manifest.json").read_text())["notes"]
    (note,) = [n for n in raw_notes if "raw pixel codes" in n]
    assert "[-2.13, 2.63]" in note and f"--mean {MEAN} --std {STD}" in note
    assert "answers are likely wrong" in p.stdout and f"--mean {MEAN}" in p.stdout
    p = lpirc("tune", "--model", model, "--holdout", root, "--max-time-s", "10",
              "--no-compare-defaults", "--out", tmp_path / "tune")  # the same workers, same note
    assert p.returncode == 0, p.stderr
    assert "answers are likely wrong" in p.stdout and f"--mean {MEAN}" in p.stdout
    for ok in ("normalised", "sidecar"):  # fed its own normalisation: no such note
        man = json.loads((run_dir(tmp_path, ok) / "manifest.json").read_text())
        assert not [n for n in man["notes"] if "raw pixel codes" in n], man["notes"]


@pytest.mark.tf
@pytest.mark.slow
def test_check_says_what_to_set_for_an_imagenet_range(models):
    rep = check_submission(models["imagenet"])
    r = rep.get("normalise")
    assert r.status == "fail" and rep.failed
    assert "[-2.13, 2.63]" in r.message and f"--mean {MEAN} --std {STD}" in r.message
    rep = check_submission(models["imagenet"], preprocess={"mean": MEAN, "std": STD})
    assert rep.get("normalise").status == "pass", rep.get("normalise").message
    # a mean/std that clips the input warns
    rep = check_submission(models["imagenet"], preprocess={"mean": "128", "std": "10"})
    assert rep.get("normalise").status == "warn" and "clipped" in rep.get("normalise").message


def _all_pixels() -> np.ndarray:
    p = np.arange(256, dtype=np.uint8)
    return np.stack([p, p[::-1], np.roll(p, 7)], axis=-1)[None]  # (1, 256, 3), every value


@pytest.mark.parametrize("dtype,scale,zp,given", [
    ("uint8", 1 / 128, 128, {}),  # the 2018 models, nothing given
    ("uint8", 1 / 128, 128, {"mean": 128, "std": 128}),  # their normalisation, given
    ("int8", 0.007843137718737125, -1, {"mean": 127.5, "std": 127.5}),  # TF2 PTQ + its sidecar
    ("int8", 0.0078125, 0, {}),
])
def test_standard_quantized_inputs_get_exactly_todays_values(dtype, scale, zp, given):
    """uint8: the pixel; int8: pixel - 128, bit for bit, for every pixel value."""
    spec = PreprocessOptions(**given).spec_for((1, 8, 8, 3), dtype, scale, zp)
    px = _all_pixels()
    want = px if dtype == "uint8" else (px.astype(np.int16) - 128).astype(np.int8)
    got = to_input(px, spec)
    assert got.dtype == np.dtype(dtype) and np.array_equal(got, want)
    assert "raw pixel codes" in spec.describe_input()


@pytest.mark.slow
@pytest.mark.tf
def test_built_models_get_todays_values(models, reference_model):
    """The bundled reference (TF2 int8 PTQ, sidecar mean/std 127.5) and a converted model with no
    sidecar: pixel - 128 exactly, as the settings `lpirc run` resolves for them."""
    from lpirc.runtime import model_info
    from lpirc.settings import resolve_preprocess

    px = _all_pixels()
    for path in (reference_model, models["int8_plain"]):
        t = model_info(path).input
        spec = resolve_preprocess(path, {}).spec_for(t.shape, t.dtype, t.scale, t.zero_point)
        assert t.dtype == "int8"
        assert np.array_equal(to_input(px, spec), (px.astype(np.int16) - 128).astype(np.int8))
        assert raw_codes_problem(t.dtype, t.scale, t.zero_point) is None  # no "likely wrong" note


def test_real_2018_models_get_todays_values(shared_data):
    from lpirc.runtime import model_info
    from lpirc.settings import resolve_preprocess

    found = 0
    for name in ("mobilenet_v2_1.0_224_quant.tflite", "mobilenet_v1_0.75_192_quant_edgetpu.tflite"):
        path = shared_data / "models" / name
        if not path.is_file():
            continue
        found += 1
        t = model_info(path).input
        assert (t.dtype, t.zero_point) == ("uint8", 128) and t.scale == pytest.approx(1 / 128)
        spec = resolve_preprocess(path, {}).spec_for(t.shape, t.dtype, t.scale, t.zero_point)
        assert np.array_equal(to_input(_all_pixels(), spec), _all_pixels())
        assert raw_codes_problem(t.dtype, t.scale, t.zero_point) is None
        given = PreprocessOptions(mean=128, std=128).spec_for(t.shape, t.dtype, t.scale,
                                                               t.zero_point)
        assert input_lut(given) is None
    if not found:
        pytest.skip("no 2018 model in the shared data")


def test_quantize_is_normalise_then_the_tensors_own_scale_clipped(monkeypatch):
    spec = PreprocessOptions(mean=MEAN, std=STD).spec_for((1, 4, 4, 3), "int8", 0.01866, -14)
    px = _all_pixels()
    real = (px.astype(np.float64) - np.array([123.675, 116.28, 103.53])) / np.array(
        [58.395, 57.12, 57.375])
    q = real / 0.01866 - 14
    want = np.clip(np.sign(q) * np.floor(np.abs(q) + 0.5), -128, 127).astype(np.int8)
    assert np.array_equal(to_input(px, spec), want)
    # channel order: the same values, B first
    bgr = PreprocessOptions(mean=MEAN, std=STD, channel_order="bgr").spec_for(
        (1, 4, 4, 3), "int8", 0.01866, -14)
    assert np.array_equal(to_input(px, bgr), want[..., ::-1])
    f = PreprocessOptions(mean=[0, 0, 0], std=255, channel_order="bgr").spec_for(
        (1, 4, 4, 3), "float32")
    assert np.allclose(to_input(px, f), px[..., ::-1] / 255.0)


@pytest.mark.slow
def test_mean_std_forms_and_units(tmp_path):
    for form in ("123.675,116.28,103.53", [123.675, 116.28, 103.53], "123.675 116.28 103.53"):
        assert PreprocessOptions(mean=form).mean == (123.675, 116.28, 103.53)
    assert PreprocessOptions(mean=127.5).mean == (127.5,) * 3
    with pytest.raises(OptionError, match="0..1 units.*multiply by 255") as e:
        PreprocessOptions(mean="0.485,0.456,0.406", std="0.229,0.224,0.225")
    assert e.value.setting == "mean"
    with pytest.raises(OptionError, match="one number or three"):
        PreprocessOptions(mean="1,2")
    with pytest.raises(OptionError, match="std must be positive"):
        PreprocessOptions(std="1,0,1")
    # a sidecar's bad value is one line naming the sidecar (exit 5)
    model = tmp_path / "m.tflite"
    model.write_bytes(b"x")
    model.with_suffix(".json").write_text(json.dumps({"preprocess": {"mean": [1, 2]}}))
    from lpirc.settings import resolve_preprocess

    with pytest.raises(InputError, match=r"m\.json: mean must be one number or three"):
        resolve_preprocess(model, {})
    # PyTorch's 0..1 values typed on the command line: click's usage error naming the option
    # (exit 2, as for any other bad --mean/--std), not a nameless exit 5; from a file: exit 5
    for opt in ("--mean", "--std"):
        p = lpirc("run", "--model", model, "--holdout", tmp_path, opt, "0.485,0.456,0.406",
                  "--out", run_dir(tmp_path, "units"), "--quiet")
        assert p.returncode == 2 and f"'{opt}'" in p.stderr and "0..1 units" in p.stderr, p.stderr
    model.with_suffix(".json").write_text(json.dumps({"preprocess": {"std": [0.229] * 3}}))
    with pytest.raises(InputError, match=r"m\.json: std 0\.229 looks like 0\.\.1 units"):
        resolve_preprocess(model, {})


# --- 2. which output is the answer ------------------------------------------------------------


@pytest.mark.tf
@pytest.mark.slow
def test_auxiliary_head_is_refused_until_output_is_chosen(models, tmp_path, answer_holdout):
    model = models["aux"]
    line = refused_line(model, answer_holdout, run_dir(tmp_path, "none"))
    assert "2 outputs and 2 are [1, 1000|1001]" in line and "--output NAME|INDEX" in line
    assert "0 'aux_logits' (StatefulPartitionedCall_1:0) [1, 1000]" in line
    assert "'predictions'" in line

    p = lpirc("run", "--model", model, "--holdout", answer_holdout, "--output", "predictions",
              "--out", run_dir(tmp_path, "chosen"), "--quiet", "--workers", "1")
    assert p.returncode == 0, p.stderr
    man = json.loads((run_dir(tmp_path, "chosen") / "manifest.json").read_text())
    assert man["model"]["output_used"] == "predictions"
    assert man["model"]["output"]["signature_name"] == "predictions"
    assert json.loads((run_dir(tmp_path, "chosen") / "score.json").read_text())["top1"] == 1.0

    # by index from the sidecar: output 0 is the auxiliary head, which answers class 3
    model.with_suffix(".json").write_text(json.dumps({"preprocess": {"output": 0}}))
    try:
        p = lpirc("run", "--model", model, "--holdout", answer_holdout, "--out",
                  run_dir(tmp_path, "index"), "--quiet", "--workers", "1")
        assert p.returncode == 0, p.stderr
        man = json.loads((run_dir(tmp_path, "index") / "manifest.json").read_text())
        assert man["model"]["output_used"] == "aux_logits"
        assert json.loads((run_dir(tmp_path, "index") / "score.json").read_text())["top1"] == 0.0
        # a name the model lacks, from the sidecar: one line that does not blame --output alone
        model.with_suffix(".json").write_text(json.dumps({"preprocess": {"output": "logits"}}))
        line = refused_line(model, answer_holdout, run_dir(tmp_path, "nosuch"))
        assert "output 'logits'" in line and "sidecar" in line and "1 'predictions'" in line
    finally:
        model.with_suffix(".json").unlink()

    rep = check_submission(model)
    assert rep.get("output").status == "fail" and "--output NAME|INDEX" in rep.get("output").message
    rep = check_submission(model, preprocess={"output": "predictions"})
    assert rep.get("output").status == "pass" and "'predictions'" in rep.get("output").message
    assert rep.get("invoke").details["top5"][0] == ANSWER


@pytest.mark.tf
@pytest.mark.slow
def test_tune_best_json_carries_the_preprocessing_it_measured(models, tmp_path, answer_holdout):
    """Tuned with --output/--crop/--mean, best.json says so: `lpirc run --config best.json`
    (what tune prints to do next) answers from the same output (it was refused, exit 3)."""
    model = models["aux"]
    p = lpirc("tune", "--model", model, "--holdout", answer_holdout, "--output", "predictions",
              "--crop", "square", "--mean", "100", "--max-time-s", "10", "--no-compare-defaults",
              "--out", tmp_path / "tune")
    assert p.returncode == 0, p.stderr
    best = json.loads((tmp_path / "tune" / "best.json").read_text())["settings"]
    assert (best["output"], best["crop"], best["mean"]) == ("predictions", "square", [100.0] * 3)
    assert "std" not in best and "resize" not in best  # as the defaults have them: not pinned
    out = run_dir(tmp_path, "tuned")
    p = lpirc("run", "--model", model, "--holdout", answer_holdout, "--config",
              tmp_path / "tune" / "best.json", "--out", out, "--quiet", "--workers", "1")
    assert p.returncode == 0, p.stderr
    man = json.loads((out / "manifest.json").read_text())
    assert man["model"]["output_used"] == "predictions" and man["preprocess"]["crop"] == "square"
    assert json.loads((out / "score.json").read_text())["top1"] == 1.0


@pytest.mark.tf
@pytest.mark.slow
def test_embedding_output_beside_the_answer(models, tmp_path, answer_holdout):
    p = lpirc("run", "--model", models["embedding"], "--holdout", answer_holdout, "--out",
              run_dir(tmp_path, "emb"), "--quiet", "--workers", "1")
    assert p.returncode == 0, p.stderr
    man = json.loads((run_dir(tmp_path, "emb") / "manifest.json").read_text())
    assert man["model"]["output_used"] == "probs" and man["model"]["num_classes"] == 1000
    note = next(n for n in man["notes"] if "answers; ignored" in n)
    assert "'embedding'" in note and "[1, 1280]" in note
    assert json.loads((run_dir(tmp_path, "emb") / "score.json").read_text())["top1"] == 1.0
    r = check_submission(models["embedding"]).get("output")
    assert r.status == "pass" and "'embedding'" in r.message


# --- 3. dynamic input sizes -------------------------------------------------------------------


@pytest.mark.tf
@pytest.mark.slow
def test_dynamic_height_width_needs_input_size(models, tmp_path, answer_holdout):
    model = models["dynamic"]
    line = refused_line(model, answer_holdout, run_dir(tmp_path, "dyn"))
    assert "dynamic.tflite" in line and "[-1, -1, -1, 3]" in line and "--input-size" in line
    rep = check_submission(model)
    assert rep.get("input").status == "fail" and "--input-size" in rep.get("input").message

    p = lpirc("run", "--model", model, "--holdout", answer_holdout, "--input-size", "20x24",
              "--crop", "square", "--out", run_dir(tmp_path, "sized"), "--quiet", "--workers", "1")
    assert p.returncode == 0, p.stderr
    man = json.loads((run_dir(tmp_path, "sized") / "manifest.json").read_text())
    assert (man["preprocess"]["height"], man["preprocess"]["width"]) == (20, 24)
    assert man["model"]["input"]["shape"] == [1, 20, 24, 3]
    assert man["settings"]["crop"] == man["preprocess"]["crop"] == "square"
    assert man["settings"]["input_size"] == [20, 24]
    rep = check_submission(model, preprocess={"input_size": "20x24"})
    r = rep.get("input")  # a float32 input warns; the size is set
    assert r.status == "warn" and "dynamic [-1, -1, -1, 3], set by --input-size 20x24" in r.message
    ops = rep.get("ops")  # the model's ops, not the XNNPACK node that replaced them once resized
    assert ops.status == "pass" and "DELEGATE" not in ops.message, ops.message
    assert rep.get("invoke").status in ("pass", "warn")

    # tune runs the same workers: the same refusal, before any trial is measured
    p = lpirc("tune", "--model", model, "--holdout", answer_holdout, "--max-time-s", "10",
              "--out", tmp_path / "tune")
    assert p.returncode == 3 and "--input-size" in error_lines(p)[0], p.stderr

    p = lpirc("run", "--model", model, "--holdout", answer_holdout, "--input-size", "20by",
              "--out", run_dir(tmp_path, "bad"), "--quiet")
    # typed on the command line: click's usage error naming the option (exit 2) ...
    assert p.returncode == 2 and "'--input-size'" in p.stderr and "input_size must be HxW" in p.stderr
    # ... and the same value in a config file: one line naming that file (exit 5)
    cfg = tmp_path / "bad_size.json"
    cfg.write_text(json.dumps({"settings": {"input_size": "20by"}}))
    p = lpirc("run", "--model", model, "--holdout", answer_holdout, "--config", cfg,
              "--out", run_dir(tmp_path, "bad2"), "--quiet")
    assert p.returncode == 5 and "input_size must be HxW" in error_lines(p)[0], p.stderr
    assert "bad_size.json" in error_lines(p)[0]


@pytest.mark.tf
@pytest.mark.slow
def test_dynamic_conv_model_is_refused_for_its_size_not_its_allocation(models, tmp_path,
                                                                       answer_holdout):
    """A real backbone (a convolution) cannot even be allocated at the 1 x 1 placeholder: the
    refusal must still name the dynamic size, in run, tune and check's load check alike."""
    model = models["dynamic_conv"]
    for cmd in (("run", "--out", run_dir(tmp_path, "dc"), "--quiet", "--workers", "1"),
                ("tune", "--max-time-s", "10", "--out", tmp_path / "tune")):
        p = lpirc(cmd[0], "--model", model, "--holdout", answer_holdout, *cmd[1:])
        assert p.returncode == 3, p.stderr
        (line,) = error_lines(p)
        assert "dynamic height/width" in line and "allocate" not in line, line
    rep = check_submission(model)
    for name in ("load", "input"):
        r = rep.get(name)
        assert r.status == "fail" and "dynamic height/width" in r.message, (name, r.message)
    p = lpirc("run", "--model", model, "--holdout", answer_holdout, "--input-size", "16x16",
              "--out", run_dir(tmp_path, "dc16"), "--quiet", "--workers", "1")
    assert p.returncode == 0, p.stderr
    top1 = [json.loads(ln)["top5"][0] for ln in
            (run_dir(tmp_path, "dc16") / "results.jsonl").read_text().splitlines()]
    assert top1 == [ANSWER] * 4


@pytest.mark.slow
@pytest.mark.tf
def test_dynamic_batch_keeps_working(models):
    from lpirc.runtime import open_model, predict

    m = open_model(models["aux"], batch=3, output="predictions")
    assert m.info.input.shape_signature[0] == -1 and m.batch == 3
    out = predict(m, np.zeros((3, 8, 8, 3), np.float32))
    assert out.shape == (3, 1000) and (out.argmax(axis=1) == ANSWER).all()


# --- 4. crop ----------------------------------------------------------------------------------


def test_square_crop_is_the_tflite_eval_tools():
    # side min(round(0.875 h), round(0.875 w)), offset round((d - side) / 2), C rounding
    assert crop_box(500, 375, 0.875, "square") == (86, 24, 414, 352)  # side 328
    assert crop_box(375, 500, 0.875, "square") == (24, 86, 352, 414)
    assert crop_box(10, 10, 0.75, "square") == (1, 1, 9, 9)  # round(7.5) = 8, away from zero
    assert crop_box(500, 375, 0.875, "central") == (31, 23, 469, 352)  # aspect kept


def test_square_crop_feeds_the_centred_square(tmp_path):
    rng = np.random.default_rng(0)
    pix = rng.integers(0, 256, (30, 40, 3), dtype=np.uint8)
    path = tmp_path / "x.png"
    Image.fromarray(pix).save(path)
    l, t, r, b = crop_box(40, 30, 0.5, "square")
    spec = PreprocessSpec(b - t, r - l, "uint8", crop_fraction=0.5, crop="square")
    assert np.array_equal(load_image(path, spec), pix[t:b, l:r])  # same size: no resampling
    central = PreprocessSpec(b - t, r - l, "uint8", crop_fraction=0.5)
    assert not np.array_equal(load_image(path, central), pix[t:b, l:r])


# --- 5. one rule for what an image is ---------------------------------------------------------


def _messy_holdout(tmp_path: Path) -> Path:
    """<synset>/ folders as people make them: one linked in, a notebook checkpoint copy, macOS
    and Windows leftovers, a link loop and a broken link."""
    syn = scoring.synsets()
    store = tmp_path / "store" / syn[ANSWER]
    flat_png(store / "a.png", (10, 20, 30))
    flat_png(store / "b.png", (30, 20, 10))
    root = tmp_path / "messy"
    flat_png(root / syn[ANSWER + 1] / "c.png", (1, 2, 3))
    os.symlink(store, root / syn[ANSWER])
    flat_png(root / syn[ANSWER + 1] / ".ipynb_checkpoints" / "c-checkpoint.png", (1, 2, 3))
    flat_png(root / "__MACOSX" / syn[ANSWER + 1] / "._c.png", (0, 0, 0))
    (root / "Thumbs.db").write_bytes(b"\0" * 10)
    (root / syn[ANSWER + 1] / "desktop.ini").write_text("[.ShellClassInfo]\n")
    os.symlink(root, root / syn[ANSWER + 1] / "loop")
    os.symlink(tmp_path / "gone.png", root / "gone.png")
    return root


def test_one_listing_rule_everywhere(tmp_path):
    from lpirc.holdout import scan_images
    from submission.build import list_images as build_list
    from submission.check import _holdout_images

    sys.path.insert(0, str(REPO / "bench"))
    try:
        import run_bench
    finally:
        sys.path.remove(str(REPO / "bench"))
    root = _messy_holdout(tmp_path)
    syn = scoring.synsets()
    want = [f"{syn[ANSWER]}/a.png", f"{syn[ANSWER]}/b.png", f"{syn[ANSWER + 1]}/c.png"]
    listing = scan_images(root)
    assert listing.files == want
    assert listing.skipped == {"hidden": 1, "__MACOSX/": 1, "OS junk": 2, "folder link loop": 1,
                               "broken link": 1}
    assert listing.skipped_line() == ("skipped 6 entries that are not images: 2 OS junk, "
                                      "1 __MACOSX/, 1 broken link, 1 folder link loop, 1 hidden")
    assert [p.relative_to(root).as_posix() for p in build_list(root)] == want
    assert run_bench._list_images(root) == want
    assert [p.relative_to(root).as_posix() for p in _holdout_images(root)[0]] == want


@pytest.mark.slow
def test_a_folder_of_junk_only_is_one_line_everywhere(tmp_path, reference_model):
    """Nothing but a Mac zip's leftovers: every command says the same one line, exit 5 (check:
    its accuracy check fails with that line), with what was skipped."""
    from lpirc.holdout import open_holdout
    from submission.build import list_images as build_list
    from submission.check import _holdout_images

    root = tmp_path / "junk"
    (root / "__MACOSX").mkdir(parents=True)
    (root / "__MACOSX" / "._a.jpg").write_bytes(b"\0")
    (root / ".DS_Store").write_bytes(b"\0")
    (root / "Thumbs.db").write_bytes(b"\0")
    line = "holds no images (skipped 3 entries that are not images: 1 OS junk, 1 __MACOSX/, 1 hidden)"
    for what, call in (("holdout", open_holdout), ("holdout", _holdout_images),
                       ("representative image", build_list)):
        with pytest.raises(InputError, match=re.escape(f"{root}: {what} folder {line}")):
            call(root)
    for cmd in (("run", "--model", reference_model, "--holdout", root, "--quiet"),
                ("holdout", "make", root, tmp_path / "out", "--count", "2")):
        p = lpirc(*cmd)
        assert p.returncode == 5 and p.stderr.count("\n") == 1 and line in p.stderr, p.stderr


@pytest.mark.tf
@pytest.mark.slow
def test_run_check_and_make_agree_on_linked_folders(models, tmp_path):
    root = _messy_holdout(tmp_path)
    syn = scoring.synsets()
    (root / "ground_truth.csv").write_text(
        f"{syn[ANSWER]}/a.png,{syn[ANSWER]}\n{syn[ANSWER]}/b.png,{syn[ANSWER]}\n"
        f"{syn[ANSWER + 1]}/c.png,{syn[ANSWER + 1]}\n")
    p = lpirc("run", "--model", models["constant"], "--holdout", root, "--out",
              run_dir(tmp_path, "messy"), "--quiet", "--workers", "1")
    assert p.returncode == 0, p.stderr
    man = json.loads((run_dir(tmp_path, "messy") / "manifest.json").read_text())
    assert man["holdout"]["image_count"] == 3 and man["holdout"]["skipped"]["hidden"] == 1
    assert any(n.startswith("skipped 6 entries that are not images: 2 OS junk")
               for n in man["notes"])
    assert "skipped" in p.stdout  # the summary says it
    score = json.loads((run_dir(tmp_path, "messy") / "score.json").read_text())
    assert (score["images_answered"], score["images_unanswered"], score["top1"]) == (3, 0, 2 / 3)
    acc = check_submission(models["constant"], holdout=root).get("accuracy")
    assert acc.details["images"] == 3 and acc.details["top1"] == pytest.approx(2 / 3)
    assert "skipped" in acc.message

    # holdout make from a source made only of linked class folders
    src = tmp_path / "linked"
    src.mkdir()
    os.symlink(tmp_path / "store" / syn[ANSWER], src / syn[ANSWER])
    other = flat_png(tmp_path / "store2" / "c.png", (5, 5, 5)).parent
    (other / "Thumbs.db").write_bytes(b"\0")
    os.symlink(other, src / syn[ANSWER + 1])
    out = tmp_path / "made"
    p = lpirc("holdout", "make", src, out, "--count", "3", "--quiet")
    assert p.returncode == 0, p.stderr
    labels = sorted(ln.split(",")[1] for ln in (out / "ground_truth.csv").read_text().split()[1:])
    assert labels == sorted([syn[ANSWER], syn[ANSWER], syn[ANSWER + 1]])
    assert "lpirc: note:" in p.stderr and "1 OS junk" in p.stderr


# --- 6. one rule for matching names -----------------------------------------------------------


def test_name_index_rules_in_order():
    from scoring.names import NameIndex

    idx = NameIndex(["a/x.JPEG", "caf\u00e9.png", "HUSKY.jpg", "ILSVRC2012_val_01", "d1/dup.png",
                     "d2/dup.png"])
    assert idx.lookup("a/x.JPEG") == (0, "exact")
    assert idx.lookup(unicodedata.normalize("NFD", "caf\u00e9.png")) == (1, "nfc")
    assert idx.lookup("n01440764/x.JPEG") == (0, "bare name")
    assert idx.lookup("x.png") == (0, "stem")
    assert idx.lookup("ILSVRC2012_val_01.JPEG") == (3, "stem")
    assert idx.lookup("husky.JPG") == (2, "case")
    assert idx.lookup("dup.png") == (-1, "ambiguous")
    assert idx.lookup("nothing.png") == (-1, None)


@pytest.mark.tf
@pytest.mark.slow
def test_run_score_check_and_tune_agree_on_loose_names(models, tmp_path, monkeypatch):
    """Ground truth without extensions, bare names for <synset>/ files, other case, NFC vs NFD:
    the coverage note, the score, the check and tune all match the four images."""
    root = tmp_path / "loose"
    syn = scoring.synsets()[ANSWER]
    nfd = unicodedata.normalize("NFD", "caf\u00e9.png")
    for rel in (f"{syn}/ILSVRC2012_val_01.JPEG", f"{syn}/photo.png", "HUSKY.JPG", nfd):
        flat_png(root / rel, (90, 60, 30))
    gt = tmp_path / "gt.csv"
    gt.write_text(f"ILSVRC2012_val_01,{syn}\nphoto.png,{syn}\nHUSKY.jpg,{syn}\n"
                  f"caf\u00e9.png,{syn}\n", encoding="utf-8")
    out = run_dir(tmp_path, "loose")
    p = lpirc("run", "--model", models["constant"], "--holdout", root, "--ground-truth", gt,
              "--out", out, "--quiet", "--workers", "1")
    assert p.returncode == 0, p.stderr
    man = json.loads((out / "manifest.json").read_text())
    assert not any("not in the holdout" in n for n in man["notes"])
    score = json.loads((out / "score.json").read_text())
    assert (score["images_answered"], score["images_unanswered"], score["top1"]) == (4, 0, 1.0)
    assert any("matched the ground truth loosely" in w for w in score["warnings"])
    p = lpirc("score", out, "--format", "json")
    assert p.returncode == 0 and json.loads(p.stdout)["top1"] == 1.0
    acc = check_submission(models["constant"], holdout=root, ground_truth=gt).get("accuracy")
    assert acc.details["images"] == 4 and acc.details["top1"] == 1.0

    # tune's top-1, on a pipeline stand-in that answers what the constant model answers
    from test_tune import FakePipeline

    fake = FakePipeline(lambda c: 500.0)

    def answering(settings, root_, files, budget, write, *a, **kw):
        return fake(settings, root_, files, budget,
                    lambda recs: write([dict(r, top5=[ANSWER]) for r in recs]), *a, **kw)

    monkeypatch.setattr("lpirc.pipeline.run_pipeline", answering)
    from lpirc.settings import RunSettings
    from lpirc.tune import tune

    res = tune(RunSettings(model=models["constant"], holdout=root, ground_truth=gt), 5,
               cooldown_s=0.0, cores=2, write=False, progress=False, compare_defaults=False)
    assert res.rows and all(r.top1 == 1.0 for r in res.rows if r.top1 is not None)


@pytest.mark.tf
@pytest.mark.slow
def test_check_counts_each_ground_truth_row_once_as_the_scorer_does(models, tmp_path):
    """Two folders holding a.png both match the ground truth's bare `a.png`: lpirc score counts
    one answer for that row, and so must submission check's accuracy (was 3 images, 66.7 %)."""
    root = tmp_path / "twice"
    for rel in ("x/a.png", "y/a.png", "b.png"):
        flat_png(root / rel, (90, 90, 90))
    gt = tmp_path / "gt.csv"
    gt.write_text(f"a.png,{ANSWER}\nb.png,3\n")
    out = run_dir(tmp_path, "twice")
    p = lpirc("run", "--model", models["constant"], "--holdout", root, "--ground-truth", gt,
              "--out", out, "--quiet", "--workers", "1")
    assert p.returncode == 0, p.stderr
    score = json.loads((out / "score.json").read_text())
    assert (score["images_total"], score["top1"]) == (2, 0.5)
    r = check_submission(models["constant"], holdout=root, ground_truth=gt).get("accuracy")
    assert r.details["images"] == 2 and r.details["top1"] == 0.5, r.message
    assert "1 image(s) match a ground-truth row another image matches" in r.message


@pytest.mark.tf
@pytest.mark.slow
def test_unmatched_nfd_name_is_shown_escaped(models, tmp_path):
    root = tmp_path / "h"
    flat_png(root / "other.png", (1, 1, 1))
    gt = tmp_path / "gt.csv"
    gt.write_text(unicodedata.normalize("NFD", "cafe\u0301-missing.png") + ",0\n")
    from lpirc.truthcheck import coverage_note as _coverage_note

    note = _coverage_note(scoring.read_ground_truth(gt), ("other.png",))
    assert "cafe\\u0301-missing.png" in note
    # the scorer's warning about answers the ground truth lacks escapes them the same way
    flat_png(root / unicodedata.normalize("NFD", "cafe\u0301.png"), (1, 1, 1))
    gt.write_text(f"other.png,{ANSWER}\n")
    out = run_dir(tmp_path, "nfd")
    p = lpirc("run", "--model", models["constant"], "--holdout", root, "--ground-truth", gt,
              "--out", out, "--quiet", "--workers", "1")
    assert p.returncode == 0, p.stderr
    (w,) = [w for w in json.loads((out / "score.json").read_text())["warnings"]
            if "not in the ground truth" in w]
    assert w.endswith("ignored: cafe\\u0301.png"), w


# --- 7. ground-truth files people have --------------------------------------------------------


@pytest.mark.tf
@pytest.mark.slow
def test_val_map_and_caffe_val_txt_are_read(tmp_path, models, answer_holdout):
    vm = tmp_path / "val_map.txt"
    vm.write_text("img_0.png 278\nimg_1.png   278\n\timg_2.png\t278\nimg_3.png 278\n")
    assert scoring.read_ground_truth(vm) == {f"img_{i}.png": 278 for i in range(4)}
    caffe = tmp_path / "val.txt"
    caffe.write_text("ILSVRC2012_val_00000001.JPEG 65\nmy photo.JPEG 970\n")
    assert scoring.read_ground_truth(caffe) == {"ILSVRC2012_val_00000001.JPEG": 65,
                                                "my photo.JPEG": 970}
    kaggle = tmp_path / "LOC_val_solution.csv"  # boxes: synset x_min y_min x_max y_max ...
    kaggle.write_text("ImageId,PredictionString\n"
                      "ILSVRC2012_val_00008726,n02119789 255 142 454 329 n02119789 44 21 322 295 \n"
                      "ILSVRC2012_val_00000001,n01751748 111 108 250 183\n")
    assert scoring.read_ground_truth(kaggle) == {"ILSVRC2012_val_00008726": 278,
                                                 "ILSVRC2012_val_00000001": 65}
    kaggle.write_text("ILSVRC2012_val_00000001,n01751748 1 2 3 4 n02119789 1 2 3 4\n")
    with pytest.raises(scoring.ScoringError, match="neither an ILSVRC-2012 synset"):
        scoring.read_ground_truth(kaggle)  # boxes of two classes: no one label
    out = run_dir(tmp_path, "vm")
    p = lpirc("run", "--model", models["constant"], "--holdout", answer_holdout,
              "--ground-truth", vm, "--out", out, "--quiet", "--workers", "1")
    assert p.returncode == 0, p.stderr
    assert json.loads((out / "score.json").read_text())["top1"] == 1.0
    # holdout make labels a flat folder from it, matched by the same rule
    made = tmp_path / "made"
    p = lpirc("holdout", "make", answer_holdout, made, "--count", "4", "--ground-truth", vm,
              "--quiet")
    assert p.returncode == 0, p.stderr
    assert (made / "ground_truth.csv").read_text().count(scoring.synsets()[278]) == 4


@pytest.mark.tf
@pytest.mark.slow
def test_one_based_labels_warn_in_the_summary_and_manifest(models, tmp_path, answer_holdout):
    gt = tmp_path / "devkit.txt"  # the devkit's 1-based IDs: class 278 is 279 there
    gt.write_text("".join(f"img_{i}.png {ANSWER + 1}\n" for i in range(4)))
    out = run_dir(tmp_path, "devkit")
    p = lpirc("run", "--model", models["constant"], "--holdout", answer_holdout,
              "--ground-truth", gt, "--out", out, "--quiet", "--workers", "1")
    assert p.returncode == 0, p.stderr
    man = json.loads((out / "manifest.json").read_text())
    assert any("numeric labels never use 0" in n for n in man["notes"])
    score = json.loads((out / "score.json").read_text())
    assert score["top5"] == 0.0
    assert any("never use 0" in w for w in score["warnings"])
    assert any("top-5 is 0.0% on 4 answers whose median best score" in w
               for w in score["warnings"])
    assert "never use 0" in p.stdout and "top-5 is 0.0%" in p.stdout
    assert "top-1 would be 100.0% with every label minus 1" in p.stdout  # the shift, measured
    # holdout make turns the labels into synsets, where no later warning could see the shift
    p = lpirc("holdout", "make", answer_holdout, tmp_path / "made", "--count", "4",
              "--ground-truth", gt, "--quiet")
    assert p.returncode == 0, p.stderr
    (note,) = [ln for ln in p.stderr.splitlines() if "never use 0" in ln]
    assert note.startswith("lpirc: note:") and "devkit.txt" in note and "1-based" in note
    acc = check_submission(models["constant"], holdout=answer_holdout, ground_truth=gt)
    assert "never use 0" in acc.get("accuracy").message
    assert acc.get("accuracy").status == "warn"
    # label 1000 is refused with the hint
    gt.write_text("img_0.png 1000\n")
    p = lpirc("run", "--model", models["constant"], "--holdout", answer_holdout,
              "--ground-truth", gt, "--out", run_dir(tmp_path, "k1000"), "--quiet")
    assert p.returncode == 5
    (line,) = error_lines(p)
    assert "devkit.txt:1" in line and "1-based" in line and "n01440764" in line


@pytest.mark.tf
@pytest.mark.slow
def test_zero_based_subset_without_class_0_is_not_called_one_based(models, tmp_path,
                                                                    answer_holdout):
    """A correct 0-based ground truth of a few classes rarely holds class 0: once the answers
    agree with it, neither the score nor submission check says the labels look 1-based."""
    gt = tmp_path / "val_map.txt"
    gt.write_text("".join(f"img_{i}.png {ANSWER}\n" for i in range(4)))
    out = run_dir(tmp_path, "subset")
    p = lpirc("run", "--model", models["constant"], "--holdout", answer_holdout,
              "--ground-truth", gt, "--out", out, "--quiet", "--workers", "1")
    assert p.returncode == 0, p.stderr
    score = json.loads((out / "score.json").read_text())
    assert score["top1"] == 1.0
    assert not [w for w in score["warnings"] if "never use 0" in w], score["warnings"]
    assert "warning:" not in p.stdout
    p = lpirc("score", out, "--ground-truth", gt, "--format", "json")
    assert p.returncode == 0 and "never use 0" not in p.stdout, p.stdout
    acc = check_submission(models["constant"], holdout=answer_holdout, ground_truth=gt)
    r = acc.get("accuracy")
    assert r.status == "pass" and "never use 0" not in r.message, r.message
    # with no answers to judge by, the ground truth's own note still says it, conditionally
    (note,) = scoring.ground_truth_notes(gt)
    assert "never use 0" in note and "fine for a subset without class 0" in note
    assert scoring.revise_label_notes([note], [ANSWER] * 4, [[ANSWER, 1, 2, 3, 4]] * 4) == []
    assert scoring.revise_label_notes([note], [], np.zeros((0, 5))) == [note]  # nothing to judge
    # a ground truth naming none of the images: scored (all unanswered), no traceback
    gt.write_text("".join(f"other_{i}.png {ANSWER}\n" for i in range(4)))
    p = lpirc("run", "--model", models["constant"], "--holdout", answer_holdout,
              "--ground-truth", gt, "--out", run_dir(tmp_path, "none"), "--quiet", "--workers", "1")
    assert p.returncode == 0 and "Traceback" not in p.stderr, p.stderr
    assert json.loads((run_dir(tmp_path, "none") / "score.json").read_text())["top1"] == 0.0


@pytest.mark.tf
@pytest.mark.slow
def test_build_writes_per_channel_mean_std_that_run_and_check_use(models, tmp_path):
    """`submission build --mean R,G,B --std R,G,B`: the sidecar carries the lists, and the
    grey-level classifier built that way answers every level through `lpirc run`."""
    tf = pytest.importorskip("tensorflow")
    from submission.build import build_submission

    rep = tmp_path / "rep"  # calibration over the whole grey range the holdout spans
    for lv in range(0, 256, 15):
        flat_png(rep / f"{lv:03d}.png", (lv, lv, lv))
    model, centres = grey_level_classifier(tf)
    out = build_submission(tmp_path / "sub.tflite", rep, keras_model=model, dtype="int8",
                           mean=MEAN, std=STD, progress=False)
    side = json.loads(out.with_suffix(".json").read_text())["preprocess"]
    assert side["mean"] == [123.675, 116.28, 103.53] and side["std"] == [58.395, 57.12, 57.375]
    assert check_submission(out).get("normalise").status == "pass"

    root = tmp_path / "grey"
    levels = [int(np.clip(round(255 * (c * IMAGENET_STD[2] + IMAGENET_MEAN[2])), 0, 255))
              for c in centres]
    for k, lv in enumerate(levels):
        flat_png(root / f"g{lv:03d}.png", (lv, lv, lv))
    (root / "ground_truth.csv").write_text("".join(f"g{lv:03d}.png,{k}\n"
                                                   for k, lv in enumerate(levels)))
    p = lpirc("run", "--model", out, "--holdout", root, "--out", run_dir(tmp_path, "built"),
              "--quiet", "--workers", "1")
    assert p.returncode == 0, p.stderr
    assert json.loads((run_dir(tmp_path, "built") / "score.json").read_text())["top1"] == 1.0


@pytest.mark.tf
@pytest.mark.slow
def test_build_chooses_the_answer_as_run_does(tmp_path, answer_holdout):
    """`submission build` of a Keras model with an auxiliary head asks for --output (it took
    output 0, the auxiliary head), writes the choice into the sidecar for `lpirc run`; an
    embedding beside the answer is built (it was refused: "model has 1280 outputs"); what the
    calibration folder's listing skipped is a note; a dynamic input says how to fix it."""
    tf = pytest.importorskip("tensorflow")
    from lpirc.errors import ModelError
    from submission.build import build_submission

    rep = tmp_path / "rep"
    for k in range(4):
        flat_png(rep / f"{k}.png", (60 * k, 90, 200))
    (rep / "__MACOSX").mkdir()
    (rep / "__MACOSX" / "._0.png").write_bytes(b"\0\5\26\7")
    (rep / ".DS_Store").write_bytes(b"\0\0\0\1Bud1")
    inp = tf.keras.Input((8, 8, 3))
    x = tf.keras.layers.GlobalAveragePooling2D()(inp)
    two = tf.keras.Model(inp, {"predictions": constant_head(tf, x, "predictions", ANSWER),
                               "aux_logits": constant_head(tf, x, "aux_logits", 3)})
    with pytest.raises(ModelError, match=r"2 are \[1, 1000\|1001\].*--output NAME\|INDEX"):
        build_submission(tmp_path / "aux.tflite", rep, keras_model=two, progress=False)
    notes: list[str] = []
    out = build_submission(tmp_path / "aux.tflite", rep, keras_model=two, progress=False,
                           output="predictions", on_note=notes.append)
    assert json.loads(out.with_suffix(".json").read_text())["preprocess"]["output"] == \
        "predictions"
    assert notes == [f"{rep}: skipped 2 entries that are not images: 1 __MACOSX/, 1 hidden"]
    p = lpirc("run", "--model", out, "--holdout", answer_holdout, "--out", run_dir(tmp_path, "b"),
              "--quiet", "--workers", "1")
    assert p.returncode == 0, p.stderr
    assert json.loads((run_dir(tmp_path, "b") / "score.json").read_text())["top1"] == 1.0

    emb = tf.keras.Model(inp, {"embedding": tf.keras.layers.Dense(1280, name="embedding")(x),
                               "probs": constant_head(tf, x, "probs", ANSWER)})
    notes.clear()
    out = build_submission(tmp_path / "emb.tflite", rep, keras_model=emb, progress=False,
                           on_note=notes.append)
    assert json.loads(out.with_suffix(".json").read_text())["classes"] == 1000
    assert any("'probs'" in n and "answers; ignored: 0 'embedding'" in n for n in notes), notes

    dyn_in = tf.keras.Input((None, None, 3))
    dyn = tf.keras.Model(dyn_in, constant_head(
        tf, tf.keras.layers.GlobalAveragePooling2D()(dyn_in), "probs", ANSWER))
    with pytest.raises(ModelError, match="dynamic height/width cannot be calibrated"):
        build_submission(tmp_path / "dyn.tflite", rep, keras_model=dyn, progress=False)


def test_config_file_carries_the_preprocessing_too(tmp_path):
    from lpirc.settings import resolve_settings

    cfg = tmp_path / "best.json"
    cfg.write_text(json.dumps({"settings": {"crop": "square", "output": "predictions",
                                            "input_size": "20x24", "mean": [123.675, 116.28, 103.53],
                                            "std": 58.0, "channel_order": "bgr"}}))
    s = resolve_settings({"model": tmp_path / "m.tflite", "holdout": tmp_path}, set(), cfg)
    p = s.preprocess
    assert (p.crop, p.output, p.input_size, p.channel_order) == ("square", "predictions",
                                                                (20, 24), "bgr")
    assert p.mean == (123.675, 116.28, 103.53) and p.std == (58.0,) * 3
    # the command line wins over the config
    s = resolve_settings({"model": tmp_path / "m.tflite", "holdout": tmp_path, "crop": "central"},
                         {"crop"}, cfg)
    assert s.preprocess.crop == "central"
    cfg.write_text(json.dumps({"settings": {"crop": "round"}}))
    with pytest.raises(InputError, match=r"best\.json: crop must be one of central, square"):
        resolve_settings({"model": tmp_path / "m.tflite", "holdout": tmp_path}, set(), cfg)
