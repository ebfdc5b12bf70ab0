"""What every frozen audio backbone shares: from a clip's audio to one feature per step.

An audio encoder turns a window of samples into output frames, each read from a known span
of the window (``FrameGeometry``: wav2vec2's 20 ms frames, YAMNet's 0.96 s patches). This
module cuts a clip's audio into windows, runs the encoder's batches, places every frame in
clip time and pools the frames of each step (``pool_frames_per_step``). The two windowings
(``extract.audio_windows.AudioWindowing``):

* "clip": consecutive windows of at most ``window_s`` from the clip start; a step's frames
  may have heard audio after the step (a transformer attends over its whole window).
* "step" (time-grid caches and live mode): one causal window per step, the step plus up to
  ``context_s`` seconds before its end, pooled from that window's frames only, so a step's
  feature depends on no audio after it and a live stream computes the same feature.

A family (``hf_audio``, ``yamnet_backbone``) says how a window becomes the encoder's input
(``prepare``), which windows may share a forward pass without changing any result
(``group``), and runs one batch (``run_batch``).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np

from cache_schema import SAMPLE_RATE

from ..audio_windows import (
    WINDOWING_STEP,
    AudioWindowing,
    FrameGeometry,
    causal_step_windows,
    plan_windows,
    pool_frames_per_step,
)
from .frozen import DescribedBackbone

AudioClip = tuple[np.ndarray, np.ndarray]
"""(mono float32 16 kHz audio, step bounds [T, 2] in seconds of clip time). The audio is
the whole clip, or (causal step windows) any part of it that holds every step's window:
``embed``'s ``origins`` say which clip sample its first sample is."""


@dataclass
class AudioWindow:
    """One encoder input: ``source[lo:hi]`` (clip ``clip``'s audio array), prepared only
    when its batch runs, so that a long clip's many step windows are never all copied at once."""

    clip: int
    start_sample: int  # clip sample of the window's first sample: where its frames lie in time
    source: np.ndarray
    lo: int
    hi: int
    length: int  # after padding to the receptive field: what decides who shares a batch
    step: int = -1  # causal step windows: the step this window serves


