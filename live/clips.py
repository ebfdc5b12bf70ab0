"""A clip of every alert: the camera's own compressed packets from ``pre_s`` before the
alert to ``post_s`` after it, remuxed into an MP4 without re-encoding.

Each camera keeps a bounded ring buffer of its packets (``live.clip_buffer``). When an
alert ends, its ``alert_end`` event goes to the :class:`ClipRecorder` instead of the
hub: a worker thread waits until the camera's buffer holds media up to
``t_end + post_s`` (or the camera ends, or ``post_s + WAIT_SLACK_S`` seconds of wall
time pass), takes the packets from the keyframe at or before ``t_start - pre_s``, and
writes them to a temporary name in the clips folder, renamed into place when whole. The
event is then published with ``clip`` set to the file's path (None when the clip could
not be written), so that the JSON lines, the webhook, MQTT and the page all name it.
The camera's later alert events wait behind it, so that they keep their order.

* **Container.** MP4 (``+faststart``, so a browser plays it while it loads) for the
  codecs MP4 holds (H.264, H.265, MJPEG, AAC, Opus, MP3, PCM, ...); a camera whose codec
  MP4 refuses gets Matroska ``.mkv`` (VP8, ...) or else QuickTime ``.mov`` (G.711
  audio), logged once per camera, still without re-encoding; a codec none of them takes
  (G.726) loses its clips (counted). The media time of the clip's first packet is in its
  metadata (``avar_media_start``): clip time + that = the event's media time.
* **Names.** ``<camera>-<hash>-<start wall time>-alert<id>.mp4``: the camera's name
  (made file-safe; a hash of the full name keeps two names that look alike apart), never
  its URL.
* **Retention.** After every clip, and every minute, clips older than ``max_age_s`` are
  removed, then the oldest while the folder's clips exceed ``max_bytes`` in total. A clip
  larger than ``max_bytes`` on its own is not kept.
* **Failures.** Any write failure (a full disk, a folder made read-only, a clip too big)
  loses that clip only: it is logged and counted (``failures``; ``written`` counts the
  clips written), the event goes out with ``clip: null``, and scoring never waits.
"""

from __future__ import annotations

import hashlib
import io
import logging
import math
import os
import re
import threading
import time
from collections import defaultdict, deque
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Callable

import av

from cache_schema import InvalidInput, replace_atomically

from .clip_buffer import ClipPackets, PacketRing
from .events import ALERT_END, AlertEvent
from .sinks import slug

__all__ = ["CLIP_NAME", "ClipConfig", "ClipRecorder", "check_clips_dir", "clip_container", "remux_clip",
           "retain_clips"]

logger = logging.getLogger(__name__)

WAIT_SLACK_S = 10.0       # wall seconds an alert's clip waits for its post_s of media beyond post_s itself
QUEUE = 32                # alert ends waiting for their clip; more are published without one (counted)
RETAIN_EVERY_S = 60.0
CLIP_NAME = re.compile(r"[^.].*-alert\d+\.(?:mp4|mkv|mov)")
# Where a clip goes, first that takes every codec of it: MP4 (what browsers play); Matroska
# (VP8/VP9, ...); QuickTime (G.711 audio, common on IP cameras, which the other two refuse).
CONTAINERS = (("mp4", ".mp4"), ("matroska", ".mkv"), ("mov", ".mov"))
MP4_OPTIONS = {"movflags": "+faststart+use_metadata_tags"}


@dataclass(frozen=True)
class ClipConfig:
    """Where clips go and how much of each camera is kept. ``pre_s``/``post_s``: seconds
    before the alert's start and after its end; ``max_bytes``/``max_age_s``: the clips
    folder's retention; ``buffer_s``/``buffer_bytes``: each camera's ring buffer."""

    dir: str
    pre_s: float = 5.0
    post_s: float = 5.0
    max_bytes: int = 2_000_000_000
    max_age_s: float = 259200.0
    buffer_s: float = 60.0
    buffer_bytes: int = 64_000_000

    def __post_init__(self) -> None:
        if not str(self.dir).strip():
            raise InvalidInput("--clips: give a folder for the clips")
        for name, flag in (("pre_s", "--clip-pre"), ("post_s", "--clip-post")):
            value = getattr(self, name)
            if not (math.isfinite(value) and value >= 0):
                raise InvalidInput(f"{flag} (clips {name}) must be >= 0 seconds, got {value}")
        if not (isinstance(self.max_bytes, int) and self.max_bytes > 0):
            raise InvalidInput(f"--clips-max-bytes (clips max_bytes) must be a positive number of bytes, "
                               f"got {self.max_bytes}")
        if not (math.isfinite(self.max_age_s) and self.max_age_s > 0):
            raise InvalidInput(f"--clips-max-age (clips max_age_s) must be positive seconds, got {self.max_age_s}")
        if not (isinstance(self.buffer_bytes, int) and self.buffer_bytes > 0):
            raise InvalidInput(f"clips buffer_bytes must be a positive number of bytes, got {self.buffer_bytes}")
        if not (math.isfinite(self.buffer_s) and self.buffer_s > self.pre_s + self.post_s):
            raise InvalidInput(f"clips buffer_s ({self.buffer_s}) must be longer than pre_s + post_s "
                               f"({self.pre_s + self.post_s:g} s): the buffer holds the alert and both margins")


