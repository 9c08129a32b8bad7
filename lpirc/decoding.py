"""Decode one image file to RGB pixels: JPEGs as ``tf.io.decode_jpeg`` does, others by Pillow.

A JPEG (8-bit, Huffman or arithmetic, baseline or progressive, 1, 3 or 4 components) is decoded
by libjpeg-turbo through simplejpeg (its wheel bundles libjpeg-turbo), with the settings
``tf.io.decode_jpeg(data, channels=3)`` uses (tensorflow/core/lib/jpeg/jpeg_mem.cc): fancy
upsampling on, the IDCT of ``spec.idct`` (``"fast"`` = JDCT_IFAST, TF's default
``dct_method=""``; ``"accurate"`` = JDCT_ISLOW, TF's ``"INTEGER_ACCURATE"``, what Pillow and so
PyTorch/torchvision loaders decode with), grayscale replicated to RGB by libjpeg, and a CMYK or
YCCK JPEG decoded to CMYK and turned into RGB with TF's own integer formula (``r = k c / 255``
when the file has an Adobe APP14 marker, ``(255 - k)(255 - c) / 255`` otherwise). Measured:
byte-equal to TF on 500 of 500 ImageNet photos and on built baseline, progressive, grayscale,
CMYK, restart-marker, 4:4:4/4:2:2 and 1xN files (tests/test_tf_exact.py).

Everything else falls back to Pillow (:func:`decode_pillow`, accurate IDCT for JPEGs): files
that are not JPEG, JPEGs libjpeg-turbo refuses (its warnings about corrupt data it recovers
from are ignored, as TensorFlow ignores them), truncated JPEGs
(no end-of-image marker after the first scan; Pillow then gives lpirc's usual one-line error,
``decode: image file is truncated``, without a first attempt), and 12-bit or lossless JPEGs. :class:`Decoded` says which decoder read each image.

EXIF orientation is applied (TensorFlow ignores it; ImageNet photos carry none that changes
pixels), read from the JPEG's first APP1 Exif block by :func:`scan_jpeg` without Pillow.

The pixel limit ``spec.max_image_pixels`` is checked from the header before any pixel is
decoded: a JPEG over it is decoded at 1/2, 1/4 or 1/8 scale (DCT scaling; baseline only, a
progressive JPEG needs full-size coefficient buffers), anything else over it is refused.
``spec.decode="draft"`` also uses DCT scaling while the crop stays at least the model's size.
"""

from __future__ import annotations

import collections
import functools
import io
import math
import os
import re
import struct
import warnings
from typing import NamedTuple, Union

import numpy as np
from PIL import Image, JpegImagePlugin

from lpirc.resize import crop_box

PathOrBytes = Union[str, os.PathLike, bytes, bytearray, memoryview]

IDCTS = ("fast", "accurate")
#: libjpeg's IDCT of each ``idct`` choice, and the reference pipelines that decode with it
IDCT_NAMES = {"fast": "JDCT_IFAST (tf.io.decode_jpeg default)",
              "accurate": "JDCT_ISLOW (TF dct_method='INTEGER_ACCURATE'; Pillow, torchvision)"}

_JPEG_MAGIC = b"\xff\xd8\xff"
_EXIF_ORIENTATION = 0x0112
_TRANSPOSE = {
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_270,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}
#: Start-of-frame markers libjpeg-turbo decodes at 8 bits: baseline, extended, progressive
#: (Huffman), and the arithmetic-coded ones; SOF3/SOF11 (lossless) go to Pillow.
_SOF_DECODED = {0xC0, 0xC1, 0xC2, 0xC9, 0xCA}
_SOF_ANY = {0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF}


#: images decoded in this process by each decoder ("libjpeg-turbo", "pillow") since the last
#: :func:`take_decoder_counts`; a worker reports them with each chunk's answers
_COUNTS: collections.Counter = collections.Counter()


def take_decoder_counts() -> tuple[tuple[str, int], ...]:
    """The decoder counts since the last call (then reset), as ((decoder, images), ...)."""
    out = tuple(sorted(_COUNTS.items()))
    _COUNTS.clear()
    return out


