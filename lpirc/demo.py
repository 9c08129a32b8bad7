"""A procedural *demo* dataset: ten kinds of drawn pictures, each filed under an ILSVRC-2012 synset.

This is not ImageNet and not a benchmark. It exists so that ``lpirc run`` with no arguments has
something real to classify offline (no downloads), and so that the bundled reference submission
(``submission/reference/model.tflite``, trained by ``python -m submission.make_reference``) can
show a genuine held-out accuracy figure. Each class is a simple drawing that *plausibly resembles*
the synset it is filed under; a real ImageNet model will not recognise most of them.

==========  ============  ==========================================================================
synset      ILSVRC name   what the generator draws
==========  ============  ==========================================================================
n06785654   crossword     light square grid with dark grid lines and ~25 % of the cells filled dark
n03944341   pinwheel      disc cut into 4-8 alternately coloured sectors, centre pin, often a stick
n02391049   zebra         wavy dark/light stripes inside an elongated blob (a body-like ellipse)
n03530642   honeycomb     hexagonal cell outlines (thick walls), cells filled in amber-ish shades
n03733281   maze          a random perfect maze (depth-first), walls drawn as lines on a light plate
n04275548   spider web    thin spokes from a centre plus a polygonal spiral, light on a darker field
n09229709   bubble        several translucent circles with a rim and a bright highlight
n06874185   traffic light dark upright rounded housing with three lamps, one of them lit
n02666196   abacus        rectangular frame, horizontal rods, beads (ellipses) on each rod
n04118776   rule          long thin bar with tick marks of three lengths along one edge
==========  ============  ==========================================================================

Every image gets a random size (160-320 px a side, varying aspect ratio), a random background
(flat, gradient or blotchy, with clutter shapes), random colours, position, scale and rotation of
the object, blur, sensor-like noise and JPEG compression, so that the task is not trivial.

Public API:
    DEMO_CLASSES                 tuple of DemoClass (key, synset, name, description)
    demo_samples(count, seed)    iterator of (PIL.Image RGB, ILSVRC class index 0..999)
    make_demo_holdout(out, count=300, seed=1234) -> Path   images + ground_truth.csv
    demo_holdout_path() -> Path  cached holdout under ~/.cache/lpirc/demo-holdout-v1

Only numpy and Pillow are needed.
"""

from __future__ import annotations

import math
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from lpirc.errors import InputError
from scoring import synset_index

DEMO_HOLDOUT_NAME = "demo-holdout-v1"
DEMO_HOLDOUT_COUNT = 300
DEMO_HOLDOUT_SEED = 1234

@dataclass(frozen=True)
class DemoClass:
    key: str  # short name used in this module
    synset: str  # ILSVRC-2012 WordNet id
    name: str  # ILSVRC class name
    description: str  # what is drawn

    @property
    def index(self) -> int:
        """ILSVRC-2012 class index (position of the synset in the sorted synset list)."""
        return synset_index(self.synset)


# --------------------------------------------------------------------------------------------
# Drawing helpers. Each pattern function draws onto a transparent RGBA layer of side `s` and
# returns it; the caller rotates, scales and composites it onto a background.


def _rand_colour(rng: np.random.Generator, lo: int = 0, hi: int = 255) -> tuple[int, int, int]:
    return tuple(int(v) for v in rng.integers(lo, hi + 1, size=3))


def _light(rng):
    return _rand_colour(rng, 170, 255)


def _dark(rng):
    return _rand_colour(rng, 0, 80)


def _jitter(c, rng, amount=25):
    return tuple(int(np.clip(v + rng.integers(-amount, amount + 1), 0, 255)) for v in c)


def _layer(s: int):
    img = Image.new("RGBA", (s, s), (0, 0, 0, 0))
    return img, ImageDraw.Draw(img)


