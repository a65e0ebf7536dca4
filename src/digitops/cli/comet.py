"""``digitops comet status``: where Comet data goes and what waits for `digitops sync`."""

from __future__ import annotations

import json

import click

from digitops import comet_env, config


@click.group("comet")
def comet() -> None:
    """Comet connection and offline state."""


@comet.command("status")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@click.option("--probe/--no-probe", default=True, show_default=True, help="Contact the server (one bounded request).")
def status(as_json: bool, probe: bool) -> None:
    """Where Comet data goes, whether the server answers, what waits for `digitops sync`."""
    from digitops.comet.offline import pending_runs, stray_archives
    from digitops.comet.registry import pending_label, pending_registrations

    info: dict[str, object] = {
        "enabled": config.comet_enabled(),
        "server": comet_env.server_root(),
        "workspace": comet_env.workspace(),
        "project": config.project_name(),
        "offline_forced": comet_env.offline_forced(),
        "pending_runs": [s.run_id for s in pending_runs()],
        "stray_archives": [str(p) for p in stray_archives()],
        "pending_registrations": [f"{r['name']} {pending_label(r)}" for r in pending_registrations()],
    }
    if probe and config.comet_enabled() and not comet_env.offline_forced():
        result = comet_env.check_online(use_memo=False)
        info["reachable"] = result.ok
        info["reason"] = result.reason
        info["probe_seconds"] = round(result.seconds, 3)
    if as_json:
        click.echo(json.dumps(info, indent=2))
        return
    for key, value in info.items():
        click.echo(f"{key}: {value}")
    if not config.comet_enabled():
        click.echo("(no Comet API key in the environment or ~/.comet.config: runs and models stay local)")


COMMANDS = [comet]
