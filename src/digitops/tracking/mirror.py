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
from digitops.tracking.base import FINISHED, RunRecord, Tracker
from digitops.tracking.sqlite import SqliteTracker


#: Local tags never mirrored: they change from stage to stage of one run.
LOCAL_ONLY_TAGS = {"stage", "job_id"}
#: Files of the run folder mirrored even when not logged as artifacts (the model, metrics.json
#: with the confusion matrix).
RUN_FOLDER_FILES = ("model.keras", "metrics.json")


def run_files(rec: RunRecord) -> dict[str, str]:
    """Files mirrored for a run: its artifacts plus :data:`RUN_FOLDER_FILES` from its run folder."""
    files = dict(rec.artifacts)
    try:
        folder = config.runs_dir() / rec.run_id
    except ValueError:
        return files
    for name in RUN_FOLDER_FILES:
        path = folder / name
        if name not in files and path.is_file():
            files[name] = str(path.resolve())
    return files


class LocalFirst(Tracker):
    """The embedded store's operations, unchanged; subclasses add ``end_run`` and reads."""

    #: the environment variable holding the owning process' pid (set by subclasses)
    OWNER_ENV = ""
    #: the mirror's name in messages ("Comet", "MLflow")
    SERVICE = ""

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

    def end_run(self, run_id: str, status: str = FINISHED) -> None:
        """End the run locally, then mirror it (:meth:`sync_run`). Never fails on the mirror's service."""
        self.local.end_run(run_id, status)
        if not self.mirrors_here():
            return  # a kernel launched by the runner: the runner mirrors when it ends the run
        try:
            outcome = self.sync_run(run_id)
        except Exception as exc:  # noqa: BLE001 - the run is recorded locally; the service must not fail it
            self.say(
                f"run {run_id}: not mirrored to {self.SERVICE} ({type(exc).__name__}: {exc}); the local record is complete"
            )
            return
        self.say(self.ended_line(outcome))

    def sync_run(self, run_id: str) -> Any:
        """Bring the service up to date with the local run; returns an outcome with ``describe()``."""
        raise NotImplementedError

    def say(self, message: str) -> None:
        """One line on stderr, secrets removed."""
        raise NotImplementedError

    def ended_line(self, outcome: Any) -> str:
        """What :meth:`end_run` says after a mirror."""
        return str(outcome.describe())

    def mirrors_here(self) -> bool:
        """False in a kernel launched by the runner: the runner mirrors when it ends the run."""
        owner = config.env(self.OWNER_ENV)
        return not owner or owner == str(os.getpid())
