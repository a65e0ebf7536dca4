"""MLflow tracking: the embedded SQLite store, mirrored into one MLflow run per digitops run.

Like :mod:`digitops.comet.tracker`, every record goes to the local store first
(:attr:`MlflowTracker.local`), so the notebook kernel never opens a connection
and nothing depends on the server while a model trains. When the runner ends a
run, :meth:`MlflowTracker.end_run` mirrors it into one MLflow run (a GitLab
"candidate") in the experiment named after the project (created if missing):
params, per-epoch metrics with their steps and final metrics (``runs/log-batch``
within MLflow's limits), tags (``digitops.run_id``, ``digitops.status``,
``digitops.data_checksum``, the git commit as ``mlflow.source.git.commit``, MR iid
and pipeline id, and ``gitlab.CI_JOB_ID`` in GitLab CI so GitLab links the job),
the executed notebooks' HTML, images, ``metrics.json`` and ``model.keras`` at the
artifact root (GitLab keeps no folders), then the status and end time (``runs/update``).

One MLflow run per digitops run, whatever happens: the MLflow run is found by its
``digitops.run_id`` tag (set at creation) before one is created, and a create
answered with an error is looked up again before giving up. A small state file
per run (``$DIGITOPS_HOME/mlflow/runs/<run_id>.json``) remembers the MLflow run and
what it holds, so a second ``end_run`` (``run evaluate`` after ``run train``) sends
only what changed. When the server is unreachable or fails mid-way, the local
record is complete, the run is marked pending (one warning line, the command's
exit status unchanged) and :func:`sync_pending` (``digitops sync``) later reads
back what the server holds and sends what it lacks.

Once a finished run is FINISHED in the server, its entry goes into the project's
index run (:mod:`digitops.mlflow.index`; a failure there leaves the run pending), and
``digitops sync`` makes the index complete for runs mirrored before it existed.
Reads for comparisons go to the server (:mod:`digitops.mlflow.queries`) and fail
closed with :class:`TrackingError`.
"""

from __future__ import annotations

import os
import re
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Iterable

from digitops import config
from digitops.tracking.mirror import run_files
from digitops.mlflow import index
from digitops.mlflow.rest import MlflowError, MlflowRefused, MlflowRest, MlflowUnavailable
from digitops.mlflow.state import (
    LOCAL_RUN_TAG,
    PROJECT_TAG,
    RUN_TAG,
    Mirror,
    RunState,
    batches,
    mirror_of,
    pending_runs,
    remote_mirror,
    run_lock,
    start_ms,
)
from digitops.tracking.base import MetricSummary, RunRecord, TrackingError
from digitops.tracking.mirror import LocalFirst
from digitops.tracking.sqlite import SqliteTracker

#: Set by the process that starts a run (the runner) to its pid: the notebook kernels it
#: launches inherit it and leave the mirror to it, so they never talk to the server.
OWNER_ENV = "DIGITOPS_MLFLOW_OWNER"
#: per request (a loaded server took 14 s for a page of 1,000 runs); asked again at most RETRIES times where safe (rest.py)
TIMEOUT, RETRIES = 30.0, 3
_GITLAB = re.compile(r"^(?P<host>https?://[^/]+(?:/.*?)?)/api/v4/projects/(?P<project>[^/]+)/ml/mlflow$")


def say(message: str) -> None:
    """One line on stderr (the runner's and notebooks' stdout stay clean), token removed."""
    print(f"mlflow: {_redact(message)}", file=sys.stderr, flush=True)


def _redact(text: str) -> str:
    try:
        token = config.mlflow_endpoint()[1]
    except Exception:  # noqa: BLE001 - no endpoint configured: nothing to hide
        token = None
    return text.replace(token, "***") if token else text


