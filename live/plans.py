"""Which pieces of a stream are scored, and which frames and samples each piece needs.

A *unit* is what the scorer receives from a source once all of its media has arrived:

* for a run trained on a time grid (``StepLayout.grid``): one step ``[i*S, (i+1)*S)``,
  with the ``K`` frame targets of ``StepLayout.frame_times`` and the audio samples of its
  causal window (the step and up to ``context`` seconds before it, as offline grid
  extraction windows audio), so its features are the cache's features of that step;
* for a run trained on ``T`` steps per clip: one window ``[k*hop, k*hop + W)`` cut into
  ``T`` steps exactly as ``predict --window`` cuts it (``extract.windows``): the ``T``
  step centres are its frame targets, the window's audio ``[rint(a*sr), + rint(W*sr))``.

Times are the source's media time (seconds from its first packet, continued across
reconnects), starting at the plan's ``base``. Plans are infinite and pure arithmetic.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from cache_schema import SAMPLE_RATE, StepLayout
from extract.audio_windows import causal_step_windows
from extract.sampling import step_segments

__all__ = ["GridPlan", "Unit", "UnitPlan", "WindowPlan"]


@dataclass(frozen=True)
class Unit:
    """One scored piece: ``index`` counts from the plan's start; ``start``/``end`` its
    span; ``step_bounds`` ``[T, 2]`` and ``targets`` ``[T*K]`` (step-major) in media time;
    ``audio_lo``/``audio_hi`` the samples (media time x rate) its audio features read."""

    index: int
    start: float
    end: float
    step_bounds: np.ndarray
    targets: np.ndarray
    audio_lo: int
    audio_hi: int


class UnitPlan:
    """The units of a stream from ``base`` on, by index."""

    base: float = 0.0
    every: float = 1.0          # seconds between unit starts

    def unit(self, index: int) -> Unit:
        raise NotImplementedError

    def first_needing(self, t: float) -> int:
        """The first unit whose span reaches past ``t`` (units before it are over)."""
        raise NotImplementedError

    def audio_floor(self, index: int) -> int:
        """The first sample unit ``index`` may read, whole or cut at a file's end (audio
        before the lowest floor of the units still to come can be let go)."""
        return self.unit(index).audio_lo

    def last_units(self, first: int, end: float) -> list[Unit]:
        """A file's units from index ``first`` on that offline decoding gives a file ending
        at media time ``end`` (the last one cut at ``end``); none where the offline
        arithmetic has no partial unit (sliding windows stop at the last whole one)."""
        return []


@dataclass(frozen=True)
class GridPlan(UnitPlan):
    layout: StepLayout
    context: float = 0.0        # audio seconds a step's window reaches back (<= S: the step alone)
    base: float = 0.0
    sample_rate: int = SAMPLE_RATE

    @property
    def every(self) -> float:  # type: ignore[override]
        return self.layout.step_seconds

    def unit(self, index: int, end: float | None = None) -> Unit:
        """Step ``index``; ``end``: cut it there (a file's last step ends at the file's end,
        as ``StepLayout.segments`` cuts it)."""
        s = self.layout.step_seconds
        stop = self.base + (index + 1) * s
        bounds = np.array([[self.base + index * s, stop if end is None else min(stop, end)]])
        lo, hi = (int(x) for x in causal_step_windows(bounds, self.context, self.sample_rate)[0])
        return Unit(index, float(bounds[0, 0]), float(bounds[0, 1]), bounds,
                    self.layout.frame_times(bounds).reshape(-1), lo, hi)

    def first_needing(self, t: float) -> int:
        return max(0, math.floor((t - self.base) / self.layout.step_seconds))

    def audio_floor(self, index: int) -> int:
        # a step cut at a file's end ends earlier, so its causal window starts up to one
        # step earlier than the whole step's
        return self.unit(index).audio_lo - math.ceil(self.layout.step_seconds * self.sample_rate)

    def last_units(self, first: int, end: float) -> list[Unit]:
        count = self.layout.count(end - self.base) if end > self.base else 0
        return [self.unit(i, end) for i in range(first, count)]


@dataclass(frozen=True)
class WindowPlan(UnitPlan):
    steps: int
    window: float
    hop: float
    base: float = 0.0
    sample_rate: int = SAMPLE_RATE

    @property
    def every(self) -> float:  # type: ignore[override]
        return self.hop

    def unit(self, index: int) -> Unit:
        # the arithmetic of extract.windows (plan_windows, window_steps, clip_audio), term
        # for term, so that a window's frames and samples are the ones predict --window reads
        a = self.base + index * self.hop   # k * hop, not accumulated
        b = a + self.window
        bounds = a + step_segments(b - a, self.steps)
        lo = int(round(a * self.sample_rate))
        return Unit(index, a, b, bounds, bounds.mean(axis=1), lo, lo + int(round((b - a) * self.sample_rate)))

    def first_needing(self, t: float) -> int:
        return max(0, math.floor((t - self.base - self.window) / self.hop) + 1)
