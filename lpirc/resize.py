"""Crop geometry and TensorFlow's v1 bilinear resize, in numpy, bit for bit.

:func:`resize_bilinear_tf` reproduces ``tf.compat.v1.image.resize_bilinear(images, (H, W),
align_corners=False, half_pixel_centers=False)`` followed by ``tf.cast(..., tf.uint8)``
(tensorflow/core/kernels/image/resize_bilinear_op.cc) on uint8 RGB pixels, exactly:

* source coordinate of output row ``y``: ``in = float32(y) * scale`` with
  ``scale = float32(in_size) / float32(out_size)``; ``lower = floor(in)``,
  ``upper = min(ceil(in), in_size - 1)``, ``lerp = in - lower`` (all float32);
* per output pixel, in float32: ``top = tl + (tr - tl) * x_lerp``,
  ``bottom = bl + (br - bl) * x_lerp``, ``out = top + (bottom - top) * y_lerp``;
* the cast to uint8 truncates.

The formula is separable: ``top`` and ``bottom`` are the horizontal lerp of one source row, the
same whichever output row needs it. So each source row that some output row reads is lerped
horizontally once (``rows x W``), then the output rows are lerped vertically (``H x W``): about
half the arithmetic of gathering four corners per output pixel, and every operation is one
float32 numpy ufunc (no fused multiply-add), as TF computes it. Only numpy is involved, so no
library release can change these pixels (OpenCV's warpAffine, used before, changed its rounding
between 5.x releases: 4.4 % of pixels one level off in a 64x40 -> 20x30 case with 5.1.0.95).

The taps of each (source size, output size) are computed once per process and kept
(:func:`_plan`, a small LRU cache): ImageNet photos come in a few hundred sizes.
"""

from __future__ import annotations

import functools
import math
from typing import NamedTuple

import numpy as np

#: What performs ``resize="bilinear"``, for the manifest.
RESIZE_IMPLEMENTATION = ("lpirc numpy float32 separable (TF v1 resize_bilinear, "
                         "align_corners=False, + truncating uint8 cast)")


def crop_box(width: int, height: int, crop_fraction: float,
             crop: str = "central") -> tuple[int, int, int, int]:
    """(left, top, right, bottom) of the centred crop.

    ``crop="central"``: tf.image.central_crop's box (offset ``int((d - d f) / 2)`` each side,
    aspect ratio kept; TF-slim's ImageNet evaluation). ``crop="square"``: the TFLite ImageNet
    evaluation tool's (tensorflow/lite/tools/evaluation/stages/image_preprocessing_stage.cc,
    ``square_cropping``): side ``min(round(f h), round(f w))``, offset ``round((d - side) / 2)``,
    C ``round`` (halves away from zero)."""
    if crop == "square":
        side = min(_c_round(crop_fraction * height), _c_round(crop_fraction * width))
        side = max(1, side)
        left = _c_round((width - side) / 2.0)
        top = _c_round((height - side) / 2.0)
        return left, top, left + side, top + side
    top = int((height - height * crop_fraction) / 2)
    left = int((width - width * crop_fraction) / 2)
    return left, top, width - left, height - top


def _c_round(x: float) -> int:
    """C's ``round``: halves away from zero (Python's round is half to even)."""
    return int(math.floor(x + 0.5)) if x >= 0 else -int(math.floor(-x + 0.5))


