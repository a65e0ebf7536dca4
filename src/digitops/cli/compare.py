"""``digitops compare``: judge a run against the project's runs and the production model (and the gate options)."""

from __future__ import annotations

import json
import sys
from typing import Any, Callable

import click

from digitops.cli.runs import reap, tracker
from digitops.compare import DEFAULT_METRIC, ENV_ALLOW_UNJUDGED, ENV_FLOOR, ENV_METRIC, ENV_TOLERANCE, Comparison, Gate
from digitops.errors import EXIT_FAILED, EXIT_OK, CannotJudge


def gate_options(fn: Callable[..., Any]) -> Callable[..., Any]:
    """The options shared by ``compare`` and ``report`` that configure the gate."""
    options = [
        click.option(
            "--metric",
            envvar=ENV_METRIC,
            default=DEFAULT_METRIC,
            show_default=True,
            help=f"Final metric to judge (env {ENV_METRIC}).",
        ),
        click.option(
            "--floor",
            help=f"Absolute minimum (a fraction for accuracy: 0.9 = 90 %), 'none' to disable. "
            f"Default 0.9 or ${ENV_FLOOR}.",
        ),
        click.option(
            "--tolerance",
            type=float,
            help=f"How far below production the candidate may be (0.002 = 0.2 points). "
            f"Default 0.002 or ${ENV_TOLERANCE}.",
        ),
        click.option(
            "--lower-is-better", is_flag=True, help="The metric improves downwards (a loss): the floor is a ceiling."
        ),
        click.option("--model-name", help="Registered model whose production version is the baseline."),
        click.option(
            "--allow-unjudged",
            is_flag=True,
            envvar=ENV_ALLOW_UNJUDGED,
            help="When Comet (or the registry) cannot be read, judge against the local store instead of "
            f"refusing (exit 2). You accept the risk of passing a worse model. Env {ENV_ALLOW_UNJUDGED}=1.",
        ),
    ]
    for option in reversed(options):
        fn = option(fn)
    return fn


def compare_run(run_id: str, metric: str, gate: Gate, model_name: str | None, allow_unjudged: bool) -> Comparison:
    from digitops import compare as compare_mod

    reap(tracker())
    return compare_mod.compare(run_id, metric=metric, gate=gate, model_name=model_name, allow_unjudged=allow_unjudged)


def exit_if_unjudged(c: Comparison) -> None:
    """Raise :class:`CannotJudge` (exit 2, ``cannot judge: <why>``) when the gate could not see what it needs."""
    if not c.judged:
        raise CannotJudge(
            f"cannot judge: {c.unjudged_reason}\n"
            f"  (the candidate does not pass; --allow-unjudged / {ENV_ALLOW_UNJUDGED}=1 accepts the risk)"
        )


def _print_comparison(c: Comparison) -> None:
    click.echo(c.headline())
    click.echo(f"gate: {c.gate.describe(c.metric)}")
    for reason in c.reasons:
        click.echo(f"  - {reason}")


@click.command("compare")
@click.argument("run_id", metavar="RUN")
@gate_options
@click.option("--json", "as_json", is_flag=True, help="Print the comparison as JSON.")
def compare_cmd(
    run_id: str,
    metric: str,
    floor: str | None,
    tolerance: float | None,
    lower_is_better: bool,
    model_name: str | None,
    allow_unjudged: bool,
    as_json: bool,
) -> None:
    """Compare RUN with the project's other finished runs and the production model.

    The candidate passes when its metric is at least the floor and at least
    the production version's value minus the tolerance (only the floor
    counts while there is no production version). The project mean and best
    (other finished runs on the same dataset) are shown, not gated.

    \b
    Exit status:
      0  the candidate passes the gate
      1  the candidate fails the gate
      2  error: unknown run, missing metric, bad option, or cannot judge
         (Comet / the registry could not be read; see --allow-unjudged)
    """
    gate = Gate.from_options(metric, floor=floor, tolerance=tolerance, lower_is_better=lower_is_better)
    c = compare_run(run_id, metric, gate, model_name, allow_unjudged)
    if as_json:
        click.echo(json.dumps(c.to_dict(), indent=2, default=str))
    elif c.judged:
        _print_comparison(c)
    exit_if_unjudged(c)
    sys.exit(EXIT_OK if c.passed else EXIT_FAILED)


COMMANDS = [compare_cmd]
