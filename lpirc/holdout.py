"""Holdout folders: the image order of a run, and making an anonymised rehearsal holdout.

``open_holdout(root, seed)`` lists the images of a holdout folder (:func:`scan_images`, the one
rule every command uses) in a fixed order: sorted, then shuffled by ``random.Random(seed)``. ``files_sha256`` identifies that ordered list in a run's manifest.

``make_holdout(src, out, count, seed)`` builds a holdout from a labelled folder, either
``SRC/<synset>_*.JPEG`` files (the ImageNet dev layout) or ``SRC/<synset>/*`` subfolders. Names
hide the class (``img_000001.jpg``); ``OUT/ground_truth.csv`` (``filename,label``, label = the
synset) holds the answers. The first pass over the sources copies their bytes unchanged; when
``count`` exceeds the sources, further images are randomly cropped and/or mirrored variants of
the sources, re-encoded as JPEG (quality 90). The result depends only on the sources and seed.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import os
import random
import re
import shutil
import signal
import sys
import threading
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator

from PIL import Image
from tqdm import tqdm

import scoring
from lpirc.errors import InputError
from lpirc.preprocess import PreprocessSpec, decode_pillow
from scoring.groups import names_sha256
from scoring.names import AMBIGUOUS, NameIndex

_SKIP_SUFFIXES = (".csv", ".json", ".txt", ".md")  # data and notes beside the images
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
    skipped: dict = field(default_factory=dict)  # what the listing left out (see Listing)
    #: scoring.groups.names_sha256 of the files (their identity whatever the order), taken
    #: from the sorted listing before the shuffle (sorting 200,000 shuffled names again costs
    #: 0.1 s before a run's clock starts); None: not computed (ask :meth:`names_digest`)
    names_sha256: str | None = None

    def names_digest(self) -> str:
        """scoring.groups.names_sha256 of the files (kept from the listing when it was)."""
        return self.names_sha256 if self.names_sha256 is not None else names_sha256(self.files)

    def skipped_line(self) -> str | None:
        return Listing([], self.skipped).skipped_line()


#: Files the OS leaves in folders (Windows thumbnails and folder settings, macOS metadata).
OS_JUNK = frozenset({"thumbs.db", "desktop.ini", "ehthumbs.db", "icon\r"})
#: Folders made by archivers, never images (macOS zips: resource forks as ``._name`` files).
JUNK_FOLDERS = frozenset({"__MACOSX"})


@dataclass(frozen=True)
class Listing:
    """The image files below a folder, and what was skipped (reason -> count).

    Reasons: ``hidden`` (a name starting with "."), ``__MACOSX/`` (archive metadata folder),
    ``OS junk`` (Thumbs.db, desktop.ini, ...), ``folder link loop`` (a linked folder already
    being listed), ``broken link``. Data files (.csv/.json/.txt/.md) are not images and not counted."""

    files: list  # relative names, "/"-separated, sorted
    skipped: dict

    def no_images(self, root, what: str) -> InputError:
        """The one-line error for a ``what`` folder (holdout, source, representative image)
        without images: ``holdout/: holdout folder holds no images (skipped 4 entries ...)``."""
        extra = f" ({self.skipped_line()})" if self.skipped else ""
        return InputError(f"{root}: {what} folder holds no images{extra}")

    def skipped_line(self) -> str | None:
        """``skipped 3 entries: 2 hidden, 1 OS junk`` or None when nothing was skipped."""
        n = sum(self.skipped.values())
        if not n:
            return None
        parts = ", ".join(f"{c} {k}" for k, c in sorted(self.skipped.items()))
        return f"skipped {n} entr{'y' if n == 1 else 'ies'} that are not images: {parts}"


def _skip_reason(name: str, is_dir: bool) -> str | None:
    if name.startswith("."):
        return "hidden"
    if is_dir and name in JUNK_FOLDERS:
        return "__MACOSX/"
    if not is_dir and name.lower() in OS_JUNK:
        return "OS junk"
    return None


def _walk(folder: str, prefix: str, seen: frozenset, out: list[str],
          skipped: dict[str, int]) -> None:
    """scan_images's recursion: append the images below ``folder`` to ``out`` (as
    ``prefix + name``), count what is skipped. A module function, not a closure: a recursive
    closure is a reference cycle that kept the whole list of names (15 MB at 200,000 images)
    alive until the garbage collector's next full pass, that is, through a run."""
    # scandir's DirEntry knows the file type from the listing itself: no stat per plain
    # file, which is most of the listing time at 200,000 images
    with os.scandir(folder) as entries:
        for e in entries:
            is_dir = e.is_dir()  # follows links
            why = _skip_reason(e.name, is_dir)
            if why:
                skipped[why] = skipped.get(why, 0) + 1
            elif is_dir:
                st = e.stat()
                key = (st.st_dev, st.st_ino)
                if key in seen:
                    skipped["folder link loop"] = skipped.get("folder link loop", 0) + 1
                    continue
                try:
                    _walk(e.path, f"{prefix}{e.name}/", seen | {key}, out, skipped)
                except PermissionError:
                    skipped["unreadable folder"] = skipped.get("unreadable folder", 0) + 1
            elif e.is_file():
                if not e.name.lower().endswith(_SKIP_SUFFIXES):
                    out.append(prefix + e.name)
            elif e.is_symlink():
                skipped["broken link"] = skipped.get("broken link", 0) + 1


