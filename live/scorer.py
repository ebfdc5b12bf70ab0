"""The backbones and the head over complete units: features once per step, scores per unit.

Features are computed by stage 1's own ``FeatureExtractor`` (through the run's
``Predictor``), from a ``DecodedClip`` built for the unit exactly as offline decoding
builds one, so a live step has the features the cache holds for that step of the same
media:

* a grid unit is one step in media time: its ``K`` frames, and its causal audio window's
  samples with their place (``audio_origin``), which is all that grid extraction reads
  for that step's audio;
* a window unit is a clip of its own in window time (0 = the window's start), as
  ``extract.windows`` hands ``predict --window`` each window.

The head then scores, per source, the last ``window_steps`` steps of that source's
features (grid: the newest step's probabilities are the record), or the window itself
(fixed steps: the clip's probabilities). Steps lost to dropping stay in the history as
masked, so the head sees them as missing rather than the stream as shorter; a reconnect
starts a new history.
"""

from __future__ import annotations

import time
from collections import deque
from dataclasses import dataclass

import numpy as np

from apply import Predictor
from cache_schema import SAMPLE_RATE, ClipRecord
from extract import Decoded, DecodedClip, DecodeStats
from extract.decode import SILENCE_PEAK
from extract.sampling import step_segments

from .assembler import LiveUnit

__all__ = ["LiveScorer", "ScoredUnit"]


@dataclass
class ScoredUnit:
    unit: LiveUnit
    probs: np.ndarray          # [C]
    score: float | None        # 1 - p(normal)
    label: str
    evidence: dict[str, float | None] | None = None   # fused runs: {"audio": video masked, "video": audio masked}
    backbone_s: float = 0.0    # this unit's share of its batch's seconds in the backbones


@dataclass
class _Step:
    index: int
    video: np.ndarray
    audio: np.ndarray
    video_mask: bool
    audio_mask: bool


