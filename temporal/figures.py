"""The paper's result figures of a run directory (and of a comparison table), no video needed.

* Figures 6 and 7: the test confusion matrix in counts and row-normalised (recall per
  class on the diagonal);
* per-class F1 bars, with the macro F1;
* the training curves (loss, accuracy, learning rate; the best epoch marked);
* the comparison table (``compare``'s ``table2.csv``) as a heat-map of every metric.

The drawings are :mod:`temporal.plots`' (the same ones a run draws into its own
``confusion.png`` and ``curves.png``); this module picks those a run's files support and
names their PNGs. Everything is read from files a run (or ``compare``) wrote, through
:class:`~temporal.rundir.RunDir`. Per-clip test predictions, which no run file holds, are
recomputed from the run's cache (``predict_test_split``); the frame-strip view (the
paper's Figure 4) needs the videos themselves and lives outside ``temporal``.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
from matplotlib.figure import Figure

from cache_schema import MissingInput, open_cache

from .compare import TABLE2_CSV
from .evaluate import load_test_split, predict
from .metrics import untrained_backbones
from .plots import (DPI, confusion_figure, curves_figure, f1_figure, heatmap_figure, read_comparison,
                    save_figure)
from .rundir import MissingRunFile, RunDir

logger = logging.getLogger(__name__)



def figure_file(out: str | Path, name: str) -> Path:
    """Where the figure ``name`` (a key of :func:`run_figures`' result, or ``clip_strips``)
    goes in the folder ``out``."""
    return Path(out) / f"{name}.png"


def _untrained_note(metrics: dict[str, Any]) -> str:
    return " (untrained backbones)" if untrained_backbones(metrics.get("pretrained_backbones")) else ""


def find_comparison(rundir: str | Path) -> Path | None:
    """``table2.csv`` of the comparison a run belongs to (``OUT/runs/<run>``), or in ``rundir``."""
    rundir = Path(rundir)
    for candidate in (rundir / TABLE2_CSV, rundir.parent.parent / TABLE2_CSV):
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
    run = load_test_split(rundir, cache)
    data, rows, clips = run.data, run.rows, run.clips
    pred = predict(run.model, clips)
    with open_cache(data.path) as reader:
        root = reader.attrs.get("root")
    return SplitPredictions([str(k) for k in data.keys[rows]], clips.label.numpy(), pred.clip_probs,
                           tuple(data.class_names), data.path, root)


# ------------------------------------------------------------------------- all of them


def run_figures(rundir: str | Path, out: str | Path | None = None, compare: str | Path | None = None,
                skipped: dict[str, str] | None = None) -> dict[str, Path]:
    """Every figure a run (and its comparison table, if found) supports, as PNG in ``out``
    (default ``RUNDIR/figures``). A folder holding only ``table2.csv`` gives the heat-map.

    With ``skipped`` (a dict to fill), one figure that cannot be written (a full disk, a
    name the file system refuses) is recorded there as ``name -> reason`` and the other
    figures are still written; without it, it raises. A damaged run file (``metrics.json``,
    ``table2.csv``) is the run's error, not one figure's: it always raises."""
    run = RunDir(rundir)
    out = Path(out) if out is not None else run.figures
    written: dict[str, Path] = {}
    table = Path(compare) if compare is not None else find_comparison(run.path)
    if not run.is_finished() and table is None:
        raise MissingRunFile(f"{run.path} has neither {run.metrics.name} (a finished run) nor {TABLE2_CSV} "
                             "(a comparison); train or compare first, or pass --compare TABLE2.CSV")

    def draw(names: tuple[str, ...], make: Callable[[], dict[str, Figure]]) -> None:
        try:
            for name, fig in make().items():
                written[name] = save_figure(fig, figure_file(out, name))
        except OSError as exc:  # this figure could not be written; a damaged run file is the run's error
            if skipped is None:
                raise
            for name in names:
                if name not in written:
                    skipped[name] = f"skipped {name}: {exc}"
                    logger.warning("%s", skipped[name])

    if run.is_finished():
        def run_figs() -> dict[str, Figure]:
            m = run.read_metrics(required=("class_names", "confusion_matrix", "per_class", "n_test"))
            names = m["class_names"]
            what = f"{m.get('head')} / {m.get('modality')} ({m.get('fusion')})"
            note = _untrained_note(m)
            return {
                "confusion_counts": confusion_figure(m["confusion_matrix"], names,
                                                     f"Confusion matrix, {what}: {m['n_test']} test clips{note}"),
                "confusion_normalized": confusion_figure(
                    m["confusion_matrix"], names, f"Normalised confusion matrix (rows sum to 1), {what}{note}",
                    normalize=True),
                "f1_per_class": f1_figure(m["per_class"], f"Per-class F1, {what}{note}", macro=m.get("f1_macro")),
            }
        draw(("confusion_counts", "confusion_normalized", "f1_per_class"), run_figs)
    if run.has_history():
        def curves() -> dict[str, Figure]:
            what = run.path.name
            if run.is_run():
                cfg = run.read_config()
                what = f"{cfg.label}, seed {cfg.train.seed}"
            return {"training_curves": curves_figure(run.read_history(), f"Training curves, {what}",
                                                     best_epoch=run.read_training().get("best_epoch"))}
        draw(("training_curves",), curves)
    if table is not None:
        def heatmap() -> dict[str, Figure]:
            if not table.is_file():
                raise MissingInput(f"no comparison table at {table}; run `compare` first")
            return {"comparison_heatmap": heatmap_figure(read_comparison(table))}
        draw(("comparison_heatmap",), heatmap)
    for name, path in written.items():
        logger.info("wrote %s: %s", name, path)
    return written


__all__ = ["DPI", "SplitPredictions", "figure_file", "find_comparison", "predict_test_split",
           "run_figures"]
