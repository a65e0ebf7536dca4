"""The per-project INDEX RUN: one MLflow run whose tags summarise every finished digitops run.

Why. ``runs/search`` on mlflow server costs about 1.1 ms per run (each row brings
all its params, tags and metrics), so reading 10,000 runs for a comparison takes
12 s. The index run holds one tag per finished run, ``digitops.result.<run_id>.<sha8>``
= compact JSON ``{"s": status, "c": data checksum, "t": start ms, "m": latest
metrics, "r": 1 if its metrics are reused, "id": MLflow run id, "w": write ms}``,
and a comparison reads it with ONE ``runs/search`` (bench/bench_mlflow.py).

Finding it. The index run carries the tag ``digitops.index`` = the project and the
metric ``digitops_index`` = 1. The search filters on the tag (mlflow server honours
it) and orders by the metric (GitLab ignores ``filter`` but orders by a metric with an
INNER JOIN, so only runs having it come back; it splits ``metrics.<name>`` at dots and
keeps no backticks, hence a plain name); the tag is checked again here. A server that
refuses that search (4xx) has no usable index: nothing is written, comparisons read
every run.

Writers never lose each other's entries: each writes its own key (MLflow's set-tag is
an upsert; GitLab keeps a key once, so the key carries a digest of the content, and a
refused re-send counts as written when the key is there). Two writers creating the
index at once may make two index runs: writers use the oldest, readers merge all.

Trust. The index is used only when one of its runs carries ``digitops.index.complete``:
set at creation when the experiment holds no other run, or by :func:`build` (``digitops
sync``) after writing an entry for every finished run a full search returns. The mirror
writes a run's entry after the run is FINISHED in the server; if that write fails the
run stays pending and ``digitops sync`` writes it. Otherwise (no index, not complete, an
entry too large) comparisons use the full paged search: never a smaller history.

A run deleted in the server's UI keeps its entry (GitLab's subset cannot delete a tag):
``digitops sync --rebuild-index`` (:func:`rebuild`) replaces the index with one built from
the runs the server still has.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
import time
from typing import TYPE_CHECKING, Any, Iterable

from digitops.mlflow.rest import MlflowRefused, MlflowRest
from digitops.mlflow.state import CHECKSUM_TAG, RUN_TAG, Mirror
from digitops.tracking.base import FINISHED, METRICS_REUSED_FROM, RunRecord, TrackingError

if TYPE_CHECKING:
    from digitops.mlflow.tracker import MlflowTracker

INDEX_TAG = "digitops.index"
#: what GitLab can find the index run by (see the module docstring)
INDEX_METRIC = "digitops_index"
COMPLETE_TAG = "digitops.index.complete"
ENTRY_PREFIX = "digitops.result."
INDEX_NAME = "digitops-index"
#: GitLab keeps tag values to 5,000 characters (mlflow server 8,000)
VALUE_MAX = 5000
#: tags per runs/log-batch (MLflow's limit)
BATCH = 100
_SAFE = re.compile(r"^[A-Za-z0-9_.:+ -]*$")


def _tags(run: dict[str, Any]) -> dict[str, str]:
    return {t.get("key"): t.get("value") for t in (run.get("data") or {}).get("tags") or []}


def _entry(status: str, checksum: str | None, start: int, metrics: dict[str, float], reused: bool, mlflow_id: str) -> tuple[str, str]:
    """(key suffix digest, JSON value); an entry too large for a tag says so and holds no metrics."""
    body = {"s": status, "c": checksum, "t": int(start), "m": metrics, "id": mlflow_id}
    if reused:
        body["r"] = 1
    digest = hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()[:8]
    value = json.dumps({**body, "w": int(time.time() * 1000)}, separators=(",", ":"), sort_keys=True)
    if len(value) > VALUE_MAX:
        value = json.dumps({"s": status, "id": mlflow_id, "x": 1, "w": int(time.time() * 1000)})
    return digest, value


def entry_of(rec: RunRecord, target: Mirror, start: int, mlflow_id: str) -> tuple[str, str] | None:
    """(tag key, value) of a finished run's entry; None for a run that is not finished."""
    if rec.status != FINISHED:
        return None
    # MLflow's latest value of a key: the last finite epoch, or the final logged after it.
    last = {k: [x for x in v if math.isfinite(x)] for k, v in target.history.items()}
    metrics = {k: v[-1] for k, v in last.items() if v}
    metrics.update(target.metrics)
    digest, value = _entry(FINISHED, rec.data_checksum, start, metrics, bool(rec.tags.get(METRICS_REUSED_FROM)), mlflow_id)
    return f"{ENTRY_PREFIX}{rec.run_id}.{digest}", value


