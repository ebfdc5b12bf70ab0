"""What applying a run to a file gives back, and its JSON form.

``predict --json`` writes one :meth:`VideoPrediction.to_json` object per file; the text
report and the figures read the same objects. Scores are ``1 - p(normal)``; NaN (a step
with neither stream) is written as null.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from PIL import Image

from cache_schema import ClipRecord, storable_text
from temporal.timeline import Segment, json_number, score_peak

from .attribution import trigger_of

# predict has no alert threshold: a step counts as anomalous at 0.5 (the figure's line; a
# two-class run's argmax), and so does a modality's evidence for ``trigger``
PREDICT_THRESHOLD = 0.5


@dataclass(frozen=True)
class ScoredClip:
    """One decoded clip (or window) after the backbones and the head.

    ``record`` is the clip's features as the cache would hold them; ``probs`` (clip-level
    class probabilities), ``step_scores`` (anomaly score per step, NaN where the step has
    no data or the run has no normal class) and ``step_mask`` are None when the clip
    failed, and ``record.error`` says why."""

    record: ClipRecord
    probs: np.ndarray | None = None
    step_scores: np.ndarray | None = None
    step_mask: np.ndarray | None = None
    # fused runs: per modality kept ("audio", "video"), (clip score, step scores) with the other masked
    evidence: dict[str, tuple[float | None, np.ndarray]] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return self.probs is not None

    @property
    def error(self) -> str:
        return self.record.error


@dataclass
class WindowResult:
    """One scored window (the whole video in whole-video mode). ``step_scores`` are NaN at
    steps with neither stream; ``score`` is the window's clip-level ``1 - p(normal)``."""

    start: float
    end: float
    label: str | None = None
    probs: np.ndarray | None = None
    score: float | None = None
    step_times: np.ndarray = field(default_factory=lambda: np.zeros(0))
    step_scores: np.ndarray = field(default_factory=lambda: np.zeros(0))
    error: str | None = None
    thumbnail: Image.Image | None = field(default=None, repr=False)
    evidence: dict[str, float | None] | None = None            # fused runs: clip score with the other modality masked
    step_evidence: dict[str, np.ndarray] | None = None         # the same per step

    def to_json(self, class_names: Sequence[str]) -> dict[str, Any]:
        return {
            "start": round(self.start, 4), "end": round(self.end, 4), "label": self.label,
            "probs": probs_json(self.probs, class_names), "score": json_number(self.score),
            "steps": steps_json(self.step_times, self.step_scores, self.step_evidence),
            "error": self.error, "evidence": evidence_json(self.evidence),
        }


@dataclass
class VideoPrediction:
    """The answer for one file. ``label``/``probs`` are those of the most anomalous window
    (the only window in whole-video mode); ``times``/``scores`` the anomaly-score timeline
    over the whole video. ``error`` is set (and the rest empty) when the file is unusable."""

    video: str
    class_names: tuple[str, ...]
    duration: float | None = None
    label: str | None = None
    probs: np.ndarray | None = None
    times: np.ndarray = field(default_factory=lambda: np.zeros(0))
    scores: np.ndarray = field(default_factory=lambda: np.zeros(0))
    windows: list[WindowResult] = field(default_factory=list)
    segments: list[Segment] = field(default_factory=list)
    mode: str = "clip"
    window: float | None = None
    hop: float | None = None
    error: str | None = None
    seconds: float = 0.0
    plot: str | None = None         # the timeline figure written for it (predict --plot)
    plot_error: str | None = None   # why that figure could not be written; the prediction stands
    thumbnails: list[tuple[float, Image.Image]] = field(default_factory=list, repr=False)  # (time, frame), plots
    # fused runs: per modality kept ("audio", "video"), the timeline with the other masked (same times)
    evidence: dict[str, np.ndarray] | None = None
    threshold: float = PREDICT_THRESHOLD   # what ``trigger`` compares the evidence with

    def trigger_at(self, t: float | None) -> str | None:
        """heard/seen/both at the timeline point nearest ``t`` (``apply.attribution``);
        None for a single-modality run or no point."""
        if not self.evidence or t is None or self.times.size == 0:
            return None
        i = int(np.argmin(np.abs(self.times - t)))
        audio, video = (self.evidence.get(k) for k in ("audio", "video"))
        return trigger_of(None if audio is None else json_number(audio[i]),
                          None if video is None else json_number(video[i]), self.threshold)

    @property
    def trigger(self) -> str | None:
        """The file's trigger: at its peak step, when that reaches the threshold."""
        peak = self.peak
        return self.trigger_at(peak[0]) if peak is not None and peak[1] >= self.threshold else None

    def segment_trigger(self, segment: Segment) -> str | None:
        """A segment's trigger: at its highest timeline point."""
        if not self.evidence:
            return None
        inside = (self.times >= segment.start) & (self.times <= segment.end) & np.isfinite(self.scores)
        if not inside.any():
            return None
        i = int(np.flatnonzero(inside)[np.argmax(self.scores[inside])])
        return self.trigger_at(float(self.times[i]))

    @property
    def peak(self) -> tuple[float, float] | None:
        """(time, score) of the highest step score, if any (see ``score_peak``)."""
        return score_peak(self.times, self.scores)

    def to_json(self) -> dict[str, Any]:
        """``{video, label, probs, steps: [{t, score}], error}`` plus the windows, segments,
        duration and mode."""
        return {
            "video": storable_text(self.video), "label": self.label, "probs": probs_json(self.probs, self.class_names),
            "steps": steps_json(self.times, self.scores, self.evidence),
            "error": self.error, "trigger": self.trigger,
            "duration": None if self.duration is None else round(self.duration, 4), "mode": self.mode,
            "window": self.window, "hop": self.hop,
            "windows": [w.to_json(self.class_names) for w in self.windows],
            "segments": [{**s.to_json(), "trigger": self.segment_trigger(s)} for s in self.segments],
            "plot": self.plot, "plot_error": self.plot_error,
        }

    @property
    def failed(self) -> bool:
        """True when any part of what was asked for this file failed (its prediction or its plot)."""
        return self.error is not None or self.plot_error is not None


def steps_json(times: np.ndarray, scores: np.ndarray, evidence: dict[str, np.ndarray] | None,
               ) -> list[dict[str, Any]]:
    """``[{t, score}]``, each with ``evidence: {audio, video}`` for a fused run."""
    steps: list[dict[str, Any]] = [{"t": round(float(t), 4), "score": json_number(s)} for t, s in zip(times, scores)]
    if evidence:
        for i, step in enumerate(steps):
            step["evidence"] = {k: json_number(evidence[k][i]) if k in evidence else None for k in ("audio", "video")}
    return steps


def evidence_json(evidence: dict[str, float | None] | None) -> dict[str, float | None] | None:
    return None if not evidence else {k: json_number(evidence.get(k)) for k in ("audio", "video")}


def probs_json(probs: np.ndarray | None, class_names: Sequence[str]) -> dict[str, float] | None:
    return None if probs is None else {c: round(float(p), 6) for c, p in zip(class_names, probs)}


__all__ = ["PREDICT_THRESHOLD", "ScoredClip", "Segment", "VideoPrediction", "WindowResult", "evidence_json", "probs_json",
           "steps_json"]
