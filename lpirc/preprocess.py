"""Decode and preprocess one image the way the TFLite ImageNet evaluation tool does.

The default pipeline (``PreprocessSpec(h, w, dtype)``) is the one used by the TFLite ImageNet
evaluation tool and LPIRC's Track-1 benchmarker, written with TensorFlow ops as::

    img = tf.io.decode_jpeg(data, channels=3)
    img = tf.image.central_crop(img, 0.875)
    img = tf.compat.v1.image.resize_bilinear(img[None], (h, w), align_corners=False)[0]
    img = tf.cast(img, tf.uint8)

plus EXIF orientation (which TensorFlow ignores; ImageNet photos carry none that matters).
Then the pixels become the model's input: raw uint8 for uint8 models, ``pixel - 128`` for int8
models, ``(pixel - mean) / std`` for float models.

Crop and resize gather the four source pixels of every output pixel (one numpy ``take`` on
Pillow's 32-bit RGBX words) and blend them with TF's own float32 formula and truncating cast:
bit-exact with TF on the same decoded pixels, small images (upscaling) included. Pillow's
affine transform with BILINEAR samples the same points but rounds instead of truncating (top-1
0.8 points lower on the ImageNet dev set) and was slower here. ``resize="antialias"`` uses
Pillow's ordinary ``resize(BILINEAR)`` (antialiased; about 1.6 points lower top-1 for MobileNet
v2, which was trained on the aliased TF pipeline). Pillow decodes JPEG with the accurate
integer IDCT, TF's default is the fast one, so inputs differ by ~1 level on average.

``decode="draft"`` asks libjpeg to decode large JPEGs at 1/2, 1/4 or 1/8 scale (DCT scaling)
when the cropped image stays at least as large as the model input: much faster on big photos.

Nothing here changes Pillow's global settings (``Image.MAX_IMAGE_PIXELS``,
``ImageFile.LOAD_TRUNCATED_IMAGES``): the pixel limit is ``spec.max_image_pixels``, checked from
the header before any pixel is decoded, and truncated files are an error.
"""

from __future__ import annotations

import io
import math
import os
import re
import struct
import warnings
from dataclasses import dataclass
from typing import Union

import numpy as np
from PIL import Image, JpegImagePlugin

try:  # a core dependency: OpenCV's float warp reproduces TF's resize ~3x faster than numpy
    import cv2

    # OpenCV 4.x snaps sample coordinates to 1/32 pixel (errors up to 6 levels, 0.8 points of
    # top-1 lost); 5.x computes them exactly.
    _CV2_EXACT = int(cv2.__version__.split(".")[0]) >= 5
except ImportError:
    cv2 = None
    _CV2_EXACT = False

DTYPES = ("uint8", "int8", "float32")
RESIZES = ("bilinear", "antialias")
DECODES = ("exact", "draft")

_EXIF_ORIENTATION = 0x0112
_JPEG_MAGIC = b"\xff\xd8\xff"
_TRANSPOSE = {
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_270,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}

PathOrBytes = Union[str, os.PathLike, bytes, bytearray, memoryview]


class ImageError(Exception):
    """One image could not be used. ``str(err)`` is the reason, e.g. ``decode: image file is
    truncated``; it never contains the file's path (the caller records which image it was)."""


@dataclass(frozen=True)
class PreprocessSpec:
    """How to turn an image file into one model input of shape (height, width, 3)."""

    height: int
    width: int
    dtype: str  # "uint8" | "int8" | "float32"
    crop_fraction: float = 0.875
    resize: str = "bilinear"  # "bilinear" (TF v1 resize_bilinear, no antialias) | "antialias"
    mean: float = 127.5
    std: float = 127.5
    decode: str = "exact"  # "exact" | "draft" (JPEG DCT scaling for large images)
    max_image_pixels: int = 40_000_000

    def __post_init__(self) -> None:
        if int(self.height) < 1 or int(self.width) < 1:
            raise ValueError(f"input size must be positive, got {self.height}x{self.width}")
        if self.dtype not in DTYPES:
            raise ValueError(f"dtype must be one of {', '.join(DTYPES)}, got {self.dtype!r}")
        if not 0.0 < float(self.crop_fraction) <= 1.0:
            raise ValueError(f"crop_fraction must be in (0, 1], got {self.crop_fraction}")
        if self.resize not in RESIZES:
            raise ValueError(f"resize must be one of {', '.join(RESIZES)}, got {self.resize!r}")
        if self.decode not in DECODES:
            raise ValueError(f"decode must be one of {', '.join(DECODES)}, got {self.decode!r}")
        if not float(self.std) > 0.0:
            raise ValueError(f"std must be positive, got {self.std}")
        if int(self.max_image_pixels) < 1:
            raise ValueError(f"max_image_pixels must be positive, got {self.max_image_pixels}")


