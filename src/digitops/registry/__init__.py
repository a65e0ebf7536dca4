"""Model registry: one interface; embedded SQLite (default), Comet and MLflow (GitLab's registry) backends."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Callable

from digitops.registry.base import (
    ARCHIVED,
    NONE,
    PRODUCTION,
    STAGING,
    ModelVersion,
    Registry,
    RegistryError,
)

__all__ = [
    "ARCHIVED",
    "NONE",
    "PRODUCTION",
    "STAGING",
    "ModelVersion",
    "Registry",
    "RegistryError",
    "get_registry",
    "register_run",
]


def register_run(
    run_id: str,
    *,
    name: str | None = None,
    model_path: str | os.PathLike | None = None,
    status: str = STAGING,
    bump: str = "minor",
    warn: Callable[[str], None] = lambda message: None,
) -> ModelVersion:
    """Register run ``run_id``'s model with its final metrics, in the active registry.

    The model is ``model_path``, else the run folder's ``model.keras``, else the
    run's logged ``model.keras``. A failed or abandoned run is refused; a run the
    tracker does not know is registered without metrics only with ``model_path``.
    """
    from digitops import config
    from digitops.errors import NotFound, TrackingError
    from digitops.tracking import ABANDONED, FAILED, get_tracker

    metrics: dict[str, float] = {}
    artifacts: dict[str, str] = {}
    try:
        run = get_tracker().get_run(run_id)
    except TrackingError as exc:
        if model_path is None:
            raise TrackingError(f"{exc}; pass --model to register a file without a tracked run") from exc
        warn(f"run {run_id!r} is not tracked here; registering without metrics")
    else:
        if run.status in (FAILED, ABANDONED):
            raise RegistryError(f"run {run_id!r} {run.status}; refusing to register its model")
        metrics, artifacts = dict(run.metrics), dict(run.artifacts)
    if model_path is None:
        candidate = config.runs_dir() / run_id / "model.keras"
        if candidate.is_file():
            model_path = candidate
        elif "model.keras" in artifacts and Path(artifacts["model.keras"]).is_file():
            model_path = Path(artifacts["model.keras"])
        else:
            raise NotFound(
                f"no model file for run {run_id!r}: looked for {candidate} and the run's logged model.keras; "
                "pass --model PATH"
            )
    return get_registry().register(
        name or config.model_name(), model_path, run_id, metrics=metrics, status=status, bump=bump
    )


def get_registry() -> Registry:
    """The active registry for :func:`digitops.config.backend`: Comet's, MLflow's (GitLab's) or the embedded SQLite one."""
    from digitops import config

    backend = config.backend()
    if backend == "comet":
        from digitops.comet.registry import CometRegistry

        return CometRegistry()
    if backend == "mlflow":
        from digitops.mlflow.registry import MlflowRegistry

        return MlflowRegistry()
    from digitops.registry.sqlite import SqliteRegistry

    return SqliteRegistry()
