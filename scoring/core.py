"""score_path: one result log + one ground truth + one rule set -> the score.json object."""

from __future__ import annotations

import math
from collections import Counter
from pathlib import Path

import numpy as np

from scoring._io import (ONE_BASED, Log, ScoringError, ground_truth_notes, read_ground_truth,
                         read_label_names, read_log, read_manifest, synsets, top_scores)
from scoring.names import AMBIGUOUS, NameIndex, describe_loose, shown
from scoring.groups import file_sha256, holdout_id
from scoring.rules import ALL_OPTIONS, DEFAULT_RULES, RULES, Evaluation

_MAX_NAMED = 5  # names listed in one warning


def _few(names) -> str:
    names = list(names)
    more = f" and {len(names) - _MAX_NAMED} more" if len(names) > _MAX_NAMED else ""
    return ", ".join(shown(n) for n in names[:_MAX_NAMED]) + more


def _fnum(v):
    if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v):
        return float(v)
    return None


def _locate(path) -> tuple[Path, Path | None]:
    """(result log, manifest or None) for a run folder or a bare log file."""
    p = Path(path)
    if p.is_dir():
        log = p / "results.jsonl"
        if not log.is_file():
            raise ScoringError(f"{p}: no results.jsonl in this folder (not a run folder?)")
        man = p / "manifest.json"
        return log, (man if man.is_file() else None)
    if not p.exists():
        raise ScoringError(f"{p}: no such file or folder")
    return p, None


#: "Near 0": top-5 at most this on at least _MIN_CONFIDENT answers whose median best score is
#: at least _CONFIDENT (a softmax): a model that sure of itself is not that wrong by chance
#: (chance top-5 is 0.5 %); the labels are in another order.
_NEAR_ZERO_TOP5 = 0.02
_CONFIDENT = 0.5
_MIN_CONFIDENT = 3


def _confident_but_wrong(ev: Evaluation, log) -> str | None:
    """A warning when the answers are confident yet top-5 is near 0, else None."""
    ok = ~ev.error
    n = int(np.count_nonzero(ok))
    if n < _MIN_CONFIDENT or log.format != "results.jsonl":
        return None
    hits = (ev.top5[ok] == ev.labels[ok][:, None]).any(axis=1)
    top5 = float(np.count_nonzero(hits)) / n
    if top5 > _NEAR_ZERO_TOP5:
        return None
    best = top_scores(log.path)
    if best.size < _MIN_CONFIDENT or best.min() < 0 or best.max() > 1 + 1e-6:
        return None  # no scores, or logits: confidence cannot be told
    med = float(np.median(best))
    if med < _CONFIDENT:
        return None
    return (f"top-5 is {top5:.1%} on {n} answers whose median best score is {med:.2f} "
            "(measured): confident answers this wrong suggest labels in another order (the "
            "devkit's 1-based ILSVRC2012_IDs?); lpirc's class k is the k-th synset in sorted "
            "order, 0-based")


def revise_label_notes(notes, labels, top5) -> list[str]:
    """The ground truth's notes (:func:`scoring.ground_truth_notes`) in the light of answers.

    A note that numeric labels never use 0 is dropped when the answers agree with the labels
    as given: top-5 above near-zero (_NEAR_ZERO_TOP5; chance is 0.5 %) and top-1 no lower than
    with every label minus 1 (a 0-based subset that lacks class 0). When top-1 is higher with
    label - 1 (labels shifted by one, e.g. a 1001-class model's indices), the note gives that
    figure. Devkit IDs, in another order, fit neither way: the note stays as it is.

    Args:
      notes: the ground truth's notes (one line each).
      labels: (n,) int class index of each answered image.
      top5: (n, 5) int answers of those images, in the same order.
    Returns:
      The notes to show, in order.
    """
    labels = np.asarray(labels, dtype=np.int64).reshape(-1)
    n = len(labels)
    if n < _MIN_CONFIDENT or not notes:
        return list(notes)
    top5 = np.asarray(top5, dtype=np.int64).reshape(n, -1)
    top1_as_given = int(np.count_nonzero(top5[:, 0] == labels))
    top1_shifted = int(np.count_nonzero(top5[:, 0] == labels - 1))
    top5_as_given = np.count_nonzero((top5 == labels[:, None]).any(axis=1)) / n
    out = []
    for note in notes:
        if ONE_BASED in note:
            if top5_as_given > _NEAR_ZERO_TOP5 and top1_as_given >= top1_shifted:
                continue  # the answers say these are lpirc's 0-based indices
            if top1_shifted > top1_as_given:
                note += (f" (measured: top-1 would be {top1_shifted / n:.1%} with every label "
                         f"minus 1, against {top1_as_given / n:.1%} as given)")
        out.append(note)
    return out


