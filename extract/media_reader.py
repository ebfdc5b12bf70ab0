"""The decoding engine: one media file opened for reading frames at target times and audio.

:class:`MediaReader` is what every consumer of decoded media goes through (``decode_clip``
for a training clip, ``decode_windows`` for sliding windows over a long video):

* it probes the file (``reader.info``: streams, true duration, frame and keyframe index),
  optionally decoding the audio during that same demux pass (``gather_audio_rate``);
* ``read_frames`` delivers, in time order, the frame nearest each target time, for groups
  of targets (a clip's steps, or every window's steps at once), each group as soon as
  its last frame is out; ``frames_at`` is the collected form for one group;
* ``gathered_audio`` / ``open_audio`` give the 16 kHz mono track, whole or read lazily by
  ranges on a handle of its own.

How frames are read (the *ladder*): the keyframe-aware plan of ``sampling.py`` (seek to a
target's keyframe only where decoding on would cost more; frames decoded equal the plan's
minimum); where the container contradicts its own index, one sequential pass timed by
pts; where pts do not increase or cannot be trusted, one pass timed by frame order at the
stream's rate. A fall-back resumes at the first group not yet handed out. The
file-specific steps (opening a decoder handle, seeking by the keyframe index, demuxing)
are :class:`_FileVideo`; choosing frames and grouping them is ``frame_picker``; putting a
frame upright is ``orientation``; resampling is ``audio_track``. Each is written once.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import av
import numpy as np
from PIL import Image

from extract.audio_track import AudioDecoder, AudioTrack
from extract.frame_picker import FrameGroup, GroupAssembler, NearestFrameCollector, PacketDecoder
from extract.hw_decode import HardwareDecoder, as_software_layout, log_fallback_once, open_for_decoding
from extract.orientation import Orientation
from extract.probe import DecodeError, MediaInfo, VideoStreamInfo, check_deadline, open_container, probe
from extract.sampling import min_frames_needed, plan_decode, target_frames

__all__ = ["DecodeStats", "FrameGroup", "FrameTransform", "MediaReader"]

logger = logging.getLogger(__name__)

FrameTransform = Callable[[Image.Image], Any]
"""Applied to each chosen frame (RGB, display orientation) at once, so only its result is held."""

# Frame rate assumed where a stream states none and its packets cannot tell (timing by
# frame order needs one).
FALLBACK_FPS = 25.0

PLANNED, SEQUENTIAL_PTS, SEQUENTIAL_ORDINAL = "planned", "sequential-pts", "sequential-ordinal"


@dataclass
class DecodeStats:
    """What reading a file cost; benchmarks compare ``frames_decoded`` to ``min_frames``.

    ``min_frames`` is the plan's lower bound (frames from each target's preceding
    keyframe to the target, union over targets). ``mode`` is ``planned``,
    ``sequential-pts`` or ``sequential-ordinal`` (the last used); ``fallback_reason``
    says why the plan was not used (fall-backs joined by "; "). ``packets_demuxed``
    counts video packets read by the frame decode; ``probe_packets`` those read by the
    probe/audio pass.
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
    decoder: str = "sw"  # where the video was decoded: sw, or the hardware kind (extract.hw_decode)


class _PlanFailed(Exception):
    """The container's index did not match what the decoder produced; go sequential."""


class _OrderBroken(_PlanFailed):
    """Decoded pts were not increasing: timestamps are unusable, time frames by order."""


