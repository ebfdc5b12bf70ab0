"""Demux-only facts about a media file: streams, true duration, frame and keyframe index.

Probing reads every packet once without decoding video, which is cheap next to decoding
and gives exact answers where headers are missing or wrong (webm/mkv without frame
counts or durations). The frame index it builds is what lets the decoding engine
(media_reader.py) decode only the frames that the step targets need.

The probe is also where a file's facts are checked before anything is sized by them: a
timeline that is mostly a jump of the timestamps (an audio clock that leaps by an hour or
a year) is refused here (``check_timeline``), so that decode_clip, decode_windows and the
extraction pipeline all refuse it before allocating its audio or planning its steps.
Paths that are not regular files (a FIFO, a device, a directory) are named as such and
never handed to FFmpeg.

The errors a clip can raise live here because probing is the first step that can find
a file unreadable; decode.py re-exports them.
"""

from __future__ import annotations

import logging
import os
import stat
import struct
import time
from array import array
from collections.abc import Callable
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Any

import av
import numpy as np

from cache_schema import AvarError

logger = logging.getLogger(__name__)


class DecodeError(AvarError):
    """A clip cannot be turned into frames/audio; the message says why and what to do.

    An expected failure (damaged or unsupported input): the pipeline records it per clip
    and goes on with the other clips.
    """


class ImplausibleTimeline(DecodeError):
    """The packets' timestamps jump so far that the clip would be mostly nothing (a
    broken clock): refused before any buffer the length of that timeline is allocated."""


class ClipTimeout(DecodeError):
    """Decoding a clip ran past its deadline (a cooperative guard against files that hang)."""


def check_deadline(deadline: float | None, path: str | os.PathLike, stage: str) -> None:
    """Raise ``ClipTimeout`` once ``time.monotonic()`` has passed ``deadline``."""
    if deadline is not None and time.monotonic() > deadline:
        raise ClipTimeout(
            f"{path}: gave up while {stage}: the clip's decode deadline passed. "
            "Raise the per-clip time limit if the file is just long, or drop the file."
        )


@dataclass(frozen=True, eq=False)
class VideoStreamInfo:
    """The chosen video stream. Timestamps are in the stream's ``time_base`` units.

    ``frame_pts`` holds one entry per presented frame (packets the container marks as
    discarded are left out), sorted, i.e. in display order. ``pts_reliable`` is False
    where presentation timestamps are guessed or missing (AVI stores none; some packets
    lack pts), in which case the decoding engine (media_reader.py) times frames by their
    display order instead.
    Rotation is not here: FFmpeg attaches the display matrix to each decoded frame,
    which the engine applies (orientation.py), so demuxing cannot see it reliably.
    """

    index: int
    codec: str
    time_base: Fraction
    width: int
    height: int
    fps: float
    frame_pts: np.ndarray
    keyframe_pts: np.ndarray
    start: float
    end: float
    declared_start: float | None
    pts_reliable: bool
    pts_note: str

    def pts_to_seconds(self, pts: np.ndarray | int) -> np.ndarray | float:
        return np.asarray(pts, dtype=np.float64) * float(self.time_base)


@dataclass(frozen=True)
class AudioStreamInfo:
    """The chosen audio stream; ``start``/``end`` are absolute seconds from packets."""

    index: int
    codec: str
    sample_rate: int
    channels: int
    start: float
    end: float
    packets: int


@dataclass(frozen=True, eq=False)
class MediaInfo:
    """What a file holds. ``start`` is clip time 0 in absolute stream seconds.

    ``duration`` is measured from demuxed packets (end of the last packet minus the
    earliest start over the audio and video streams); ``duration_source`` says
    ``"packets"`` or ``"container"`` where the packets carried no timestamps at all.
    ``header_duration`` is what the container header claims, kept for diagnostics.
    """

    path: str
    container_format: str
    start: float
    duration: float
    duration_source: str
    video: VideoStreamInfo | None
    audio: AudioStreamInfo | None
    packets_demuxed: int
    read_error: str | None = None
    header_duration: float | None = None

    @property
    def has_video(self) -> bool:
        return self.video is not None

    @property
    def has_audio(self) -> bool:
        return self.audio is not None


