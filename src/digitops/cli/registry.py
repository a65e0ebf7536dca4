"""``digitops registry``: register, list, promote, roll back and download model versions."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import click

from digitops import config
from digitops.registry.base import ARCHIVED, NONE, PRODUCTION, STAGING, ModelVersion

_name_option = click.option(
    "--name", "model_name", help="Registered model name. Default: $DIGITOPS_MODEL_NAME or mnist-digits."
)


def _registry() -> Any:
    from digitops.registry import get_registry

    return get_registry()


def _describe(v: ModelVersion) -> str:
    acc = v.metrics.get("test_accuracy")
    shown = f", test accuracy {acc * 100:.2f} %" if isinstance(acc, (int, float)) else ""
    return f"{v.name} {v.version} ({v.status}) from run {v.run_id}{shown}"


def _echo_version(v: ModelVersion, as_json: bool) -> None:
    if as_json:
        click.echo(json.dumps(v.to_dict(), indent=2))
        return
    click.echo(f"model:      {v.name}")
    click.echo(f"version:    {v.version}")
    click.echo(f"status:     {v.status}")
    click.echo(f"run:        {v.run_id}")
    click.echo(f"sha256:     {v.sha256}")
    click.echo(f"created:    {v.created_at} by {v.created_by}")
    click.echo(f"stored at:  {v.uri}")
    if v.url:
        click.echo(f"url:        {v.url}")
    if v.tags:
        click.echo(f"tags:       {', '.join(v.tags)}")
    for k in sorted(v.metrics):
        click.echo(f"  {k} = {v.metrics[k]:.6g}")


@click.group()
def registry() -> None:
    """Versions of the registered model: register, promote, roll back, download.

    Versions are assigned by the registry (0.1.0, 0.2.0, ... by default; see
    `register --bump`). At most one version is production; promoting another
    archives it, and `rollback` brings back the one before.
    """


@registry.command("register")
@click.argument("run_id", metavar="RUN")
@_name_option
@click.option(
    "--model",
    "model_path",
    type=click.Path(dir_okay=False, path_type=Path),
    help="The .keras file. Default: $DIGITOPS_RUNS/RUN/model.keras, else the run's logged model.keras.",
)
@click.option(
    "--status",
    type=click.Choice([STAGING, NONE, PRODUCTION]),
    default=STAGING,
    show_default=True,
    help="Status of the new version (production also promotes it).",
)
@click.option(
    "--bump",
    type=click.Choice(["major", "minor", "patch"]),
    default="minor",
    show_default=True,
    help="Which part of the newest version to increase.",
)
@click.option("--json", "as_json", is_flag=True, help="Print the new version as JSON.")
def register_cmd(
    run_id: str, model_name: str | None, model_path: Path | None, status: str, bump: str, as_json: bool
) -> None:
    """Register RUN's model as the next version, with the run's final metrics and the file's SHA256."""
    from digitops.registry import register_run

    version = register_run(
        run_id, name=model_name, model_path=model_path, status=status, bump=bump,
        warn=lambda message: click.echo(f"warning: {message}", err=True),
    )
    if as_json:
        click.echo(json.dumps(version.to_dict(), indent=2))
    else:
        click.echo(f"registered {_describe(version)}")
        click.echo(f"sha256 {version.sha256}")


@registry.command("list")
@_name_option
@click.option("--json", "as_json", is_flag=True, help="Print the versions as JSON.")
def list_cmd(model_name: str | None, as_json: bool) -> None:
    """All versions of the model, oldest first."""
    name = model_name or config.model_name()
    versions = _registry().list_versions(name)
    if as_json:
        click.echo(json.dumps([v.to_dict() for v in versions], indent=2))
        return
    if not versions:
        click.echo(f"no versions of {name} yet; register one with `digitops registry register RUN`")
        return
    rows = [("VERSION", "STATUS", "RUN", "TEST ACC", "CREATED", "BY", "SHA256")]
    for v in versions:
        acc = v.metrics.get("test_accuracy")
        rows.append(
            (
                v.version,
                v.status,
                v.run_id,
                f"{acc * 100:.2f} %" if isinstance(acc, (int, float)) else "—",
                v.created_at[:19].replace("T", " "),
                v.created_by,
                v.sha256[:12],
            )
        )
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for r in rows:
        click.echo("  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip())


@registry.command("show")
@click.argument("version", required=False)
@_name_option
@click.option(
    "--status",
    type=click.Choice([PRODUCTION, STAGING, NONE, ARCHIVED]),
    help="Show the newest version with this status (default without VERSION: production).",
)
@click.option("--json", "as_json", is_flag=True, help="Print the version as JSON.")
def show_cmd(version: str | None, model_name: str | None, status: str | None, as_json: bool) -> None:
    """One version (VERSION, or the newest with --status, production by default)."""
    if version and status:
        raise click.UsageError("give VERSION or --status, not both")
    found = _registry().resolve(model_name or config.model_name(), version, status)
    _echo_version(found, as_json)


@registry.command("promote")
@click.argument("version")
@_name_option
def promote_cmd(version: str, model_name: str | None) -> None:
    """Make VERSION the production version (the previous one is archived)."""
    name = model_name or config.model_name()
    reg = _registry()
    before = reg.get_by_status(name, PRODUCTION)
    promoted = reg.promote(name, version)
    was = f" (was {before.version})" if before and before.version != promoted.version else ""
    click.echo(f"production: {_describe(promoted)}{was}")


@registry.command("rollback")
@_name_option
def rollback_cmd(model_name: str | None) -> None:
    """Make the production version before the current one production again."""
    name = model_name or config.model_name()
    reg = _registry()
    before = reg.get_by_status(name, PRODUCTION)
    restored = reg.rollback(name)
    click.echo(f"production: {_describe(restored)} (rolled back from {before.version if before else '—'})")


@registry.command("download")
@click.argument("dest", type=click.Path(path_type=Path))
@_name_option
@click.option("--version", "version", help="Version to download.")
@click.option(
    "--status",
    type=click.Choice([PRODUCTION, STAGING, NONE, ARCHIVED]),
    help="Download the newest version with this status (default: production).",
)
def download_cmd(dest: Path, model_name: str | None, version: str | None, status: str | None) -> None:
    """Copy a version's model to DEST (a .keras path, or a folder that gets model.keras), SHA256 verified."""
    if version and status:
        raise click.UsageError("give --version or --status, not both")
    name = model_name or config.model_name()
    reg = _registry()
    chosen = reg.resolve(name, version, status)
    # Download the exact version resolved above, even if a promotion happens meanwhile.
    path = reg.download(name, dest, version=chosen.version)
    click.echo(f"{_describe(chosen)}: sha256 verified", err=True)
    click.echo(str(path))


COMMANDS = [registry]
