"""Remove old run folders, so a folder of run folders kept between CI pipelines stops growing.

Every pipeline adds a run folder (model, notebooks, plots): a CI cache that carries ``runs/``
from one pipeline to the next (to reuse unchanged runs) would grow by one folder a pipeline,
and every job would restore and upload all of it. The store keeps every run's record
(parameters, metrics, checksums), which is all ``compare`` and the report read; only the
newest finished folders are worth keeping, for reuse and for a person to look at.
"""

from __future__ import annotations

import secrets
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from digitops import config, runs
from digitops.errors import TrackingError
from digitops.tracking import ABANDONED, FAILED, FINISHED


#: why a folder among the ``keep`` newest finished runs was kept (the reason not worth saying)
NEWEST = "one of the newest finished runs"


@dataclass
class Pruned:
    """What :func:`prune_folders` removed (or would remove) and what it left, with why."""

    removed: list[str] = field(default_factory=list)
    kept: dict[str, str] = field(default_factory=dict)


def _pending_sync() -> set[str]:
    """Runs whose copy in Comet or MLflow is incomplete: ``digitops sync`` still reads their folders."""
    from digitops.comet.offline import pending_runs as comet_pending
    from digitops.mlflow.state import pending_runs as mlflow_pending

    return {state.run_id for state in comet_pending()} | set(mlflow_pending())


def prune_folders(store: Any, keep: int, *, root: Path | None = None, dry_run: bool = False) -> Pruned:
    """Remove the folders of runs older than the ``keep`` newest finished ones.

    Never removed: the ``keep`` newest finished runs' folders, any run still running, a failed
    or abandoned run newer than the oldest folder kept, a run still waiting for ``digitops
    sync``, and any folder the store does not know (it may be another tool's). ``store`` is
    the local store (the folders are this machine's). A folder is renamed out of the way
    before it is deleted, so no reader ever sees half of one under its run id.
    """
    if keep < 1:
        raise ValueError(f"keep must be at least 1 (the newest finished run's folder), got {keep}")
    root = Path(root) if root else config.runs_dir()
    out = Pruned()
    if not root.is_dir():
        return out
    records = []
    for folder in sorted(p for p in root.iterdir() if p.is_dir() and runs.RUN_ID_RE.match(p.name)):
        try:
            records.append(store.get_run(folder.name))
        except TrackingError:  # unknown here; a store that cannot be read removes nothing
            out.kept[folder.name] = "not in the store"
    records.sort(key=lambda r: (r.started_at, r.run_id), reverse=True)
    finished = [r for r in records if r.status == FINISHED]
    newest = {r.run_id for r in finished[:keep]}
    oldest_kept = finished[:keep][-1].started_at if finished else ""
    pending = _pending_sync()
    for record in records:
        if record.run_id in newest:
            out.kept[record.run_id] = NEWEST
        elif record.status not in (FINISHED, FAILED, ABANDONED):
            out.kept[record.run_id] = record.status
        elif record.status != FINISHED and record.started_at >= oldest_kept:
            out.kept[record.run_id] = f"{record.status}, newer than the folders kept"
        elif record.run_id in pending:
            out.kept[record.run_id] = "waiting for digitops sync"
        else:
            out.removed.append(record.run_id)
    if not dry_run:
        for run_id in out.removed:
            doomed = root / f".pruning-{run_id}-{secrets.token_hex(3)}"
            (root / run_id).rename(doomed)
            shutil.rmtree(doomed, ignore_errors=True)
    return out
