"""The small image files of tests/data/jpeg/, and how they were made (run this file to remake
them and their digests: ``python tests/jpeg_fixtures.py``; only the digests, after a change
that is meant to change lpirc's pixels: ``python tests/jpeg_fixtures.py --digests``). They are
committed, not built at test time, so that the digest test (tests/test_tf_exact.py) sees the
same bytes whatever Pillow's encoder does.

Each is one case TensorFlow's JPEG decode handles its own way: chroma subsampling 4:2:0, 4:2:2,
4:4:4, progressive, grayscale, CMYK with and without the Adobe marker (TF's formula differs),
restart markers, odd sizes (1 x N, N x 1, 3 x 5: upscaling), a larger photo (downscaling
more than 2x), an EXIF orientation (TF ignores it, lpirc applies it), and a PNG (not JPEG: Pillow).
"""

from __future__ import annotations

import hashlib
import io
import json
import sys
from pathlib import Path

import numpy as np
from PIL import Image

FOLDER = Path(__file__).resolve().parent / "data" / "jpeg"


def _scene(w: int, h: int, seed: int = 0) -> Image.Image:
    """A smooth picture with edges and some noise: every IDCT and upsampling path matters."""
    rng = np.random.RandomState(seed)
    y, x = np.mgrid[0:h, 0:w].astype(np.float64)
    r = 128 + 100 * np.sin(x / max(w, 1) * 6.3) * np.cos(y / max(h, 1) * 3.1)
    g = 255.0 * x / max(1, w - 1)
    b = np.where((x // 16 + y // 16) % 2 == 0, 40.0, 215.0)
    a = np.stack([r, g, b], axis=2) + rng.normal(0, 6, (h, w, 3))
    return Image.fromarray(np.clip(a, 0, 255).astype(np.uint8), "RGB")


def _jpeg(img: Image.Image, **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, "JPEG", quality=kw.pop("quality", 85), **kw)
    return buf.getvalue()


def _drop_adobe(data: bytes) -> bytes:
    """The same JPEG without its APP14 Adobe segment (libjpeg then reads plain CMYK)."""
    i = 2
    while i < len(data):
        marker, length = data[i + 1], int.from_bytes(data[i + 2:i + 4], "big")
        if marker == 0xEE:
            return data[:i] + data[i + 2 + length:]
        if marker == 0xDA:
            break
        i += 2 + length
    raise ValueError("no APP14 segment")


def build() -> dict[str, bytes]:
    """name -> file bytes."""
    base = _scene(203, 151)
    exif = Image.Exif()
    exif[0x0112] = 6
    png = io.BytesIO()
    _scene(61, 47, 3).save(png, "PNG")
    cmyk = _jpeg(base.convert("CMYK"))
    return {
        "baseline_420.jpg": _jpeg(base),
        "baseline_422.jpg": _jpeg(base, subsampling=1),
        "baseline_444.jpg": _jpeg(base, subsampling=0),
        "progressive.jpg": _jpeg(base, progressive=True),
        "gray.jpg": _jpeg(base.convert("L")),
        "cmyk_adobe.jpg": cmyk,
        "cmyk_plain.jpg": _drop_adobe(cmyk),
        "restart.jpg": _jpeg(base, restart_marker_blocks=1),
        "odd_1x57.jpg": _jpeg(_scene(1, 57, 1)),
        "odd_57x1.jpg": _jpeg(_scene(57, 1, 1)),
        "tiny_3x5.jpg": _jpeg(_scene(3, 5, 2)),
        "large_640x480.jpg": _jpeg(_scene(640, 480, 4), quality=70),
        "exif_orientation_6.jpg": _jpeg(_scene(120, 80, 5), exif=exif.tobytes()),
        "not_jpeg.png": png.getvalue(),
    }


#: (height, width, idct) of the tensors whose digests are committed
DIGEST_CASES = ((224, 224, "fast"), (128, 128, "fast"), (20, 30, "fast"), (224, 224, "accurate"))
DIGESTS = FOLDER / "digests.json"


def tensor_digests() -> dict[str, dict[str, str]]:
    """file name -> {"HxW idct": sha256 of lpirc's uint8 input tensor} for every fixture."""
    from lpirc.preprocess import PreprocessSpec, load_image

    out = {}
    for path in sorted(FOLDER.iterdir()):
        if path.name == DIGESTS.name:
            continue
        out[path.name] = {
            f"{h}x{w} {idct}": hashlib.sha256(
                load_image(path, PreprocessSpec(h, w, "uint8", idct=idct)).tobytes()).hexdigest()
            for h, w, idct in DIGEST_CASES}
    return out


if __name__ == "__main__":
    if "--digests" not in sys.argv:  # the files themselves stay as committed unless asked
        FOLDER.mkdir(parents=True, exist_ok=True)
        for name, data in build().items():
            (FOLDER / name).write_bytes(data)
            print(f"{name}: {len(data)} bytes", file=sys.stderr)
    DIGESTS.write_text(json.dumps(tensor_digests(), indent=1, sort_keys=True) + "\n")
    print(f"wrote {DIGESTS}", file=sys.stderr)
