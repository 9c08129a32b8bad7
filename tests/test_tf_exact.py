"""lpirc's input tensor is TensorFlow's, byte for byte, and no installed library changes it.

The reference pipeline (tf.io.decode_jpeg -> central_crop(0.875) -> compat.v1 resize_bilinear ->
uint8 cast) is run with TensorFlow where it is installed (marker ``tf``); the committed files of
tests/data/jpeg/ (made by tests/jpeg_fixtures.py) and their committed tensor digests are
checked everywhere, so a decoder or library change that moves one pixel fails here.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from jpeg_fixtures import DIGEST_CASES, DIGESTS, FOLDER
from lpirc.decoding import decode_pixels, orient, scan_jpeg
from lpirc.preprocess import PreprocessSpec, crop_and_resize, load_image
from lpirc.resize import crop_box

from conftest import REPO, run_lpirc

SHARED = Path(os.environ.get("LPIRC_SHARED_DATA") or REPO.parent / "shared" / "data")
FIXTURES = sorted(p for p in FOLDER.iterdir() if p.name != DIGESTS.name)
SIZES = ((224, 224), (128, 128), (20, 30))


def _tf():
    return pytest.importorskip("tensorflow", reason="TensorFlow not installed (the build extra)")


def tf_tensor(tf, data: bytes, h: int, w: int, idct: str = "fast",
              orientation: int = 1) -> np.ndarray:
    """TensorFlow's input tensor for one file: decode (PNG for a PNG), EXIF orientation applied
    to TF's pixels as lpirc does (TF itself ignores it), central_crop(0.875), v1 bilinear, cast."""
    if data[:4] == b"\x89PNG":
        img = tf.io.decode_png(data, channels=3)
    else:
        img = tf.io.decode_jpeg(data, channels=3,
                                dct_method="" if idct == "fast" else "INTEGER_ACCURATE")
        if orientation != 1:
            img = tf.constant(np.ascontiguousarray(orient(img.numpy(), orientation)))
    img = tf.image.central_crop(img, 0.875)
    img = tf.compat.v1.image.resize_bilinear(img[None], (h, w), align_corners=False)[0]
    return tf.cast(img, tf.uint8).numpy()


@pytest.mark.slow
@pytest.mark.tf
@pytest.mark.parametrize("path", FIXTURES, ids=lambda p: p.name)
def test_built_images_equal_tensorflow(path):
    tf = _tf()
    data = path.read_bytes()
    info = scan_jpeg(data)
    for (h, w) in SIZES:
        for idct in ("fast", "accurate"):
            ours = load_image(path, PreprocessSpec(h, w, "uint8", idct=idct))
            ref = tf_tensor(tf, data, h, w, idct, info.orientation if info else 1)
            diff = np.abs(ours.astype(int) - ref)
            assert diff.max() == 0, (path.name, h, w, idct, int(diff.max()),
                                     float((diff > 0).mean()))


def test_built_images_decoders():
    """Every built JPEG is read by libjpeg-turbo (TF's decoder); the PNG by Pillow."""
    spec = PreprocessSpec(224, 224, "uint8")
    for path in FIXTURES:
        want = "pillow" if path.suffix == ".png" else "libjpeg-turbo"
        assert decode_pixels(path, spec).decoder == want, path.name


def test_lpirc_pixels_are_the_committed_ones():
    """The tensors lpirc feeds for the committed files are the committed digests: an OpenCV,
    Pillow, numpy or simplejpeg release that moved one pixel would fail here (remake the digests
    with ``python tests/jpeg_fixtures.py --digests`` only for a change meant to move them)."""
    want = json.loads(DIGESTS.read_text())
    assert sorted(want) == [p.name for p in FIXTURES]
    changed = []
    for path in FIXTURES:
        for h, w, idct in DIGEST_CASES:
            got = hashlib.sha256(load_image(path, PreprocessSpec(h, w, "uint8", idct=idct))
                                 .tobytes()).hexdigest()
            if got != want[path.name][f"{h}x{w} {idct}"]:
                changed.append(f"{path.name} {h}x{w} {idct}")
    assert not changed, f"lpirc's input tensors changed for: {', '.join(changed)}"


@pytest.mark.slow
def test_preprocessing_imports_no_opencv():
    """Decode, crop, resize and the input table use numpy, simplejpeg and Pillow only: OpenCV,
    installed or not, is never imported (its warpAffine's rounding changed between releases)."""
    code = ("import sys, pathlib\n"
            "from lpirc.preprocess import PreprocessSpec, load_image\n"
            f"for p in sorted(pathlib.Path({str(FOLDER)!r}).glob('*.*g')):\n"
            "    load_image(p, PreprocessSpec(224, 224, 'uint8'))\n"
            "    load_image(p, PreprocessSpec(64, 48, 'int8', mean=(123.7, 116.3, 103.5),\n"
            "               std=58.0, quantize=(0.0186, -14)))\n"
            "print(sorted(m for m in sys.modules if m.split('.')[0] in ('cv2', 'tensorflow')))\n")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "[]", r.stdout


def test_accurate_idct_is_pillows_decode():
    """idct="accurate" decodes what Pillow (so PyTorch/torchvision's PIL loader) decodes."""
    spec = PreprocessSpec(224, 224, "uint8", idct="accurate")
    for name in ("baseline_420.jpg", "baseline_422.jpg", "baseline_444.jpg", "progressive.jpg",
                 "gray.jpg", "restart.jpg", "large_640x480.jpg", "odd_1x57.jpg"):
        ours = decode_pixels(FOLDER / name, spec).pixels
        pil = np.asarray(Image.open(FOLDER / name).convert("RGB"))
        assert np.array_equal(ours, pil), name