AudioPacketSink = Callable[[av.Packet], None]

# How much of a clip's timeline may lie where no selected stream has a packet: at most
# EMPTY_RATIO times what the packets cover, and EMPTY_FLOOR_S seconds in any case. Real
# files are nearly gap-free where it matters (mp4 gives every frame a duration; a constant
# rate, however slow, makes no gaps; a stream missing for a while is covered by the
# other); a stream whose clock jumps by an hour inside a clip of seconds is broken, and
# would make every buffer, decode and backbone pass as long as the jump.
EMPTY_RATIO = 10.0
EMPTY_FLOOR_S = 60.0


def merge_intervals(starts: np.ndarray, ends: np.ndarray) -> np.ndarray:
    """``[N, 2]`` disjoint, sorted intervals covering the union of ``[starts, ends]``."""
    starts = np.asarray(starts, dtype=np.float64)
    if starts.size == 0:
        return np.zeros((0, 2))
    order = np.argsort(starts, kind="stable")
    s = starts[order]
    reach = np.maximum.accumulate(np.maximum(np.asarray(ends, dtype=np.float64)[order], s))
    breaks = s[1:] > reach[:-1]
    return np.stack([s[np.concatenate([[True], breaks])], reach[np.concatenate([breaks, [True]])]], axis=1)


def check_timeline(path: str, covered: dict[str, np.ndarray], start: float, duration: float) -> None:
    """Refuse (``ImplausibleTimeline``) a timeline mostly made of a gap where no stream has
    a packet (see ``EMPTY_RATIO``). ``covered`` maps a stream's name to its merged packet
    intervals (absolute seconds); ``start``/``duration`` are the clip's, from the same packets.

    This runs in the probe, so every command (extract, predict, predict --window) refuses
    such a file before sizing anything by its duration.
    """
    parts = [iv for iv in covered.values() if iv.size]
    if not parts:
        return
    union = merge_intervals(np.concatenate([iv[:, 0] for iv in parts]), np.concatenate([iv[:, 1] for iv in parts]))
    content = float((union[:, 1] - union[:, 0]).sum())
    empty = duration - content
    if empty <= max(EMPTY_FLOOR_S, EMPTY_RATIO * content):
        return
    gaps = union[1:, 0] - union[:-1, 1]
    g = int(np.argmax(gaps))
    after = float(union[g + 1, 0])
    jumps = []
    for name, iv in covered.items():
        if iv.size and bool((iv[:, 0] >= after).any()) and bool((iv[:, 0] < after).any()):
            last = float(iv[iv[:, 0] < after][:, 1].max())
            nxt = float(iv[iv[:, 0] >= after][:, 0].min())
            jumps.append(f"the {name} timestamps jump by {nxt - last:.0f} s (from {last - start:.1f} s "
                         f"to {nxt - start:.1f} s)")
    if not jumps:  # a stream that starts only after the gap
        jumps.append(f"nothing plays from {float(union[g, 1]) - start:.1f} s to {after - start:.1f} s")
    raise ImplausibleTimeline(
        f"{path}: {' and '.join(jumps)}: the clip would last {duration:.0f} s but its packets cover "
        f"only {content:.1f} s. The file's clock is broken: re-time it (e.g. ffmpeg -i IN -c:v copy "
        "-af asetpts=N/SR/TB OUT.mkv re-times the audio by its samples) or drop it."
    )


def not_a_media_file(path: str | os.PathLike) -> str | None:
    """Why ``path`` cannot be opened as a media file without opening it (so a FIFO never
    blocks), as a one-line message; None for a regular file."""
    try:
        mode = os.stat(path).st_mode
    except (FileNotFoundError, NotADirectoryError):
        return f"{path}: no such file; check the dataset path or manifest."
    except OSError as exc:
        return f"{path}: cannot read it ({exc.strerror or exc}); check its permissions."
    if stat.S_ISREG(mode):
        return None
    if stat.S_ISDIR(mode):
        return f"{path}: is a directory, not a media file; pass the media files in it."
    if stat.S_ISFIFO(mode):
        return (f"{path}: is a FIFO (named pipe), not a regular media file; live mode reads a stream as it "
                f"arrives (cli.py watch RUN {path}), or save the stream to a file and pass the file.")
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        return f"{path}: is a device, not a regular media file; save its stream to a file and pass the file."
    if stat.S_ISSOCK(mode):
        return f"{path}: is a socket, not a regular media file; save its stream to a file and pass the file."
    return f"{path}: is not a regular file; pass a media file."


