"""Decode one clip into its T step frames (display orientation) and 16 kHz mono audio.

The video side executes the keyframe-aware plan from sampling.py: it seeks to the
keyframe before a target only where continuing forward would cost more, converts to
RGB only the frames it returns, and holds at most the T results plus one pending
decoded frame, so memory does not grow with the clip's length. Where the container's
timestamps or keyframe flags cannot be trusted it falls back to one sequential pass
that keeps only the nearest frame per target.

The audio side is decoded during the demux pass that probing needs anyway (the file
is read once for both) and resampled by FFmpeg (``av.AudioResampler``) to mono float32;
each chunk is placed by its timestamp, so gaps and late starts stay zero.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import av
import numpy as np
from PIL import Image

from extract.probe import (
    ClipTimeout,
    DecodeError,
    MediaInfo,
    VideoStreamInfo,
    check_deadline,
    choose_streams,
    open_container,
    probe,
)
from extract.sampling import (
    min_frames_needed,
    plan_decode,
    step_centres,
    step_segments,
    target_frames,
)

__all__ = [
    "ClipTimeout",
    "DecodeError",
    "DecodeStats",
    "DecodedClip",
    "decode_all_frames_sequentially",
    "decode_clip",
    "to_display_image",
]

logger = logging.getLogger(__name__)

# Peak below which a decoded track counts as digital silence: -120 dBFS, well under one
# 16-bit step (3e-5), so dithered near-silence is still audio but codec round-off of
# an all-zero track is not.
SILENCE_PEAK = 1e-6

FrameTransform = Callable[[Image.Image], Any]


@dataclass
class DecodeStats:
    """What decoding a clip cost; benchmarks compare ``frames_decoded`` to ``min_frames``.

    ``min_frames`` is the plan's lower bound (frames from each target's preceding
    keyframe to the target, union over targets). ``mode`` is ``planned``,
    ``sequential-pts`` or ``sequential-ordinal``; ``fallback_reason`` says why the plan
    was not used. ``packets_demuxed`` counts video packets read by the frame decode;
    ``probe_packets`` those read by the probe/audio pass.
    """

    frames_decoded: int = 0
    frames_converted: int = 0
    seeks: int = 0
    packets_demuxed: int = 0
    probe_packets: int = 0
    min_frames: int = 0
    mode: str = "none"
    fallback_reason: str | None = None
    audio_packets_failed: int = 0
    video_packets_failed: int = 0
    seconds: float = 0.0


@dataclass
class DecodedClip:
    """One clip, cut into ``T`` steps of equal length over its true duration.

    ``frames[i]`` is the frame nearest ``step_times[i]`` (PIL RGB in display
    orientation, or ``frame_transform`` of it); two steps may share one object when a
    short clip has fewer frames than steps. ``audio`` is mono float32 at
    ``sample_rate`` with sample 0 at clip time 0, zero where the stream has gaps or
    starts late; ``audio_end``/``video_end`` say where real data ends so that steps
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

    @property
    def steps(self) -> int:
        return len(self.step_times)

    @property
    def audio_sample_bounds(self) -> np.ndarray:
        """``[T, 2]`` sample indices of each step's audio (half-open)."""
        return np.rint(self.step_bounds * self.sample_rate).astype(np.int64)

    def step_audio(self, step: int) -> np.ndarray:
        """The samples of one step (a view into ``audio``)."""
        if self.audio is None:
            raise ValueError(f"{self.path}: the clip has no audio")
        lo, hi = self.audio_sample_bounds[step]
        return self.audio[lo:hi]


# --------------------------------------------------------------------------- display


def _display_matrix(frame: av.VideoFrame) -> np.ndarray | None:
    for side in frame.side_data:
        if side.type == av.sidedata.sidedata.Type.DISPLAYMATRIX:
            raw = bytes(side)
            if len(raw) >= 36:
                return np.frombuffer(raw[:36], dtype="<i4")
    return None


