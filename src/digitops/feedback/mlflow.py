"""The shared destination when MLflow is the backend: one dedicated run holding every field drawing as an artifact.

Like the Comet destination (:mod:`digitops.feedback.comet`), and within
GitLab's MLflow subset, which documents no artifact listing: the run
:data:`RUN_NAME`, found by its tag :data:`RUN_TAG` = ``drawings`` in the
experiment ``<project>-field-drawings`` (never the experiment whose runs are
compared), holds each drawing as the artifact ``<hash>.json`` at its root
(:func:`digitops.feedback.exchange.payload`). Only AFTER a file's upload
succeeds does the tag ``digitops.drawing.<hash> = <label>`` record it, so
``runs/get`` lists exactly the drawings that are there. ``sync`` downloads what
this store lacks (checked by :func:`digitops.feedback.exchange.receive`) and
uploads what the run lacks. Two replicas creating the run at once: the oldest
is kept, the other (still empty) deleted; drawings found on either are read.

Limits: a relabel made after both replicas hold a drawing is not propagated;
uploads happen at sync time, not per click.
"""

from __future__ import annotations

import os
import tempfile
import time
from pathlib import Path
from typing import Any

from digitops import config
from digitops.feedback import FeedbackError, FeedbackStoreError
from digitops.feedback.exchange import KEPT, REFUSED, SyncResult, payload, receive
from digitops.feedback.store import LocalFeedbackStore

RUN_NAME = "digitops-field-drawings"
RUN_TAG = "digitops.feedback"
RUN_TAG_VALUE = "drawings"
#: prefix of the tag recording one uploaded drawing: ``digitops.drawing.<hash>`` = label
DRAWING_TAG = "digitops.drawing."
EXPERIMENT_SUFFIX = "-field-drawings"


def experiment() -> str:
    """The MLflow experiment holding the dedicated run."""
    return config.project_name() + EXPERIMENT_SUFFIX


def sync(store: LocalFeedbackStore, client: Any = None) -> SyncResult:
    """Send and receive drawings; a FeedbackStoreError (one line, token redacted) when MLflow cannot be used."""
    from digitops.mlflow.rest import MlflowRest

    rest = client
    try:
        rest = rest or MlflowRest()
        return _sync(store, rest)
    except FeedbackError:
        raise
    except Exception as exc:  # noqa: BLE001 - config, HTTP, network, server errors: one line, nothing lost locally
        text = (f"the field drawings could not be synced with MLflow ({type(exc).__name__}: {exc}); "
                "this machine's drawings are kept and sent next time").replace("\n", " ")
        raise FeedbackStoreError(rest.redact(text) if rest is not None else text) from None


def _tags(run: dict[str, Any]) -> dict[str, str]:
    return {str(t.get("key")): str(t.get("value")) for t in (run.get("data") or {}).get("tags") or []}


def _drawing_runs(rest: Any, eid: str) -> list[dict[str, Any]]:
    """The dedicated runs of the experiment, oldest first (one, unless two replicas created it at once)."""
    found = [
        r for r in rest.search_runs(eid, page_size=100)
        if _tags(r).get(RUN_TAG) == RUN_TAG_VALUE and (r.get("info") or {}).get("lifecycle_stage") != "deleted"
    ]  # no server-side filter: the experiment is dedicated, and GitLab's filter support is partial
    found.sort(key=lambda r: (int((r.get("info") or {}).get("start_time") or 0), str(r["info"]["run_id"])))
    return found


def _the_run(rest: Any, eid: str) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """(the run uploads go to, every dedicated run), creating the run when there is none."""
    runs = _drawing_runs(rest, eid)
    if runs:
        return runs[0], runs
    from digitops.mlflow.rest import MlflowUnavailable

    now = int(time.time() * 1000)
    payload_ = {"experiment_id": eid, "start_time": now, "run_name": RUN_NAME,
                "tags": [{"key": RUN_TAG, "value": RUN_TAG_VALUE}]}
    try:
        mine = rest.call("POST", "runs/create", payload_)["run"]
    except MlflowUnavailable:
        runs = _drawing_runs(rest, eid)  # the server may have saved it before failing
        if not runs:
            raise
        return runs[0], runs
    # A container, not a training: it ends at once (tags and files can still be added to a finished run).
    rest.call("POST", "runs/update", {"run_id": mine["info"]["run_id"], "status": "FINISHED", "end_time": now})
    runs = _drawing_runs(rest, eid) or [mine]
    if runs[0]["info"]["run_id"] != mine["info"]["run_id"]:
        # Another replica created one first: use it; ours is still empty, so deleting it loses nothing.
        rest.call("POST", "runs/delete", {"run_id": mine["info"]["run_id"]})
        runs = [r for r in runs if r["info"]["run_id"] != mine["info"]["run_id"]]
    return runs[0], runs


def _sync(store: LocalFeedbackStore, rest: Any) -> SyncResult:
    from digitops.mlflow.rest import MlflowRefused

    eid = rest.experiment_id(experiment())
    target, runs = _the_run(rest, eid)
    remote: dict[str, dict[str, Any]] = {}
    for run in runs:
        # runs/get: the run's own tags, fresh (a search result is only as fresh as the search)
        full = rest.call("GET", "runs/get", {"run_id": run["info"]["run_id"]}).get("run") or run
        for key in _tags(full):
            digest = key[len(DRAWING_TAG):]
            if key.startswith(DRAWING_TAG) and len(digest) == 64 and all(c in "0123456789abcdef" for c in digest):
                remote.setdefault(digest, full)
    records = store.records()
    local = {r.hash for r in records}

    pulled = refused = 0
    with tempfile.TemporaryDirectory(prefix="digitops-feedback-mlflow-") as scratch:
        for digest, run in sorted(remote.items()):
            if digest in local:
                continue
            try:
                raw = rest.download_artifact(run, f"{digest}.json", Path(scratch) / f"{digest}.json").read_bytes()
            except MlflowRefused:
                refused += 1  # tagged but not there (removed by hand): nothing to keep
                continue
            kept = receive(store, raw, digest)
            refused += kept == REFUSED  # left in MLflow, never kept here
            pulled += kept == KEPT

        missing = [r for r in records if r.hash not in remote]
        for record in missing:
            path = Path(scratch) / f"{record.hash}.json"
            path.write_text(payload(store, record))
            rest.upload_artifact(target, path)
            # Only now: a tag always means the file is there.
            rest.call("POST", "runs/set-tag", {"run_id": target["info"]["run_id"],
                                               "key": DRAWING_TAG + record.hash, "value": str(record.label)})
            os.unlink(path)
    return SyncResult(len(missing), pulled, refused, str(target["info"]["run_id"]), where="MLflow run")
