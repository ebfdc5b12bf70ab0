"""Sliding windows over a video of any length, each decoded as if it were a clip of its own.

``predict --window W --hop H`` scores footage far longer than the training clips: every
window ``[a, a + W)`` is cut into the run's ``T`` steps exactly as extraction cuts a clip
of duration ``W`` (same segment centres, nearest frame, same per-window audio
normalisation), so a head trained on cached clips sees the same kind of input.

One pass over the file, never the whole video in memory:

* video: the step targets of *all* windows are planned together (sorted, de-duplicated)
  with the keyframe-aware plan of ``sampling.py`` and executed by decode.py's own loop, so
  each frame is decoded at most once even where windows overlap; a window is handed to
  the caller as soon as its last frame is out, and its frames are dropped once no later
  window needs them;
* audio: decoded lazily in one sequential pass on a second handle of the file, only as
  far as the window being emitted needs, and released behind it.

So memory is bounded by about ``W / H + 1`` windows of frames plus ``W`` seconds of audio,
whatever the video's length. decode.py's fallbacks apply: where the timestamps cannot be
trusted the targets are met by one sequential pass (timed by frame order).
"""

from __future__ import annotations

import logging
import os
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import av
import numpy as np
from PIL import Image

# decode.py's private machinery is reused on purpose: the same collector, plan executor,
# fallbacks and audio resampling give windows exactly the frames and samples that
# decode_clip gives a clip. They live in this package, so the coupling stays internal.
from extract.decode import (
    SILENCE_PEAK,
    DecodedClip,
    DecodeError,
    DecodeStats,
    FrameTransform,
    _AudioAccumulator,
    _decode_planned,
    _decode_sequential,
    _NearestFrameCollector,
    _OrderBroken,
    _PlanFailed,
    _display_matrix,
    _display_ops,
    _require_pts,
)
from extract.probe import MediaInfo, open_container, probe
from extract.sampling import step_centres, step_segments, target_frames

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
        raise ValueError(f"--window and --hop must be positive seconds, got window={window}, hop={hop}")
    if not np.isfinite(duration) or duration <= 0:
        raise ValueError(f"duration must be a positive number of seconds, got {duration}")
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


class _StreamingCollector(_NearestFrameCollector):
    """decode.py's nearest-frame collector, except that each chosen frame goes to ``sink``
    at once instead of being kept, and a frame that depends on a damaged packet is passed
    on as ``None`` with the reason instead of failing the whole video."""

    def __init__(self, targets: np.ndarray, convert: Callable[[av.VideoFrame], Any],
                 sink: Callable[[int, Any, float, str | None], None]) -> None:
        super().__init__(targets, convert)
        self._sink = sink

    def _take(self, candidate: tuple[float, av.VideoFrame, str | None]) -> None:
        index, taint = self._next, candidate[2]
        if taint is not None:
            self._next += 1
            self._sink(index, None, candidate[0], taint)
            return
        super()._take(candidate)
        converted, key = self.results[index]
        self.results[index] = None
        self._sink(index, converted, key, None)


class _DrainingAccumulator(_AudioAccumulator):
    """decode.py's audio decoder + resampler, whose chunks are taken as they come."""

    def take(self) -> list[tuple[int | None, np.ndarray]]:
        chunks, self._chunks = self._chunks, []
        return chunks


