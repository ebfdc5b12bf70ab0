"""The paper's result figures from a run directory (and a comparison table), no video needed.

* Figures 6 and 7: the test confusion matrix in counts and row-normalised (recall per
  class on the diagonal);
* per-class F1 bars, with the macro F1;
* the training curves (loss, accuracy, learning rate; the best epoch marked);
* the comparison table (``compare``'s ``table2.csv``) as a heat-map of every metric.

Everything is read from files a run (or ``compare``) wrote: ``metrics.json``,
``history.csv``, ``training.json``, ``table2.csv``. Per-clip test predictions, which no run
file holds, are recomputed from the run's cache (``predict_test_split``); the frame-strip
view (the paper's Figure 4) needs the videos themselves and lives beside ``cli.py``.

Figures use matplotlib's object API (no pyplot state), a fixed size per figure kind and
constrained layout, so the PNG size is known in advance (``figure_size``) and labels never
overlap: x tick labels are rotated, long class lists get taller figures.
"""

from __future__ import annotations

import csv
import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np
from matplotlib.figure import Figure

logger = logging.getLogger(__name__)

DPI = 110
FIGURES_DIR = "figures"
METRICS = (("accuracy", "Acc"), ("precision_macro", "Pre"), ("recall_macro", "Rec"), ("f1_macro", "F1"))
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


def _save(fig: Figure, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=DPI)
    return path


def _untrained_note(metrics: dict[str, Any]) -> str:
    pb = metrics.get("pretrained_backbones") or {}
    return " (untrained backbones)" if pb and not pb.get("both") else ""


# ------------------------------------------------------------------------- run figures


def plot_confusion_matrix(cm: Sequence[Sequence[int]], class_names: Sequence[str], path: str | Path, title: str,
                          normalize: bool = False) -> Path:
    """Figure 6 (counts) or Figure 7 (each row divided by the class's test clips)."""
    return _save(confusion_figure(cm, class_names, title, normalize), path)


def confusion_figure(cm: Sequence[Sequence[int]], class_names: Sequence[str], title: str,
                     normalize: bool = False) -> Figure:
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


def plot_f1_bars(per_class: dict[str, dict[str, float]], path: str | Path, title: str,
                 macro: float | None = None) -> Path:
    """Per-class F1 as horizontal bars (class names read level), value at each bar's end."""
    return _save(f1_figure(per_class, title, macro), path)


def f1_figure(per_class: dict[str, dict[str, float]], title: str, macro: float | None = None) -> Figure:
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


def read_history(path: str | Path) -> list[dict[str, float]]:
    with Path(path).open(newline="") as f:
        return [{k: float(v) for k, v in row.items()} for row in csv.DictReader(f)]


def plot_training_curves(history: Sequence[dict[str, float]], path: str | Path, title: str,
                         best_epoch: int | None = None) -> Path:
    """Loss, accuracy (train and validation) and learning rate per epoch."""
    return _save(curves_figure(history, title, best_epoch), path)


def curves_figure(history: Sequence[dict[str, float]], title: str, best_epoch: int | None = None) -> Figure:
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


def read_comparison(path: str | Path) -> tuple[list[str], list[str], dict[tuple[str, str], dict[str, float]]]:
    """``compare``'s ``table2.csv``: heads, modalities (first-seen order) and means per cell."""
    heads: list[str] = []
    modalities: list[str] = []
    cells: dict[tuple[str, str], dict[str, float]] = {}
    with Path(path).open(newline="") as f:
        for row in csv.DictReader(f):
            h, m = row.get("head", ""), row.get("modality") or "fused"
            heads += [h] if h not in heads else []
            modalities += [m] if m not in modalities else []
            cells[(h, m)] = {k: float(row[f"{k}_mean"]) for k, _ in METRICS if row.get(f"{k}_mean") not in (None, "")}
    if not cells:
        raise ValueError(f"{path} holds no rows; run `compare` to completion first")
    return heads, modalities, cells


def plot_comparison_heatmap(table_csv: str | Path, path: str | Path, title: str | None = None) -> Path:
    """Table 2 as a heat-map: heads down, every (modality, metric) across, values in %."""
    return _save(heatmap_figure(table_csv, title), path)


def heatmap_figure(table_csv: str | Path, title: str | None = None) -> Figure:
    heads, modalities, cells = read_comparison(table_csv)
    cols = [(m, k, short) for m in modalities for k, short in METRICS]
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
    for j in range(len(METRICS), len(cols), len(METRICS)):  # separate the modalities
        ax.axvline(j - 0.5, color="white", linewidth=2)
    ax.set_ylabel("temporal head")
    ax.set_title(title or "Comparison of temporal heads (test split, %)", fontsize=10)
    fig.colorbar(im, ax=ax, shrink=0.8, label="score")
    return fig


