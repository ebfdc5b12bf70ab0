"""Decode one clip into its step frames (display orientation) and 16 kHz mono audio.

The steps come from a ``cache_schema.StepLayout``: ``T`` equal steps over the clip (the
paper's fixed layout, ``decode_clip(path, 10)``), or a time grid of ``S``-second steps
(``ceil(d / S)`` of them, the last cut at ``d``) with ``K`` frames per step, each the frame
nearest the centre of one of ``K`` equal sub-segments of its step.

A thin caller of the decoding engine (``extract.media_reader.MediaReader``): the probe
and the audio share one demux pass (the file is read once for both), and the frames
nearest the T step centres come from the engine's keyframe-aware plan and fall-backs,
holding at most the T results plus one pending decoded frame, so memory does not grow
with the clip's length.
"""

from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from cache_schema import SAMPLE_RATE, StepLayout
from extract.audio_track import SILENCE_PEAK, nothing_decoded_note
from extract.hw_decode import HardwareDecoder
from extract.media_reader import DecodeStats, FrameTransform, MediaReader
from extract.orientation import frame_rotation, to_display_image
from extract.probe import ClipTimeout, DecodeError, MediaInfo, choose_streams, open_container
from extract.sampling import step_centres

__all__ = [
    "SILENCE_PEAK",
    "ClipTimeout",
    "DecodeError",
    "DecodeStats",
    "DecodedClip",
    "FrameTransform",
    "decode_all_frames_sequentially",
    "decode_clip",
    "frame_rotation",
    "to_display_image",
]

logger = logging.getLogger(__name__)


@dataclass
class DecodedClip:
    """One clip, cut into ``T`` steps over its true duration (its layout's ``segments``).

    ``frames`` holds ``frames_per_step`` (``K``) frames per step, step-major: the frames of
    step ``i`` are ``frames[i*K:(i+1)*K]``, each the frame nearest its target time (the step
    centre for ``K = 1``), PIL RGB in display orientation or ``frame_transform`` of it; two
    targets may share one object when a short clip has fewer frames than targets.
    ``frame_times`` are those frames' clip times (``[T*K]``). ``audio`` is mono float32 at
    ``sample_rate``, zero where the stream has gaps or starts late; its sample 0 is clip
    sample ``audio_origin`` (0 for a decoded file: the whole clip; live mode holds only
    recent audio, whose steps are still in clip time); ``audio_end``/``video_end`` (clip
    time) say where real data ends so that steps
    beyond it can be masked. ``audio_error`` says why an audio stream present in the
    file yielded nothing. ``rotation`` is the clockwise turn (degrees) that was applied
    to show the frames upright.
    """

    path: str
    duration: float
    step_bounds: np.ndarray
    step_times: np.ndarray
    frames: list[Any] | None
    frame_times: np.ndarray | None
    video_end: float
    rotation: float
    audio: np.ndarray | None
    sample_rate: int
    audio_end: float
    audio_silent: bool
    audio_error: str | None
    stats: DecodeStats
    info: MediaInfo = field(repr=False)
    frames_per_step: int = 1
    video_start: float = 0.0
    on_grid: bool = False  # steps on a time grid (their video mask follows the stream's extent)
    audio_origin: int = 0  # clip-time sample index of audio[0] (live mode holds only recent audio)

    @property
    def steps(self) -> int:
        return len(self.step_times)

    def video_step_mask(self) -> np.ndarray:
        """``[T]`` bool: the steps that the video stream really covers (a stream that
        starts late or ends early leaves the steps outside it without video)."""
        if self.frames is None:
            return np.zeros(self.steps, bool)
        covered = (self.step_bounds[:, 0] < self.video_end - 1e-6) & (self.step_bounds[:, 1] > self.video_start + 1e-6)
        if not covered.any():  # a stream shorter than any step still shows in the nearest one
            covered[int(np.argmin(np.abs(self.step_times - (self.video_start + self.video_end) / 2)))] = True
        return covered

    @property
    def audio_sample_bounds(self) -> np.ndarray:
        """``[T, 2]`` clip sample indices of each step's audio (half-open)."""
        return np.rint(self.step_bounds * self.sample_rate).astype(np.int64)

    def step_audio(self, step: int) -> np.ndarray:
        """The samples of one step (a view into ``audio``)."""
        if self.audio is None:
            raise ValueError(f"{self.path}: the clip has no audio")
        lo, hi = self.audio_sample_bounds[step] - self.audio_origin
        return self.audio[max(lo, 0):max(hi, 0)]


