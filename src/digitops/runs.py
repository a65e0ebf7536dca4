"""Run folders and the per-run context notebooks use to record what they did.

A run is one model: ``train`` creates it, ``evaluate`` adds test metrics to
it. Both write into ``runs/<run_id>/`` and the active tracker, so the same
notebook works under the runner, in JupyterLab and in CI.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import re
import secrets
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from digitops import atomic, config
from digitops.errors import NotFound, TrackingError, UsageError

METRICS_FILE = "metrics.json"
#: a run id names a folder and appears in URLs: letters, digits, '.', '_', '-', not starting with '.'
RUN_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$")


class BadRunId(UsageError, ValueError):
    """A run id that could escape the runs folder or break a file name."""


def check_run_id(run_id: str) -> str:
    """``run_id`` unchanged, or :class:`BadRunId` (a ``ValueError``) naming the rule it breaks."""
    if not RUN_ID_RE.match(run_id or ""):
        raise BadRunId(
            f"invalid run id {run_id!r}: use 1-100 letters, digits, '.', '_' or '-', starting with a letter or digit"
        )
    return run_id


def new_run_id() -> str:
    """Sortable, collision-resistant id: ``YYYYmmdd-HHMMSS-xxxxxx`` (UTC)."""
    return dt.datetime.now(dt.timezone.utc).strftime("%Y%m%d-%H%M%S-") + secrets.token_hex(3)


def run_dir(run_id: str, root: str | os.PathLike | None = None) -> Path:
    """Folder of ``run_id`` under the runs root."""
    check_run_id(run_id)
    return (Path(root) if root else config.runs_dir()) / run_id


def git_commit(cwd: str | os.PathLike | None = None) -> str | None:
    """The checked-out commit (``+dirty`` when the tree has changes), or CI's, or None.

    By default that of the repository holding the notebooks being run, not of
    the working directory: ``digitops run`` started elsewhere still records it.
    """
    if os.environ.get("CI_COMMIT_SHA"):
        return os.environ["CI_COMMIT_SHA"]
    if cwd is None:
        from digitops.runner import notebooks_dir  # here: runner imports this module

        cwd = notebooks_dir() if notebooks_dir().is_dir() else None
    try:
        sha = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=cwd, capture_output=True, text=True, timeout=5
        )
        if sha.returncode != 0:
            return None
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=cwd, capture_output=True, text=True, timeout=5,
        )
        return sha.stdout.strip() + ("+dirty" if dirty.stdout.strip() else "")
    except (OSError, subprocess.TimeoutExpired):
        return None


def ci_tags() -> dict[str, str]:
    """Tags that tie a run to its GitLab merge request and pipeline, when in CI."""
    keys = {
        "mr_iid": "CI_MERGE_REQUEST_IID",
        "pipeline_id": "CI_PIPELINE_ID",
        "job_id": "CI_JOB_ID",
        "branch": "CI_COMMIT_REF_NAME",
    }
    return {tag: os.environ[var] for tag, var in keys.items() if os.environ.get(var)}


def read_metrics(folder: str | os.PathLike) -> dict[str, Any]:
    """The run's ``metrics.json`` (empty dict when absent)."""
    path = Path(folder) / METRICS_FILE
    return json.loads(path.read_text()) if path.is_file() else {}


