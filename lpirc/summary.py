"""The end-of-run summary ``lpirc run`` prints and ``lpirc report`` shows: what ran, then the
score table ``lpirc score`` prints (:func:`scoring.format_table`)."""

from __future__ import annotations

import scoring


def format_run_summary(outcome) -> str:
    """The end-of-run table: what ran, then the same score table `lpirc score` prints.

    ``outcome``: a :class:`lpirc.runner.RunOutcome`, or anything with its ``out_dir``,
    ``status``, ``manifest`` (the manifest.json object), ``notes`` and ``score`` (the
    score.json object, or None when there was no ground truth). KeyError or TypeError for a
    manifest without the fields ``lpirc run`` writes.
    """
    m = outcome.manifest
    rt = m.get("runtime") or {}
    d = m.get("delegate") or {}
    lines = [
        f"run folder      {outcome.out_dir}",
        f"status          {outcome.status}",
        f"model           {m['model']['path']}",
        (f"runtime         {rt.get('name')} {rt.get('version')}, delegate {d.get('ran')}"
         f" (requested {d.get('requested')})" if rt else
         f"runtime         not reported: no worker loaded the model (requested delegate "
         f"{d.get('requested')})"),
        f"holdout         {m['holdout']['path']} ({m['holdout']['image_count']} images)",
        *([f"input           {pre['input']}; {pre['crop']} crop {pre['crop_fraction']:g}, "
           f"{pre['resize']} resize to {pre['height']}x{pre['width']}"]
          if (pre := m.get("preprocess")) and pre.get("input") else []),
        (f"first answer    {m['first_answer_s']} s after start (measured)"
         if m.get("first_answer_s") is not None else "first answer    none"),
    ]
    lines += [f"note            {n}" for n in outcome.notes]
    if outcome.score is not None:
        lines += ["", scoring.format_table([outcome.score])]
    else:
        e = m.get("energy") or {}
        lines += [
            f"answered        {m.get('images_answered')} of {m['holdout']['image_count']}"
            f" ({m.get('images_failed')} failed, {m.get('images_late')} late)",
            f"wall time       {m.get('wall_time_s')} s (measured)",
            f"energy          {e.get('wh')} Wh ({e.get('source')}: {e.get('method')})",
            "score           none: no ground truth (give --ground-truth, or `lpirc score` later)",
        ]
    return "\n".join(lines)