def check_clips_dir(config: ClipConfig) -> Path:
    """The clips folder, made if missing; ``InvalidInput`` when it cannot be made or
    written (checked before the run is loaded)."""
    folder = Path(config.dir)
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise InvalidInput(f"--clips {config.dir}: cannot make the folder ({exc.strerror or exc})") from None
    if not os.access(folder, os.W_OK | os.X_OK):
        raise InvalidInput(f"--clips {config.dir}: the folder is not writable; choose another one")
    return folder


def clip_container(clip: ClipPackets) -> tuple[str, str]:
    """(FFmpeg format, suffix): the first of ``CONTAINERS`` that takes every codec of the
    clip; ``ValueError`` when none does (the clip is lost, counted)."""
    for fmt, suffix in CONTAINERS:
        probe = av.open(io.BytesIO(), "w", format=fmt)
        try:
            for kind in _kinds(clip):
                probe.add_stream_from_template(clip.packets[0].connection.template(kind), opaque=True)
        except ValueError:   # "'mp4' format does not support 'vp8' codec"
            continue
        finally:
            probe.close()
        return fmt, suffix
    raise ValueError(f"no clip container ({', '.join(f for f, _ in CONTAINERS)}) takes its codecs "
                     f"({', '.join(clip.packets[0].connection.codec(k) for k in _kinds(clip))})")


def _kinds(clip: ClipPackets) -> list[str]:
    """The clip's tracks: only those with packets (a camera without audio gets none)."""
    return [k for k in ("video", "audio") if any(p.kind == k for p in clip.packets)]


def remux_clip(clip: ClipPackets, path: str | Path, fmt: str, metadata: dict[str, str]) -> float:
    """Write ``clip``'s packets to ``path`` in format ``fmt``, timestamps rebased so that
    the first frame is at 0; returns the media time of clip time 0. Packets of a later
    connection whose codec changed are left out (the clip ends there)."""
    first = clip.packets[0].connection
    zero = min(float((p.pts if p.pts is not None else p.dts) * p.time_base) for p in clip.packets)
    with av.open(str(path), "w", format=fmt, options=MP4_OPTIONS if fmt == "mp4" else {}) as out:
        streams = {k: out.add_stream_from_template(first.template(k), opaque=True) for k in _kinds(clip)}
        out.metadata.update({**metadata, "avar_media_start": f"{zero:.6f}"})
        last_dts: dict[str, int] = {}
        for p in clip.packets:
            if p.connection is not first and p.connection.codec(p.kind) != first.codec(p.kind):
                break
            shift = math.floor(zero / p.time_base)
            packet = av.Packet(p.data)
            packet.stream = streams[p.kind]
            packet.time_base = p.time_base
            pts = None if p.pts is None else p.pts - shift
            dts = None if p.dts is None else p.dts - shift
            if dts is not None:   # a reconnect may step back by a tick: decode times must rise
                previous = last_dts.get(p.kind)
                if previous is not None and dts <= previous:
                    dts = previous + 1
                    pts = max(pts, dts) if pts is not None else None
                last_dts[p.kind] = dts
            packet.pts, packet.dts = pts, dts
            packet.duration = p.duration
            packet.is_keyframe = p.keyframe
            out.mux(packet)
    return zero


