"""``digitops runs``, ``digitops compare`` and ``digitops report``: look at runs and judge them."""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path
from typing import Any, Callable

import click

from digitops.compare import (
    DEFAULT_METRIC,
    ENV_ALLOW_UNJUDGED,
    ENV_FLOOR,
    ENV_METRIC,
    ENV_TOLERANCE,
    Comparison,
    Gate,
    fmt_value,
    is_fraction_metric,
    label,
)

from digitops.errors import EXIT_FAILED, EXIT_OK, CannotJudge, StoreError


def _tracker() -> Any:
    from digitops.tracking import get_tracker

    return get_tracker()


def reap(tracker: Any) -> None:
    """Mark abandoned the runs whose process is gone (one line each on stderr) before reading runs."""
    from digitops import runs as runs_mod

    gone = runs_mod.reap_abandoned(tracker)
    for run_id in gone:
        click.echo(f"run {run_id} was still marked running but its process is gone: marked abandoned", err=True)


def _num(metric: str, value: float | None) -> str:
    return fmt_value(metric, value) if value is not None and not math.isnan(value) else "—"


# ---------------------------------------------------------------------------- runs


@click.group()
def runs() -> None:
    """List and inspect tracked runs."""


@runs.command("list")
@click.option("--project", help="Project to list. Default: $COMET_PROJECT_NAME / $DIGITOPS_PROJECT / digitops.")
@click.option("--status", type=click.Choice(["running", "finished", "failed", "abandoned"]),
              help="Only runs with this status.")