def find_comparison(rundir: str | Path) -> Path | None:
    """``table2.csv`` of the comparison a run belongs to (``OUT/runs/<run>``), or in ``rundir``."""
    rundir = Path(rundir)
    for candidate in (rundir / "table2.csv", rundir.parent.parent / "table2.csv"):
        if candidate.is_file():
            return candidate
    return None


# ------------------------------------------------------------------------- predictions


@dataclass(frozen=True)
class SplitPredictions:
    """The run's test clips with their true labels and predicted probabilities."""

    keys: list[str]
    y_true: np.ndarray      # [N]
    probs: np.ndarray       # [N, C]
    class_names: tuple[str, ...]
    cache: Path
    media_root: str | None  # the dataset root recorded in the cache, if any

    @property
    def y_pred(self) -> np.ndarray:
        return self.probs.argmax(1)


def predict_test_split(rundir: str | Path, cache: str | Path | None = None) -> SplitPredictions:
    """Recompute the run's test predictions from its cache (metrics.json keeps only counts)."""
    from cache_schema import open_cache

    from .evaluate import load_test_split, predict

    run = load_test_split(rundir, cache)
    data, rows, clips = run.data, run.rows, run.clips
    pred = predict(run.model, clips)
    with open_cache(data.path) as reader:
        root = reader.attrs.get("root")
    return SplitPredictions([str(k) for k in data.keys[rows]], clips.label.numpy(), pred.clip_probs,
                           tuple(data.class_names), data.path, root)


# ------------------------------------------------------------------------- all of them


def run_figures(rundir: str | Path, out: str | Path | None = None, compare: str | Path | None = None,
                ) -> dict[str, Path]:
    """Every figure a run (and its comparison table, if found) supports, as PNG in ``out``
    (default ``RUNDIR/figures``). A folder holding only ``table2.csv`` gives the heat-map."""
    rundir = Path(rundir)
    out = Path(out) if out is not None else rundir / FIGURES_DIR
    written: dict[str, Path] = {}
    table = Path(compare) if compare is not None else find_comparison(rundir)
    metrics_path = rundir / "metrics.json"
    if not metrics_path.is_file() and table is None:
        raise FileNotFoundError(f"{rundir} has neither metrics.json (a finished run) nor table2.csv (a comparison); "
                                "train or compare first, or pass --compare TABLE2.CSV")
    if metrics_path.is_file():
        m = json.loads(metrics_path.read_text())
        names = m["class_names"]
        what = f"{m.get('head')} / {m.get('modality')} ({m.get('fusion')})"
        note = _untrained_note(m)
        written["confusion_counts"] = plot_confusion_matrix(
            m["confusion_matrix"], names, out / "confusion_counts.png",
            f"Confusion matrix, {what}: {m['n_test']} test clips{note}")
        written["confusion_normalized"] = plot_confusion_matrix(
            m["confusion_matrix"], names, out / "confusion_normalized.png",
            f"Normalised confusion matrix (rows sum to 1), {what}{note}", normalize=True)
        written["f1_per_class"] = plot_f1_bars(m["per_class"], out / "f1_per_class.png",
                                               f"Per-class F1, {what}{note}", macro=m.get("f1_macro"))
    if (rundir / "history.csv").is_file():
        training = json.loads((rundir / "training.json").read_text()) if (rundir / "training.json").is_file() else {}
        cfg = json.loads((rundir / "config.json").read_text()).get("train", {}) \
            if (rundir / "config.json").is_file() else {}
        what = f"{cfg.get('head')} / {cfg.get('modality')} ({cfg.get('fusion')}), seed {cfg.get('seed')}" if cfg \
            else rundir.name
        written["training_curves"] = plot_training_curves(
            read_history(rundir / "history.csv"), out / "training_curves.png", f"Training curves, {what}",
            best_epoch=training.get("best_epoch"))
    if table is not None:
        if not table.is_file():
            raise FileNotFoundError(f"no comparison table at {table}; run `compare` first")
        written["comparison_heatmap"] = plot_comparison_heatmap(table, out / "comparison_heatmap.png")
    for name, path in written.items():
        logger.info("wrote %s: %s", name, path)
    return written


__all__ = ["DPI", "SplitPredictions", "confusion_figure", "curves_figure", "f1_figure", "figure_size",
           "heatmap_figure", "find_comparison", "plot_comparison_heatmap",
           "plot_confusion_matrix", "plot_f1_bars", "plot_training_curves", "png_size", "read_comparison",
           "read_history", "run_figures", "predict_test_split"]
