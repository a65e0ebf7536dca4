"""What digitops remembers about a run's Comet mirror: snapshots of a run, per-run sync state and its lock."""

from __future__ import annotations

import json
import math
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from digitops import atomic, comet_env
from digitops.tracking.base import METRICS_REUSED_FROM, RunRecord, TrackingError
from digitops.tracking.mirror import LOCAL_ONLY_TAGS, RUN_FOLDER_FILES, run_files  # noqa: F401  re-exported

#: Switches passed to every experiment: digitops logs explicitly, the SDK must not collect on its own.
EXPERIMENT_OPTIONS: dict[str, Any] = {
    "log_code": False,
    "log_graph": False,
    "auto_param_logging": False,
    "auto_metric_logging": False,
    "parse_args": False,
    "auto_output_logging": None,
    "log_env_details": False,
    "log_git_metadata": False,
    "log_git_patch": False,
    "log_env_gpu": False,
    "log_env_host": False,
    "log_env_cpu": False,
    "log_env_network": False,
    "log_env_disk": False,
    "display_summary_level": 0,
}


def experiment_options(cls: Any) -> dict[str, Any]:
    """:data:`EXPERIMENT_OPTIONS` that ``cls`` accepts: ``ExistingOfflineExperiment`` lacks some
    (``log_env_network``), and an unknown keyword there used to lose the whole stage."""
    import inspect

    try:
        accepted = inspect.signature(cls.__init__).parameters
    except (TypeError, ValueError):
        return dict(EXPERIMENT_OPTIONS)
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in accepted.values()):
        return dict(EXPERIMENT_OPTIONS)
    return {k: v for k, v in EXPERIMENT_OPTIONS.items() if k in accepted}


KEY_TAG = "comet_experiment_key"
IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".gif", ".svg"}
#: Prefixes of local tags not copied either: a fingerprint's parts (its digest goes to Comet; the
#: parts only explain locally, in `digitops runs show`, why a run was not reused).
LOCAL_ONLY_PREFIXES = ("digitops.fingerprint.", "digitops.eval_fingerprint.")
#: the "other" marking an experiment whose metrics were reused from another run
REUSED_OTHER = "digitops_metrics_reused"
#: Set by the process that starts a run (the runner) to its pid: notebook kernels it launches
#: inherit it and leave the Comet mirror to it, so they never import comet_ml.
OWNER_ENV = "DIGITOPS_COMET_OWNER"


def say(message: str) -> None:
    """One line on stderr: the runner's and notebooks' stdout stay clean."""
    print(f"comet: {comet_env.redact(message)}", file=sys.stderr, flush=True)


# ------------------------------------------------------------------------------- snapshots


@dataclass
class Snapshot:
    """What a Comet experiment should hold for a run (computed from the local store)."""

    params: dict[str, Any] = field(default_factory=dict)
    history: dict[str, list[float | None]] = field(default_factory=dict)
    metrics: dict[str, float] = field(default_factory=dict)
    tags: list[str] = field(default_factory=list)
    others: dict[str, str] = field(default_factory=dict)
    #: artifact name -> sha256 of the file
    artifacts: dict[str, str] = field(default_factory=dict)

    @classmethod
    def from_json(cls, data: dict[str, Any] | None) -> "Snapshot | None":
        return None if data is None else cls(**data)


@dataclass
class RunState:
    """Per-run bookkeeping of the mirror (``$DIGITOPS_HOME/comet/runs/<run_id>.json``)."""

    run_id: str
    #: key of the Comet experiment that holds ``sent`` (None: nothing in Comet yet)
    experiment_key: str | None = None
    url: str | None = None
    sent: dict[str, Any] | None = None
    #: an archive waiting for ``digitops sync``: archive, experiment_key, mode, snapshot, reason, created_at
    pending: dict[str, Any] | None = None
    #: half-created online experiments, deleted once a complete one is uploaded
    orphans: list[str] = field(default_factory=list)

    @staticmethod
    def path(run_id: str) -> Path:
        return comet_env.state_dir() / "runs" / f"{run_id}.json"

    @classmethod
    def load(cls, run_id: str) -> "RunState":
        try:
            return cls(**json.loads(cls.path(run_id).read_text()))
        except FileNotFoundError:
            return cls(run_id)
        except (ValueError, TypeError) as exc:
            raise TrackingError(f"corrupt Comet sync state {cls.path(run_id)}: {exc}") from exc

    def save(self) -> None:
        path = self.path(self.run_id)
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic.write_json(path, asdict(self), indent=1, sort_keys=True, default=str)