def _display_ops(matrix: np.ndarray | None) -> tuple[float, list[Image.Transpose], float]:
    """(clockwise degrees, PIL transposes, residual angle) that put a frame upright.

    Mirrors FFmpeg's own autorotate (fftools): the matrix's rotation decides between
    the four right-angle cases, and the signs of its entries decide the flips.
    """
    if matrix is None:
        return 0.0, [], 0.0
    a, b, c, d = (float(matrix[i]) / 65536.0 for i in (0, 1, 3, 4))
    s0, s1 = np.hypot(a, c), np.hypot(b, d)
    if s0 == 0 or s1 == 0:
        return 0.0, [], 0.0
    theta = float(round(np.degrees(np.arctan2(b / s1, a / s0))))
    theta -= 360 * np.floor(theta / 360 + 0.9 / 360)
    T = Image.Transpose
    if abs(theta - 90) < 1:
        return 90.0, [T.TRANSPOSE if matrix[3] > 0 else T.ROTATE_270], 0.0
    if abs(theta - 180) < 1:
        ops = ([T.FLIP_LEFT_RIGHT] if matrix[0] < 0 else []) + (
            [T.FLIP_TOP_BOTTOM] if matrix[4] < 0 else []
        )
        return 180.0, ops, 0.0
    if abs(theta - 270) < 1:
        return 270.0, [T.TRANSVERSE if matrix[3] < 0 else T.ROTATE_90], 0.0
    if abs(theta) > 1:
        return theta, [], theta
    return 0.0, ([T.FLIP_TOP_BOTTOM] if matrix[4] < 0 else []), 0.0


def to_display_image(frame: av.VideoFrame) -> Image.Image:
    """RGB image of a decoded frame as a player would show it (rotation applied)."""
    image = frame.to_image()
    _, ops, angle = _display_ops(_display_matrix(frame))
    for op in ops:
        image = image.transpose(op)
    if angle:
        image = image.rotate(-angle, expand=True)
    return image


def frame_rotation(frame: av.VideoFrame) -> float:
    """Clockwise degrees applied to show ``frame`` upright (0 when no display matrix)."""
    return _display_ops(_display_matrix(frame))[0]


# ----------------------------------------------------------------------------- audio


class _AudioAccumulator:
    """Decodes and resamples audio packets as probing demuxes them.

    Keeps resampled chunks with their position in output samples; ``assemble`` lays
    them into one zero-filled array once clip time 0 is known. A packet that fails to
    decode is counted and skipped (audio frames are independent enough that one bad
    packet should not cost the whole track).
    """

    def __init__(self, sample_rate: int) -> None:
        self.sample_rate = sample_rate
        self._resampler: av.AudioResampler | None = None
        self._chunks: list[tuple[int | None, np.ndarray]] = []
        self._stream: av.audio.stream.AudioStream | None = None
        self._flushed = False
        self.failed = 0
        self.first_error: str | None = None

    def feed(self, packet: av.Packet) -> None:
        self._stream = packet.stream
        if packet.size == 0 and packet.pts is None:
            self._flushed = True
            self._decode(None)
            return
        self._decode(packet)

    def _decode(self, packet: av.Packet | None) -> None:
        if packet is None and (self._stream is None or self._stream.codec_context is None):
            return  # nothing was ever decoded (or the header names no usable codec): nothing to flush
        try:
            frames = (
                packet.decode() if packet is not None else self._stream.codec_context.decode(None)
            )
        except (av.FFmpegError, ValueError) as exc:
            self.failed += 1
            if self.first_error is None:
                where = f" at pts {packet.pts}" if packet is not None else ""
                self.first_error = f"{type(exc).__name__}{where}: {exc}"
            return
        for frame in frames:
            self._push(frame)

    def _push(self, frame: av.AudioFrame | None) -> None:
        if self._resampler is None:
            self._resampler = self._new_resampler()
        try:
            outputs = self._resampler.resample(frame)
        except ValueError:
            # The stream changed rate or layout mid-way: drain and start a new graph.
            outputs = self._resampler.resample(None)
            self._resampler = self._new_resampler()
            outputs += self._resampler.resample(frame)
        for out in outputs:
            samples = out.to_ndarray().reshape(-1).astype(np.float32, copy=False)
            self._chunks.append((out.pts, samples))

    def _new_resampler(self) -> av.AudioResampler:
        return av.AudioResampler(format="flt", layout="mono", rate=self.sample_rate)

    def finish(self) -> None:
        """Drain the decoder (if the demux never reached EOF) and the resampler."""
        if self._stream is not None and not self._flushed:
            self._flushed = True
            self._decode(None)
        if self._resampler is not None:
            self._push(None)

    def assemble(
        self, clip_start: float, stream_start: float, n_samples: int
    ) -> tuple[np.ndarray | None, float]:
        """(audio in clip time, end of real audio in seconds); None if nothing decoded."""
        if not any(len(x) for _, x in self._chunks):
            return None, 0.0
        out = np.zeros(n_samples, dtype=np.float32)
        origin = int(round(clip_start * self.sample_rate))
        cursor = int(round((stream_start - clip_start) * self.sample_rate))
        end = 0
        for pts, samples in self._chunks:
            pos = pts - origin if pts is not None else cursor
            lo, hi = max(pos, 0), min(pos + len(samples), n_samples)
            if hi > lo:
                out[lo:hi] = samples[lo - pos : hi - pos]
                end = max(end, hi)
            cursor = pos + len(samples)
        return out, end / self.sample_rate