def _resolve_gt(value, run_dir: Path) -> Path:
    g = Path(value)
    if not g.is_absolute() and not g.exists() and (run_dir / g).exists():
        g = run_dir / g
    return g


def match_positions(images: list[str], gt_names: list[str]) -> tuple[np.ndarray, dict[str, int], list[str]]:
    """Which ground-truth row each answer is for, by the one matching rule of scoring.names.

    Args:
        images: the log's image names, in log order (n).
        gt_names: the ground truth's file names, in its order.
    Returns:
        (pos, how, ambiguous): pos (n,) int64, the ground-truth row of each answer (exact name in
        one pass; the rest by NFC, bare name, stem, case), -1 when it names no row or several;
        how, the count of answers matched by each looser rule; ambiguous, the names that match
        several rows (matched to none).
    """
    names = NameIndex(gt_names)
    n = len(images)
    pos = np.fromiter((names.exact(img) for img in images), dtype=np.int64, count=n)
    how: dict[str, int] = {}
    ambiguous: list[str] = []
    for j in np.nonzero(pos < 0)[0]:
        i, by = names.lookup(images[j])
        pos[j] = i
        how[by or "none"] = how.get(by or "none", 0) + 1
        if by == AMBIGUOUS:
            ambiguous.append(images[j])
    return pos, how, ambiguous


def first_answers(pos: np.ndarray) -> np.ndarray:
    """Indices (ascending) of the answers that count: the first answer for each matched row."""
    idx = np.nonzero(pos >= 0)[0]
    _, first = np.unique(pos[idx], return_index=True)
    return np.sort(idx[first])


