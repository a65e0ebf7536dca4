"""``digitops feedback``: the digits people corrected in the dashboard (list, stats, export)."""

from __future__ import annotations

import json
from typing import Any

import click


def _store() -> Any:
    from digitops.feedback import FeedbackError
    from digitops.feedback.store import open_store

    try:
        return open_store()
    except FeedbackError as exc:
        raise click.ClickException(str(exc)) from exc


@click.group("feedback")
def feedback_cmd() -> None:
    """Field drawings kept from the dashboard's "Right" / "Wrong: it is N" buttons."""


@feedback_cmd.command("list")
@click.option("--json", "as_json", is_flag=True, help="One JSON object per drawing.")
def list_cmd(as_json: bool) -> None:
    """Every kept drawing: hash, true label, what the model said, model version, time."""
    from digitops.feedback import FeedbackError

    try:
        records = _store().records()
    except FeedbackError as exc:
        raise click.ClickException(str(exc)) from exc
    if as_json:
        from dataclasses import asdict

        for r in records:
            click.echo(json.dumps(asdict(r)))
        return
    if not records:
        click.echo("no field drawings kept yet")
        return
    click.echo(f"{'drawing':<14}{'label':>6}{'said':>6}  {'model':<28}kept at")
    for r in records:
        said = "-" if r.predicted is None else str(r.predicted)
        click.echo(f"{r.hash[:12]:<14}{r.label:>6}{said:>6}  {r.model_name + ' ' + r.model_version:<28}{r.created_at}")
    click.echo(f"{len(records)} drawing(s)")


@feedback_cmd.command("stats")
@click.option("--json", "as_json", is_flag=True, help="The numbers as JSON.")
def stats_cmd(as_json: bool) -> None:
    """Counts per label and per model version, and the serving models' confusion on field drawings."""
    from digitops.feedback import FeedbackError
    from digitops.feedback.stats import confusion_text, summary

    try:
        result = summary(_store().records())
    except FeedbackError as exc:
        raise click.ClickException(str(exc)) from exc
    if as_json:
        click.echo(json.dumps(result, indent=2))
        return
    click.echo(f"{result['drawings']} field drawing(s)")
    click.echo("per label: " + ", ".join(f"{d}: {n}" for d, n in result["per_label"].items()))
    for version, counts in result["per_model_version"].items():
        share = f"{100 * counts['right'] / counts['drawings']:.1f} % right" if counts["drawings"] else ""
        click.echo(f"{version}: {counts['drawings']} drawing(s), {share}")
    click.echo("confusion of the serving model (rows: true label, columns: what it said)")
    click.echo(confusion_text(result["confusion"]))


def _destination() -> Any:
    """The shared destination of the backend (:mod:`digitops.feedback.comet` or ``.mlflow``), None when embedded."""
    from digitops import config
    from digitops.errors import ConfigError

    try:
        backend = config.backend()
    except ConfigError as exc:
        raise click.ClickException(str(exc)) from exc
    if backend == "comet":
        from digitops.feedback import comet as shared
    elif backend == "mlflow":
        from digitops.feedback import mlflow as shared
    else:
        return None
    return shared


@feedback_cmd.command("sync")
def sync_cmd() -> None:
    """With Comet or MLflow on: send this machine's drawings to the shared destination and receive the others'."""
    from digitops.feedback import FeedbackError

    shared = _destination()
    if shared is None:
        raise click.ClickException("Comet is not set up (no COMET_API_KEY), nor MLflow (no MLFLOW_TRACKING_URI): "
                                   "drawings stay in this machine's store")
    try:
        click.echo(shared.sync(_store()).line())
    except FeedbackError as exc:
        raise click.ClickException(str(exc)) from exc


@feedback_cmd.command("export")
@click.option("--if-any", is_flag=True, help="No drawings yet is not an error (CI: exit 0, nothing exported).")
def export_cmd(if_any: bool) -> None:
    """Write the drawings as a versioned, checksummed NPZ (what evaluation and training load).

    With Comet or MLflow on, the shared destination's drawings are received first (see `sync`).
    """
    from digitops.feedback import FeedbackError, dataset

    store = _store()
    shared = _destination()
    if shared is not None:
        try:
            click.echo(shared.sync(store).line())
        except FeedbackError as exc:
            click.echo(f"Warning: {exc}; exporting this machine's drawings only", err=True)
    if if_any and not store.records():
        click.echo("no field drawings yet: nothing exported")
        return
    try:
        path, manifest = dataset.export(store)
    except FeedbackError as exc:
        raise click.ClickException(str(exc)) from exc
    click.echo(f"{manifest['version']}: {manifest['count']} drawing(s), {manifest['test_count']} for testing only")
    click.echo(f"{path} (sha256 {manifest['sha256']})")


COMMANDS = [feedback_cmd]