# ----------------------------------------------------------------------------- video


class _PlanFailed(Exception):
    """The container's index did not match what the decoder produced; go sequential."""


class _OrderBroken(_PlanFailed):
    """Decoded pts were not increasing: timestamps are unusable, time frames by order."""


class _NearestFrameCollector:
    """Streams decoded frames past sorted targets, keeping the nearest one for each.

    Only the last frame at or before the next pending target is held (unconverted); it
    is converted when a frame at or past the target shows which of the two is nearer.
    Frames never chosen are never converted to RGB.
    """

    def __init__(self, targets: np.ndarray, convert: Callable[[av.VideoFrame], Any]) -> None:
        self.targets = np.asarray(targets, dtype=np.float64)
        self._convert = convert
        self.results: list[tuple[Any, float] | None] = [None] * len(self.targets)
        self._next = 0
        self._before: tuple[float, av.VideoFrame, str | None] | None = None
        # Steps that share a frame share one conversion; the frame is kept alive so
        # that its id() cannot be reused by a later frame while cached.
        self._last_converted: tuple[int, Any] | None = None
        self._last_converted_frame: av.VideoFrame | None = None

    @property
    def pending(self) -> bool:
        return self._next < len(self.targets)

    def resolved_through(self, target: float) -> bool:
        return not self.pending or self.targets[self._next] > target

    def offer(self, key: float, frame: av.VideoFrame, taint: str | None) -> None:
        """Add the next frame in display order; ``taint`` names a failed packet it may use."""
        while self.pending and key >= self.targets[self._next]:
            target = self.targets[self._next]
            before = self._before
            if before is not None and target - before[0] <= key - target:
                self._take(before)
            else:
                self._take((key, frame, taint))
        self._before = (key, frame, taint)

    def finish(self) -> None:
        """End of stream: remaining targets take the last frame seen."""
        while self.pending and self._before is not None:
            self._take(self._before)

    def _take(self, candidate: tuple[float, av.VideoFrame, str | None]) -> None:
        key, frame, taint = candidate
        if taint is not None:
            raise DecodeError(taint)
        if self._last_converted is not None and self._last_converted[0] == id(frame):
            converted = self._last_converted[1]
        else:
            converted = self._convert(frame)
            self._last_converted = (id(frame), converted)
            self._last_converted_frame = frame
        self.results[self._next] = (converted, key)
        self._next += 1


