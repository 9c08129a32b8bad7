"""Holdout folders: the image order of a run, and making an anonymised rehearsal holdout.

``open_holdout(root, seed)`` lists the images of a holdout folder (every regular file below it
except hidden ones and ``*.csv``/``*.json``/``*.txt``) in a fixed order: sorted, then shuffled
by ``random.Random(seed)``. ``files_sha256`` identifies that ordered list in a run's manifest.

``make_holdout(src, out, count, seed)`` builds a holdout from a labelled folder, either
``SRC/<synset>_*.JPEG`` files (the ImageNet dev layout) or ``SRC/<synset>/*`` subfolders. Names
hide the class (``img_000001.jpg``); ``OUT/ground_truth.csv`` (``filename,label``, label = the
synset) holds the answers. The first pass over the sources copies their bytes unchanged; when
``count`` exceeds the sources, further images are randomly cropped and/or mirrored variants of
the sources, re-encoded as JPEG (quality 90). The result depends only on the sources and seed.
"""

from __future__ import annotations

import hashlib
import os
import signal
import random
import re
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path

from lpirc.errors import InputError

_SKIP_SUFFIXES = (".csv", ".json", ".txt")
_SYNSET_RE = re.compile(r"^(n\d{8})(?:_|$)")
_OUR_NAME_RE = re.compile(r"^img_\d{6,}\.[a-z0-9]+$")
GROUND_TRUTH = "ground_truth.csv"
VARIANT_QUALITY = 90
_INLINE_VARIANTS = 32  # fewer variants than this are made in-process (no worker start-up)


@dataclass(frozen=True)
class Holdout:
    root: Path
    files: tuple[str, ...]  # relative names ("/"-separated), in run order
    seed: int
    files_sha256: str


def _is_listed(name: str) -> bool:
    return not name.startswith(".") and not name.lower().endswith(_SKIP_SUFFIXES)


def list_images(root: Path) -> list[str]:
    """Relative names of the image files below ``root``, sorted (hidden files/folders and
    .csv/.json/.txt files left out)."""
    out: list[str] = []

    # scandir's DirEntry knows the file type from the directory listing itself: no stat per
    # file, which is most of the listing time at 200,000 images.
    def walk(folder: str, prefix: str) -> None:
        with os.scandir(folder) as entries:
            for e in entries:
                if e.name.startswith("."):
                    continue
                if e.is_dir(follow_symlinks=False):
                    walk(e.path, f"{prefix}{e.name}/")
                elif _is_listed(e.name) and e.is_file():  # not sockets, fifos, broken links
                    out.append(prefix + e.name)

    walk(os.fspath(root), "")
    out.sort()
    return out


def open_holdout(root: str | os.PathLike, seed: int = 0) -> Holdout:
    """The images of a holdout folder in run order. InputError if missing, not a folder, empty."""
    path = Path(root)
    if not path.exists():
        raise InputError(f"{path}: holdout folder not found")
    if not path.is_dir():
        raise InputError(f"{path}: holdout is not a folder")
    try:
        files = list_images(path)
    except OSError as e:
        raise InputError(f"{path}: cannot list holdout folder ({e.strerror or e})") from None
    if not files:
        raise InputError(f"{path}: holdout folder holds no images")
    random.Random(seed).shuffle(files)
    digest = hashlib.sha256("\n".join(files).encode("utf-8")).hexdigest()
    return Holdout(root=path, files=tuple(files), seed=int(seed), files_sha256=digest)


# --- making a holdout ----------------------------------------------------------------------


def _known_synsets() -> frozenset[str]:
    from scoring import synsets  # the scorer owns the label list

    return frozenset(synsets())