class ImageError(Exception):
    """One image could not be used. ``str(err)`` is the reason, e.g. ``decode: image file is
    truncated``; it never contains the file's path (the caller records which image it was)."""


class Decoded(NamedTuple):
    """An image's RGB pixels (h, w, 3) uint8, EXIF orientation applied (possibly a strided
    view), and which decoder read it: ``"libjpeg-turbo"`` (TF's JPEG decode) or ``"pillow"``."""

    pixels: np.ndarray
    decoder: str


class JpegInfo(NamedTuple):
    """What :func:`scan_jpeg` reads from a JPEG's markers (nothing is decoded)."""

    width: int
    height: int
    components: int
    precision: int
    sof: int  # the start-of-frame marker, e.g. 0xC0 baseline, 0xC2 progressive
    adobe: bool  # an Adobe APP14 marker (libjpeg's saw_Adobe_marker: inverted CMYK)
    orientation: int  # EXIF orientation 1..8 (1 when absent or unreadable)
    complete: bool = True  # an end-of-image marker follows the first scan (not truncated)

    @property
    def progressive(self) -> bool:
        return self.sof in (0xC2, 0xC6, 0xCA, 0xCE)


@functools.cache
def _simplejpeg():
    """simplejpeg (a core dependency), or None where it is not installed."""
    try:
        import simplejpeg
    except ImportError:  # pragma: no cover - a broken install; Pillow still reads everything
        return None
    return simplejpeg


def decoder_json(idct: str) -> dict:
    """What the manifest records about decoding: the JPEG decoder, its version, the IDCT, and
    the fallback."""
    sj = _simplejpeg()
    import PIL

    jpeg = (f"simplejpeg {sj.__version__} (libjpeg-turbo, fancy upsampling)" if sj is not None
            else f"pillow {PIL.__version__} (simplejpeg not installed)")
    return {"jpeg_decoder": jpeg, "idct": idct,
            "idct_method": IDCT_NAMES[idct] if sj is not None else IDCT_NAMES["accurate"],
            "fallback_decoder": f"pillow {PIL.__version__} (accurate IDCT) for files that are "
                                "not 8-bit JPEG or that libjpeg-turbo refuses"}


def read_bytes(path_or_bytes: PathOrBytes) -> bytes:
    """The file's bytes. ImageError("read: ...") / ("decode: empty file")."""
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
    return data


# --- JPEG markers ------------------------------------------------------------------------------


def scan_jpeg(data: bytes) -> JpegInfo | None:
    """Walk a JPEG's markers up to the first scan: frame size, components, precision, SOF type,
    Adobe marker, EXIF orientation. None when ``data`` is not a JPEG with a readable frame
    header before its first scan."""
    if data[:3] != _JPEG_MAGIC:
        return None
    n, i = len(data), 2
    sof, sos = None, None
    adobe, orientation = False, None
    while i + 4 <= n:
        if data[i] != 0xFF:
            return None
        m = data[i + 1]
        if m == 0xFF:  # fill byte
            i += 1
            continue
        if m == 0x01 or 0xD0 <= m <= 0xD8:  # markers without a length
            i += 2
            continue
        if m in (0xD9, 0xDA):  # end of image, start of scan
            sos = i if m == 0xDA else None
            break
        length = (data[i + 2] << 8) | data[i + 3]
        if length < 2:
            return None
        seg = data[i + 4:i + 2 + length]
        if m in _SOF_ANY and sof is None and len(seg) >= 6:
            sof = (m, seg[0], (seg[1] << 8) | seg[2], (seg[3] << 8) | seg[4], seg[5])
        elif m == 0xEE and length >= 14 and seg[:5] == b"Adobe":
            adobe = True
        elif m == 0xE1 and orientation is None and seg[:6] == b"Exif\0\0":
            orientation = _exif_orientation(seg[6:])
        i += 2 + length
    if sof is None:
        return None
    m, precision, h, w, nc = sof
    # entropy-coded data never holds FF D9 (an FF there is followed by 00 or a restart marker)
    complete = sos is not None and data.find(b"\xff\xd9", sos) >= 0
    return JpegInfo(w, h, nc, precision, m, adobe, orientation or 1, complete)