class _VideoDecoder:
    """Decodes packets of one stream, turning failures into a taint on later frames.

    A packet that fails to decode (corrupt data) is not fatal by itself, but every frame
    that comes out after it until the next keyframe may reference it, so such frames are
    marked; choosing one as a target makes the clip a ``DecodeError``.
    """

    def __init__(self, stream: av.video.stream.VideoStream, path: str, stats: DecodeStats) -> None:
        self.stream = stream
        self.path = path
        self.stats = stats
        self.taint: str | None = None

    def reset(self) -> None:
        """After a seek the decoder is flushed and restarts at a keyframe."""
        self.taint = None

    def decode(self, packet: av.Packet) -> list[av.VideoFrame]:
        try:
            frames = packet.decode()
        except (av.FFmpegError, ValueError) as exc:
            self.stats.video_packets_failed += 1
            when = (
                f"{float(packet.pts * packet.time_base):.3f} s"
                if packet.pts is not None and packet.time_base
                else "an unknown time"
            )
            log = logger.warning if self.stats.video_packets_failed == 1 else logger.debug
            log("%s: video packet at %s failed to decode: %s", self.path, when, exc)
            self.taint = (
                f"{self.path}: the video is damaged: the packet at {when} failed to decode "
                f"({exc}) and a step's frame depends on it. Re-encode the file (e.g. "
                "ffmpeg -i in.mp4 -c:v libx264 out.mp4) or drop it from the dataset."
            )
            return []
        for frame in frames:
            if frame.key_frame:
                self.taint = None
            self.stats.frames_decoded += 1
        return frames


def _open_video(path: str, index: int, threads: int):
    container = open_container(path)
    stream = container.streams[index]
    if threads != 1:
        stream.thread_type = "AUTO"
    stream.thread_count = threads
    return container, stream


def _decode_planned(
    path: str,
    video: VideoStreamInfo,
    targets: np.ndarray,
    collector: _NearestFrameCollector,
    stats: DecodeStats,
    deadline: float | None,
    threads: int,
) -> None:
    actions = plan_decode(video.frame_pts, video.keyframe_pts, targets)
    container, stream = _open_video(path, video.index, threads)
    decoder = _VideoDecoder(stream, path, stats)
    try:
        packets: Iterator[av.Packet] | None = None
        last_key: float | None = None
        for action in actions:
            skip_to = action.seek_to_pts
            if skip_to is not None:
                try:
                    container.seek(int(skip_to), stream=stream, backward=True, any_frame=False)
                except av.FFmpegError as exc:
                    raise _PlanFailed(f"seek failed: {exc}") from exc
                stats.seeks += 1
                decoder.reset()
                packets = container.demux(stream)
                last_key = None
            elif packets is None:
                packets = container.demux(stream)
            last_target = float(action.target_pts[-1])
            for packet in packets:
                check_deadline(deadline, path, "decoding video")
                flush = packet.size == 0 and packet.pts is None
                if not flush:
                    stats.packets_demuxed += 1
                if skip_to is not None:
                    # A seek may land on an earlier keyframe than asked (sparse mkv
                    # cues); packets before ours are not needed.
                    if flush:
                        raise _PlanFailed("seek target keyframe never came")
                    if not packet.is_keyframe or packet.pts < skip_to:
                        continue
                    if packet.pts > skip_to:
                        raise _PlanFailed("seek landed after the keyframe")
                    skip_to = None
                for frame in decoder.decode(packet):
                    if frame.pts is None:
                        raise _OrderBroken("a decoded frame has no pts")
                    if last_key is not None and frame.pts <= last_key:
                        raise _OrderBroken("decoded pts are not increasing")
                    last_key = float(frame.pts)
                    collector.offer(last_key, frame, decoder.taint)
                if collector.resolved_through(last_target):
                    break
        collector.finish()
    finally:
        container.close()