def update_metrics(folder: str | os.PathLike, **sections: Any) -> dict[str, Any]:
    """Merge ``sections`` into ``metrics.json`` (dicts merged one level deep) and write it atomically."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    content = read_metrics(folder)
    for key, value in sections.items():
        if isinstance(value, dict) and isinstance(content.get(key), dict):
            content[key].update(value)
        else:
            content[key] = value
    # One temporary name per process (the runner and its kernel both write here); removed on failure.
    with atomic.replacing(folder / METRICS_FILE, tmp=folder / f".{METRICS_FILE}.{os.getpid()}.tmp") as tmp:
        tmp.write_text(json.dumps(content, indent=2, sort_keys=True, default=float))
    return content


def record_outputs(
    folder: str | os.PathLike, stage: str, *, files: Any = (), metrics: Any = (), sections: Any = ()
) -> None:
    """Add to ``metrics.json``'s ``outputs.<stage>``: the files, final metric names and sections it wrote.

    :mod:`digitops.reuse` copies exactly these when a later run reuses this stage.
    """
    outputs = read_metrics(folder).get("outputs") or {}
    mine = dict(outputs.get(stage) or {})
    for key, names in (("files", files), ("metrics", metrics), ("sections", sections)):
        mine[key] = sorted(set(mine.get(key) or ()) | {str(n) for n in names})
    update_metrics(folder, outputs={stage: mine})


@dataclass
class RunContext:
    """What a notebook holds while it works on a run."""

    run_id: str
    folder: Path
    stage: str
    params: dict[str, Any] = field(default_factory=dict)
    tracker: Any = None

    @classmethod
    def open(
        cls,
        stage: str,
        *,
        run_id: str = "",
        output_dir: str = "",
        params: dict[str, Any] | None = None,
        data_checksum: str | None = None,
    ) -> "RunContext":
        """Start (or resume) ``run_id`` for ``stage``; a new id when none is given.

        ``output_dir`` is the run folder; empty means ``runs/<run_id>``.
        """
        from digitops.tracking import get_tracker

        run_id = run_id or new_run_id()
        folder = Path(output_dir) if output_dir else run_dir(run_id)
        folder.mkdir(parents=True, exist_ok=True)
        params = dict(params or {})
        commit = git_commit()
        tracker = get_tracker()
        tracker.start_run(
            run_id,
            name=run_id,
            params={f"{stage}.{k}" if stage != "train" else k: v for k, v in params.items()},
            tags={"stage": stage, **ci_tags()},
            git_commit=commit,
            data_checksum=data_checksum,
            project=config.project_name(),
        )
        section = "params" if stage == "train" else f"{stage}_params"
        update_metrics(
            folder,
            run_id=run_id,
            project=config.project_name(),
            git_commit=commit,
            data_checksum=data_checksum,
            **{section: params},
            stages={stage: "running"},
        )
        return cls(run_id=run_id, folder=folder, stage=stage, params=params, tracker=tracker)

    def path(self, name: str) -> Path:
        """A file inside the run folder."""
        return self.folder / name

    def callback(self) -> Any:
        """Keras callback logging each epoch's metrics to the tracker."""
        from digitops.tracking.callback import TrackingCallback

        return TrackingCallback(self.tracker, self.run_id)

    def log_metrics(self, metrics: dict[str, float], **sections: Any) -> None:
        """Final metrics to the tracker and ``metrics.json`` (plus extra sections such as ``history``)."""
        clean = {k: float(v) for k, v in metrics.items()}
        self.tracker.log_metrics(self.run_id, clean)
        update_metrics(self.folder, metrics=clean, **sections)
        record_outputs(self.folder, self.stage, metrics=clean, sections=sections)

    def log_artifact(self, path: str | os.PathLike, name: str | None = None) -> str:
        """Keep a file (image, model) with the run in the tracker."""
        return self.tracker.log_artifact(self.run_id, path, name=name)

    def finish(self) -> None:
        """Mark this stage done. The runner also closes the run, so this is idempotent."""
        update_metrics(self.folder, stages={self.stage: "finished"})
        self.tracker.end_run(self.run_id, "finished")


def reap_abandoned(tracker: Any) -> list[str]:
    """Mark ``abandoned`` this host's running runs whose process is gone; returns their ids.

    Commands that read runs call this first, so a run killed with SIGKILL (or
    lost with its machine) stops counting as running.
    """
    mark = getattr(tracker, "mark_abandoned", None)
    if mark is None:
        return []
    gone = mark()
    for run_id in gone:
        _set_open_stages(run_id, "abandoned")
    return gone


def mark_failed(tracker: Any, run_id: str) -> str:
    """Close a ``running`` or ``abandoned`` run as ``failed``; returns the status it had.

    Raises :class:`TrackingError` for a run that already finished or failed.
    """
    from digitops.tracking import ABANDONED, FAILED, RUNNING

    status = tracker.get_run(run_id).status
    if status not in (RUNNING, ABANDONED):
        raise TrackingError(f"run {run_id} is {status}, not running or abandoned; nothing to mark")
    tracker.end_run(run_id, FAILED)
    _set_open_stages(run_id, FAILED)
    return status


def _set_open_stages(run_id: str, status: str) -> None:
    # The run folder's metrics.json says which stages were still running; best effort (the
    # tracker holds the authoritative status, and the folder may live elsewhere or be gone).
    try:
        folder = run_dir(run_id)
        stages = read_metrics(folder).get("stages") or {}
        open_stages = {k: status for k, v in stages.items() if v == "running"}
        if open_stages:
            update_metrics(folder, stages=open_stages)
    except (OSError, ValueError):
        pass


def resolve_model(run_id: str = "", model_path: str = "", output_dir: str = "") -> tuple[str, Path, Path]:
    """Which run and model file an evaluation is about: ``(run_id, run_folder, model_file)``.

    A model path alone starts a new evaluation-only run; a run id uses that
    run's ``model.keras``; neither picks the newest run that has a model.
    """
    if model_path:
        model_file = Path(model_path)
        run_id = run_id or new_run_id()
    elif run_id:
        model_file = (Path(output_dir) if output_dir else run_dir(run_id)) / "model.keras"
    else:
        candidates = sorted(config.runs_dir().glob("*/model.keras"), key=lambda p: p.parent.name)
        if not candidates:
            raise NotFound(
                f"no trained model found under {config.runs_dir()}/; run notebooks/train.ipynb "
                "(or `digitops run train`) first, or pass run_id / model_path"
            )
        model_file = candidates[-1]
        run_id = model_file.parent.name
    if not model_file.is_file():
        raise NotFound(f"no model file at {model_file}")
    folder = Path(output_dir) if output_dir else run_dir(run_id)
    return run_id, folder, model_file


def write_dotenv(path: Path, run_id: str, stage: str) -> None:
    """Record the run id (and the CI job that made it) for later jobs."""
    lines = [f"RUN_ID={run_id}"]
    if os.environ.get("CI_JOB_ID"):
        lines.append(f"{stage.upper()}_JOB_ID={os.environ['CI_JOB_ID']}")
    with path.open("a") as fh:
        fh.write("\n".join(lines) + "\n")
