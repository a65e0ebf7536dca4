"""What an MLflow run should hold for a digitops run, what the server holds, and the per-run mirror state.

A :class:`Mirror` is the MLflow view of a run: string params, tags, per-epoch
history (values by step), final metrics, artifact digests and the run status.
:func:`mirror_of` computes the target from the local store; :func:`remote_mirror`
reads back what an MLflow run holds (``runs/get`` or a ``runs/search`` row: params,
tags and each metric's LATEST value with its step, because GitLab offers no
metric-history endpoint). That is enough to know what is missing, because
:func:`batches` sends history in ascending step order and a final metric at the
last step of its history with a later timestamp (MLflow's latest value is the one
with the highest (step, timestamp)).
"""

from __future__ import annotations

import json
import math
import os
import time
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterator

from digitops import atomic, config
from digitops.tracking.mirror import LOCAL_ONLY_TAGS, run_files
from digitops.tracking.base import ABANDONED, FAILED, FINISHED, RunRecord

RUN_TAG = "digitops.run_id"
STATUS_TAG = "digitops.status"
CHECKSUM_TAG = "digitops.data_checksum"
#: a run's fingerprint (what it was trained from, :mod:`digitops.fingerprint`), for finding a run to reuse
FINGERPRINT_TAG = "digitops.fingerprint"
PROJECT_TAG = "digitops.project"
COMMIT_TAG = "mlflow.source.git.commit"
#: the local tag that remembers the MLflow run id of a digitops run
LOCAL_RUN_TAG = "mlflow_run_id"
#: MLflow's log-batch limits (``runs/log-batch``): items per request, params and tags of them
BATCH_ITEMS, BATCH_PARAMS, BATCH_TAGS = 1000, 100, 100
#: MLflow 1.x kept param values to 500 characters; GitLab follows that API
PARAM_MAX = 500
TAG_MAX = 5000
#: local status -> MLflow run status
STATUS = {FINISHED: "FINISHED", FAILED: "FAILED", ABANDONED: "KILLED"}


@dataclass
class Mirror:
    """What an MLflow run holds (or should hold) for one digitops run."""

    params: dict[str, str] = field(default_factory=dict)
    tags: dict[str, str] = field(default_factory=dict)
    history: dict[str, list[float]] = field(default_factory=dict)
    metrics: dict[str, float] = field(default_factory=dict)
    artifacts: dict[str, str] = field(default_factory=dict)
    status: str = "RUNNING"
    end_time: int | None = None

    @classmethod
    def from_json(cls, data: dict[str, Any] | None) -> "Mirror | None":
        return None if not data else cls(**data)


def _ms(stamp: str | None) -> int | None:
    if not stamp:
        return None
    try:
        when = datetime.fromisoformat(stamp.replace("Z", "+00:00"))
    except ValueError:
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=timezone.utc)
    return int(when.timestamp() * 1000)


def start_ms(rec: RunRecord) -> int:
    """The run's start time in ms (MLflow's unit); history timestamps are derived from it."""
    return _ms(rec.started_at) or int(time.time() * 1000)


def _param(value: Any) -> str:
    text = value if isinstance(value, str) else json.dumps(value, sort_keys=True, default=str)
    return text[:PARAM_MAX]


def mirror_of(rec: RunRecord, files: dict[str, str] | None = None, digests: dict[str, str] | None = None) -> Mirror:
    """The MLflow view of a local run record (artifact digests from ``digests`` or computed)."""
    from digitops.registry.base import sha256_file

    tags = {
        k: str(v)[:TAG_MAX]
        for k, v in rec.tags.items()
        if v and k not in LOCAL_ONLY_TAGS and not k.startswith(("comet_", "mlflow_"))
    }
    tags.update({RUN_TAG: rec.run_id, STATUS_TAG: rec.status, PROJECT_TAG: rec.project, "mlflow.runName": rec.run_id})
    if rec.data_checksum:
        tags[CHECKSUM_TAG] = rec.data_checksum
    if rec.git_commit:
        tags[COMMIT_TAG] = rec.git_commit
    if config.env("GITLAB_CI") and os.environ.get("CI_JOB_ID"):
        # GitLab links the candidate to this CI job (its documented tag).
        tags["gitlab.CI_JOB_ID"] = os.environ["CI_JOB_ID"]
    artifacts: dict[str, str] = {}
    for name, path in sorted((files if files is not None else run_files(rec)).items()):
        if digests and name in digests:
            artifacts[name] = digests[name]
            continue
        try:
            artifacts[name] = sha256_file(path)
        except OSError:
            continue  # gone from disk: nothing to send
    return Mirror(
        params={str(k): _param(v) for k, v in rec.params.items()},
        tags=tags,
        # NaN and infinities are not JSON: MLflow gets the finite values (a gap in the steps is kept).
        history={k: [float(x) for x in v] for k, v in rec.history.items()},
        metrics={k: float(v) for k, v in rec.metrics.items() if math.isfinite(v)},
        artifacts=artifacts,
        status=STATUS.get(rec.status, "RUNNING"),
        end_time=_ms(rec.ended_at),
    )


def final_step(target: Mirror, key: str) -> int:
    """The step a final metric is logged at: the last of its history, so it becomes MLflow's latest value."""
    return max(len(target.history.get(key, [])) - 1, 0)