def run_url(uri: str, experiment_id: str, run_id: str) -> str:
    """Where a person looks at an MLflow run.

    An MLflow server: its UI page of the run. GitLab (``.../api/v4/projects/<id>/ml/mlflow``):
    the candidate page needs the candidate's iid, which GitLab's MLflow API does not return
    (its run id is the candidate's eid), so this links the project's experiment list:
    ``$CI_PROJECT_URL/-/ml/experiments`` in CI, else ``<gitlab>/projects/<id>`` (GitLab
    redirects that to the project).
    """
    found = _GITLAB.match(uri)
    if found:
        project_url = os.environ.get("CI_PROJECT_URL", "").rstrip("/")
        if project_url:
            return f"{project_url}/-/ml/experiments"
        return f"{found['host']}/projects/{found['project']}"
    return f"{uri}/#/experiments/{experiment_id}/runs/{run_id}"


@dataclass
class SyncOutcome:
    """What happened to one run's MLflow mirror."""

    run_id: str
    #: "sent", "up-to-date" or "pending"
    mode: str
    url: str | None = None
    items: int = 0
    reason: str = ""
    seconds: float = 0.0

    def describe(self) -> str:
        """One human line."""
        if self.mode == "sent":
            return f"run {self.run_id}: {self.items} item(s) sent to {self.url}"
        if self.mode == "up-to-date":
            return f"run {self.run_id}: already complete in MLflow ({self.url})"
        return (
            f"run {self.run_id}: not mirrored to MLflow ({self.reason}); the local record is complete, "
            "`digitops sync` sends it"
        )


