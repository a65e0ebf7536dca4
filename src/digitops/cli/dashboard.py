"""``digitops dashboard``: serve the digit-drawing dashboard with Voila."""

from __future__ import annotations

import os
import shlex
from pathlib import Path

import click

from digitops.errors import NotFound, RegistryError


@click.command("dashboard")
@click.option("--port", type=click.IntRange(1, 65535), default=8866, show_default=True, help="Port to listen on.")
@click.option(
    "--host", default="127.0.0.1", show_default=True,
    help="Address to bind; use 0.0.0.0 only inside a container or behind a proxy.",
)
@click.option(
    "--preheat/--no-preheat", default=True, show_default=True,
    help="Keep one kernel with the page rendered, so a visitor's page appears sooner"
    " (costs one idle kernel, ~75 MB).",
)
@click.option("--open", "open_browser", is_flag=True, help="Open the page in a browser.")
@click.option(
    "--notebook", type=click.Path(dir_okay=False, exists=True, path_type=Path),
    help="Dashboard notebook. Default: dashboards/digits.ipynb ($DIGITOPS_DASHBOARD).",
)
@click.option(
    "--cull-idle-timeout", type=click.IntRange(min=0), default=60, show_default=True,
    help="Shut down a kernel idle this many seconds with no page connected (0: never).",
)
@click.option(
    "--max-kernels", type=click.IntRange(min=0), default=60, show_default=True,
    help="Most visitors (kernels) at once; the next one gets a 'busy, try again' page (0: no limit).",
)
@click.option("--fetch-only", is_flag=True, help="Download and verify the model to serve, then exit (image builds).")
@click.option("--dry-run", is_flag=True, help="Print the Voila command instead of running it.")
def dashboard(
    port: int,
    host: str,
    preheat: bool,
    open_browser: bool,
    notebook: Path | None,
    cull_idle_timeout: int,
    max_kernels: int,
    fetch_only: bool,
    dry_run: bool,
) -> None:
    """Serve the dashboard: draw a digit, see what the production model says.

    The model is the registry's production version (embedded, Comet, or
    MLflow / GitLab's model registry: see DIGITOPS_BACKEND) unless
    DIGITOPS_MODEL_VERSION pins one; it is
    downloaded once, cached by version and checksum-verified on every load.
    """
    from digitops import extras
    from digitops.dashboard import loader

    if fetch_only:  # needs the core package only (image builds bake the model in)
        try:
            version = loader.resolve()
            path = loader.fetch(version)
        except loader.NoModelError as exc:
            raise RegistryError(str(exc)) from None
        click.echo(f"cached {version.name} {version.version} ({version.status}) at {path}")
        return

    extras.require("dashboard", "digitops dashboard")
    from digitops.dashboard import notebook_path, server

    try:
        nb = notebook.resolve() if notebook else notebook_path()
    except FileNotFoundError as exc:
        raise NotFound(str(exc)) from None
    root = Path.cwd()
    args = server.voila_command(
        nb, port=port, host=host, preheat=preheat, open_browser=open_browser,
        root_dir=root, cull_idle_timeout=cull_idle_timeout, max_kernels=max_kernels,
    )
    env = server.server_env(root)
    if dry_run:
        click.echo(shlex.join(args))
        return
    click.echo(server.prefetch())  # a ChecksumError is a DigitopsError: exit 2, one line
    click.echo(f"dashboard: http://{'localhost' if host in ('127.0.0.1', '::1') else host}:{port}/  (Ctrl-C stops)")
    # Replace this process so signals (Ctrl-C, a container's SIGTERM) reach Voila directly.
    os.execve(args[0], args, env)


COMMANDS = [dashboard]
