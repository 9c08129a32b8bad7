"""Reading the inputs of the scorer: ground truth, result logs, manifests, label files.

numpy and the standard library only. Every failure is a :class:`ScoringError` whose message is one
line naming the file (and the line, where there is one) and the problem.
"""

from __future__ import annotations

import csv
import itertools
import json
import math
import os
import re
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Iterator

import numpy as np

from scoring.records import Manifest

NUM_CLASSES = 1000
NO_ANSWER = -2  # padding in top5 arrays; never equal to a ground-truth label (0..999)


class ScoringError(Exception):
    """Bad scorer input. ``str(err)`` is one line naming the file and the problem."""


# --- labels -----------------------------------------------------------------------------------

_SYNSETS_FILE = Path(__file__).with_name("ilsvrc2012_synsets.txt")


@lru_cache(maxsize=1)
def _synsets() -> tuple[tuple[str, ...], dict[str, int]]:
    try:
        names = [s.strip() for s in _SYNSETS_FILE.read_text().split() if s.strip()]
    except OSError as e:
        raise ScoringError(f"{_SYNSETS_FILE}: cannot read the synset list ({e.strerror})") from None
    names = sorted(names)
    if len(names) != NUM_CLASSES:
        raise ScoringError(f"{_SYNSETS_FILE}: expected {NUM_CLASSES} synsets, found {len(names)}")
    return tuple(names), {s: i for i, s in enumerate(names)}


def synsets() -> tuple[str, ...]:
    """The 1000 ILSVRC-2012 synset IDs in class-index order (sorted)."""
    return _synsets()[0]


def synset_index(label: str) -> int:
    """ILSVRC-2012 class index (0..999) of a synset ID such as ``n01440764``, or of ``"0".."999"``.

    Raises ScoringError for anything else.
    """
    s = str(label).strip()
    idx = _synsets()[1].get(s)
    if idx is not None:
        return idx
    if s.lstrip("-").isdigit():
        k = int(s)
        if 0 <= k < NUM_CLASSES:
            return k
        raise ScoringError(f"class index {k} is out of range 0..{NUM_CLASSES - 1}")
    raise ScoringError(f"{s!r} is neither an ILSVRC-2012 synset ID nor a class index 0..999")


#: Kaggle's ImageNet localization CSV (LOC_val_solution.csv, ``ImageId,PredictionString``):
#: each box is ``synset x_min y_min x_max y_max``; every box of an image has its one class.
_KAGGLE_BOXES = re.compile(r"(n\d{8})(?:\s+\d+){4}(?:\s+\1(?:\s+\d+){4})*")


@lru_cache(maxsize=4096)  # a ground truth repeats its 1000 labels: 200,000 rows parse 2x faster
def _label_or_none(s: str) -> int | None:
    m = _KAGGLE_BOXES.fullmatch(s)
    try:
        return synset_index(m.group(1) if m else s)
    except ScoringError:
        return None


# --- ground truth -----------------------------------------------------------------------------


def read_ground_truth(path, cache: bool = True) -> dict[str, int]:
    """Read a ground truth: rows ``filename,label`` (CSV, header optional) or ``filename label``
    separated by whitespace (MLPerf's ``val_map.txt``, caffe's ``val.txt``); the format is told
    from the first row (a comma makes it CSV). Kaggle's ``LOC_val_solution.csv`` is read too:
    its label is the boxes' ``synset x_min y_min x_max y_max ...``, all of one synset.

    label is a synset ID (``n01440764``) or a class index 0..999 (lpirc's: the sorted-synset
    order). Returns filename -> class index. Raises ScoringError (file and line named) for a
    missing file, a bad row, a duplicate filename or an empty file. See
    :func:`ground_truth_notes` for labels that look 1-based.
    """
    return dict(_read(path, cache)[0])


def ground_truth_notes(path, cache: bool = True) -> list[str]:
    """Warnings about a readable ground truth (one line each), e.g. numeric labels that never
    use 0: the ImageNet devkit's ILSVRC2012_IDs are 1-based and ordered differently (kit fox
    is ID 1 there, class 278 in the sorted-synset order lpirc uses)."""
    return list(_read(path, cache)[1])


def read_ground_truth_and_notes(path, cache: bool = True) -> tuple[dict[str, int], list[str]]:
    """:func:`read_ground_truth` and :func:`ground_truth_notes` from one parse of the file
    (``cache=False``: not kept for a later call)."""
    pairs, notes = _read(path, cache)
    return dict(pairs), list(notes)