def open_container(path: str | os.PathLike, hwaccel: Any = None) -> av.container.InputContainer:
    """Open a file for reading, turning every way that can fail into a ``DecodeError``.

    Only regular files are opened: FFmpeg would block on a FIFO with no writer.
    ``hwaccel`` (``av.codec.hwaccel.HWAccel``) decodes its video on a device; see
    ``extract.hw_decode``, which tells a device that does not open from a bad file."""
    file = Path(path)
    problem = not_a_media_file(file)
    if problem is not None:
        raise DecodeError(problem)
    if file.stat().st_size == 0:
        raise DecodeError(f"{path}: the file is empty (0 bytes); re-download or drop it.")
    try:
        return av.open(str(file), mode="r", metadata_errors="ignore", hwaccel=hwaccel)
    except (av.FFmpegError, OSError, ValueError, UnicodeDecodeError) as exc:
        raise DecodeError(
            f"{path}: FFmpeg cannot open it as media ({exc}); the file is not a "
            "video/audio file, or it is truncated (an MP4 cut before its index). "
            "Re-download or re-encode it, or drop it from the dataset."
        ) from exc


def choose_streams(
    container: av.container.InputContainer,
) -> tuple[av.video.stream.VideoStream | None, av.audio.stream.AudioStream | None]:
    """First real video stream and first audio stream (default-disposition first).

    A cover picture in an audio file is a video stream flagged ``attached_pic``; it is
    one still image, not video, so it is skipped.
    """

    def rank(stream: av.stream.Stream) -> int:
        return 0 if stream.disposition & av.stream.Disposition.default else 1

    videos = [
        s
        for s in container.streams.video
        if not s.disposition & av.stream.Disposition.attached_pic
    ]
    skipped = len(container.streams.video) - len(videos)
    if skipped:
        logger.debug("%s: skipping %d attached picture stream(s)", container.name, skipped)
    audios = list(container.streams.audio)
    video = min(videos, key=rank) if videos else None
    audio = min(audios, key=rank) if audios else None
    return video, audio


class _StreamPackets:
    """Packet facts of one stream collected while demuxing (no payload kept)."""

    def __init__(self) -> None:
        # Compact int64 arrays: an hour of packets costs a few MB, not tens.
        self.pts = array("q")
        self.durations = array("q")
        self.keyframe_pts = array("q")
        self.count = 0
        self.missing_pts = 0
        self.keyframes = 0
        self.trims: dict[int, tuple[float, float]] = {}  # packet -> (start, end) trim in tb
        self.covered = np.zeros((0, 2))  # set by span()

    def add(self, packet: av.Packet, trim_rate: int = 0) -> None:
        """Record one packet; ``trim_rate`` (audio sample rate) enables gapless trims."""
        self.count += 1
        if packet.is_keyframe:
            self.keyframes += 1
        if packet.pts is None:
            self.missing_pts += 1
            return
        if packet.is_keyframe:
            self.keyframe_pts.append(packet.pts)
        if packet.is_discard:
            return
        self.pts.append(packet.pts)
        self.durations.append(packet.duration or 0)
        if trim_rate:
            trim = _skip_samples(packet)
            if trim != (0, 0):
                # Encoder delay/padding the decoder drops (mp3/aac gapless info, opus
                # pre-skip): without it an mp3's duration is ~40 ms too long.
                to_tb = 1.0 / (trim_rate * float(packet.time_base))
                self.trims[len(self.pts) - 1] = (trim[0] * to_tb, trim[1] * to_tb)

    def typical_duration(self, fallback: float) -> float:
        """Duration for packets that carry none (mkv video blocks often don't)."""
        known = [d for d in self.durations if d > 0]
        if known:
            return float(np.median(known))
        unique = np.unique(np.asarray(self.pts, dtype=np.int64))
        if unique.size > 1:
            return float(np.median(np.diff(unique)))
        return fallback

    def span(self, time_base: Fraction, fallback_duration: float) -> tuple[float, float] | None:
        """(start, end) in seconds, or None where no packet had a pts.

        Also keeps ``covered``: the packets' time intervals merged (seconds, ``[N, 2]``),
        which the timeline check of ``probe`` compares with the span."""
        if not self.pts:
            return None
        pts = np.asarray(self.pts, dtype=np.float64)
        durations = np.asarray(self.durations, dtype=np.float64)
        guess = self.typical_duration(fallback_duration / float(time_base))
        durations = np.where(durations > 0, durations, guess)
        starts, ends = pts.copy(), pts + durations
        for i, (head, tail) in self.trims.items():
            starts[i] += head
            ends[i] -= tail
        tb = float(time_base)
        self.covered = merge_intervals(starts * tb, ends * tb)
        return float(starts.min() * tb), float(ends.max() * tb)