def _exif_orientation(tiff: bytes) -> int:
    """The orientation tag (0x0112) of IFD0 of an EXIF TIFF block, 1 when absent or broken."""
    try:
        order = {b"II": "<", b"MM": ">"}[tiff[:2]]
        (ifd,) = struct.unpack_from(order + "I", tiff, 4)
        (count,) = struct.unpack_from(order + "H", tiff, ifd)
        for k in range(count):
            tag, typ = struct.unpack_from(order + "HH", tiff, ifd + 2 + 12 * k)
            if tag == _EXIF_ORIENTATION:
                fmt = {3: "H", 4: "I"}.get(typ)
                value = struct.unpack_from(order + fmt, tiff, ifd + 2 + 12 * k + 8)[0] if fmt \
                    else 1
                return value if value in _TRANSPOSE else 1
    except (KeyError, struct.error, TypeError):
        pass
    return 1


def orient(pixels: np.ndarray, orientation: int) -> np.ndarray:
    """(h, w, C) pixels shown as EXIF ``orientation`` says (a view, no copy): the same pixels
    Pillow's ``transpose`` gives for that orientation."""
    a = pixels
    if orientation == 2:
        return a[:, ::-1]
    if orientation == 3:
        return a[::-1, ::-1]
    if orientation == 4:
        return a[::-1]
    if orientation == 5:
        return a.transpose(1, 0, 2)
    if orientation == 6:
        return a[::-1].transpose(1, 0, 2)
    if orientation == 7:
        return a[::-1, ::-1].transpose(1, 0, 2)
    if orientation == 8:
        return a[:, ::-1].transpose(1, 0, 2)
    return a


# --- decode ------------------------------------------------------------------------------------


def decode_pixels(path_or_bytes: PathOrBytes, spec) -> Decoded:
    """Decode an image file (path or bytes) to RGB pixels with EXIF orientation applied.

    ``spec`` gives ``max_image_pixels``, ``decode`` ("exact"/"draft"), ``idct``
    ("fast"/"accurate") and, for the draft scale, ``height``, ``width``, ``crop``,
    ``crop_fraction`` (a :class:`lpirc.preprocess.PreprocessSpec`). Raises ImageError with a
    one-line reason ("read: ...", "decode: ...")."""
    data = read_bytes(path_or_bytes)
    info = scan_jpeg(data)
    sj = _simplejpeg()
    if info is not None and sj is not None and info.sof in _SOF_DECODED and info.complete \
            and info.precision == 8 and info.components in (1, 3, 4) \
            and info.width >= 1 and info.height >= 1:
        scale = _jpeg_scale(info.width, info.height, info.progressive, info.orientation, spec)
        try:
            px = _decode_turbo(sj, data, info, scale, getattr(spec, "idct", "fast"))
        except ValueError:  # refused: Pillow reads it or says why not
            px = None
        if px is not None:
            limit = int(spec.max_image_pixels)
            if px.shape[0] * px.shape[1] > limit:
                raise ImageError(_too_large_msg(info.width, info.height, limit))
            _COUNTS["libjpeg-turbo"] += 1
            return Decoded(orient(px, info.orientation), "libjpeg-turbo")
    pixels = np.asarray(decode_pillow(data, spec))
    _COUNTS["pillow"] += 1
    return Decoded(pixels, "pillow")


def _jpeg_scale(w: int, h: int, progressive: bool, orientation: int, spec) -> int:
    """The DCT scale (1, 2, 4, 8) a JPEG of w x h is decoded at, or ImageError when it is over
    the pixel limit even at 1/8 (or at all, for a progressive one)."""
    limit = int(spec.max_image_pixels)
    scale = draft_scale(w, h, spec, orientation in (5, 6, 7, 8))
    if scale > 1 and w * h > limit and progressive:
        raise ImageError(_too_large_msg(w, h, limit, " progressive JPEG"))
    if math.ceil(w / scale) * math.ceil(h / scale) > limit:
        raise ImageError(_too_large_msg(w, h, limit))
    return scale


