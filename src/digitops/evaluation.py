"""Classification metrics computed from predicted probabilities (NumPy only)."""

from __future__ import annotations

from typing import Any

import numpy as np


def confusion_matrix(labels: np.ndarray, predicted: np.ndarray, num_classes: int = 10) -> np.ndarray:
    """``cm[true, predicted]`` counts."""
    cm = np.zeros((num_classes, num_classes), dtype=np.int64)
    np.add.at(cm, (np.asarray(labels, dtype=np.int64), np.asarray(predicted, dtype=np.int64)), 1)
    return cm


def per_class(cm: np.ndarray) -> dict[str, dict[str, float]]:
    """Precision, recall, F1 and support per class from a confusion matrix."""
    tp = np.diag(cm).astype(float)
    predicted = cm.sum(axis=0).astype(float)
    support = cm.sum(axis=1).astype(float)
    with np.errstate(divide="ignore", invalid="ignore"):
        precision = np.where(predicted > 0, tp / predicted, 0.0)
        recall = np.where(support > 0, tp / support, 0.0)
        f1 = np.where(precision + recall > 0, 2 * precision * recall / (precision + recall), 0.0)
    return {
        str(c): {
            "precision": float(precision[c]),
            "recall": float(recall[c]),
            "f1": float(f1[c]),
            "support": int(support[c]),
        }
        for c in range(len(cm))
    }


def worst_mistakes(proba: np.ndarray, labels: np.ndarray, k: int = 16) -> list[dict[str, Any]]:
    """The ``k`` misclassified examples the model was most confident about."""
    labels = np.asarray(labels, dtype=np.int64)
    predicted = proba.argmax(axis=1)
    wrong = np.flatnonzero(predicted != labels)
    confidence = proba[wrong, predicted[wrong]]
    order = wrong[np.argsort(-confidence, kind="stable")][:k]
    return [
        {
            "index": int(i),
            "label": int(labels[i]),
            "predicted": int(predicted[i]),
            "confidence": float(proba[i, predicted[i]]),
            "p_label": float(proba[i, labels[i]]),
        }
        for i in order
    ]


def per_class_markdown(report: dict[str, dict[str, float]]) -> str:
    """Per-class precision/recall as a Markdown table."""
    rows = ["| digit | precision | recall | F1 | support |", "|---:|---:|---:|---:|---:|"]
    for digit, r in report.items():
        rows.append(
            f"| {digit} | {r['precision']:.2%} | {r['recall']:.2%} | {r['f1']:.2%} | {r['support']} |"
        )
    return "\n".join(rows)
