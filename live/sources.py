"""Where live media comes from: parsing a SOURCE, opening it with PyAV, and reading it
on a thread of its own, reconnecting when it drops.

A SOURCE is anything FFmpeg opens: ``rtsp://``, ``rtmp://``, ``http(s)://`` (HLS,
MJPEG), ``udp://``, ``tcp://``, ``srt://`` URLs; a V4L2 device (``/dev/video0``); ``-``
for a stream piped on standard input; or a file (read as fast as it decodes, or paced by
its timestamps as a camera would send it with ``realtime``).

Each :class:`SourceReader` owns one source: it demuxes, decodes (a corrupt packet is
counted and skipped), and feeds an :class:`~live.assembler.Assembler`, whose complete
units go to ``on_unit``. A network read that waits longer than ``stall_timeout``
reports ``stalled``, and the source is reopened with backoff until it answers again
(``reconnected``, with the gap); standard input cannot be reopened, so there the stall
is reported by the pipe reader and the stream resumes when bytes come again. A file
that ends, ends. One source never waits on another.
"""

from __future__ import annotations

import logging
import math
import os
import queue
import stat
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

import av
import numpy as np

from cache_schema import SAMPLE_RATE, AvarError, InvalidInput
from extract.audio_track import AudioDecoder, AudioTrack
from extract.hw_decode import HardwareDecoder, open_with_fallback
from extract.media_reader import FrameGroup, MediaReader
from extract.probe import DecodeError, MediaInfo, choose_streams, not_a_media_file, probe

from .alerts import AlertConfig
from .assembler import Assembler, LiveUnit
from .clip_buffer import PacketRing
from .events import ENDED, RECONNECTED, STALLED, STARTED, StatusEvent
from .redact import redact_text, redact_url, url_secrets

__all__ = ["AssemblerFactory", "PipeInput", "SourceReader", "SourceSpec", "parse_source"]

logger = logging.getLogger(__name__)

NETWORK_SCHEMES = ("rtsp", "rtsps", "rtmp", "rtmps", "http", "https", "udp", "tcp", "srt", "rtp")
BACKOFF_S = (0.5, 1.0, 2.0, 4.0, 8.0)
# Containers without a clock of their own: FFmpeg numbers an MJPEG-over-HTTP camera's
# frames at an assumed 25 fps, whatever the camera sends (often 5-15 fps), so their media
# time is their arrival time instead.
UNTIMED_FORMATS = frozenset({"mpjpeg", "mjpeg", "jpeg_pipe", "image2pipe"})
# A stream's clock starts at its first video packet. One that declares a video stream and
# sends only audio is scored as audio-only (as offline scores such a file) once that audio
# spans VIDEO_WAIT_S of media time AND has taken VIDEO_WAIT_S of wall time (a reconnect's
# audio, held back by the muxer over a pause, arrives in a burst just before the video; a
# camera's first keyframe may take a few seconds), or spans HELD_AUDIO_MAX_S whatever the
# wall time (memory stays bounded), or when the connection ends first. The audio received
# meanwhile is held and scored.
VIDEO_WAIT_S = 5.0
HELD_AUDIO_MAX_S = 120.0


@dataclass(frozen=True)
class SourceSpec:
    """``name``: what every event, log line, file name and the page call the source (a
    config file's camera name; for a SOURCE argument the text with its credentials
    masked, ``live.redact``); ``url`` what FFmpeg opens, the only place that holds the
    credentials (left out of ``repr``); ``kind``: ``stream`` (a URL), ``device`` (V4L2),
    ``stdin``, ``fifo`` (a named pipe, read as standard input is: an MPEG-TS stream that
    ends when its writer closes it) or ``file``.

    Per-camera settings (a config file's): ``alerts`` (None: the watch's), ``window``
    seconds (None: the watch's), ``audio`` (False: its audio is not read, so the head sees
    it masked, as for a camera without audio)."""

    name: str
    url: str = field(repr=False)
    kind: str
    realtime: bool = False
    format: str | None = None
    options: dict[str, str] = field(default_factory=dict)
    alerts: AlertConfig | None = None
    window: float | None = None
    audio: bool = True
    decoder: HardwareDecoder | None = None  # video decoded on this device (extract.hw_decode); None: software

    def __str__(self) -> str:
        return self.name

    @property
    def reconnects(self) -> bool:
        return self.kind in ("stream", "device")