def load_image(path: PathOrBytes, spec: PreprocessSpec) -> np.ndarray:
    """Read, decode and preprocess one image: an array (H, W, 3) of ``spec.dtype``.

    Raises ImageError (with a one-line reason) for anything that is not a usable image.
    """
    return to_input(crop_and_resize(decode(path, spec), spec), spec)


# --- decode --------------------------------------------------------------------------------


def _open(fp: io.BufferedIOBase | io.BytesIO) -> Image.Image:
    """Image.open without Pillow's own decompression-bomb warning/error (we apply our limit)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        try:
            return Image.open(fp)
        except Image.DecompressionBombError:
            # Over 2 x Image.MAX_IMAGE_PIXELS. A JPEG may still be read at reduced scale, so open
            # it with the plugin directly (header only); anything else is simply too large.
            fp.seek(0)
            if fp.read(3) != _JPEG_MAGIC:
                raise
            fp.seek(0)
            return JpegImagePlugin.JpegImageFile(fp)


def _orientation(img: Image.Image) -> int:
    if "exif" not in img.info and img.format not in ("TIFF", "MPO"):
        return 1
    try:
        value = int(img.getexif().get(_EXIF_ORIENTATION, 1))
    except Exception:  # a broken EXIF block does not make the image unusable
        return 1
    return value if value in _TRANSPOSE else 1


def _cropped_size(w: int, h: int, fraction: float) -> tuple[int, int]:
    return w - 2 * int((w - w * fraction) / 2), h - 2 * int((h - h * fraction) / 2)


def _draft_scale(img: Image.Image, spec: PreprocessSpec, swap: bool) -> int:
    """Largest JPEG DCT scale (1, 2, 4, 8) needed by ``spec``: the pixel limit always, and the
    speed option ``decode="draft"`` while the cropped image stays >= the model input."""
    w, h = img.size
    limit = int(spec.max_image_pixels)
    scale = 1
    while scale < 8 and math.ceil(w / scale) * math.ceil(h / scale) > limit:
        scale *= 2
    if spec.decode == "draft":
        th, tw = (spec.width, spec.height) if swap else (spec.height, spec.width)
        while scale < 8:
            cw, ch = _cropped_size(
                math.ceil(w / (2 * scale)), math.ceil(h / (2 * scale)), spec.crop_fraction
            )
            if cw < tw or ch < th:
                break
            scale *= 2
    return scale


def _to_rgb(img: Image.Image) -> Image.Image:
    mode = img.mode
    if mode == "RGB":
        return img
    if mode.startswith("I;16") or mode == "I":
        # in the samples' own width (not int64: 8 bytes a pixel, 786 MB peak for 40 M pixels)
        a = np.asarray(img)
        if mode.startswith("I;16") or a.max(initial=0) > 255:
            a = a >> 8  # 16-bit samples: keep the high byte (Pillow would clip at 255)
        a = np.clip(a, 0, 255).astype(np.uint8) if a.dtype != np.uint8 else a
        return Image.fromarray(a, "L").convert("RGB")
    if mode == "F":
        a = np.asarray(img, dtype=np.float64)
        if a.size and np.nanmax(a) <= 1.0:
            a = a * 255.0
        a = np.clip(np.nan_to_num(a), 0, 255).astype(np.uint8)
        return Image.fromarray(np.repeat(a[:, :, None], 3, axis=2), "RGB")
    if mode == "P" and "transparency" in img.info:
        img = img.convert("RGBA")  # avoids Pillow's palette-transparency warning
    return img.convert("RGB")  # L, LA, RGBA, RGBX, CMYK (Adobe inversion handled), YCbCr, 1, ...


def decode(path_or_bytes: PathOrBytes, spec: PreprocessSpec) -> Image.Image:
    """Decode an image file (path or bytes) to an RGB Pillow image with EXIF orientation applied.

    Only the first frame of animated/multi-page files is used. The image size is checked from
    the header before decoding: a JPEG over ``spec.max_image_pixels`` is decoded at 1/2, 1/4 or
    1/8 scale (baseline JPEGs only: progressive ones need full-size coefficient buffers); any
    other image over the limit is refused. Raises ImageError("decode: ...") / ("read: ...").
    """
    if isinstance(path_or_bytes, (bytes, bytearray, memoryview)):
        data = bytes(path_or_bytes)
    else:
        try:
            with open(path_or_bytes, "rb") as f:
                data = f.read()
        except IsADirectoryError:
            raise ImageError("read: is a directory") from None
        except OSError as e:
            raise ImageError(f"read: {(e.strerror or str(e)).lower()}") from None
    if not data:
        raise ImageError("decode: empty file")
    fp = io.BytesIO(data)
    try:
        try:
            img = _open(fp)
        except Image.DecompressionBombError as e:
            raise ImageError(_too_large_reason(fp, spec, e)) from None
        except Image.UnidentifiedImageError:
            raise ImageError("decode: cannot identify image file") from None
        w, h = img.size
        if w < 1 or h < 1:
            raise ImageError(f"decode: image has no pixels ({w}x{h})")
        orientation = _orientation(img)
        swap = orientation in (5, 6, 7, 8)
        limit = int(spec.max_image_pixels)
        if img.format == "JPEG" and len(img.tile) == 1:
            scale = _draft_scale(img, spec, swap)
            if scale > 1 and w * h > limit and img.info.get("progressive"):
                raise ImageError(_too_large_msg(w, h, limit, " progressive JPEG"))
            if math.ceil(w / scale) * math.ceil(h / scale) > limit:
                raise ImageError(_too_large_msg(w, h, limit))
            if scale > 1:
                img.draft("RGB", (max(1, w // scale), max(1, h // scale)))
                if img.width * img.height > limit:
                    raise ImageError(_too_large_msg(w, h, limit))
        elif w * h > limit:
            raise ImageError(_too_large_msg(w, h, limit))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # e.g. "Corrupt EXIF data", bomb warnings on frames
            img.load()
            img = _to_rgb(img)
        if orientation != 1:
            img = img.transpose(_TRANSPOSE[orientation])
        return img
    except ImageError:
        raise
    except (MemoryError, Image.DecompressionBombError) as e:
        raise ImageError(_too_large_reason(fp, spec, e)) from None
    except Exception as e:  # Pillow raises OSError, SyntaxError, ValueError, struct.error, ...
        raise ImageError(_reason(e)) from None


def _too_large_msg(w: int, h: int, limit: int, what: str = "") -> str:
    return f"decode: image too large{what} ({w}x{h} > {limit} pixels)"


def _too_large_reason(fp: io.BytesIO, spec: PreprocessSpec, err: BaseException) -> str:
    """Reason for an image Pillow refused as too large (or ran out of memory on)."""
    limit = int(spec.max_image_pixels)
    head = fp.getvalue()[:32]
    if head[:8] == b"\x89PNG\r\n\x1a\n" and head[12:16] == b"IHDR":
        w, h = struct.unpack(">II", head[16:24])
        return _too_large_msg(w, h, limit)
    m = re.search(r"\((\d+) pixels\)", str(err))
    if m:
        return f"decode: image too large ({m.group(1)} > {limit} pixels)"
    return f"decode: image too large to decode ({type(err).__name__})"


def _reason(e: BaseException) -> str:
    msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
    low = msg.lower()
    if "truncated" in low:
        return "decode: image file is truncated"
    if "cannot identify image file" in low:
        return "decode: cannot identify image file"
    return f"decode: {msg}"


# --- crop and resize -----------------------------------------------------------------------


def crop_box(width: int, height: int, crop_fraction: float) -> tuple[int, int, int, int]:
    """(left, top, right, bottom) of the central crop, with tf.image.central_crop's rounding."""
    top = int((height - height * crop_fraction) / 2)
    left = int((width - width * crop_fraction) / 2)
    return left, top, width - left, height - top


