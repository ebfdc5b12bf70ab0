"""Figures that show video frames: the anomaly timeline of a prediction (the paper's
Figure 5) and sampled frames of test clips with truth and prediction (its Figure 4).

They need the videos, so they live beside the predictor; figures made from run outputs
alone are in ``temporal/figures.py``. Same conventions: matplotlib's
object API, fixed sizes, constrained layout, titles and axis labels on everything.
"""

from __future__ import annotations

import hashlib
import logging
import os
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from matplotlib.figure import Figure
from matplotlib.patches import Patch
from PIL import Image

from cache_schema import AvarError, InvalidInput, MissingInput, check_output_file, media_path
from extract.decode import decode_clip
from extract.windows import thumbnail
from temporal.figures import figure_file, predict_test_split, run_figures
from temporal.metrics import NORMAL
from temporal.plots import DPI, save_figure
from temporal.rundir import RunDir

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


def display_name(name: str) -> str:
    """A file name as text a figure can draw: bytes that are not valid UTF-8 (kept in a
    ``str`` as surrogate escapes, which matplotlib's font engine refuses) shown as ``\\xNN``."""
    return os.fsencode(name).decode("utf-8", "backslashreplace")


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
    ax.set_title(f"{display_name(Path(pred.video).name)}: {pred.label} (p = {conf:.2f}); {mode}", fontsize=10)
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
        sub.suptitle(f"{display_name(tp.keys[i])}   true: {truth}   predicted: {guess} (p = {tp.probs[i].max():.2f})"
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


# ------------------------------------------------------------------- output names

# Bytes a file name may not use up: the temporary name of an atomic write adds a dot, the
# process id and ``.tmp`` around it (``cache_schema.atomic``), with room to spare.
_TMP_NAME_MARGIN = 32


def figure_formats() -> tuple[str, ...]:
    """File suffixes (without the dot) matplotlib can write a figure as."""
    from matplotlib.backend_bases import FigureCanvasBase

    return tuple(sorted(FigureCanvasBase.get_supported_filetypes()))


def _existing_ancestor(path: Path) -> Path:
    folder = path.parent if str(path.parent) else Path(".")
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    return folder


def _name_max(folder: Path) -> int:
    try:
        return int(os.pathconf(folder, "PC_NAME_MAX"))
    except (OSError, ValueError):
        return 255


def check_figure_path(path: str | Path, option: str = "--plot") -> Path:
    """``path`` as a place a figure can be written, or ``InvalidInput`` saying why not:
    a suffix matplotlib cannot write, a name too long for the file system, a folder that
    is a file or not writable. Called before any work starts, so that a batch never
    computes everything and then fails on its output option. No suffix means ``.png``."""
    path = Path(path)
    if not path.suffix:
        path = path.with_name(path.name + ".png")
    fmt = path.suffix[1:].lower()
    if fmt not in figure_formats():
        raise InvalidInput(f"{option} {path}: matplotlib cannot write '.{fmt}' figures; use one of "
                           f"{', '.join('.' + f for f in figure_formats())} (e.g. .png)")
    check_output_file(path, option, example="timeline.png")
    limit = _name_max(_existing_ancestor(path)) - _TMP_NAME_MARGIN
    if len(os.fsencode(path.name)) > limit:
        raise InvalidInput(f"{option} {path}: the file name is longer than this file system allows "
                           f"({limit} bytes with the temporary name); choose a shorter name")
    return path


def _short_hash(text: str) -> str:
    return hashlib.sha1(os.fsencode(text)).hexdigest()[:8]


def _safe_stem(stem: str) -> str:
    """``stem`` with every character that is not printable UTF-8 (an undecodable byte of a
    file name, a control character, a path separator) replaced by ``_``."""
    out = []
    for ch in stem:
        try:
            ch.encode("utf-8")
            ok = ch.isprintable() and ch not in "/\\"
        except UnicodeEncodeError:
            ok = False
        out.append(ch if ok else "_")
    return "".join(out)


def timeline_paths(plot: str | Path, videos: Sequence[str | Path]) -> list[Path]:
    """The Figure-5 file of each video of a ``predict --plot PLOT`` batch, one per input,
    never two the same.

    One video: ``PLOT`` itself. Several: ``PLOT-<video stem>.<suffix>``; when two videos
    share a stem (``pa/cam.mp4``, ``pb/cam.mp4``, ``pb/cam.mkv``), or a stem had to be
    cleaned (characters that are not valid UTF-8) or shortened (the file system's name
    limit), a short hash of the video's path as given is added, so the names are
    deterministic and distinct. ``PLOT`` is checked first (``check_figure_path``): an
    unusable one raises ``InvalidInput`` before any video is decoded."""
    plot = check_figure_path(plot)
    if len(videos) == 1:
        return [plot]
    budget = _name_max(_existing_ancestor(plot)) - _TMP_NAME_MARGIN - len(os.fsencode(f"{plot.stem}-{plot.suffix}"))
    if budget < 16:
        raise InvalidInput(f"--plot {plot}: the name leaves no room for the video names of a batch "
                           f"(PLOT-<video>{plot.suffix}); choose a shorter name")
    stems = [Path(v).stem for v in videos]
    # distinct inputs per stem: the same path given twice is one input and one figure
    by_stem = Counter(Path(v).stem for v in dict.fromkeys(str(v) for v in videos))
    paths = []
    for video, stem in zip(videos, stems):
        name = _safe_stem(stem)
        if name != stem or by_stem[stem] > 1 or len(os.fsencode(name)) > budget:
            room = max(budget - 9, 1)   # 9: "-" and the hash
            name = os.fsencode(name)[:room].decode("utf-8", "ignore") + "-" + _short_hash(str(video))
        paths.append(plot.with_name(f"{plot.stem}-{name}{plot.suffix}"))
    return paths


# ------------------------------------------------------------------- every figure


@dataclass(frozen=True)
class FiguresResult:
    """What ``all_figures`` wrote (name -> PNG) and what it could not draw (name -> why)."""

    written: dict[str, Path] = field(default_factory=dict)
    skipped: dict[str, str] = field(default_factory=dict)


def all_figures(rundir: str | Path, out: str | Path | None = None, compare_csv: str | Path | None = None,
                media_root: str | Path | None = None, n_clips: int = 8) -> FiguresResult:
    """Every figure of a run (``cli.py figures``): those drawn from the run's files
    (``temporal.figures.run_figures``) and, for a run, the frame strips of its test clips
    (Figure 4), which need the media. A figure that cannot be drawn for an expected reason
    (no media, an unreadable clip) is skipped with its reason and the others are still
    written; a run with none of its files is an error."""
    run = RunDir(rundir)
    out = Path(out) if out is not None else run.figures
    check_figure_path(out / "figure.png", "--out")   # an unusable folder is refused before any drawing
    skipped: dict[str, str] = {}
    written = dict(run_figures(rundir, out, compare_csv, skipped=skipped))
    if run.is_run():
        try:
            written["clip_strips"] = plot_clip_strips(rundir, figure_file(out, "clip_strips"), media_root,
                                                      n_clips=n_clips)
        except (AvarError, OSError) as exc:
            skipped["clip_strips"] = f"skipped the frame-strip view: {exc}"
            logger.warning("%s", skipped["clip_strips"])
    return FiguresResult(written, skipped)


def strip_png_size(n_rows: int) -> tuple[int, int]:
    """(width, height) in pixels of a frame-strip figure of ``n_rows`` clips."""
    return int(round(STRIP_WIDTH * DPI)), int(round((STRIP_ROW_HEIGHT * n_rows + 0.5) * DPI))


def timeline_png_size() -> tuple[int, int]:
    return int(round(TIMELINE_SIZE[0] * DPI)), int(round(TIMELINE_SIZE[1] * DPI))


__all__ = ["FiguresResult", "all_figures", "check_figure_path", "class_colours", "display_name", "figure_formats",
           "plot_clip_strips", "plot_timeline", "strip_png_size", "timeline_figure", "timeline_paths",
           "timeline_png_size"]
