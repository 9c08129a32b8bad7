"""Decode and preprocess one image: TF-slim's ImageNet evaluation by default, the TFLite
ImageNet evaluation tool's square crop on request.

The default pipeline (``PreprocessSpec(h, w, dtype)``), written with TensorFlow ops, is::

    img = tf.io.decode_jpeg(data, channels=3)  # idct="accurate": dct_method="INTEGER_ACCURATE"
    img = tf.image.central_crop(img, 0.875)          # crop="square": the eval tool's square
    img = tf.compat.v1.image.resize_bilinear(img[None], (h, w), align_corners=False)[0]
    img = tf.cast(img, tf.uint8)

and lpirc's input tensor is that tensor, byte for byte, for every JPEG libjpeg-turbo decodes
(:mod:`lpirc.decoding`: libjpeg-turbo through simplejpeg with TF's settings; :mod:`lpirc.resize`:
TF's float32 formula in numpy), plus EXIF orientation (which TensorFlow ignores; ImageNet photos
carry none that matters). Files that are not JPEG, and JPEGs libjpeg-turbo refuses, are decoded
by Pillow. Then the pixels become the model's input (:func:`to_input`): ``(pixel - mean) /
std`` for float models; for quantized ones the raw codes (uint8: the pixel, int8: pixel - 128)
unless a mean/std is given, then that normalisation quantized with the input tensor's own scale
and zero point. :class:`PreprocessOptions` holds what a run asks for, checked once; ``spec_for``
gives the :class:`PreprocessSpec` of one model input.

``resize="antialias"`` uses Pillow's ordinary ``resize(BILINEAR)`` (antialiased; about 1.6
points lower top-1 for MobileNet v2, which was trained on the aliased TF pipeline).
``decode="draft"`` asks libjpeg to decode large JPEGs at 1/2, 1/4 or 1/8 scale (DCT scaling)
when the cropped image stays at least as large as the model input: much faster on big photos,
and no longer TF's tensor.

Nothing here changes Pillow's global settings (``Image.MAX_IMAGE_PIXELS``,
``ImageFile.LOAD_TRUNCATED_IMAGES``): the pixel limit is ``spec.max_image_pixels``, checked from
the header before any pixel is decoded, and truncated files are an error.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import re
from dataclasses import dataclass

import numpy as np
from PIL import Image

from lpirc import decoding as _decoding
from lpirc.decoding import ImageError, PathOrBytes, decode_pillow, decode_pixels
from lpirc.resize import RESIZE_IMPLEMENTATION, crop_box, resize_bilinear_tf
from lpirc.runtime import CLASS_COUNTS, dynamic_size_problem

DTYPES = ("uint8", "int8", "float32")
RESIZES = ("bilinear", "antialias")
DECODES = ("exact", "draft")

IDCTS = _decoding.IDCTS


@dataclass(frozen=True)
class PreprocessSpec:
    """How to turn an image file into one model input of shape (height, width, 3).

    ``mean`` and ``std`` are in pixel units (0..255), one value or one per channel (R, G, B):
    a float input gets ``(pixel - mean) / std``. A quantized input (uint8/int8) gets the raw
    pixel codes (uint8: the pixel, int8: pixel - 128) when ``quantize`` is None; with
    ``quantize=(scale, zero_point)`` it gets ``round((pixel - mean) / std / scale) +
    zero_point`` clipped to the dtype (see :func:`input_lut`). ``crop`` is ``"central"``
    (tf.image.central_crop, TF-slim) or ``"square"`` (the TFLite ImageNet evaluation tool's
    centred square of side min(round(f h), round(f w))). ``channel_order="bgr"`` swaps R and B
    after preprocessing (mean/std are still given R, G, B)."""

    height: int
    width: int
    dtype: str  # "uint8" | "int8" | "float32"
    crop_fraction: float = 0.875
    resize: str = "bilinear"  # "bilinear" (TF v1 resize_bilinear, no antialias) | "antialias"
    mean: float | tuple = 127.5
    std: float | tuple = 127.5
    decode: str = "exact"  # "exact" | "draft" (JPEG DCT scaling for large images)
    max_image_pixels: int = 40_000_000
    crop: str = "central"  # "central" | "square"
    channel_order: str = "rgb"  # "rgb" | "bgr"
    quantize: tuple | None = None  # (scale, zero_point) of a quantized input, or raw codes
    idct: str = "fast"  # "fast" (TF's default JPEG IDCT) | "accurate" (Pillow's, torchvision's)

    def __post_init__(self) -> None:
        if int(self.height) < 1 or int(self.width) < 1:
            raise ValueError(f"input size must be positive, got {self.height}x{self.width}")
        if self.dtype not in DTYPES:
            raise ValueError(f"dtype must be one of {', '.join(DTYPES)}, got {self.dtype!r}")
        _check_choice("crop", self.crop, CROPS)
        _check_choice("resize", self.resize, RESIZES)
        _check_choice("decode", self.decode, DECODES)
        _check_choice("idct", self.idct, IDCTS)
        _check_choice("channel_order", self.channel_order, CHANNEL_ORDERS)
        _check_fraction(self.crop_fraction)
        object.__setattr__(self, "mean", channel_values("mean", self.mean))
        object.__setattr__(self, "std", channel_values("std", self.std, positive=True))
        if int(self.max_image_pixels) < 1:
            raise ValueError(f"max_image_pixels must be positive, got {self.max_image_pixels}")
        if self.quantize is not None:
            scale, zp = self.quantize
            if not (math.isfinite(float(scale)) and float(scale) > 0):
                raise ValueError(f"input scale must be positive, got {scale}")
            object.__setattr__(self, "quantize", (float(scale), int(zp)))

    def to_json(self) -> dict:
        """What the manifest records: sizes, crop, resize, normalisation and quantization."""
        lut = input_lut(self)
        used = self.dtype == "float32" or self.quantize is not None  # raw codes: no mean/std
        return {"height": self.height, "width": self.width, "dtype": self.dtype,
                "crop": self.crop, "crop_fraction": self.crop_fraction, "resize": self.resize,
                "idct": self.idct,
                "mean": list(self.mean) if used else None,
                "std": list(self.std) if used else None,
                "channel_order": self.channel_order,
                "quantize": list(self.quantize) if lut is not None else None,
                "input": self.describe_input()}

    def describe_input(self) -> str:
        """One line saying what the model is fed, e.g. ``int8 = pixel - 128 (raw codes)``."""
        order = " in BGR order" if self.channel_order == "bgr" else ""
        m, s = _fmt(self.mean), _fmt(self.std)
        if self.dtype == "float32":
            return f"float32 = (pixel - {m}) / {s}{order}"
        if self.quantize is None or input_lut(self) is None:
            raw = "pixel" if self.dtype == "uint8" else "pixel - 128"
            return f"{self.dtype} = {raw} (raw pixel codes){order}"
        scale, zp = self.quantize
        sign = "-" if zp < 0 else "+"
        return (f"{self.dtype} = round((pixel - {m}) / {s} / {scale:.6g}) {sign} {abs(zp)}, "
                f"clipped{order}")


CROPS = ("central", "square")
CHANNEL_ORDERS = ("rgb", "bgr")


def _check_choice(name: str, value, choices: tuple) -> None:
    if value not in choices:
        raise ValueError(f"{name} must be one of {', '.join(choices)}, got {value!r}")


def _check_fraction(value) -> None:
    try:
        ok = 0.0 < float(value) <= 1.0
    except (TypeError, ValueError):
        ok = False
    if not ok:
        raise ValueError(f"crop_fraction must be in (0, 1], got {value!r}")


def _fmt(v: tuple) -> str:
    return f"{v[0]:g}" if len(set(v)) == 1 else "(" + ", ".join(f"{x:g}" for x in v) + ")"


def units_problem(name: str, values) -> str | None:
    """Why a ``mean`` or ``std`` (``name``) of per-channel ``values`` looks like 0..1 units
    (PyTorch's 0.485 / 0.229) where lpirc takes pixel units 0..255, or None. One rule for the
    command line (a usage error naming the option) and for files (naming the file)."""
    vals = tuple(values)
    small = bool(vals) and all((0 < v < 1) if name == "mean" else (v < 1) for v in vals)
    if not small:
        return None
    return (f"{name} {_fmt(vals)} looks like 0..1 units; lpirc takes pixel units 0..255 "
            "(ImageNet: mean 123.675,116.28,103.53 std 58.395,57.12,57.375): multiply by 255")


def channel_values(name: str, value, positive: bool = False) -> tuple[float, float, float]:
    """One value or one per channel (R, G, B) -> a 3-tuple of finite floats.

    Accepts a number, a list/tuple of 1 or 3 numbers, or a string ``"123.7,116.3,103.5"``.
    Raises ValueError starting with ``name`` (e.g. ``"mean must be ..."``)."""
    v = value
    if isinstance(v, str):
        v = [x for x in v.replace(" ", ",").split(",") if x]
    if isinstance(v, (int, float)) and not isinstance(v, bool):
        v = [v]
    try:
        vals = tuple(float(x) for x in v if not isinstance(x, bool))
        if len(vals) != len(v):
            raise TypeError
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a number or three numbers R,G,B, got {value!r}") from None
    if len(vals) == 1:
        vals = vals * 3
    if len(vals) != 3:
        raise ValueError(f"{name} must be one number or three (R,G,B), got {len(vals)}: {value!r}")
    if not all(math.isfinite(x) and (x > 0 or not positive) for x in vals):
        kind = "positive" if positive else "finite"
        raise ValueError(f"{name} must be {kind} numbers, got {value!r}")
    return vals


class OptionError(ValueError):
    """A preprocessing option with a bad value. ``setting`` names it (e.g. ``"mean"``), so the
    caller can say which file it came from; ``str(err)`` is the one-line reason."""

    def __init__(self, setting: str, message: str) -> None:
        super().__init__(message)
        self.setting = setting


class InputShapeError(ValueError):
    """The model's input cannot be fed images with these options (one-line reason)."""


def parse_input_size(value) -> tuple[int, int] | None:
    """``"224x224"``, ``"224"``, ``224`` or ``[224, 224]`` -> (height, width); None stays None.
    Raises OptionError("input_size", ...)."""
    if value is None:
        return None
    v = value
    if isinstance(v, str):
        m = re.fullmatch(r"\s*(\d+)\s*(?:[xX*,]\s*(\d+)\s*)?", v)
        v = [g for g in m.groups() if g is not None] if m else []
    if isinstance(v, int) and not isinstance(v, bool):
        v = [v, v]
    try:
        dims = [int(str(x).strip()) for x in v]
        if any(isinstance(x, bool) or (isinstance(x, float) and x != int(x)) for x in v):
            raise ValueError
    except (TypeError, ValueError):
        dims = []
    if len(dims) == 1:
        dims = dims * 2
    if len(dims) != 2 or not all(1 <= d <= 10_000 for d in dims):
        raise OptionError("input_size", f"input_size must be HxW with 1..10000 pixels each "
                                        f"(e.g. 224x224), got {value!r}")
    return dims[0], dims[1]


@dataclass(frozen=True)
class PreprocessOptions:
    """The preprocessing a run asks for, checked once, before any model is loaded.

    Built from the command line, the config file and the model's sidecar (see
    lpirc.settings); :meth:`spec_for` then gives the :class:`PreprocessSpec` of one model
    input. Units: ``mean``/``std`` in pixel units 0..255, one value or three (R, G, B); None
    means "not given" (float inputs: 127.5 / 127.5; quantized inputs: raw pixel codes).
    ``input_size`` is (height, width) for a model whose height/width are dynamic. ``output`` is
    a signature name, tensor name or index of the output that answers (None: the one
    [1, 1000|1001] output). Raises OptionError naming the setting."""

    crop: str = "central"
    crop_fraction: float = 0.875
    resize: str = "bilinear"
    mean: tuple | None = None
    std: tuple | None = None
    channel_order: str = "rgb"
    input_size: tuple | None = None
    decode: str = "exact"
    max_image_pixels: int = 40_000_000
    output: str | None = None
    idct: str = "fast"

    def __post_init__(self) -> None:
        set_ = functools.partial(object.__setattr__, self)
        for name, choices in (("crop", CROPS), ("resize", RESIZES), ("decode", DECODES),
                              ("channel_order", CHANNEL_ORDERS), ("idct", IDCTS)):
            try:
                _check_choice(name, getattr(self, name), choices)
            except ValueError as e:
                raise OptionError(name, str(e)) from None
        try:
            _check_fraction(self.crop_fraction)
        except ValueError as e:
            raise OptionError("crop_fraction", str(e)) from None
        set_("crop_fraction", float(self.crop_fraction))
        for name in ("mean", "std"):
            if getattr(self, name) is not None:
                try:
                    set_(name, channel_values(name, getattr(self, name), positive=name == "std"))
                except ValueError as e:
                    raise OptionError(name, str(e)) from None
        self._check_units()
        set_("input_size", parse_input_size(self.input_size))
        m = self.max_image_pixels
        if isinstance(m, bool) or not isinstance(m, int) or m < 1:
            raise OptionError("max_image_pixels", f"max_image_pixels must be a positive "
                                                  f"integer, got {m!r}")
        if self.output is not None:
            if isinstance(self.output, bool) or not isinstance(self.output, (str, int)) \
                    or not str(self.output).strip():
                raise OptionError("output", f"output must be an output's name or index, got "
                                            f"{self.output!r}")
            set_("output", str(self.output).strip())

    def _check_units(self) -> None:
        """0..1 units (PyTorch's 0.485/0.229) given where lpirc takes 0..255 are refused."""
        for name in ("mean", "std"):
            problem = units_problem(name, getattr(self, name) or ())
            if problem:
                raise OptionError(name, problem)

    def to_json(self) -> dict:
        """The options as JSON values (tuples as lists)."""
        d = dataclasses.asdict(self)
        return {k: (list(v) if isinstance(v, tuple) else v) for k, v in d.items()}

    def spec_for_model(self, info) -> PreprocessSpec:
        """:meth:`spec_for` the input of a ``lpirc.runtime.ModelInfo``, after checking that its
        answering output has 1000 or 1001 classes. InputShapeError (one line) otherwise."""
        t = info.input
        if info.num_classes not in CLASS_COUNTS:
            # its answers could not be ILSVRC-2012 classes: refuse rather than score them as such
            which = (f"output {info.output.describe(info.output_index)}"
                     if len(getattr(info, "outputs", ())) > 1 else "output")
            raise InputShapeError(
                f"{which} has {info.num_classes} classes; an LPIRC submission answers the 1000 "
                "ILSVRC-2012 classes (1000 outputs, or 1001 with background at 0)")
        return self.spec_for(t.shape, t.dtype, t.scale, t.zero_point, t.shape_signature)

    def spec_for(self, shape, dtype: str, scale: float = 0.0, zero_point: int = 0,
                 shape_signature=None) -> PreprocessSpec:
        """The PreprocessSpec for a model input of ``shape`` (1, H, W, 3) and ``dtype``, with
        its quantization (``scale`` 0: none) and ``shape_signature`` (-1 = dynamic).

        Raises InputShapeError (one line) for an input lpirc cannot feed: not one RGB image, a
        dynamic height/width without ``input_size``, a fixed size ``input_size`` contradicts, or
        a dtype other than uint8/int8/float32."""
        shp = [int(x) for x in shape]
        sig = [int(x) for x in shape_signature] if shape_signature is not None and \
            len(shape_signature) == len(shp) else shp
        if len(shp) != 4 or shp[3] != 3:
            raise InputShapeError(f"input {sig} is not one [1, H, W, 3] image")
        dynamic = sig[1] < 0 or sig[2] < 0
        if self.input_size is not None:
            h, w = self.input_size
            if not dynamic and (h, w) != (shp[1], shp[2]):
                raise InputShapeError(f"input_size {h}x{w} does not match the model's fixed "
                                      f"input {shp[1]}x{shp[2]}")
        elif dynamic:
            raise InputShapeError(dynamic_size_problem(sig))
        else:
            h, w = shp[1], shp[2]
        if dtype not in DTYPES:
            raise InputShapeError(f"input dtype {dtype} cannot be fed images (uint8, int8 or "
                                  "float32 expected)")
        given = self.mean is not None or self.std is not None
        quant = (float(scale), int(zero_point)) if dtype != "float32" and given and scale else None
        return PreprocessSpec(h, w, dtype, crop_fraction=self.crop_fraction, resize=self.resize,
                              mean=self.mean if self.mean is not None else 127.5,
                              std=self.std if self.std is not None else 127.5,
                              decode=self.decode, max_image_pixels=self.max_image_pixels,
                              crop=self.crop, channel_order=self.channel_order, quantize=quant,
                              idct=self.idct)


def load_image(path: PathOrBytes, spec: PreprocessSpec) -> np.ndarray:
    """Read, decode and preprocess one image: an array (H, W, 3) of ``spec.dtype``.

    Raises ImageError (with a one-line reason) for anything that is not a usable image.
    """
    return to_input(crop_and_resize(decode_pixels(path, spec).pixels, spec), spec)


def decode(path_or_bytes: PathOrBytes, spec: PreprocessSpec) -> Image.Image:
    """Decode an image file (path or bytes) to an RGB Pillow image with EXIF orientation
    applied, by the decoder :func:`load_image` uses (:func:`lpirc.decoding.decode_pixels`).
    Raises ImageError("decode: ...") / ("read: ...")."""
    return Image.fromarray(np.ascontiguousarray(decode_pixels(path_or_bytes, spec).pixels), "RGB")


def resize_backend() -> str:
    """What performs ``resize="bilinear"``, for the manifest."""
    return RESIZE_IMPLEMENTATION


def preprocess_json(spec: PreprocessSpec) -> dict:
    """The preprocessing as the manifest records it: :meth:`PreprocessSpec.to_json` plus the
    decoder, its version and IDCT (:func:`lpirc.decoding.decoder_json`), the decode mode and
    what performs the resize."""
    import PIL

    resize = (resize_backend() if spec.resize == "bilinear"
              else f"pillow {PIL.__version__} resize(BILINEAR)")
    return dict(spec.to_json(), **_decoding.decoder_json(spec.idct), decode=spec.decode,
                resize_backend=resize)


def crop_and_resize(img: Image.Image | np.ndarray, spec: PreprocessSpec) -> np.ndarray:
    """Centred crop (``spec.crop``, ``spec.crop_fraction``) of RGB pixels (a Pillow image or an
    (h, w, 3) uint8 array) resized to (spec.height, spec.width): uint8 (H, W, 3).

    ``resize="bilinear"`` is tf.compat.v1.image.resize_bilinear(align_corners=False) followed
    by a cast to uint8, bit for bit (:func:`lpirc.resize.resize_bilinear_tf`);
    ``resize="antialias"`` is Pillow's resize(BILINEAR) of the crop box.
    """
    if isinstance(img, Image.Image):
        img = np.asarray(img if img.mode == "RGB" else _decoding.to_rgb(img))
    H, W = int(spec.height), int(spec.width)
    h, w = img.shape[:2]
    left, top, right, bottom = crop_box(w, h, float(spec.crop_fraction), spec.crop)
    if spec.resize == "antialias":
        pil = Image.fromarray(np.ascontiguousarray(img), "RGB")
        return np.asarray(pil.resize((W, H), Image.Resampling.BILINEAR,
                                     box=(left, top, right, bottom)))
    return resize_bilinear_tf(img, H, W, (left, top, right, bottom))


# --- model input ---------------------------------------------------------------------------


#: Raw pixel codes are fed when they are the asked quantization to within this many levels
#: (half a level, plus float32 slack on the stored scale): a 2018 model's scale 1/128 zero point
#: 128 with mean 128 std 128, or a TF2 int8 model's 2/255 / -1 with mean 127.5 std 127.5.
_RAW_TOLERANCE_LEVELS = 0.5 + 1e-3


@functools.lru_cache(maxsize=32)
def _lut(dtype: str, mean: tuple, std: tuple, quantize: tuple) -> np.ndarray | None:
    info = np.iinfo(dtype)
    scale, zp = quantize
    p = np.arange(256, dtype=np.float64)
    real = (p[None, :] - np.asarray(mean)[:, None]) / np.asarray(std)[:, None]  # (3, 256)
    exact = real / scale + zp
    raw = p if dtype == "uint8" else p - 128.0
    if np.all(np.abs(exact - raw[None, :]) <= _RAW_TOLERANCE_LEVELS):
        return None
    q = np.floor(np.abs(exact) + 0.5) * np.sign(exact)  # TFLite's rounding: halves away from 0
    return np.clip(q, info.min, info.max).astype(dtype)


#: ImageNet mean/std in pixel units (torchvision's 0.485/0.456/0.406, 0.229/0.224/0.225 x 255)
IMAGENET_MEAN = "123.675,116.28,103.53"
IMAGENET_STD = "58.395,57.12,57.375"
#: Input ranges lpirc's raw pixel codes feed correctly: (p - 128) / 128, p / 255, p, p - 128.
_RAW_RANGES = ((-1.0, 1.0), (0.0, 1.0), (0.0, 255.0), (-128.0, 127.0))


def input_range(dtype: str, scale: float, zero_point: int) -> tuple[float, float] | None:
    """The real values (lo, hi) a quantized input holds: (dtype min/max - zero_point) x scale;
    None for a float input or one without quantization parameters."""
    if dtype not in ("uint8", "int8") or not scale:
        return None
    info = np.iinfo(dtype)
    return (info.min - zero_point) * scale, (info.max - zero_point) * scale


def raw_codes_problem(dtype: str, scale: float, zero_point: int) -> tuple[str, bool] | None:
    """Why raw pixel codes (what a quantized input gets with no mean/std) do not fit this
    input's quantization, or None when they do: its real range is one of _RAW_RANGES within 5 %
    (the 2018 models, TF2 PTQ on [-1, 1]), or it is not quantized. Returns (one-line message,
    imagenet): ``imagenet`` when the range is about [-2.1, 2.6], ImageNet mean/std, and the
    message then gives the options to set. One rule for `lpirc run`'s note and
    `submission check`'s normalise check."""
    rng = input_range(dtype, scale, zero_point)
    if rng is None:
        return None
    lo, hi = rng
    if any(abs(lo - a) <= 0.05 * (b - a) and abs(hi - b) <= 0.05 * (b - a)
           for a, b in _RAW_RANGES):
        return None
    imagenet = _looks_imagenet(lo, hi)
    hint = (f"; it looks like ImageNet mean/std: set --mean {IMAGENET_MEAN} --std {IMAGENET_STD} "
            "(or mean/std in the config or sidecar's preprocess)" if imagenet else
            "; give the normalisation it was calibrated with: --mean/--std in pixel units "
            "0..255 (or in the config or sidecar's preprocess)")
    return (f"input range [{lo:.3g}, {hi:.3g}] (span {hi - lo:.3g}) is not one that raw pixel "
            f"codes feed correctly{hint}", imagenet)


def _looks_imagenet(lo: float, hi: float) -> bool:
    return -2.3 <= lo <= -1.9 and 2.3 <= hi <= 2.8


def float_feed_problem(dtype: str, scale: float, zero_point: int) -> tuple[str, bool] | None:
    """Why lpirc's default float feed, ``(pixel - 127.5) / 127.5`` (real range [-1, 1]), does
    not fit a float input whose first op quantizes it (an int8 body behind float I/O) to
    ``dtype``/``scale``/``zero_point``, or None. Only ranges that say which normalisation was
    calibrated are named: about [-2.1, 2.6] (ImageNet mean/std), [0, 1] (pixel / 255) and
    [0, 255] (pixel). Returns (one-line message, imagenet), as :func:`raw_codes_problem`."""
    rng = input_range(dtype, scale, zero_point)
    if rng is None:
        return None
    lo, hi = rng
    if _looks_imagenet(lo, hi):
        hint, imagenet = (f"it looks like ImageNet mean/std: set --mean {IMAGENET_MEAN} --std "
                          f"{IMAGENET_STD}"), True
    elif abs(lo) <= 0.05 and 0.95 <= hi <= 1.05:
        hint, imagenet = "it looks like pixel / 255: set --mean 0 --std 255", False
    elif abs(lo) <= 0.05 * 255 and 0.95 * 255 <= hi <= 1.05 * 255:
        hint, imagenet = "it looks like raw pixels: set --mean 0 --std 1", False
    else:
        return None
    return (f"the float input's first op quantizes it to [{lo:.3g}, {hi:.3g}], the range it was "
            f"calibrated on, but lpirc feeds (pixel - 127.5) / 127.5 = [-1, 1] when no mean/std "
            f"is given; {hint} (or mean/std in the config or sidecar's preprocess)", imagenet)


def input_lut(spec: PreprocessSpec) -> np.ndarray | None:
    """The pixel -> input-code table (3, 256) of a quantized input, or None for raw codes.

    ``round((pixel - mean_c) / std_c / scale) + zero_point`` clipped to the dtype, rounding
    halves away from zero as TFLite's QUANTIZE does. None when ``spec.quantize`` is None, or
    when the raw codes (uint8: pixel, int8: pixel - 128) already are that quantization to within
    half a level for every pixel value: the standard 2018 models (scale 1/128, zero point 128)
    then get exactly the input they got before mean/std were read."""
    if spec.quantize is None or spec.dtype == "float32":
        return None
    return _lut(spec.dtype, tuple(spec.mean), tuple(spec.std), tuple(spec.quantize))


def to_input(pixels_uint8: np.ndarray, spec: PreprocessSpec) -> np.ndarray:
    """uint8 RGB pixels (H, W, 3) -> model input (H, W, 3) of ``spec.dtype``.

    float32: ``(pixel - mean) / std`` per channel. uint8/int8: raw codes (pixel, pixel - 128),
    or the table of :func:`input_lut`. ``channel_order="bgr"`` then reverses the channels."""
    p = np.asarray(pixels_uint8)
    if p.dtype != np.uint8:
        raise TypeError(f"pixels must be uint8, got {p.dtype}")
    if spec.dtype == "float32":
        out = p.astype(np.float32)
        out -= np.asarray(spec.mean, dtype=np.float32)
        out /= np.asarray(spec.std, dtype=np.float32)
    else:
        lut = input_lut(spec)
        if lut is not None:
            out = _apply_lut(p, lut)
        elif spec.dtype == "uint8":
            out = p
        else:
            out = np.bitwise_xor(p, np.uint8(0x80)).view(np.int8)  # == pixel - 128, exactly
    if spec.channel_order == "bgr":
        out = np.ascontiguousarray(out[..., ::-1])
    return out


#: per-channel offsets into a flattened (3, 256) table
_CHANNEL_OFFSETS = np.array([0, 256, 512], np.uint16)


def _apply_lut(p: np.ndarray, lut: np.ndarray) -> np.ndarray:
    """Channel c of pixel value v becomes ``lut[c, v]``: one numpy ``take`` on the flattened
    table, the channel's offset added to each pixel value (numpy only: no library's LUT)."""
    if p.ndim == 3 and p.shape[2] == 3:
        return lut.ravel().take(p + _CHANNEL_OFFSETS)
    out = np.empty(p.shape, lut.dtype)
    for c in range(p.shape[-1]):
        np.take(lut[c], p[..., c], out=out[..., c])
    return out


__all__ = [
    "ImageError",
    "InputShapeError",
    "OptionError",
    "PreprocessOptions",
    "PreprocessSpec",
    "crop_and_resize",
    "crop_box",
    "decode",
    "decode_pillow",
    "decode_pixels",
    "float_feed_problem",
    "input_lut",
    "input_range",
    "load_image",
    "preprocess_json",
    "raw_codes_problem",
    "resize_backend",
    "to_input",
    "units_problem",
]