class MlflowTracker(LocalFirst):
    """The embedded store plus an MLflow mirror of every ended run (see the module docstring)."""

    OWNER_ENV = OWNER_ENV
    SERVICE = "MLflow"

    def __init__(self, local: SqliteTracker | None = None, client: MlflowRest | None = None) -> None:
        super().__init__(local)
        self._client = client
        self._experiments: dict[str, str] = {}
        #: recent filtered reads (see digitops.mlflow.queries.MEMO_S)
        self.memo: dict[Any, Any] = {}

    @property
    def client(self) -> MlflowRest:
        """The REST client (built on first use from ``MLFLOW_TRACKING_URI``/``_TOKEN``)."""
        if self._client is None:
            self._client = MlflowRest(timeout=TIMEOUT, retries=RETRIES)
        return self._client

    def __repr__(self) -> str:
        return f"MlflowTracker(db_path={str(self.db_path)!r})"

    def say(self, message: str) -> None:
        say(message)

    def ended_line(self, outcome: SyncOutcome) -> str:
        return outcome.describe() if outcome.mode != "sent" else f"{outcome.describe()} ({outcome.seconds:.1f} s)"

    # -- mirror ---------------------------------------------------------------------------

    def sync_run(self, run_id: str) -> SyncOutcome:
        """Bring the MLflow run up to date with the local record; pending (never raising) when it cannot."""
        start = time.monotonic()
        self.memo.clear()  # what this tracker read before may no longer be what the server holds
        with run_lock(run_id):
            rec = self.local.get_run(run_id)
            try:
                outcome = self._push(rec, RunState.load(run_id))
            except Exception as exc:  # noqa: BLE001 - network, server, disk or config: keep it for sync
                # Whatever reached the server is read back next time: nothing is trusted, nothing lost.
                state = RunState.load(run_id)
                state.sent = None
                state.pending = _redact(str(exc) if isinstance(exc, MlflowError) else f"{type(exc).__name__}: {exc}")
                state.save()
                outcome = SyncOutcome(run_id, "pending", state.url, reason=state.pending)
        outcome.seconds = time.monotonic() - start
        return outcome

    def _push(self, rec: RunRecord, state: RunState) -> SyncOutcome:
        files = run_files(rec)
        target = mirror_of(rec, files)
        base = Mirror.from_json(state.sent) if state.mlflow_run_id and not state.pending else None
        entry = index.entry_of(rec, target, start_ms(rec), str(state.mlflow_run_id)) if state.mlflow_run_id else None
        if (
            base is not None and base == target and all(state.uploaded.get(k) == v for k, v in target.artifacts.items())
            and (entry is None or state.indexed == entry[0])
        ):
            return SyncOutcome(rec.run_id, "up-to-date", state.url)
        if base is None:
            run = self._find_or_create(rec, state)
            base = remote_mirror(run, target, state.uploaded)
        client, items = self.client, 0
        t0 = start_ms(rec)
        now = max(int(time.time() * 1000), t0 + max((len(v) for v in target.history.values()), default=0) + 1)
        for payload in batches(base, target, t0, now):
            client.call("POST", "runs/log-batch", {"run_id": state.mlflow_run_id, **payload})
            items += sum(len(v) for v in payload.values())
        for name, digest in target.artifacts.items():
            if state.uploaded.get(name) == digest:
                continue
            client.upload_artifact(state.run_stub(), Path(files[name]), name)
            state.uploaded[name] = digest
            state.save()
            items += 1
        if (base.status, base.end_time) != (target.status, target.end_time):
            update: dict[str, Any] = {"run_id": state.mlflow_run_id, "status": target.status}
            if target.end_time is not None:
                update["end_time"] = target.end_time
            client.call("POST", "runs/update", update)
            items += 1
        # The run is FINISHED in the server before its index entry exists; a failure here leaves it pending.
        entry = index.entry_of(rec, target, t0, str(state.mlflow_run_id))
        if entry is not None and state.indexed != entry[0]:
            try:
                index.write_entry(client, str(state.experiment_id), rec.project, rec.run_id, *entry)
            except index.Unsupported:
                pass  # no index on this server: comparisons read every run (nothing to keep pending)
            else:
                state.indexed = entry[0]
                items += 1
        state.sent = asdict(target)
        state.pending = None
        state.save()
        self.local.set_tags(rec.run_id, {LOCAL_RUN_TAG: str(state.mlflow_run_id)})
        self.local.set_url(rec.run_id, state.url)
        return SyncOutcome(rec.run_id, "sent" if items else "up-to-date", state.url, items)

    def experiment_id(self, project: str, create: bool = True) -> str:
        """The MLflow experiment of ``project`` (remembered for this tracker's life)."""
        if project not in self._experiments:
            self._experiments[project] = self.client.experiment_id(project, create=create)
        return self._experiments[project]

    def find_mlflow_run(self, experiment_id: str, run_id: str) -> dict[str, Any] | None:
        """The MLflow run tagged ``digitops.run_id = run_id`` (the oldest, should there be several)."""
        found = [
            r
            for r in self.client.search_runs(experiment_id, f"tags.`{RUN_TAG}` = '{_quoted(run_id)}'", page_size=50)
            if _tags(r).get(RUN_TAG) == run_id  # never trust a filter the server may have ignored
        ]
        found.sort(key=lambda r: (int((r.get("info") or {}).get("start_time") or 0), r["info"]["run_id"]))
        return found[0] if found else None

    def _find_or_create(self, rec: RunRecord, state: RunState) -> dict[str, Any]:
        """The run's MLflow run: remembered, else found by tag, else created (and looked up if that failed)."""
        client = self.client
        eid = state.experiment_id or self.experiment_id(rec.project)
        run = None
        if state.mlflow_run_id:
            try:
                run = client.call("GET", "runs/get", {"run_id": state.mlflow_run_id}).get("run")
            except MlflowRefused as exc:
                if exc.error_code != "RESOURCE_DOES_NOT_EXIST":
                    raise
            if run and (run.get("info") or {}).get("lifecycle_stage") == "deleted":
                run = None  # deleted in the UI: a fresh one, found or created below
        if run is None:
            run = self.find_mlflow_run(eid, rec.run_id)
        if run is None:
            payload = {
                "experiment_id": eid,
                "start_time": start_ms(rec),
                "run_name": rec.run_id,
                "tags": [{"key": RUN_TAG, "value": rec.run_id}, {"key": PROJECT_TAG, "value": rec.project}],
            }
            try:
                run = client.call("POST", "runs/create", payload)["run"]
            except MlflowUnavailable:
                # The server may have saved it before failing: look before anyone creates another.
                run = self.find_mlflow_run(eid, rec.run_id)
                if run is None:
                    raise
        info = run["info"]
        state.experiment_id = str(info.get("experiment_id") or eid)
        state.mlflow_run_id = str(info["run_id"])
        state.artifact_uri = str(info.get("artifact_uri") or "")
        state.url = run_url(client.uri, state.experiment_id, state.mlflow_run_id)
        state.save()
        return run

    def sync_pending(self, run_ids: Iterable[str] | None = None) -> list[str]:
        """Complete the mirror of pending runs (or of ``run_ids``); one line per run, never raising per run."""
        wanted = list(dict.fromkeys(run_ids)) if run_ids is not None else pending_runs()
        lines = []
        for run_id in wanted:
            try:
                self.local.get_run(run_id)
            except TrackingError as exc:
                lines.append(f"run {run_id}: still pending: {exc}")
                continue
            try:
                outcome = self.sync_run(run_id)
            except Exception as exc:  # noqa: BLE001 - one run's trouble must not stop the others
                lines.append(_redact(f"run {run_id}: still pending: {type(exc).__name__}: {exc}"))
                continue
            if outcome.mode == "pending":
                lines.append(_redact(f"run {run_id}: still pending: {outcome.reason}"))
            else:
                lines.append(outcome.describe())
        if run_ids is None and not any("still pending" in line for line in lines):
            built = self.build_index()  # runs mirrored before the index existed: once, then nothing to say
            lines += [built] if built else []
        return lines

    def build_index(self, project: str | None = None) -> str:
        """Make the project's index run complete (:func:`digitops.mlflow.index.build`); a line ("" if it was), never raising."""
        project = project or config.project_name()
        try:
            return index.build(self, project)
        except Exception as exc:  # noqa: BLE001 - comparisons fall back to the full search meanwhile
            return _redact(f"index of {project}: not built ({type(exc).__name__}: {exc}); comparisons read every run")

    # -- reads ----------------------------------------------------------------------------

    def list_runs(self, project: str | None = None, status: str | None = None, limit: int | None = None) -> list[RunRecord]:
        """The experiment's runs in the server, newest first (:class:`TrackingError` when it cannot be read)."""
        from digitops.mlflow.queries import list_runs

        return list_runs(self, project or config.project_name(), status=status, limit=limit)

    def find_by_tag(self, key: str, value: str, project: str | None = None, finished_only: bool = True) -> list[RunRecord]:
        """Runs in the server whose tag ``key`` is ``value``, newest first (server-side filter)."""
        from digitops.mlflow.queries import find_by_tag

        return find_by_tag(self, project or config.project_name(), key, value, finished_only=finished_only)

    def find_reusable(
        self, fingerprint: str, project: str | None = None, *, tag: str = "digitops.fingerprint"
    ) -> RunRecord | None:
        """The newest finished run in the server whose ``tag`` is ``fingerprint`` (one filtered search), or None.

        The local record is returned when this machine has it (it knows the run's files).
        """
        from digitops.mlflow.queries import find_reusable

        found = find_reusable(self, project or config.project_name(), fingerprint, tag=tag)
        if found is None:
            return None
        try:
            return self.local.get_run(found.run_id)
        except TrackingError:
            return found

    def metric_summary(
        self,
        metric: str,
        *,
        project: str | None = None,
        exclude: Iterable[str] = (),
        data_checksum: str | None = None,
        higher_is_better: bool = True,
    ) -> MetricSummary:
        """Mean and best of ``metric`` over the experiment's finished runs in the server, less ``exclude``.

        Raises :class:`TrackingError` when the server cannot be read (fail closed, see :mod:`digitops.compare`).
        """
        from digitops.mlflow.queries import metric_summary

        return metric_summary(
            self, metric, project=project or config.project_name(), exclude=exclude,
            data_checksum=data_checksum, higher_is_better=higher_is_better,
        )


def _quoted(value: str) -> str:
    """``value`` for a single-quoted MLflow filter literal (run ids and checksums never hold quotes)."""
    if "'" in value or "\\" in value:
        raise TrackingError(f"cannot filter on {value!r}: quotes are not allowed there")
    return value


def _tags(run: dict[str, Any]) -> dict[str, str]:
    return {t.get("key"): t.get("value") for t in (run.get("data") or {}).get("tags") or []}


def sync_pending(run_ids: Iterable[str] | None = None) -> list[str]:
    """``digitops sync`` for the MLflow backend: complete every pending run (or ``run_ids``); lines to print."""
    return MlflowTracker().sync_pending(run_ids)