def _read(path, cache: bool) -> tuple[tuple, tuple]:
    p = Path(path)
    st = _stat(p, "ground truth")
    # cache=False for a caller that holds it briefly (lpirc run, during the run): the cache
    # would keep a 200,000-row ground truth alive for nothing
    read = _read_ground_truth_cached if cache else _read_ground_truth_cached.__wrapped__
    return read(str(p.resolve()), st.st_mtime_ns, st.st_size)


def _stat(p: Path, what: str) -> os.stat_result:
    try:
        st = p.stat()
    except OSError as e:
        raise ScoringError(f"{p}: cannot read {what} ({e.strerror or e})") from None
    if p.is_dir():
        raise ScoringError(f"{p}: is a folder, expected a {what} file")
    return st


@lru_cache(maxsize=8)
def _read_ground_truth_cached(path: str, _mtime: int, _size: int) -> tuple[tuple, tuple]:
    p = Path(path)
    try:  # streamed, not read whole: a large ground truth is not held twice while parsed
        with open(p, encoding="utf-8-sig", newline="") as f:
            return _parse_ground_truth(p, _rows(f))
    except UnicodeDecodeError:
        raise ScoringError(f"{p}: not a text CSV file (cannot decode as UTF-8)") from None
    except OSError as e:
        raise ScoringError(f"{p}: cannot read ground truth ({e.strerror or e})") from None


def _rows(f) -> Iterator[list[str]]:
    """Rows of a ground-truth file: csv rows when its first data line has a comma, else lines
    split at their last run of whitespace (``filename label``; a name may hold spaces).
    Iterators built in C where they can be (csv.reader over itertools.chain): no Python frame
    per line on the way to the parser."""
    first = None
    for line in f:
        if line.strip() and not line.lstrip().startswith("#"):
            first = line
            break
    if first is None:
        return iter(())
    lines = itertools.chain((first,), f)
    if "," in first:
        return csv.reader(lines)
    return (s.rsplit(None, 1) if (s := line.strip()) else [] for line in lines)


def _parse_ground_truth(p: Path, rows) -> tuple[tuple, tuple]:
    out: dict[str, int] = {}
    first = True
    numeric = True
    known: dict[str, int] = {}  # label -> class, for the labels seen (1000 at most, usually)
    # lpirc run parses this before its clock starts (200,000 rows): the common row costs one
    # strip per cell, one dict lookup for its label and one for its name
    for lineno, row in enumerate(rows, start=1):
        name = row[0].strip() if row else ""
        if not name and all(not c.strip() for c in row):
            continue  # a blank row
        if name.startswith("#"):
            continue
        if len(row) < 2:
            raise ScoringError(f"{p}:{lineno}: expected 'filename,label' or 'filename label', "
                               f"got {','.join(row)[:60]!r}")
        label = row[1].strip()
        k = known.get(label)
        if k is None:
            k = _label_or_none(label)
            if k is not None:
                known[label] = k
        if k is None:
            if first and _is_gt_header(name, label):
                first = False
                continue
            hint = ""
            if label.isdigit() and int(label) == NUM_CLASSES:
                hint = (" (labels 1..1000 look like the ImageNet devkit's 1-based "
                        "ILSVRC2012_IDs; lpirc's class k is the k-th synset in sorted order, "
                        "0-based: write synset IDs such as n01440764 instead)")
            raise ScoringError(
                f"{p}:{lineno}: label {label[:40]!r} is neither an ILSVRC-2012 synset ID nor a "
                f"class index 0..999{hint}")
        first = False
        numeric = numeric and label.lstrip("-").isdigit()
        if not name:
            raise ScoringError(f"{p}:{lineno}: empty filename")
        if name in out:
            raise ScoringError(f"{p}:{lineno}: duplicate filename {name!r}")
        out[name] = k
    if not out:
        raise ScoringError(f"{p}: no ground-truth rows (expected 'filename,label' lines)")
    notes = []
    if numeric and 0 not in out.values():
        notes.append(_one_based_note(p, out))
    return tuple(out.items()), tuple(notes)


#: The start of the note for numeric labels that never use 0 (scoring.core revises it).
ONE_BASED = "numeric labels never use 0"


