"""``lpirc score`` and ``lpirc rules``: the offline scorer (:mod:`scoring`, numpy only) on the
command line."""

from __future__ import annotations

import json
from pathlib import Path

import click

import scoring
from lpirc.cli._options import rules_option
from lpirc.errors import InputError


@click.command("score")
@click.argument("paths", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option("--ground-truth", type=click.Path(path_type=Path), help="CSV filename,label (synset or class index 0..999). Default: the ground truth named in each run's manifest.")
@rules_option(scoring.DEFAULT_RULES, "Rule set (see `lpirc rules`).", "--rules", "rules_name")
@click.option("--format", "fmt", type=click.Choice(["table", "json", "csv"]), default="table", show_default=True, help="table: for people; json: the score.json object (a list for several runs); csv: ranked leaderboard, one row per run.")
@click.option("--per-class", is_flag=True, help="Add per-class top-1 accuracy and the most confused class pairs.")
@click.option("--labels", type=click.Path(path_type=Path), help="Class names for the per-class view (implies --per-class): 1000 or 1001 lines (e.g. imagenet_labels.txt). Default: synset IDs.")
@click.option("--time-limit-s", type=click.FloatRange(min=0), help="lpirc-onsite: wall budget in seconds; answers with t_s above it are wrong. Default: the run's budget, else " f"{scoring.DEFAULT_TIME_LIMIT_S:g}.")
@click.option("--ms-per-image", type=click.FloatRange(min=0), help="ovic-2018: inference budget per image in ms (budget = this x images). Default: the run's, else " f"{scoring.DEFAULT_MS_PER_IMAGE:g}.")
@click.option("--idle-watts", type=click.FloatRange(min=0), help="lpcvc-2020: idle power in watts subtracted over the run's wall time. Default: " f"{scoring.DEFAULT_IDLE_WATTS:.4g}.")
@click.option("--k", "k", type=float, help="ovic-2019: slope of the Pareto frontier k ln(latency_ms) + a0, in accuracy percent per ln(ms). Default: " f"{scoring.DEFAULT_K:g} (our fit to the 2019 reference models).")
@click.option("--a0", "a0", type=float, help="ovic-2019: intercept of the Pareto frontier, in accuracy percent. Default: " f"{scoring.DEFAULT_A0:g}.")
@click.option("--energy-wh", type=click.FloatRange(min=0), help="Energy of the run in watt-hours, for logs without a manifest (or to override it); marked 'given'.")
def score_cmd(paths, ground_truth, rules_name, fmt, per_class, labels, **rule_options) -> None:
    """Score result logs offline under one rule set.

    PATHS: run folders (results.jsonl + manifest.json), bare results.jsonl files, or LPIRC referee
    result files (image_id class_id confidence per row). Needs only numpy.
    """
    # one bad run folder must not cost the leaderboard the others: score them, then fail (exit 5)
    scores, errors = [], []
    for p in paths:
        try:
            scores.append(scoring.score_path(p, ground_truth, rules_name, per_class=per_class or labels is not None,
                                             labels=labels, **rule_options))
        except scoring.ScoringError as e:
            if str(e) not in errors:
                errors.append(str(e))
    if scores:
        if fmt == "json":
            out = json.dumps(scores[0] if len(paths) == 1 else scores, indent=2)
        elif fmt == "csv":
            out = scoring.format_csv(scores).rstrip("\n")
        else:
            out = scoring.format_table(scores).rstrip("\n")
        if fmt != "table":  # keep stdout machine-readable; the table shows warnings itself
            for s in scores:
                for w in s["warnings"]:
                    click.echo(f"lpirc: warning: {w}", err=True)
        click.echo(out)
    for e in errors[:-1]:
        click.echo(f"lpirc: error: {e}", err=True)
    if errors:
        raise InputError(errors[-1])


@click.command("rules")
def rules_cmd() -> None:
    """List the rule sets `lpirc score --rules` knows, with their source year."""
    width = max(len(n) for n in scoring.RULES)
    for name, r in scoring.RULES.items():
        click.echo(f"{name:<{width}}  {r.year:<9}  {r.describe()}  [{r.source}]")
