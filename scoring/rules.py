"""The LPIRC rule sets. Each rule is a small function of an :class:`Evaluation`; its docstring
gives the formula and the source. All of them return the accuracies they count (``top1``,
``top5``, fractions of *all* ground-truth images), the ranking ``score`` (higher is better; None
when it cannot be computed) and their own fields.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping

import numpy as np

#: the rule set a score is computed under unless one is named (LPIRC on-site, 2015-2019), and
#: its wall budget in seconds: the defaults of lpirc run, score, tune, referee and fleet.
DEFAULT_RULES = "lpirc-onsite"
DEFAULT_TIME_LIMIT_S = 600.0
DEFAULT_MS_PER_IMAGE = 30.0
# LPCVC 2020 referee: idle energy 0.000544746733 Wh per second of run time = 1.961 W.
DEFAULT_IDLE_WATTS = 0.000544746733 * 3600.0
# OVIC 2019 frontier a(t) = k ln(t_ms) + a0, accuracy in percent. The organisers published the
# reference models that define the 2019 frontier (quantized MobileNetV2 and float MnasNet, top-1
# and Pixel 2 big-core latency, measured on the competition server on 2019-10-17, in the OVIC
# benchmarker README of TensorFlow Lite, tensorflow/lite/java/ovic) but not, that we could find,
# their fitted k and a0. The defaults are our least-squares fit of k ln(t) + a0 to the 15
# Pareto-optimal models of that table (largest residual 6 points, at 4 ms). Pass --k / --a0 to
# use other values.
DEFAULT_K = 9.163
DEFAULT_A0 = 35.279
OVIC_2019_BUCKETS = (("real-time", 24.0, 36.0), ("interactive", 80.0, 120.0))


@dataclass(frozen=True)
class Evaluation:
    """What a rule sees: one row per counted answer (in the ground truth, first answer per image,
    file order), plus run-level figures. Times are nan where the log did not record them."""

    images_total: int
    labels: np.ndarray  # (m,) true class of each answered image
    top5: np.ndarray  # (m, 5) predicted classes, best first, padded with -2
    error: np.ndarray  # (m,) bool: the answer is an error
    t_s: np.ndarray  # (m,) seconds since the run clock started
    inference_ms: np.ndarray  # (m,)
    latency_ms: np.ndarray  # (m,)
    late_flag: np.ndarray  # (m,) bool: lpirc run logged it after the run's own deadline
    wall_time_s: float | None
    inference_time_s: float | None
    energy_wh: float | None
    manifest: dict
    warnings: list[str] = field(default_factory=list)
    #: bound on the error of ``energy_wh`` (the meter's accuracy spec integrated over the run,
    #: manifest ``energy.uncertainty_wh``); None where the record has none (estimated, given)
    energy_uncertainty_wh: float | None = None
    #: bound on the error of a measured idle baseline in W (manifest ``energy.idle.uncertainty_w``),
    #: when the rule's idle power is that baseline; None otherwise
    idle_uncertainty_w: float | None = None

    @property
    def correct1(self) -> np.ndarray:
        return (self.top5[:, 0] == self.labels) & ~self.error

    @property
    def correct5(self) -> np.ndarray:
        return (self.top5 == self.labels[:, None]).any(axis=1) & ~self.error

    def budget(self, key: str):
        b = self.manifest.get("budget") if isinstance(self.manifest, dict) else None
        v = b.get(key) if isinstance(b, dict) else None
        ok = isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) and v >= 0
        return float(v) if ok else None

    def frac(self, mask: np.ndarray) -> float:
        return float(np.count_nonzero(mask)) / self.images_total if self.images_total else 0.0

    def counted(self, in_time: np.ndarray) -> dict:
        """top1/top5 over all N of the answers a rule counts (``in_time``), and how many answers
        it refused as late: the fields every rule set reports alike."""
        return {"top1": self.frac(self.correct1 & in_time),
                "top5": self.frac(self.correct5 & in_time),
                "images_late": int(np.count_nonzero(~in_time & ~self.error))}


@dataclass(frozen=True)
class Rule:
    name: str
    year: str
    description: str
    source: str
    function: Callable[..., dict]
    options: tuple[str, ...]

    def describe(self, values: dict | None = None) -> str:
        """The one-line description with the parameters a score used (its own fields), or the
        defaults: a 1 s run must not be described as having had 600 s."""
        v = dict(DESCRIBE_DEFAULTS)
        v.update({k: values[k] for k in DESCRIBE_DEFAULTS
                  if values and isinstance(values.get(k), (int, float))})
        return self.description.format(**v)


def energy_to_divide_by(ev: Evaluation, wh: float, uncertainty_wh: float | None,
                        what: str) -> bool:
    """The one rule for the energy a score is divided by (``lpirc-onsite``'s energy,
    ``lpcvc-2020``'s energy above idle): True when it can be used; else False, with the reason
    as one line in ``ev.warnings`` (score.json's ``warnings``, printed under the score by
    ``lpirc score``, ``lpirc run``'s summary and ``lpirc report``), and the rule gives no score.

    Refused when ``wh`` (Wh) is not positive, or is not larger than ``uncertainty_wh`` (Wh, the
    bound on its error, where the energy record has one): the meter cannot then tell it from 0,
    and accuracy divided by it is noise, however large (50 W idle and 50 W running for under a second
    leaves 7.8e-7 Wh against the meter's +-2.5e-5 Wh, a "score" of 1.2e6). ``what`` names the
    figure in the line ("energy", "energy above idle")."""
    if not wh > 0:
        ev.warnings.append(f"{what} is {wh:.6g} Wh (not positive): no score")
        return False
    if uncertainty_wh is not None and wh <= uncertainty_wh:
        ev.warnings.append(f"{what} is {wh:.3g} Wh, not larger than its uncertainty "
                           f"+-{uncertainty_wh:.3g} Wh (meter spec): no score (measure a longer "
                           "run, or on a finer range)")
        return False
    return True


def lpirc_onsite(ev: Evaluation, time_limit_s: float | None = None) -> dict:
    """LPIRC on-site tracks, 2015-2019.

    Formula: accuracy = (correct top-1 answers received within the wall budget) / (all holdout
    images); unanswered, failed and late answers (t_s > time_limit_s) are wrong.
    score = accuracy / energy_Wh.
    time_limit_s defaults to the run's budget in the manifest, else 600 s; with neither (a bare
    log), an answer the run itself logged ``"late": true`` is late too, since its own budget is
    then known only through those flags.
    Source: IEEE LPIRC on-site track rules 2015-2019 (10 minutes per submission, score =
    accuracy / energy in watt-hours measured by the referee's power meter).
    """
    given = time_limit_s if time_limit_s is not None else ev.budget("time_limit_s")
    limit = given if given is not None else DEFAULT_TIME_LIMIT_S
    late = past_time_limit(ev.t_s, limit)  # nan (unknown) compares False: counted
    if given is None:
        late = late | ev.late_flag
    acc = ev.counted(~late)
    top1 = acc["top1"]
    score = None
    if ev.energy_wh is not None and energy_to_divide_by(ev, ev.energy_wh,
                                                        ev.energy_uncertainty_wh, "energy"):
        score = top1 / ev.energy_wh
    return {
        **acc,
        "score": score,
        "time_limit_s": float(limit),
        "accuracy_per_wh": score,
    }


def past_time_limit(t_s, time_limit_s: float):
    """True where an answer logged at ``t_s`` (s on the run's clock, as logged) is past the
    on-site wall budget: ``t_s > time_limit_s``. A float or an array (same shape back); nan
    (unknown) compares False, so an answer of unknown time is counted. The run flags an
    answer ``late`` by this same rule on the ``t_s`` it logs. Source: IEEE LPIRC on-site
    rules (10 minutes per submission)."""
    return t_s > time_limit_s


def inference_budget_ms(ms_per_image: float, images: int) -> float:
    """The Track-1 (OVIC 2018) budget of summed inference time, in ms: ``ms_per_image`` x
    ``images`` (the holdout's N). One expression for the scorer and for ``lpirc run``'s clock,
    so that both reach the same float. Source: OVIC 2018 rules (LPIRC 2018 Track 1)."""
    return float(ms_per_image) * images


def within_inference_budget(summed_ms, budget_ms: float):
    """True where an answer counts under the Track-1 rule: the running sum of ``inference_ms``
    (in ms, summed in answer order, float64, one image after another as ``np.cumsum`` does) up
    to and including this answer is at most ``budget_ms``. A float or an array of them (same
    shape back). The run flags an answer ``late`` exactly where this is False, so its log and
    the score agree to the last image (both add the same ms values in the same order)."""
    return summed_ms <= budget_ms


def ovic_2018(ev: Evaluation, ms_per_image: float | None = None) -> dict:
    """OVIC 2018 (LPIRC 2018 Track 1, Pixel 2): accuracy within a budget of summed inference time.

    Formula: budget_ms = ms_per_image x N (N = holdout images; ms_per_image default 30).
    Answers are taken in t_s order, summing inference_ms; an answer whose running sum exceeds
    budget_ms is not counted, nor one lpirc run logged ``"late": true`` (past its wall safety
    net or a referee session's end; under its inference clock it flags exactly the answers
    this rule refuses).  accuracy = correct within budget / N (the score);
    accuracy_classified = correct within budget / images classified within budget;
    accuracy_per_s = accuracy_classified / max(budget_s, runtime_s), runtime_s = all inference time.
    Source: On-Device Visual Intelligence Challenge, CVPR 2018 (LPIRC 2018 Track 1) rules.
    """
    mpi = ms_per_image if ms_per_image is not None else ev.budget("ms_per_image") or DEFAULT_MS_PER_IMAGE
    budget_ms = inference_budget_ms(mpi, ev.images_total)
    inf = ev.inference_ms
    timed = bool(inf.size) and not np.isnan(inf).all()
    if inf.size and not timed:
        ev.warnings.append("no inference_ms in the log: the inference budget is not checked")
    order = np.argsort(ev.t_s, kind="stable")  # nan (unknown) last, file order kept
    cum = np.cumsum(np.nan_to_num(inf[order], nan=0.0))
    counted = np.empty(len(order), dtype=bool)
    counted[order] = within_inference_budget(cum, budget_ms)
    counted &= ~ev.late_flag
    classified = counted & ~ev.error
    n_classified = int(np.count_nonzero(classified))
    correct = ev.correct1 & counted
    acc_classified = float(np.count_nonzero(correct)) / n_classified if n_classified else 0.0
    # unknown (no inference_ms at all) is not 0 s: max(budget, runtime) is then unknown too
    runtime_s = (float(cum[-1]) / 1000.0 if cum.size else 0.0) if timed or not inf.size else None
    budget_s = budget_ms / 1000.0
    per_s_div = None if runtime_s is None else max(budget_s, runtime_s)
    acc = ev.counted(counted)
    return {
        **acc,
        "score": acc["top1"],
        "ms_per_image": float(mpi),
        "budget_s": budget_s,
        "runtime_s": runtime_s,
        "images_classified": n_classified,
        "accuracy_classified": acc_classified,
        "accuracy_per_s": acc_classified / per_s_div if per_s_div else None,
    }


def ovic_2019(ev: Evaluation, k: float | None = None, a0: float | None = None) -> dict:
    """OVIC 2019 (LPIRC-II, 2019 online track): gain over the empirical Pareto frontier.

    Formula: metric = 100 x accuracy - (k ln(latency_ms) + a0), in percentage points, where
    accuracy = correct top-1 / N (answers lpirc run logged after its deadline, "late": true, are
    wrong) and latency_ms = mean inference_ms of the answered images (else mean latency_ms, else
    inference_time_s / answers).  The latency bucket is "real-time" for
    [24, 36] ms, "interactive" for [80, 120] ms, none otherwise (not ranked in 2019).
    Defaults k = 9.163, a0 = 35.279: our fit to the organisers' 2019 reference models (see
    DEFAULT_K), not coefficients they published.
    Source: OVIC 2019 rules (frontier a(t) = k log(t) + a0, t = average latency in ms).
    """
    kk = DEFAULT_K if k is None else float(k)
    aa = DEFAULT_A0 if a0 is None else float(a0)
    ok = ~ev.error
    latency = None
    for arr in (ev.inference_ms, ev.latency_ms):
        vals = arr[ok & ~np.isnan(arr)]
        if vals.size:
            latency = float(vals.mean())
            break
    n_ok = int(np.count_nonzero(ok))
    if latency is None and ev.inference_time_s and n_ok:
        latency = ev.inference_time_s * 1000.0 / n_ok
    acc = ev.counted(~ev.late_flag)
    top1 = acc["top1"]
    metric = bucket = None
    if latency is None or latency <= 0:
        ev.warnings.append("no latency in the log or manifest: no OVIC 2019 metric")
    else:
        metric = 100.0 * top1 - (kk * math.log(latency) + aa)
        for name, lo, hi in OVIC_2019_BUCKETS:
            if lo <= latency <= hi:
                bucket = f"{name} [{lo:g}, {hi:g}] ms"
        if bucket is None:
            ev.warnings.append(f"mean latency {latency:.1f} ms is in no OVIC 2019 bucket ([24, 36] or [80, 120] ms)")
    return {
        **acc,
        "score": metric,
        "latency_ms": latency,
        "latency_bucket": bucket,
        "frontier_k": kk,
        "frontier_a0": aa,
        "frontier_accuracy_pct": None if metric is None else kk * math.log(latency) + aa,
        "gain_pct_points": metric,
    }


def lpcvc_2020(ev: Evaluation, idle_watts: float | None = None) -> dict:
    """LPCVC 2020: accuracy per watt-hour above idle.

    Formula: score = accuracy / (energy_Wh - idle_watts x duration_h), accuracy = correct top-1 / N
    (answers lpirc run logged after its deadline, "late": true, are wrong), duration_h =
    wall_time_s / 3600; idle_watts default 1.961 W (the 2020 referee subtracted
    0.000544746733 Wh per second).  No score when the net energy is not positive, or not larger
    than its uncertainty (:func:`energy_to_divide_by`): net_energy_uncertainty_wh = the
    energy's uncertainty + the measured idle baseline's x duration_h, bounds added (both come
    from the same meter, so their errors need not be independent); None when neither figure
    has one (an estimate, a given energy, a given --idle-watts).
    Source: IEEE LPCVC 2020 referee scoring script.
    """
    idle = DEFAULT_IDLE_WATTS if idle_watts is None else float(idle_watts)
    acc = ev.counted(~ev.late_flag)
    top1 = acc["top1"]
    net = score = unc = None
    if ev.energy_wh is not None and ev.wall_time_s is not None:
        net = ev.energy_wh - idle * ev.wall_time_s / 3600.0
        parts = [u for u in (ev.energy_uncertainty_wh, None if ev.idle_uncertainty_w is None
                             else ev.idle_uncertainty_w * ev.wall_time_s / 3600.0) if u is not None]
        unc = sum(parts) if parts else None
        if energy_to_divide_by(ev, net, unc, "energy above idle"):
            score = top1 / net
    elif ev.energy_wh is not None:
        ev.warnings.append("no wall time for the run: cannot subtract idle energy, no score")
    return {
        **acc,
        "score": score,
        "idle_watts": idle,
        "net_energy_wh": net,
        "net_energy_uncertainty_wh": unc,
    }


DESCRIBE_DEFAULTS = {"time_limit_s": DEFAULT_TIME_LIMIT_S, "ms_per_image": DEFAULT_MS_PER_IMAGE,
                     "idle_watts": DEFAULT_IDLE_WATTS}

RULES: dict[str, Rule] = {
    r.name: r
    for r in (
        Rule("lpirc-onsite", "2015-2019", "accuracy within the wall budget ({time_limit_s:g} s) / energy in Wh",
             "IEEE LPIRC on-site tracks 2015-2019", lpirc_onsite, ("time_limit_s", "energy_wh")),
        Rule("ovic-2018", "2018", "accuracy within {ms_per_image:g} ms x N of summed inference time (Pixel 2 track)",
             "OVIC / LPIRC 2018 Track 1", ovic_2018, ("ms_per_image",)),
        Rule("ovic-2019", "2019", "accuracy gain over the Pareto frontier k ln(latency_ms) + a0",
             "OVIC 2019 / LPIRC-II online track", ovic_2019, ("k", "a0")),
        Rule("lpcvc-2020", "2020", "accuracy / (energy Wh - idle {idle_watts:.4g} W x duration)",
             "IEEE LPCVC 2020 referee", lpcvc_2020, ("idle_watts", "energy_wh")),
    )
}
ALL_OPTIONS = ("time_limit_s", "ms_per_image", "idle_watts", "k", "a0", "energy_wh")

# The parameters of a rule set that decide what its score means (its budget, its frontier, its
# idle power), by the names its score fields carry: scores made with different values are
# never ranked together (lpirc leaderboard, lpirc report's comparison).
RULE_PARAMS = ("time_limit_s", "ms_per_image", "frontier_k", "frontier_a0", "idle_watts")


def rule_params(fields: Mapping[str, Any] | None) -> tuple[tuple[str, float], ...]:
    """The :data:`RULE_PARAMS` in a score's fields (a ``score.json`` object, or the rule set's
    own fields stored with a leaderboard entry), as ``(name, value)`` pairs in
    :data:`RULE_PARAMS` order: hashable, a grouping key.

    Args:
        fields: a score object or a subset of it; None or a non-mapping gives ().
    Returns:
        e.g. ``(("time_limit_s", 600.0),)`` for an lpirc-onsite score.
    """
    f = fields if isinstance(fields, Mapping) else {}
    return tuple((k, float(f[k])) for k in RULE_PARAMS
                 if isinstance(f.get(k), (int, float)) and not isinstance(f.get(k), bool))
