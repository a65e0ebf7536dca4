"""Helpers for the tracking, registry, compare and report tests (no fixtures: conftest.py is shared)."""

from __future__ import annotations

import functools
import shutil
import tempfile
from pathlib import Path
from typing import Any

from digitops.tracking.base import FINISHED, Tracker

DATA = "0123456789abcdef"


@functools.lru_cache(maxsize=1)
def _built_model() -> Path:
    from digitops import model as model_mod

    folder = Path(tempfile.mkdtemp(prefix="digitops-test-model-"))
    return model_mod.save(model_mod.build("mlp", seed=0), folder / "model.keras")


def keras_model_file(dest: Path) -> Path:
    """A tiny real Keras model (the mlp) at ``dest``; built once per test process."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(_built_model(), dest)
    return dest


def add_run(
    tracker: Tracker,
    run_id: str,
    metrics: dict[str, float] | None = None,
    *,
    params: dict[str, Any] | None = None,
    data: str | None = DATA,
    status: str = FINISHED,
    project: str | None = None,
    history: dict[str, list[float]] | None = None,
) -> None:
    """Record a complete run through the tracker API, the way the notebooks do."""
    tracker.start_run(
        run_id,
        name=run_id,
        params=params if params is not None else {"architecture": "mlp", "epochs": 1},
        data_checksum=data,
        git_commit="a" * 40,
        project=project,
    )
    for key, values in (history or {}).items():
        for step, value in enumerate(values):
            tracker.log_metrics(run_id, {key: value}, step=step)
    if metrics:
        tracker.log_metrics(run_id, metrics)
    tracker.end_run(run_id, status)
