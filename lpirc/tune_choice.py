"""The choice of ``lpirc tune``'s winner: a pure function of what the search measured.

The search (:mod:`lpirc.tune`) ends with the fastest eligible setting of its table (the
*challenger*) and the interleaved best-vs-defaults pairs of its last stage (A B A B ..., each
:class:`Pair` two adjacent trials that shared the machine's load). :func:`choose_winner` decides
from those alone, without running anything:

* On a quiet machine (the typical trial's foreign load <= :data:`~lpirc.tune_data.NOISY_LOAD`)
  the challenger wins unless the median per-pair ratio says the defaults are faster (< 1).
* On a busy machine the table's rates are corrected for other processes' load, a first-order
  model that flatters some settings (one core of two taken by a ``while True: pass``: the tune
  chose 1 worker x 2 threads, 6.7 % slower than the defaults when measured after). There the
  defaults are kept unless the challenger beats them in *every* counted interleaved pair, of at
  least two, by at least ``margin`` (0.10: 10 % faster), and the decision is said in one line.

Pairs counted: those where neither trial met other processes' load above ``NOISY_LOAD`` when
there are any; else those under ``MAX_LOAD``; else all (a burst of other work during one trial
of two pairs once moved the median from 1.02 to 1.47).
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass
from typing import Sequence

from lpirc.tune_data import MAX_LOAD, NOISY_LOAD, Candidate

#: On a busy machine the challenger must beat the defaults by this fraction in every pair...
BUSY_MARGIN = 0.10
#: ... of at least this many counted pairs (one pair under a hog is one coin toss).
BUSY_MIN_PAIRS = 2


@dataclass(frozen=True)
class Pair:
    """One interleaved A/B pair: the challenger's trial, then the defaults'.

    Rates are steady-state images/s as measured; ``*_adjusted`` divided by (1 - the foreign
    load of that trial); ``load`` the larger foreign load (share of all CPUs, 0..1) of the two.
    """

    best_rate: float
    default_rate: float
    best_adjusted: float
    default_adjusted: float
    load: float

    @property
    def ratio(self) -> float:
        """Challenger / defaults images/s, raw: both trials shared the machine's load."""
        return self.best_rate / self.default_rate

    @property
    def corrected(self) -> float:
        return self.best_adjusted / self.default_adjusted


@dataclass(frozen=True)
class Decision:
    """What :func:`choose_winner` decided.

    best: the settings written to best.json. challenger: the fastest setting of the table when
    it was measured and not chosen (else None). ratio: median of the counted pairs' ratios
    (1.0 when the challenger is the defaults and a comparison was asked; None when there was
    no pair). counted: the counted ratios. busy: the machine was busy. note: the one line that
    says what was decided and why (None when there is nothing to say).
    """

    best: Candidate
    challenger: Candidate | None
    ratio: float | None
    counted: tuple[float, ...]
    busy: bool
    note: str | None


def counted_ratios(pairs: Sequence[Pair]) -> tuple[float, ...]:
    """The ratios of the pairs that count (quiet ones, else moderate, else all)."""
    return tuple([p.ratio for p in pairs if p.load <= NOISY_LOAD]
                 or [p.ratio for p in pairs if p.load <= MAX_LOAD]
                 or [p.ratio for p in pairs])


def choose_winner(challenger: Candidate, default: Candidate, pairs: Sequence[Pair], *,
                  load: float | None, compared: bool, margin: float = BUSY_MARGIN) -> Decision:
    """The tune's winner from its challenger, its defaults and its A/B pairs.

    Args:
      challenger: the fastest eligible setting of the table (may be ``default``).
      default: what ``lpirc run`` does without ``--config``.
      pairs: the interleaved A/B pairs, in the order they ran (empty: none was run).
      load: the typical (median) share of all CPUs other processes took during the trials,
        0..1, or None when unmeasured; above ``NOISY_LOAD`` the machine is busy.
      compared: whether a comparison was asked (``--compare-defaults``).
      margin: on a busy machine, the fraction by which the challenger must beat the defaults
        in every counted pair.
    Returns:
      :class:`Decision`.
    """
    counted = counted_ratios(pairs)
    ratio = statistics.median(counted) if counted else (
        1.0 if compared and challenger == default else None)
    busy = load is not None and load > NOISY_LOAD
    why = (f"busy machine (other processes took {load:.0%} of the CPUs in a typical trial): "
           if busy else "")
    if challenger == default:
        return Decision(default, None, ratio, counted, busy,
                        why + "the defaults are kept: they measured fastest" if busy else
                        "the best settings are the defaults" if compared else None)
    if not busy:
        if ratio is not None and ratio < 1.0:
            # the interleaved A/B is the most direct measurement there is: trust it
            return Decision(default, challenger, ratio, counted, busy,
                            f"{challenger.label} measured {ratio:.2f}x the defaults in the "
                            "interleaved comparison: the defaults are kept")
        return Decision(challenger, None, ratio, counted, busy,
                        None if counted or not compared
                        else "no time left to compare best with the defaults")
    need = f"every interleaved pair at least {1 + margin:.2f}x, {BUSY_MIN_PAIRS} pairs or more"
    if len(counted) >= BUSY_MIN_PAIRS and min(counted) >= 1.0 + margin:
        return Decision(challenger, None, ratio, counted, busy,
                        why + f"{challenger.label} chosen, it beat the defaults in {need} "
                        f"(median {ratio:.2f}x, pairs {_list(counted)})")
    if counted:
        seen = f"it measured {ratio:.2f}x them (pairs {_list(counted)})"
    else:
        seen = ("no interleaved pair was measured"
                + (" (--no-compare-defaults)" if not compared else " (no time left)"))
    return Decision(default, challenger, ratio, counted, busy,
                    why + f"the defaults are kept; {challenger.label} needed {need}, {seen}")


def _list(xs: Sequence[float]) -> str:
    return ", ".join(f"{x:.2f}" for x in xs)


__all__ = ["BUSY_MARGIN", "Decision", "Pair", "choose_winner", "counted_ratios"]