def decode_clip(
    path: str | os.PathLike,
    steps: int | StepLayout,
    *,
    sample_rate: int = SAMPLE_RATE,
    frame_transform: FrameTransform | None = None,
    deadline: float | None = None,
    threads: int = 1,
    decoder: HardwareDecoder | None = None,
) -> DecodedClip:
    """Decode the target frames of every step and the whole audio track of one file.

    ``steps`` is ``T`` (equal steps) or a ``StepLayout`` (a time grid: the number of steps
    follows from the clip's duration). All ``T*K`` targets go through the engine's one
    keyframe-aware plan (each frame decoded once, near the plan's minimum).

    ``frame_transform`` is applied to each target image right away so only transformed
    frames are held. ``deadline`` is a ``time.monotonic()`` value checked in every
    decode loop (``ClipTimeout`` past it). ``threads`` is FFmpeg's decoder thread count
    (1 suits many parallel worker processes; 0 lets FFmpeg pick). ``decoder`` decodes the
    video on a device (``extract.hw_decode``; None: software).

    Raises ``DecodeError`` when the file cannot be read, has neither usable stream, or
    its video is damaged where a step's frame depends on it. An audio stream that
    cannot be decoded only sets ``audio=None`` (and ``audio_error``), logged.
    """
    began = time.monotonic()
    path = str(path)
    reader = MediaReader(path, gather_audio_rate=sample_rate, deadline=deadline, threads=threads, decoder=decoder)
    info, stats = reader.info, reader.stats
    layout = steps if isinstance(steps, StepLayout) else StepLayout(steps=int(steps))
    bounds = layout.segments(info.duration)
    centres = step_centres(bounds)
    k = layout.frames_per_step
    targets = centres if k == 1 else layout.frame_times(bounds).reshape(-1)

    audio, audio_end, audio_silent, audio_error = None, 0.0, False, None
    track = reader.gathered_audio()
    if track is not None:
        stats.audio_packets_failed = track.failed
        audio, audio_end, audio_silent = track.clip_audio(0, info.duration)
        if audio is None:
            audio_error = nothing_decoded_note(info.audio.codec, track.first_error)
            logger.warning("%s: %s; continuing without audio", path, audio_error)
        else:
            track.warn_failed_packets(path)

    frames, frame_times, video_end, video_start = None, None, 0.0, 0.0
    if info.video is not None:
        chosen = reader.frames_at(targets, frame_transform)
        frames, frame_times = chosen.frames, chosen.times
        video_end = info.video.end - info.start
        video_start = max(0.0, info.video.start - info.start)

    if frames is None and audio is None:
        raise DecodeError(
            f"{path}: neither stream could be decoded ({audio_error}); nothing to "
            "extract. Re-encode the file or drop it."
        )
    stats.seconds = time.monotonic() - began
    return DecodedClip(
        path=path,
        duration=info.duration,
        step_bounds=bounds,
        step_times=centres,
        frames=frames,
        frame_times=frame_times,
        video_end=video_end,
        rotation=reader.rotation,
        audio=audio,
        sample_rate=sample_rate,
        audio_end=audio_end,
        audio_silent=audio_silent,
        audio_error=audio_error,
        stats=stats,
        info=info,
        frames_per_step=k,
        video_start=video_start,
        on_grid=layout.grid,
    )


def decode_all_frames_sequentially(
    path: str | os.PathLike, *, to_rgb: bool = False, threads: int = 1
) -> int:
    """Baseline for benchmarks: decode every video frame in order; returns the count.

    ``to_rgb`` also converts each frame, as a naive "read all frames" loader would.
    """
    container = open_container(path)
    try:
        video, _ = choose_streams(container)
        if video is None:
            raise DecodeError(f"{path}: no video stream to decode")
        if threads != 1:
            video.thread_type = "AUTO"
        video.thread_count = threads
        count = 0
        for frame in container.decode(video):
            if to_rgb:
                frame.to_ndarray(format="rgb24")
            count += 1
        return count
    finally:
        container.close()