def parse_source(text: str, realtime: bool = False, name: str | None = None, **settings: Any) -> SourceSpec:
    """A SOURCE argument (or a config file's camera ``url``, ``name`` its camera name; the
    default name is ``text`` with its credentials masked); ``settings`` are the per-camera
    fields of :class:`SourceSpec`. A local file that is not there or not readable media is
    refused at once (``InvalidInput``), a URL is tried (and retried) when watching starts."""
    shown = name if name is not None else redact_url(text)
    if text == "-":
        return SourceSpec(name or "-", "pipe:0", "stdin", **settings)
    scheme = text.split("://", 1)[0].lower() if "://" in text else ""
    if scheme in NETWORK_SCHEMES:
        # FFmpeg's default probe waits for 20 frames to guess a frame rate (about 1 s);
        # timestamps come from packets anyway (measured: open 0.1 s instead of 0.9 s).
        # fflags=nobuffer is not used: it loses the packets read while probing.
        options = {"fpsprobesize": "0"}
        if scheme in ("rtsp", "rtsps"):
            options["rtsp_transport"] = "tcp"
        return SourceSpec(shown, text, "stream", options=options, **settings)
    if scheme:
        raise InvalidInput(f"{redact_url(text)}: unknown source scheme {scheme!r}; a SOURCE is a URL "
                           f"({', '.join(NETWORK_SCHEMES)}), /dev/videoN, - or a file")
    if text.startswith("/dev/video"):
        return SourceSpec(shown, text, "device", format="v4l2", **settings)
    try:
        fifo = stat.S_ISFIFO(os.stat(text).st_mode)
    except OSError:
        fifo = False
    if fifo:   # a named pipe: read as standard input is read (``watch -``), never opened here (it would block)
        return SourceSpec(shown, text, "fifo", **settings)
    problem = not_a_media_file(Path(text))
    if problem is not None:
        raise InvalidInput(problem if name is None else f"camera {name}: {problem}")
    return SourceSpec(shown, text, "file", realtime=realtime, **settings)


class PipeInput:
    """Standard input (or any binary stream) read on a thread of its own, so that a writer
    that stops is seen: once bytes have come, after ``stall_timeout`` seconds without more ``on_stall()`` is
    called once, and ``on_resume(gap_s)`` when bytes come again (``gap_s``: between the
    arrival of the last bytes before the stall and the first after it). ``read`` is what
    PyAV calls; it returns b"" (end of stream) at EOF or once ``stop`` is set."""

    def __init__(self, stream: BinaryIO, stall_timeout: float, stop: threading.Event,
                 on_stall: Callable[[], None], on_resume: Callable[[float], None]) -> None:
        self._chunks: queue.Queue[tuple[bytes, float]] = queue.Queue(maxsize=64)
        self._buffer = b""
        self._stream, self._stop = stream, stop
        self._stall_timeout, self._on_stall, self._on_resume = stall_timeout, on_stall, on_resume
        self._eof = False
        self._stalled = False
        self._started = False                 # no bytes yet
        self._last_arrival = time.monotonic()
        self._thread = threading.Thread(target=self._pump, name="stdin-reader", daemon=True)
        self._thread.start()

    def _pump(self) -> None:
        fd = self._stream.fileno() if hasattr(self._stream, "fileno") else None
        while True:
            try:
                data = os.read(fd, 65536) if fd is not None else self._stream.read(65536)
            except (OSError, ValueError):
                data = b""
            arrived = time.monotonic()  # when the bytes came, not when the demuxer asked for them
            while True:  # never drop bytes of a stream: wait for room (bounded memory)
                try:
                    self._chunks.put((data, arrived), timeout=0.5)
                    break
                except queue.Full:
                    if self._stop.is_set():
                        return
            if not data:
                return

    def read(self, n: int) -> bytes:
        while not self._buffer and not self._eof:
            if self._stop.is_set():
                return b""
            try:
                data, arrived = self._chunks.get(timeout=0.2)
            except queue.Empty:
                # Before the first bytes the writer has not started: that is waiting, not a stall.
                if (self._started and not self._stalled
                        and time.monotonic() - self._last_arrival >= self._stall_timeout):
                    self._stalled = True
                    self._on_stall()
                continue
            if not data:
                self._eof = True
                break
            if self._stalled:
                self._stalled = False
                self._on_resume(arrived - self._last_arrival)
            self._last_arrival, self._started = arrived, True
            self._buffer = data
        out, self._buffer = self._buffer[:n], self._buffer[n:]
        return out