def taps(n_in: int, n_out: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """TF v1 resize_bilinear's source taps along one axis of ``n_in`` -> ``n_out`` pixels:
    (lower, upper) int arrays of shape (n_out,) and the float32 lerp (n_out,)."""
    scale = np.float32(n_in) / np.float32(n_out)  # float32 division, as TF's
    src = np.arange(n_out, dtype=np.float32) * scale
    lo_f = np.floor(src)
    lo = np.maximum(lo_f.astype(np.intp), 0)
    hi = np.minimum(np.ceil(src).astype(np.intp), n_in - 1)
    return lo, hi, (src - lo_f).astype(np.float32)


class _Plan(NamedTuple):
    rows: np.ndarray | None  # source rows some output row reads (None: all of them, in order)
    y0: np.ndarray  # per output row: index of its top row among the rows read
    y1: np.ndarray  # ... of its bottom row
    fy: np.ndarray  # (H, 1) float32 vertical lerp
    x0: np.ndarray  # (W C,) byte offset in a crop row of the left tap of each output value
    x1: np.ndarray  # ... of the right tap
    fx: np.ndarray  # (W C,) float32 horizontal lerp of each output value


@functools.lru_cache(maxsize=512)
def _plan(h: int, w: int, H: int, W: int, C: int) -> _Plan:
    """The taps of an (h, w) crop to (H, W), C channels: a few KB, kept per size."""
    y0, y1, fy = taps(h, H)
    x0, x1, fx = taps(w, W)
    rows = np.unique(np.concatenate((y0, y1)))
    if rows.size == h:
        rows_idx = None
    else:
        y0, y1 = np.searchsorted(rows, y0), np.searchsorted(rows, y1)
        rows_idx = rows
    ch = np.arange(C)
    plan = _Plan(rows_idx, y0, y1, fy.reshape(H, 1), (x0[:, None] * C + ch).ravel(),
                 (x1[:, None] * C + ch).ravel(), np.repeat(fx, C))
    for a in plan:
        if a is not None:
            a.setflags(write=False)
    return plan


def resize_bilinear_tf(pixels: np.ndarray, H: int, W: int,
                       box: tuple[int, int, int, int] | None = None) -> np.ndarray:
    """The ``box`` (left, top, right, bottom; default: all) of ``pixels`` (h, w, C) uint8
    resized to (H, W, C) uint8 exactly as TF's v1 resize_bilinear (align_corners=False) + uint8
    cast.

    Fastest on a C-contiguous image with the crop given as ``box`` (rows are then read in place);
    any other layout (e.g. an EXIF-rotated view) is copied first. Memory: the crop rows the
    output reads (at most 2 H of them) as float32, W C wide, plus the output; never a float copy
    of the whole image."""
    h, w, c = pixels.shape
    left, top, right, bottom = box if box is not None else (0, 0, w, h)
    if not pixels.flags.c_contiguous:
        pixels = np.ascontiguousarray(pixels[top:bottom, left:right])
        h, w = pixels.shape[:2]
        left, top, right, bottom = 0, 0, w, h
    p = _plan(bottom - top, right - left, int(H), int(W), c)
    flat = pixels.reshape(h, w * c)
    off = left * c
    x0, x1 = (p.x0, p.x1) if off == 0 else (p.x0 + off, p.x1 + off)
    if p.rows is None:  # every crop row is read: take along the contiguous block of rows,
        rows = flat[top:bottom]  # the cheapest gather numpy has here
        left_v, right_v = rows.take(x0, axis=1), rows.take(x1, axis=1)
    else:  # a large downscale: only the rows read, rows and columns in one indexing
        r = (p.rows + top)[:, None]
        left_v, right_v = flat[r, x0], flat[r, x1]
    # the ufuncs cast uint8 -> float32 as they go (one pass each), all float32 as TF's kernel
    d = np.subtract(right_v, left_v, dtype=np.float32)
    np.multiply(d, p.fx, out=d)  # horizontal: row = left + (right - left) * fx
    np.add(d, left_v, out=d, dtype=np.float32)
    top_v = d.take(p.y0, axis=0)
    out = d.take(p.y1, axis=0)
    np.subtract(out, top_v, out=out)  # vertical: out = top + (bottom - top) * fy
    np.multiply(out, p.fy, out=out)
    np.add(out, top_v, out=out)
    return out.astype(np.uint8).reshape(H, W, c)


__all__ = ["RESIZE_IMPLEMENTATION", "crop_box", "resize_bilinear_tf", "taps"]