def scan_images(root) -> Listing:
    """The one rule for what an image is, used by every command (run, score's coverage note,
    tune, submission check and build, holdout make, bench).

    Every regular file below ``root`` (links to files and folders followed), sorted by its
    relative name, except: hidden files and folders, ``__MACOSX/``, OS junk files, and the
    data files .csv/.json/.txt/.md. A linked folder that is already being listed (a loop) is
    skipped. Raises OSError when ``root`` itself cannot be listed."""
    out: list[str] = []
    skipped: dict[str, int] = {}
    st = os.stat(root)
    _walk(os.fspath(root), "", frozenset({(st.st_dev, st.st_ino)}), out, skipped)
    out.sort()
    return Listing(out, skipped)


def list_images(root: Path) -> list[str]:
    """Relative names of the image files below ``root``, sorted (see :func:`scan_images`)."""
    return scan_images(root).files


def files_sha256(files) -> str:
    """sha256 (hex) of an ordered list of relative image names joined by newlines: the holdout
    digest every manifest, referee session and fleet node check records and compares."""
    return hashlib.sha256("\n".join(files).encode("utf-8")).hexdigest()


def content_sha256(holdout: Holdout) -> str:
    """sha256 (hex) of the holdout's images in run order, names and bytes: for each file one
    line ``<name>\\0<sha256 of its bytes>``. Where :func:`files_sha256` tells two lists of names
    apart, this also tells apart the same names holding other pictures (a fleet's node check).
    Reads every image once (1 MiB at a time). Raises InputError naming an unreadable image."""
    outer = hashlib.sha256()
    for name in holdout.files:
        inner = hashlib.sha256()
        try:
            with open(holdout.root / name, "rb") as f:
                for block in iter(lambda: f.read(1 << 20), b""):
                    inner.update(block)
        except OSError as e:
            raise InputError(f"{holdout.root / name}: cannot read ({e.strerror or e})") from None
        outer.update(f"{name}\0{inner.hexdigest()}\n".encode("utf-8"))
    return outer.hexdigest()


def open_holdout(root: str | os.PathLike, seed: int = 0) -> Holdout:
    """The images of a holdout folder in run order. InputError if missing, not a folder, empty."""
    path = Path(root)
    listing = scan_folder(path, "holdout")
    files = listing.files
    by_name = names_sha256(files)  # sorted already: the sort inside is one linear pass
    random.Random(seed).shuffle(files)
    return Holdout(root=path, files=tuple(files), seed=int(seed), files_sha256=files_sha256(files),
                   skipped=dict(listing.skipped), names_sha256=by_name)