@click.option("--limit", type=click.IntRange(min=1), default=20, show_default=True, help="At most this many runs.")
@click.option("--metric", default=DEFAULT_METRIC, show_default=True, help="Metric shown per run.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON (a list of run records).")
def runs_list(project: str | None, status: str | None, limit: int, metric: str, as_json: bool) -> None:
    """Runs of the project, newest first."""
    tracker = _tracker()
    reap(tracker)
    found = tracker.list_runs(project=project, status=status, limit=limit)
    if as_json:
        click.echo(json.dumps([r.to_dict() for r in found], indent=2, default=str))
        return
    if not found:
        click.echo("no runs yet; start one with `digitops run train`")
        return
    rows = [("RUN", "STATUS", "STARTED", "ARCHITECTURE", label(metric).upper())]
    for r in found:
        rows.append(
            (
                r.run_id,
                r.status,
                r.started_at[:19].replace("T", " "),
                str(r.params.get("architecture", "—")),
                _num(metric, r.metrics.get(metric)),
            )
        )
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    for row in rows:
        click.echo("  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip())


def _show_value(metric: str, value: float) -> str:
    # Counts (test_images, epochs_run) are whole numbers: 10,000, not 1e+04.
    if float(value).is_integer() and not is_fraction_metric(metric) and not metric.endswith("seconds"):
        return f"{int(value):,}"
    return _num(metric, value)


def _show_files(run: Any) -> dict[str, str]:
    # What the tracker logged, plus the run folder's own files (the model, metrics.json, the report).
    from digitops import config

    files = dict(run.artifacts)
    folder = config.runs_dir() / run.run_id
    if folder.is_dir():
        for path in sorted(folder.rglob("*")):
            name = path.relative_to(folder).as_posix()
            if path.is_file() and name not in files and path.name not in files and not name.endswith(".tmp"):
                files[name] = str(path)
    return files


@runs.command("show")
@click.argument("run_id", metavar="RUN")
@click.option("--json", "as_json", is_flag=True, help="Print the run record as JSON.")
def runs_show(run_id: str, as_json: bool) -> None:
    """Everything recorded about RUN: params, metrics, history, artifacts."""
    run = _tracker().get_run(run_id)
    if as_json:
        click.echo(json.dumps(run.to_dict(), indent=2, default=str))
        return
    click.echo(f"run:      {run.run_id}  ({run.status})")
    click.echo(f"project:  {run.project}")
    click.echo(f"started:  {run.started_at}")
    click.echo(f"ended:    {run.ended_at or '—'}")
    commit = run.git_commit or "—"
    click.echo(f"commit:   {commit[:-len('+dirty')] + '  (dirty)' if commit.endswith('+dirty') else commit}")
    click.echo(f"data:     {run.data_checksum or '—'}")
    if run.url:
        click.echo(f"url:      {run.url}")
    for title, mapping in (("params", run.params), ("tags", run.tags)):
        if mapping:
            click.echo(f"{title}:")
            for k in sorted(mapping):
                click.echo(f"  {k} = {mapping[k]}")
    if run.metrics:
        click.echo("metrics:")
        for k in sorted(run.metrics):
            click.echo(f"  {k} = {_show_value(k, run.metrics[k])}")
    if run.history:
        click.echo("history (per epoch):")
        for k in sorted(run.history):
            click.echo(f"  {k}: " + ", ".join(f"{v:.4g}" for v in run.history[k]))
    files = _show_files(run)
    click.echo("artifacts:" if files else "artifacts: none")
    for k in sorted(files):
        click.echo(f"  {k}: {files[k]}")


@runs.command("mark-failed")
@click.argument("run_id", metavar="RUN")
def runs_mark_failed(run_id: str) -> None:
    """Close RUN as failed: for a run left running or abandoned by a process that was killed."""
    from digitops import runs as runs_mod

    was = runs_mod.mark_failed(_tracker(), run_id)
    click.echo(f"run {run_id}: {was} -> failed")


# ---------------------------------------------------------------------------- compare / report


def gate_options(fn: Callable[..., Any]) -> Callable[..., Any]:
    """The options shared by ``compare`` and ``report`` that configure the gate."""
    options = [
        click.option(
            "--metric",
            envvar=ENV_METRIC,
            default=DEFAULT_METRIC,
            show_default=True,
            help=f"Final metric to judge (env {ENV_METRIC}).",
        ),
        click.option(
            "--floor",
            help=f"Absolute minimum (a fraction for accuracy: 0.9 = 90 %), 'none' to disable. "
            f"Default 0.9 or ${ENV_FLOOR}.",
        ),
        click.option(
            "--tolerance",
            type=float,
            help=f"How far below production the candidate may be (0.002 = 0.2 points). "
            f"Default 0.002 or ${ENV_TOLERANCE}.",
        ),
        click.option(
            "--lower-is-better", is_flag=True, help="The metric improves downwards (a loss): the floor is a ceiling."
        ),
        click.option("--model-name", help="Registered model whose production version is the baseline."),
        click.option(
            "--allow-unjudged",
            is_flag=True,
            envvar=ENV_ALLOW_UNJUDGED,
            help="When Comet (or the registry) cannot be read, judge against the local store instead of "
            f"refusing (exit 2). You accept the risk of passing a worse model. Env {ENV_ALLOW_UNJUDGED}=1.",
        ),
    ]
    for option in reversed(options):
        fn = option(fn)
    return fn


def _compare(run_id: str, metric: str, gate: Gate, model_name: str | None, allow_unjudged: bool) -> Comparison:
    from digitops import compare as compare_mod

    reap(_tracker())
    return compare_mod.compare(run_id, metric=metric, gate=gate, model_name=model_name, allow_unjudged=allow_unjudged)


def exit_if_unjudged(c: Comparison) -> None:
    """Raise :class:`CannotJudge` (exit 2, ``cannot judge: <why>``) when the gate could not see what it needs."""
    if not c.judged:
        raise CannotJudge(
            f"cannot judge: {c.unjudged_reason}\n"
            f"  (the candidate does not pass; --allow-unjudged / {ENV_ALLOW_UNJUDGED}=1 accepts the risk)"
        )


def _print_comparison(c: Comparison) -> None:
    click.echo(c.headline())
    click.echo(f"gate: {c.gate.describe(c.metric)}")
    for reason in c.reasons:
        click.echo(f"  - {reason}")


@click.command("compare")
@click.argument("run_id", metavar="RUN")
@gate_options
@click.option("--json", "as_json", is_flag=True, help="Print the comparison as JSON.")
def compare_cmd(
    run_id: str,
    metric: str,
    floor: str | None,
    tolerance: float | None,
    lower_is_better: bool,
    model_name: str | None,
    allow_unjudged: bool,
    as_json: bool,
) -> None:
    """Compare RUN with the project's other finished runs and the production model.

    The candidate passes when its metric is at least the floor and at least
    the production version's value minus the tolerance (only the floor
    counts while there is no production version). The project mean and best
    (other finished runs on the same dataset) are shown, not gated.

    \b
    Exit status:
      0  the candidate passes the gate
      1  the candidate fails the gate
      2  error: unknown run, missing metric, bad option, or cannot judge
         (Comet / the registry could not be read; see --allow-unjudged)
    """
    gate = Gate.from_options(metric, floor=floor, tolerance=tolerance, lower_is_better=lower_is_better)
    c = _compare(run_id, metric, gate, model_name, allow_unjudged)
    if as_json:
        click.echo(json.dumps(c.to_dict(), indent=2, default=str))
    elif c.judged:
        _print_comparison(c)
    exit_if_unjudged(c)
    sys.exit(EXIT_OK if c.passed else EXIT_FAILED)


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
    c = _compare(run_id, metric, gate, model_name, allow_unjudged)
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


COMMANDS = [runs, compare_cmd, report_cmd]
