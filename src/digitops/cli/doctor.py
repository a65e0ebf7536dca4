"""``digitops doctor``: check the tracking and registry stores, and repair them."""

from __future__ import annotations

import click

from digitops.errors import EXIT_FAILED, StoreError


@click.command("doctor")
@click.option("--repair", is_flag=True,
              help="Rebuild each damaged store (the damaged file is kept as *.corrupt-<time>).")
@click.option("--rebuild-registry", is_flag=True,
              help="Rebuild the registry index from models/ even when it looks healthy.")
def doctor_cmd(repair: bool, rebuild_registry: bool) -> None:
    """Run SQLite's integrity check on both stores and check registered model files.

    \b
    Exit status: 0 healthy (or repaired), 1 problems remain, 2 the repair failed.
    Nothing is deleted: a rebuilt store's old file is renamed *.corrupt-<UTC time>.
    """
    from filelock import Timeout

    from digitops import doctor
    from digitops.registry import RegistryError
    from digitops.tracking import TrackingError

    if repair or rebuild_registry:
        try:
            for summary in doctor.repair(rebuild_index=rebuild_registry):
                click.echo(summary)
        except (OSError, TrackingError, RegistryError, Timeout) as exc:
            raise StoreError(f"repair failed: {exc}") from exc
    findings = doctor.check()
    for finding in findings:
        click.echo(finding.line())
    if not all(f.ok for f in findings):
        click.echo("repair with `digitops doctor --repair`", err=True)
        raise SystemExit(EXIT_FAILED)


COMMANDS = [doctor_cmd]