def _draw_crossword(rng, s):
    img, d = _layer(s)
    n = int(rng.integers(5, 11))
    cell = s / n
    light, dark = _light(rng), _dark(rng)
    lw = max(1, int(cell * rng.uniform(0.06, 0.14)))
    d.rectangle([0, 0, s - 1, s - 1], fill=light + (255,))
    filled = rng.random((n, n)) < rng.uniform(0.15, 0.35)
    for i in range(n):
        for j in range(n):
            if filled[i, j]:
                d.rectangle([j * cell, i * cell, (j + 1) * cell, (i + 1) * cell], fill=dark + (255,))
    for k in range(n + 1):
        p = min(s - 1, k * cell)
        d.line([(p, 0), (p, s)], fill=dark + (255,), width=lw)
        d.line([(0, p), (s, p)], fill=dark + (255,), width=lw)
    return img


def _draw_pinwheel(rng, s):
    img, d = _layer(s)
    k = int(rng.integers(4, 9))
    c1, c2 = _rand_colour(rng), _rand_colour(rng)
    if rng.random() < 0.5:
        c3 = _rand_colour(rng)
    else:
        c3 = c1
    r = s * 0.36
    cx, cy = s / 2, s * 0.4
    if rng.random() < 0.7:  # the stick
        d.line([(cx, cy), (cx + rng.uniform(-0.05, 0.05) * s, s - 1)], fill=_dark(rng) + (255,),
               width=max(2, int(s * 0.03)))
    start = rng.uniform(0, 360)
    curl = rng.uniform(0, 25)  # sectors slightly offset: the folded vanes
    for i in range(k):
        a0 = start + 360 * i / k
        col = (c1, c2, c3)[i % 3 if c3 != c1 else i % 2]
        off = curl * (s / 200.0)
        ox = off * math.cos(math.radians(a0 + 90))
        oy = off * math.sin(math.radians(a0 + 90))
        d.pieslice([cx - r + ox, cy - r + oy, cx + r + ox, cy + r + oy], a0, a0 + 360 / k,
                   fill=col + (255,))
    pr = s * 0.035
    d.ellipse([cx - pr, cy - pr, cx + pr, cy + pr], fill=_rand_colour(rng) + (255,))
    return img


def _draw_zebra(rng, s):
    img = Image.new("RGBA", (s, s), (0, 0, 0, 0))
    stripes = Image.new("RGB", (s, s), _light(rng))
    d = ImageDraw.Draw(stripes)
    dark = _dark(rng)
    period = s * rng.uniform(0.07, 0.14)
    amp = period * rng.uniform(0.1, 0.5)
    freq = rng.uniform(1.0, 3.0) * 2 * math.pi / s
    phase = rng.uniform(0, 2 * math.pi)
    ys = np.linspace(0, s, 24)
    x0 = -period
    while x0 < s + period:
        w = period * rng.uniform(0.35, 0.6)
        left = [(x0 + amp * math.sin(freq * y + phase), y) for y in ys]
        right = [(x0 + w + amp * math.sin(freq * y + phase + 0.4), y) for y in ys[::-1]]
        d.polygon(left + right, fill=dark)
        x0 += period
    mask = Image.new("L", (s, s), 0)
    md = ImageDraw.Draw(mask)
    # body-ish: an ellipse plus a smaller ellipse (neck/head) on one side
    bw, bh = s * rng.uniform(0.35, 0.48), s * rng.uniform(0.2, 0.3)
    md.ellipse([s / 2 - bw, s / 2 - bh, s / 2 + bw, s / 2 + bh], fill=255)
    if rng.random() < 0.7:
        hx = s / 2 + bw * 0.9
        md.ellipse([hx - s * 0.12, s / 2 - bh - s * 0.2, hx + s * 0.06, s / 2 - bh * 0.2], fill=255)
    img.paste(stripes, (0, 0), mask)
    return img


def _hexagon(cx, cy, r):
    return [(cx + r * math.cos(math.radians(60 * i)), cy + r * math.sin(math.radians(60 * i)))
            for i in range(6)]