def _decode_sequential(
    path: str,
    video: VideoStreamInfo,
    targets: np.ndarray,
    collector: _NearestFrameCollector,
    stats: DecodeStats,
    deadline: float | None,
    threads: int,
    frame_key: Callable[[av.VideoFrame, int], float],
    check_order: bool,
) -> None:
    container, stream = _open_video(path, video.index, threads)
    decoder = _VideoDecoder(stream, path, stats)
    produced = 0
    last_key: float | None = None
    try:
        for packet in container.demux(stream):
            check_deadline(deadline, path, "decoding video")
            if not (packet.size == 0 and packet.pts is None):
                stats.packets_demuxed += 1
            for frame in decoder.decode(packet):
                key = frame_key(frame, produced)
                produced += 1
                if check_order and last_key is not None and key <= last_key:
                    raise _OrderBroken("decoded pts are not increasing")
                last_key = key
                collector.offer(key, frame, decoder.taint)
            if not collector.pending:
                break
        collector.finish()
    finally:
        container.close()


def _decode_video(
    info: MediaInfo,
    centres: np.ndarray,
    convert: Callable[[av.VideoFrame], Any],
    stats: DecodeStats,
    deadline: float | None,
    threads: int,
) -> tuple[list[Any], np.ndarray]:
    """The frame for each step and its clip time, by plan or by sequential fallback."""
    video = info.video
    assert video is not None
    path = info.path
    tb = float(video.time_base)
    frame_times = video.frame_pts * tb - info.start

    use_pts = video.pts_reliable and video.frame_pts.size > 0
    reason: str | None = None if use_pts else f"timestamps unusable ({video.pts_note})"
    step_pts = None
    if use_pts:
        step_pts = video.frame_pts[target_frames(frame_times, centres)]
        stats.min_frames = min_frames_needed(video.frame_pts, video.keyframe_pts, step_pts)
        if video.keyframe_pts.size == 0:
            reason = "no packet is flagged as a keyframe"
        else:
            targets = np.unique(step_pts)
            collector = _NearestFrameCollector(targets.astype(np.float64), convert)
            stats.mode = "planned"
            try:
                _decode_planned(path, video, targets, collector, stats, deadline, threads)
                return _per_step(collector, targets, step_pts, lambda k: k * tb - info.start)
            except _OrderBroken as exc:
                use_pts, reason = False, str(exc)
            except _PlanFailed as exc:
                reason = str(exc)
        logger.info("%s: sequential decode (%s)", path, reason)

    stats.fallback_reason = reason
    if use_pts:
        targets = np.unique(step_pts)
        collector = _NearestFrameCollector(targets.astype(np.float64), convert)
        stats.mode = "sequential-pts"
        try:
            _decode_sequential(
                path, video, targets, collector, stats, deadline, threads,
                frame_key=lambda f, n: _require_pts(f), check_order=True,
            )
            return _per_step(collector, targets, step_pts, lambda k: k * tb - info.start)
        except _OrderBroken as exc:
            stats.fallback_reason = f"{reason}; {exc}"

    # Timestamps cannot be trusted: frames come out in display order, so time them by
    # their position at the stream's frame rate.
    fps = video.fps if video.fps > 0 else 25.0
    origin = (video.declared_start if video.declared_start is not None else video.start)
    origin -= info.start
    targets = np.unique(centres)
    collector = _NearestFrameCollector(targets, convert)
    stats.mode = "sequential-ordinal"
    _decode_sequential(
        path, video, targets, collector, stats, deadline, threads,
        frame_key=lambda f, n: origin + n / fps, check_order=False,
    )
    return _per_step(collector, targets, centres, lambda k: k)


def _require_pts(frame: av.VideoFrame) -> float:
    if frame.pts is None:
        raise _OrderBroken("a decoded frame has no pts")
    return float(frame.pts)


