"""`lpirc submission build` (submission/build.py) and the bundled reference submission.

The reference-model tests use ai_edge_litert only. The build tests need TensorFlow (the `build`
extra) and are skipped without it; the error-path tests mostly do not.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from lpirc.cli import main

from conftest import REPO, run_lpirc

REFERENCE = REPO / "submission" / "reference" / "model.tflite"


def _interpreter(path: Path):
    from ai_edge_litert.interpreter import Interpreter

    it = Interpreter(model_path=str(path), num_threads=2)
    it.allocate_tensors()
    return it, it.get_input_details()[0], it.get_output_details()[0]


def _cli(*args):
    return CliRunner().invoke(main, ["submission", "build", *map(str, args)])


def _assert_one_line_error(result, code: int, *fragments: str):
    assert result.exit_code == code, (result.exit_code, result.output, result.exception)
    err = result.stderr.strip()
    assert "Traceback" not in result.output
    assert len(err.splitlines()) == 1, err
    assert err.startswith("lpirc: error: "), err
    for f in fragments:
        assert f in err, err


# --- the bundled reference submission (no TensorFlow) --------------------------------------


def test_reference_model_format():
    assert REFERENCE.is_file()
    assert REFERENCE.stat().st_size < 500_000
    _, inp, out = _interpreter(REFERENCE)
    assert np.dtype(inp["dtype"]) == np.int8 and np.dtype(out["dtype"]) == np.int8
    assert list(inp["shape"]) == [1, 64, 64, 3]
    assert out["shape"][-1] in (1000, 1001)
    side = json.loads(REFERENCE.with_suffix(".json").read_text())
    assert side["format"] == "lpirc-submission/1"
    assert side["input"] == {"height": 64, "width": 64, "dtype": "int8"}
    assert side["classes"] == out["shape"][-1]
    assert side["labels"] == "ilsvrc2012"
    assert side["preprocess"]["mean"] == 127.5 and side["preprocess"]["std"] == 127.5
    # input quantization is the LPIRC convention: q ~= pixel - 128
    scale, zp = inp["quantization"]
    assert abs(scale - 1 / 127.5) < 1e-4 and zp in (-1, 0)


@pytest.mark.slow
def test_reference_model_really_classifies_demo_images(tmp_path):
    from lpirc.demo import make_demo_holdout
    from submission.make_reference import evaluate_tflite

    holdout = make_demo_holdout(tmp_path / "h", count=100, seed=4321)  # not the training seed
    top1, n = evaluate_tflite(REFERENCE, holdout)
    assert n == 100
    assert top1 >= 0.6, top1  # chance is 10 %; about 90 % expected


# --- error paths (one line, no traceback) -------------------------------------------------


def test_needs_exactly_one_model(tmp_path, small_holdout):
    r = _cli("--representative", small_holdout, "--out", tmp_path / "s.tflite")
    assert r.exit_code == 2 and "exactly one of --saved-model" in r.output
    r = _cli("--saved-model", tmp_path, "--keras", tmp_path / "m.keras",
             "--representative", small_holdout, "--out", tmp_path / "s.tflite")
    assert r.exit_code == 2


def test_missing_saved_model_dir(tmp_path, small_holdout):
    r = _cli("--saved-model", tmp_path / "nope", "--representative", small_holdout,
             "--out", tmp_path / "s.tflite")
    _assert_one_line_error(r, 3, "nope", "SavedModel folder not found")


def test_folder_without_saved_model(tmp_path, small_holdout):
    (tmp_path / "sm").mkdir()
    r = _cli("--saved-model", tmp_path / "sm", "--representative", small_holdout,
             "--out", tmp_path / "s.tflite")
    _assert_one_line_error(r, 3, "no saved_model.pb")


def test_missing_keras_file(tmp_path, small_holdout):
    r = _cli("--keras", tmp_path / "m.keras", "--representative", small_holdout,
             "--out", tmp_path / "s.tflite")
    _assert_one_line_error(r, 3, "m.keras", "not found")


@pytest.mark.parametrize("kind, message", [
    ("garbage", "not a Keras model file (neither a .keras zip archive nor an HDF5 .h5 file)"),
    ("empty", "empty file (0 bytes)"),
    ("savedmodel", "is a folder, not a Keras model file (a SavedModel: use --saved-model)"),
])
def test_unusable_keras_file_is_named_before_tensorflow(tmp_path, small_holdout, monkeypatch,
                                                        kind, message):
    monkeypatch.setitem(sys.modules, "tensorflow", None)  # refused before TensorFlow is needed
    model = tmp_path / "m.keras"
    if kind == "garbage":
        model.write_bytes(b"garbage" * 100)
    elif kind == "empty":
        model.write_bytes(b"")
    else:
        model.mkdir()
        (model / "saved_model.pb").write_bytes(b"")
    r = _cli("--keras", model, "--representative", small_holdout, "--out", tmp_path / "s.tflite")
    _assert_one_line_error(r, 3, f"{model}: {message}")


def _fake_saved_model(tmp_path: Path) -> Path:
    sm = tmp_path / "sm"
    sm.mkdir()
    (sm / "saved_model.pb").write_bytes(b"")
    return sm


def test_empty_image_folder(tmp_path):
    (tmp_path / "imgs").mkdir()
    (tmp_path / "imgs" / "ground_truth.csv").write_text("a.jpg,1\n")
    r = _cli("--saved-model", _fake_saved_model(tmp_path), "--representative", tmp_path / "imgs",
             "--out", tmp_path / "s.tflite")
    _assert_one_line_error(r, 5, "imgs", "no images")


def test_missing_image_folder(tmp_path):
    r = _cli("--saved-model", _fake_saved_model(tmp_path), "--representative", tmp_path / "none",
             "--out", tmp_path / "s.tflite")
    _assert_one_line_error(r, 5, "not found")


@pytest.mark.parametrize("out", ["folder", "sub.json"])
def test_unusable_out_is_a_usage_error_before_any_work(tmp_path, small_holdout, monkeypatch, out):
    monkeypatch.setitem(sys.modules, "tensorflow", None)  # refused before TensorFlow is needed
    (tmp_path / "folder").mkdir()
    r = _cli("--saved-model", _fake_saved_model(tmp_path), "--representative", small_holdout,
             "--out", tmp_path / out)
    _assert_one_line_error(r, 2, f"--out {tmp_path / out}",
                           "is a folder" if out == "folder" else "overwritten by its own sidecar")
    assert sorted(x.name for x in tmp_path.iterdir()) == ["folder", "sm"]  # nothing written


def test_tensorflow_missing(tmp_path, small_holdout, monkeypatch):
    monkeypatch.setitem(sys.modules, "tensorflow", None)  # `import tensorflow` -> ImportError
    r = _cli("--saved-model", _fake_saved_model(tmp_path), "--representative", small_holdout,
             "--out", tmp_path / "s.tflite")
    _assert_one_line_error(r, 1, "pip install '.[build]'")


# --- conversion (TensorFlow) ----------------------------------------------------------------


@pytest.fixture(scope="module")
def tf():
    return pytest.importorskip("tensorflow", reason="needs the build extra (TensorFlow)")


def _tiny_model(tf, shape=(32, 40, 3), classes=1000):
    tf.keras.utils.set_random_seed(0)
    L = tf.keras.layers
    return tf.keras.Sequential([
        tf.keras.Input(shape),
        L.Conv2D(4, 3, strides=2, activation="relu"),
        L.GlobalAveragePooling2D(),
        L.Dense(classes, activation="softmax"),
    ])


@pytest.mark.tf
@pytest.mark.slow
@pytest.mark.parametrize("dtype", ["int8", "uint8"])
def test_build_keras_model(tf, tmp_path, small_holdout, dtype):
    from submission.build import build_submission

    out = build_submission(tmp_path / "sub.tflite", small_holdout, keras_model=_tiny_model(tf),
                           dtype=dtype, num_images=8, progress=False)
    assert out == tmp_path / "sub.tflite"
    _, inp, outd = _interpreter(out)
    assert np.dtype(inp["dtype"]).name == dtype and np.dtype(outd["dtype"]).name == dtype
    assert list(inp["shape"]) == [1, 32, 40, 3] and outd["shape"][-1] == 1000
    scale, zp = inp["quantization"]
    assert abs(scale - 1 / 127.5) < 1e-4  # input range pinned to the full pixel range
    assert zp in ((-1, 0) if dtype == "int8" else (127, 128))
    side = json.loads((tmp_path / "sub.json").read_text())
    assert side["format"] == "lpirc-submission/1"
    assert side["input"] == {"height": 32, "width": 40, "dtype": dtype}
    assert side["preprocess"] == {"crop_fraction": 0.875, "resize": "bilinear", "mean": 127.5,
                                  "std": 127.5}
    assert side["classes"] == 1000 and side["labels"] == "ilsvrc2012"
    assert side["built_by"].startswith("lpirc submission build ")
    assert side["representative_images"] == 8


@pytest.mark.tf
@pytest.mark.slow
def test_cli_build_from_keras_file(tf, tmp_path, small_holdout):
    model = tmp_path / "m.keras"
    _tiny_model(tf, (24, 24, 3), 1001).save(model)
    reps = tmp_path / "reps"  # four images and one file that is not an image
    reps.mkdir()
    for src in sorted(small_holdout.glob("*.jpg"))[:4]:
        (reps / src.name).write_bytes(src.read_bytes())
    (reps / "zz_broken.jpg").write_bytes(b"not a jpeg")
    r = _cli("--keras", model, "--representative", reps, "--out", tmp_path / "s.tflite",
             "--num-images", 5, "--crop-fraction", 1.0, "--mean", 0, "--std", 255, "-q")
    assert r.exit_code == 0, (r.output, r.exception)
    assert "wrote" in r.stdout and "uint8 in/out" in r.stdout and "1001 classes" in r.stdout
    assert "4 calibration images" in r.stdout
    assert "1 file(s) skipped" in r.stderr and "zz_broken.jpg" in r.stderr
    side = json.loads((tmp_path / "s.json").read_text())
    assert side["preprocess"]["crop_fraction"] == 1.0 and side["preprocess"]["std"] == 255.0
    assert side["classes"] == 1001
    assert side["representative_images"] == 4 and side["representative_skipped"] == 1
    assert side["representative_skipped_files"][0].startswith("zz_broken.jpg: ")
    _, inp, _ = _interpreter(tmp_path / "s.tflite")
    assert np.dtype(inp["dtype"]) == np.uint8 and list(inp["shape"]) == [1, 24, 24, 3]


@pytest.mark.tf
@pytest.mark.slow
def test_cli_build_from_saved_model(tf, tmp_path, small_holdout):
    sm = tmp_path / "sm"
    _tiny_model(tf, (16, 16, 3)).export(str(sm), verbose=False)
    r = _cli("--saved-model", sm, "--representative", small_holdout, "--out", tmp_path / "s.tflite",
             "--dtype", "int8", "--num-images", 4, "-q")
    assert r.exit_code == 0, (r.output, r.exception)
    assert json.loads((tmp_path / "s.json").read_text())["input"]["dtype"] == "int8"


@pytest.mark.slow
@pytest.mark.tf
def test_bad_input_shape(tf, tmp_path, small_holdout):
    model = tmp_path / "gray.keras"
    _tiny_model(tf, (32, 32, 1)).save(model)
    r = _cli("--keras", model, "--representative", small_holdout, "--out", tmp_path / "s.tflite")
    _assert_one_line_error(r, 3, "gray.keras", "[None, 32, 32, 1]", "not [1|None, H, W, 3]")
    assert not (tmp_path / "s.tflite").exists()


@pytest.mark.tf
@pytest.mark.slow
def test_wrong_number_of_classes(tf, tmp_path, small_holdout):
    model = tmp_path / "ten.keras"
    _tiny_model(tf, (16, 16, 3), classes=10).save(model)
    r = _cli("--keras", model, "--representative", small_holdout, "--out", tmp_path / "s.tflite",
             "--num-images", 3)
    _assert_one_line_error(r, 3, "model has 10 classes", "1000 or 1001")
    assert not (tmp_path / "s.tflite").exists()


@pytest.mark.tf
@pytest.mark.slow
def test_unwritable_out_is_one_line_and_leaves_no_file(tf, tmp_path, small_holdout):
    (tmp_path / "afile").write_text("")
    r = _cli("--keras", _saved_keras(tf, tmp_path), "--representative", small_holdout,
             "--out", tmp_path / "afile" / "s.tflite", "--num-images", 2, "-q")
    _assert_one_line_error(r, 2, "afile/s.tflite: cannot write")
    assert sorted(x.name for x in tmp_path.iterdir()) == ["afile", "m.keras"]


def _saved_keras(tf, tmp_path: Path) -> Path:
    model = tmp_path / "m.keras"
    _tiny_model(tf, (16, 16, 3)).save(model)
    return model


@pytest.mark.tf
@pytest.mark.slow
def test_undecodable_images(tf, tmp_path):
    imgs = tmp_path / "imgs"
    imgs.mkdir()
    (imgs / "a.jpg").write_bytes(b"not a jpeg")
    model = tmp_path / "m.keras"
    _tiny_model(tf, (16, 16, 3)).save(model)
    r = _cli("--keras", model, "--representative", imgs, "--out", tmp_path / "s.tflite")
    _assert_one_line_error(r, 5, "could be decoded")


@pytest.mark.tf
@pytest.mark.slow
def test_built_submission_runs_checks_and_scores(tf, tmp_path, small_holdout):
    """build -> check -> run -> score, through the CLI, with the sidecar's preprocessing applied."""
    model = tmp_path / "m.keras"
    _tiny_model(tf, (24, 24, 3), 1001).save(model)
    sub = tmp_path / "sub.tflite"

    def lpirc(*args):
        return run_lpirc(*args, cwd=tmp_path, timeout=300)

    build = lpirc("submission", "build", "--keras", model, "--representative", small_holdout,
                  "--out", sub, "--num-images", 5, "--crop-fraction", 0.9, "-q")
    assert build.returncode == 0, build.stdout + build.stderr
    assert build.stderr == ""  # TensorFlow's start-up chatter is kept off the terminal

    check = lpirc("submission", "check", sub, "--no-report")
    assert check.returncode == 0, check.stdout + check.stderr
    out = tmp_path / "run"
    run = lpirc("run", "--model", sub, "--holdout", small_holdout, "--out", out, "--quiet")
    assert run.returncode == 0, run.stderr
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["settings"]["crop_fraction"] == 0.9  # from sub.json
    assert manifest["model"]["num_classes"] == 1001
    score = json.loads((out / "score.json").read_text())
    assert score["images_answered"] == 40 and 0.0 <= score["top1"] <= 1.0