def _sha256(path: str) -> str | None:
    from digitops.registry.base import sha256_file

    try:
        return sha256_file(path)
    except OSError:
        return None


def snapshot(rec: RunRecord) -> Snapshot:
    """The Comet view of a local run record."""
    tags = []
    if rec.git_commit:
        tags.append(f"git:{rec.git_commit[:12]}")
    for key, value in sorted(rec.tags.items()):
        if not key.startswith(("comet_", *LOCAL_ONLY_PREFIXES)) and key not in LOCAL_ONLY_TAGS and value:
            tags.append(f"{key}:{value}"[:100])
    others = {"digitops_run_id": rec.run_id, "digitops_status": rec.status, "digitops_project": rec.project}
    if rec.tags.get(METRICS_REUSED_FROM):
        others[REUSED_OTHER] = "1"  # history summaries skip it (comet.queries)
    if rec.data_checksum:
        others["data_checksum"] = rec.data_checksum
    if rec.git_commit:
        others["git_commit"] = rec.git_commit
    artifacts = {}
    for name, path in sorted(run_files(rec).items()):
        digest = _sha256(path)
        if digest is not None:
            artifacts[name] = digest
    return Snapshot(
        params=dict(rec.params),
        # NaN is not JSON and never equal to itself: Comet gets the finite values only.
        history={k: [x if math.isfinite(x) else None for x in v] for k, v in rec.history.items()},
        metrics={k: v for k, v in rec.metrics.items() if math.isfinite(v)},
        tags=tags,
        others=others,
        artifacts=artifacts,
    )


def confusion_of(path: str) -> tuple[list[list[int]], list[str] | None] | None:
    """A confusion matrix in a JSON artifact: a list of rows, or {"confusion_matrix"|"matrix": rows, "labels": ..}."""
    try:
        data = json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return None
    labels = None
    if isinstance(data, dict):
        labels = data.get("labels") or data.get("class_names")
        data = data.get("confusion_matrix", data.get("matrix"))
    if (
        isinstance(data, list)
        and data
        and all(isinstance(row, list) and len(row) == len(data) for row in data)
        and all(isinstance(x, (int, float)) for row in data for x in row)
    ):
        return [[int(x) for x in row] for row in data], [str(x) for x in labels] if labels else None
    return None


# ------------------------------------------------------------------------------- outcome


@dataclass
class SyncOutcome:
    """What happened to one run's Comet mirror."""

    run_id: str
    #: "online" (sent now), "up-to-date", "offline" (archive kept), "uploaded" (archive sent by sync), "failed"
    mode: str
    experiment_key: str | None = None
    url: str | None = None
    archive: str | None = None
    reason: str = ""
    items: int = 0
    seconds: float = 0.0
    deleted_orphans: list[str] = field(default_factory=list)

    def describe(self) -> str:
        """One human line."""
        if self.mode == "online":
            extra = f"; removed {len(self.deleted_orphans)} incomplete experiment(s)" if self.deleted_orphans else ""
            return f"run {self.run_id}: {self.items} item(s) sent to {self.url}{extra}"
        if self.mode == "up-to-date":
            return f"run {self.run_id}: already up to date in Comet ({self.url})"
        if self.mode == "uploaded":
            extra = f"; removed {len(self.deleted_orphans)} incomplete experiment(s)" if self.deleted_orphans else ""
            return f"run {self.run_id}: archive {Path(self.archive or '').name} uploaded -> {self.url}{extra}"
        if self.mode == "offline":
            return (
                f"run {self.run_id}: Comet not reached ({self.reason}); kept offline in {self.archive}; "
                "`digitops sync` uploads it"
            )
        return f"run {self.run_id}: {self.reason}"


def run_lock(run_id: str) -> Any:
    from filelock import FileLock

    path = comet_env.state_dir() / "runs" / f"{run_id}.lock"
    path.parent.mkdir(parents=True, exist_ok=True)
    return FileLock(str(path), timeout=300)