def test_exif_orientation_matches_pillows_transpose():
    """lpirc's orientation views give the pixels Pillow's transpose gives, for all 8 values."""
    from lpirc.decoding import _TRANSPOSE

    a = np.arange(5 * 7 * 3, dtype=np.uint8).reshape(5, 7, 3)
    for o, t in _TRANSPOSE.items():
        assert np.array_equal(orient(a, o), np.asarray(Image.fromarray(a).transpose(t))), o


@pytest.mark.slow
@pytest.mark.tf
def test_resize_bit_exact_with_tensorflow():
    """The resize alone, on random pixels, against TF's kernel: sizes that round differently
    (the 64x40 -> 20x30 case OpenCV 5.1.0.95 got 4.4 % wrong), upscaling, 1 x N, large ratios."""
    tf = _tf()
    rng = np.random.RandomState(2)
    for (h, w, H, W) in [(375, 500, 224, 224), (97, 100, 224, 224), (2, 3, 8, 8),
                         (64, 40, 20, 30), (1, 57, 224, 224), (57, 1, 13, 3),
                         (2000, 1500, 128, 128), (333, 777, 224, 160)]:
        a = rng.randint(0, 256, (h, w, 3)).astype(np.uint8)
        c = tf.image.central_crop(a, 0.875)
        ref = tf.cast(
            tf.compat.v1.image.resize_bilinear(c[None], (H, W), align_corners=False)[0], tf.uint8
        ).numpy()
        left, top, right, bottom = crop_box(w, h, 0.875)
        assert (bottom - top, right - left) == tuple(c.shape[:2])
        out = crop_and_resize(a, PreprocessSpec(H, W, "uint8"))
        assert np.array_equal(out, ref), (h, w, H, W)


def _dev_images() -> list[Path]:
    folder = SHARED / "imagenet-dev"
    if not folder.is_dir():
        pytest.skip(f"{folder} absent (set LPIRC_SHARED_DATA to the shared data folder)")
    return sorted(p for p in folder.iterdir() if p.is_file())


@pytest.mark.tf
@pytest.mark.slow
def test_imagenet_dev_tensors_equal_tensorflow():
    """Every one of the 500 ImageNet dev photos: lpirc's tensor == TF's at 224 and at 128."""
    files = _dev_images()
    tf = _tf()
    equal = {224: 0, 128: 0}
    differ = []
    for p in files:
        data = p.read_bytes()
        for s in equal:
            ours = load_image(data, PreprocessSpec(s, s, "uint8"))
            if np.array_equal(ours, tf_tensor(tf, data, s, s)):
                equal[s] += 1
            else:
                differ.append(f"{p.name}@{s}")
    print(f"identical tensors: {equal[224]}/{len(files)} at 224, {equal[128]}/{len(files)} at 128")
    assert not differ, f"{len(differ)} tensors differ from TF's: {differ[:10]}"


@pytest.mark.tf
@pytest.mark.slow
def test_imagenet_dev_accurate_idct_equals_tf_integer_accurate():
    files = _dev_images()[::10]
    tf = _tf()
    for p in files:
        data = p.read_bytes()
        ours = load_image(data, PreprocessSpec(224, 224, "uint8", idct="accurate"))
        assert np.array_equal(ours, tf_tensor(tf, data, 224, 224, "accurate")), p.name


@pytest.mark.slow
def test_run_manifest_names_decoder_idct_resize_and_counts(tmp_path, reference_model):
    """`lpirc run` records what decoded and resized: decoder and version, IDCT, resize, and how
    many images each decoder read (the PNG by Pillow, every JPEG by libjpeg-turbo). The IDCT
    comes from --idct or from the config file, and the answers follow it."""
    holdout = tmp_path / "fixtures"
    holdout.mkdir()
    for p in FIXTURES:
        (holdout / p.name).write_bytes(p.read_bytes())
    for idct, how in (("fast", ["--config", str(_config(tmp_path, "fast"))]),
                      ("accurate", ["--idct", "accurate"])):
        out = tmp_path / f"run-{idct}"
        r = run_lpirc("run", "--model", reference_model, "--holdout", holdout, "--out", out,
                      "--quiet", "--workers", "1", "--no-report", *how)
        assert r.returncode == 0, r.stderr
        pre = json.loads((out / "manifest.json").read_text())["preprocess"]
        assert pre["jpeg_decoder"].startswith("simplejpeg ")
        assert "libjpeg-turbo" in pre["jpeg_decoder"]
        assert pre["idct"] == idct and pre["idct_method"].startswith(
            "JDCT_IFAST" if idct == "fast" else "JDCT_ISLOW")
        assert pre["resize_backend"].startswith("lpirc numpy")
        assert pre["decoded_by"] == {"libjpeg-turbo": len(FIXTURES) - 1, "pillow": 1}
        settings = json.loads((out / "manifest.json").read_text())["settings"]
        assert settings["idct"] == idct


def _config(tmp_path: Path, idct: str) -> Path:
    path = tmp_path / f"idct-{idct}.json"
    path.write_text(json.dumps({"idct": idct}))
    return path
