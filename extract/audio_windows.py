"""Time bookkeeping for windowed audio features: windows, frame times, per-step pooling.

Pure numpy so the alignment rules can be tested without a model. Self-attention makes a
transformer's cost quadratic in sequence length, so a clip is cut into windows of bounded
length (cost linear in duration); each window's output frames are mapped back to clip
time, and a step's feature is the mean of the frames that fall inside the step.

Two windowings (``AudioWindowing``):

* ``clip``: consecutive windows from the clip start (``plan_windows``). A step's frames
  have attended to the whole window around them, future included: fine offline, and what
  fixed-step caches have always used.
* ``step``: one causal window per step (``causal_step_windows``): the step's own audio
  and up to ``context_s`` seconds before its end, nothing after it. A live stream has
  exactly this audio when the step closes, so offline and live features are the same; and
  a calm step of a violent video no longer hears the violence that comes later.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from cache_schema import SAMPLE_RATE, InvalidInput
from cache_schema.preprocessing import WINDOWS_CAUSAL_STEP

NORM_EPS = 1e-7
"""Wav2Vec2FeatureExtractor.zero_mean_unit_var_norm: (x - mean) / sqrt(var + 1e-7)."""

WINDOWING_CLIP = "clip"
WINDOWING_STEP = "step"
WINDOWINGS = (WINDOWING_CLIP, WINDOWING_STEP)
DEFAULT_AUDIO_CONTEXT_S = 1.0
"""Audio seconds a causal step window reaches back from its step's end (time-grid caches'
default). Measured on the XD stand-in (docs/temporal.md, "Audio windows on a grid")."""


@dataclass(frozen=True)
class AudioWindowing:
    """How a clip's audio is cut into the windows the encoder sees (see the module doc).

    ``mode`` "clip" (``context_s`` None) or "step" (``context_s`` >= 0 seconds reaching back
    from each step's end; a context no longer than the step means the step alone)."""

    mode: str = WINDOWING_CLIP
    context_s: float | None = None

    def __post_init__(self) -> None:
        if self.mode not in WINDOWINGS:
            raise InvalidInput(f"audio windowing must be one of {', '.join(WINDOWINGS)}, got {self.mode!r}")
        if self.mode == WINDOWING_CLIP and self.context_s is not None:
            raise InvalidInput("an audio context applies to causal step windows only, not to clip windows")
        if self.mode == WINDOWING_STEP:
            if self.context_s is None:
                object.__setattr__(self, "context_s", DEFAULT_AUDIO_CONTEXT_S)
            context = float(self.context_s)
            if not np.isfinite(context) or context < 0:
                raise InvalidInput(f"the audio context must be a finite number of seconds >= 0, got {self.context_s}")
            object.__setattr__(self, "context_s", context)

    @classmethod
    def step(cls, context_s: float | None = None) -> AudioWindowing:
        """Causal step windows (``context_s`` None: ``DEFAULT_AUDIO_CONTEXT_S``)."""
        return cls(WINDOWING_STEP, context_s)

    @classmethod
    def from_preprocessing(cls, preprocessing: dict) -> AudioWindowing:
        """The windowing an ``AudioPreprocessing`` record (a cache's, a run's) was made with;
        a record without causal windows is "clip", as every cache before them."""
        if preprocessing.get("windows") != WINDOWS_CAUSAL_STEP:
            return cls()
        context = preprocessing.get("context_s")
        if isinstance(context, bool) or not isinstance(context, (int, float)):
            raise InvalidInput(f"causal step audio windows recorded without a context in seconds ({context!r})")
        return cls(WINDOWING_STEP, float(context))

    def describe(self) -> str:
        return "clip windows" if self.mode == WINDOWING_CLIP else f"causal step windows, {self.context_s:g} s context"


@dataclass(frozen=True)
class FrameGeometry:
    """Where output frames lie in the input, from the conv feature encoder's shape.

    Frame k of a window reads samples [k*stride, k*stride + receptive_field); its time is the
    centre of that span. For wav2vec2: stride 320 samples (20 ms), receptive field 400 (25 ms).
    """

    stride_samples: int
    receptive_field_samples: int
    sample_rate: int = SAMPLE_RATE

    @classmethod
    def from_conv(cls, kernels: Sequence[int], strides: Sequence[int], sample_rate: int = SAMPLE_RATE,
                  ) -> FrameGeometry:
        stride, field = 1, 1
        for kernel, step in zip(kernels, strides, strict=True):
            field += (kernel - 1) * stride
            stride *= step
        return cls(stride_samples=stride, receptive_field_samples=field, sample_rate=sample_rate)

    @property
    def stride_s(self) -> float:
        return self.stride_samples / self.sample_rate

    def frame_times(self, window_start_sample: int, n_frames: int) -> np.ndarray:
        """Clip time (s) of each frame of a window that starts at the given sample."""
        first = window_start_sample + self.receptive_field_samples / 2
        return (first + self.stride_samples * np.arange(n_frames)) / self.sample_rate


def plan_windows(n_samples: int, window_samples: int) -> list[tuple[int, int]]:
    """Consecutive [start, stop) sample ranges of at most window_samples covering the clip.

    Fixed-size windows (only the last one shorter) let equal-length windows of different
    clips share a batch. An empty clip still gets one (empty) window so every clip has
    at least one frame after padding.
    """
    if window_samples <= 0:
        raise ValueError(f"window_samples must be positive, got {window_samples}")
    if n_samples <= 0:
        return [(0, 0)]
    return [(start, min(start + window_samples, n_samples)) for start in range(0, n_samples, window_samples)]


def causal_step_windows(step_bounds: np.ndarray, context_s: float, sample_rate: int = SAMPLE_RATE) -> np.ndarray:
    """``[T, 2]`` int64 ``[lo, hi)`` sample ranges (clip samples), one per step ``[a, b)`` s:
    ``hi = rint(b * sr)``, ``lo = max(0, min(rint(a * sr), hi - rint(context_s * sr)))``.

    The window always holds the whole step, ends at its end (nothing after it is heard),
    and reaches back ``context_s`` seconds when that is more than the step; at the clip
    start it is cut at sample 0. Fixed-length windows (``rint(context_s * sr)`` once the
    context exceeds a step) share batches, as consecutive windows do.
    """
    bounds = np.asarray(step_bounds, dtype=np.float64).reshape(-1, 2)
    if context_s < 0:
        raise ValueError(f"context_s must be >= 0, got {context_s}")
    hi = np.rint(bounds[:, 1] * sample_rate).astype(np.int64)
    start = np.rint(bounds[:, 0] * sample_rate).astype(np.int64)
    lo = np.maximum(0, np.minimum(start, hi - int(np.rint(context_s * sample_rate))))
    return np.stack([lo, hi], axis=1)


def normalize_like_wav2vec2(audio: np.ndarray) -> np.ndarray:
    """Zero mean, unit variance, with the same float32 expression as Wav2Vec2FeatureExtractor."""
    audio = np.asarray(audio, dtype=np.float32)
    if audio.size == 0:
        return audio
    return (audio - audio.mean()) / np.sqrt(audio.var() + NORM_EPS)


def pad_to_length(audio: np.ndarray, length: int) -> np.ndarray:
    """Zero-pad (after normalisation, as the feature extractor pads) to at least length samples."""
    if audio.shape[0] >= length:
        return audio
    return np.concatenate([audio, np.zeros(length - audio.shape[0], dtype=audio.dtype)])


def pool_frames_per_step(times: np.ndarray, frames: np.ndarray, step_bounds: np.ndarray) -> np.ndarray:
    """Mean of the frames whose time lies in each step's [start, end); [T, D] float32.

    A step that contains no frame (a step shorter than 20 ms, or past the end of the audio)
    takes the frame nearest to its centre, so every step gets a real feature.
    `times` must be ascending and aligned with `frames` [F, D], F >= 1.
    """
    bounds = np.asarray(step_bounds, dtype=np.float64).reshape(-1, 2)
    if frames.shape[0] == 0:
        raise ValueError("cannot pool steps from zero frames")
    if bounds.shape[0] == 0:
        return np.zeros((0, frames.shape[1]), dtype=np.float32)
    lo = np.searchsorted(times, bounds[:, 0], side="left")
    hi = np.searchsorted(times, bounds[:, 1], side="left")
    counts = hi - lo
    cumulative = np.concatenate([np.zeros((1, frames.shape[1])), np.cumsum(frames, axis=0, dtype=np.float64)])
    with np.errstate(invalid="ignore", divide="ignore"):
        pooled = (cumulative[hi] - cumulative[lo]) / counts[:, None]
    empty = counts <= 0
    if empty.any():
        centres = bounds[empty].mean(axis=1)
        right = np.clip(np.searchsorted(times, centres), 1, len(times) - 1) if len(times) > 1 else np.zeros(
            len(centres), dtype=int
        )
        left = np.maximum(right - 1, 0)
        nearest = np.where(np.abs(times[left] - centres) <= np.abs(times[right] - centres), left, right)
        pooled[empty] = frames[nearest]
    return pooled.astype(np.float32)
