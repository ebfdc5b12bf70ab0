"""Figures that show video frames: the anomaly timeline of a prediction (the paper's
Figure 5) and sampled frames of test clips with truth and prediction (its Figure 4).

They need the videos, so they live beside the predictor; figures made from run outputs
alone are in ``temporal/figures.py``. Same conventions: matplotlib's
object API, fixed sizes, constrained layout, titles and axis labels on everything.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from matplotlib.figure import Figure
from matplotlib.patches import Patch
from PIL import Image

from cache_schema import AvarError, InvalidInput, MissingInput, media_path
from extract.decode import decode_clip
from extract.windows import thumbnail
from temporal.figures import predict_test_split
from temporal.metrics import NORMAL
from temporal.plots import DPI, save_figure

from .predictor import THUMB_HEIGHT
from .results import VideoPrediction

logger = logging.getLogger(__name__)

TIMELINE_SIZE = (12.0, 5.6)      # inches
STRIP_WIDTH = 12.0
STRIP_ROW_HEIGHT = 2.0
_PALETTE = ("#C44E52", "#DD8452", "#8172B3", "#937860", "#DA8BC3", "#8C8C8C", "#CCB974", "#64B5CD", "#55A868",
            "#4C72B0")


def class_colours(class_names: Sequence[str]) -> dict[str, str]:
    """A fixed colour per class (normal in green), the same in every figure of a run."""
    anomalies = [c for c in class_names if c != NORMAL]
    colours = {c: _PALETTE[i % len(_PALETTE)] for i, c in enumerate(anomalies)}
    colours[NORMAL] = "#55A868"
    return colours


def _evenly(items: Sequence, k: int) -> list:
    if len(items) <= k:
        return list(items)
    idx = np.unique(np.round(np.linspace(0, len(items) - 1, k)).astype(int))
    return [items[i] for i in idx]


def _strip_frames(pred: VideoPrediction, k: int) -> list[tuple[float, Image.Image]]:
    """``k`` frames evenly over the video, one of them the frame nearest the score's peak."""
    thumbs = pred.thumbnails
    if len(thumbs) <= k or pred.peak is None:
        return _evenly(thumbs, k)
    times = np.array([t for t, _ in thumbs])
    at_peak = int(np.argmin(np.abs(times - pred.peak[0])))
    chosen = {thumbs.index(x) for x in _evenly(thumbs, k)}
    if at_peak not in chosen:  # replace the evenly spaced frame nearest the peak
        chosen.remove(min(chosen, key=lambda i: abs(times[i] - times[at_peak])))
        chosen.add(at_peak)
    return [thumbs[i] for i in sorted(chosen)]


def plot_timeline(pred: VideoPrediction, path: str | Path, max_frames: int = 8) -> Path:
    """Figure 5: the anomaly score over time, shaded where the predicted class is not
    normal (coloured by class), with a strip of sampled frames beneath, each at its time.
    Frames come from ``pred.thumbnails`` (predict with ``thumbnails=True``)."""
    fig = timeline_figure(pred, max_frames)
    path = Path(path)
    save_figure(fig, path)
    return path


def timeline_figure(pred: VideoPrediction, max_frames: int = 8) -> Figure:
    """The Figure-5 view of one prediction (see ``plot_timeline``)."""
    if pred.error:
        raise InvalidInput(f"{pred.video} was not predicted ({pred.error}); nothing to plot")
    colours = class_colours(pred.class_names)
    frames = _strip_frames(pred, max_frames)
    fig = Figure(figsize=TIMELINE_SIZE, layout="constrained")
    top, bottom = fig.subfigures(2, 1, height_ratios=[2.3, 1.0] if frames else [1.0, 0.01])
    ax = top.subplots()
    duration = pred.duration or (float(pred.times[-1]) if pred.times.size else 1.0)
    for s in pred.segments:
        ax.axvspan(s.start, s.end, color=colours.get(s.label, "#C44E52"), alpha=0.22, linewidth=0)
    has_scores = pred.scores.size and not np.all(np.isnan(pred.scores))
    if has_scores:
        ax.plot(pred.times, pred.scores, "-o", color="black", markersize=2.5, linewidth=1.2,
                label="anomaly score 1 - p(normal)")
        ax.axhline(0.5, color="grey", linestyle="--", linewidth=0.8)
    else:
        ax.text(0.5, 0.5, "no 'normal' class in this run: no anomaly score", transform=ax.transAxes, ha="center")
    for t, _ in frames:
        ax.plot([t], [0.0], marker="^", color="#4C72B0", markersize=7, clip_on=False)
    ax.set_xlim(0, duration)
    ax.set_ylim(0, 1.02)
    ax.set_xlabel("time (s)")
    ax.set_ylabel("anomaly score")
    handles = [Patch(color=colours.get(c, "#C44E52"), alpha=0.4, label=c)
               for c in dict.fromkeys(s.label for s in pred.segments)]
    if has_scores:
        handles = ax.get_legend_handles_labels()[0] + handles
    if handles:
        ax.legend(handles=handles, loc="upper left", bbox_to_anchor=(1.0, 1.0), fontsize=8, title="predicted",
                  title_fontsize=8)
    conf = float(np.max(pred.probs)) if pred.probs is not None else float("nan")
    mode = (f"windows of {pred.window:g} s every {pred.hop:g} s" if pred.mode == "window"
            else f"whole video as one clip of {len(pred.times)} steps")
    ax.set_title(f"{Path(pred.video).name}: {pred.label} (p = {conf:.2f}); {mode}", fontsize=10)
    if frames:
        axes = np.atleast_1d(bottom.subplots(1, max_frames))
        for a in axes:
            a.set_axis_off()
        for a, (t, image) in zip(axes, frames):
            a.imshow(np.asarray(image))
            hot = next((s for s in pred.segments if s.start <= t < s.end), None)
            a.set_title(f"{t:.1f} s" + (f"\n{hot.label}" if hot else ""), fontsize=8,
                        color=colours.get(hot.label, "#C44E52") if hot else "black")
        bottom.suptitle("sampled frames (▲ on the time axis)", fontsize=8)
    return fig