class AudioBackbone(DescribedBackbone):
    """A frozen audio encoder with windowing, batching and per-step pooling.

    Subclasses set ``geometry``, ``window_samples``, ``windowing``, ``batch_size`` and the
    :class:`DescribedBackbone` fields, and implement :meth:`prepare`, :meth:`group` and
    :meth:`run_batch`."""

    geometry: FrameGeometry
    window_samples: int
    windowing: AudioWindowing
    batch_size: int
    lookahead_samples: int = 0
    """Samples a clip window reads past its end when the clip has them: a convolutional
    encoder whose frames overlap (YAMNet's patches) reads there so that consecutive windows
    give exactly the frames of the whole clip. Causal step windows never read past their end."""

    def prepare(self, window: AudioWindow) -> np.ndarray:
        """A window's samples (``window.source[window.lo:window.hi]``) as the encoder takes
        them (normalised, padded); ``window.step >= 0`` marks a causal step window."""
        raise NotImplementedError

    def group(self, windows: list[AudioWindow]) -> list[list[int]]:
        """Window indices grouped into forward passes that cannot change any window's result."""
        raise NotImplementedError

    def run_batch(self, inputs: list[np.ndarray]) -> list[np.ndarray]:
        """One forward pass: each prepared input -> its frames ``[F, D]`` float32, frame k
        placed at ``geometry.frame_times``."""
        raise NotImplementedError

    def embed(self, clips: Sequence[AudioClip], origins: Sequence[int] | None = None) -> list[np.ndarray]:
        """Per clip: (audio, step_bounds [T, 2] s) -> features [T, D] float32.

        ``origins[i]`` is the clip sample index of clip i's ``audio[0]`` (default 0: the
        whole clip). With causal step windows the audio may be any part of the clip that
        holds every step's window (live mode passes recent audio only) and the features
        are bit-identical to those of the whole clip's audio; a window that begins before
        the audio given is a ValueError. Clip windows need the whole clip (origin 0)."""
        origins = [0] * len(clips) if origins is None else [int(o) for o in origins]
        if len(origins) != len(clips):
            raise ValueError(f"{len(origins)} origins for {len(clips)} clips")
        audios = []
        for index, (audio, _) in enumerate(clips):
            audio = np.asarray(audio, dtype=np.float32)
            if audio.ndim != 1:
                raise ValueError(f"clip {index}: expected mono audio of shape [samples], got {audio.shape}")
            audios.append(audio)
        if self.windowing.mode == WINDOWING_STEP:
            return self._embed_steps(audios, [bounds for _, bounds in clips], origins)
        if any(origins):
            raise ValueError("clip windows start at the clip's first sample: pass the whole clip's audio (origin 0)")
        return self._embed_clips(audios, [bounds for _, bounds in clips])

    def _window(self, clip: int, start_sample: int, source: np.ndarray, lo: int, hi: int, step: int = -1) -> AudioWindow:
        hi = min(max(hi, 0), source.shape[0])
        lo = min(max(lo, 0), hi)
        return AudioWindow(clip, start_sample, source, lo, hi, max(hi - lo, self.geometry.receptive_field_samples), step)

    def _embed_clips(self, audios: list[np.ndarray], bounds: list[np.ndarray]) -> list[np.ndarray]:
        windows = [
            self._window(index, start, audio, start, stop + self.lookahead_samples)
            for index, audio in enumerate(audios)
            for start, stop in self._clip_windows(audio.shape[0])
        ]
        per_clip_times: dict[int, list[np.ndarray]] = defaultdict(list)
        per_clip_frames: dict[int, list[np.ndarray]] = defaultdict(list)
        frames: list[np.ndarray | None] = [None] * len(windows)
        for i, window_frames in self._run_windows(windows):
            frames[i] = window_frames
        for window, window_frames in zip(windows, frames):
            per_clip_times[window.clip].append(self.geometry.frame_times(window.start_sample, window_frames.shape[0]))
            per_clip_frames[window.clip].append(window_frames)
        return [
            pool_frames_per_step(
                np.concatenate(per_clip_times[index]), np.concatenate(per_clip_frames[index]), clip_bounds
            )
            for index, clip_bounds in enumerate(bounds)
        ]

    def _clip_windows(self, n_samples: int) -> list[tuple[int, int]]:
        """Consecutive windows; with a lookahead, a last window no longer than it is left
        out, since the window before it read those samples already."""
        ranges = plan_windows(n_samples, self.window_samples)
        if self.lookahead_samples and len(ranges) > 1 and ranges[-1][1] - ranges[-1][0] <= self.lookahead_samples:
            ranges = ranges[:-1]
        return ranges

    def _embed_steps(self, audios: list[np.ndarray], bounds: list[np.ndarray], origins: list[int]) -> list[np.ndarray]:
        """Causal step windows: each step pooled from its own window's frames only."""
        windows: list[AudioWindow] = []
        steps: list[np.ndarray] = []
        for index, (audio, clip_bounds, origin) in enumerate(zip(audios, bounds, origins)):
            clip_bounds = np.asarray(clip_bounds, dtype=np.float64).reshape(-1, 2)
            steps.append(clip_bounds)
            ranges = causal_step_windows(clip_bounds, float(self.windowing.context_s), SAMPLE_RATE)
            if len(ranges) and int(ranges[:, 0].min()) < origin:
                raise ValueError(
                    f"clip {index}: a step window starts at clip sample {int(ranges[:, 0].min())}, before the "
                    f"audio given (origin {origin}); keep {self.windowing.context_s:g} s before the first step"
                )
            windows += [self._window(index, int(lo), audio, int(lo) - origin, int(hi) - origin, step)
                        for step, (lo, hi) in enumerate(ranges.tolist())]
        out = [np.zeros((len(b), self.dim), dtype=np.float32) for b in steps]
        for i, frames in self._run_windows(windows):
            w = windows[i]
            times = self.step_frame_times(w, frames.shape[0])
            out[w.clip][w.step] = pool_frames_per_step(times, frames, steps[w.clip][w.step : w.step + 1])[0]
        return out

    def step_frame_times(self, window: AudioWindow, n_frames: int) -> np.ndarray:
        """Clip times of a causal step window's frames (by default as in a clip window)."""
        return self.geometry.frame_times(window.start_sample, n_frames)

    def _run_windows(self, windows: list[AudioWindow]) -> Iterator[tuple[int, np.ndarray]]:
        """(window index, its frames [F, D]) for every window, batch by batch: only one
        batch's inputs and outputs are held at a time."""
        for batch in self.group(windows):
            yield from zip(batch, self.run_batch([self.prepare(windows[i]) for i in batch]))


__all__ = ["AudioBackbone", "AudioClip", "AudioWindow"]