class _AudioStream:
    """Lazy, single-pass audio in clip time: ``read(lo, hi)`` decodes only as far as
    ``hi`` and ``release(t)`` forgets what ends before ``t`` (sample indices). Samples are
    placed by timestamp as decode_clip places them (gaps and late starts stay zero)."""

    def __init__(self, path: str, info: MediaInfo, sample_rate: int) -> None:
        assert info.audio is not None
        self.sample_rate = sample_rate
        self._container = open_container(path)
        self._packets = self._container.demux(self._container.streams[info.audio.index])
        self._acc = _DrainingAccumulator(sample_rate)
        self._origin = int(round(info.start * sample_rate))
        self._cursor = int(round((info.audio.start - info.start) * sample_rate))
        self._chunks: deque[tuple[int, np.ndarray]] = deque()
        self.decoded_end = 0   # end (clip samples) of the furthest audio decoded so far
        self.any_audio = False
        self.eof = False

    def close(self) -> None:
        self._container.close()

    @property
    def failed(self) -> int:
        return self._acc.failed

    @property
    def first_error(self) -> str | None:
        return self._acc.first_error

    def _pump(self) -> None:
        try:
            self._acc.feed(next(self._packets))
        except StopIteration:
            self._acc.finish()
            self.eof = True
        except av.FFmpegError as exc:  # a damaged tail: keep what was read
            logger.warning("audio demux stopped early: %s", exc)
            self._acc.finish()
            self.eof = True
        for pts, samples in self._acc.take():
            pos = pts - self._origin if pts is not None else self._cursor
            self._cursor = pos + len(samples)
            if len(samples):
                self._chunks.append((pos, samples))
                self.decoded_end = max(self.decoded_end, pos + len(samples))
                self.any_audio = True

    def read(self, lo: int, hi: int) -> tuple[np.ndarray, int]:
        """Samples ``[lo, hi)`` of clip time, and how many of them real audio reaches."""
        while not self.eof and self.decoded_end < hi:
            self._pump()
        out = np.zeros(hi - lo, dtype=np.float32)
        end = lo
        for pos, samples in self._chunks:
            a, b = max(pos, lo), min(pos + len(samples), hi)
            if b > a:
                out[a - lo:b - lo] = samples[a - pos:b - pos]
                end = max(end, b)
        return out, end - lo

    def release(self, before: int) -> None:
        while self._chunks and self._chunks[0][0] + len(self._chunks[0][1]) <= before:
            self._chunks.popleft()