def _skip_samples(packet: av.Packet) -> tuple[int, int]:
    """(samples dropped at the start, samples dropped at the end) from side data."""
    for side in packet.iter_sidedata():
        if side.data_type == "skip_samples":
            raw = bytes(side)
            if len(raw) >= 8:
                head, tail = struct.unpack_from("<II", raw)
                return int(head), int(tail)
    return 0, 0


def _stream_rate(stream: av.video.stream.VideoStream) -> float | None:
    for rate in (stream.average_rate, stream.guessed_rate, stream.base_rate):
        if rate and 0 < float(rate) < 1000:
            return float(rate)
    return None


def _video_info(
    stream: av.video.stream.VideoStream, facts: _StreamPackets, container_format: str
) -> VideoStreamInfo | None:
    if facts.count == 0:
        logger.warning("video stream %d has no packets; treating the file as audio-only",
                       stream.index)
        return None
    tb = stream.time_base or Fraction(1, 1)
    rate = _stream_rate(stream)
    frame_pts = np.unique(np.asarray(facts.pts, dtype=np.int64))
    span = facts.span(tb, 1.0 / rate if rate else 0.0)
    if rate is None and frame_pts.size > 1 and span is not None:
        rate = frame_pts.size / max(span[1] - span[0], 1e-9)
    notes = []
    if "avi" in container_format.split(","):
        notes.append("AVI stores no presentation timestamps")
    if facts.missing_pts:
        notes.append(f"{facts.missing_pts} packet(s) without pts")
    if frame_pts.size != len(facts.pts):
        notes.append("duplicate pts")
    if not facts.pts:
        notes.append("no packet has a pts")
    declared = (
        float(stream.start_time * tb) if stream.start_time is not None else None
    )
    return VideoStreamInfo(
        index=stream.index,
        codec=stream.codec_context.name if stream.codec_context else "unknown",
        time_base=tb,
        width=stream.codec_context.width if stream.codec_context else 0,
        height=stream.codec_context.height if stream.codec_context else 0,
        fps=float(rate or 0.0),
        frame_pts=frame_pts,
        keyframe_pts=np.unique(np.asarray(facts.keyframe_pts, dtype=np.int64)),
        start=span[0] if span else (declared or 0.0),
        end=span[1] if span else (declared or 0.0),
        declared_start=declared,
        pts_reliable=not notes,
        pts_note="; ".join(notes),
    )


def _audio_info(
    stream: av.audio.stream.AudioStream, facts: _StreamPackets
) -> AudioStreamInfo | None:
    if facts.count == 0:
        logger.warning("audio stream %d has no packets; treating the file as having no "
                       "audio", stream.index)
        return None
    tb = stream.time_base or Fraction(1, 1)
    ctx = stream.codec_context
    rate = (ctx.sample_rate if ctx else 0) or 0
    frame_size = (ctx.frame_size if ctx else 0) or 0
    span = facts.span(tb, frame_size / rate if rate and frame_size else 0.0)
    declared = float(stream.start_time * tb) if stream.start_time is not None else 0.0
    return AudioStreamInfo(
        index=stream.index,
        codec=ctx.name if ctx else "unknown",
        sample_rate=int(rate),
        channels=int(ctx.channels) if ctx else 0,
        start=span[0] if span else declared,
        end=span[1] if span else declared,
        packets=facts.count,
    )


