"""Image sources: where the dispatcher takes the names of the images to answer.

A source is anything with the four members of :class:`ImageSource`. Workers open
``source.root / name`` themselves, so only names cross the process boundary. Two sources ship:

- :class:`FolderSource`: a holdout folder listed up front (what ``lpirc run`` does);
- :class:`GrowingSource`: a feed that grows while the run goes, for a client that downloads
  images (the referee's zips) while earlier ones are being inferred. Thread-safe: one thread
  ``add``s names and finally ``close``s it; the dispatcher ``take``s them.

Example, a feed filled by another thread while the run answers what is already there::

    from lpirc.runner import run
    from lpirc.sources import GrowingSource

    feed = GrowingSource("incoming/")            # images are written into incoming/
    def download():
        for batch in fetch_batches():            # your code: writes files, yields their names
            feed.add(batch)
        feed.close()                             # no more images: the run can end
    threading.Thread(target=download).start()
    outcome = run(settings, source=feed, on_answers=lambda recs: post(recs))

The dispatcher numbers the images in the order it takes them (the ``index`` of each answer).
"""

from __future__ import annotations

import dataclasses
import hashlib
import itertools
import threading
import time
from array import array
from collections import deque
from collections.abc import Sequence
from pathlib import Path
from typing import Iterable, Iterator, Protocol, runtime_checkable

from lpirc.holdout import Holdout, files_sha256, open_holdout


@runtime_checkable
class ImageSource(Protocol):
    """What the dispatcher needs from a source of images.

    Attributes:
      root: the folder workers open ``root / name`` in.
      total: how many images the source will give in all, or None while unknown (a growing
        feed). Sizes the inference-clock budget (``ms_per_image`` x images) and the progress bar.
    """

    root: Path
    total: int | None

    def take(self, n: int, timeout_s: float = 0.0) -> list[str]:
        """Up to ``n`` names ready now, in run order; waits up to ``timeout_s`` seconds for the
        first one. ``[]`` when none came within the timeout (or the source is exhausted)."""
        ...

    def exhausted(self) -> bool:
        """True once every name was taken and no more will come."""
        ...


class NameList(Sequence):
    """Image names in order, held as one string joined by NUL (no file name holds one): 200,000
    names take 4 MB where a tuple of str takes 16 MB (a 50-byte object per name), which the
    parent of a run would hold to its end. Indexing and slicing give str and lists of str (the
    first one builds an index of where each name starts, 8 bytes a name); iterating splits the
    string once; :meth:`read` walks it in order with no index (what a run's dispatcher does)."""

    def __init__(self, names: Iterable[str]) -> None:
        names = names if isinstance(names, (list, tuple)) else list(names)
        self._text = "\0".join(names)
        self._n = len(names)
        self._ends: array | None = None  # built on first random access

    def __len__(self) -> int:
        return self._n

    def read(self, pos: int, n: int) -> tuple[list[str], int]:
        """Up to ``n`` names from character ``pos`` (0: the first name; then what the previous
        call returned), and where the next name starts."""
        text, out = self._text, []
        end = len(text)
        while len(out) < n and pos <= end and self._n:
            j = text.find("\0", pos)
            j = end if j < 0 else j
            out.append(text[pos:j])
            pos = j + 1
        return out, pos

    def _index(self) -> array:
        if self._ends is None:  # (where each name ends) + 1, i.e. where the next one starts
            self._ends = array("q", itertools.accumulate(len(x) + 1 for x in self))
        return self._ends

    def __getitem__(self, i):
        n = self._n
        if isinstance(i, slice):
            start, stop, step = i.indices(n)
            if step != 1:
                return [self[k] for k in range(start, stop, step)]
            if stop <= start:
                return []
            ends = self._index()
            return self._text[ends[start - 1] if start else 0:ends[stop - 1] - 1].split("\0")
        k = i + n if i < 0 else i
        if not 0 <= k < n:
            raise IndexError("NameList index out of range")
        ends = self._index()
        return self._text[ends[k - 1] if k else 0:ends[k] - 1]

    def __iter__(self) -> Iterator[str]:
        return iter(self._text.split("\0") if self._n else ())

    def __eq__(self, other) -> bool:
        if isinstance(other, NameList):
            return self._n == other._n and self._text == other._text
        return isinstance(other, (list, tuple)) and list(self) == list(other)

    __hash__ = None  # like a list

    def __repr__(self) -> str:
        return f"NameList({self._n} names)"