@dataclass
class _Context:
    """What every window of one file shares."""

    path: str
    info: MediaInfo
    bounds: np.ndarray          # [K, 2] video time
    steps: int
    audio: _AudioStream | None
    sample_rate: int
    stats: DecodeStats
    on_window: Callable[[DecodedWindow], None]
    thumbs: bool
    rotation: list[float]

    def audio_note(self) -> str | None:
        if self.info.audio is None:
            return None
        first = self.audio.first_error if self.audio is not None else None
        return f"audio stream ({self.info.audio.codec}) present but nothing decoded" + (f": {first}" if first else "")

    def emit(self, k: int, frames: list[Any] | None, frame_times: list[float] | None, taint: str | None) -> None:
        """Hand window ``k`` to the caller (audio read now), then let go of audio before ``k + 1``."""
        a, b = (float(x) for x in self.bounds[k])
        length = b - a
        bounds = step_segments(length, self.steps)
        times = a + step_centres(bounds)
        if taint is not None:
            self.on_window(DecodedWindow(k, a, b, times, None, error=taint))
            self._release(k)
            return
        thumb = None
        if frames is not None and self.thumbs:
            frames, thumbs = (list(x) for x in zip(*frames))
            thumb = thumbs[len(thumbs) // 2]
        audio, audio_end, silent = None, 0.0, False
        if self.audio is not None:
            lo = int(round(a * self.sample_rate))
            samples, covered = self.audio.read(lo, lo + int(round(length * self.sample_rate)))
            if self.audio.any_audio:
                audio, audio_end = samples, min(covered / self.sample_rate, length)
                silent = bool(np.abs(samples).max(initial=0.0) <= SILENCE_PEAK)
        video = self.info.video
        clip = DecodedClip(
            path=self.path, duration=length, step_bounds=bounds, step_times=step_centres(bounds),
            frames=frames, frame_times=None if frame_times is None else np.asarray(frame_times) - a,
            video_end=min(max(video.end - self.info.start - a, 0.0), length) if video is not None else 0.0,
            rotation=self.rotation[0] if self.rotation else 0.0, audio=audio, sample_rate=self.sample_rate,
            audio_end=audio_end, audio_silent=silent,
            audio_error=self.audio_note() if audio is None and self.info.audio is not None else None,
            stats=self.stats, info=self.info,
        )
        if frames is None and audio is None:
            raise DecodeError(f"{self.path}: neither stream could be decoded ({self.audio_note()}); nothing to "
                              "predict. Re-encode the file.")
        self.on_window(DecodedWindow(k, a, b, times, clip, thumbnail=thumb))
        self._release(k)

    def _release(self, k: int) -> None:
        if self.audio is not None and k + 1 < len(self.bounds):
            self.audio.release(int(round(self.bounds[k + 1][0] * self.sample_rate)))


class _WindowAssembler:
    """Receives the target frames in order; hands out each window once all of its frames
    are in, and frees the frames that no later window uses. ``slot_target[k - first]`` maps
    window ``k``'s steps to target indices (non-decreasing over windows, since windows are
    ordered and targets sorted). ``key_time`` turns a decoded frame's key (pts, or its
    ordinal time) into clip time."""

    def __init__(self, ctx: _Context, first: int, slot_target: np.ndarray,
                 key_time: Callable[[float], float]) -> None:
        self.ctx, self.first, self.slot_target, self.key_time = ctx, first, slot_target, key_time
        self.next = first
        self.frames: dict[int, tuple[Any, str | None, float]] = {}
        self.last_needed = slot_target.max(axis=1)
        self.first_needed = slot_target.min(axis=1)

    @property
    def done(self) -> bool:
        return self.next >= len(self.ctx.bounds)

    def deliver(self, index: int, converted: Any, key: float, taint: str | None) -> None:
        self.frames[index] = (converted, taint, self.key_time(key))
        while not self.done and self.last_needed[self.next - self.first] <= index:
            self._emit()

    def finish(self) -> None:
        """End of stream: targets never reached take the last frame seen (as decode_clip)."""
        if not self.frames:  # nothing at all came out for the rest of the video
            while not self.done:
                self.ctx.emit(self.next, None, None, f"{self.ctx.path}: the video yielded no frame for this window "
                              "(the file ends early or is damaged)")
                self.next += 1
            return
        last = self.frames[max(self.frames)]
        while not self.done:
            for i in self.slot_target[self.next - self.first].tolist():
                self.frames.setdefault(i, last)
            self._emit()

    def _emit(self) -> None:
        k = self.next
        slots = self.slot_target[k - self.first].tolist()
        chosen = [self.frames[i] for i in slots]
        taint = next((t for _, t, _ in chosen if t is not None), None)
        self.ctx.emit(k, [c for c, _, _ in chosen], [t for _, _, t in chosen], taint)
        self.next += 1
        if not self.done:
            keep_from = self.first_needed[self.next - self.first]
            for i in [i for i in self.frames if i < keep_from]:
                del self.frames[i]


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
    sample_rate: int = 16000,
    frame_transform: FrameTransform | None = None,
    thumb_height: int | None = None,
    threads: int = 1,
    info: MediaInfo | None = None,
) -> MediaInfo:
    """Decode every window of ``path`` in one pass, calling ``on_window`` for each, in order.

    ``on_window`` runs while the file is being read, so it can embed and score a batch of
    windows and let them go (the caller decides how many to hold). ``thumb_height`` also
    keeps a thumbnail of each window's middle step frame (for plots). Returns the probe's
    ``MediaInfo`` (duration, streams). Raises ``DecodeError`` when the file cannot be read
    at all; a damaged stretch only fails the windows whose frames depend on it.
    """
    path = str(path)
    info = info or probe(path)
    stats = DecodeStats(probe_packets=info.packets_demuxed)
    rotation: list[float] = []
    display: list[tuple[list[Image.Transpose], float]] = []

    def convert(frame: av.VideoFrame) -> Any:
        stats.frames_converted += 1
        if not display:
            # The display matrix is read from the first frame only: reading a frame's
            # side_data ties frame and container in a reference cycle (PyAV 18), so each
            # frame's buffers would wait for the cyclic GC; over a long video that is
            # hundreds of MB. The matrix is a property of the stream.
            degrees, ops, angle = _display_ops(_display_matrix(frame))
            rotation.append(degrees)
            display.append((ops, angle))
        image = frame.to_image()
        ops, angle = display[0]
        for op in ops:
            image = image.transpose(op)
        if angle:
            image = image.rotate(-angle, expand=True)
        out = frame_transform(image) if frame_transform is not None else image
        return (out, thumbnail(image, thumb_height)) if thumb_height else out

    audio = _AudioStream(path, info, sample_rate) if info.audio is not None else None
    ctx = _Context(path, info, plan_windows(info.duration, window, hop), steps, audio, sample_rate, stats,
                   on_window, bool(thumb_height) and info.video is not None, rotation)
    try:
        if info.video is None:
            for k in range(len(ctx.bounds)):
                ctx.emit(k, None, None, None)
        else:
            _video_windows(ctx, convert, threads)
    finally:
        if audio is not None:
            audio.close()
    if audio is not None and audio.failed:
        logger.warning("%s: %d audio packet(s) failed to decode (first: %s); they are silent",
                       path, audio.failed, audio.first_error)
    return info


