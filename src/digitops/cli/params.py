"""``digitops params``: the parameters a notebook declares."""

from __future__ import annotations

from pathlib import Path

import click

from digitops import params as params_mod


@click.command("params")
@click.argument("notebook", type=click.Path(exists=True, dir_okay=False, path_type=Path))
def params_cmd(notebook: Path) -> None:
    """List the parameters NOTEBOOK declares (name, type, default, help)."""
    click.echo(params_mod.describe(notebook))


COMMANDS = [params_cmd]
