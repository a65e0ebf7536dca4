"""The tracker interface shared by notebooks, the runner and the CLI.

Backends (embedded SQLite, Comet) implement :class:`Tracker`; nothing outside
``digitops.tracking`` knows which one is active.
"""

from __future__ import annotations

import abc
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Iterable

from digitops.errors import TrackingError  # re-exported

RUNNING, FINISHED, FAILED = "running", "finished", "failed"
#: a run left ``running`` by a process that is gone (killed, machine crashed)
ABANDONED = "abandoned"
STATUSES = (RUNNING, FINISHED, FAILED, ABANDONED)
#: tag of a run whose evaluation was reused from another run (:mod:`digitops.reuse`): its final
#: metrics are that run's, so history summaries skip it rather than count one result twice
METRICS_REUSED_FROM = "digitops.eval_reused_from"


@dataclass
class RunRecord:
    """Everything recorded about one run (one train + evaluate of a model)."""

    run_id: str
    project: str
    name: str = ""
    status: str = RUNNING
    params: dict[str, Any] = field(default_factory=dict)
    tags: dict[str, str] = field(default_factory=dict)
    #: final metrics, e.g. ``test_accuracy``
    metrics: dict[str, float] = field(default_factory=dict)
    #: per-epoch metrics, name -> values ordered by step
    history: dict[str, list[float]] = field(default_factory=dict)
    git_commit: str | None = None
    data_checksum: str | None = None
    started_at: str = ""
    ended_at: str | None = None
    #: where a person can look at the run (Comet experiment URL), if anywhere
    url: str | None = None
    #: logical name -> stored path (or URI) of logged files and images
    artifacts: dict[str, str] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class MetricSummary:
    """A metric across a set of runs."""

    metric: str
    count: int
    mean: float | None
    best: float | None
    best_run_id: str | None
    worst: float | None

    @classmethod
    def assemble(
        cls, metric: str, *, count: int, mean: float | None, hi: float | None, lo: float | None,
        best_run_id: str | None, higher_is_better: bool = True,
    ) -> "MetricSummary":
        """The summary every backend returns: best/worst from ``hi``/``lo`` by direction; empty when ``count`` is 0."""
        if not count:
            return cls(metric=metric, count=0, mean=None, best=None, best_run_id=None, worst=None)
        return cls(
            metric=metric, count=count, mean=mean, best=hi if higher_is_better else lo, best_run_id=best_run_id,
            worst=lo if higher_is_better else hi,
        )


def summarise(metric: str, found: list[tuple[float, str, int]], higher_is_better: bool = True) -> MetricSummary:
    """A :class:`MetricSummary` of ``(value, run id, start time)`` triples read from a service (Comet, MLflow).

    Ties for best go to the earliest run, as in the embedded store.
    """
    values = [v for v, _, _ in found]
    ranked = sorted(found, key=lambda t: (-t[0] if higher_is_better else t[0], t[2]))
    return MetricSummary.assemble(
        metric, count=len(found), mean=sum(values) / len(values) if values else None,
        hi=max(values, default=None), lo=min(values, default=None),
        best_run_id=ranked[0][1] if ranked else None, higher_is_better=higher_is_better,
    )


class Tracker(abc.ABC):
    """Records runs and answers questions about them."""

    @abc.abstractmethod
    def start_run(
        self,
        run_id: str,
        *,
        name: str = "",
        params: dict[str, Any] | None = None,
        tags: dict[str, str] | None = None,
        git_commit: str | None = None,
        data_checksum: str | None = None,
        project: str | None = None,
    ) -> RunRecord:
        """Create the run, or resume it (status back to running) when it exists."""

    @abc.abstractmethod
    def log_params(self, run_id: str, params: dict[str, Any]) -> None:
        """Merge ``params`` into the run's parameters."""

    @abc.abstractmethod
    def log_metrics(self, run_id: str, metrics: dict[str, float], step: int | None = None) -> None:
        """With ``step``: one point of per-epoch history each. Without: final metrics."""

    @abc.abstractmethod
    def log_artifact(self, run_id: str, path: str | os.PathLike, name: str | None = None) -> str:
        """Keep a copy of a file (image, HTML, model); returns where it is stored."""

    @abc.abstractmethod
    def set_tags(self, run_id: str, tags: dict[str, str]) -> None:
        """Merge ``tags`` into the run's tags."""

    @abc.abstractmethod
    def end_run(self, run_id: str, status: str = FINISHED) -> None:
        """Close the run as ``finished`` or ``failed``."""

    @abc.abstractmethod
    def get_run(self, run_id: str) -> RunRecord:
        """The run, or :class:`TrackingError` when unknown."""

    @abc.abstractmethod
    def list_runs(
        self, project: str | None = None, status: str | None = None, limit: int | None = None
    ) -> list[RunRecord]:
        """Runs of ``project`` (default: the configured one), newest first."""

    def find_reusable(
        self, fingerprint: str, project: str | None = None, *, tag: str = "digitops.fingerprint"
    ) -> RunRecord | None:
        """The newest ``finished`` run of ``project`` whose ``tag`` equals ``fingerprint``, or None.

        ``tag`` is ``digitops.fingerprint`` (training) or ``digitops.eval_fingerprint``
        (evaluation). Only the match is promised: whether the run's files are still there
        and intact is the caller's check (:mod:`digitops.reuse`). This default reads
        :meth:`list_runs`; stores that can filter on a tag (SQLite, MLflow) override it.
        """
        for run in self.list_runs(project=project, status=FINISHED):
            if run.tags.get(tag) == fingerprint:
                return run
        return None

    @abc.abstractmethod
    def metric_summary(
        self,
        metric: str,
        *,
        project: str | None = None,
        exclude: Iterable[str] = (),
        data_checksum: str | None = None,
        higher_is_better: bool = True,
    ) -> MetricSummary:
        """Mean and best of ``metric`` over the project's finished runs, less ``exclude``.

        Runs tagged :data:`METRICS_REUSED_FROM` do not count: their metrics are another run's.
        """


def artifact_dir_for(root: Path, run_id: str) -> Path:
    """Folder for a run's copied artifacts under an artifacts root."""
    return root / run_id