def _one_based_note(p: Path, gt: dict[str, int]) -> str:
    lo, hi = min(gt.values()), max(gt.values())
    return (f"{p}: {ONE_BASED} (they run {lo}..{hi}): fine for a subset without class 0, but if "
            "they are the ImageNet devkit's 1-based ILSVRC2012_IDs (or a 1001-class model's "
            "indices), every answer scores wrong (lpirc's class k is the k-th synset in sorted "
            "order, 0-based); write synset IDs such as n01440764 instead")


_IMAGE_SUFFIX = re.compile(r"\.(jpe?g|png|bmp|gif|webp|tiff?)$", re.IGNORECASE)
_LABEL_LIKE = re.compile(r"(n\d|[-+]?\d).*")  # column names do not start with a digit


def _is_gt_header(name: str, label: str) -> bool:
    """A header names columns; a first data row with a bad label (``img_1.jpg,zebra`` or
    ``img_1.jpg,n0000``) is an image file or a label-like value, and must be reported, not dropped."""
    return not _IMAGE_SUFFIX.search(name) and not _LABEL_LIKE.fullmatch(label)


# --- label names ------------------------------------------------------------------------------


def read_label_names(path) -> list[str]:
    """Class names for the per-class view: a text file of 1000 lines (class k on line k+1) or
    1001 lines (line 1 = background). Returns 1000 names."""
    p = Path(path)
    _stat(p, "labels")
    try:
        lines = [ln.strip() for ln in p.read_text(encoding="utf-8-sig").splitlines()]
    except (OSError, UnicodeDecodeError) as e:
        raise ScoringError(f"{p}: cannot read labels ({getattr(e, 'strerror', None) or e})") from None
    while lines and not lines[-1]:
        lines.pop()
    if len(lines) == NUM_CLASSES + 1:
        lines = lines[1:]
    if len(lines) != NUM_CLASSES:
        raise ScoringError(f"{p}: expected 1000 or 1001 label lines, found {len(lines)}")
    return lines


# --- manifest ---------------------------------------------------------------------------------


def read_manifest(path) -> dict:
    p = Path(path)
    try:
        data = json.loads(p.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ScoringError(f"{p}: manifest not found") from None
    except (OSError, UnicodeDecodeError) as e:
        raise ScoringError(f"{p}: cannot read manifest ({getattr(e, 'strerror', None) or e})") from None
    except json.JSONDecodeError as e:
        raise ScoringError(f"{p}:{e.lineno}: manifest is not valid JSON ({e.msg})") from None
    if not isinstance(data, dict):
        raise ScoringError(f"{p}: manifest is not a JSON object")
    for key, value in data.items():
        wrong = _manifest_type_error(key, value)
        if wrong:
            raise ScoringError(f"{p}: manifest field {key!r} {wrong}")
    return data


_JSON_TYPES = {"str": (str,), "dict": (dict,), "list": (list,), "int": (int,), "float": (int, float)}


def _manifest_type_error(key: str, value) -> str | None:
    """Why ``value`` is not what :class:`scoring.records.Manifest` says ``key`` holds (None:
    it is, or the key is not one lpirc writes). A manifest with a field of the wrong type is
    refused whole: its figures would be read as something they are not."""
    ann = Manifest.__annotations__.get(key)
    if ann is None:
        return None
    ann = getattr(ann, "__forward_arg__", ann)  # a TypedDict keeps its annotations as ForwardRefs
    parts = [x.strip() for x in str(ann).split("|")]
    if value is None:
        return None if "None" in parts else f"is null, expected {ann}"
    ok = tuple(t for x in parts for t in _JSON_TYPES.get(x, ()))
    if isinstance(value, ok) and not isinstance(value, bool):
        return None
    return f"is {type(value).__name__} {json.dumps(value)[:40]}, expected {ann}"


# --- result logs ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Log:
    """Answers of one result log, in file order, as parallel arrays."""

    path: Path
    format: str  # "results.jsonl" | "referee"
    images: list[str]
    top5: np.ndarray  # (n, 5) int64, NO_ANSWER padded
    error: np.ndarray  # (n,) bool
    errors: list  # (n,) reason or None
    t_s: np.ndarray  # (n,) float64, nan = unknown
    inference_ms: np.ndarray  # (n,) float64, nan = unknown
    latency_ms: np.ndarray  # (n,) float64, nan = unknown
    late: np.ndarray  # (n,) bool: lpirc run logged the answer after its deadline ("late": true)
    warnings: list[str] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.images)


def _num(v) -> float:
    if v is None or isinstance(v, bool):
        return math.nan
    try:
        return float(v)
    except (TypeError, ValueError):
        return math.nan