def _entry_of_row(run: dict[str, Any]) -> tuple[str, str] | None:
    """The entry of a ``runs/search`` row of a finished digitops run (what :func:`build` writes)."""
    from digitops.mlflow.queries import _metrics

    tags, info = _tags(run), run.get("info") or {}
    run_id = tags.get(RUN_TAG)
    if not run_id or info.get("status") != "FINISHED":  # digitops.status keeps its first value on GitLab
        return None
    digest, value = _entry(
        FINISHED, tags.get(CHECKSUM_TAG), int(info.get("start_time") or 0), _metrics(run),
        bool(tags.get(METRICS_REUSED_FROM)), str(info.get("run_id")),
    )
    return f"{ENTRY_PREFIX}{run_id}.{digest}", value


class Unsupported(TrackingError):
    """The server refuses the search that finds the index run: no index there."""


def index_runs(client: MlflowRest, experiment_id: str, project: str) -> list[dict[str, Any]]:
    """The project's index runs (with their tags), oldest first; [] when the project name cannot be filtered on."""
    if not _SAFE.match(project):
        return []
    try:
        runs = list(client.search_runs(
            # Every page: an entry in a run beyond the first page would otherwise be missed.
            experiment_id, f"tags.`{INDEX_TAG}` = '{project}'", order_by=[f"metrics.{INDEX_METRIC} DESC"], page_size=20,
        ))
    except MlflowRefused as exc:
        if exc.error_code == "RESOURCE_DOES_NOT_EXIST":
            raise
        raise Unsupported(str(exc)) from exc
    found = [
        r
        for r in runs
        if _tags(r).get(INDEX_TAG) == project and (r.get("info") or {}).get("lifecycle_stage", "active") == "active"
    ]
    found.sort(key=lambda r: (int(r["info"].get("start_time") or 0), str(r["info"]["run_id"])))
    return found


def ensure(client: MlflowRest, experiment_id: str, project: str, self_run: str | None = None) -> str:
    """The MLflow run id of the project's index (the oldest), created when there is none. Race-safe.

    A new index is complete from birth only when the experiment holds nothing but ``self_run``
    (the run being mirrored) and index runs; otherwise :func:`build` must fill it first.
    """
    found = index_runs(client, experiment_id, project)
    if found:
        return str(found[0]["info"]["run_id"])
    if not _SAFE.match(project):
        raise TrackingError(f"project name {project!r} cannot be filtered on: no index")
    # Conservative (GitLab ignores filters): any other run at all means history the index lacks.
    page = client.call("POST", "runs/search", {"experiment_ids": [experiment_id], "max_results": 5})
    others = [r for r in page.get("runs") or [] if INDEX_TAG not in _tags(r) and _tags(r).get(RUN_TAG) != self_run]
    empty = not others and not page.get("next_page_token")
    created = _create(client, experiment_id, project, complete=empty)
    found = index_runs(client, experiment_id, project)  # somebody else may have created one too: the oldest wins
    return str(found[0]["info"]["run_id"]) if found else created


def _create(client: MlflowRest, experiment_id: str, project: str, *, complete: bool) -> str:
    """A new index run (marked complete only when the caller knows it is); its MLflow run id."""
    now = int(time.time() * 1000)
    tags = [{"key": INDEX_TAG, "value": project}] + ([{"key": COMPLETE_TAG, "value": str(now)}] if complete else [])
    created = client.call(
        "POST", "runs/create", {"experiment_id": experiment_id, "start_time": now, "run_name": INDEX_NAME, "tags": tags}
    )["run"]["info"]["run_id"]
    # The metric is what GitLab can find it by (see the module docstring).
    client.call("POST", "runs/log-batch", {"run_id": created, "metrics": [{"key": INDEX_METRIC, "value": 1.0, "timestamp": now, "step": 0}]})
    return str(created)


def rebuild(tracker: "MlflowTracker", project: str) -> str:
    """Replace the project's index with one built from the runs the server still has (``sync --rebuild-index``).

    For runs deleted in the server's UI, whose entries stay (a tag cannot be deleted in
    GitLab's subset). Order matters to concurrent writers: the new index run is created (not
    complete) before the old ones are deleted, so a writer finds one or the other; a writer
    whose entry went to a deleted index finished its run before that, so the full search that
    fills the new index finds it. Until the new index is complete, comparisons read every run.
    """
    client = tracker.client
    try:
        eid = tracker.experiment_id(project, create=False)
    except MlflowRefused as exc:
        if exc.error_code == "RESOURCE_DOES_NOT_EXIST":
            return f"index of {project}: no experiment yet, nothing to rebuild"
        raise
    old = [str(r["info"]["run_id"]) for r in index_runs(client, eid, project)]
    _create(client, eid, project, complete=False)
    for run_id in old:
        client.call("POST", "runs/delete", {"run_id": run_id})
    built = build(tracker, project)
    return f"{built}; {len(old)} old index run(s) deleted"


