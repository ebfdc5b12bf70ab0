"""Where a clip's steps lie in time: the one definition that extraction (which frames and
samples make a step), stage 2 (how long a clip is) and detection scoring (which frames a
step's score stands for) all share.

Two layouts:

* **fixed steps** (``steps=T``, the paper's recognition setting): a clip of duration ``d``
  is cut into ``T`` equal segments ``[i*d/T, (i+1)*d/T)``, so every clip has ``T`` steps
  whatever its length (schema v1, dense arrays).
* **a time grid** (``step_seconds=S``, the detection field's snippets: XD-Violence's 16
  frames at 24 fps is ``S = 2/3``): a clip gets ``ceil(d / S)`` steps ``[i*S, (i+1)*S)``,
  the last one cut at ``d``, so the number of steps varies per clip (schema v2, ragged
  arrays). ``frames_per_step=K`` averages the video features of ``K`` evenly spaced frames
  of each step instead of taking the one nearest its centre.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Mapping

import numpy as np

from .errors import InvalidInput

# A duration within this of a whole number of steps does not start another step: a 10 s
# clip at 2/3 s steps is 15 steps, not 16 because 10 / 0.6667 = 14.9993 or 15.00001.
GRID_TOLERANCE = 1e-6


@dataclass(frozen=True)
class StepLayout:
    steps: int = 0              # fixed: every clip has this many equal steps
    step_seconds: float = 0.0   # grid: steps of this many seconds
    frames_per_step: int = 1    # grid: video frames averaged per step

    def __post_init__(self) -> None:
        if (self.steps > 0) == (self.step_seconds > 0):
            raise InvalidInput("give exactly one of --steps T and --step-seconds S "
                               f"(got steps={self.steps}, step_seconds={self.step_seconds})")
        if self.steps < 0 or not math.isfinite(self.step_seconds) or self.step_seconds < 0:
            raise InvalidInput(f"steps and step_seconds must be positive (got {self.steps}, {self.step_seconds})")
        if self.frames_per_step < 1:
            raise InvalidInput(f"--frames-per-step must be >= 1, got {self.frames_per_step}")
        if self.frames_per_step > 1 and not self.grid:
            raise InvalidInput("--frames-per-step needs --step-seconds (fixed --steps take one frame per step)")

    @property
    def grid(self) -> bool:
        """True for a time grid (ragged: the step count varies per clip)."""
        return self.step_seconds > 0

    def count(self, duration: float) -> int:
        """Steps of a clip of ``duration`` seconds (at least 1)."""
        if not self.grid:
            return self.steps
        if not math.isfinite(duration) or duration <= 0:
            raise ValueError(f"duration must be a positive number of seconds, got {duration}")
        return max(1, math.ceil(duration / self.step_seconds - GRID_TOLERANCE))

    def segments(self, duration: float) -> np.ndarray:
        """Bounds ``[T, 2]`` (start, end seconds) of the clip's steps; the last ends at
        ``duration`` exactly."""
        if not math.isfinite(duration) or duration <= 0:
            raise ValueError(f"duration must be a positive number of seconds, got {duration}")
        t = self.count(duration)
        if self.grid:
            edges = np.arange(t + 1, dtype=np.float64) * self.step_seconds
        else:  # i * d / T, not accumulated, so that no rounding drift builds up
            edges = np.arange(t + 1, dtype=np.float64) * (duration / t)
        edges[-1] = duration
        return np.stack([edges[:-1], edges[1:]], axis=1)

    def frame_times(self, bounds: np.ndarray) -> np.ndarray:
        """Target times ``[T, K]`` of the frames of each step: its centre for ``K = 1``,
        else the centres of ``K`` equal sub-segments."""
        bounds = np.asarray(bounds, dtype=np.float64)
        k = self.frames_per_step
        frac = (np.arange(k, dtype=np.float64) + 0.5) / k
        return bounds[:, :1] + (bounds[:, 1:] - bounds[:, :1]) * frac[None, :]

    def frame_steps(self, n_frames: int, fps: float, n_steps: int) -> np.ndarray:
        """The step each of a clip's ``n_frames`` frames (at ``fps``) belongs to: the step
        holding the frame's start time. On a grid of 16 frames at 24 fps this is exactly
        the official ``np.repeat(scores, 16)``; with fixed steps, frame ``f`` of ``n``
        gets step ``floor(f * T / n)``."""
        f = np.arange(n_frames, dtype=np.int64)
        if self.grid:
            ratio = self.step_seconds * fps
            whole = round(ratio)
            if abs(ratio - whole) < 1e-3 and whole >= 1:  # a whole number of frames per step: exact
                idx = f // whole
            else:
                idx = np.floor(f / fps / self.step_seconds + 1e-9).astype(np.int64)
        else:
            idx = (f * n_steps) // max(1, n_frames)
        return np.minimum(idx, n_steps - 1)

    def describe(self) -> str:
        if not self.grid:
            return f"{self.steps} steps per clip"
        per = f", {self.frames_per_step} frames averaged per step" if self.frames_per_step > 1 else ""
        return f"steps of {self.step_seconds:g} s{per}"

    def to_attrs(self) -> dict[str, Any]:
        """What a cache records: ``steps`` always (0 on a grid); the grid's fields only on a
        grid, so that a fixed-step cache's identity is what it was before grids existed."""
        out: dict[str, Any] = {"steps": self.steps}
        if self.grid:
            out.update(step_seconds=float(self.step_seconds), frames_per_step=int(self.frames_per_step))
        return out

    @staticmethod
    def from_attrs(attrs: Mapping[str, Any]) -> "StepLayout":
        return StepLayout(steps=int(attrs.get("steps") or 0), step_seconds=float(attrs.get("step_seconds") or 0.0),
                          frames_per_step=int(attrs.get("frames_per_step") or 1))


__all__ = ["GRID_TOLERANCE", "StepLayout"]