_TOP_SCORE = re.compile(rb'"scores"\s*:\s*\[\s*(-?[0-9][0-9.eE+-]*)')


def top_scores(path) -> np.ndarray:
    """The first (best) score of every answer of a results.jsonl that has ``"scores"``, as
    float64 (empty for other logs); read only when a warning needs it."""
    try:
        data = Path(path).read_bytes()
    except OSError:
        return np.zeros(0)
    vals = []
    for m in _TOP_SCORE.finditer(data):
        try:
            vals.append(float(m.group(1)))
        except ValueError:
            continue
    return np.asarray(vals, dtype=np.float64)


def read_log(path) -> Log:
    """Read a result log: results.jsonl (one JSON object per line, as ``lpirc run`` writes) or the
    LPIRC referee's space-separated file (``image_id class_id confidence ...`` per row); the format
    is told from the first non-blank character."""
    p = Path(path)
    _stat(p, "result log")
    try:
        data = p.read_bytes()
    except OSError as e:
        raise ScoringError(f"{p}: cannot read result log ({e.strerror or e})") from None
    if data.startswith(b"\xef\xbb\xbf"):  # a UTF-8 BOM (Windows editors) is not part of the first line
        data = data[3:]
    head = data.lstrip()[:1]
    if head == b"{" or not head:
        return _read_jsonl(p, data)
    return _read_referee(p, data)


def _split_lines(data: bytes) -> tuple[list[bytes], bool]:
    """Lines (stripped) with their numbers kept by position; also whether the file ends without a
    newline (so the last line may be cut short)."""
    ends_clean = data.endswith(b"\n") or not data
    return data.split(b"\n"), not ends_clean


_SCORES = re.compile(rb'"scores"\s*:\s*\[[^\[\]]*\]')  # not needed for scoring: skip parsing it


def _read_jsonl(p: Path, data: bytes) -> Log:
    raw, unterminated = _split_lines(data)
    numbered = [(i + 1, ln) for i, ln in enumerate(raw) if ln.strip()]
    if numbered:
        try:
            return _jsonl_fast(p, [ln for _, ln in numbered])
        except (ValueError, TypeError, AttributeError, KeyError, RecursionError):
            pass  # something is off: the careful path names the line
    return _jsonl_careful(p, numbered, unterminated)


def _jsonl_fast(p: Path, lines: list[bytes]) -> Log:
    """One json.loads for the whole file, columns pulled out in bulk; raises on anything odd."""
    objs = json.loads(_SCORES.sub(b'"scores":0', b"[" + b",".join(lines) + b"]"))
    images = [o["image"] for o in objs]
    if not all(isinstance(i, str) and i for i in images):
        raise ValueError("image")
    t5 = [o.get("top5") or [] for o in objs]
    errors = [o.get("error") for o in objs]
    if not all(e is None or isinstance(e, str) for e in errors):
        raise ValueError("error")
    n = len(objs)
    if all(len(t) == 5 for t in t5):
        top5 = np.array(t5, dtype=np.int64).reshape(n, 5)
    else:
        top5 = np.full((n, 5), NO_ANSWER, dtype=np.int64)
        for i, t in enumerate(t5):
            top5[i, : len(t)] = t[:5]
    if any(isinstance(c, bool) or not isinstance(c, int) for t in t5 for c in t):
        raise ValueError("top5")
    cols = [np.array([o.get(k) for o in objs], dtype=np.float64) for k in ("t_s", "inference_ms", "latency_ms")]
    late = np.fromiter((o.get("late") is True for o in objs), dtype=bool, count=n)
    return _make_log(p, images, top5, errors, *cols, late, [], list(range(1, n + 1)))


