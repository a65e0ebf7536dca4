"""Confusion matrix, per-class metrics and worst mistakes."""

from __future__ import annotations

import numpy as np
import pytest

from digitops import evaluation


def test_confusion_matrix_counts_true_by_predicted() -> None:
    cm = evaluation.confusion_matrix(np.array([0, 0, 1, 2]), np.array([0, 1, 1, 2]), num_classes=3)
    assert cm.tolist() == [[1, 1, 0], [0, 1, 0], [0, 0, 1]]


def test_per_class_precision_recall_f1() -> None:
    cm = np.array([[8, 2], [1, 9]])
    report = evaluation.per_class(cm)
    assert report["0"]["precision"] == pytest.approx(8 / 9)
    assert report["0"]["recall"] == pytest.approx(0.8)
    assert report["1"]["support"] == 10
    p, r = report["1"]["precision"], report["1"]["recall"]
    assert report["1"]["f1"] == pytest.approx(2 * p * r / (p + r))


def test_per_class_without_predictions_or_support_is_zero_not_nan() -> None:
    report = evaluation.per_class(np.array([[5, 0], [0, 0]]))
    assert report["1"] == {"precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 0}


def test_worst_mistakes_are_the_most_confident_wrong_ones() -> None:
    proba = np.array([[0.9, 0.1], [0.2, 0.8], [0.4, 0.6], [0.05, 0.95]])
    labels = np.array([0, 0, 0, 1])
    worst = evaluation.worst_mistakes(proba, labels, k=5)
    assert [w["index"] for w in worst] == [1, 2]
    assert worst[0] == {"index": 1, "label": 0, "predicted": 1, "confidence": 0.8, "p_label": 0.2}


def test_per_class_markdown_has_a_row_per_digit() -> None:
    text = evaluation.per_class_markdown(evaluation.per_class(np.eye(10, dtype=int) * 3))
    assert text.count("\n") == 11 and "| 9 | 100.00% |" in text