# --- making a holdout ----------------------------------------------------------------------


def _known_synsets() -> frozenset[str]:
    return frozenset(scoring.synsets())  # the scorer owns the label list


def scan_folder(folder: Path, what: str, on_note: Callable[[str], None] | None = None) -> Listing:
    """The images below ``folder`` by the one listing rule (:func:`scan_images`), for a command
    that cannot go on without some.

    Args:
      folder: the folder to list.
      what: how the command names it in its errors ("source", "representative image").
      on_note: called with one line saying what the listing skipped, when it skipped anything.
    Returns:
      the :class:`Listing` (at least one file).
    Raises:
      InputError: the folder is missing, not a folder, unreadable, or holds no images (the
        line says what was skipped).
    """
    if not folder.exists():
        raise InputError(f"{folder}: {what} folder not found")
    if not folder.is_dir():
        raise InputError(f"{folder}: not a folder (the {what} must be one)")
    try:
        listing = scan_images(folder)
    except OSError as e:
        raise InputError(f"{folder}: cannot list the {what} folder ({e.strerror or e})") from None
    if not listing.files:  # the error says what was skipped
        raise listing.no_images(folder, what)
    if on_note is not None and listing.skipped_line():
        on_note(f"{folder}: {listing.skipped_line()}")
    return listing


def labelled_sources(src: str | os.PathLike, ground_truth: str | os.PathLike | None = None,
                     on_note=None) -> list[tuple[Path, str]]:
    """(file, synset) for every image of a labelled folder, sorted by path.

    Accepts ``SRC/<synset>_*.ext`` files and ``SRC/<synset>/...`` subfolders (both at once too),
    or, with ``ground_truth`` (CSV or ``filename label`` lines such as MLPerf's val_map.txt),
    any layout whose names the ground truth gives, matched by the scorer's rule
    (scoring.names). Images are listed by :func:`scan_images`; ``on_note`` receives the line
    saying what it skipped. InputError naming the file/folder whose class cannot be told, is not
    an ILSVRC synset, or has no (or an ambiguous) ground-truth row."""
    root = Path(src)
    listing = scan_folder(root, "source", on_note)
    if ground_truth is not None:
        return _labelled_by_truth(root, listing.files, Path(ground_truth), on_note)
    known = _known_synsets()
    out: list[tuple[Path, str]] = []
    for rel in listing.files:
        first = rel.split("/", 1)[0]
        if "/" in rel:
            synset, where = first, root / first
        else:
            m = _SYNSET_RE.match(first)
            if not m:
                raise InputError(
                    f"{root / rel}: cannot tell the class (expected <synset>_*.JPEG, a "
                    "<synset>/ folder, or --ground-truth)"
                )
            synset, where = m.group(1), root / rel
        if synset not in known:
            raise InputError(f"{where}: {synset!r} is not an ILSVRC-2012 synset")
        out.append((root / rel, synset))
    return out


