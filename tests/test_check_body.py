"""`submission check` and `lpirc run` on what sits behind a model's input: a float input whose
first op quantizes with ImageNet mean/std, a 16x8 (int16-activation) model, and a model that
collapsed in calibration. Real models, built with TensorFlow's converter (the build extra)."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tflite_models import IMAGENET_MEAN, IMAGENET_STD, convert_float, grey_level_classifier, \
    imagenet_normalised
from submission.check import check_submission

from conftest import run_lpirc

pytestmark = [pytest.mark.tf, pytest.mark.slow]

MEAN = ",".join(f"{255 * m:g}" for m in IMAGENET_MEAN)  # 123.675,116.28,103.53
STD = ",".join(f"{255 * s:g}" for s in IMAGENET_STD)  # 58.395,57.12,57.375


def _convert(tf, model, rep, ops, io_int8: bool = False) -> bytes:
    conv = tf.lite.TFLiteConverter.from_keras_model(model)
    conv.optimizations = [tf.lite.Optimize.DEFAULT]
    conv.representative_dataset = rep
    conv.target_spec.supported_ops = ops
    if io_int8:
        conv.inference_input_type = tf.int8
        conv.inference_output_type = tf.int8
    return conv.convert()


def _imagenet_rep(size: int, lo: int = 0, hi: int = 256):
    """ImageNet-normalised calibration pixels in [lo, hi), with black and white frames when the
    range is the whole one (the input range then spans [-2.12, 2.64])."""
    rng = np.random.default_rng(0)

    def rep():
        for k in range(10):
            if k < 2 and (lo, hi) == (0, 256):
                px = np.full((1, size, size, 3), 255.0 * k)
            else:
                px = rng.integers(lo, hi, (1, size, size, 3))
            yield [imagenet_normalised(px)]

    return rep


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> dict:
    tf = pytest.importorskip("tensorflow",
                             reason="TensorFlow not installed (needed to build models)")
    out = tmp_path_factory.mktemp("body")
    tf.random.set_seed(0)
    grey, centres = grey_level_classifier(tf)
    int8 = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
    paths = {"centres": centres}
    # an int8 body behind float I/O, calibrated on ImageNet mean/std: its first op QUANTIZEs
    paths["float_io"] = out / "float_io.tflite"
    paths["float_io"].write_bytes(_convert(tf, grey, _imagenet_rep(8), int8))
    # 16x8: int16 activations, int8 weights
    paths["16x8"] = out / "a16w8.tflite"
    paths["16x8"].write_bytes(_convert(
        tf, grey, _imagenet_rep(8),
        [tf.lite.OpsSet.EXPERIMENTAL_TFLITE_BUILTINS_ACTIVATIONS_INT16_WEIGHTS_INT8]))
    # calibrated on near-black images only: the activations' ranges miss every real grey level
    paths["collapsed"] = out / "collapsed.tflite"
    paths["collapsed"].write_bytes(_convert(tf, grey, _imagenet_rep(8, 0, 6), int8, True))
    paths["reference"] = out / "reference.tflite"
    paths["reference"].write_bytes(convert_float(tf, grey))
    return paths


@pytest.fixture(scope="module")
def grey_holdout(models, tmp_path_factory) -> Path:
    """One flat grey PNG per class centre of the grey-level classifier, with its ground truth."""
    root = tmp_path_factory.mktemp("grey")
    levels = [int(np.clip(round(255 * (c * IMAGENET_STD[2] + IMAGENET_MEAN[2])), 0, 255))
              for c in models["centres"]]
    for lv in levels:
        Image.new("RGB", (12, 10), (lv, lv, lv)).save(root / f"g{lv:03d}.png")
    (root / "ground_truth.csv").write_text("".join(f"g{lv:03d}.png,{k}\n"
                                                   for k, lv in enumerate(levels)))
    return root


def _run(model: Path, holdout: Path, out: Path, *extra) -> tuple[subprocess.CompletedProcess, dict]:
    p = run_lpirc("run", "--model", model, "--holdout", holdout, "--out", out, "--quiet",
                  "--workers", "1", "--no-report", *extra)
    assert p.returncode == 0, p.stderr
    return p, json.loads((out / "manifest.json").read_text())


def test_float_input_quantized_with_imagenet_range_is_named(models, grey_holdout, tmp_path):
    """Float I/O, int8 body: the first op quantizes to about [-2.1, 2.6]. Fed (p - 127.5) /
    127.5 it answers wrong; check fails it naming --mean/--std, run notes it; with the options
    both are quiet and every answer is right."""
    rep = check_submission(models["float_io"])
    r = rep.get("normalise")
    assert r.status == "fail" and rep.failed, r.message
    assert "first op quantizes" in r.message and f"--mean {MEAN} --std {STD}" in r.message
    assert r.details["first_op_quantizes_to"][0] < -2.0
    ok = check_submission(models["float_io"], preprocess={"mean": MEAN, "std": STD})
    assert ok.get("normalise").status == "pass", ok.get("normalise").message

    p, man = _run(models["float_io"], grey_holdout, tmp_path / "plain")
    (note,) = [n for n in man["notes"] if "first op quantizes" in n]
    assert "answers are likely wrong" in note and f"--mean {MEAN} --std {STD}" in note
    assert "first op quantizes" in p.stdout
    _, man = _run(models["float_io"], grey_holdout, tmp_path / "given", "--mean", MEAN,
                  "--std", STD)
    assert not [n for n in man["notes"] if "first op quantizes" in n], man["notes"]
    score = json.loads((tmp_path / "given" / "score.json").read_text())
    assert score["top1"] == 1.0


def test_16x8_model_is_said_and_not_claimed_for_xnnpack(models):
    rep = check_submission(models["16x8"], preprocess={"mean": MEAN, "std": STD})
    ops = rep.get("ops")
    assert ops.status == "warn" and "16x8" in ops.message, ops.message
    assert "all taken by XNNPACK" not in ops.message
    assert ops.details["int16_activations"] > 0
    act = rep.get("activations")
    assert act.status != "skip" and "float model" not in act.message, act.message
    assert "int16" in act.message


def test_collapsed_calibration_fails_the_check_blaming_calibration(models, grey_holdout):
    rep = check_submission(models["collapsed"], holdout=grey_holdout,
                           reference=models["reference"],
                           preprocess={"mean": MEAN, "std": STD})
    acc = rep.get("accuracy")
    assert acc.status == "fail" and rep.failed, acc.message
    assert acc.details["reference_top1"] >= 0.9 and acc.details["top1"] < 0.5
    assert "collapsed in calibration" in acc.message and "recalibrate" in acc.message
    assert "set --mean" not in acc.message
    # the exit status of the command: 1
    p = run_lpirc("submission", "check", models["collapsed"], "--holdout", grey_holdout,
                  "--reference", models["reference"], "--mean", MEAN, "--std", STD, "--no-report",
                  timeout=300)
    assert p.returncode == 1, p.stdout + p.stderr
    assert "collapsed in calibration" in p.stdout
