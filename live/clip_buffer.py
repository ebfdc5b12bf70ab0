"""The last minute of a camera, compressed: a ring buffer of its demuxed packets, video
and audio, from which an alert's clip is remuxed without decoding (``live.clips``).

The source's reader thread pushes every packet it demuxes (``push``), with the offset
that turns the packet's timestamps into the source's *media time* (the time alerts are
given in). A packet is kept as bytes and integer timestamps, copied out of PyAV's packet
so that it outlives the decoder and the connection; the connection's codec parameters
are copied too (``Connection``), into an output container that is never written, because
a stream of a closed input container must not be touched.

The buffer is a list of GOPs, each starting at a keyframe of its *key stream* (video,
or audio for an audio-only camera, whose packets all decode on their own), so that a
clip can always start at a keyframe. It is bounded both ways, whatever the bitrate:

* time: whole GOPs are dropped from the front while the buffer spans more than
  ``buffer_s`` seconds of media (the newest GOP is always kept);
* bytes: whole GOPs are dropped from the front while their payload plus a fixed
  per-packet overhead exceeds ``buffer_bytes``; a single GOP larger than that (a camera
  with a 10 s keyframe interval at 100 Mbit/s) is dropped whole, and packets are
  discarded until the next keyframe (``overflows`` counts it).
"""

from __future__ import annotations

import io
import logging
import threading
from collections import deque
from dataclasses import dataclass, field
from fractions import Fraction
from typing import Any

import av

__all__ = ["PACKET_OVERHEAD", "BufferedPacket", "ClipPackets", "Connection", "PacketRing"]

logger = logging.getLogger(__name__)

PACKET_OVERHEAD = 200     # bytes counted per packet besides its payload (the Python objects that hold it)
AUDIO_GOP_S = 1.0         # an audio-only camera's packets are grouped into GOPs of about this long
UNTIMED_TIME_BASE = Fraction(1, 1000)   # a camera without timestamps: its arrival times, in ms


class Connection:
    """One connection's streams, kept after its input container is closed. The codec
    parameters are copied into streams of an in-memory NUT output that is never written
    (FFmpeg's own format takes every codec a camera sends, G.711 and G.726 included);
    a clip's streams are made from these."""

    def __init__(self, number: int, video: Any, audio: Any) -> None:
        self.number = number
        self._holder = av.open(io.BytesIO(), "w", format="nut")
        self.video = self._holder.add_stream_from_template(video, opaque=True) if video is not None else None
        self.audio = self._holder.add_stream_from_template(audio, opaque=True) if audio is not None else None
        self.video_index = video.index if video is not None else None
        self.audio_index = audio.index if audio is not None else None

    def template(self, kind: str) -> Any:
        return self.video if kind == "video" else self.audio

    def codec(self, kind: str) -> str:
        stream = self.template(kind)
        return stream.codec_context.name if stream is not None else "none"


@dataclass(frozen=True, slots=True)
class BufferedPacket:
    """A demuxed packet, copied: ``pts``/``dts`` in ``time_base`` ticks of media time."""

    kind: str                 # "video" or "audio"
    data: bytes
    pts: int | None
    dts: int | None
    duration: int
    time_base: Fraction
    keyframe: bool
    connection: Connection

    @property
    def t(self) -> float:
        """Media seconds of its decode time (else presentation time)."""
        return float((self.dts if self.dts is not None else self.pts) * self.time_base)

    @property
    def size(self) -> int:
        return len(self.data) + PACKET_OVERHEAD


@dataclass
class _Gop:
    t0: float
    packets: list[BufferedPacket] = field(default_factory=list)
    size: int = 0


@dataclass(frozen=True)
class ClipPackets:
    """What a clip is made of: packets in demux order from a keyframe, and where the
    buffer cut it (``truncated``: the buffer did not reach back to the wanted start)."""

    packets: tuple[BufferedPacket, ...]
    start: float              # media time of the first (key) packet
    end: float                # media time of the last packet
    truncated: bool           # the buffer had already dropped the wanted start (an alert longer than it)


