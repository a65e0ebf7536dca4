"""Figures shared by the notebooks and the report: curves, confusion matrix, mistakes."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Sequence

import matplotlib.pyplot as plt
import numpy as np
from matplotlib.figure import Figure


def _save(fig: Figure, path: str | os.PathLike | None) -> Figure:
    if path is not None:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(path, dpi=110, bbox_inches="tight")
    return fig


def training_curves(
    history: dict[str, Sequence[float]],
    path: str | os.PathLike | None = None,
    member_epochs: Sequence[int] = (),
) -> Figure:
    """Loss and accuracy per epoch, training and validation side by side.

    With ``member_epochs`` (an ensemble's epochs per model) a dotted line
    marks where each next model's training starts.
    """
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.6))
    for ax, metric in zip(axes, ("loss", "accuracy")):
        for key, style in ((metric, "-o"), (f"val_{metric}", "--s")):
            values = history.get(key)
            if values:
                ax.plot(range(1, len(values) + 1), values, style, label=key)
        for boundary in np.cumsum(member_epochs)[:-1]:
            ax.axvline(boundary + 0.5, color="grey", linestyle=":", linewidth=1)
        ax.set_xlabel("epoch")
        ax.set_title(metric)
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend()
    fig.tight_layout()
    return _save(fig, path)


def confusion(cm: np.ndarray, path: str | os.PathLike | None = None) -> Figure:
    """Heat map of the confusion matrix with counts; the diagonal is masked for contrast."""
    fig, ax = plt.subplots(figsize=(6.2, 5.4))
    off = cm.astype(float).copy()
    np.fill_diagonal(off, np.nan)
    im = ax.imshow(off, cmap="Reds")
    fig.colorbar(im, ax=ax, label="errors (off-diagonal)")
    dark = 0.6 * np.nanmax(off) if np.isfinite(np.nanmax(off)) else np.inf
    for (i, j), v in np.ndenumerate(cm):
        color = "tab:blue" if i == j else ("white" if v > dark else "black")
        ax.text(j, i, str(v), ha="center", va="center", fontsize=7, color=color)
    ax.set_xticks(range(len(cm)))
    ax.set_yticks(range(len(cm)))
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(f"confusion matrix ({int(np.trace(cm))}/{int(cm.sum())} correct)")
    fig.tight_layout()
    return _save(fig, path)


def mistakes(images: np.ndarray, items: list[dict[str, Any]], path: str | os.PathLike | None = None) -> Figure:
    """A grid of misclassified digits titled ``true -> predicted (confidence)``."""
    n = max(len(items), 1)
    cols = min(8, n)
    rows = int(np.ceil(n / cols))
    fig, axes = plt.subplots(rows, cols, figsize=(1.4 * cols, 1.6 * rows), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for ax, item in zip(axes.flat, items):
        ax.imshow(images[item["index"]], cmap="gray")
        ax.set_title(f"{item['label']}→{item['predicted']} ({item['confidence']:.0%})", fontsize=8)
    if not items:
        axes.flat[0].text(0.5, 0.5, "no mistakes", ha="center", va="center")
    fig.tight_layout()
    return _save(fig, path)


def samples(images: np.ndarray, labels: np.ndarray, n: int = 16) -> Figure:
    """A strip of training digits with their labels."""
    n = min(n, len(images))
    fig, axes = plt.subplots(1, n, figsize=(n * 0.9, 1.2), squeeze=False)
    for ax, img, lab in zip(axes.flat, images[:n], labels[:n]):
        ax.imshow(img, cmap="gray")
        ax.set_title(str(int(lab)), fontsize=8)
        ax.axis("off")
    fig.tight_layout()
    return fig
