"""``digitops run``: execute a stage's notebook (and the options every notebook-running command shares)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from digitops import runs as runs_mod
from digitops.errors import UsageError
from digitops.profiles import collect as collect_parameters


def param_options(func: Any) -> Any:
    """The ``-f``/``-p`` options shared by every command that runs notebooks."""
    func = click.option(
        "-p", "--param", "pairs", type=(str, str), multiple=True, metavar="NAME VALUE",
        help="Set one parameter (repeatable). Values are read as YAML: 3, 0.5, true, cnn.",
    )(func)
    func = click.option(
        "-f", "--params-file", "files", type=click.Path(exists=True, dir_okay=False, path_type=Path),
        multiple=True, help="YAML file of parameters (repeatable; later files win).",
    )(func)
    return func


def run_options(func: Any) -> Any:
    """Options for how a notebook is executed."""
    func = click.option(
        "--force", is_flag=True,
        help="Execute the notebook even when a finished run had the same inputs (default: reuse that run).",
    )(func)
    func = click.option("--timeout", type=int, default=None, help="Seconds allowed per cell (default: none).")(func)
    func = click.option("-v", "--log-output", is_flag=True, help="Stream the notebook's output here.")(func)
    func = click.option(
        "--dotenv", type=click.Path(dir_okay=False, path_type=Path),
        help="Append RUN_ID=... (and <STAGE>_JOB_ID in CI) to this file, for GitLab dotenv reports.",
    )(func)
    return func


def valid_run_id(value: str | None) -> str | None:
    """A click-friendly :func:`digitops.runs.check_run_id`: a usage error (exit 2) for a bad id."""
    from digitops import runs

    if value is None:
        return None
    try:
        return runs.check_run_id(value)
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from None


def execute_stage(stage: str, parameters: dict[str, Any], run_id: str | None, **kwargs: Any) -> Any:
    """Run one stage for the CLI (a failed notebook raises :class:`digitops.runner.StageFailed`: exit 1)."""
    from digitops import runner

    force = kwargs.pop("force", False)
    result = runner.execute(stage, parameters, run_id=run_id, reuse=not force, **kwargs)
    if result.reused_from:
        click.secho(f"{stage}: {result.reuse_reason} (run {result.run_id}, "
                    f"{result.seconds:.1f} s; --force runs the notebook)", fg="green")
    else:
        click.secho(f"{stage} finished in {result.seconds:.1f} s: run {result.run_id}", fg="green")
        click.echo(f"  not reused: {'--force' if force else result.reuse_reason}")
    click.echo(f"  notebook: {result.notebook}\n  html:     {result.html}")
    return result


@click.group("run")
def run_group() -> None:
    """Execute a stage's notebook with papermill into runs/<run-id>/ (+ HTML)."""


@run_group.command("train")
@param_options
@click.option("--profile", type=str, help="Start from a named parameter set: quick, ci or full.")
@click.option("--run-id", type=str, default=None, callback=lambda ctx, param, value: valid_run_id(value),
              help="Use this run id instead of a new one (letters, digits, '.', '_', '-').")
@run_options
def run_train(files: tuple[Path, ...], pairs: tuple[tuple[str, str], ...], profile: str | None,
              run_id: str | None, dotenv: Path | None, log_output: bool, timeout: int | None, force: bool) -> None:
    """Train a model by executing notebooks/train.ipynb.

    \b
    Examples:
      digitops run train -p epochs 3 -p architecture cnn
      digitops run train --profile ci -f my-overrides.yaml
    Parameters are checked against the notebook before any kernel starts
    (see `digitops params notebooks/train.ipynb`). When a finished run had the same
    inputs (notebook code, parameters, digitops, data, Keras/TF versions), its results
    are reused instead of training again; --force trains anyway.
    """
    parameters = collect_parameters(profile, files, pairs)
    result = execute_stage("train", parameters, run_id, log_output=log_output, timeout=timeout, force=force)
    if dotenv:
        runs_mod.write_dotenv(dotenv, result.run_id, "train")


@run_group.command("evaluate")
@click.argument("target", required=False, default="")
@param_options
@run_options
def run_evaluate(target: str, files: tuple[Path, ...], pairs: tuple[tuple[str, str], ...],
                 dotenv: Path | None, log_output: bool, timeout: int | None, force: bool) -> None:
    """Evaluate TARGET (a run id or a .keras file; default: the newest run) on the test set."""
    from digitops import runs

    parameters = collect_parameters(None, files, pairs)
    run_id = None
    if target.endswith(".keras") or Path(target).is_file():
        parameters["model_path"] = str(Path(target))
    elif target:
        run_id = valid_run_id(target)
    else:
        run_id, _, _ = runs.resolve_model()
    if run_id and not (runs.run_dir(run_id) / "model.keras").is_file():
        raise UsageError(f"run {run_id} has no model at {runs.run_dir(run_id) / 'model.keras'}")
    result = execute_stage("evaluate", parameters, run_id, log_output=log_output, timeout=timeout, force=force)
    if dotenv:
        runs_mod.write_dotenv(dotenv, result.run_id, "evaluate")


COMMANDS = [run_group]