def write_entry(client: MlflowRest, experiment_id: str, project: str, run_id: str, key: str, value: str) -> str:
    """Write one run's entry into the project's index (created if missing); returns the index run id."""
    target = ensure(client, experiment_id, project, self_run=run_id)
    _set_once(client, target, key, value)
    return target


def _set_once(client: MlflowRest, run: str, key: str, value: str) -> None:
    """runs/set-tag; GitLab refuses a key set twice (a re-send after a lost answer): written if it is there."""
    try:
        client.call("POST", "runs/set-tag", {"run_id": run, "key": key, "value": value})
    except MlflowRefused:
        if key not in _tags(client.call("GET", "runs/get", {"run_id": run}).get("run") or {}):
            raise


def read(client: MlflowRest, experiment_id: str, project: str) -> dict[str, dict[str, Any]] | None:
    """Run id -> newest entry over every index run; None when no trusted index (use the full search)."""
    runs = index_runs(client, experiment_id, project)
    if not any(COMPLETE_TAG in _tags(r) for r in runs):
        return None
    newest: dict[str, tuple[int, str, dict[str, Any]]] = {}
    for run in runs:
        for key, value in _tags(run).items():
            if not key.startswith(ENTRY_PREFIX):
                continue
            run_id = key[len(ENTRY_PREFIX):].rpartition(".")[0]
            try:
                entry = json.loads(value)
            except ValueError:
                return None  # a damaged entry (edited by hand?): only the full search can be trusted
            if not isinstance(entry, dict) or entry.get("x"):
                return None  # too large for a tag: only the full search knows its metrics
            # A run re-ended (evaluate after train) has one entry per content: the last written counts.
            mine = (int(entry.get("w") or 0), key, entry)
            if run_id not in newest or mine[:2] > newest[run_id][:2]:
                newest[run_id] = mine
    return {run_id: entry for run_id, (_, _, entry) in newest.items()}


def rows(
    tracker: "MlflowTracker", project: str, excluded: set[str], data_checksum: str | None
) -> list[tuple[str, int, dict[str, float]]] | None:
    """What :func:`digitops.mlflow.queries._finished_rows` returns, from the index; None when untrusted."""
    try:
        eid = tracker.experiment_id(project, create=False)
    except MlflowRefused as exc:
        if exc.error_code == "RESOURCE_DOES_NOT_EXIST":
            return None  # the full search says "no runs" the same way
        raise
    try:
        entries = read(tracker.client, eid, project)
    except Unsupported:
        return None  # this server cannot find an index: the full search answers
    if entries is None:
        return None
    out = []
    for run_id, e in entries.items():
        if run_id in excluded or e.get("s") != FINISHED or e.get("r"):
            continue
        if data_checksum is not None and e.get("c") != data_checksum:
            continue
        metrics = {k: float(v) for k, v in (e.get("m") or {}).items() if isinstance(v, (int, float))}
        out.append((run_id, int(e.get("t") or 0), metrics))
    return out


def build(tracker: "MlflowTracker", project: str) -> str:
    """Make the project's index complete (``digitops sync``): entries for every finished run, then the mark.

    Idempotent: a complete index is left alone; an interrupted build is resumed (an entry
    written twice is the same key). Returns one line to print ("" when there was nothing to do).
    """
    from digitops.mlflow.queries import PAGE, finished_filter

    client = tracker.client
    try:
        eid = tracker.experiment_id(project, create=False)
    except MlflowRefused as exc:
        if exc.error_code == "RESOURCE_DOES_NOT_EXIST":
            return ""  # no experiment yet: its first run makes a complete index
        raise
    target = ensure(client, eid, project)
    runs = index_runs(client, eid, project)
    if any(COMPLETE_TAG in _tags(r) for r in runs):
        return ""
    have = {k for r in runs for k in _tags(r) if k.startswith(ENTRY_PREFIX)}
    have_ids = {k[len(ENTRY_PREFIX):].rpartition(".")[0] for k in have}
    missing = []
    for run in client.search_runs(eid, finished_filter(), page_size=PAGE):
        entry = _entry_of_row(run)
        if entry is not None and entry[0][len(ENTRY_PREFIX):].rpartition(".")[0] not in have_ids:
            missing.append(entry)
    for chunk in _chunks(missing, BATCH):
        client.call("POST", "runs/log-batch", {"run_id": target, "tags": [{"key": k, "value": v} for k, v in chunk]})
    _set_once(client, target, COMPLETE_TAG, str(int(time.time() * 1000)))
    return f"index of {project}: built ({len(missing)} entr{'y' if len(missing) == 1 else 'ies'} written)"


def _chunks(items: list[Any], size: int) -> Iterable[list[Any]]:
    for i in range(0, len(items), size):
        yield items[i: i + size]