def _decode_turbo(sj, data: bytes, info: JpegInfo, scale: int, idct: str) -> np.ndarray:
    """libjpeg-turbo's decode, as tf.io.decode_jpeg(channels=3) does it (ValueError when it
    refuses the file)."""
    # strict=False: libjpeg's warnings (corrupt data it recovers from) do not stop it, as they
    # do not stop tf.io.decode_jpeg; a truncated file never gets here (JpegInfo.complete)
    kw = dict(fastdct=idct == "fast", fastupsample=False, strict=False)
    if scale > 1:
        kw.update(min_height=math.ceil(info.height / scale),
                  min_width=math.ceil(info.width / scale), min_factor=scale)
    if info.components != 4:
        return sj.decode_jpeg(data, colorspace="RGB", **kw)
    cmyk = sj.decode_jpeg(data, colorspace="CMYK", **kw)
    c = cmyk[..., :3].astype(np.uint16)
    k = cmyk[..., 3:].astype(np.uint16)
    if info.adobe:  # TF's formula (jpeg_mem.cc): Adobe files store inverted CMYK
        rgb = c * k // 255
    else:
        rgb = (255 - c) * (255 - k) // 255
    return rgb.astype(np.uint8)


def draft_scale(w: int, h: int, spec, swap: bool) -> int:
    """Largest JPEG DCT scale (1, 2, 4, 8) needed by ``spec`` for a w x h JPEG: the pixel limit
    always, and the speed option ``decode="draft"`` while the cropped image stays >= the model
    input (``swap``: the EXIF orientation exchanges width and height)."""
    limit = int(spec.max_image_pixels)
    scale = 1
    while scale < 8 and math.ceil(w / scale) * math.ceil(h / scale) > limit:
        scale *= 2
    if spec.decode == "draft":
        th, tw = (spec.width, spec.height) if swap else (spec.height, spec.width)
        while scale < 8:
            l, t, r, b = crop_box(math.ceil(w / (2 * scale)), math.ceil(h / (2 * scale)),
                                  spec.crop_fraction, spec.crop)
            if r - l < tw or b - t < th:
                break
            scale *= 2
    return scale


# --- Pillow --------------------------------------------------------------------------------


def _open(fp: io.BytesIO) -> Image.Image:
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


def to_rgb(img: Image.Image) -> Image.Image:
    """Any Pillow mode as RGB: 16-bit samples keep their high byte, float 0..1 is scaled."""
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


def decode_pillow(path_or_bytes: PathOrBytes, spec) -> Image.Image:
    """Decode with Pillow to an RGB image with EXIF orientation applied (the fallback of
    :func:`decode_pixels`; JPEGs with the accurate IDCT). Only the first frame of
    animated/multi-page files is used; the pixel limit as in :func:`decode_pixels`.
    Raises ImageError("decode: ...") / ("read: ...")."""
    fp = io.BytesIO(read_bytes(path_or_bytes))
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
        limit = int(spec.max_image_pixels)
        if img.format == "JPEG" and len(img.tile) == 1:
            scale = _jpeg_scale(w, h, bool(img.info.get("progressive")), orientation, spec)
            if scale > 1:
                img.draft("RGB", (max(1, w // scale), max(1, h // scale)))
                if img.width * img.height > limit:
                    raise ImageError(_too_large_msg(w, h, limit))
        elif w * h > limit:
            raise ImageError(_too_large_msg(w, h, limit))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # e.g. "Corrupt EXIF data", bomb warnings on frames
            img.load()
            img = to_rgb(img)
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


def _too_large_reason(fp: io.BytesIO, spec, err: BaseException) -> str:
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


__all__ = ["Decoded", "IDCTS", "ImageError", "JpegInfo", "decode_pillow", "decode_pixels",
           "decoder_json", "orient", "scan_jpeg", "take_decoder_counts"]
