"""The drawings of a run and of a comparison, one function per drawing.

* the confusion matrix, in counts (the paper's Figure 6; a run's ``confusion.png``) or
  row-normalised (Figure 7: recall per class on the diagonal);
* per-class F1 bars, with the macro F1;
* the training curves (loss, accuracy, learning rate; the best epoch marked; a run's
  ``curves.png``);
* the comparison table as a heat-map of every metric (``compare``'s ``table2.png``).

Training, evaluation, ``compare`` and ``figures.run_figures`` all draw with these, so a
run's own PNGs and the ``figures`` command's look the same. Each function returns a
:class:`~matplotlib.figure.Figure` (matplotlib's object API: no pyplot state, no display
backend); :func:`save_figure` writes it atomically. A fixed size per figure kind and
constrained layout make the PNG size known in advance (:func:`png_size`) and keep labels
apart: x tick labels are rotated, long class lists get taller figures.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
from matplotlib.figure import Figure

from cache_schema import InvalidInput, replace_atomically

DPI = 110
METRIC_COLUMNS = (("accuracy", "Acc"), ("precision_macro", "Pre"), ("recall_macro", "Rec"), ("f1_macro", "F1"))
MODALITY_TITLES = {"audio": "Audio", "video": "Video", "fused": "Audio-visual"}


def figure_size(kind: str, n: int = 0, m: int = 0) -> tuple[float, float]:
    """Size in inches of each figure kind: ``n`` classes (or table rows), ``m`` columns.
    Exposed so that callers and tests know the PNG size (inches x ``DPI``) in advance."""
    if kind == "confusion":
        return (2.4 + 0.62 * n, 1.9 + 0.55 * n)
    if kind == "f1":
        return (7.0, 1.4 + 0.36 * n)
    if kind == "curves":
        return (12.0, 3.6)
    if kind == "heatmap":
        return (2.6 + 0.62 * m, 2.0 + 0.42 * n)
    raise ValueError(f"unknown figure kind {kind!r}")


def png_size(kind: str, n: int = 0, m: int = 0) -> tuple[int, int]:
    """(width, height) in pixels of a saved figure of this kind."""
    w, h = figure_size(kind, n, m)
    return int(round(w * DPI)), int(round(h * DPI))


def save_figure(fig: Figure, path: str | Path) -> Path:
    """``fig`` as a PNG at ``path`` (folders made), written to a temporary name and renamed
    into place, so that an interrupted save never leaves a torn image."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    return replace_atomically(path, lambda p: fig.savefig(p, dpi=DPI, format=path.suffix.lstrip(".") or "png"))


def confusion_figure(cm: Sequence[Sequence[int]], class_names: Sequence[str], title: str,
                     normalize: bool = False) -> Figure:
    """Figure 6 (counts) or Figure 7 (each row divided by the class's test clips)."""
    counts = np.asarray(cm, dtype=np.float64)
    n = len(class_names)
    support = counts.sum(axis=1, keepdims=True)
    with np.errstate(invalid="ignore", divide="ignore"):
        values = counts / support if normalize else counts
    fig = Figure(figsize=figure_size("confusion", n), layout="constrained")
    ax = fig.add_subplot()
    top = 1.0 if normalize else max(float(np.nanmax(values)) if values.size else 1.0, 1.0)
    im = ax.imshow(np.nan_to_num(values), cmap="Blues", vmin=0.0, vmax=top)
    fontsize = 9 if n <= 10 else 7
    for i in range(n):
        for j in range(n):
            v = values[i, j]
            if normalize:
                text = "–" if np.isnan(v) else ("0" if v == 0 else f"{v:.2f}")
            else:
                text = f"{int(v)}"
            ax.text(j, i, text, ha="center", va="center", fontsize=fontsize,
                    color="white" if (not np.isnan(v) and v > 0.55 * top) else "black")
    ax.set_xticks(range(n), list(class_names), rotation=45, ha="right", rotation_mode="anchor")
    ax.set_yticks(range(n), list(class_names))
    ax.set_xlabel("predicted class")
    ax.set_ylabel("true class")
    ax.set_title(title, fontsize=10)
    fig.colorbar(im, ax=ax, shrink=0.8, label="fraction of the true class" if normalize else "test clips")
    return fig


def f1_figure(per_class: dict[str, dict[str, float]], title: str, macro: float | None = None) -> Figure:
    """Per-class F1 as horizontal bars (class names read level), value at each bar's end."""
    names = list(per_class)
    f1 = np.array([per_class[c]["f1"] for c in names])
    support = [per_class[c].get("support", 0) for c in names]
    fig = Figure(figsize=figure_size("f1", len(names)), layout="constrained")
    ax = fig.add_subplot()
    y = np.arange(len(names))
    ax.barh(y, f1, color="#4C72B0", height=0.7)
    for yi, v, s in zip(y, f1, support):
        ax.text(min(v + 0.01, 0.9), yi, f"{v:.2f}  (n={s})", va="center", fontsize=8,
                bbox={"facecolor": "white", "alpha": 0.8, "edgecolor": "none", "pad": 1})
    if macro is not None:
        ax.axvline(macro, color="#C44E52", linestyle="--", linewidth=1.2, label=f"macro F1 {macro:.2f}")
        ax.legend(loc="lower right", fontsize=8)
    ax.set_yticks(y, names)
    ax.invert_yaxis()
    ax.set_xlim(0, 1.08)
    ax.set_xlabel("F1 on the test split")
    ax.set_title(title, fontsize=10)
    return fig


