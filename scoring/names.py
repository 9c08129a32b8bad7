"""The one rule for matching an image's name to a ground-truth row (standard library only).

Used by the scorer, ``lpirc run``'s pre-run coverage note, ``lpirc submission check`` and
``lpirc holdout make --ground-truth``, so they always agree on which answer is whose.

A name (``n01440764/ILSVRC2012_val_00000293.JPEG``) matches a ground-truth name by the first of
these rules that gives an answer:

  1. ``exact``      the same string;
  2. ``nfc``        the same after Unicode NFC normalisation (macOS zips leave ``café`` in NFD)
                    and with ``\\`` read as ``/``;
  3. ``bare name``  the same file name without its folders (``x/a.JPEG`` ~ ``a.JPEG``);
  4. ``stem``       the same file name without its extension (``a.JPEG`` ~ ``a``);
  5. ``case``       the same stem ignoring case (``HUSKY.JPG`` ~ ``husky.jpg``).

A rule from 3 on that would pick between several ground-truth rows (two folders hold ``a.JPEG``)
matches nothing: the name is *ambiguous*, and counts as not in the ground truth.
"""

from __future__ import annotations

import posixpath
import unicodedata
from collections.abc import Iterable

RULES = ("exact", "nfc", "bare name", "stem", "case")
AMBIGUOUS = "ambiguous"
_CLASH = -2


def shown(name: str) -> str:
    """``name`` as a message shows it: escaped (``cafe\\u0301.JPEG``) when it is not in Unicode
    NFC, so it does not look the same as its NFC twin (a macOS zip's NFD ``café``)."""
    return name if unicodedata.is_normalized("NFC", name) else ascii(name)[1:-1]


def _nfc(name: str) -> str:
    return unicodedata.normalize("NFC", name.replace("\\", "/"))


def _bare(name: str) -> str:
    return posixpath.basename(_nfc(name))


def _stem(name: str) -> str:
    base = _bare(name)
    dot = base.rfind(".")
    return base[:dot] if dot > 0 else base


def _case(name: str) -> str:
    return _stem(name).casefold()


_KEYS = {"nfc": _nfc, "bare name": _bare, "stem": _stem, "case": _case}


class NameIndex:
    """Ground-truth names, looked up by :data:`RULES` in order.

    ``lookup(name)`` gives ``(position, rule)``: the position of the matching ground-truth name
    (in the order given) and the rule that matched, or ``(-1, "ambiguous")`` / ``(-1, None)``.
    The loose indexes are built on first use, so a run whose names all match exactly pays for
    one dict only."""

    def __init__(self, names: Iterable[str]) -> None:
        self.names = list(names)
        self._exact = {n: i for i, n in enumerate(self.names)}
        self._loose: dict[str, dict[str, int]] = {}

    def _index(self, rule: str) -> dict[str, int]:
        idx = self._loose.get(rule)
        if idx is None:
            key = _KEYS[rule]
            idx = {}
            for i, n in enumerate(self.names):
                k = key(n)
                idx[k] = _CLASH if k in idx and idx[k] != i else i
            self._loose[rule] = idx
        return idx

    def exact(self, name: str) -> int:
        """Position of ``name`` by rule 1 alone (-1 if absent): the fast path for a whole log."""
        return self._exact.get(name, -1)

    def lookup(self, name: str) -> tuple[int, str | None]:
        """(position, rule) of the ground-truth name ``name`` matches; (-1, "ambiguous") when a
        rule would pick between several; (-1, None) when none matches."""
        i = self._exact.get(name)
        if i is not None:
            return i, "exact"
        for rule in RULES[1:]:
            i = self._index(rule).get(_KEYS[rule](name))
            if i == _CLASH:
                return -1, AMBIGUOUS
            if i is not None:
                return i, rule
        return -1, None

    def match_all(self, names: Iterable[str]) -> tuple[list[int], dict[str, int]]:
        """Positions (-1: no match) for every name, and how many matched by each rule
        (``"ambiguous"`` and ``"none"`` counted too)."""
        out: list[int] = []
        how: dict[str, int] = {}
        for n in names:
            i, rule = self.lookup(n)
            out.append(i)
            r = rule or "none"
            how[r] = how.get(r, 0) + 1
        return out, how


def label_images(truth: dict, images: Iterable[str]) -> dict:
    """image name -> label, for the ``images`` that match a name of ``truth`` (name -> label)
    by :data:`RULES` (ambiguous and unmatched images left out)."""
    index = NameIndex(truth)
    labels = list(truth.values())
    out = {}
    for img in images:
        i, _ = index.lookup(img)
        if i >= 0:
            out[img] = labels[i]
    return out


def describe_loose(how: dict[str, int]) -> str | None:
    """``3 names matched loosely (2 by bare name, 1 by case)``, or None when every match was
    exact: said in notes so a silent rename is visible."""
    loose = {r: how[r] for r in RULES[1:] if how.get(r)}
    if not loose:
        return None
    n = sum(loose.values())
    parts = ", ".join(f"{c} by {r}" for r, c in loose.items())
    return f"{n} name{'s' if n != 1 else ''} matched the ground truth loosely ({parts})"


__all__ = ["AMBIGUOUS", "NameIndex", "RULES", "describe_loose", "label_images", "shown"]