class _FileVideo:
    """The file-specific half of reading frames: a fresh decoder handle per pass, seeks
    by the probe's keyframe index, and the two ways of walking the packets."""

    def __init__(self, path: str, video: VideoStreamInfo, clip_start: float, stats: DecodeStats,
                 deadline: float | None, threads: int, decoder: HardwareDecoder | None = None) -> None:
        self.path, self.video, self.clip_start, self.stats = path, video, clip_start, stats
        self.deadline, self.threads, self.decoder = deadline, threads, decoder
        self._checked = decoder is None  # whether the first frame showed where decoding runs

    def _open(self) -> tuple[av.container.InputContainer, av.video.stream.VideoStream, PacketDecoder]:
        container, on_device = open_for_decoding(self.path, self.decoder)
        if not on_device:
            self._checked = True
        stream = container.streams[self.video.index]
        if self.threads != 1:
            stream.thread_type = "AUTO"
        stream.thread_count = self.threads
        return container, stream, PacketDecoder(self.path, self._failed, self._decoded, self._first_frame)

    def _first_frame(self, frame: av.VideoFrame) -> None:
        """Where the file's first frame was decoded: FFmpeg falls back to software by
        itself for a stream the device refuses (NVDEC: 4:4:4, 10-bit H.264)."""
        if self._checked:
            return
        self._checked = True
        assert self.decoder is not None
        if self.decoder.decoded(frame):
            self.stats.decoder = self.decoder.kind
        else:
            log_fallback_once(f"the {self.decoder.kind} decoder refused {self.video.codec} video in "
                              f"{frame.format.name}")

    def _failed(self) -> int:
        self.stats.video_packets_failed += 1
        return self.stats.video_packets_failed

    def _decoded(self) -> None:
        self.stats.frames_decoded += 1

    def planned(self, targets: np.ndarray, collector: NearestFrameCollector) -> None:
        """Execute the keyframe-aware plan for ``targets`` (pts); ``_PlanFailed`` where the
        file contradicts its index (a seek lands elsewhere, pts go backwards)."""
        actions = plan_decode(self.video.frame_pts, self.video.keyframe_pts, targets)
        container, stream, decoder = self._open()
        stats = self.stats
        try:
            packets: Iterator[av.Packet] | None = None
            last_key: float | None = None
            for action in actions:
                if not collector.pending:
                    break
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
                    check_deadline(self.deadline, self.path, "decoding video")
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
                        last_key = _increasing_pts(frame, last_key)
                        collector.offer(last_key, frame, decoder.taint)
                    if collector.resolved_through(last_target):
                        break
            collector.finish()
        finally:
            container.close()

    def sequential(self, collector: NearestFrameCollector, by_pts: bool) -> None:
        """One pass from the start; frames keyed by pts (``_OrderBroken`` unless they
        increase) or, ``by_pts=False``, by their position at the stream's frame rate."""
        video = self.video
        fps = video.fps if video.fps > 0 else FALLBACK_FPS
        origin = video.declared_start if video.declared_start is not None else video.start
        origin -= self.clip_start
        container, stream, decoder = self._open()
        produced = 0
        last_key: float | None = None
        try:
            for packet in container.demux(stream):
                check_deadline(self.deadline, self.path, "decoding video")
                if not (packet.size == 0 and packet.pts is None):
                    self.stats.packets_demuxed += 1
                for frame in decoder.decode(packet):
                    if by_pts:
                        last_key = _increasing_pts(frame, last_key)
                    else:
                        last_key = origin + produced / fps
                    produced += 1
                    collector.offer(last_key, frame, decoder.taint)
                if not collector.pending:
                    break
            collector.finish()
        finally:
            container.close()


def _increasing_pts(frame: av.VideoFrame, last: float | None) -> float:
    if frame.pts is None:
        raise _OrderBroken("a decoded frame has no pts")
    if last is not None and frame.pts <= last:
        raise _OrderBroken("decoded pts are not increasing")
    return float(frame.pts)


