"""Experiment tracking: one interface, an embedded SQLite default, a Comet and an MLflow backend."""

from __future__ import annotations

from digitops.tracking.base import (
    ABANDONED,
    FAILED,
    FINISHED,
    RUNNING,
    MetricSummary,
    RunRecord,
    Tracker,
    TrackingError,
)

__all__ = [
    "ABANDONED",
    "FAILED",
    "FINISHED",
    "RUNNING",
    "MetricSummary",
    "RunRecord",
    "Tracker",
    "TrackingError",
    "get_tracker",
]


def get_tracker() -> Tracker:
    """The active tracker for :func:`digitops.config.backend`: Comet, MLflow, else the embedded SQLite store."""
    from digitops import config

    chosen = config.backend()
    if chosen == "comet":
        from digitops.comet.tracker import CometTracker

        return CometTracker()
    if chosen == "mlflow":
        from digitops.mlflow.tracker import MlflowTracker

        return MlflowTracker()
    from digitops.tracking.sqlite import SqliteTracker

    return SqliteTracker()
