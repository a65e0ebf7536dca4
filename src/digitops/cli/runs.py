"""``digitops runs``: list and inspect tracked runs; close runs a killed process left open; prune old folders."""

from __future__ import annotations

import json
import math
from typing import Any

import click

from digitops.compare import DEFAULT_METRIC, fmt_value, is_fraction_metric, label


def tracker() -> Any:
    """The active tracker."""
    from digitops.tracking import get_tracker

    return get_tracker()


def reap(active: Any) -> None:
    """Mark abandoned the runs whose process is gone (one line each on stderr) before reading runs."""
    from digitops import runs as runs_mod

    gone = runs_mod.reap_abandoned(active)
    for run_id in gone:
        click.echo(f"run {run_id} was still marked running but its process is gone: marked abandoned", err=True)


def listed(active: Any, project: str | None, status: str | None, limit: int) -> list[Any]:
    """The tracker's runs; with the MLflow server unreadable, this machine's runs and one warning line.

    Listing decides nothing, so it falls back where ``compare`` fails closed: the
    warning names the runs still pending sync (only here until ``digitops sync``).
    """
    from digitops.mlflow.tracker import MlflowTracker
    from digitops.tracking.base import TrackingError

    try:
        return active.list_runs(project=project, status=status, limit=limit)
    except TrackingError as exc:
        if not isinstance(active, MlflowTracker):
            raise
        from digitops.mlflow.state import pending_runs

        found = active.local.list_runs(project=project, status=status, limit=limit)
        pending = pending_runs()
        shown = ", ".join(pending[:10]) + (f" and {len(pending) - 10} more" if len(pending) > 10 else "")
        click.echo(" ".join(
            f"Warning: the MLflow server could not be read ({exc}); listing this machine's runs only; "
            f"{'still pending sync: ' + shown if pending else 'none pending sync'}".split()
        ), err=True)
        return found


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
    active = tracker()
    reap(active)
    found = listed(active, project, status, limit)
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
    run = tracker().get_run(run_id)
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
    from digitops.reuse import REASON

    for stage, tag in REASON.items():  # why a stage was reused, or which inputs changed
        if tag in run.tags:
            click.echo(f"reuse:    {stage}: {run.tags[tag]}")
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

    was = runs_mod.mark_failed(tracker(), run_id)
    click.echo(f"run {run_id}: {was} -> failed")


@runs.command("prune")
@click.option("--keep", type=click.IntRange(min=1), default=3, show_default=True,
              help="How many of the newest finished runs keep their folders.")
@click.option("--dry-run", is_flag=True, help="Say what would be removed; remove nothing.")
def runs_prune(keep: int, dry_run: bool) -> None:
    """Remove the folders of runs older than the KEEP newest finished ones.

    The store keeps every run's record (parameters, metrics, checksums: what compare and the
    report read); only the folders go (model, notebooks, plots). Kept whatever their age: runs
    still running, failures newer than the folders kept, runs waiting for `digitops sync`,
    and folders the store does not know. CI runs this before caching the run folders, so the
    cache stops growing by one folder a pipeline.
    """
    from digitops.prune import NEWEST, prune_folders

    active = tracker()
    reap(active)
    done = prune_folders(getattr(active, "local", active), keep, dry_run=dry_run)
    verb = "would remove" if dry_run else "removed"
    for run_id in done.removed:
        click.echo(f"{verb} runs/{run_id}")
    held = sorted(k for k, why in done.kept.items() if why != NEWEST)
    for run_id in held:
        click.echo(f"kept runs/{run_id} ({done.kept[run_id]})")
    if dry_run:
        click.echo(f"{len(done.removed)} folder(s) to remove, {len(done.kept)} kept (dry run: nothing removed)")
    else:
        click.echo(f"removed {len(done.removed)} folder(s), kept {len(done.kept)}")


COMMANDS = [runs]
