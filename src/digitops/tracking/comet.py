"""Comet tracking, re-exported from :mod:`digitops.comet` (where each job has its module)."""

from __future__ import annotations

from digitops.comet.offline import pending_runs, remote_snapshot, stray_archives, sync_pending, upload_archive
from digitops.comet.queries import METRICS_PAGE, _experiments, comet_api, comet_metric_summary, comet_workspace, summarise

_api = comet_api  # the name bench/bench_compare.py imports
from digitops.comet.state import (
    EXPERIMENT_OPTIONS,
    KEY_TAG,
    OWNER_ENV,
    RunState,
    Snapshot,
    SyncOutcome,
    run_files,
    snapshot,
)
from digitops.comet.tracker import CometTracker

__all__ = [
    "EXPERIMENT_OPTIONS", "KEY_TAG", "METRICS_PAGE", "OWNER_ENV", "CometTracker", "RunState", "Snapshot",
    "SyncOutcome", "_api", "_experiments", "comet_metric_summary", "comet_workspace", "pending_runs",
    "remote_snapshot", "run_files", "snapshot", "stray_archives", "summarise", "sync_pending", "upload_archive",
]
