"""Anomaly-score timelines from step scores: pure numpy, no media and no model.

A trained head gives each step a score (``1 - p(normal)``); these functions turn the
scores of one clip, or of overlapping windows slid over a long video, into what a person
reads: one curve over the whole video, its peak, and the stretches predicted anomalous.
They live in stage 2 because they need nothing but the scores; ``apply`` calls them on
new media, and the live mode will call them on streams.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np


@dataclass
class Segment:
    """A stretch of video predicted as one non-normal class, with its highest score."""

    start: float
    end: float
    label: str
    peak: float | None

    def to_json(self) -> dict[str, Any]:
        return {"start": round(self.start, 3), "end": round(self.end, 3), "label": self.label,
                "peak": json_number(self.peak)}


def json_number(x: float | None) -> float | None:
    """A score as JSON writes it: rounded, and null where it is missing or not finite."""
    return None if x is None or not math.isfinite(float(x)) else round(float(x), 6)


def score_peak(times: np.ndarray, scores: np.ndarray) -> tuple[float, float] | None:
    """(time, score) of the highest score, or None when there is none.

    A confident head saturates over a whole event, so the time is the middle of the first
    run of points within 0.01 of the maximum, not the first point of it."""
    if scores.size == 0 or np.all(np.isnan(scores)):
        return None
    top = float(np.nanmax(scores))
    near = np.nan_to_num(scores, nan=-1.0) >= top - 0.01
    i = int(np.argmax(near))
    j = i
    while j + 1 < len(near) and near[j + 1]:
        j += 1
    mid = (i + j) // 2
    return float(times[mid]), float(scores[mid])


def score_runs(hot: np.ndarray, edges: np.ndarray, scores: np.ndarray, label: str | Sequence[str]) -> list[Segment]:
    """Runs of consecutive ``hot`` items with one label, as segments over ``edges``
    (``len(hot) + 1`` boundaries); each segment's peak is the highest score in it."""
    out: list[Segment] = []
    labels = [label] * len(hot) if isinstance(label, str) else list(label)
    i = 0
    while i < len(hot):
        if not hot[i]:
            i += 1
            continue
        j = i
        while j + 1 < len(hot) and hot[j + 1] and labels[j + 1] == labels[i]:
            j += 1
        peak = np.nanmax(scores[i:j + 1]) if not np.all(np.isnan(scores[i:j + 1])) else None
        out.append(Segment(float(edges[i]), float(edges[j + 1]), labels[i], None if peak is None else float(peak)))
        i = j + 1
    return out


def clip_segments(duration: float, step_scores: np.ndarray, label: str, threshold: float = 0.5,
                  step_bounds: np.ndarray | None = None) -> list[Segment]:
    """One clip cut into steps: the runs of steps scoring above ``threshold``, labelled
    with the clip's class (the head classifies the clip; the steps say where). The steps
    are equal unless ``step_bounds`` ``[T, 2]`` says where they lie (a time grid, whose
    last step is cut at the clip's end)."""
    if step_bounds is None:
        edges = np.linspace(0.0, duration, len(step_scores) + 1)
    else:
        bounds = np.asarray(step_bounds, dtype=np.float64)
        edges = np.concatenate([bounds[:, 0], bounds[-1:, 1]])
    hot = np.nan_to_num(step_scores, nan=0.0) > threshold
    return score_runs(hot, edges, step_scores, label)


def window_cores(starts: np.ndarray, ends: np.ndarray, duration: float) -> np.ndarray:
    """Edges ``[K + 1]`` that give each window the stretch of video nearest its centre: the
    timeline is partitioned among overlapping windows, so shading a window's class never
    claims more than its share of the video."""
    centres = (np.asarray(starts, dtype=np.float64) + np.asarray(ends, dtype=np.float64)) / 2
    return np.concatenate([[0.0], (centres[:-1] + centres[1:]) / 2, [duration]])


def window_segments(starts: np.ndarray, ends: np.ndarray, labels: Sequence[str | None], scores: np.ndarray,
                    duration: float, normal: str | None) -> list[Segment]:
    """Consecutive windows predicted as the same non-normal class, over their core
    stretches. ``labels[k]`` is None for a window that failed; ``scores[k]`` its clip-level
    anomaly score (NaN where there is none). No normal class, no segments."""
    if normal is None or len(labels) == 0:
        return []
    edges = window_cores(starts, ends, duration)
    hot = np.array([lab is not None and lab != normal for lab in labels])
    return score_runs(hot, edges, np.asarray(scores, dtype=np.float64), [lab or "" for lab in labels])


def merged_timeline(starts: np.ndarray, ends: np.ndarray, step_scores: Sequence[np.ndarray | None],
                    duration: float, steps: int, window: float) -> tuple[np.ndarray, np.ndarray]:
    """One anomaly-score curve over the whole video from overlapping windows.

    A grid of points one step apart (``window / steps``), at step centres from time 0; each
    point averages the score of the step that covers it in every window that covers it
    (a window's step scores are piecewise constant over its steps). Windows that failed
    (``step_scores[k]`` None or empty) leave their stretch to the others, or NaN where none
    covers it."""
    step = window / steps if duration > window else duration / steps
    n = max(1, int(math.ceil(duration / step - 1e-9)))
    grid = (np.arange(n) + 0.5) * step
    grid = grid[grid < duration] if n > 1 else np.array([duration / 2])
    total = np.zeros(len(grid))
    count = np.zeros(len(grid))
    for start, end, scores in zip(starts, ends, step_scores):
        if scores is None or scores.size == 0:
            continue
        inside = (grid >= start) & (grid < end)
        idx = np.clip(((grid[inside] - start) / (end - start) * len(scores)).astype(int), 0, len(scores) - 1)
        vals = scores[idx]
        ok = ~np.isnan(vals)
        where = np.flatnonzero(inside)[ok]
        total[where] += vals[ok]
        count[where] += 1
    with np.errstate(invalid="ignore"):
        return grid, np.where(count > 0, total / np.maximum(count, 1), np.nan)


__all__ = ["Segment", "clip_segments", "json_number", "merged_timeline", "score_peak", "score_runs",
           "window_cores", "window_segments"]