def _seconds(packet: av.Packet) -> float:
    """A packet's decode (else presentation) time, in seconds."""
    return float((packet.dts if packet.dts is not None else packet.pts) * packet.time_base)


def _timed(packets: Iterator[av.Packet]) -> Iterator[tuple[av.Packet, float]]:
    """Each packet with the seconds the demuxer took to return it (a network read's wait)."""
    it = iter(packets)
    while True:
        asked = time.monotonic()
        try:
            packet = next(it)
        except StopIteration:
            return
        yield packet, time.monotonic() - asked


AssemblerFactory = Callable[[int, float, bool, AudioTrack | None], Assembler]
"""(segment, base media time, has video, audio track or None) -> a new assembler."""


class SourceReader(threading.Thread):
    """Reads one source until it ends, ``duration`` seconds of media have passed, or
    ``stop`` is set; reports units to ``on_unit`` and status events to ``on_status``."""

    def __init__(self, spec: SourceSpec, make_assembler: AssemblerFactory, on_unit: Callable[[LiveUnit], None],
                 on_status: Callable[[StatusEvent], None], stop: threading.Event, *, stall_timeout: float = 5.0,
                 duration: float | None = None, grid_every: float = 0.0, stdin: BinaryIO | None = None,
                 open_timeout: float = 10.0, packets: PacketRing | None = None) -> None:
        super().__init__(name=f"source:{spec.name}", daemon=True)
        self.spec, self.make_assembler, self.on_unit, self.on_status = spec, make_assembler, on_unit, on_status
        self.stop_event, self.stall_timeout, self.duration = stop, stall_timeout, duration
        self.grid_every = grid_every       # new segments start on a multiple of this (units stay aligned)
        self.stdin = stdin if stdin is not None else sys.stdin.buffer
        self.open_timeout = open_timeout
        self.packets = packets             # the camera's clip buffer: every packet read is kept there too
        self.media_t = 0.0                 # media time reached (end of the newest frame/sample)
        self.corrupt_packets = 0
        # read by the metrics collector (live/metrics.py) from its own thread: plain ints, only ever increased
        self.video_packets = 0
        self.audio_packets = 0
        self.bytes_in = 0
        self.frames_in = 0                 # decoded video frames
        self.segments = 0
        self.error: str | None = None
        self._stalled_at: float | None = None
        self._silent_since: float | None = None   # wall time the last packet came (the gap's start)
        self._file_info: MediaInfo | None = None   # a file's probe: its clip start and duration
        self._fifo_waiting = False                 # a named pipe's open() waits for its writer

    def _said(self, exc: BaseException) -> str:
        """An exception's text as it may be shown: FFmpeg's messages repeat the URL, and
        with it the password (``live.redact``)."""
        return redact_text(str(exc).replace(self.spec.url, self.spec.name), url_secrets(self.spec.url))

    # -- status
    def _status(self, kind: str, **detail: Any) -> None:
        self.on_status(StatusEvent(kind, self.spec.name, time.time(), self.media_t, detail))

    def _stalled(self, silent_for: float | None = None) -> None:
        self._stalled_at = time.time()
        # a read waited that long for nothing (or silent_for: how long the last one waited)
        self._silent_since = self._stalled_at - (self.stall_timeout if silent_for is None else silent_for)
        self._status(STALLED, stall_timeout_s=self.stall_timeout, reconnecting=self.spec.reconnects)

    def _resumed(self, gap_s: float) -> None:
        self._stalled_at = None
        self._status(RECONNECTED, gap_s=round(gap_s, 3), reopened=False)

    # -- the loop
    def run(self) -> None:
        attempt, base = 0, 0.0
        try:
            while not self.stop_event.is_set():
                try:
                    container = self._open()
                except (av.FFmpegError, OSError, DecodeError) as exc:
                    if self.stop_event.is_set():   # a stop asked for (SIGTERM) while it waited: not a failure
                        logger.info("%s: stopped while opening (%s)", self.spec.name, self._said(exc))
                        break
                    if not self.spec.reconnects:
                        self.error = f"{self.spec.name}: cannot open ({self._said(exc)})"
                        logger.error("%s", self.error)
                        break
                    wait = BACKOFF_S[min(attempt, len(BACKOFF_S) - 1)]
                    logger.info("%s: cannot open (%s); retrying in %.1f s", self.spec.name, self._said(exc), wait)
                    attempt += 1
                    if self.stop_event.wait(wait):
                        break
                    continue
                attempt = 0
                if self.segments == 0:
                    self._status(STARTED, url=redact_url(self.spec.url) if self.spec.kind != "stream" else None)
                elif self._stalled_at is not None:
                    since = self._silent_since if self._silent_since is not None else self._stalled_at
                    gap = max(0.0, time.time() - since)
                    self._stalled_at = self._silent_since = None
                    self._status(RECONNECTED, gap_s=round(gap, 3), reopened=True)
                    base = self.media_t + gap
                try:
                    more = self._read(container, self._align(base))
                finally:
                    container.close()
                self.segments += 1
                if not more or not self.spec.reconnects:
                    break
                if self._stalled_at is None:  # the stream ended (a camera rebooting): reopen
                    self._stalled_at = self._silent_since = time.time()   # its last packet came just now
                    self._status(STALLED, stall_timeout_s=self.stall_timeout, reason="ended", reconnecting=True)
        except AvarError as exc:   # a known data error (a clock that jumps, no stream): the source's error, no traceback
            said = self._said(exc)
            self.error = f"{self.spec.name}: {said}" if self.spec.name not in said else said
            logger.error("%s", self.error)
        except Exception as exc:   # a bug: its traceback is logged, the source ends with the error, the rest go on
            self.error = f"{self.spec.name}: {type(exc).__name__}: {self._said(exc)}"
            logger.exception("%s: reading failed", self.spec.name)
        finally:
            self._status(ENDED, corrupt_packets=self.corrupt_packets, **({"error": self.error} if self.error else {}))

    def _align(self, base: float) -> float:
        if self.grid_every > 0 and base > 0:
            return math.ceil(base / self.grid_every - 1e-9) * self.grid_every
        return base

    def _open(self) -> av.container.InputContainer:
        if self.spec.kind in ("stdin", "fifo"):  # a pipe is read once: no second try in software
            return self._open_media(None)
        return open_with_fallback(self._open_media, self.spec.decoder, retry_in_software=self.spec.kind == "file")[0]

    def _open_media(self, hwaccel: Any) -> av.container.InputContainer:
        if self.spec.kind in ("stdin", "fifo"):
            stream = self.stdin if self.spec.kind == "stdin" else self._open_fifo()
            pipe = PipeInput(stream, self.stall_timeout, self.stop_event, self._stalled, self._resumed)
            return av.open(pipe, mode="r", format="mpegts" if self.spec.format is None else self.spec.format,
                           metadata_errors="ignore")
        if self.spec.kind == "file":
            return av.open(self.spec.url, mode="r", metadata_errors="ignore", hwaccel=hwaccel)
        return av.open(self.spec.url, mode="r", format=self.spec.format, options=dict(self.spec.options),
                       timeout=(self.open_timeout, self.stall_timeout), metadata_errors="ignore", hwaccel=hwaccel)

    def _open_fifo(self) -> BinaryIO:
        """The named pipe, opened for reading: this waits for its writer, and ``release()``
        ends the wait when the watch stops."""
        self._fifo_waiting = True
        try:
            return open(self.spec.url, "rb", buffering=0)  # noqa: SIM115 - PipeInput's thread reads it to its end
        finally:
            self._fifo_waiting = False

    def release(self) -> None:
        """Called once ``stop`` is set: a named pipe still waiting for its writer is opened
        for writing and closed at once, so that the wait ends (an EOF, read as the stop)."""
        if self.spec.kind != "fifo" or not self._fifo_waiting:
            return
        try:
            os.close(os.open(self.spec.url, os.O_WRONLY | os.O_NONBLOCK))
        except OSError:   # the writer came and went meanwhile: nothing waits
            pass

    def _origin(self, container: av.container.InputContainer) -> float | None:
        """Media time 0 of this connection, absolute seconds: for a file the probe's clip
        start (so that its steps are the offline extraction's), else the container's start
        time; None: the first packet's."""
        if self.spec.kind == "file":
            self._file_info = probe(self.spec.url)
            return self._file_info.start
        return None  # a stream joined mid-way: its first packet (the container's start_time may lie before it)

    def _read(self, container: av.container.InputContainer, base: float) -> bool:
        """One connection; returns whether the source may come back (reconnect)."""
        video, audio = choose_streams(container)
        if not self.spec.audio:   # the camera's ``audio: false``: not read, so the head sees it masked
            audio = None
        origin = self._origin(container)
        if video is not None and self._file_info is not None and not self._file_info.has_video:
            logger.info("%s: its video stream has no frames; scored as audio-only, as offline", self.spec.name)
            video = None
        if video is None and audio is None:
            raise DecodeError(f"{self.spec.name}: no audio or video stream")
        if video is not None:
            video.thread_type = "AUTO"
        if self.packets is not None:
            self.packets.connect(video, audio)
        decoder = AudioDecoder(SAMPLE_RATE) if audio is not None else None
        track: AudioTrack | None = None
        assembler: Assembler | None = None
        first_dts: float | None = None
        start_wall = time.monotonic()
        streams = [s for s in (video, audio) if s is not None]
        untimed = bool(set(container.format.name.split(",")) & UNTIMED_FORMATS) and self.spec.kind != "file"
        if untimed:
            logger.info("%s: %s has no timestamps; media time is arrival time", self.spec.name, container.format.name)
        arrival: float | None = None
        stall_wait: float | None = None         # set when this connection stalled: how long it waited
        held: list[av.Packet] = []              # audio before the first video packet (the clock waits for video)
        held_since = 0.0                        # monotonic time the first held packet came
        try:
            for packet, waited in _timed(container.demux(streams)):
                if self.stop_event.is_set():
                    return False
                wall = time.time()
                stamp = packet.dts if packet.dts is not None else packet.pts
                if untimed:
                    arrival = time.monotonic()
                    origin = arrival if origin is None else origin
                elif (origin is None and stamp is not None and packet.time_base is not None
                      and (video is None or packet.stream_index == video.index)):
                    # a stream's clock starts at its first video packet: audio the muxer held
                    # back over a pause arrives first after a reconnect, stamped before it
                    origin = float(stamp * packet.time_base)
                replay = [packet]
                if origin is None and video is not None and audio is not None and packet.stream_index == audio.index \
                        and stamp is not None and packet.time_base is not None:
                    held.append(packet)
                    held_since = held_since if len(held) > 1 else time.monotonic()
                    span = float(stamp * packet.time_base) - _seconds(held[0])
                    if span < HELD_AUDIO_MAX_S and (span < VIDEO_WAIT_S
                                                    or time.monotonic() - held_since < VIDEO_WAIT_S):
                        continue  # video may still come: its first packet starts the clock
                    video, origin, replay, held = None, _seconds(held[0]), held, []
                    self._audio_only(span)
                if assembler is None:
                    if origin is None:
                        continue  # nothing is timed yet
                    assembler, track = self._assembler(decoder, origin, base, video is not None)
                if self.spec.realtime and stamp is not None and packet.time_base is not None:
                    at = float(stamp * packet.time_base)
                    first_dts = at if first_dts is None else first_dts
                    delay = start_wall + (at - first_dts) - time.monotonic()
                    if delay > 0 and self.stop_event.wait(delay):
                        return False
                    wall = time.time()
                for item in replay:
                    if self.packets is not None:
                        self.packets.push(item, origin - base, video is not None, arrival)
                    for unit in self._decode(item, video, audio, decoder, assembler, origin - base, wall, arrival):
                        self.on_unit(unit)
                if self.duration is not None and self.media_t >= self.duration:
                    return False
                if waited >= self.stall_timeout and self.spec.reconnects:
                    # PyAV's read timeout fired inside this read, and FFmpeg returned what its
                    # parsers held instead of the error (RTSP does): the stream stalled, and
                    # the next read would wait a second timeout before saying so.
                    stall_wait = waited
                    break
        except av.FFmpegError as exc:
            if self.stop_event.is_set():
                return False
            if isinstance(exc, av.ExitError) or "Immediate exit" in str(exc) or "timed out" in str(exc).lower():
                stall_wait = self.stall_timeout   # the read waited longer than stall_timeout
            else:
                logger.warning("%s: read failed (%s); %s", self.spec.name, self._said(exc),
                               "reopening" if self.spec.reconnects else "stopping")
            read_to_end = False
        else:
            read_to_end = True
        if assembler is None and held and origin is None:   # it ended before any video: audio-only (VIDEO_WAIT_S)
            origin = _seconds(held[0])
            self._audio_only(_seconds(held[-1]) - origin)
            assembler, track = self._assembler(decoder, origin, base, False)
            for item in held:
                if self.packets is not None:
                    self.packets.push(item, origin - base, False)
                for unit in self._decode(item, None, audio, decoder, assembler, origin - base, time.time(), arrival):
                    self.on_unit(unit)
        if assembler is not None:
            if read_to_end and decoder is not None:   # the decoder's and resampler's last samples
                decoder.finish()
                for unit in assembler.audio_advanced(time.time()):
                    self.on_unit(unit)
            for unit in assembler.finish(time.time(), self._file_frames() if read_to_end else None):
                self.on_unit(unit)
        if stall_wait is not None:                    # after the connection's last units are queued
            self._stalled(silent_for=stall_wait)
        return self.spec.reconnects

    def _assembler(self, decoder: AudioDecoder | None, origin: float, base: float,
                   has_video: bool) -> tuple[Assembler, AudioTrack | None]:
        """A connection's assembler (and audio track), media time 0 at ``origin``."""
        track = AudioTrack(decoder, origin - base, origin - base) if decoder is not None else None
        assembler = self.make_assembler(self.segments, base, has_video, track)
        if self._file_info is not None:   # a file: its last step is cut at its end
            assembler.file_end = self._file_info.duration
        return assembler, track

    def _audio_only(self, span: float) -> None:
        logger.warning("%s: declares a video stream but sent only audio (%.1f s of it); scored as audio-only, as "
                       "offline scores such a file", self.spec.name, span)

    def _file_frames(self) -> Callable[[np.ndarray], FrameGroup] | None:
        """For a file read to its end, the offline engine's frame reader, so that its last,
        partial step is the one offline extraction gives; None for a stream."""
        info = self._file_info
        if info is None or (self.duration is not None and info.duration > self.duration):
            return None                # a stream, or --duration stops the file before its end
        return lambda targets: MediaReader(self.spec.url, info=info, decoder=self.spec.decoder).frames_at(targets)

    def _decode(self, packet: av.Packet, video: Any, audio: Any, decoder: AudioDecoder | None, assembler: Assembler,
                origin: float, wall: float, arrival: float | None = None) -> list[LiveUnit]:
        """The units a packet completes; a frame's media time is its timestamp, or its
        packet's ``arrival`` (monotonic seconds) for a container without timestamps."""
        units: list[LiveUnit] = []
        self.bytes_in += packet.size
        if video is not None and packet.stream_index == video.index:
            self.video_packets += 1
            try:
                frames = packet.decode()
            except (av.FFmpegError, ValueError):
                self.corrupt_packets += 1
                return units
            self.frames_in += len(frames)
            for frame in frames:
                if frame.pts is None:
                    continue
                t = (arrival if arrival is not None else float(frame.pts * frame.time_base)) - origin
                if self.duration is not None and t >= self.duration:
                    self.media_t = max(self.media_t, t)   # the loop sees the end of --duration
                    break
                units += assembler.add_frame(t, frame, wall)
                self.media_t = max(self.media_t, t)
        elif decoder is not None and audio is not None and packet.stream_index == audio.index:
            self.audio_packets += 1
            failed = decoder.failed
            decoder.feed(packet)
            self.corrupt_packets += decoder.failed - failed
            units += assembler.audio_advanced(wall)
            if assembler.audio is not None and not assembler.has_video:
                self.media_t = max(self.media_t, assembler.audio.decoded_end / SAMPLE_RATE)
        return units
