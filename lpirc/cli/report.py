"""``lpirc report``: one run, or several compared, drawn as one self-contained HTML page
(:func:`lpirc.report.write_report`); and the report ``lpirc run`` writes into its run folder."""

from __future__ import annotations

import time
from pathlib import Path

import click

from lpirc.cli._options import rules_option
from lpirc.report import REPORT, write_report


@click.command("report")
@click.argument("runs", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option("-o", "--out", type=click.Path(dir_okay=False, path_type=Path),
              help=f"HTML file to write. Default: RUN/{REPORT} for one run folder, else ./{REPORT}.")
@click.option("--ground-truth", type=click.Path(path_type=Path), help="CSV filename,label. Default: the one each run's manifest names.")
@rules_option(None, "Score every run under this rule set. Default: each run's own.")
@click.option("--labels", type=click.Path(path_type=Path), help="Class names (1000 or 1001 lines). Default: a labels file beside the run's model, else synset IDs.")
@click.option("--title", help="Page title.")
def report_cmd(runs, out, ground_truth, rules, labels, title) -> None:
    """Draw one run, or compare several, as one self-contained HTML page (no network request,
    prints well): summary, manifest, the race against the budget, throughput per worker,
    latency, worst classes and confusions, failed images, power."""
    t0 = time.perf_counter()
    if out is None:
        out = Path(runs[0]) / REPORT if len(runs) == 1 and Path(runs[0]).is_dir() else Path(REPORT)
    path = write_report(runs, out, ground_truth, rules, labels, title)
    click.echo(f"wrote {path} ({path.stat().st_size / 1024:.0f} KiB, {len(runs)} run{'s' * (len(runs) > 1)}) "
               f"in {time.perf_counter() - t0:.2f} s")


def run_report_line(run_dir: Path) -> str:
    """Write RUN/report.html after `lpirc run`; the summary line saying where it is. Never
    raises: a report that cannot be made is a warning, and the run keeps its exit code."""
    t0 = time.perf_counter()
    try:
        path = write_report([run_dir], Path(run_dir) / REPORT)
    except Exception as e:  # noqa: BLE001 - the run is done and scored; its report is extra
        click.echo(f"lpirc: warning: {Path(run_dir) / REPORT} not written ({e})", err=True)
        return f"report          not written (lpirc report {run_dir} retries)"
    return f"report          {path} (lpirc report, {time.perf_counter() - t0:.1f} s)"