def probe(
    path: str | os.PathLike,
    *,
    deadline: float | None = None,
    on_audio_packet: AudioPacketSink | None = None,
) -> MediaInfo:
    """Demux ``path`` once (no video decoding) and describe what it holds.

    ``on_audio_packet`` receives every packet of the chosen audio stream in file order,
    including FFmpeg's final empty flush packet, so a caller that needs the audio
    decoded anyway can do it during this pass instead of reading the file twice.
    Raises ``DecodeError`` when the file cannot be opened, holds neither audio nor
    video, or its duration cannot be established.
    """
    container = open_container(path)
    try:
        return _probe_open(container, str(path), deadline, on_audio_packet)
    finally:
        container.close()


def _probe_open(
    container: av.container.InputContainer,
    path: str,
    deadline: float | None,
    on_audio_packet: AudioPacketSink | None,
) -> MediaInfo:
    video, audio = choose_streams(container)
    if video is None and audio is None:
        raise DecodeError(
            f"{path}: no audio or video stream in the file; nothing to extract. "
            "Drop it from the dataset."
        )
    selected = [s for s in (video, audio) if s is not None]
    facts = {s.index: _StreamPackets() for s in selected}
    trim_rates = {s.index: 0 for s in selected}
    if audio is not None and audio.codec_context is not None:
        trim_rates[audio.index] = audio.codec_context.sample_rate or 0
    demuxed = 0
    read_error = None
    try:
        for packet in container.demux(selected):
            check_deadline(deadline, path, "demuxing")
            is_flush = packet.size == 0 and packet.pts is None
            if not is_flush:
                demuxed += 1
                facts[packet.stream_index].add(packet, trim_rates[packet.stream_index])
            if on_audio_packet is not None and audio is not None and packet.stream_index == audio.index:
                on_audio_packet(packet)
    except av.FFmpegError as exc:
        # A damaged tail: keep what was read, the decode stage works from this index.
        read_error = f"stopped reading after {demuxed} packets: {exc}"
        logger.warning("%s: %s", path, read_error)

    fmt = container.format.name if container.format else ""
    vinfo = _video_info(video, facts[video.index], fmt) if video is not None else None
    ainfo = _audio_info(audio, facts[audio.index]) if audio is not None else None
    if vinfo is None and ainfo is None:
        raise DecodeError(
            f"{path}: its streams hold no readable packets"
            + (f" ({read_error})" if read_error else "")
            + "; the file is empty or damaged. Re-download or drop it."
        )

    spans = [
        (info.start, info.end)
        for info, stream_facts in (
            (vinfo, facts[video.index] if video is not None else None),
            (ainfo, facts[audio.index] if audio is not None else None),
        )
        if info is not None and stream_facts is not None and stream_facts.pts
    ]
    if spans:
        start = min(s for s, _ in spans)
        duration = max(e for _, e in spans) - start
        source = "packets"
    else:
        start = float(container.start_time or 0) / av.time_base
        duration = float(container.duration or 0) / av.time_base
        source = "container"
    header = float(container.duration) / av.time_base if container.duration else None
    if header and source == "packets" and duration < 0.9 * header - 0.5:
        # Streamable formats (mkv/webm/ts) cut short still open; say so, keep the part.
        logger.warning(
            "%s: packets end at %.2f s but the header says %.2f s; the file looks "
            "truncated, only the readable part is used", path, duration, header,
        )
    if source == "packets":
        check_timeline(path, {name: stream_facts.covered for name, stream, stream_facts in (
            ("video", vinfo, facts[video.index] if video is not None else None),
            ("audio", ainfo, facts[audio.index] if audio is not None else None),
        ) if stream is not None and stream_facts is not None}, start, duration)
    if not np.isfinite(duration) or duration <= 0:
        raise DecodeError(
            f"{path}: cannot establish a positive duration (packets carry no timestamps "
            "and the container states none). Remux it (ffmpeg -i in -c copy out.mkv) "
            "or drop it."
        )
    return MediaInfo(
        path=path,
        container_format=fmt,
        start=start,
        duration=duration,
        duration_source=source,
        video=vinfo,
        audio=ainfo,
        packets_demuxed=demuxed,
        read_error=read_error,
        header_duration=header,
    )