def _jsonl_careful(p: Path, numbered: list[tuple[int, bytes]], unterminated: bool) -> Log:
    warnings: list[str] = []
    objs = []
    last = numbered[-1][0] if numbered else 0
    for lineno, ln in numbered:
        try:
            o = json.loads(ln)
        except (json.JSONDecodeError, UnicodeDecodeError, RecursionError):
            if lineno == last and unterminated:
                warnings.append(f"{p}:{lineno}: truncated last line ignored (crashed run?)")
                break
            raise ScoringError(f"{p}:{lineno}: not a valid JSON line") from None
        if not isinstance(o, dict):
            raise ScoringError(f"{p}:{lineno}: expected a JSON object per line")
        objs.append(o)
    linenos = [n for n, _ in numbered]
    n = len(objs)
    images: list[str] = []
    top5 = np.full((n, 5), NO_ANSWER, dtype=np.int64)
    errors: list = []
    t_s = np.empty(n)
    inf = np.empty(n)
    lat = np.empty(n)
    late = np.zeros(n, dtype=bool)
    for i, o in enumerate(objs):
        img = o.get("image")
        if not isinstance(img, str) or not img:
            raise ScoringError(f"{p}:{linenos[i]}: answer has no \"image\" name")
        images.append(img)
        t5 = o.get("top5")
        if t5 is None:
            t5 = []
        if not isinstance(t5, list) or not all(isinstance(c, int) and not isinstance(c, bool) for c in t5):
            raise ScoringError(f"{p}:{linenos[i]}: \"top5\" must be a list of class indices")
        if t5:
            k = min(5, len(t5))
            top5[i, :k] = t5[:k]
        err = o.get("error")
        errors.append(None if err in (None, "", False) else str(err))
        t_s[i] = _num(o.get("t_s"))
        inf[i] = _num(o.get("inference_ms"))
        lat[i] = _num(o.get("latency_ms"))
        late[i] = o.get("late") is True
    return _make_log(p, images, top5, errors, t_s, inf, lat, late, warnings, linenos)


def _make_log(p, images, top5, errors, t_s, inf, lat, late, warnings, linenos) -> Log:
    n = len(images)
    errors = [None if e in (None, "") else e for e in errors]
    error = np.fromiter((e is not None for e in errors), dtype=bool, count=n)
    top5[error] = NO_ANSWER
    bad = (top5 != NO_ANSWER) & ((top5 < -1) | (top5 >= NUM_CLASSES))
    if bad.any():
        i = int(np.nonzero(bad.any(axis=1))[0][0])
        raise ScoringError(f"{p}:{linenos[i]}: class index out of range -1..999 in \"top5\"")
    return Log(p, "results.jsonl", images, top5, error, errors, t_s, inf, lat, late, warnings)


def _read_referee(p: Path, data: bytes) -> Log:
    raw, unterminated = _split_lines(data)
    warnings: list[str] = []
    try:
        text_lines = [ln.decode("utf-8").strip() for ln in raw]
    except UnicodeDecodeError:
        raise ScoringError(f"{p}: not a text result log (cannot decode as UTF-8)") from None
    numbered = [(i + 1, ln) for i, ln in enumerate(text_lines) if ln and not ln.startswith("#")]
    last = numbered[-1][0] if numbered else 0
    images: list[str] = []
    classes: list[int] = []
    for lineno, ln in numbered:
        parts = ln.replace(",", " ").split()
        k, why = _referee_row(parts)
        if why:
            if lineno == last and unterminated:
                warnings.append(f"{p}:{lineno}: truncated last line ignored (crashed run?)")
                break
            if lineno == numbered[0][0] and _is_referee_header(parts):
                continue
            raise ScoringError(f"{p}:{lineno}: bad referee row ({why})")
        images.append(parts[0])
        classes.append(k)
    n = len(images)
    top5 = np.full((n, 5), NO_ANSWER, dtype=np.int64)
    if n:
        top5[:, 0] = classes
    nan = np.full(n, np.nan)
    warnings.append(f"{p}: referee format has no timing: lateness is not checked")
    return Log(p, "referee", images, top5, np.zeros(n, bool), [None] * n, nan, nan.copy(), nan.copy(),
               np.zeros(n, bool), warnings)


def _is_referee_header(parts: list[str]) -> bool:
    """A header names columns (``image_id class_id confidence``): no field is a number. A bad first
    data row (``img0 zebra 0.9``) has one, and is reported instead of silently dropped."""
    if len(parts) < 3:
        return False
    for x in parts:
        try:
            float(x)
            return False
        except ValueError:
            pass
    return True


def _referee_row(parts: list[str]) -> tuple[int, str | None]:
    """(class index, None) or (0, reason) for one row ``image_id class_id [confidence ...]``."""
    if len(parts) < 3:
        return 0, "expected 'image_id class_id confidence'"
    if parts[1] == "-1":
        k = -1
    else:
        try:
            k = synset_index(parts[1])
        except ScoringError as e:
            return 0, str(e)
    try:
        float(parts[2])
    except ValueError:
        return 0, f"confidence {parts[2][:20]!r} is not a number"
    return k, None
