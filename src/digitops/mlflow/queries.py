"""Reads for comparisons and listings from the MLflow server: the index run, else filtered and paged.

:func:`metric_summary` reads the project's index run (:mod:`digitops.mlflow.index`:
one tag per finished run, ONE ``runs/search``) when it is complete. Otherwise it
asks ``runs/search`` for the experiment's finished digitops runs
(``attributes.status``, ``tags.`digitops.data_checksum```, the excluded run ids; never
``digitops.status``: GitLab's tags are create-only, so it keeps the first status mirrored) in pages of :data:`PAGE` runs, so its cost grows with pages,
not with runs; each row carries the run's latest metric values, so no request is
made per run. Every condition is checked again on the rows (a server that ignores
part of a filter must not widen the history). Any failure raises
:class:`TrackingError`: a partial history is no history (fail closed). Listings
skip the index run (it has no ``digitops.*`` run tags, so the finished filters never match it).
"""

from __future__ import annotations

import re
import time
from contextlib import contextmanager
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any, Iterable, Iterator

from digitops.errors import ConfigError
from digitops.mlflow.index import INDEX_TAG
from digitops.mlflow.rest import MlflowRefused
from digitops.mlflow.state import CHECKSUM_TAG, COMMIT_TAG, FINGERPRINT_TAG, RUN_TAG, STATUS, STATUS_TAG
from digitops.tracking.base import METRICS_REUSED_FROM, STATUSES, MetricSummary, RunRecord, TrackingError, summarise

if TYPE_CHECKING:
    from digitops.mlflow.tracker import MlflowTracker

#: runs per ``runs/search`` request
PAGE = 1000
_PLAIN = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_SAFE = re.compile(r"^[A-Za-z0-9_.:+-]*$")


def _key(prefix: str, name: str) -> str:
    return f"{prefix}.{name}" if _PLAIN.match(name) else f"{prefix}.`{name}`"


def _tags(run: dict[str, Any]) -> dict[str, str]:
    return {t.get("key"): t.get("value") for t in (run.get("data") or {}).get("tags") or []}


def _metrics(run: dict[str, Any]) -> dict[str, float]:
    out = {}
    for m in (run.get("data") or {}).get("metrics") or []:
        try:
            out[m["key"]] = float(m["value"])
        except (KeyError, TypeError, ValueError):
            continue
    return out


def _iso(ms: Any) -> str | None:
    if not ms:
        return None
    return datetime.fromtimestamp(int(ms) / 1000, tz=timezone.utc).isoformat(timespec="milliseconds")


def finished_filter(data_checksum: str | None = None, exclude: Iterable[str] = ()) -> str:
    """The ``runs/search`` filter for finished digitops runs (on ``data_checksum``, less ``exclude``)."""
    # The run's own status only: digitops.status keeps its first value on GitLab (create-only tags).
    parts = ["attributes.status = 'FINISHED'"]
    if data_checksum is not None and _SAFE.match(data_checksum):
        parts.append(f"{_key('tags', CHECKSUM_TAG)} = '{data_checksum}'")
    parts += [f"{_key('tags', RUN_TAG)} != '{e}'" for e in exclude if _SAFE.match(e)]
    return " and ".join(parts)


def _runs(tracker: "MlflowTracker", project: str, filter_string: str, **kwargs: Any) -> Iterator[dict[str, Any]]:
    """The experiment's runs matching ``filter_string``; nothing when the experiment does not exist."""
    try:
        eid = tracker.experiment_id(project, create=False)
    except MlflowRefused as exc:
        if exc.error_code == "RESOURCE_DOES_NOT_EXIST":
            return  # no experiment yet: no runs, a true answer
        raise
    yield from tracker.client.search_runs(eid, filter_string, page_size=PAGE, **kwargs)


#: seconds a filtered read serves the other metrics of the same comparison (compare asks for four)
MEMO_S = 10.0


def _finished_rows(
    tracker: "MlflowTracker", project: str, excluded: set[str], data_checksum: str | None
) -> list[tuple[str, int, dict[str, float]]]:
    """(run id, start time, latest metrics) of the finished digitops runs: one paged, filtered read.

    Kept on the tracker for :data:`MEMO_S` seconds, so one comparison reads the runs once,
    not once per metric (the tracker forgets it whenever it sends a run).
    """
    key = (project, data_checksum, tuple(sorted(excluded)))
    memo = tracker.memo.get(key)
    if memo is not None and time.monotonic() - memo[0] < MEMO_S:
        return memo[1]
    from digitops.mlflow import index

    found = index.rows(tracker, project, excluded, data_checksum)  # one request; None: not trusted
    if found is not None:
        tracker.memo[key] = (time.monotonic(), found)
        return found
    rows = []
    for run in _runs(tracker, project, finished_filter(data_checksum, sorted(excluded))):
        tags, info = _tags(run), run.get("info") or {}
        run_id = tags.get(RUN_TAG)
        if (
            not run_id
            or run_id in excluded
            or info.get("status") != "FINISHED"
            or (data_checksum is not None and tags.get(CHECKSUM_TAG) != data_checksum)
            or tags.get(METRICS_REUSED_FROM)  # another run's metrics: counted once, as that run
        ):
            continue
        rows.append((run_id, int(info.get("start_time") or 0), _metrics(run)))
    tracker.memo[key] = (time.monotonic(), rows)
    return rows


