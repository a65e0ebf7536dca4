"""One run end to end: train -> evaluate -> compare -> report -> register (-> promote).

The same stages CI runs as separate jobs, chained in one process for a
laptop and for the README's main command. Runs and the registry persist
between invocations, so each pipeline is compared with the ones before it.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from digitops import config, runner
from digitops.compare import Comparison, Gate, compare
from digitops.registry import PRODUCTION, STAGING, ModelVersion, Registry, get_registry
from digitops.registry.sqlite import SqliteRegistry
from digitops.report import write_report
from digitops.tracking import get_tracker

#: Final metrics copied onto a registered version (the dashboard's model card shows them).
VERSION_METRICS = ("test_accuracy", "test_loss", "val_accuracy", "train_seconds")


@dataclass
class PipelineResult:
    """Where a pipeline run left everything."""

    run_id: str
    folder: Path
    comparison: Comparison
    report: dict[str, Path]
    version: ModelVersion | None = None
    promoted: bool = False
    #: promoted only because the registry had no production version yet
    auto_promoted: bool = False
    seconds: dict[str, float] = field(default_factory=dict)


def run_pipeline(
    train_params: dict[str, Any],
    *,
    evaluate_params: dict[str, Any] | None = None,
    gate: Gate | None = None,
    metric: str = "test_accuracy",
    model_name: str | None = None,
    register: bool = True,
    promote: bool = False,
    auto_promote: bool = True,
    base_url: str | None = None,
    progress: bool = True,
    log_output: bool = False,
    echo: Callable[[str], None] = print,
    allow_unjudged: bool | None = None,
    reuse: bool = False,
) -> PipelineResult:
    """Run every stage; raise :class:`runner.StageFailed` if a notebook fails.

    Registers the model as ``staging`` only when the gate passes, and with
    ``promote`` makes that version production. With ``auto_promote`` (the
    default) an embedded registry without any production version gets this one
    as production, so the first run on a laptop ends with a model to serve;
    CI's ``register`` job uses ``digitops registry register`` and never does this.
    A candidate that could not be judged (``comparison.judged`` false: Comet or the
    registry unreadable) is never registered. ``model_name`` defaults to ``$DIGITOPS_MODEL_NAME``.

    The gate is checked against ``metric`` and the training parameters against the
    notebook before any training starts (:class:`~digitops.errors.UsageError`).
    With ``reuse``, stages whose inputs are unchanged since a finished run reuse it (:mod:`digitops.reuse`).
    """
    # Long: the stages in order, each timed; splitting it would scatter the one place that says what a pipeline does.
    gate = gate or Gate.from_env()
    gate.check(metric)
    runner.check_parameters("train", train_params)
    model_name = model_name or config.model_name()
    seconds: dict[str, float] = {}

    def timed(stage: str, fn: Callable[[], Any]) -> Any:
        started = time.perf_counter()
        echo(f"==> {stage}")
        out = fn()
        seconds[stage] = time.perf_counter() - started
        return out

    # The notebooks' trackers read the model name (Comet logs the model under it).
    kernel_env = {"DIGITOPS_MODEL_NAME": model_name}
    trained = timed(
        "train",
        lambda: runner.execute("train", train_params, progress=progress, log_output=log_output, kernel_env=kernel_env,
                               reuse=reuse),
    )
    run_id, folder = trained.run_id, trained.folder
    if trained.reused_from:
        echo(f"train: {trained.reuse_reason}")
    evaluated = timed(
        "evaluate",
        lambda: runner.execute(
            "evaluate", dict(evaluate_params or {}), run_id=run_id, progress=progress, log_output=log_output,
            kernel_env=kernel_env, reuse=reuse,
        ),
    )
    if evaluated.reused_from:
        echo(f"evaluate: {evaluated.reuse_reason}")
    tracker, registry = get_tracker(), get_registry()
    comparison = timed(
        "compare",
        lambda: compare(
            run_id, tracker=tracker, registry=registry, metric=metric, gate=gate, model_name=model_name,
            allow_unjudged=allow_unjudged,
        ),
    )
    report = timed(
        "report",
        lambda: write_report(
            run_id, folder / "report", tracker=tracker, registry=registry, comparison=comparison, base_url=base_url,
            model_name=model_name,
        ),
    )
    result = PipelineResult(run_id, folder, comparison, report, seconds=seconds)
    if register and comparison.passed:
        metrics = tracker.get_run(run_id).metrics
        result.version = timed(
            "register",
            lambda: registry.register(
                model_name,
                folder / "model.keras",
                run_id,
                metrics={k: metrics[k] for k in VERSION_METRICS if k in metrics},
                status=STAGING,
            ),
        )
        auto = auto_promote and not promote and _production_slot_empty(registry, model_name)
        if promote or auto:
            result.version = registry.set_status(model_name, result.version.version, PRODUCTION)
            result.promoted, result.auto_promoted = True, auto
            if auto:
                echo(f"no production model yet: {result.version.version} promoted")
    return result


def _production_slot_empty(registry: Registry, model_name: str) -> bool:
    """True only when the embedded registry has no production version.

    Comet's registry is shared by a team and, while Comet is unreachable,
    answers from this machine's fallback copy: an empty answer there does not
    prove the team has no production model, so it is never filled automatically.
    """
    if not isinstance(registry, SqliteRegistry):
        return False
    return registry.get_by_status(model_name, PRODUCTION) is None