def curves_figure(history: Sequence[dict[str, float]], title: str, best_epoch: int | None = None) -> Figure:
    """Loss, accuracy (train and validation) and learning rate per epoch."""
    ep = [int(h["epoch"]) for h in history]
    fig = Figure(figsize=figure_size("curves"), layout="constrained")
    ax_loss, ax_acc, ax_lr = fig.subplots(1, 3)
    for part, style in (("train", "-"), ("val", "--")):
        ax_loss.plot(ep, [h[f"{part}_loss"] for h in history], style, label=part)
        ax_acc.plot(ep, [h[f"{part}_accuracy"] for h in history], style, label=part)
    ax_lr.plot(ep, [h["lr"] for h in history], color="#55A868")
    ax_lr.set_yscale("log")
    for ax in (ax_loss, ax_acc):
        if best_epoch:
            ax.axvline(best_epoch, color="grey", linestyle=":", linewidth=1, label=f"best epoch {best_epoch}")
        ax.legend(fontsize=8)
    ax_loss.set(xlabel="epoch", ylabel="loss", title="loss")
    ax_acc.set(xlabel="epoch", ylabel="accuracy", title="accuracy", ylim=(0, 1.02))
    ax_lr.set(xlabel="epoch", ylabel="learning rate", title="learning rate")
    fig.suptitle(title, fontsize=10)
    return fig


# ------------------------------------------------------------------------- comparison


@dataclass(frozen=True)
class Comparison:
    """What the heat-map draws: heads (rows), modalities, and the mean of every metric of
    ``METRIC_COLUMNS`` per (head, modality) cell."""

    heads: tuple[str, ...]
    modalities: tuple[str, ...]
    cells: dict[tuple[str, str], dict[str, float]]


def read_comparison(path: str | Path) -> Comparison:
    """``compare``'s ``table2.csv``: heads, modalities (first-seen order) and means per cell."""
    heads: list[str] = []
    modalities: list[str] = []
    cells: dict[tuple[str, str], dict[str, float]] = {}
    fix = "run `compare` again to rewrite it, or pass --compare with another table2.csv"
    try:
        with Path(path).open(newline="", encoding="utf-8") as f:
            for n, row in enumerate(csv.DictReader(f), 2):  # line 1 is the header
                h, m = row.get("head") or "", row.get("modality") or "fused"
                heads += [h] if h not in heads else []
                modalities += [m] if m not in modalities else []
                try:
                    cells[(h, m)] = {k: float(row[f"{k}_mean"]) for k, _ in METRIC_COLUMNS
                                     if row.get(f"{k}_mean") not in (None, "")}
                except (TypeError, ValueError) as exc:
                    raise InvalidInput(f"{path}:{n}: a metric that is not a number ({exc}); {fix}") from None
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise InvalidInput(f"{path} cannot be read as a comparison table ({exc}); {fix}") from None
    if not cells:
        raise InvalidInput(f"{path} holds no rows; run `compare` to completion first")
    return Comparison(tuple(heads), tuple(modalities), cells)


def heatmap_figure(table: Comparison, title: str | None = None) -> Figure:
    """Table 2 as a heat-map: heads down, every (modality, metric) across, values in %."""
    heads, modalities, cells = table.heads, table.modalities, table.cells
    cols = [(m, k, short) for m in modalities for k, short in METRIC_COLUMNS]
    values = np.array([[cells.get((h, m), {}).get(k, np.nan) for m, k, _ in cols] for h in heads])
    fig = Figure(figsize=figure_size("heatmap", len(heads), len(cols)), layout="constrained")
    ax = fig.add_subplot()
    im = ax.imshow(np.ma.masked_invalid(values), cmap="viridis", vmin=0.0, vmax=1.0, aspect="auto")
    for i in range(len(heads)):
        for j in range(len(cols)):
            v = values[i, j]
            ax.text(j, i, "–" if np.isnan(v) else f"{100 * v:.1f}", ha="center", va="center", fontsize=8,
                    color="white" if np.isnan(v) or v < 0.6 else "black")
    ax.set_xticks(range(len(cols)), [f"{MODALITY_TITLES.get(m, m)} {short}" for m, _, short in cols], rotation=45,
                  ha="right", rotation_mode="anchor")
    ax.set_yticks(range(len(heads)), heads)
    for j in range(len(METRIC_COLUMNS), len(cols), len(METRIC_COLUMNS)):  # separate the modalities
        ax.axvline(j - 0.5, color="white", linewidth=2)
    ax.set_ylabel("temporal head")
    ax.set_title(title or "Comparison of temporal heads (test split, %)", fontsize=10)
    fig.colorbar(im, ax=ax, shrink=0.8, label="score")
    return fig


__all__ = ["DPI", "METRIC_COLUMNS", "MODALITY_TITLES", "Comparison", "confusion_figure", "curves_figure",
           "f1_figure", "figure_size", "heatmap_figure", "png_size", "read_comparison", "save_figure"]
