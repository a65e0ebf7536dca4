"""What one ``end_run`` sends to a Comet experiment: the difference between two snapshots of a run."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from digitops import config
from digitops.comet.state import IMAGE_SUFFIXES, Snapshot, confusion_of, run_files
from digitops.tracking.base import RunRecord


def log_delta(exp: Any, rec: RunRecord, base: Snapshot | None, target: Snapshot) -> int:
    """Send to ``exp`` what ``target`` has beyond ``base`` (everything when ``base`` is None)."""
    sent = 0
    if base is None:
        exp.set_name(rec.run_id)  # the name is how comparisons recognise (and exclude) the candidate
    params = {k: v for k, v in target.params.items() if base is None or base.params.get(k) != v}
    if params:
        exp.log_parameters(params)
        sent += len(params)
    by_step: dict[int, dict[str, float]] = {}
    for name, values in target.history.items():
        start = len(base.history.get(name, [])) if base is not None else 0
        for step in range(start, len(values)):
            if values[step] is not None:
                by_step.setdefault(step, {})[name] = values[step]
    for step in sorted(by_step):
        exp.log_metrics(by_step[step], step=step, epoch=step)
        sent += len(by_step[step])
    metrics = {k: v for k, v in target.metrics.items() if base is None or base.metrics.get(k) != v}
    if metrics:
        exp.log_metrics(metrics)
        sent += len(metrics)
    others = {k: v for k, v in target.others.items() if base is None or base.others.get(k) != v}
    if others:
        exp.log_others(others)
        sent += len(others)
    tags = [t for t in target.tags if base is None or t not in base.tags]
    if tags:
        exp.add_tags(tags)
        sent += len(tags)
    files = run_files(rec)
    for name, digest in target.artifacts.items():
        if base is not None and base.artifacts.get(name) == digest:
            continue
        _log_file(exp, name, files[name])
        sent += 1
    return sent


class DryRun:
    """Stands in for an experiment to count what :func:`log_delta` would send."""

    def __getattr__(self, name: str) -> Any:
        return lambda *args, **kwargs: None


def _log_file(exp: Any, name: str, path: str) -> None:
    suffix = Path(name).suffix.lower()
    if suffix == ".keras":
        exp.log_model(config.model_name(), path, file_name="model.keras", overwrite=True)
    elif suffix in IMAGE_SUFFIXES:
        exp.log_image(path, name=Path(name).stem, overwrite=True)
    else:
        if suffix == ".json":
            found = confusion_of(path)
            if found is not None:
                matrix, labels = found
                exp.log_confusion_matrix(
                    matrix=matrix,
                    labels=labels or [str(i) for i in range(len(matrix))],
                    title="Confusion matrix (test set)",
                    file_name=f"{Path(name).stem}-confusion-matrix.json",
                )
        exp.log_asset(path, file_name=name, overwrite=True)