class MediaReader:
    """One media file opened for reading (see the module docstring).

    ``info`` skips the probe when the caller has it already; ``gather_audio_rate`` decodes
    the audio at that rate during the probe's demux pass (the file is then read once for
    probe and audio; needs the probe). ``deadline`` (a ``time.monotonic()`` value) is
    checked in every decode loop (``ClipTimeout`` past it); ``threads`` is FFmpeg's decoder
    thread count (1 suits many worker processes; 0 lets FFmpeg pick). ``decoder`` decodes
    the video on a device (``extract.hw_decode``; None: software). ``stats`` counts what
    reading costs, over all reads of this reader.
    """

    def __init__(
        self,
        path: str | os.PathLike,
        *,
        info: MediaInfo | None = None,
        gather_audio_rate: int | None = None,
        deadline: float | None = None,
        threads: int = 1,
        decoder: HardwareDecoder | None = None,
    ) -> None:
        if info is not None and gather_audio_rate is not None:
            raise ValueError("gather_audio_rate needs the probe's demux pass; do not pass info as well")
        self.path = str(path)
        self.deadline, self.threads, self.decoder = deadline, threads, decoder
        self.stats = DecodeStats()
        self._orientation: Orientation | None = None
        self._gathered: AudioDecoder | None = None
        if gather_audio_rate is not None:
            self._gathered = AudioDecoder(gather_audio_rate)
            info = probe(self.path, deadline=deadline, on_audio_packet=self._gathered.feed)
            if info.audio is not None:
                self._gathered.finish()
        elif info is None:
            info = probe(self.path, deadline=deadline)
        self.info = info
        self.stats.probe_packets = info.packets_demuxed

    @property
    def rotation(self) -> float:
        """Clockwise degrees applied to show frames upright (0 until a frame is converted)."""
        return self._orientation.degrees if self._orientation is not None else 0.0

    # ------------------------------------------------------------------------- audio

    def gathered_audio(self) -> AudioTrack | None:
        """The audio decoded during the probe (``gather_audio_rate``), read by ranges; None
        where the file has no audio stream."""
        if self._gathered is None:
            raise ValueError(f"{self.path}: the reader was opened without gather_audio_rate")
        if self.info.audio is None:
            return None
        return AudioTrack(self._gathered, self.info.start, self.info.audio.start)

    def open_audio(self, sample_rate: int) -> AudioTrack | None:
        """The audio on a handle of its own, decoded lazily as far as reads go (close it,
        or use it as a context manager); None where the file has no audio stream."""
        if self.info.audio is None:
            return None
        container = open_container(self.path)
        packets = container.demux(container.streams[self.info.audio.index])
        return AudioTrack(AudioDecoder(sample_rate), self.info.start, self.info.audio.start,
                          packets=packets, close=container.close)

    # ------------------------------------------------------------------------ frames

    def frames_at(self, times: np.ndarray, transform: FrameTransform | None = None) -> FrameGroup:
        """The frame nearest each of ``times`` (clip seconds, ascending), collected.

        Raises ``DecodeError`` when a chosen frame depends on a damaged packet."""
        groups: list[FrameGroup] = []
        self.read_frames(np.asarray(times, dtype=np.float64)[None, :], groups.append, transform)
        (group,) = groups
        if group.error is not None:
            raise DecodeError(group.error)
        return group

    def read_frames(
        self,
        groups: np.ndarray,
        on_group: Callable[[FrameGroup], None],
        transform: FrameTransform | None = None,
    ) -> None:
        """Hand ``on_group`` each group of ``groups`` (``[K, T]`` clip seconds; rows in
        time order, each ascending) in order, as soon as its frames are out.

        Each frame is decoded at most once per pass and converted at most once, however
        many groups share it, and dropped once no later group needs it. A group whose
        chosen frame depends on a damaged packet comes with ``error`` and the others are
        unaffected. Raises ``DecodeError`` when the video yields no frame at all.
        """
        video = self.info.video
        if video is None:
            raise ValueError(f"{self.path}: no video stream to read frames from")
        groups = np.asarray(groups, dtype=np.float64)
        source = _FileVideo(self.path, video, self.info.start, self.stats, self.deadline, self.threads, self.decoder)
        convert = self._converter(transform)
        stats = self.stats
        tb, start = float(video.time_base), self.info.start

        def pts_time(key: float) -> float:
            return key * tb - start

        mode, group_pts = self._first_rung(video, groups)
        first = 0
        while True:
            if mode == SEQUENTIAL_ORDINAL:
                slot_keys, key_time = groups[first:], float
            else:
                assert group_pts is not None
                slot_keys, key_time = group_pts[first:], pts_time
            targets = np.unique(slot_keys)
            assembler = GroupAssembler(first, np.searchsorted(targets, slot_keys), key_time, on_group)
            collector = NearestFrameCollector(targets.astype(np.float64), convert, assembler.deliver)
            stats.mode = mode
            try:
                if mode == PLANNED:
                    source.planned(targets, collector)
                else:
                    source.sequential(collector, by_pts=mode == SEQUENTIAL_PTS)
            except _PlanFailed as exc:
                if mode == SEQUENTIAL_ORDINAL:  # cannot happen: frame order always increases
                    raise DecodeError(f"{self.path}: cannot decode the video in order ({exc}). Re-encode it.") from exc
                first = assembler.next
                # Pts that go backwards are no use to a pass by pts either.
                mode = SEQUENTIAL_ORDINAL if isinstance(exc, _OrderBroken) or mode == SEQUENTIAL_PTS \
                    else SEQUENTIAL_PTS
                stats.fallback_reason = str(exc) if stats.fallback_reason is None \
                    else f"{stats.fallback_reason}; {exc}"
                logger.info("%s: %s decode from group %d on (%s)", self.path, mode, first, exc)
                continue
            if assembler.delivered == 0:
                raise DecodeError(
                    f"{self.path}: the video stream ({video.codec}) yielded no frame "
                    f"({stats.video_packets_failed} packet(s) failed to decode); the file is "
                    "damaged or uses an unsupported codec. Re-encode it or drop it."
                )
            if collector.stopped:  # every group still waiting has failed: no need to read on
                assembler.fail_waiting()
            else:
                assembler.finish(f"{self.path}: the video yielded no frame for these targets "
                                 "(the file ends early or is damaged)")
            return

    def _first_rung(self, video: VideoStreamInfo, groups: np.ndarray) -> tuple[str, np.ndarray | None]:
        """Where the ladder starts, and each target's frame pts where pts can be trusted
        (then ``stats.min_frames`` is the plan's minimum for them)."""
        if not (video.pts_reliable and video.frame_pts.size > 0):
            mode, reason, group_pts = SEQUENTIAL_ORDINAL, f"timestamps unusable ({video.pts_note})", None
        else:
            frame_times = video.frame_pts * float(video.time_base) - self.info.start
            group_pts = video.frame_pts[target_frames(frame_times, groups.reshape(-1))].reshape(groups.shape)
            self.stats.min_frames = min_frames_needed(video.frame_pts, video.keyframe_pts, group_pts)
            mode = PLANNED if video.keyframe_pts.size else SEQUENTIAL_PTS
            reason = None if mode == PLANNED else "no packet is flagged as a keyframe"
        if reason is not None:
            self.stats.fallback_reason = reason
            if mode != SEQUENTIAL_ORDINAL:  # containers without pts (AVI) are routine, not news
                logger.info("%s: %s decode (%s)", self.path, mode, reason)
        return mode, group_pts

    def _converter(self, transform: FrameTransform | None) -> Callable[[av.VideoFrame], Any]:
        """One RGB conversion of a chosen frame, upright (the orientation is read from the
        first converted frame only: it is a stream property, see ``orientation``)."""

        resident = self.decoder is not None and self.decoder.keep_on_device
        if resident:  # torch only where frames stay on the GPU: the engine itself does not need it
            from extract.frame_tensors import frame_to_tensor, orient

        def convert(frame: av.VideoFrame) -> Any:
            self.stats.frames_converted += 1
            if self._orientation is None:
                self._orientation = Orientation.of(frame)
            if resident:  # NVDEC frames stay on the GPU: a uint8 RGB tensor there (extract.frame_tensors)
                assert self.decoder is not None
                device = f"cuda:{self.decoder.device or 0}"
                image = orient(frame_to_tensor(frame, device), self._orientation)
            else:
                image = self._orientation.apply(as_software_layout(frame).to_image())
            return transform(image) if transform is not None else image

        return convert