def crop_and_resize(img: Image.Image, spec: PreprocessSpec) -> np.ndarray:
    """Central crop (``spec.crop_fraction``) and resize to (spec.height, spec.width): uint8 (H, W, 3).

    ``resize="bilinear"`` reproduces tf.compat.v1.image.resize_bilinear(align_corners=False)
    followed by a cast to uint8; ``resize="antialias"`` is Pillow's resize(BILINEAR).
    """
    if img.mode != "RGB":
        img = _to_rgb(img)
    W, H = int(spec.width), int(spec.height)
    left, top, right, bottom = crop_box(img.width, img.height, float(spec.crop_fraction))
    cw, ch = right - left, bottom - top
    if spec.resize == "antialias":
        out = img.resize((W, H), Image.Resampling.BILINEAR, box=(left, top, right, bottom))
        return np.asarray(out)
    return _resize_bilinear_tf(img, left, top, cw, ch, H, W)


def _taps(start: int, n_in: int, n_out: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """TF v1 resize_bilinear (align_corners=False, half_pixel_centers=False) source taps."""
    src = np.arange(n_out, dtype=np.float32) * np.float32(n_in / n_out)
    i0 = np.floor(src).astype(np.intp)
    frac = src - i0.astype(np.float32)
    i1 = np.minimum(i0 + 1, n_in - 1)
    return i0 + start, i1 + start, frac


#: Above this ratio of crop pixels to output pixels the numpy gather beats OpenCV's float warp
#: (measured crossover about 20-30x; ImageNet photos to 224 x 224 are about 3x).
_CV2_MAX_DOWNSCALE = 24


def resize_backend() -> str:
    """What performs ``resize="bilinear"`` here, for the manifest."""
    if _CV2_EXACT:
        return (f"opencv {cv2.__version__} warpAffine float32 (TF v1 resize_bilinear to within "
                f"1 level); numpy gather (bit-exact) above {_CV2_MAX_DOWNSCALE}x downscale")
    return "numpy gather (bit-exact TF v1 resize_bilinear)"


def _resize_bilinear_tf(
    img: Image.Image, left: int, top: int, cw: int, ch: int, H: int, W: int
) -> np.ndarray:
    """TF v1 resize_bilinear of the crop box: OpenCV >= 5 when installed, else numpy."""
    if not _CV2_EXACT or cw * ch > _CV2_MAX_DOWNSCALE * H * W:
        # OpenCV needs the whole crop as float32 (12 bytes a pixel: 370 MB for a 40 M-pixel
        # photo); the gather touches 4 pixels per output pixel, so on a large downscale it is
        # both leaner (4 bytes a pixel) and faster (measured 2.6x on 6300 x 6300).
        return _resize_bilinear_tf_numpy(img, left, top, cw, ch, H, W)
    # The crop itself (not the whole image with an offset), so that edges clamp at the crop
    # border as TF's do; float32 so the lerps are TF's, then a truncating cast as tf.cast.
    src = np.asarray(img)[top:top + ch, left:left + cw].astype(np.float32)
    m = np.array([[cw / W, 0.0, 0.0], [0.0, ch / H, 0.0]])  # dst -> src: src = dst * in/out
    out = cv2.warpAffine(src, m, (W, H), flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP,
                         borderMode=cv2.BORDER_REPLICATE)
    return out.astype(np.uint8)


def _resize_bilinear_tf_numpy(
    img: Image.Image, left: int, top: int, cw: int, ch: int, H: int, W: int
) -> np.ndarray:
    """Crop box (left, top, cw x ch) of an RGB image resized to H x W exactly as TensorFlow's
    resize_bilinear kernel does (float32 lerps, edge clamping) followed by a truncating cast.

    The image is read as 32-bit RGBX words (Pillow's own layout, so no repacking), the four
    corner pixels of every output pixel are gathered with one ``take``, then blended. This is
    bit-exact with TF on the same decoded pixels and faster than Pillow's generic affine
    transform (which also rounds instead of truncating)."""
    w = img.width
    y0, y1, fy = _taps(top, ch, H)
    x0, x1, fx = _taps(left, cw, W)
    rows = np.unique(np.concatenate((y0, y1)))
    if rows.size * 4 < img.height:
        # A large downscale reads only the rows its taps touch (at most 2 H), one row at a
        # time: the whole image as words would cost 4 bytes a pixel (twice that while Pillow
        # joins them), 320 MB for a 40 M-pixel photo.
        band = np.empty((rows.size, w), dtype=np.uint32)
        for k, r in enumerate(rows.tolist()):
            band[k] = np.frombuffer(img.crop((0, r, w, r + 1)).tobytes("raw", "RGBX"), np.uint32)
        words = band.ravel()
        y0 = np.searchsorted(rows, y0)
        y1 = np.searchsorted(rows, y1)
    else:
        words = np.frombuffer(img.tobytes("raw", "RGBX"), dtype=np.uint32)
    r0 = (y0 * w)[:, None]
    r1 = (y1 * w)[:, None]
    idx = np.stack((r0 + x0, r0 + x1, r1 + x0, r1 + x1))
    g = words.take(idx).view(np.uint8).reshape(4, H, W, 4).astype(np.float32)
    tl, tr, bl, br = g[0], g[1], g[2], g[3]
    fx = fx[None, :, None]
    tr -= tl  # top = tl + (tr - tl) * fx, as TF computes it
    tr *= fx
    tr += tl
    br -= bl
    br *= fx
    br += bl
    br -= tr  # out = top + (bottom - top) * fy
    br *= fy[:, None, None]
    br += tr
    return br[:, :, :3].astype(np.uint8)


# --- model input ---------------------------------------------------------------------------


def to_input(pixels_uint8: np.ndarray, spec: PreprocessSpec) -> np.ndarray:
    """uint8 pixels -> model input: uint8 as is, int8 = pixel - 128, float = (pixel - mean) / std."""
    p = np.asarray(pixels_uint8)
    if p.dtype != np.uint8:
        raise TypeError(f"pixels must be uint8, got {p.dtype}")
    if spec.dtype == "uint8":
        return p
    if spec.dtype == "int8":
        return np.bitwise_xor(p, np.uint8(0x80)).view(np.int8)  # == pixel - 128, exactly
    out = p.astype(np.float32)
    out -= np.float32(spec.mean)
    out /= np.float32(spec.std)
    return out


__all__ = [
    "ImageError",
    "PreprocessSpec",
    "crop_and_resize",
    "crop_box",
    "decode",
    "load_image",
    "to_input",
]