def _draw_honeycomb(rng, s):
    img, d = _layer(s)
    r = s / rng.uniform(5, 10)
    wall = _jitter((230, 180, 60), rng, 60) if rng.random() < 0.6 else _rand_colour(rng)
    base = _jitter((200, 130, 20), rng, 60) if rng.random() < 0.6 else _rand_colour(rng)
    lw = max(1, int(r * rng.uniform(0.12, 0.25)))
    dx, dy = 1.5 * r, math.sqrt(3) * r
    d.rectangle([0, 0, s, s], fill=wall + (255,))
    col = 0
    x = 0.0
    while x < s + r:
        y = (dy / 2 if col % 2 else 0.0)
        while y < s + r:
            fill = _jitter(base, rng, 30)
            d.polygon(_hexagon(x, y, r - lw / 2), fill=fill + (255,), outline=wall + (255,))
            y += dy
        x += dx
        col += 1
    # round the patch a bit so the cut edge is irregular
    mask = Image.new("L", (s, s), 0)
    ImageDraw.Draw(mask).ellipse([s * 0.02, s * 0.02, s * 0.98, s * 0.98], fill=255)
    if rng.random() < 0.5:
        mask = Image.new("L", (s, s), 255)
    img.putalpha(mask)
    return img


def _draw_maze(rng, s):
    img, d = _layer(s)
    n = int(rng.integers(6, 13))
    cell = (s - 4) / n
    plate, wall = _light(rng), _dark(rng)
    if rng.random() < 0.3:
        plate, wall = wall, plate
    lw = max(1, int(cell * rng.uniform(0.12, 0.3)))
    d.rectangle([0, 0, s - 1, s - 1], fill=plate + (255,))
    # walls: right[i, j] between (i, j) and (i, j+1); down[i, j] between (i, j) and (i+1, j)
    right = np.ones((n, n), bool)
    down = np.ones((n, n), bool)
    seen = np.zeros((n, n), bool)
    stack = [(int(rng.integers(n)), int(rng.integers(n)))]
    seen[stack[0]] = True
    while stack:
        i, j = stack[-1]
        nb = [(i + di, j + dj) for di, dj in ((0, 1), (1, 0), (0, -1), (-1, 0))
              if 0 <= i + di < n and 0 <= j + dj < n and not seen[i + di, j + dj]]
        if not nb:
            stack.pop()
            continue
        ni, nj = nb[int(rng.integers(len(nb)))]
        if ni == i:
            right[i, min(j, nj)] = False
        else:
            down[min(i, ni), j] = False
        seen[ni, nj] = True
        stack.append((ni, nj))
    o = 2
    for i in range(n):
        for j in range(n):
            x0, y0 = o + j * cell, o + i * cell
            if right[i, j] and not (j == n - 1 and i == n - 1):
                d.line([(x0 + cell, y0), (x0 + cell, y0 + cell)], fill=wall + (255,), width=lw)
            if down[i, j]:
                d.line([(x0, y0 + cell), (x0 + cell, y0 + cell)], fill=wall + (255,), width=lw)
    d.line([(o, o), (o, o + n * cell)], fill=wall + (255,), width=lw)
    d.line([(o + cell, o), (o + n * cell, o)], fill=wall + (255,), width=lw)
    return img


def _draw_spider_web(rng, s):
    img, d = _layer(s)
    c = s / 2
    col = _light(rng) + (255,)
    lw = max(1, int(s * rng.uniform(0.004, 0.012)))
    spokes = int(rng.integers(9, 18))
    angles = np.sort(rng.uniform(0, 2 * math.pi, spokes)) if rng.random() < 0.4 else \
        np.linspace(0, 2 * math.pi, spokes, endpoint=False) + rng.uniform(0, 1)
    R = s * 0.48
    for a in angles:
        d.line([(c, c), (c + R * math.cos(a), c + R * math.sin(a))], fill=col, width=lw)
    turns = int(rng.integers(6, 14))
    pts = []
    for t in range(turns * spokes):
        a = angles[t % spokes]
        rr = R * (0.08 + 0.9 * t / (turns * spokes))
        pts.append((c + rr * math.cos(a), c + rr * math.sin(a)))
    d.line(pts, fill=col, width=lw)
    return img


def _draw_bubble(rng, s):
    img, d = _layer(s)
    for _ in range(int(rng.integers(2, 7))):
        r = s * rng.uniform(0.08, 0.3)
        cx, cy = rng.uniform(r, s - r), rng.uniform(r, s - r)
        tint = _rand_colour(rng, 120, 255)
        d.ellipse([cx - r, cy - r, cx + r, cy + r], fill=tint + (int(rng.integers(20, 70)),),
                  outline=_jitter(tint, rng, 40) + (230,), width=max(1, int(r * 0.08)))
        hr = r * 0.25
        hx, hy = cx - r * 0.4, cy - r * 0.4
        d.ellipse([hx - hr, hy - hr * 0.6, hx + hr, hy + hr * 0.6], fill=(255, 255, 255, 220))
    return img


