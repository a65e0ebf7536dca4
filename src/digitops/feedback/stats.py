"""Summaries of the kept field drawings: counts per label and model version, and the serving model's confusion."""

from __future__ import annotations

from collections import Counter
from typing import Any, Sequence

import numpy as np

from digitops.feedback.store import Record


def summary(records: Sequence[Record]) -> dict[str, Any]:
    """Counts per true label and per model version, and the confusion (true x predicted) of what was served."""
    confusion = np.zeros((10, 10), dtype=int)
    per_version: dict[str, dict[str, int]] = {}
    for r in records:
        v = per_version.setdefault(f"{r.model_name} {r.model_version}", {"drawings": 0, "right": 0})
        v["drawings"] += 1
        if r.predicted is not None:
            confusion[r.label, r.predicted] += 1
            v["right"] += int(r.predicted == r.label)
    labels = Counter(r.label for r in records)
    return {
        "drawings": len(records),
        "per_label": {str(d): labels.get(d, 0) for d in range(10)},
        "per_model_version": per_version,
        "confusion": confusion.tolist(),
    }


def confusion_text(confusion: Sequence[Sequence[int]]) -> str:
    """The confusion matrix as a small text table (rows: true label, columns: predicted)."""
    lines = ["true\\said " + " ".join(f"{d:>4}" for d in range(10))]
    for d, row in enumerate(confusion):
        lines.append(f"{d:>9} " + " ".join(f"{n:>4}" if n else "   ." for n in row))
    return "\n".join(lines)