def match_answers(images: list[str], gt_names: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """Which ground-truth image each answer is for, and which answers count.

    Args:
        images: the log's image names, in log order (n).
        gt_names: the ground truth's file names, in its order.
    Returns:
        (pos, keep): pos (n,) int64 as :func:`match_positions`; keep, the indices of the answers
        that count (the first answer for each image), ascending.
    """
    pos, _, _ = match_positions(images, gt_names)
    return pos, first_answers(pos)


def score_path(path, ground_truth=None, rules: str = DEFAULT_RULES, *, per_class: bool = False,
               labels=None, log: Log | None = None, **rule_options) -> dict:
    """Score one run under one rule set; returns the score.json object.

    Args:
      path: a run folder (results.jsonl + manifest.json), a bare results.jsonl, or a referee
        result file.
      ground_truth: CSV path; None = the manifest's ``holdout.ground_truth``.
      rules: a rule set of :data:`scoring.RULES`.
      per_class: add ``per_class`` and ``confused``; labels names the classes (1000 or
        1001-line file).
      log: the path's log already read with :func:`read_log` (a caller that needs its columns
        too need not read it twice).
      rule_options: time_limit_s, ms_per_image, idle_watts, k, a0, energy_wh (None = default).
    Returns:
      the score.json object (every figure with its ``source``; ``warnings`` a list of lines).
    Raises:
      ScoringError: one line naming the file (or option) and the problem.
    """
    rule, opts, warnings = _rule_and_options(rules, rule_options)
    log_path, manifest = _read_run(path, warnings)
    gt_path = _ground_truth_path(path, ground_truth, manifest, log_path.parent)
    gt = read_ground_truth(gt_path)
    gt_notes_at = len(warnings)  # ground_truth_notes go here, once the answers have their say
    if log is None:
        log = read_log(log_path)
    warnings.extend(log.warnings)
    if not len(log):
        warnings.append(f"{log_path}: no answers in the log")
    gt_names = list(gt)
    gt_labels = np.fromiter(gt.values(), dtype=np.int64, count=len(gt))
    pos, keep, n_unknown, n_dup = _match(log, gt_names, warnings)
    times = _run_times(manifest, log)
    energy = _energy(manifest, opts, rule, log_path, warnings)
    ev = Evaluation(
        images_total=len(gt), labels=gt_labels[pos[keep]], top5=log.top5[keep],
        error=log.error[keep], t_s=log.t_s[keep], inference_ms=log.inference_ms[keep],
        latency_ms=log.latency_ms[keep], late_flag=log.late[keep], wall_time_s=times["wall"],
        inference_time_s=times["inference"], energy_wh=energy["wh"], manifest=manifest,
        warnings=warnings, energy_uncertainty_wh=energy["uncertainty_wh"],
        idle_uncertainty_w=energy["idle_uncertainty_w"])
    fields = rule.function(ev, **{k: v for k, v in opts.items()
                                  if k in rule.options and k != "energy_wh"})
    if log.format == "referee":  # one class per row: a top-5 would silently equal the top-1
        fields["top5"] = None
        warnings.append(f"{log_path}: referee format gives one class per image: no top-5")
    answered = ~ev.error
    warnings[gt_notes_at:gt_notes_at] = revise_label_notes(
        ground_truth_notes(gt_path), ev.labels[answered], ev.top5[answered])
    confident = _confident_but_wrong(ev, log)
    if confident:
        warnings.append(f"{gt_path}: {confident}")
    model = manifest.get("model") if isinstance(manifest.get("model"), dict) else {}
    out = _score_object(rule, path, log, gt_path, model, ev, fields, times, energy, n_unknown,
                        n_dup)
    out["options"] = {k: v for k, v in opts.items() if k in rule.options}
    out["source"] = _sources(out, times, energy)
    if per_class:
        names, names_from = _label_names(labels, model, warnings)
        out["label_names"] = names_from
        out.update(_per_class(ev, gt_labels, names))
    # what the score may be ranked with (scoring.groups): the ground truth and holdout by content
    out["ground_truth_sha256"] = file_sha256(gt_path)
    out["holdout_id"] = holdout_id(manifest.get("holdout"))
    out["warnings"] = warnings
    return {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in out.items()}


def _read_run(path, warnings: list[str]) -> tuple[Path, dict]:
    """The log's path and the run's manifest ({} when there is none), with a warning for a
    folder without a manifest and for a run that did not finish."""
    log_path, man_path = _locate(path)
    manifest = read_manifest(man_path) if man_path else {}
    if man_path is None and Path(path).is_dir():
        warnings.append(f"{Path(path)}: no manifest.json: no energy, times from the log")
    status = manifest.get("status")
    if status and status not in ("complete", "budget_exhausted"):
        warnings.append(f"{man_path}: run status is {status!r} (the log may be partial)")
    return log_path, manifest


def _sources(out: dict, times: dict, energy: dict) -> dict:
    """score.json's ``source``: how each figure of ``out`` was obtained."""
    return {
        "top1": "measured",
        "top5": "measured" if out["top5"] is not None else "unknown: one class per image in this log",
        "wall_time_s": times["wall_source"] if times["wall"] is not None else "unknown",
        "inference_time_s": (times["inference_source"] if times["inference"] is not None
                             else "unknown"),
        "energy_wh": energy["source"],
        "energy_method": energy["method"],
        **({"idle_watts": energy["idle_from"]} if energy["idle_from"] else {}),
    }


def _rule_and_options(rules: str, rule_options: dict):
    """(the Rule, its options given (None dropped), warnings so far); ScoringError for an
    unknown rule set or option, or an option that is not a finite number (>= 0 where a count
    of time or energy)."""
    rule = RULES.get(rules)
    if rule is None:
        raise ScoringError(f"unknown rule set {rules!r} (known: {', '.join(RULES)})")
    opts = {k: v for k, v in rule_options.items() if v is not None}
    unknown = sorted(set(opts) - set(ALL_OPTIONS))
    if unknown:
        raise ScoringError(f"unknown rule option(s) {', '.join(unknown)} (known: {', '.join(ALL_OPTIONS)})")
    warnings: list[str] = []
    for k in sorted(set(opts) - set(rule.options)):
        warnings.append(f"option {k} does not apply to rules {rule.name}; ignored")
    for k, v in opts.items():
        if not isinstance(v, (int, float)) or isinstance(v, bool) or not math.isfinite(v):
            raise ScoringError(f"option {k}={v!r}: expected a finite number")
        if k in ("time_limit_s", "ms_per_image", "energy_wh", "idle_watts") and v < 0:
            raise ScoringError(f"option {k}={v!r}: expected a number >= 0")
    return rule, opts, warnings


def _idle_baseline(manifest: dict, rule, opts: dict) -> str | None:
    """For a rule set that subtracts idle power, the idle baseline the run measured
    (manifest ``energy.idle.watts``, from ``lpirc run --idle-baseline/--idle-seconds``) unless
    an ``idle_watts`` option was given: put into ``opts``; returns where it came from."""
    if "idle_watts" not in rule.options or "idle_watts" in opts:
        return None
    energy = manifest.get("energy") if isinstance(manifest.get("energy"), dict) else {}
    idle = energy.get("idle") if isinstance(energy.get("idle"), dict) else {}
    w = _fnum(idle.get("watts"))
    if w is None or w < 0:
        return None
    opts["idle_watts"] = w
    return f"{idle.get('method') or 'measured'} ({idle.get('from') or 'the run manifest'})"


def _ground_truth_path(path, ground_truth, manifest: dict, run_dir: Path) -> Path:
    """The ground truth given, else the one the run's manifest names (relative to the run)."""
    if ground_truth is not None:
        return Path(ground_truth)
    hold = manifest.get("holdout") if isinstance(manifest.get("holdout"), dict) else {}
    if not hold.get("ground_truth"):
        raise ScoringError(f"{path}: no ground truth given (--ground-truth) and none named in the manifest")
    return _resolve_gt(hold["ground_truth"], run_dir)


def _match(log, gt_names: list[str], warnings: list[str]):
    """Match answers to the ground truth: exact names in one pass, the rest by the rules of
    scoring.names (NFC, bare name, stem, case; ambiguous names match nothing). Returns (pos,
    keep, answers not in the ground truth, duplicate answers); says what it did in
    ``warnings``."""
    pos, how, ambiguous = match_positions(log.images, gt_names)
    keep = first_answers(pos)
    loose = describe_loose(how)
    if loose:
        warnings.append(f"{log.path}: {loose}")
    if ambiguous:
        warnings.append(f"{log.path}: {len(ambiguous)} answer(s) whose names match several "
                        f"ground-truth rows, ignored: {_few(ambiguous)}")
    in_gt = pos >= 0
    n_unknown = int(np.count_nonzero(~in_gt))
    if n_unknown:
        names = [log.images[j] for j in np.nonzero(~in_gt)[0]]
        warnings.append(f"{log.path}: {n_unknown} answer(s) for images not in the ground truth, ignored: {_few(names)}")
    idx = np.nonzero(in_gt)[0]
    n_dup = len(idx) - len(keep)
    if n_dup:
        counts = Counter(pos[idx].tolist())
        dups = [gt_names[p] for p, c in counts.items() if c > 1]
        warnings.append(f"{log.path}: {n_dup} duplicate answer(s), the first one counts: {_few(dups)}")
    return pos, keep, n_unknown, n_dup


def _run_times(manifest: dict, log) -> dict:
    """Wall and inference time of the run and how each was obtained: the manifest's, else
    from the log (the last answer's ``t_s``; the sum of ``inference_ms``)."""
    wall = _fnum(manifest.get("wall_time_s"))
    wall_src = "measured by lpirc run"
    t_known = log.t_s[~np.isnan(log.t_s)]
    if wall is None and t_known.size:
        wall, wall_src = float(t_known.max()), "measured: last answer's t_s in the log"
    inf_time = _fnum(manifest.get("inference_time_s"))
    inf_src = "measured: summed model invoke time"
    inf_known = log.inference_ms[~np.isnan(log.inference_ms)]
    if inf_time is None and inf_known.size:
        inf_time, inf_src = float(inf_known.sum()) / 1000.0, "measured: sum of inference_ms in the log"
    return {"wall": wall, "wall_source": wall_src, "inference": inf_time,
            "inference_source": inf_src}


def _energy(manifest: dict, opts: dict, rule, log_path: Path, warnings: list[str]) -> dict:
    """The run's energy in Wh with its source (measured, estimated, given, unknown) and
    method: ``--energy-wh`` wins over the manifest's figure; and ``idle_from``, where an idle
    baseline the run measured came from (put into ``opts``, see :func:`_idle_baseline`)."""
    energy = manifest.get("energy") if isinstance(manifest.get("energy"), dict) else {}
    wh = _fnum(energy.get("wh"))
    source = energy.get("source") if wh is not None else None
    method = energy.get("method") if wh is not None else None
    if wh is not None and source not in ("measured", "estimated"):
        source = "unknown"
    unc = _fnum(energy.get("uncertainty_wh")) if source == "measured" else None
    if "energy_wh" in opts:
        wh, source, method, unc = float(opts["energy_wh"]), "given", "--energy-wh option", None
    if wh is None:
        source = "unknown"
        if "energy_wh" in rule.options:
            warnings.append(f"{log_path}: no energy figure (no manifest energy, no --energy-wh): no score")
    idle_from = _idle_baseline(manifest, rule, opts)
    idle = energy.get("idle") if isinstance(energy.get("idle"), dict) else {}
    idle_unc = _fnum(idle.get("uncertainty_w")) if idle_from else None
    return {"wh": wh, "source": source, "method": method, "idle_from": idle_from,
            "uncertainty_wh": None if unc is None or unc < 0 else unc,
            "idle_uncertainty_w": None if idle_unc is None or idle_unc < 0 else idle_unc}


def _score_object(rule, path, log, gt_path: Path, model: dict, ev: Evaluation, fields: dict,
                  times: dict, energy: dict, n_unknown: int, n_dup: int) -> dict:
    """The score.json object's figures (``fields``: what the rule set returned)."""
    answered = int(np.count_nonzero(~ev.error))
    failed = int(np.count_nonzero(ev.error))
    wall = times["wall"]
    out = {
        "rules": rule.name,
        "run": str(path),
        "log": str(log.path),
        "log_format": log.format,
        "model": Path(model["path"]).name if isinstance(model.get("path"), str) else None,
        "ground_truth": str(gt_path),
        "images_total": ev.images_total,
        "images_answered": answered,
        "images_failed": failed,
        "images_unanswered": ev.images_total - answered - failed,
        "images_late": fields.pop("images_late", 0),
        "answers_not_in_ground_truth": n_unknown,
        "answers_duplicate": n_dup,
        "top1": fields.pop("top1"),
        "top5": fields.pop("top5"),
        "wall_time_s": wall,
        "inference_time_s": times["inference"],
        "images_per_s": answered / wall if wall else None,
        "energy_wh": energy["wh"],
        "energy_source": energy["source"],
        "energy_method": energy["method"],
        "energy_uncertainty_wh": energy["uncertainty_wh"],
        "score": fields.pop("score"),
    }
    out.update(fields)
    return out


_LABEL_FILES = ("{stem}_labels.txt", "labels.txt", "imagenet_labels.txt")


def _label_names(labels, model: dict, warnings: list[str]) -> tuple[list[str] | None, str]:
    """(names, where they came from): --labels, else a labels file beside the run's model (as
    the TFLite model zoo ships them), else None (synset IDs)."""
    if labels:
        return read_label_names(labels), str(labels)
    path = model.get("path") if isinstance(model.get("path"), str) else None
    if path:
        m = Path(path)
        for pattern in _LABEL_FILES:
            cand = m.parent / pattern.format(stem=m.stem)
            try:
                found = cand.is_file()
            except (OSError, ValueError):  # a manifest path we cannot even stat
                found = False
            if found:
                try:
                    return read_label_names(cand), str(cand)
                except ScoringError as e:
                    warnings.append(f"labels beside the model not used: {e}")
    return None, "ILSVRC-2012 synset IDs (no labels file beside the model; give --labels)"


def _per_class(ev: Evaluation, gt_labels: np.ndarray, names: list[str] | None, top_confused: int = 10) -> dict:
    """Per-class top-1 accuracy over the ground truth (unanswered = wrong) and the most confused
    (true, predicted) pairs among wrong answers."""
    syn = synsets()

    def name(k: int) -> str:
        if k < 0:
            return "background" if k == -1 else "(no answer)"
        return names[k] if names else syn[k]

    # per-class totals come from all ground-truth images, not only the answered ones
    total = np.bincount(gt_labels, minlength=1000)
    correct = np.bincount(ev.labels[ev.correct1], minlength=1000)
    rows = [
        {"class": int(k), "synset": syn[k], "name": name(k), "images": int(total[k]),
         "correct": int(correct[k]), "top1": float(correct[k]) / total[k]}
        for k in np.nonzero(total)[0]
    ]
    rows.sort(key=lambda r: (r["top1"], -r["images"], r["class"]))
    wrong = ~ev.correct1 & ~ev.error
    pred = ev.top5[wrong, 0]
    true = ev.labels[wrong]
    confused = []
    if true.size:
        pairs = true * 2000 + (pred + 2)  # pred in -2..999 -> 0..1001
        uniq, counts = np.unique(pairs, return_counts=True)
        order = np.lexsort((uniq, -counts))[:top_confused]
        for u, c in zip(uniq[order], counts[order]):
            t, p = int(u // 2000), int(u % 2000) - 2
            confused.append({"true": t, "true_name": name(t), "predicted": p, "predicted_name": name(p),
                             "count": int(c)})
    return {"per_class": rows, "confused": confused}