def _draw_traffic_light(rng, s):
    img, d = _layer(s)
    housing = _dark(rng)
    w, h = s * rng.uniform(0.22, 0.32), s * rng.uniform(0.7, 0.9)
    x0, y0 = s / 2 - w / 2, s / 2 - h / 2
    d.rounded_rectangle([x0, y0, x0 + w, y0 + h], radius=w * 0.2, fill=housing + (255,))
    if rng.random() < 0.5:  # pole
        d.rectangle([s / 2 - w * 0.1, y0 + h, s / 2 + w * 0.1, s], fill=_jitter(housing, rng) + (255,))
    lit = int(rng.integers(3))
    colours = [(230, 30, 30), (240, 190, 20), (30, 210, 80)]
    r = w * 0.36
    for i in range(3):
        cy = y0 + h * (i + 0.5) / 3
        c = colours[i] if i == lit else tuple(int(v * 0.25) + 20 for v in colours[i])
        d.ellipse([s / 2 - r, cy - r, s / 2 + r, cy + r], fill=_jitter(c, rng, 20) + (255,))
    return img


def _draw_abacus(rng, s):
    img, d = _layer(s)
    frame = _rand_colour(rng, 40, 160)
    fw = max(2, int(s * rng.uniform(0.03, 0.06)))
    m = s * 0.08
    d.rectangle([m, m, s - m, s - m], outline=frame + (255,), width=fw)
    rows = int(rng.integers(4, 9))
    bead_cols = [_rand_colour(rng) for _ in range(2)]
    bw = s * rng.uniform(0.045, 0.07)
    bh = (s - 2 * m) / rows * rng.uniform(0.3, 0.42)
    for i in range(rows):
        y = m + (s - 2 * m) * (i + 0.5) / rows
        d.line([(m, y), (s - m, y)], fill=_jitter(frame, rng, 20) + (255,), width=max(1, fw // 3))
        nb = int(rng.integers(4, 10))
        left = int(rng.integers(0, nb + 1))
        x = m + fw + bw
        for b in range(nb):
            if b == left:
                x += (s - 2 * m) - 2 * fw - 2 * bw * (nb + 1)
            col = bead_cols[(b // 5) % 2]
            d.ellipse([x - bw, y - bh, x + bw, y + bh], fill=col + (255,))
            x += 2 * bw
    return img


def _draw_rule(rng, s):
    img, d = _layer(s)
    body = _rand_colour(rng, 150, 255) if rng.random() < 0.7 else _rand_colour(rng)
    ink = _dark(rng)
    h = s * rng.uniform(0.1, 0.18)
    y0 = s / 2 - h / 2
    d.rectangle([0, y0, s - 1, y0 + h], fill=body + (255,), outline=ink + (255,))
    n = int(rng.integers(20, 50))
    step = s / n
    lw = max(1, int(step * 0.15))
    for k in range(1, n):
        x = k * step
        length = h * (0.6 if k % 10 == 0 else 0.4 if k % 5 == 0 else 0.22)
        d.line([(x, y0), (x, y0 + length)], fill=ink + (255,), width=lw)
    return img


DEMO_CLASSES: tuple[DemoClass, ...] = (
    DemoClass("crossword", "n06785654", "crossword puzzle",
              "light square grid, dark grid lines, some cells filled dark"),
    DemoClass("pinwheel", "n03944341", "pinwheel",
              "disc of alternately coloured sectors with a centre pin, often on a stick"),
    DemoClass("zebra", "n02391049", "zebra", "wavy dark/light stripes inside a body-like blob"),
    DemoClass("honeycomb", "n03530642", "honeycomb", "hexagonal cells with thick walls"),
    DemoClass("maze", "n03733281", "maze", "random perfect maze drawn as walls on a plate"),
    DemoClass("spider_web", "n04275548", "spider web", "thin spokes and a polygonal spiral"),
    DemoClass("bubble", "n09229709", "bubble", "translucent circles with rims and highlights"),
    DemoClass("traffic_light", "n06874185", "traffic light",
              "dark upright housing with three lamps, one lit"),
    DemoClass("abacus", "n02666196", "abacus", "frame with horizontal rods and beads"),
    DemoClass("rule", "n04118776", "rule", "long thin bar with tick marks"),
)

_DRAW: dict[str, Callable] = {
    "crossword": _draw_crossword, "pinwheel": _draw_pinwheel, "zebra": _draw_zebra,
    "honeycomb": _draw_honeycomb, "maze": _draw_maze, "spider_web": _draw_spider_web,
    "bubble": _draw_bubble, "traffic_light": _draw_traffic_light, "abacus": _draw_abacus,
    "rule": _draw_rule,
}

# Rotation range (degrees, symmetric) per class: upright objects only tilt.
_MAX_ROT = {"traffic_light": 25, "pinwheel": 35, "abacus": 30, "zebra": 30}


# --------------------------------------------------------------------------------------------
# Backgrounds, clutter and the full scene


def _background(rng, w, h) -> Image.Image:
    kind = rng.integers(3)
    if kind == 0:
        return Image.new("RGB", (w, h), _rand_colour(rng))
    if kind == 1:
        c1, c2 = np.array(_rand_colour(rng), np.float32), np.array(_rand_colour(rng), np.float32)
        a = rng.uniform(0, 2 * math.pi)
        yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
        t = (xx * math.cos(a) + yy * math.sin(a))
        t = (t - t.min()) / max(1e-6, float(t.max() - t.min()))
        arr = c1 + (c2 - c1) * t[..., None]
        return Image.fromarray(arr.astype(np.uint8), "RGB")
    small = rng.integers(0, 256, size=(int(rng.integers(2, 6)), int(rng.integers(2, 6)), 3))
    return Image.fromarray(small.astype(np.uint8), "RGB").resize((w, h), Image.BICUBIC)


def _clutter(rng, img: Image.Image) -> None:
    d = ImageDraw.Draw(img)
    w, h = img.size
    for _ in range(int(rng.integers(0, 5))):
        kind = rng.integers(3)
        x0, y0 = rng.uniform(0, w), rng.uniform(0, h)
        x1, y1 = x0 + rng.uniform(-0.4, 0.4) * w, y0 + rng.uniform(-0.4, 0.4) * h
        box = [min(x0, x1), min(y0, y1), max(x0, x1), max(y0, y1)]
        col = _rand_colour(rng)
        if kind == 0:
            d.line([(x0, y0), (x1, y1)], fill=col, width=int(rng.integers(1, 6)))
        elif kind == 1:
            d.ellipse(box, fill=col)
        else:
            d.rectangle(box, fill=col)


def _render(rng: np.random.Generator, cls: DemoClass) -> Image.Image:
    w = int(rng.integers(160, 321))
    h = int(np.clip(w * rng.uniform(0.65, 1.5), 160, 320))
    img = _background(rng, w, h)
    _clutter(rng, img)
    side = int(min(w, h) * rng.uniform(0.55, 0.95))
    layer = _DRAW[cls.key](rng, max(48, side))
    rot = _MAX_ROT.get(cls.key, 180)
    layer = layer.rotate(float(rng.uniform(-rot, rot)), resample=Image.BILINEAR, expand=True)
    if max(layer.size) > 0.98 * min(w, h):  # keep most of the object in view
        f = 0.98 * min(w, h) / max(layer.size)
        layer = layer.resize((max(1, int(layer.size[0] * f)), max(1, int(layer.size[1] * f))),
                             Image.BILINEAR)
    lw_, lh_ = layer.size
    # centre of the object: anywhere that keeps it mostly inside the central crop
    cx = w / 2 + rng.uniform(-0.2, 0.2) * max(0, w - lw_) + rng.uniform(-0.06, 0.06) * w
    cy = h / 2 + rng.uniform(-0.2, 0.2) * max(0, h - lh_) + rng.uniform(-0.06, 0.06) * h
    img.paste(layer, (int(round(cx - lw_ / 2)), int(round(cy - lh_ / 2))), layer)
    if rng.random() < 0.4:
        img = img.filter(ImageFilter.GaussianBlur(float(rng.uniform(0.3, 1.6))))
    arr = np.asarray(img, np.float32)
    arr = arr * rng.uniform(0.75, 1.2) + rng.uniform(-25, 25)  # exposure
    sigma = rng.uniform(0, 14)
    if sigma > 1:
        arr = arr + rng.normal(0, sigma, arr.shape).astype(np.float32)
    return Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8), "RGB")


def _sample_rngs(count: int, seed: int):
    ss = np.random.SeedSequence([int(seed), 0x1D1C])
    return [np.random.default_rng(s) for s in ss.spawn(count)]


def _labels(count: int, seed: int) -> list[int]:
    """Balanced class positions (into DEMO_CLASSES), shuffled deterministically."""
    k = len(DEMO_CLASSES)
    labels = np.array([i % k for i in range(count)])
    np.random.default_rng([int(seed), 0x1AB]).shuffle(labels)
    return [int(x) for x in labels]


def demo_samples(count: int, seed: int = 0, *, start: int = 0,
                 stop: int | None = None) -> Iterator[tuple[Image.Image, int]]:
    """Yield ``count`` demo images (PIL RGB) with their ILSVRC-2012 class index (0..999).

    Deterministic for a given (count, seed); classes are balanced and shuffled. ``start``/``stop``
    yield only samples ``start..stop-1`` of that same sequence (to split work between processes).
    """
    labels, rngs = _labels(count, seed), _sample_rngs(count, seed)
    for i in range(max(0, start), count if stop is None else min(count, stop)):
        cls = DEMO_CLASSES[labels[i]]
        yield _render(rngs[i], cls), cls.index


def _jpeg_quality(i: int, seed: int) -> int:
    return int(np.random.default_rng([int(seed), 0x9E6, i]).integers(70, 96))


def make_demo_holdout(out: Path, count: int = DEMO_HOLDOUT_COUNT, seed: int = DEMO_HOLDOUT_SEED) -> Path:
    """Write ``count`` anonymised demo JPEGs (img_000001.jpg ...) and ground_truth.csv to ``out``.

    ``ground_truth.csv`` has a ``filename,label`` header and synset labels. Returns ``out``.
    """
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    by_index = {c.index: c for c in DEMO_CLASSES}
    rows = []
    for i, (img, idx) in enumerate(demo_samples(count, seed), start=1):
        name = f"img_{i:06d}.jpg"
        img.save(out / name, "JPEG", quality=_jpeg_quality(i, seed))
        rows.append(f"{name},{by_index[idx].synset}\n")
    (out / "ground_truth.csv").write_text("filename,label\n" + "".join(rows))
    return out


def _cache_root() -> Path:
    xdg = os.environ.get("XDG_CACHE_HOME")
    base = Path(xdg) if xdg else Path.home() / ".cache"
    return base / "lpirc"


def demo_holdout_path() -> Path:
    """The demo holdout (300 images, seed 1234), generated into the user cache on first use.

    Lives at ``$XDG_CACHE_HOME/lpirc/demo-holdout-v1`` (default ``~/.cache/lpirc/...``). It is
    generated in a temporary folder beside it and renamed into place, so concurrent first runs
    do not see a half-written holdout.
    """
    root = _cache_root()
    final = root / DEMO_HOLDOUT_NAME
    if (final / "ground_truth.csv").is_file():
        return final
    try:
        return _generate(root, final)
    except OSError as e:
        where = e.filename or root
        raise InputError(f"{where}: cannot write the demo holdout ({e.strerror or e}); set "
                         "XDG_CACHE_HOME to a writable folder, or pass --holdout") from None


def _generate(root: Path, final: Path) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{DEMO_HOLDOUT_NAME}.tmp-", dir=root))
    try:
        make_demo_holdout(tmp, DEMO_HOLDOUT_COUNT, DEMO_HOLDOUT_SEED)
        if final.exists() and not (final / "ground_truth.csv").is_file():
            shutil.rmtree(final, ignore_errors=True)  # a stale, incomplete copy
        try:
            os.rename(tmp, final)
        except OSError:
            if not (final / "ground_truth.csv").is_file():
                raise
            # another process finished first: use its copy
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return final
