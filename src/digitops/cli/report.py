"""``digitops report``: a run's report as Markdown (the MR note), HTML and JSON."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from digitops.cli.compare import compare_run, exit_if_unjudged, gate_options
from digitops.compare import Gate
from digitops.errors import EXIT_FAILED, EXIT_OK, StoreError


@click.command("report")
@click.argument("run_id", metavar="RUN")
@gate_options
@click.option(
    "--out",
    "out_dir",
    type=click.Path(file_okay=False, path_type=Path),
    help="Folder for report.md, report.html and comparison.json. Default: the run folder.",
)
@click.option(
    "--run-dir",
    type=click.Path(file_okay=False, path_type=Path),
    help="Folder with the run's images and notebooks. Default: $DIGITOPS_RUNS/RUN.",
)
@click.option(
    "--base-url",
    envvar="DIGITOPS_REPORT_BASE_URL",
    help="URL of the run folder (e.g. the CI job's artifacts); links become absolute under it. "
    "Env DIGITOPS_REPORT_BASE_URL.",
)
@click.option("--exit-code", is_flag=True, help="Exit 1 when the gate fails (default: 0 once written).")
def report_cmd(
    run_id: str,
    metric: str,
    floor: str | None,
    tolerance: float | None,
    lower_is_better: bool,
    model_name: str | None,
    allow_unjudged: bool,
    out_dir: Path | None,
    run_dir: Path | None,
    base_url: str | None,
    exit_code: bool,
) -> None:
    """Write RUN's report: Markdown for the MR note, a standalone HTML page and the comparison as JSON.

    \b
    Exit status:
      0  report written (and, with --exit-code, the gate passed)
      1  with --exit-code: report written, the gate failed
      2  error: unknown run, missing metric, bad option; or cannot judge (the report
         is written and says the comparison could not be made)
    """
    from digitops import report as report_mod

    gate = Gate.from_options(metric, floor=floor, tolerance=tolerance, lower_is_better=lower_is_better)
    c = compare_run(run_id, metric, gate, model_name, allow_unjudged)
    try:
        paths = report_mod.write_report(
            run_id, out_dir, comparison=c, base_url=base_url, run_dir=run_dir, model_name=model_name
        )
    except OSError as exc:
        raise StoreError(f"cannot write the report: {exc}") from exc
    click.echo(c.headline())
    for kind, path in paths.items():
        click.echo(f"{kind}: {path}")
    exit_if_unjudged(c)
    sys.exit(EXIT_FAILED if exit_code and not c.passed else EXIT_OK)


COMMANDS = [report_cmd]