def _video_windows(ctx: _Context, convert: Callable[[av.VideoFrame], Any], threads: int) -> None:
    """decode_clip's strategy over all windows at once: the keyframe-aware plan; where the
    container contradicts the plan, one sequential pass by pts; where pts do not increase,
    one pass timed by frame order. A fallback resumes at the first window not handed out."""
    info, video, stats, steps = ctx.info, ctx.info.video, ctx.stats, ctx.steps
    assert video is not None
    tb = float(video.time_base)
    _, centres = window_steps(ctx.bounds, steps)
    use_pts = video.pts_reliable and video.frame_pts.size > 0
    mode = ("planned" if video.keyframe_pts.size else "sequential-pts") if use_pts else "sequential-ordinal"
    if not use_pts:
        stats.fallback_reason = f"timestamps unusable ({video.pts_note})"
    first = 0
    while True:
        if mode == "sequential-ordinal":
            slot_keys = centres[first:]
            key_time: Callable[[float], float] = float
        else:
            frame_times = video.frame_pts * tb - info.start
            slot_keys = video.frame_pts[target_frames(frame_times, centres[first:].reshape(-1))].reshape(-1, steps)
            key_time = lambda k: k * tb - info.start  # noqa: E731
        targets = np.unique(slot_keys)
        assembler = _WindowAssembler(ctx, first, np.searchsorted(targets, slot_keys), key_time)
        collector = _StreamingCollector(targets.astype(np.float64), convert, assembler.deliver)
        stats.mode = mode
        try:
            if mode == "planned":
                _decode_planned(ctx.path, video, targets, collector, stats, None, threads)
            elif mode == "sequential-pts":
                _decode_sequential(ctx.path, video, targets.astype(np.float64), collector, stats, None, threads,
                                   frame_key=lambda f, n: _require_pts(f), check_order=True)
            else:
                fps = video.fps if video.fps > 0 else 25.0
                origin = (video.declared_start if video.declared_start is not None else video.start) - info.start
                _decode_sequential(ctx.path, video, targets, collector, stats, None, threads,
                                   frame_key=lambda f, n: origin + n / fps, check_order=False)
        except _PlanFailed as exc:
            if mode == "sequential-ordinal":
                raise DecodeError(f"{ctx.path}: cannot decode the video in order ({exc}). Re-encode it.") from exc
            first = assembler.next
            stats.fallback_reason = str(exc)
            mode = "sequential-ordinal" if isinstance(exc, _OrderBroken) or mode == "sequential-pts" \
                else "sequential-pts"
            logger.info("%s: %s; %s decode from window %d on", ctx.path, exc, mode, first)
            continue
        if not assembler.frames and assembler.next == first:
            raise DecodeError(f"{ctx.path}: the video stream ({video.codec}) yielded no frame "
                              f"({stats.video_packets_failed} packet(s) failed to decode); the file is damaged or "
                              "uses an unsupported codec. Re-encode it.")
        assembler.finish()
        return
