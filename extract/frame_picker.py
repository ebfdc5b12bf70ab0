"""From decoded frames in display order to the frames nearest a set of target times.

This half of frame reading knows nothing about where frames come from (a file read by
plan, a file read sequentially, later a live stream): it is fed frames with a sort key
(pts, or a time from frame order) and hands out the chosen ones.

* :class:`PacketDecoder` decodes packets and marks every frame that may depend on a
  packet that failed to decode (until the next keyframe) with a *taint*;
* :class:`NearestFrameCollector` streams frames past sorted targets and hands each
  target its nearest frame the moment the next frame shows which of two is nearer,
  converting (to RGB) only frames that are chosen, once each;
* :class:`GroupAssembler` gathers the targets into groups (a clip's steps, a window's
  steps), hands each group out in order as soon as its last frame is in, and forgets
  frames no later group uses, so memory does not grow with the video.

A tainted frame fails only the groups that chose it; once every group still waiting has
failed, decoding stops.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import av
import numpy as np

__all__ = ["FrameGroup", "FrameSink", "GroupAssembler", "NearestFrameCollector", "PacketDecoder"]

logger = logging.getLogger(__name__)

FrameSink = Callable[[int, Any, float, "str | None"], bool]
"""``sink(target index, converted frame or None, key, taint) -> keep going``."""


class PacketDecoder:
    """Decodes packets of one stream, turning failures into a taint on later frames.

    A packet that fails to decode (corrupt data) is not fatal by itself, but every frame
    that comes out after it until the next keyframe may reference it, so such frames
    carry ``taint`` (the message a consumer raises or reports if it picks one).
    ``on_failure`` and ``on_frame`` count into the caller's statistics.
    """

    def __init__(self, path: str, on_failure: Callable[[], int], on_frame: Callable[[], None],
                 on_first: Callable[[av.VideoFrame], None] | None = None) -> None:
        self.path = path
        self._on_failure = on_failure
        self._on_frame = on_frame
        self._on_first = on_first  # sees the first decoded frame (where it was decoded)
        self.taint: str | None = None

    def reset(self) -> None:
        """After a seek the decoder is flushed and restarts at a keyframe."""
        self.taint = None

    def decode(self, packet: av.Packet) -> list[av.VideoFrame]:
        try:
            frames = packet.decode()
        except (av.FFmpegError, ValueError) as exc:
            failures = self._on_failure()
            when = (
                f"{float(packet.pts * packet.time_base):.3f} s"
                if packet.pts is not None and packet.time_base
                else "an unknown time"
            )
            log = logger.warning if failures == 1 else logger.debug
            log("%s: video packet at %s failed to decode: %s", self.path, when, exc)
            self.taint = (
                f"{self.path}: the video is damaged: the packet at {when} failed to decode "
                f"({exc}) and a step's frame depends on it. Re-encode the file (e.g. "
                "ffmpeg -i in.mp4 -c:v libx264 out.mp4) or drop it from the dataset."
            )
            return []
        if frames and self._on_first is not None:
            self._on_first(frames[0])
            self._on_first = None
        for frame in frames:
            if frame.key_frame:
                self.taint = None
            self._on_frame()
        return frames


class NearestFrameCollector:
    """Streams decoded frames past sorted targets, handing each its nearest frame.

    Only the last frame at or before the next pending target is held (unconverted); it
    is converted when a frame at or past the target shows which of the two is nearer
    (ties go to the earlier frame, as ``sampling.target_frames``). Frames never chosen are
    never converted; consecutive targets that choose one frame share one conversion.
    Each target goes to ``sink`` in order; a tainted frame goes as ``None`` with its
    taint. When ``sink`` returns False nothing more is wanted and ``pending`` turns False.
    """

    def __init__(self, targets: np.ndarray, convert: Callable[[av.VideoFrame], Any], sink: FrameSink) -> None:
        self.targets = np.asarray(targets, dtype=np.float64)
        self._convert = convert
        self._sink = sink
        self._next = 0
        self._stopped = False
        self._before: tuple[float, av.VideoFrame, str | None] | None = None
        # The frame is kept alive with its conversion so that its id() cannot be reused
        # by a later frame while cached.
        self._last_converted: tuple[int, Any] | None = None
        self._last_converted_frame: av.VideoFrame | None = None

    @property
    def pending(self) -> bool:
        return not self._stopped and self._next < len(self.targets)

    @property
    def stopped(self) -> bool:
        """Whether the sink said that nothing more is wanted."""
        return self._stopped

    def resolved_through(self, target: float) -> bool:
        """Whether every target up to ``target`` has its frame (a forward run can stop)."""
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
        index = self._next
        self._next += 1
        if taint is not None:
            converted = None
        elif self._last_converted is not None and self._last_converted[0] == id(frame):
            converted = self._last_converted[1]
        else:
            converted = self._convert(frame)
            self._last_converted = (id(frame), converted)
            self._last_converted_frame = frame
        if self._sink(index, converted, key, taint) is False:
            self._stopped = True


@dataclass(frozen=True)
class FrameGroup:
    """The chosen frames of one group of targets (``index`` in the caller's order).

    ``frames[i]`` is the converted frame nearest target ``i`` (targets that share a frame
    share one object) and ``times[i]`` its clip time (seconds); both are None and
    ``error`` says why when one of the chosen frames depends on a damaged packet or the
    video yielded no frame for the group.
    """

    index: int
    frames: list[Any] | None
    times: np.ndarray | None
    error: str | None = None


class GroupAssembler:
    """Receives target frames in target order; hands out each group once all of its
    frames are in, and frees the frames no later group uses.

    ``slot_target[g]`` maps the slots of group ``first + g`` to target indices
    (non-decreasing over groups, since groups are ordered and targets sorted).
    ``key_time`` turns a frame's key (pts, or its time from frame order) into clip time.
    ``deliver`` is a :data:`FrameSink`: it answers False once every group still waiting
    has failed, so the decode can stop.
    """

    def __init__(
        self,
        first: int,
        slot_target: np.ndarray,
        key_time: Callable[[float], float],
        on_group: Callable[[FrameGroup], None],
    ) -> None:
        self.first, self.slot_target, self.key_time = first, slot_target, key_time
        self._on_group = on_group
        self.next = first
        self.end = first + len(slot_target)
        self.delivered = 0
        self._frames: dict[int, tuple[Any, str | None, float]] = {}
        self._last_needed = slot_target.max(axis=1)
        self._first_needed = slot_target.min(axis=1)

    @property
    def done(self) -> bool:
        return self.next >= self.end

    def deliver(self, index: int, converted: Any, key: float, taint: str | None) -> bool:
        self.delivered += 1
        self._frames[index] = (converted, taint, self.key_time(key))
        while not self.done and self._last_needed[self.next - self.first] <= index:
            self._emit()
        if taint is not None and not self.done and self._all_waiting_failed():
            return False
        return True

    def fail_waiting(self) -> None:
        """Hand out the groups still waiting, each with the taint it already has."""
        while not self.done:
            slots = self.slot_target[self.next - self.first].tolist()
            error = next(self._frames[i][1] for i in slots if i in self._frames and self._frames[i][1])
            self._hand_out(FrameGroup(self.next, None, None, error))

    def finish(self, no_frame: str) -> None:
        """End of stream with no failure: targets never reached take the last frame seen;
        with no frame at all, the groups fail with ``no_frame``."""
        if not self._frames:
            while not self.done:
                self._hand_out(FrameGroup(self.next, None, None, no_frame))
            return
        last = self._frames[max(self._frames)]
        while not self.done:
            for i in self.slot_target[self.next - self.first].tolist():
                self._frames.setdefault(i, last)
            self._emit()

    def _all_waiting_failed(self) -> bool:
        def failed(group: int) -> bool:
            return any(
                self._frames[i][1] is not None
                for i in self.slot_target[group - self.first].tolist()
                if i in self._frames
            )

        # The last group is the one least likely to have failed already: ask it first.
        return failed(self.end - 1) and all(failed(g) for g in range(self.next, self.end - 1))

    def _emit(self) -> None:
        chosen = [self._frames[i] for i in self.slot_target[self.next - self.first].tolist()]
        error = next((t for _, t, _ in chosen if t is not None), None)
        if error is not None:
            group = FrameGroup(self.next, None, None, error)
        else:
            group = FrameGroup(self.next, [c for c, _, _ in chosen],
                               np.asarray([t for _, _, t in chosen], dtype=np.float64))
        self._hand_out(group)

    def _hand_out(self, group: FrameGroup) -> None:
        self._on_group(group)
        self.next += 1
        if not self.done:
            keep_from = self._first_needed[self.next - self.first]
            for i in [i for i in self._frames if i < keep_from]:
                del self._frames[i]
