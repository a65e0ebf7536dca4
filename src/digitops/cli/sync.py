"""``digitops sync``: send what was kept while Comet or MLflow was unreachable; rebuild the MLflow index."""

from __future__ import annotations

import click

from digitops import comet_env, config
from digitops.errors import ConfigError, SyncError, UsageError


def _require_key() -> None:
    if not config.comet_enabled():
        raise ConfigError(
            "COMET_API_KEY is not set (nor api_key in ./.comet.config or ~/.comet.config): nothing is sent "
            "to Comet (runs stay in the local store). "
            "Set COMET_API_KEY (and COMET_WORKSPACE, COMET_PROJECT_NAME) to sync."
        )


@click.command("sync")
@click.option("--run", "run_ids", multiple=True, metavar="RUN_ID", help="Only these runs (repeatable). Default: all.")
@click.option("--dry-run", is_flag=True, help="List what would be uploaded; send nothing.")
@click.option("--rebuild-index", is_flag=True,
              help="MLflow: replace the project's index run with one built from the runs the server still has "
                   "(after runs were deleted in the server's UI); comparisons read every run meanwhile.")
def sync(run_ids: tuple[str, ...], dry_run: bool, rebuild_index: bool) -> None:
    """Upload runs kept offline and registrations made while Comet or MLflow was unreachable.

    Comet: uses the SDK's own uploader (what `comet upload` runs). MLflow (and
    GitLab's registry): sends the kept runs and registrations, idempotently.
    Exits 2 when something could not be sent; run it again later.
    """
    if rebuild_index:
        if run_ids:
            raise UsageError("--rebuild-index rebuilds the whole project's index: give it without --run")
        _rebuild_index(dry_run)
        return
    if config.backend() == "mlflow":
        _sync_mlflow(run_ids, dry_run)
        return
    _require_key()
    from digitops.comet.offline import pending_runs, stray_archives, sync_pending, upload_archive
    from digitops.comet.registry import pending_label, pending_registrations, sync_registrations

    runs = [s for s in pending_runs() if not run_ids or s.run_id in run_ids]
    strays = [] if run_ids else stray_archives()
    regs = pending_registrations()
    if dry_run:
        for s in runs:
            what = (s.pending.get("archive") or "changes to send") if s.pending else "incomplete experiment(s) to remove"
            click.echo(f"run {s.run_id}: {what}")
        for p in strays:
            click.echo(f"archive {p}")
        for r in regs:
            click.echo(f"registration: {r['name']} {pending_label(r)} (run {r['run_id']})")
        click.echo(f"{len(runs)} run(s), {len(strays)} other archive(s), {len(regs)} registration(s) pending")
        return
    if not runs and not strays and not regs:
        click.echo("nothing to sync: no kept archives, no pending registrations")
        return
    reach = comet_env.check_online(use_memo=False)
    if not reach.ok:
        raise SyncError(f"Comet not reached ({reach.reason}); nothing was sent, try again later")
    failed = 0
    for outcome in sync_pending(run_ids or None):
        click.echo(outcome.describe())
        failed += outcome.mode == "failed"
    for path in strays:
        ok = upload_archive(path)
        click.echo(f"archive {path.name}: {'uploaded' if ok else 'upload failed (kept)'}")
        failed += not ok
    for line in sync_registrations():
        click.echo(line)
        failed += "still pending" in line
    if failed:
        raise SyncError(f"{failed} item(s) could not be sent; they are kept for the next `digitops sync`")
    click.echo("sync complete")


def _sync_mlflow(run_ids: tuple[str, ...], dry_run: bool) -> None:
    """``digitops sync`` for the MLflow backend: kept runs (the tracker's), then kept registrations."""
    from digitops.mlflow import tracker
    from digitops.mlflow.state import pending_runs
    from digitops.mlflow.registry import pending_registrations, sync_registrations

    regs = pending_registrations()
    if dry_run:
        runs = [r for r in pending_runs() if not run_ids or r in run_ids]
        for run_id in runs:
            click.echo(f"run {run_id}: kept locally, not in MLflow yet")
        for r in regs:
            click.echo(f"registration: {r['name']} {r['pending_id']} (run {r['run_id']})")
        click.echo(f"{len(runs)} run(s), {len(regs)} registration(s) pending")
        return
    # Runs first: a registration names its run, which should be in the server by then.
    lines = tracker.sync_pending(run_ids or None) + sync_registrations()
    if not lines:
        click.echo("nothing to sync: no kept runs, no pending registrations")
        return
    failed = 0
    for line in lines:
        click.echo(line)
        failed += "still pending" in line
    if failed:
        raise SyncError(f"{failed} item(s) could not be sent; they are kept for the next `digitops sync`")
    click.echo("sync complete")


def _rebuild_index(dry_run: bool) -> None:
    """``digitops sync --rebuild-index``: the MLflow backend's index run, built again from the server's runs."""
    if config.backend() != "mlflow":
        raise UsageError("--rebuild-index is for the MLflow backend (DIGITOPS_BACKEND=mlflow or gitlab): "
                         "the other backends keep no index")
    from digitops.mlflow import index
    from digitops.mlflow.tracker import MlflowTracker, _redact

    project = config.project_name()
    if dry_run:
        click.echo(f"would replace the index run of {project} with one built from the server's runs")
        return
    try:
        click.echo(index.rebuild(MlflowTracker(), project))
    except Exception as exc:  # noqa: BLE001 - said in one line; the old index or the full search still answers
        raise SyncError(_redact(f"index of {project}: not rebuilt ({type(exc).__name__}: {exc}); run it again")) from exc


COMMANDS = [sync]
