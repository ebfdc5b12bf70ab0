"""Sliding windows over a video of any length, each decoded as if it were a clip of its own.

``predict --window W --hop H`` scores footage far longer than the training clips: every
window ``[a, a + W)`` is cut into the run's ``T`` steps exactly as extraction cuts a clip
of duration ``W`` (same segment centres, nearest frame, same per-window audio
normalisation), so a head trained on cached clips sees the same kind of input.

One pass over the file through the decoding engine (``extract.media_reader``), never the
whole video in memory:

* video: the step targets of *all* windows go to ``MediaReader.read_frames`` as one
  group per window, so each frame is decoded at most once even where windows overlap; a
  window is handed to the caller as soon as its last frame is out, and its frames are
  dropped once no later window needs them;
* audio: decoded lazily in one sequential pass on a second handle of the file, only as
  far as the window being emitted needs, and released behind it.

So memory is bounded by about ``W / H + 1`` windows of frames plus ``W`` seconds of audio,
whatever the video's length. The engine's fall-backs apply: where the timestamps cannot
be trusted the targets are met by one sequential pass (timed by frame order).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
from PIL import Image

from cache_schema import SAMPLE_RATE, InvalidInput
from extract.audio_track import AudioTrack, nothing_decoded_note
from extract.decode import DecodedClip, DecodeError, FrameTransform
from extract.hw_decode import HardwareDecoder
from extract.media_reader import FrameGroup, MediaReader
from extract.probe import MediaInfo
from extract.sampling import step_centres, step_segments

__all__ = ["DecodedWindow", "decode_windows", "plan_windows", "thumbnail", "window_steps"]

logger = logging.getLogger(__name__)


def plan_windows(duration: float, window: float, hop: float) -> np.ndarray:
    """Bounds ``[K, 2]`` (seconds) of windows of length ``window`` every ``hop`` seconds.

    Starts are ``k * hop`` (no accumulated rounding); a last window aligned to the end is
    added where the regular ones stop short of it, so the whole video is covered and every
    window has the length the head expects. A video no longer than one window is one
    window over the whole video (the clip itself).
    """
    if not (np.isfinite(window) and window > 0 and np.isfinite(hop) and hop > 0):
        raise InvalidInput(f"--window and --hop must be positive seconds, got window={window}, hop={hop}")
    if not np.isfinite(duration) or duration <= 0:
        raise InvalidInput(f"duration must be a positive number of seconds, got {duration}")
    if duration <= window:
        return np.array([[0.0, float(duration)]])
    count = int(np.floor((duration - window) / hop + 1e-9)) + 1
    starts = np.arange(count, dtype=np.float64) * hop
    if starts[-1] + window < duration - 1e-6:
        starts = np.append(starts, duration - window)
    return np.stack([starts, starts + window], axis=1)


@dataclass
class DecodedWindow:
    """One window, ready for ``FeatureExtractor``: ``clip`` is in *window* time (0 = the
    window's start, duration = its length), exactly what decode_clip would return for a
    file holding only this window. ``start``/``end``/``step_times`` place it in the video
    (seconds). ``error`` (``clip`` is then None) says why the window could not be decoded
    (a damaged packet that one of its frames depends on); other windows are unaffected.
    ``thumbnail`` is a small RGB image of the window's middle step frame, when asked for.
    """

    index: int
    start: float
    end: float
    step_times: np.ndarray
    clip: DecodedClip | None
    error: str | None = None
    thumbnail: Image.Image | None = None


def window_steps(bounds: np.ndarray, steps: int) -> tuple[np.ndarray, np.ndarray]:
    """Step bounds ``[K, T, 2]`` and centres ``[K, T]`` of every window, in video time."""
    segs = np.stack([a + step_segments(b - a, steps) for a, b in bounds])
    return segs, segs.mean(axis=2)


@dataclass
class _Windows:
    """What every window of one file shares; ``emit`` turns a window's frames into its
    ``DecodedWindow`` (reading its audio) and hands it to the caller."""

    reader: MediaReader
    bounds: np.ndarray          # [K, 2] video time
    steps: int
    audio: AudioTrack | None
    sample_rate: int
    on_window: Callable[[DecodedWindow], None]
    thumbs: bool

    def audio_note(self) -> str | None:
        info = self.reader.info
        if info.audio is None:
            return None
        return nothing_decoded_note(info.audio.codec, self.audio.first_error if self.audio is not None else None)

    def emit_group(self, group: FrameGroup) -> None:
        self.emit(group.index, group.frames, group.times, group.error)

    def emit(self, k: int, frames: list[Any] | None, frame_times: np.ndarray | None, error: str | None) -> None:
        """Hand window ``k`` to the caller (audio read now), then let go of audio before ``k + 1``."""
        path, info = self.reader.path, self.reader.info
        a, b = (float(x) for x in self.bounds[k])
        length = b - a
        bounds = step_segments(length, self.steps)
        times = a + step_centres(bounds)
        if error is not None:
            self.on_window(DecodedWindow(k, a, b, times, None, error=error))
            self._release(k)
            return
        thumb = None
        if frames is not None and self.thumbs:
            frames, thumbs = (list(x) for x in zip(*frames))
            thumb = thumbs[len(thumbs) // 2]
        audio, audio_end, silent = None, 0.0, False
        if self.audio is not None:
            audio, audio_end, silent = self.audio.clip_audio(int(round(a * self.sample_rate)), length)
        video = info.video
        clip = DecodedClip(
            path=path, duration=length, step_bounds=bounds, step_times=step_centres(bounds),
            frames=frames, frame_times=None if frame_times is None else np.asarray(frame_times) - a,
            video_end=min(max(video.end - info.start - a, 0.0), length) if video is not None else 0.0,
            rotation=self.reader.rotation, audio=audio, sample_rate=self.sample_rate,
            audio_end=audio_end, audio_silent=silent,
            audio_error=self.audio_note() if audio is None and info.audio is not None else None,
            stats=self.reader.stats, info=info,
        )
        if frames is None and audio is None:
            raise DecodeError(f"{path}: neither stream could be decoded ({self.audio_note()}); nothing to "
                              "predict. Re-encode the file.")
        self.on_window(DecodedWindow(k, a, b, times, clip, thumbnail=thumb))
        self._release(k)

    def _release(self, k: int) -> None:
        if self.audio is not None and k + 1 < len(self.bounds):
            self.audio.release(int(round(self.bounds[k + 1][0] * self.sample_rate)))


def thumbnail(image: Image.Image, height: int) -> Image.Image:
    """A small copy of a frame for plots (the frame strips)."""
    width = max(1, int(round(image.width * height / max(image.height, 1))))
    return image.resize((width, height), Image.Resampling.BILINEAR)


def decode_windows(
    path: str | os.PathLike,
    steps: int,
    window: float,
    hop: float,
    on_window: Callable[[DecodedWindow], None],
    *,
    sample_rate: int = SAMPLE_RATE,
    frame_transform: FrameTransform | None = None,
    thumb_height: int | None = None,
    threads: int = 1,
    info: MediaInfo | None = None,
    decoder: HardwareDecoder | None = None,
) -> MediaInfo:
    """Decode every window of ``path`` in one pass, calling ``on_window`` for each, in order.

    ``on_window`` runs while the file is being read, so it can embed and score a batch of
    windows and let them go (the caller decides how many to hold). ``thumb_height`` also
    keeps a thumbnail of each window's middle step frame (for plots). Returns the probe's
    ``MediaInfo`` (duration, streams). Raises ``DecodeError`` when the file cannot be read
    at all; a damaged stretch only fails the windows whose frames depend on it.
    """
    reader = MediaReader(path, info=info, threads=threads, decoder=decoder)
    info = reader.info

    def transform(image: Image.Image) -> Any:
        out = frame_transform(image) if frame_transform is not None else image
        return (out, thumbnail(image, thumb_height)) if thumb_height else out

    audio = reader.open_audio(sample_rate)
    windows = _Windows(reader, plan_windows(info.duration, window, hop), steps, audio, sample_rate,
                       on_window, bool(thumb_height) and info.video is not None)
    try:
        if info.video is None:
            for k in range(len(windows.bounds)):
                windows.emit(k, None, None, None)
        else:
            _, centres = window_steps(windows.bounds, steps)
            reader.read_frames(centres, windows.emit_group, transform)
    finally:
        if audio is not None:
            audio.close()
    if audio is not None:
        audio.warn_failed_packets(reader.path)
    return info
