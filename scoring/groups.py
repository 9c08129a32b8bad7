"""Which scores may be ranked together: the one rule ``lpirc score`` and the standings
(``lpirc leaderboard``, the referee's and the fleet's) share.

Two scores are ranked together only when they were computed

* under one rule set with the same parameters (:func:`scoring.rule_params`: a 4 s budget is
  not ranked against 600 s);
* against the same ground truth, by content (:func:`file_sha256` of the CSV's bytes: the same
  labels copied elsewhere are the same ground truth; another file, or the same path edited, is
  not);
* on the same holdout, by content: :func:`holdout_id` is the sha256 of the image names in sorted
  order (``holdout.names_sha256`` in a manifest), so the same holdout run with another
  ``--seed`` (another order) is the same holdout; manifests written before that field existed
  fall back to ``files_sha256`` (the ordered list).

LPIRC ranked entries of one track on one holdout under one budget; before this rule, ``lpirc
score`` grouped by the ground truth's path and the standings by the ordered file list, so each
did the opposite of the other for a copied ground truth and for another ``--seed``.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any, Mapping, Sequence

from scoring.rules import rule_params

UNKNOWN = "?"  # a component that is not known: such scores group only with each other


def file_sha256(path) -> str | None:
    """sha256 (hex) of a file's bytes; None when it cannot be read."""
    try:
        with open(path, "rb") as f:
            return hashlib.file_digest(f, "sha256").hexdigest()
    except (OSError, TypeError, ValueError):
        return None


def names_sha256(names: Sequence[str]) -> str:
    """sha256 (hex) of image names in sorted order joined by newlines: a holdout's identity that
    does not depend on its run order."""
    return hashlib.sha256("\n".join(sorted(names)).encode("utf-8")).hexdigest()


def holdout_id(holdout: Mapping[str, Any] | None) -> str | None:
    """The holdout's identity from a manifest's ``holdout`` object: ``names_sha256``, else (an
    older manifest) ``files_sha256``; None when neither is there (a bare log)."""
    h = holdout if isinstance(holdout, Mapping) else {}
    for key in ("names_sha256", "files_sha256"):
        if isinstance(h.get(key), str) and h[key]:
            return h[key]
    return None


def comparable_key(rules: str | None, params: Sequence[tuple[str, float]],
                   ground_truth_sha256: str | None, holdout: str | None) -> tuple:
    """The grouping key: scores with equal keys are ranked together, others apart.

    Args:
      rules: the rule set's name. params: its parameters, as :func:`scoring.rule_params` gives
        them. ground_truth_sha256: :func:`file_sha256` of the ground-truth CSV. holdout:
        :func:`holdout_id`. An unknown component (None) is written ``?``.
    """
    return (rules or UNKNOWN, tuple(params), ground_truth_sha256 or UNKNOWN, holdout or UNKNOWN)


def comparable(score: Mapping[str, Any]) -> tuple:
    """:func:`comparable_key` of a score object (``scoring.score_path``'s)."""
    return comparable_key(score.get("rules"), rule_params(score), score.get("ground_truth_sha256"),
                          score.get("holdout_id"))


def describe(key: tuple) -> str:
    """A group's key for people: ``rules; params; ground truth sha256[:12]; holdout[:12]``."""
    rules, params, gt, hold = key
    p = ", ".join(f"{k} {v:g}" for k, v in params)
    return (f"{rules}" + (f" ({p})" if p else "") + f"; ground truth {gt[:12]}"
            f"; holdout {hold[:12]}")


__all__ = ["UNKNOWN", "comparable", "comparable_key", "describe", "file_sha256", "holdout_id",
           "names_sha256"]
