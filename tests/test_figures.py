"""The paper's figures: each `figures` output is a non-empty PNG of the size its kind
announces, and no two pieces of text in a figure overlap (class names, cell values,
titles), for the ten VAAR classes."""

from __future__ import annotations

import itertools
import json
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.text import Text
from PIL import Image

from temporal import plots as P
from temporal.rundir import RunDir
from tests.cache_factory import make_config, write_class_cache
from tests.test_predict import build_synthetic_run

VAAR = ("abuse", "baby_cry", "crash", "brawling", "explosion", "intruder", "normal", "pain", "police_siren",
        "vandalism")


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def compared(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 10-class feature cache, compared over two heads and three modalities (2 epochs)."""
    from temporal.compare import compare
    from temporal.train import TrainConfig

    root = tmp_path_factory.mktemp("figures")
    write_class_cache(root / "c.zarr", make_config(classes=VAAR), 100)
    compare(root / "c.zarr", root / "cmp", heads=("mtcn", "gru"), base=TrainConfig(epochs=2, progress=False))
    return root / "cmp"


def _run(compared: Path) -> Path:
    return next(p for p in (compared / "runs").iterdir() if p.name.startswith("mtcn-fused"))


def _cli(*args: str):
    from cli import main

    return CliRunner().invoke(main, list(args), catch_exceptions=False)


def _overlapping_texts(fig: Figure) -> list[tuple[str, str]]:
    """Pairs of visible texts whose boxes overlap. Two texts turned by the same angle (the
    rotated tick labels) are compared in their own frame: their axis-aligned boxes always
    overlap, what matters is the distance between their baselines."""
    canvas = FigureCanvasAgg(fig)
    canvas.draw()
    renderer = canvas.get_renderer()
    axes = [(ax, axis) for ax in fig.axes for axis in (ax.xaxis, ax.yaxis)]
    tick_labels = {id(x) for _, axis in axes for t in axis.get_major_ticks() + axis.get_minor_ticks()
                   for x in (t.label1, t.label2)}
    drawn = {id(x) for ax, axis in axes if ax.axison  # ticks within view, of axes that are shown
             for t in axis._update_ticks() for x in (t.label1, t.label2)}
    texts = [t for t in fig.findobj(Text) if t.get_visible() and t.get_text().strip()
             and (id(t) not in tick_labels or id(t) in drawn)]
    boxes = [(t, t.get_window_extent(renderer)) for t in texts]
    out = []
    for (a, ba), (b, bb) in itertools.combinations(boxes, 2):
        if ba.width <= 0 or bb.width <= 0 or not ba.overlaps(bb) or _area(ba, bb) <= 4.0:
            continue
        angle = a.get_rotation()
        if angle and angle == b.get_rotation():
            theta = np.radians(angle)
            d = b.get_transform().transform(b.get_position()) - a.get_transform().transform(a.get_position())
            gap = abs(-d[0] * np.sin(theta) + d[1] * np.cos(theta))
            if gap >= 0.9 * fig.dpi * max(a.get_fontsize(), b.get_fontsize()) / 72:
                continue
        out.append((a.get_text(), b.get_text()))
    return out


def _area(a, b) -> float:
    w = min(a.x1, b.x1) - max(a.x0, b.x0)
    h = min(a.y1, b.y1) - max(a.y0, b.y0)
    return max(w, 0) * max(h, 0)


def test_figures_command_writes_every_figure_at_its_size(compared: Path, tmp_path: Path) -> None:
    run = _run(compared)
    out = tmp_path / "figs"
    result = _cli("figures", str(run), "--out", str(out))  # table2.csv found two levels up
    assert result.exit_code == 0, result.output
    n = len(VAAR)
    expected = {"confusion_counts.png": P.png_size("confusion", n), "confusion_normalized.png": P.png_size("confusion", n),
                "f1_per_class.png": P.png_size("f1", n), "training_curves.png": P.png_size("curves"),
                "comparison_heatmap.png": P.png_size("heatmap", 2, 12)}
    for name, size in expected.items():
        path = out / name
        assert path.is_file() and path.stat().st_size > 5_000, name
        assert Image.open(path).size == size, name
    assert "skipped the frame-strip view" in result.output  # a feature-only cache has no media


def test_a_comparison_folder_alone_gives_the_heatmap(compared: Path, tmp_path: Path) -> None:
    result = _cli("figures", str(compared), "--out", str(tmp_path))
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in tmp_path.iterdir()) == ["comparison_heatmap.png"]


def test_a_run_draws_its_own_pngs_with_the_figures_drawings(compared: Path) -> None:
    """One drawing per figure: the run's confusion.png and curves.png and the comparison's
    table2.png are the figures command's drawings (same kind, same size)."""
    run = _run(compared)
    assert Image.open(run / "confusion.png").size == P.png_size("confusion", len(VAAR))
    assert Image.open(run / "curves.png").size == P.png_size("curves")
    assert Image.open(compared / "table2.png").size == P.png_size("heatmap", 2, 12)


def test_no_text_overlaps_in_the_run_figures(compared: Path) -> None:
    run = _run(compared)
    m = json.loads((run / "metrics.json").read_text())
    figs = {
        "counts": P.confusion_figure(m["confusion_matrix"], VAAR, "counts"),
        "normalized": P.confusion_figure(m["confusion_matrix"], VAAR, "normalised", normalize=True),
        "f1": P.f1_figure(m["per_class"], "F1", m["f1_macro"]),
        "curves": P.curves_figure(RunDir(run).read_history(), "curves", best_epoch=1),
        "heatmap": P.heatmap_figure(P.read_comparison(compared / "table2.csv")),
    }
    for name, fig in figs.items():
        assert _overlapping_texts(fig) == [], name


def test_normalized_confusion_rows_sum_to_one() -> None:
    cm = np.array([[3, 1], [0, 0]])
    fig = P.confusion_figure(cm, ("normal", "crash"), "t", normalize=True)
    texts = [t.get_text() for t in fig.axes[0].texts]
    assert texts == ["0.75", "0.25", "–", "–"]  # a class without test clips has no row to normalise


def test_frame_strips_and_timeline_from_real_media(tmp_path_factory: pytest.TempPathFactory, tmp_path: Path) -> None:
    from apply.media_figures import strip_png_size, timeline_figure
    from apply import PredictConfig, load_predictor

    run = build_synthetic_run(tmp_path_factory.getbasetemp() / "synthetic_run")
    result = _cli("figures", str(run), "--out", str(tmp_path), "--clips", "4")
    assert result.exit_code == 0, result.output
    strips = tmp_path / "clip_strips.png"
    assert strips.stat().st_size > 10_000
    assert Image.open(strips).size == strip_png_size(4)
    pred = load_predictor(run, PredictConfig(device="cpu")).predict(
        run.parent / "media" / "explosion" / "clip_05.mp4", PredictConfig(window=2.0, hop=1.0, thumbnails=True))
    assert _overlapping_texts(timeline_figure(pred)) == []


def test_the_overlap_check_sees_overlaps() -> None:
    fig = Figure(figsize=(3, 2))
    ax = fig.add_subplot()
    ax.text(0.5, 0.5, "police_siren")
    ax.text(0.52, 0.51, "vandalism")
    assert _overlapping_texts(fig) == [("police_siren", "vandalism")]
