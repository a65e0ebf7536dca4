"""A tracker that records everything in the embedded store first and mirrors ended runs elsewhere.

Shared by the Comet and MLflow backends: every write goes to :attr:`LocalFirst.local`
(a :class:`SqliteTracker`), so the notebook kernel never talks to a service; the
subclass adds the mirror on ``end_run`` and its own reads. ``OWNER_ENV`` names the
variable through which the process that starts a run (the runner) tells the
kernels it launches to leave the mirror to it.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any, Iterable

from digitops import config
from digitops.tracking.base import RunRecord, Tracker
from digitops.tracking.sqlite import SqliteTracker


class LocalFirst(Tracker):
    """The embedded store's operations, unchanged; subclasses add ``end_run`` and reads."""

    #: the environment variable holding the owning process' pid (set by subclasses)
    OWNER_ENV = ""

    def __init__(self, local: SqliteTracker | None = None) -> None:
        self.local = local if local is not None else SqliteTracker()

    @property
    def db_path(self) -> Path:
        """The embedded store's database (where every record lives first)."""
        return self.local.db_path

    def log_params(self, run_id: str, params: dict[str, Any]) -> None:
        self.local.log_params(run_id, params)

    def log_metrics(self, run_id: str, metrics: dict[str, float], step: int | None = None) -> None:
        self.local.log_metrics(run_id, metrics, step)

    def log_artifact(self, run_id: str, path: str | os.PathLike, name: str | None = None) -> str:
        return self.local.log_artifact(run_id, path, name)

    def set_tags(self, run_id: str, tags: dict[str, str]) -> None:
        self.local.set_tags(run_id, tags)

    def set_url(self, run_id: str, url: str | None) -> None:
        self.local.set_url(run_id, url)

    def mark_abandoned(self) -> list[str]:
        return self.local.mark_abandoned()

    def import_runs(self, records: Iterable[RunRecord]) -> int:
        return self.local.import_runs(records)

    def get_run(self, run_id: str) -> RunRecord:
        return self.local.get_run(run_id)

    def start_run(self, run_id: str, **kwargs: Any) -> RunRecord:
        """Create or resume the run locally.

        Outside a notebook kernel the calling process becomes the run's mirror owner
        (:attr:`OWNER_ENV`): the kernels it launches inherit that and leave the mirror
        to it; a notebook run by hand in Jupyter mirrors on its own.
        """
        rec = self.local.start_run(run_id, **kwargs)
        if "ipykernel" not in sys.modules:
            os.environ[self.OWNER_ENV] = str(os.getpid())
        return rec

    def mirrors_here(self) -> bool:
        """False in a kernel launched by the runner: the runner mirrors when it ends the run."""
        owner = config.env(self.OWNER_ENV)
        return not owner or owner == str(os.getpid())
