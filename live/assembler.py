"""Turning one source's decoded frames and audio into complete units, as they arrive.

The live counterpart of the decoding engine's nearest-frame rule (``extract.sampling.
target_frames``): a unit's frame target ``tau`` is met by the frame nearest it, ties to the
earlier frame, so it is settled by the first frame at or after ``tau`` (compared with the
one before). Only the previous frame is held (undecoded to pixels until it is chosen);
a chosen frame is put upright (``extract.orientation``), cut to the backbone's input
(``transform``) and a small copy of one frame per unit is kept for snapshots and the
browser view.

A unit is handed on once its last target is settled and the audio has reached its last
sample, with the wall time at which that happened (``arrived``: what ``latency_s`` is
measured from). Audio comes from ``extract.audio_track.AudioTrack`` in pushed mode, so its
samples are placed by timestamp exactly as offline decoding places them. A stream whose
audio stops, or whose video stops, does not hold units forever: past ``slack`` seconds of
the other stream the unit goes with what it has, the missing part masked.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import av
import numpy as np
from PIL import Image

from extract.audio_track import AudioTrack
from extract.hw_decode import as_software_layout
from extract.media_reader import FrameGroup
from extract.probe import DecodeError
from extract.orientation import Orientation

from .plans import Unit, UnitPlan

__all__ = ["Assembler", "LiveUnit", "SNAPSHOT_WIDTH"]

logger = logging.getLogger(__name__)

SNAPSHOT_WIDTH = 640  # the kept copy of a unit's frame (snapshots, browser view)


@dataclass
class LiveUnit:
    """A unit with its media: ``frames`` one per target (the backbone's input form; None:
    no video), ``audio`` the samples ``[unit.audio_lo, unit.audio_hi)`` (None: no audio),
    ``audio_end`` the media time real audio reaches, ``arrived`` wall seconds."""

    source: str
    unit: Unit
    frames: list[Any] | None
    frame_times: np.ndarray | None
    audio: np.ndarray | None
    audio_end: float
    arrived: float
    picture: Image.Image | None = None
    segment: int = 0            # which connection of the source (a reconnect starts a new one)


def _small(image: Image.Image) -> Image.Image:
    """The kept copy of a unit's frame: at most ``SNAPSHOT_WIDTH`` wide."""
    w = min(SNAPSHOT_WIDTH, image.width)
    return image if w == image.width else image.resize((w, max(1, round(image.height * w / image.width))),
                                                       Image.Resampling.BILINEAR)


@dataclass
class _Pending:
    unit: Unit
    frames: list[Any] = field(default_factory=list)
    times: list[float] = field(default_factory=list)
    picture: Image.Image | None = None
    video_wall: float = 0.0     # wall time its last frame target was settled
    audio_wall: float = 0.0     # wall time the audio first reached its end


