"""``digitops pipeline``: every stage of a run in one command."""

from __future__ import annotations

from pathlib import Path

import click

from digitops.cli.compare import exit_if_unjudged, gate_options
from digitops.cli.run import collect_parameters, param_options
from digitops.cli.runs import reap, tracker
from digitops.compare import Gate
from digitops.errors import EXIT_FAILED


@click.command("pipeline")
@param_options
@click.option("--profile", default="quick", show_default=True, help="Training parameter set: quick, ci or full.")
@gate_options
@click.option("--promote", is_flag=True, help="Make the new version production when the gate passes.")
@click.option(
    "--no-auto-promote", is_flag=True,
    help="Keep the new version staging even when the registry has no production version yet.",
)
@click.option("--no-register", is_flag=True, help="Stop after the report.")
@click.option("--base-url", help="Absolute URL of the run folder, for links in the report (CI sets this).")
@click.option("-v", "--log-output", is_flag=True, help="Stream the notebooks' output here.")
@click.option("--reuse", is_flag=True,
              help="Reuse training/evaluation of a finished run with the same inputs (as `digitops run` does).")
def pipeline_cmd(files: tuple[Path, ...], pairs: tuple[tuple[str, str], ...], profile: str, metric: str,
                 floor: str | None, tolerance: float | None, lower_is_better: bool, model_name: str | None,
                 allow_unjudged: bool, promote: bool, no_auto_promote: bool, no_register: bool, base_url: str | None,
                 log_output: bool, reuse: bool) -> None:
    """Train -> evaluate -> compare -> report -> register (as staging) [-> promote].

    When the registry has no production version yet, the registered version is
    promoted (the first run ends with a model the dashboard serves), unless
    --no-auto-promote.

    Training parameters start from --profile and are overridden by -f files and
    -p pairs, exactly as for `digitops run train`. The candidate is compared with
    the project's other runs and the production model; it is registered only
    when the gate passes.

    \b
    Exit codes: 0 gate passed (and registered), 1 gate failed or a notebook failed,
                2 bad parameters or gate options (checked before training),
                  another error, or cannot judge (Comet or the registry
                  unreadable; nothing registered; see --allow-unjudged),
                128+N stopped by signal N (the run is marked failed).
    """
    from digitops.pipeline import run_pipeline

    parameters = collect_parameters(profile, files, pairs)
    gate = Gate.from_options(metric, floor=floor, tolerance=tolerance, lower_is_better=lower_is_better)
    reap(tracker())
    result = run_pipeline(
        parameters, gate=gate, metric=metric, model_name=model_name, register=not no_register, promote=promote,
        auto_promote=not no_auto_promote, base_url=base_url, log_output=log_output,
        echo=lambda m: click.secho(m, bold=True), allow_unjudged=allow_unjudged, reuse=reuse,
    )

    c = result.comparison
    click.echo("")
    click.secho(c.headline(), fg="green" if c.passed else "red", bold=True)
    for reason in c.reasons:
        click.echo(f"  - {reason}")
    click.echo(f"\nRun {result.run_id}: {result.folder}/")
    for name in ("train.html", "evaluate.html", "model.keras", "metrics.json"):
        click.echo(f"  {result.folder / name}")
    click.echo(f"  report: {result.report['markdown']}  {result.report['html']}")
    if result.version is not None:
        status = "production" if result.promoted else result.version.status
        click.echo(f"Registered {result.version.name} {result.version.version} ({status})")
    elif not no_register:
        click.echo("Not registered: " + ("the candidate could not be judged." if not c.judged else "the gate failed."))
    timings = ", ".join(f"{k} {v:.0f} s" for k, v in result.seconds.items())
    click.echo(f"Stages: {timings}")
    exit_if_unjudged(c)
    if not c.passed:
        raise SystemExit(EXIT_FAILED)


COMMANDS = [pipeline_cmd]