def _pick_clips(y_true: np.ndarray, y_pred: np.ndarray, n: int) -> list[int]:
    """Round-robin over the classes (one clip per class per round, a wrong one first), so the
    view shows many classes and the mistakes among them."""
    by_class: dict[int, list[int]] = {}
    for i in np.argsort(y_true, kind="stable").tolist():
        by_class.setdefault(int(y_true[i]), []).append(i)
    for c, rows in by_class.items():  # every other class shows a mistake first, if it has one
        rows.sort(key=lambda i: ((y_true[i] == y_pred[i]) == (c % 2 == 1), i))
    picked: list[int] = []
    while len(picked) < n and any(by_class.values()):
        for rows in by_class.values():
            if rows and len(picked) < n:
                picked.append(rows.pop(0))
    return picked


def plot_clip_strips(rundir: str | Path, path: str | Path, media_root: str | Path | None = None, n_clips: int = 8,
                     frames_per_clip: int = 6, cache: str | Path | None = None) -> Path:
    """Figure 4: for test clips of a run, a strip of frames sampled at step centres, with
    the true and the predicted class (wrong predictions in red). Predictions come from the
    run's cache; frames from the media under ``media_root`` (default: the dataset root
    recorded in the cache)."""
    tp = predict_test_split(rundir, cache)
    root = Path(media_root) if media_root is not None else (Path(tp.media_root) if tp.media_root else None)
    if root is None or not root.is_dir():
        raise MissingInput(f"the media of {tp.cache} are not at {root}; pass --media-root pointing at the dataset "
                                "folder the cache was extracted from")
    rows: list[tuple[int, list[tuple[float, Image.Image]] | None]] = []
    for i in _pick_clips(tp.y_true, tp.y_pred, max(n_clips * 2, n_clips)):
        if len(rows) == n_clips:
            break
        file = media_path(root, tp.keys[i])  # a key escapes bytes that are not UTF-8
        try:
            clip = decode_clip(file, frames_per_clip, frame_transform=lambda im: thumbnail(im, THUMB_HEIGHT))
        except AvarError as exc:
            logger.warning("skipping %s in the frame-strip view: %s", file, exc)
            continue
        frames = list(zip(clip.step_times.tolist(), clip.frames)) if clip.frames is not None else None
        rows.append((i, frames))
    if not rows:
        raise MissingInput(f"none of the run's test clips could be read under {root}; pass --media-root")
    fig = Figure(figsize=(STRIP_WIDTH, STRIP_ROW_HEIGHT * len(rows) + 0.5), layout="constrained")
    subs = np.atleast_1d(fig.subfigures(len(rows), 1))
    wrong = 0
    for sub, (i, frames) in zip(subs, rows):
        truth, guess = tp.class_names[tp.y_true[i]], tp.class_names[tp.y_pred[i]]
        ok = truth == guess
        wrong += not ok
        sub.suptitle(f"{tp.keys[i]}   true: {truth}   predicted: {guess} (p = {tp.probs[i].max():.2f})"
                     + ("" if ok else "   WRONG"), fontsize=9, color="black" if ok else "#C00000",
                     fontweight="normal" if ok else "bold")
        axes = np.atleast_1d(sub.subplots(1, frames_per_clip))
        for a in axes:
            a.set_axis_off()
        if frames is None:
            axes[0].text(0, 0.5, "no video stream (audio only)", fontsize=9)
            continue
        for a, (t, image) in zip(axes, frames):
            a.imshow(np.asarray(image))
            a.set_title(f"{t:.1f} s", fontsize=8)
    fig.suptitle(f"Test clips of {Path(rundir).name}: true vs predicted class ({wrong} of {len(rows)} shown are "
                 "wrong, in red)", fontsize=10)
    path = Path(path)
    save_figure(fig, path)
    return path


def strip_png_size(n_rows: int) -> tuple[int, int]:
    """(width, height) in pixels of a frame-strip figure of ``n_rows`` clips."""
    return int(round(STRIP_WIDTH * DPI)), int(round((STRIP_ROW_HEIGHT * n_rows + 0.5) * DPI))


def timeline_png_size() -> tuple[int, int]:
    return int(round(TIMELINE_SIZE[0] * DPI)), int(round(TIMELINE_SIZE[1] * DPI))


__all__ = ["class_colours", "plot_clip_strips", "plot_timeline", "strip_png_size",
           "timeline_figure", "timeline_png_size"]