class Assembler:
    """One connection's worth of a source: frames and audio in, complete units out."""

    def __init__(self, source: str, plan: UnitPlan, transform: Callable[[Image.Image], Any] | None,
                 audio: AudioTrack | None, has_video: bool, slack: float = 2.0, segment: int = 0) -> None:
        self.source, self.plan, self.transform = source, plan, transform
        self.audio, self.has_video = audio, has_video
        self.slack, self.segment = slack, segment
        self._pending: dict[int, _Pending] = {}
        self._next = 0                     # next unit to open
        self._prev: tuple[float, av.VideoFrame] | None = None
        self._converted: dict[int, tuple[Any, Image.Image]] = {}  # id(frame) -> (input, upright image)
        self._orientation: Orientation | None = None
        self.video_t = -np.inf             # media time of the newest frame
        self._audio_reached = 0            # samples
        self.file_end: float | None = None  # a file's duration: a unit reaching past it waits for finish()

    # -- what came in
    def add_frame(self, t: float, frame: av.VideoFrame, wall: float) -> list[LiveUnit]:
        """A decoded frame at media time ``t``; returns the units it completes."""
        if self._prev is not None and t <= self._prev[0]:
            return []  # a frame out of order or repeated: the offline rule has only one per time
        self._open_until(t)
        for p in list(self._pending.values()):
            while len(p.frames) < len(p.unit.targets) and p.unit.targets[len(p.frames)] <= t:
                tau = p.unit.targets[len(p.frames)]
                if self._prev is not None and abs(tau - self._prev[0]) <= abs(t - tau):
                    chosen_t, chosen = self._prev
                else:
                    chosen_t, chosen = t, frame
                p.frames.append(self._convert(chosen, p, len(p.frames)))
                p.times.append(chosen_t)
                p.video_wall = wall
        if self._prev is not None:
            self._converted.pop(id(self._prev[1]), None)
        self._prev = (t, frame)
        self.video_t = t
        return self._complete(wall)

    def audio_advanced(self, wall: float) -> list[LiveUnit]:
        """Call after feeding audio packets to the track: returns the units now complete."""
        if self.audio is None:
            return []
        self.audio.read(0, 0)  # place what the decoder produced
        if self.audio.decoded_end > self._audio_reached:
            self._audio_reached = self.audio.decoded_end
        if not self.has_video:
            self._open_until(self._audio_reached / self.audio.sample_rate)
        return self._complete(wall)

    def finish(self, wall: float, frames_at: Callable[[np.ndarray], FrameGroup] | None = None) -> list[LiveUnit]:
        """The connection ended: units whose media all arrived go; the rest are incomplete.

        For a file read to its end (``file_end`` set, ``frames_at``: the offline engine's
        nearest frames of the file, upright), the units after those are the ones offline
        decoding gives the file's tail, the last cut at ``file_end``: their frames are read
        again by that engine (a cut step's targets move, and the frames nearest them have
        passed), their audio comes from the track."""
        out = self._complete(wall, final=True)
        if self.file_end is not None and frames_at is not None:
            left = set(self._pending)           # not handed on (a unit past _next never opened)
            tail = [u for u in self.plan.last_units(min([*left, self._next]), self.file_end)
                    if u.index in left or u.index >= self._next]
            for unit in tail:
                try:
                    out.append(self._unit(self._reread(unit, frames_at, wall), wall))
                except DecodeError as exc:   # the file's tail is damaged: its whole units stand
                    logger.warning("%s: the file's last step cannot be read again (%s); not scored", self.source, exc)
                    break
                except Exception:            # a bug, or the file went away: shown, and the watch goes on
                    logger.exception("%s: the file's last step could not be built; not scored", self.source)
                    break
        self._pending.clear()
        return out

    def _reread(self, unit: Unit, frames_at: Callable[[np.ndarray], FrameGroup], wall: float) -> _Pending:
        p = _Pending(unit, video_wall=wall, audio_wall=wall)
        if self.has_video:
            group = frames_at(unit.targets)
            p.frames = [self.transform(img) if self.transform is not None else img for img in group.frames]
            p.times = [float(t) for t in group.times]
            p.picture = _small(group.frames[len(group.frames) // 2])
        return p

    # -- bookkeeping
    def _open_until(self, t: float) -> None:
        while True:
            unit = self.plan.unit(self._next)
            if unit.start > t:
                return
            self._pending[self._next] = _Pending(unit)
            self._next += 1

    def _convert(self, frame: av.VideoFrame, pending: _Pending, slot: int) -> Any:
        hit = self._converted.get(id(frame))
        if hit is None:
            if self._orientation is None:
                self._orientation = Orientation.of(frame)
            image = self._orientation.apply(as_software_layout(frame).to_image())  # NVDEC's NV12 as software's
            hit = (self.transform(image) if self.transform is not None else image, image)
            self._converted[id(frame)] = hit
        if slot == len(pending.unit.targets) // 2:
            pending.picture = _small(hit[1])
        return hit[0]

    def _audio_ok(self, unit: Unit) -> bool:
        return self.audio is None or self._audio_reached >= unit.audio_hi

    def _video_ok(self, p: _Pending) -> bool:
        return not self.has_video or len(p.frames) == len(p.unit.targets)

    def _complete(self, wall: float, final: bool = False) -> list[LiveUnit]:
        out = []
        sr = self.audio.sample_rate if self.audio is not None else 1
        clock = max(self.video_t, self._audio_reached / sr if self.audio is not None else -np.inf)
        for index in sorted(self._pending):
            p = self._pending[index]
            late = clock > p.unit.end + self.slack
            video_ok, audio_ok = self._video_ok(p), self._audio_ok(p.unit)
            if audio_ok and self.audio is not None and not p.audio_wall:
                p.audio_wall = wall
            if not ((video_ok or late or final) and (audio_ok or late or final)):
                continue
            if final and not (video_ok and audio_ok):
                continue  # the stream ended inside this unit: it is not a whole unit
            if self.file_end is not None and p.unit.end > self.file_end + 1e-9:
                continue  # a file's last step is cut at its end: finish() builds it
            del self._pending[index]
            out.append(self._unit(p, wall))
        if self.audio is not None:
            self.audio.release(min(self.plan.audio_floor(i) for i in [*self._pending, self._next]))
        return out

    def _unit(self, p: _Pending, wall: float) -> LiveUnit:
        frames = times = None
        if self.has_video and p.frames:
            frames, times = list(p.frames), np.asarray(p.times)
            while len(frames) < len(p.unit.targets):      # video stopped inside the unit: hold the last
                frames.append(frames[-1])
                times = np.append(times, times[-1])
        audio, audio_end = None, 0.0
        if self.audio is not None and self.audio.any_audio:
            audio, covered = self.audio.read(p.unit.audio_lo, p.unit.audio_hi)
            audio_end = (p.unit.audio_lo + covered) / self.audio.sample_rate
        arrived = max(p.video_wall, p.audio_wall) or wall
        return LiveUnit(self.source, p.unit, frames, times, audio, audio_end, arrived, p.picture, self.segment)