def retain_clips(folder: str | Path, max_bytes: int, max_age_s: float, now: float | None = None) -> list[Path]:
    """Remove clips older than ``max_age_s``, then the oldest (by modification time) while
    the clips in ``folder`` exceed ``max_bytes``; returns what was removed. Only files
    named as clips are touched."""
    now = time.time() if now is None else now
    clips = []
    for entry in os.scandir(folder):
        if CLIP_NAME.fullmatch(entry.name) and entry.is_file(follow_symlinks=False):
            st = entry.stat(follow_symlinks=False)
            clips.append((st.st_mtime, entry.name, st.st_size, Path(entry.path)))
    clips.sort()
    total = sum(c[2] for c in clips)
    removed = []
    for mtime, _, size, path in clips:
        if now - mtime <= max_age_s and total <= max_bytes:
            break
        try:
            path.unlink()
        except FileNotFoundError:
            pass
        total -= size
        removed.append(path)
    if removed:
        logger.info("clips: removed %d old clip(s) (retention: %d bytes, %g s)", len(removed), max_bytes, max_age_s)
    return removed


class _TooLarge(OSError):
    """A clip larger than the folder's whole budget."""


@dataclass
class _Pending:
    """An alert event waiting to be published in its camera's order; an ``alert_end``
    waits for its clip (``ready``)."""

    event: AlertEvent
    ready: bool = True
    t_from: float = 0.0
    t_to: float = 0.0
    deadline: float = 0.0
    start_wall: float = 0.0