def remote_mirror(run: dict[str, Any], target: Mirror, artifacts: dict[str, str]) -> Mirror:
    """What the MLflow run ``run`` holds, in :class:`Mirror` terms relative to ``target``.

    ``artifacts`` are the uploads this machine saw succeed (no listing endpoint in GitLab's subset).
    """
    info, data = run.get("info") or {}, run.get("data") or {}
    latest = {m["key"]: m for m in data.get("metrics") or [] if "key" in m}
    history: dict[str, list[float]] = {}
    metrics: dict[str, float] = {}
    for key, point in latest.items():
        step = int(point.get("step") or 0)
        if key in target.history:
            history[key] = target.history[key][: step + 1]
        if key in target.metrics and step >= final_step(target, key):
            try:
                metrics[key] = float(point.get("value"))
            except (TypeError, ValueError):
                pass
    return Mirror(
        params={p["key"]: str(p.get("value", "")) for p in data.get("params") or [] if "key" in p},
        tags={t["key"]: str(t.get("value", "")) for t in data.get("tags") or [] if "key" in t},
        history=history,
        metrics=metrics,
        artifacts=dict(artifacts),
        status=str(info.get("status") or "RUNNING"),
        end_time=info.get("end_time") and int(info["end_time"]),
    )


def batches(base: Mirror, target: Mirror, t0: int, now: int) -> Iterator[dict[str, list[dict[str, Any]]]]:
    """``runs/log-batch`` payloads (less ``run_id``) that bring ``base`` up to ``target``, within MLflow's limits.

    Params already there with another value are not sent (MLflow refuses to change a param), nor
    tags (GitLab's run tags are create-only: a changed value would be dropped silently, so readers
    never rely on one; the status is the run's own, set with ``runs/update``).
    History timestamps are ``t0 + step`` (a resend is the same point, which MLflow keeps once);
    finals are logged at ``now`` so they are the latest value at their step.
    """
    params = [{"key": k, "value": v} for k, v in target.params.items() if k not in base.params]
    tags = [{"key": k, "value": v} for k, v in target.tags.items() if k not in base.tags]
    points: list[tuple[int, str, float]] = []
    for key, values in target.history.items():
        for step in range(len(base.history.get(key, [])), len(values)):
            if math.isfinite(values[step]):
                points.append((step, key, values[step]))
    metrics = [
        {"key": k, "value": v, "timestamp": t0 + s, "step": s} for s, k, v in sorted(points)
    ] + [
        {"key": k, "value": v, "timestamp": now, "step": final_step(target, k)}
        for k, v in sorted(target.metrics.items())
        # A final equal to the last epoch's value is already MLflow's latest at that step.
        if base.metrics.get(k) != v and (target.history.get(k) or [None])[-1] != v
    ]
    while params or tags or metrics:
        take_p = params[:BATCH_PARAMS]
        take_t = tags[: min(BATCH_TAGS, BATCH_ITEMS - len(take_p))]
        take_m = metrics[: BATCH_ITEMS - len(take_p) - len(take_t)]
        params, tags, metrics = params[len(take_p):], tags[len(take_t):], metrics[len(take_m):]
        yield {"params": take_p, "tags": take_t, "metrics": take_m}


@dataclass
class RunState:
    """Per-run bookkeeping of the mirror (``$DIGITOPS_HOME/mlflow/runs/<run_id>.json``)."""

    run_id: str
    experiment_id: str | None = None
    mlflow_run_id: str | None = None
    artifact_uri: str | None = None
    url: str | None = None
    #: the Mirror the server is known to hold (None: read it back before sending)
    sent: dict[str, Any] | None = None
    #: artifact name -> sha256 of each upload that succeeded
    uploaded: dict[str, str] = field(default_factory=dict)
    #: why the server lacks part of the run (None: nothing pending)
    pending: str | None = None
    #: the index entry key (digitops.mlflow.index) written for the run's current content
    indexed: str | None = None

    @staticmethod
    def folder() -> Path:
        return config.home() / "mlflow" / "runs"

    @classmethod
    def path(cls, run_id: str) -> Path:
        return cls.folder() / f"{run_id}.json"

    @classmethod
    def load(cls, run_id: str) -> "RunState":
        try:
            return cls(**json.loads(cls.path(run_id).read_text()))
        except FileNotFoundError:
            return cls(run_id)
        except (ValueError, TypeError):
            # Damaged (a full disk, a hand edit): start over. The MLflow run is found again by its
            # digitops.run_id tag and read back, so nothing is created or sent twice.
            return cls(run_id)

    def save(self) -> None:
        path = self.path(self.run_id)
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic.write_json(path, asdict(self), indent=1, sort_keys=True)

    def run_stub(self) -> dict[str, Any]:
        """Enough of the MLflow run for artifact calls."""
        return {"info": {"run_id": self.mlflow_run_id, "artifact_uri": self.artifact_uri}}


def pending_runs() -> list[str]:
    """Ids of runs whose mirror is incomplete, oldest state first."""
    folder = RunState.folder()
    if not folder.is_dir():
        return []
    out = []
    for path in sorted(folder.glob("*.json"), key=lambda p: p.stat().st_mtime):
        try:
            if json.loads(path.read_text()).get("pending"):
                out.append(path.stem)
        except (OSError, ValueError):
            out.append(path.stem)  # unreadable state: sync says why
    return out


def run_lock(run_id: str) -> Any:
    from filelock import FileLock

    path = RunState.folder() / f"{run_id}.lock"
    path.parent.mkdir(parents=True, exist_ok=True)
    return FileLock(str(path), timeout=300)