class FolderSource:
    """A holdout folder listed up front, in the fixed order of ``open_holdout(root, seed)``.

    A cursor into the listed names, not a queue of them: taking costs no memory per image, and
    the names are held as a :class:`NameList` (``holdout.files`` and ``files`` are one).

    Args:
      root: the holdout folder.
      seed: the order seed (sorted, then shuffled with ``random.Random(seed)``).
      holdout: an already opened :class:`~lpirc.holdout.Holdout` (then nothing is listed).
    Raises:
      InputError: the folder is missing, not a folder, or holds no images.
    """

    def __init__(self, root: str | Path, seed: int = 0, holdout: Holdout | None = None) -> None:
        h = holdout if holdout is not None else open_holdout(root, seed=seed)
        self.holdout = dataclasses.replace(h, files=NameList(h.files))
        del h  # the tuple of names is freed (unless the caller keeps the Holdout it gave)
        self.root = Path(self.holdout.root)
        self.total: int | None = len(self.holdout.files)
        self._cursor = 0  # names taken
        self._pos = 0  # where the next name starts in the NameList's text

    @classmethod
    def of_names(cls, root: str | Path, names: Iterable[str]) -> FolderSource:
        """A source over given names of ``root`` (in that order), nothing listed: for a sample."""
        files = tuple(names)
        return cls(root, holdout=Holdout(root=Path(root), files=files, seed=0,
                                         files_sha256=files_sha256(files)))

    @property
    def files(self) -> NameList:
        return self.holdout.files

    def take(self, n: int, timeout_s: float = 0.0) -> list[str]:
        k = min(len(self.holdout.files) - self._cursor, max(0, n))
        names, self._pos = self.holdout.files.read(self._pos, k)
        self._cursor += len(names)
        return names

    def exhausted(self) -> bool:
        return self._cursor >= len(self.holdout.files)

    def files_sha256(self) -> str:
        """sha256 of the ordered names joined by newlines (the manifest's ``files_sha256``)."""
        return self.holdout.files_sha256


class GrowingSource:
    """Names added while the run goes; thread-safe.

    ``add(names)`` appends (in run order), ``close()`` says no more will come. ``take`` blocks
    up to its timeout for the first name. Names are kept only until taken, so memory holds the
    backlog, not the whole run.

    Args:
      root: the folder the names are relative to (workers open ``root / name``).
      total: how many images will come in all, when known in advance (else None).
    """

    def __init__(self, root: str | Path, total: int | None = None) -> None:
        self.root = Path(root)
        self.total = total
        self._pending: deque[str] = deque()
        self._closed = False
        self._added = 0
        self._hash = hashlib.sha256()
        self._cond = threading.Condition()

    def add(self, names: Iterable[str]) -> None:
        """Append names (relative to ``root``), in run order.

        Raises:
          ValueError: the source was closed, or more than ``total`` names were added.
        """
        names = [str(n) for n in names]
        with self._cond:
            if self._closed:
                raise ValueError("GrowingSource: add() after close()")
            if self.total is not None and self._added + len(names) > self.total:
                raise ValueError(f"GrowingSource: more than total={self.total} names added")
            for name in names:
                self._hash.update(("\n" if self._added else "").encode() + name.encode("utf-8"))
                self._added += 1
            self._pending.extend(names)
            self._cond.notify_all()

    def close(self) -> None:
        """No more names will be added; the run ends once the backlog is answered."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()

    @property
    def added(self) -> int:
        """Names added so far."""
        return self._added

    def take(self, n: int, timeout_s: float = 0.0) -> list[str]:
        deadline = time.monotonic() + max(0.0, timeout_s)
        with self._cond:
            while not self._pending and not self._closed:
                left = deadline - time.monotonic()
                if left <= 0:
                    return []
                self._cond.wait(left)
            k = min(max(0, n), len(self._pending))
            return [self._pending.popleft() for _ in range(k)]

    def exhausted(self) -> bool:
        with self._cond:
            return self._closed and not self._pending

    def files_sha256(self) -> str:
        """sha256 of the names added so far, joined by newlines in run order (as a folder's)."""
        with self._cond:
            return self._hash.hexdigest()


__all__ = ["FolderSource", "GrowingSource", "ImageSource", "NameList"]