class ClipRecorder:
    """The ring buffers of every camera and the thread that writes their clips.

    ``ring(name)`` is handed to the camera's reader; ``submit(event)`` takes every alert
    event of a camera (from the scoring thread, never blocking) and publishes it through
    ``publish`` in order, an ``alert_end`` once its clip is written or has failed;
    ``source_ended`` says a camera's media is complete; ``close`` writes what is waiting
    with what is buffered, and joins the thread."""

    def __init__(self, config: ClipConfig, publish: Callable[[AlertEvent], None]) -> None:
        self.config = config
        self.folder = check_clips_dir(config)
        self.publish = publish
        self.written = 0
        self.failures = 0
        self._rings: dict[str, PacketRing] = {}
        self._starts: dict[tuple[str, int], float] = {}
        self._order: dict[str, deque[_Pending]] = defaultdict(deque)
        self._jobs: list[_Pending] = []
        self._formats: dict[str, str] = {}       # camera -> the container its last clip needed
        self._cond = threading.Condition(threading.RLock())
        self._publishing = threading.Lock()      # taken before _cond, never after it
        self._closing = False
        self._retained = 0.0
        self._retain()
        self._thread = threading.Thread(target=self._work, name="clip-writer", daemon=True)
        self._thread.start()

    # -- the scoring thread's side ---------------------------------------------------
    def ring(self, name: str) -> PacketRing:
        ring = self._rings.get(name)
        if ring is None:
            ring = self._rings[name] = PacketRing(name, self.config.buffer_s, self.config.buffer_bytes)
        return ring

    def submit(self, event: AlertEvent) -> None:
        key = (event.source, event.alert_id)
        item = _Pending(event)
        if event.type == ALERT_END:
            t_end = event.t_end if event.t_end is not None else event.t_start
            item = _Pending(event, False, event.t_start - self.config.pre_s, t_end + self.config.post_s,
                            time.monotonic() + self.config.post_s + WAIT_SLACK_S,
                            self._starts.pop(key, event.wall_time - (t_end - event.t_start)))
        else:
            self._starts[key] = event.wall_time
        with self._cond:
            if not item.ready:
                if len(self._jobs) >= QUEUE or self._closing:
                    item.ready = True
                    self._failed(event, f"{len(self._jobs)} clips already wait to be written")
                else:
                    self._jobs.append(item)
                    self._cond.notify()
            self._order[event.source].append(item)
        self._release(event.source)

    def source_ended(self, name: str) -> None:
        ring = self._rings.get(name)
        if ring is not None:
            ring.end()
        with self._cond:
            self._cond.notify()

    def pending(self, name: str) -> int:
        """Alert events of ``name`` not published yet (its ``ended`` waits for them)."""
        with self._cond:
            return len(self._order.get(name, ()))

    def close(self) -> None:
        with self._cond:
            self._closing = True
            self._cond.notify()
        self._thread.join()

    # -- publishing in order ------------------------------------------------------------
    def _release(self, name: str) -> None:
        with self._publishing:
            while True:
                with self._cond:
                    queue = self._order[name]
                    if not queue or not queue[0].ready:
                        return
                    head = queue[0]
                # published before it leaves the queue: until then pending(name) holds the
                # camera's ``ended`` back (live/watch.py), so ``ended`` never overtakes it
                self.publish(head.event)
                with self._cond:
                    queue.popleft()

    def _failed(self, event: AlertEvent, why: str) -> None:
        with self._cond:             # counted from the scoring thread (a full queue) and the writer's
            self.failures += 1
        logger.warning("clips: no clip of %s's alert %d (%s); its alert_end goes out with clip null (%d clip(s) lost "
                       "so far)", event.source, event.alert_id, why, self.failures)

    # -- the writer thread ---------------------------------------------------------------
    def _due(self, item: _Pending) -> bool:
        ring = self._rings.get(item.event.source)
        return (self._closing or ring is None or ring.ended or ring.reached >= item.t_to
                or time.monotonic() >= item.deadline)

    def _work(self) -> None:
        while True:
            with self._cond:
                due = next((j for j in self._jobs if self._due(j)), None)
                if due is None:
                    if self._closing and not self._jobs:
                        return
                    self._cond.wait(0.1)
                    retain = time.monotonic() - self._retained >= RETAIN_EVERY_S
                else:
                    retain = False
            if due is None:   # a quiet camera's old clips still age out, every minute
                if retain:
                    self._retain()
                continue
            clip = self._write(due)
            with self._cond:
                due.event = replace(due.event, clip=clip)
                due.ready = True
                self._jobs.remove(due)
            self._release(due.event.source)
            if time.monotonic() - self._retained >= RETAIN_EVERY_S:
                self._retain()

    def _write(self, item: _Pending) -> str | None:
        event = item.event
        try:
            return self._remux(item)
        except (OSError, av.FFmpegError, ValueError) as exc:   # a full disk, a read-only folder, a clip too big
            self._failed(event, f"{type(exc).__name__}: {getattr(exc, 'strerror', None) or exc}")
        except Exception:   # a bug: its traceback, and the clip is lost, never scoring
            logger.exception("clips: writing %s's alert %d failed", event.source, event.alert_id)
            self._failed(event, "an unexpected error (traceback above)")
        return None

    def _remux(self, item: _Pending) -> str | None:
        event = item.event
        ring = self._rings.get(event.source)
        if ring is None or ring.broken:
            self._failed(event, "its camera's packets are not kept" + (f" ({ring.broken})" if ring else ""))
            return None
        clip = ring.take(item.t_from, item.t_to)
        if clip is None:
            self._failed(event, "no media of the alert is buffered")
            return None
        if clip.truncated:
            logger.info("clips: %s's alert %d starts at %.2f s, not %.2f s: the buffer (buffer_s %g) no longer held "
                        "the start", event.source, event.alert_id, clip.start, item.t_from, self.config.buffer_s)
        fmt, suffix = clip_container(clip)
        if fmt != "mp4" and self._formats.get(event.source) != fmt:
            logger.warning("clips: %s: MP4 cannot hold its codecs (%s); its clips are %s (%s), not re-encoded",
                           event.source, ", ".join(clip.packets[0].connection.codec(k) for k in _kinds(clip)), fmt,
                           suffix)
        self._formats[event.source] = fmt
        digest = hashlib.sha256(event.source.encode()).hexdigest()[:6]
        stamp = time.strftime("%Y%m%dT%H%M%S", time.localtime(item.start_wall))
        path = self.folder / f"{slug(event.source)}-{digest}-{stamp}-alert{event.alert_id:04d}{suffix}"
        metadata = {"title": f"{event.source}: alert {event.alert_id} ({event.label})", "avar_camera": event.source,
                    "avar_alert_id": str(event.alert_id)}

        def write(tmp: Path) -> None:
            remux_clip(clip, tmp, fmt, metadata)
            size = tmp.stat().st_size
            if size > self.config.max_bytes:
                raise _TooLarge(f"the clip's {size} bytes exceed max_bytes {self.config.max_bytes}")

        replace_atomically(path, write)
        self.written += 1
        self._retain()
        return str(path)

    def _retain(self) -> None:
        self._retained = time.monotonic()
        try:
            retain_clips(self.folder, self.config.max_bytes, self.config.max_age_s)
        except OSError as exc:
            logger.warning("clips: retention of %s failed (%s)", self.folder, exc.strerror or exc)

    def stats(self) -> dict[str, Any]:
        return {"written": self.written, "failures": self.failures,
                "buffers": {n: {"bytes": r.bytes, "peak_bytes": r.peak_bytes, "overflows": r.overflows}
                            for n, r in self._rings.items()}}