def labelled_sources(src: str | os.PathLike) -> list[tuple[Path, str]]:
    """(file, synset) for every image of a labelled folder, sorted by path.

    Accepts ``SRC/<synset>_*.ext`` files and ``SRC/<synset>/...`` subfolders (both at once too).
    InputError naming the file/folder whose class cannot be told or is not an ILSVRC synset."""
    root = Path(src)
    if not root.exists():
        raise InputError(f"{root}: source folder not found")
    if not root.is_dir():
        raise InputError(f"{root}: source is not a folder")
    known = _known_synsets()
    out: list[tuple[Path, str]] = []
    for rel in list_images(root):
        first = rel.split("/", 1)[0]
        if "/" in rel:
            synset, where = first, root / first
        else:
            m = _SYNSET_RE.match(first)
            if not m:
                raise InputError(
                    f"{root / rel}: cannot tell the class (expected <synset>_*.JPEG or a "
                    "<synset>/ folder)"
                )
            synset, where = m.group(1), root / rel
        if synset not in known:
            raise InputError(f"{where}: {synset!r} is not an ILSVRC-2012 synset")
        out.append((root / rel, synset))
    if not out:
        raise InputError(f"{root}: source folder holds no images")
    return out


def _out_suffix(path: Path) -> str:
    suffix = path.suffix.lower()
    if suffix in ("", ".jpeg", ".jpg", ".jpe"):
        return ".jpg"
    return suffix if re.fullmatch(r"\.[a-z0-9]{1,5}", suffix) else ".img"


def _plan(n_src: int, count: int, seed: int) -> list[tuple[int, int]]:
    """(source index, variant number) per output image, in output order. Variant 0 = copy.

    The first pass copies every source once (a random subset when count < sources); further
    passes take the sources in a fresh random order each time. The whole list is then shuffled
    so copies and variants, and classes, are interleaved."""
    rng = random.Random(f"lpirc-holdout:{seed}")
    jobs: list[tuple[int, int]] = []
    variant = 0
    while len(jobs) < count:
        order = list(range(n_src))
        rng.shuffle(order)
        jobs.extend((i, variant) for i in order[: count - len(jobs)])
        variant += 1
    rng.shuffle(jobs)
    return jobs


def make_variant(data_path: str, seed: str, quality: int = VARIANT_QUALITY) -> bytes:
    """A randomly cropped (50-100 % of the area, aspect x 3/4..4/3) and/or mirrored copy of an
    image, encoded as JPEG. Deterministic for ``seed``. Raises ImageError for unusable images."""
    import io

    from PIL import Image

    from lpirc.preprocess import PreprocessSpec, decode

    spec = PreprocessSpec(1, 1, "uint8", max_image_pixels=100_000_000)
    img = decode(data_path, spec)
    rng = random.Random(seed)
    w, h = img.size
    area = rng.uniform(0.5, 1.0)
    aspect = rng.uniform(3 / 4, 4 / 3)
    cw = max(1, min(w, round(w * (area * aspect) ** 0.5)))
    ch = max(1, min(h, round(h * (area / aspect) ** 0.5)))
    left = rng.randint(0, w - cw)
    top = rng.randint(0, h - ch)
    mirror = rng.random() < 0.5 or (cw == w and ch == h)
    img = img.crop((left, top, left + cw, top + ch))
    if mirror:
        img = img.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    buf = io.BytesIO()
    img.save(buf, "JPEG", quality=quality)
    return buf.getvalue()


def _make_one(task: tuple[str, str, int, str]) -> str | None:
    """Worker: write one output file. Returns None, or an error line naming the source."""
    src, dst, variant, seed = task
    try:
        if variant == 0:
            shutil.copyfile(src, dst)
        else:
            data = make_variant(src, seed)
            with open(dst, "wb") as f:
                f.write(data)
    except OSError as e:
        return f"{src}: cannot copy ({e.strerror or e})"
    except Exception as e:  # ImageError and anything Pillow raises while encoding
        return f"{src}: cannot make a variant ({e})"
    return None


