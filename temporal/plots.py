"""Figures of a run and of the comparison tables (matplotlib's object API: no pyplot, so
no global figure state and no display backend needed)."""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np
from matplotlib.figure import Figure
from sklearn.metrics import ConfusionMatrixDisplay


def plot_confusion(cm: Sequence[Sequence[int]], class_names: Sequence[str], path: str | Path, title: str) -> None:
    n = len(class_names)
    fig = Figure(figsize=(1.0 + 0.6 * n, 1.0 + 0.55 * n), layout="constrained")
    ax = fig.add_subplot()
    ConfusionMatrixDisplay(np.asarray(cm), display_labels=list(class_names)).plot(
        ax=ax, colorbar=False, xticks_rotation=45, values_format="d")
    ax.set_title(title, fontsize=9)
    fig.savefig(path, dpi=110)


def plot_history(history: Sequence[dict], path: str | Path, title: str) -> None:
    """Loss and accuracy per epoch, train and validation."""
    ep = [h["epoch"] for h in history]
    fig = Figure(figsize=(9, 3.4), layout="constrained")
    ax_loss, ax_acc = fig.subplots(1, 2)
    for part in ("train", "val"):
        ax_loss.plot(ep, [h[f"{part}_loss"] for h in history], label=part)
        ax_acc.plot(ep, [h[f"{part}_accuracy"] for h in history], label=part)
    ax_loss.set(xlabel="epoch", ylabel="loss", title="loss")
    ax_acc.set(xlabel="epoch", ylabel="accuracy", title="accuracy", ylim=(0, 1.02))
    ax_acc.legend()
    fig.suptitle(title, fontsize=9)
    fig.savefig(path, dpi=110)


def plot_heatmap(values: np.ndarray, rows: Sequence[str], cols: Sequence[str], path: str | Path, title: str,
                 labels: Sequence[Sequence[str]] | None = None) -> None:
    """A table of scores in [0, 1] as an annotated heat map."""
    fig = Figure(figsize=(1.6 + 1.3 * len(cols), 1.0 + 0.45 * len(rows)), layout="constrained")
    ax = fig.add_subplot()
    im = ax.imshow(values, vmin=0.0, vmax=1.0, cmap="viridis", aspect="auto")
    ax.set_xticks(range(len(cols)), list(cols))
    ax.set_yticks(range(len(rows)), list(rows))
    for i in range(len(rows)):
        for j in range(len(cols)):
            v = values[i, j]
            text = labels[i][j] if labels is not None else ("" if np.isnan(v) else f"{v:.2f}")
            ax.text(j, i, text, ha="center", va="center", fontsize=8, color="white" if v < 0.6 else "black")
    fig.colorbar(im, ax=ax)
    ax.set_title(title, fontsize=9)
    fig.savefig(path, dpi=110)