def _per_step(
    collector: _NearestFrameCollector,
    targets: np.ndarray,
    step_targets: np.ndarray,
    key_to_time: Callable[[float], float],
) -> tuple[list[Any], np.ndarray]:
    if all(r is None for r in collector.results):
        raise _NoFrames()
    index = np.searchsorted(targets, step_targets)
    frames, times = [], []
    for i in index.tolist():
        result = collector.results[i]
        if result is None:  # cannot happen after finish() with at least one frame
            raise _NoFrames()
        frames.append(result[0])
        times.append(key_to_time(result[1]))
    return frames, np.asarray(times, dtype=np.float64)


class _NoFrames(Exception):
    """The video stream produced no frame at all."""


# ------------------------------------------------------------------------------ clip


def decode_clip(
    path: str | os.PathLike,
    steps: int,
    *,
    sample_rate: int = 16000,
    frame_transform: FrameTransform | None = None,
    deadline: float | None = None,
    threads: int = 1,
) -> DecodedClip:
    """Decode the ``steps`` target frames and the whole audio track of one file.

    ``frame_transform`` is applied to each target image right away so only transformed
    frames are held. ``deadline`` is a ``time.monotonic()`` value checked in every
    decode loop (``ClipTimeout`` past it). ``threads`` is FFmpeg's decoder thread count
    (1 suits many parallel worker processes; 0 lets FFmpeg pick).

    Raises ``DecodeError`` when the file cannot be read, has neither usable stream, or
    its video is damaged where a step's frame depends on it. An audio stream that
    cannot be decoded only sets ``audio=None`` (and ``audio_error``), logged.
    """
    began = time.monotonic()
    path = str(path)
    stats = DecodeStats()
    audio_acc = _AudioAccumulator(sample_rate)
    info = probe(path, deadline=deadline, on_audio_packet=audio_acc.feed)
    stats.probe_packets = info.packets_demuxed
    bounds = step_segments(info.duration, steps)
    centres = step_centres(bounds)

    audio, audio_end, audio_error = None, 0.0, None
    if info.audio is not None:
        audio_acc.finish()
        stats.audio_packets_failed = audio_acc.failed
        n_samples = int(round(info.duration * sample_rate))
        audio, audio_end = audio_acc.assemble(info.start, info.audio.start, n_samples)
        audio_end = min(audio_end, info.duration)  # not the rounding of the last sample
        if audio is None:
            audio_error = (
                f"audio stream ({info.audio.codec}) present but nothing decoded"
                + (f": {audio_acc.first_error}" if audio_acc.first_error else "")
            )
            logger.warning("%s: %s; continuing without audio", path, audio_error)
        elif audio_acc.failed:
            logger.warning(
                "%s: %d audio packet(s) failed to decode (first: %s); they are silent",
                path, audio_acc.failed, audio_acc.first_error,
            )

    frames, frame_times, video_end, rotation = None, None, 0.0, 0.0
    if info.video is not None:
        rotation_seen: list[float] = []

        def convert(frame: av.VideoFrame) -> Any:
            stats.frames_converted += 1
            rotation_seen.append(frame_rotation(frame))
            image = to_display_image(frame)
            return frame_transform(image) if frame_transform is not None else image

        try:
            frames, frame_times = _decode_video(info, centres, convert, stats, deadline, threads)
        except _NoFrames:
            raise DecodeError(
                f"{path}: the video stream ({info.video.codec}) yielded no frame "
                f"({stats.video_packets_failed} packet(s) failed to decode); the file is "
                "damaged or uses an unsupported codec. Re-encode it or drop it."
            ) from None
        video_end = info.video.end - info.start
        rotation = rotation_seen[0] if rotation_seen else 0.0

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
        rotation=rotation,
        audio=audio,
        sample_rate=sample_rate,
        audio_end=audio_end,
        audio_silent=bool(audio is not None and np.abs(audio).max(initial=0.0) <= SILENCE_PEAK),
        audio_error=audio_error,
        stats=stats,
        info=info,
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