def _prepare_out(out: Path, force: bool) -> None:
    if out.exists() and not out.is_dir():
        raise InputError(f"{out}: output exists and is not a folder")
    if out.is_dir():
        existing = [p for p in out.iterdir()]
        if existing and not force:
            raise InputError(f"{out}: output folder is not empty (use --force to overwrite)")
        for p in existing:  # --force: remove what an earlier make wrote, leave the rest
            if p.is_file() and (p.name == GROUND_TRUTH or _OUR_NAME_RE.match(p.name)):
                p.unlink()
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise InputError(f"{out}: cannot create output folder ({e.strerror or e})") from None


def make_holdout(
    src: str | os.PathLike,
    out: str | os.PathLike,
    count: int,
    seed: int = 0,
    progress: bool = True,
    force: bool = False,
    workers: int | None = None,
) -> Path:
    """Write ``count`` anonymised images and ``ground_truth.csv`` into ``out``; returns the CSV.

    Raises InputError (one line naming the file) for a bad source folder/file or output folder.
    ``progress`` shows a tqdm bar on a terminal; ``workers`` defaults to min(2, CPU count)."""
    if int(count) < 1:
        raise InputError(f"--count must be at least 1, got {count}")
    count = int(count)
    sources = labelled_sources(src)
    out_dir = Path(out)
    created = not out_dir.exists()
    _prepare_out(out_dir, force)

    jobs = _plan(len(sources), count, seed)
    width = max(6, len(str(count)))
    tasks: list[tuple[str, str, int, str]] = []
    truth: list[tuple[str, str]] = []
    for k, (i, variant) in enumerate(jobs, start=1):
        path, synset = sources[i]
        suffix = _out_suffix(path) if variant == 0 else ".jpg"
        name = f"img_{k:0{width}d}{suffix}"
        tasks.append((str(path), str(out_dir / name), variant, f"{seed}:{i}:{variant}"))
        truth.append((name, synset))

    from tqdm import tqdm

    show = bool(progress) and sys.stderr.isatty()
    n_variants = sum(1 for t in tasks if t[2] > 0)
    n_workers = workers if workers is not None else min(2, os.cpu_count() or 1)
    bar = tqdm(total=count, unit="img", desc="holdout", disable=not show, leave=False)
    try:
        if n_workers <= 1 or n_variants < _INLINE_VARIANTS:
            results = map(_make_one, tasks)
            _consume(results, bar)
        else:
            from concurrent.futures import ProcessPoolExecutor

            pool = ProcessPoolExecutor(max_workers=n_workers, initializer=_ignore_sigint)
            try:
                _consume(pool.map(_make_one, tasks, chunksize=16), bar)
            finally:
                pool.shutdown(wait=True, cancel_futures=True)
    except BaseException:
        # a half-made holdout without its ground truth is worse than none: it would only be
        # refused as "not empty" next time
        _remove_partial(out_dir, [t[1] for t in tasks], created)
        raise
    finally:
        bar.close()

    gt = out_dir / GROUND_TRUTH
    tmp = out_dir / f".{GROUND_TRUTH}.tmp"
    with open(tmp, "w", encoding="utf-8", newline="") as f:
        f.write("filename,label\n")
        for name, synset in truth:
            f.write(f"{name},{synset}\n")
    os.replace(tmp, gt)
    return gt


def _ignore_sigint() -> None:
    # Ctrl-C reaches the whole process group: the parent alone stops and cleans up, and the
    # workers must not each print a KeyboardInterrupt traceback
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def _remove_partial(out_dir: Path, written: list[str], created: bool) -> None:
    for name in written:
        try:
            os.unlink(name)
        except OSError:
            pass
    if created:
        try:
            out_dir.rmdir()
        except OSError:
            pass


def _consume(results, bar) -> None:
    for err in results:
        if err is not None:
            raise InputError(err)
        bar.update(1)


__all__ = [
    "GROUND_TRUTH",
    "Holdout",
    "labelled_sources",
    "list_images",
    "make_holdout",
    "make_variant",
    "open_holdout",
]
