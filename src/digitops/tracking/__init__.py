"""Experiment tracking: one interface, an embedded SQLite default and a Comet backend."""

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
    """The active tracker: Comet when ``COMET_API_KEY`` is set, else the embedded SQLite store."""
    from digitops import config

    if config.comet_enabled():
        from digitops.comet.tracker import CometTracker

        return CometTracker()
    from digitops.tracking.sqlite import SqliteTracker

    return SqliteTracker()