class LiveScorer:
    def __init__(self, predictor: Predictor, window_steps: int = 0, per_source: dict[str, int] | None = None,
                 evidence: bool = True) -> None:
        self.predictor = predictor
        self.evidence = evidence   # False: no masked passes (what they cost: docs/live.md, "Heard, seen or both")
        self.grid = predictor.layout.grid
        self.window_steps = max(1, int(window_steps))
        # a camera's own window (a config file's ``window``), in steps; others: window_steps
        self.per_source = {name: max(1, int(n)) for name, n in (per_source or {}).items()}
        self._history: dict[tuple[str, int], deque[_Step]] = {}
        # seconds spent so far (the metrics read them): the backbones (features), the head (with evidence)
        self.backbone_s = 0.0
        self.head_s = 0.0
        self.batches = 0

    def clip(self, u: LiveUnit) -> DecodedClip:
        """The unit as stage 1's ``DecodedClip`` (see the module docstring)."""
        unit = u.unit
        k = self.predictor.layout.frames_per_step
        has_audio = u.audio is not None
        silent = bool(has_audio and np.abs(u.audio).max(initial=0.0) <= SILENCE_PEAK)
        if self.grid:
            return DecodedClip(
                path=u.source, duration=unit.end, step_bounds=unit.step_bounds,
                step_times=unit.step_bounds.mean(axis=1), frames=u.frames, frame_times=u.frame_times,
                video_end=unit.end, rotation=0.0, audio=u.audio, sample_rate=SAMPLE_RATE,
                audio_end=u.audio_end, audio_silent=silent, audio_error=None, stats=DecodeStats(),
                info=None, frames_per_step=k, video_start=0.0, on_grid=True,  # type: ignore[arg-type]
                audio_origin=unit.audio_lo,
            )
        length = unit.end - unit.start
        bounds = step_segments(length, len(unit.step_bounds))
        return DecodedClip(
            path=u.source, duration=length, step_bounds=bounds, step_times=bounds.mean(axis=1), frames=u.frames,
            frame_times=None if u.frame_times is None else u.frame_times - unit.start, video_end=length,
            rotation=0.0, audio=u.audio, sample_rate=SAMPLE_RATE,
            audio_end=min(max(u.audio_end - unit.start, 0.0), length), audio_silent=silent, audio_error=None,
            stats=DecodeStats(), info=None,  # type: ignore[arg-type]
        )

    def features(self, units: list[LiveUnit]) -> list[ClipRecord]:
        """Stage 1's records of the units (one step each on a grid, T for a window)."""
        decoded = [Decoded(f"{u.source}#{u.segment}:{u.unit.index}", clip=self.clip(u)) for u in units]
        return self.predictor.feature_extractor.records(decoded, isolate_failures=False)

    def score(self, units: list[LiveUnit]) -> list[ScoredUnit]:
        """Each unit's probabilities, score, top class and, for a run that reads both
        modalities, its evidence (the score with the other modality masked, from one
        extra head pass each: ``Predictor.score_with_evidence``). The batch's backbone
        and head seconds are added to ``backbone_s``/``head_s`` and shared equally among
        its units (``ScoredUnit.backbone_s``)."""
        if not units:
            return []
        t0 = time.perf_counter()
        records = self.features(units)
        t1 = time.perf_counter()
        inputs = [self._window(u, r) for u, r in zip(units, records)] if self.grid else records
        if self.evidence:
            (clip_p, step_p, _), evidence = self.predictor.score_with_evidence(inputs)
        else:
            (clip_p, step_p, _), evidence = self.predictor.score_records(inputs), {}
        t2 = time.perf_counter()
        self.backbone_s += t1 - t0
        self.head_s += t2 - t1
        self.batches += 1
        out = []
        for j, (u, r) in enumerate(zip(units, inputs)):
            last = len(r.video_mask) - 1
            probs = step_p[j, last] if self.grid else clip_p[j]
            score = self.predictor.anomaly(probs)
            ev: dict[str, float | None] = {}
            for kept, (e_clip, e_step, e_mask) in evidence.items():
                # the kept modality absent (at this step; in the whole window): no evidence
                present = bool(e_mask[j, last]) if self.grid else bool(e_mask[j, :last + 1].any())
                e = self.predictor.anomaly(e_step[j, last] if self.grid else e_clip[j]) if present else None
                ev[kept] = None if e is None else float(e)
            out.append(ScoredUnit(u, probs, None if score is None else float(score),
                                  self.predictor.class_names[int(np.argmax(probs))], ev or None,
                                  (t1 - t0) / len(units)))
        return out

    def forget(self, source: str) -> None:
        for key in [k for k in self._history if k[0] == source]:
            del self._history[key]

    def _window(self, u: LiveUnit, record: ClipRecord) -> ClipRecord:
        """The source's last ``window_steps`` steps, this one last, as one record."""
        key = (u.source, u.segment)
        if key not in self._history:
            self.forget(u.source)  # a new connection: the old history is not this stream's past
            self._history[key] = deque(maxlen=self.per_source.get(u.source, self.window_steps))
        history = self._history[key]
        window_steps = history.maxlen or self.window_steps
        vdim, adim = self.predictor.video_backbone.dim, self.predictor.audio_backbone.dim
        if history and u.unit.index > history[-1].index + 1:   # dropped steps: there, but masked
            for missing in range(max(history[-1].index + 1, u.unit.index - window_steps + 1), u.unit.index):
                history.append(_Step(missing, np.zeros(vdim, np.float32), np.zeros(adim, np.float32), False, False))
        history.append(_Step(
            u.unit.index,
            record.video[0] if record.video is not None else np.zeros(vdim, np.float32),
            record.audio[0] if record.audio is not None else np.zeros(adim, np.float32),
            bool(record.video_mask[0]), bool(record.audio_mask[0])))
        steps = list(history)
        return ClipRecord(
            key=record.key, status="ok",
            video=np.stack([s.video for s in steps]), audio=np.stack([s.audio for s in steps]),
            video_mask=np.array([s.video_mask for s in steps]), audio_mask=np.array([s.audio_mask for s in steps]),
            duration=float(u.unit.end), step_time=np.array([s.index for s in steps], np.float64))
