"""Scoring a model on the field set's test side, beside the production model on the same drawings.

Used by ``notebooks/evaluate.ipynb``. The numbers go to the tracker as final
metrics (``field_images``, ``field_accuracy``, ``field_production_accuracy``,
``field_production_missing``) so the comparison and the gate read them from
any tracking backend; the details go to ``metrics.json`` as ``field_test``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field as dc_field
from pathlib import Path
from typing import Any, Callable

import numpy as np

from digitops import evaluation
from digitops.feedback import FeedbackError
from digitops.feedback import dataset


@dataclass
class FieldScore:
    """The candidate (and production) on the field set's test drawings."""

    export: str
    x: np.ndarray
    y: np.ndarray
    accuracy: float
    per_class: dict[str, dict[str, float]]
    worst: list[dict[str, Any]]
    production_version: str | None = None
    production_accuracy: float | None = None
    #: why production exists but could not be scored (the gate then refuses)
    production_problem: str | None = None
    hashes: list[str] = dc_field(default_factory=list)

    def metrics(self) -> dict[str, float]:
        """Final metrics for the tracker (floats only)."""
        out = {"field_images": float(len(self.y)), "field_accuracy": self.accuracy,
               "field_production_missing": 1.0 if self.production_problem else 0.0}
        if self.production_accuracy is not None:
            out["field_production_accuracy"] = self.production_accuracy
        return out

    def section(self) -> dict[str, Any]:
        """The ``field_test`` section of ``metrics.json``."""
        return {"export": self.export, "images": len(self.y), "accuracy": self.accuracy,
                "production_version": self.production_version, "production_accuracy": self.production_accuracy,
                "production_problem": self.production_problem, "per_class": self.per_class, "worst": self.worst,
                "hashes": self.hashes}

    def markdown(self) -> str:
        """One paragraph for the notebook."""
        text = f"**Field drawings ({self.export}): {self.accuracy:.2%}** on {len(self.y)} drawings kept for testing"
        if self.production_accuracy is not None:
            text += f"; production {self.production_version}: {self.production_accuracy:.2%} on the same drawings"
        elif self.production_problem:
            text += f"; production could not be scored: {self.production_problem}"
        return text + "."


def _trained_hashes(run_folder: Path | None) -> set[str]:
    if run_folder is None:
        return set()
    try:
        data = json.loads((run_folder / "metrics.json").read_text())
    except (OSError, ValueError):
        return set()
    return set((data.get("field_training") or {}).get("train_hashes") or [])


def _production_model() -> tuple[str | None, Callable[[], Any] | None]:
    """The production version and a loader for it (None, None when there is no production model)."""
    from digitops import config
    from digitops.registry import PRODUCTION, get_registry

    version = get_registry().get_by_status(config.model_name(), PRODUCTION)
    if version is None:
        return None, None

    def load() -> Any:
        from digitops import model
        from digitops.dashboard import loader

        return model.load(loader.fetch(version))  # checksum-verified copy in the model cache

    return version.version, load


def score(net: Any, *, worst_k: int = 16, run_folder: Path | None = None, field: dataset.FieldSet | None = None,
          production: Callable[[], tuple[str | None, Callable[[], Any] | None]] = _production_model) -> FieldScore | None:
    """Score ``net`` (and production) on the newest export's test side; None when there is no export or no test drawing.

    Refuses (FeedbackError) when the run trained on any of these drawings.
    """
    from digitops import model

    field = field if field is not None else dataset.load()
    if field is None:
        return None
    mask = field.test_mask()
    if not mask.any():
        return None
    x, y, hashes = field.x[mask], field.y[mask], [str(h) for h in field.hashes[mask]]
    overlap = _trained_hashes(run_folder) & set(hashes)
    if overlap:
        raise FeedbackError(f"this run trained on {len(overlap)} of the field set's test drawings; "
                            f"it cannot be scored on them")
    proba = model.evaluate(net, x, y)["probabilities"]
    cm = evaluation.confusion_matrix(y, proba.argmax(axis=1))
    result = FieldScore(field.version, x, y, float(np.mean(proba.argmax(axis=1) == y)), evaluation.per_class(cm),
                        evaluation.worst_mistakes(proba, y, worst_k), hashes=hashes)
    try:
        version, load = production()
        if version is not None and load is not None:
            result.production_version = version
            prod = model.evaluate(load(), x, y)["probabilities"]
            result.production_accuracy = float(np.mean(prod.argmax(axis=1) == y))
    except Exception as exc:  # noqa: BLE001 - registry, network, damaged file: the gate must refuse, not crash
        result.production_problem = f"{type(exc).__name__}: {exc}"[:300]
    return result