@contextmanager
def _reading(project: str) -> Iterator[None]:
    """What goes wrong reading the experiment, as one :class:`TrackingError` naming it.

    A configuration error (no token, no URI) stays what it is: set up wrong is not "unreadable",
    so nothing falls back on it (``runs list`` falls back to local runs on a TrackingError).
    """
    try:
        yield
    except ConfigError:
        raise
    except TrackingError as exc:
        raise TrackingError(f"the MLflow experiment {project!r} cannot be read: {exc}") from exc
    except Exception as exc:  # noqa: BLE001 - a malformed answer is an unreadable history
        raise TrackingError(f"the MLflow experiment {project!r} cannot be read: {type(exc).__name__}: {exc}") from exc


def metric_summary(
    tracker: "MlflowTracker",
    metric: str,
    *,
    project: str,
    exclude: Iterable[str] = (),
    data_checksum: str | None = None,
    higher_is_better: bool = True,
) -> MetricSummary:
    """:meth:`Tracker.metric_summary` over the MLflow experiment ``project`` (see the module docstring)."""
    with _reading(project):
        rows = _finished_rows(tracker, project, {str(e) for e in exclude}, data_checksum)
    found = [
        (metrics[metric], run_id, start)
        for run_id, start, metrics in rows
        if metric in metrics and metrics[metric] == metrics[metric]  # NaN never counts
    ]
    return summarise(metric, found, higher_is_better)


def record_of(run: dict[str, Any], project: str, url: str | None = None) -> RunRecord:
    """A :class:`RunRecord` from an MLflow run (latest metric values; no per-step history in GitLab's API)."""
    info, data, tags = run.get("info") or {}, run.get("data") or {}, _tags(run)
    back = {v: k for k, v in STATUS.items()}
    # The run's own status first: runs/update changes it, while GitLab keeps a tag's first value.
    status = back.get(str(info.get("status"))) or tags.get(STATUS_TAG) or "running"
    return RunRecord(
        run_id=tags.get(RUN_TAG) or str(info.get("run_id")),
        project=project,
        name=str(info.get("run_name") or ""),
        status=status if status in STATUSES else "running",
        params={p["key"]: p.get("value") for p in data.get("params") or [] if "key" in p},
        tags={k: v for k, v in tags.items() if not k.startswith("mlflow.")},
        metrics=_metrics(run),
        git_commit=tags.get(COMMIT_TAG),
        data_checksum=tags.get(CHECKSUM_TAG),
        started_at=_iso(info.get("start_time")) or "",
        ended_at=_iso(info.get("end_time")),
        url=url,
    )


def list_runs(
    tracker: "MlflowTracker", project: str, *, status: str | None = None, limit: int | None = None
) -> list[RunRecord]:
    """The experiment's digitops runs, newest first (``status`` filtered server-side)."""
    from digitops.mlflow.tracker import run_url

    if status is not None and status not in STATUSES:
        raise TrackingError(f"unknown status {status!r}; choose one of: {', '.join(STATUSES)}")
    # A run's own status when it has one (digitops.status keeps its first value on GitLab).
    parts = [f"attributes.status = '{STATUS[status]}'"] if status in STATUS else (
        [f"{_key('tags', STATUS_TAG)} = '{status}'"] if status else [])
    out: list[RunRecord] = []
    with _reading(project):
        for run in _runs(
            tracker, project, " and ".join(parts), order_by=["attributes.start_time DESC"], max_results=limit
        ):
            info = run.get("info") or {}
            if INDEX_TAG in _tags(run):
                continue  # the index run (digitops.mlflow.index) is no digitops run
            rec = record_of(run, project, run_url(tracker.client.uri, str(info.get("experiment_id")), str(info.get("run_id"))))
            if status is None or rec.status == status:
                out.append(rec)
    return out


def find_by_tag(
    tracker: "MlflowTracker", project: str, key: str, value: str, *, finished_only: bool = True
) -> list[RunRecord]:
    """The experiment's runs whose tag ``key`` is ``value`` (finished ones by default), newest first.

    One filtered ``runs/search`` (pages only if many match); the tag is checked again on each row.
    """
    from digitops.mlflow.tracker import run_url

    if not _SAFE.match(value):
        raise TrackingError(f"cannot search for the tag value {value!r}: letters, digits and ._:+- only")
    parts = [f"{_key('tags', key)} = '{value}'"]
    if finished_only:
        parts = finished_filter().split(" and ") + parts
    out = []
    with _reading(project):
        for run in _runs(tracker, project, " and ".join(parts), order_by=["attributes.start_time DESC"]):
            tags, info = _tags(run), run.get("info") or {}
            if tags.get(key) != value or (finished_only and info.get("status") != "FINISHED"):
                continue
            url = run_url(tracker.client.uri, str(info.get("experiment_id")), str(info.get("run_id")))
            out.append(record_of(run, project, url))
    return out


def find_reusable(
    tracker: "MlflowTracker", project: str, fingerprint: str, *, tag: str = FINGERPRINT_TAG
) -> RunRecord | None:
    """The newest finished run whose ``tag`` (``digitops.fingerprint``, ``digitops.eval_fingerprint``) is ``fingerprint``."""
    found = find_by_tag(tracker, project, tag, fingerprint)
    return found[0] if found else None