class PacketRing:
    """One camera's ring buffer (see the module's text). ``push``/``connect`` come from the
    source's reader thread, ``take`` from the clip writer's: one lock."""

    def __init__(self, name: str, buffer_s: float, buffer_bytes: int) -> None:
        self.name, self.buffer_s, self.buffer_bytes = name, buffer_s, buffer_bytes
        self._gops: deque[_Gop] = deque()
        self._lock = threading.Lock()
        self._connection: Connection | None = None
        self._connections = 0
        self._waiting = True        # packets wait for a keyframe to start a GOP
        self.bytes = 0              # payload + per-packet overhead now held
        self.peak_bytes = 0         # the most ever held (checked against buffer_bytes by the tests)
        self.newest_t = float("-inf")   # media time of the newest packet
        self.reached = float("-inf")    # of the newest key-stream packet (video, else audio): what a clip waits for
        self.overflows = 0          # GOPs larger than buffer_bytes, dropped whole
        self.trimmed = False        # media was dropped from the front (the buffer no longer starts at the stream's)
        self.ended = False          # the source has ended: no more media will come
        self.broken: str | None = None   # why this camera's packets cannot be kept (a codec Matroska refuses)

    # -- the reader's side -------------------------------------------------------------
    def connect(self, video: Any, audio: Any) -> None:
        """A new connection with these input streams: its packets start a new GOP at its
        first keyframe (a reopened camera may have changed its codec parameters)."""
        self._connections += 1
        try:
            connection = Connection(self._connections, video, audio)
        except (ValueError, av.FFmpegError) as exc:   # a codec even NUT refuses: this camera has no clips
            connection = None
            if self.broken is None:
                logger.warning("%s: its packets cannot be kept for clips (%s); no clips of this camera", self.name, exc)
            self.broken = str(exc)
        with self._lock:
            self._connection = connection
            self._waiting = True

    def push(self, packet: Any, offset: float, has_video: bool, arrival: float | None = None) -> None:
        """One demuxed packet; ``offset``: seconds to subtract from its timestamps to get
        media time; ``arrival``: its arrival (monotonic seconds) for a camera without
        timestamps; ``has_video``: whether the connection's video is scored (an audio-only
        fallback ignores the video stream)."""
        connection = self._connection
        if connection is None or packet.size == 0:
            return
        if packet.stream_index == connection.video_index and has_video:
            kind = "video"
        elif packet.stream_index == connection.audio_index:
            kind = "audio"
        else:
            return
        if arrival is not None:
            time_base = UNTIMED_TIME_BASE
            pts = dts = round((arrival - offset) / time_base)
        else:
            time_base = packet.time_base
            if time_base is None or (packet.pts is None and packet.dts is None):
                return
            shift = round(offset / time_base)
            pts = None if packet.pts is None else packet.pts - shift
            dts = None if packet.dts is None else packet.dts - shift
        key_stream = "video" if has_video and connection.video_index is not None else "audio"
        item = BufferedPacket(kind, bytes(packet), pts, dts, int(packet.duration or 0), time_base,
                              bool(packet.is_keyframe) if kind == "video" else True, connection)
        with self._lock:
            self._add(item, kind == key_stream)

    def _add(self, item: BufferedPacket, key_stream: bool) -> None:
        t = item.t
        self.newest_t = max(self.newest_t, t)
        if key_stream:
            self.reached = max(self.reached, t)
        current = self._gops[-1] if self._gops and not self._waiting else None
        if key_stream and item.keyframe and (
                current is None or item.kind == "video" or t - current.t0 >= AUDIO_GOP_S):
            current = _Gop(t)
            self._gops.append(current)
            self._waiting = False
        if current is None:
            return                   # before this connection's first keyframe: it could not be decoded
        current.packets.append(item)
        current.size += item.size
        self.bytes += item.size
        self._trim()
        self.peak_bytes = max(self.peak_bytes, self.bytes)

    def _trim(self) -> None:
        gops = self._gops
        while len(gops) > 1 and (self.bytes > self.buffer_bytes or self.newest_t - gops[0].t0 > self.buffer_s):
            self.bytes -= gops.popleft().size
            self.trimmed = True
        if gops and self.bytes > self.buffer_bytes:   # one GOP bigger than the whole buffer
            self.bytes -= gops.popleft().size
            self.trimmed = True
            self._waiting = True
            self.overflows += 1
            if self.overflows == 1:
                logger.warning("%s: one GOP is larger than the clip buffer (%d bytes); dropped whole (a longer "
                               "buffer_bytes, or more frequent keyframes, keep it)", self.name, self.buffer_bytes)

    def end(self) -> None:
        with self._lock:
            self.ended = True

    # -- the writer's side -------------------------------------------------------------
    @property
    def span(self) -> tuple[float, float] | None:
        with self._lock:
            return (self._gops[0].t0, self.newest_t) if self._gops else None

    def take(self, t_from: float, t_to: float) -> ClipPackets | None:
        """The packets from the keyframe at or before ``t_from`` (else the oldest kept) to
        ``t_to``, in demux order; key-stream packets are cut by decode time (so that every
        frame shown up to ``t_to`` is there with what it references), with the first one
        after ``t_to`` too (the clip ends at or after ``t_to``, even across a gap), other
        audio by presentation time; audio before the first keyframe is left out. None when
        nothing of that span is held."""
        with self._lock:
            within = sum(1 for g in self._gops if g.t0 <= t_to)
            if not within:
                return None
            gops = list(self._gops)[:within + 1]   # and the next GOP, whose keyframe may be the first after t_to
            first = max((i for i, g in enumerate(gops) if g.t0 <= t_from), default=0)
            chosen = [p for g in gops[first:] for p in g.packets]
        start = gops[first].t0
        key = chosen[0]
        key_pts = float((key.pts if key.pts is not None else key.dts) * key.time_base)
        packets = []
        past = False                 # the first key-stream packet after t_to is taken
        for p in chosen:
            if p.kind != key.kind:
                at = float((p.pts if p.pts is not None else p.dts) * p.time_base)
                if at < key_pts or at > t_to:
                    continue
            elif p.t > t_to:
                if past:
                    continue
                past = True
            packets.append(p)
        return ClipPackets(tuple(packets), start, max(p.t for p in packets),
                           truncated=self.trimmed and start > t_from + 1e-6)