def _labelled_by_truth(root: Path, files: list[str], gt: Path,
                       on_note=None) -> list[tuple[Path, str]]:
    """(file, synset) from a ground truth, every listed image matched by scoring.names. The
    ground truth's own notes (numeric labels that look 1-based) go to ``on_note``: the synsets
    written would carry the mistake where no later warning can see it."""
    truth = scoring.read_ground_truth(gt)
    notes = scoring.ground_truth_notes(gt)
    for note in notes if on_note is not None else ():
        on_note(f"{note}; the holdout's ground_truth.csv names the synsets these labels mean "
                "in lpirc's order")
    names = scoring.synsets()
    index = NameIndex(truth)
    labels = list(truth.values())
    out: list[tuple[Path, str]] = []
    for rel in files:
        i, rule = index.lookup(rel)
        if i < 0:
            why = ("matches several ground-truth rows" if rule == AMBIGUOUS
                   else "has no ground-truth row")
            raise InputError(f"{root / rel}: {why} in {gt}")
        out.append((root / rel, names[labels[i]]))
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
    spec = PreprocessSpec(1, 1, "uint8", max_image_pixels=100_000_000)
    img = decode_pillow(data_path, spec)  # as before issue 17: the same variants, byte for byte
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
    ground_truth: str | os.PathLike | None = None,
    on_note=None,
) -> Path:
    """Write ``count`` anonymised images and ``ground_truth.csv`` into ``out``; returns the CSV.

    Raises InputError (one line naming the file) for a bad source folder/file or output folder.
    ``progress`` shows a tqdm bar on a terminal; ``workers`` defaults to min(2, CPU count).
    ``ground_truth`` labels the sources (see :func:`labelled_sources`); ``on_note`` receives
    one-line notes (what the listing skipped)."""
    if int(count) < 1:
        raise InputError(f"--count must be at least 1, got {count}")
    count = int(count)
    sources = labelled_sources(src, ground_truth, on_note)
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

    show = bool(progress) and sys.stderr.isatty()
    n_variants = sum(1 for t in tasks if t[2] > 0)
    n_workers = workers if workers is not None else min(2, os.cpu_count() or 1)
    bar = tqdm(total=count, unit="img", desc="holdout", disable=not show, leave=False)
    try:
        if n_workers <= 1 or n_variants < _INLINE_VARIANTS:
            results = map(_make_one, tasks)
            _consume(results, bar)
        else:
            pool = ProcessPoolExecutor(max_workers=n_workers, initializer=_ignore_sigint)
            try:
                with _interrupts_deferred() as stop:
                    _consume(pool.map(_make_one, tasks, chunksize=16), bar, stop)
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


@contextlib.contextmanager
def _interrupts_deferred() -> Iterator[threading.Event]:
    """Within the block, Ctrl-C (SIGINT, unless ignored) and a handled SIGTERM set the event
    yielded instead of raising; the caller checks it between results and raises
    KeyboardInterrupt itself. Around the worker pool: an interrupt raised inside the pool's
    own code (a worker's fork and registration, a future's lock) can leave a worker nobody
    joins, or hang the pool's shutdown. Handlers are restored on exit; off the main thread
    (where signals cannot be set) the event is never set."""
    stop = threading.Event()
    if threading.current_thread() is not threading.main_thread():
        yield stop
        return

    def on_signal(signum, frame):
        stop.set()

    old = {}
    for sig in (signal.SIGINT, signal.SIGTERM):
        handler = signal.getsignal(sig)
        if callable(handler):  # SIG_IGN / SIG_DFL are ints: the caller's choice stands
            old[sig] = signal.signal(sig, on_signal)
    try:
        yield stop
    finally:
        for sig, handler in old.items():
            signal.signal(sig, handler)


def _ignore_sigint() -> None:
    # Ctrl-C reaches the whole process group: the parent alone stops and cleans up, and the
    # workers must not each print a KeyboardInterrupt traceback; a forked worker also drops the
    # parent's SIGTERM handler (lpirc.preflight.stop_signals), so the pool can still end it
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)


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


def _consume(results, bar, stop: threading.Event | None = None) -> None:
    for err in results:
        if stop is not None and stop.is_set():
            raise KeyboardInterrupt
        if err is not None:
            raise InputError(err)
        bar.update(1)
    if stop is not None and stop.is_set():
        raise KeyboardInterrupt


__all__ = [
    "GROUND_TRUTH",
    "Holdout",
    "labelled_sources",
    "list_images",
    "Listing",
    "scan_images",
    "make_holdout",
    "make_variant",
    "open_holdout",
]
