"""A live camera, generated: an MPEG-TS stream written in real time, with an anomalous
event (and, on request, a stall and a resolution change) at known media times.

Live mode (``cli.py watch``) reads cameras and network streams; its tests, demos and
benchmarks need a source that behaves like one: packets that arrive as the media clock
advances (not as fast as a file can be read), keyframes often enough that a reader
joining mid-stream starts within a second, and a known answer. This module renders the
XD-Violence stand-in's scene (``synth.xd_standin``: a calm drifting gradient with a
moving square, a hum with hiss; a violent event is full-frame strobing in its class's
colour with loud noise bursts in its class's band) and muxes it with PyAV:

* video: libx264, preset ultrafast, tune zerolatency (no B-frames, no lookahead: a
  frame's packet leaves as soon as the frame is made), a keyframe every ``keyframe_s``
  (scene cuts add none, so the interval is exact);
* audio: AAC at 48 or 44.1 kHz, mono or stereo, in AAC frames of 1024 samples;
* interleaved in time order and written packet by packet (``mux_one`` and the muxer's
  ``flush_packets``; audio PES are not held back to fill 2.9 KB), so a packet reaches the
  reader when its frame is made.

Targets (:func:`write_stream`): a binary file object (a pipe, a subprocess's stdin),
``"-"`` (standard output), an existing FIFO path, ``udp://127.0.0.1:PORT`` (loopback
only; datagrams of at most 1316 bytes = 7 whole TS packets), or a file path (written to a
temporary name and renamed; usually with ``realtime=False``, as a test file for parity
checks). With ``realtime=True`` each frame is sent when the wall clock reaches its media
time (from the first frame), as a camera's would be.

**Media time** 0 is the first video frame; a frame ``k`` has media time ``k / fps``. With
audio, the stream's first packet is the AAC encoder's priming frame, 1024 samples (21 ms
at 48 kHz) earlier, so the project's clip time (``extract.probe``: 0 at the earliest
stream start) is media time + ``truth["clip_time_offset"]``.

**A pause** (``StreamPause(at_s, seconds)``) stops sending for ``seconds`` of wall time at
media time ``at_s``: the reader sees a stall. How the stream resumes (``resume``):

* ``"clock"`` (default): as a camera that kept its clock while the link was down. The
  media in ``[at_s, at_s + seconds)`` is never sent (its frames and audio are lost) and
  timestamps jump by the pause; media time keeps matching the wall clock, and the stream
  ends at ``seconds`` of media, as without the pause.
* ``"hold"``: as a source that stopped and carried on where it was. Nothing is lost, the
  timestamps continue without a gap, and from then on media time lags the wall clock by
  the pause (the stream takes ``seconds + pause`` of wall time).

**A resolution change** (``StreamResize(at_s, (w, h))``): from media time ``at_s`` the
same scene is scaled to the new size and encoded by a new encoder whose first frame is
a keyframe with its own SPS, in the same TS stream (FFmpeg's decoders follow it).

**Ground truth** (:func:`stream_truth`, written with ``truth_path``): the event's
frame-aligned times, the pause and the resize, in media seconds. Streaming stops cleanly,
without a traceback, at the plan's end, on SIGTERM/SIGINT (when called from the main
thread), when ``stop`` is set, and when the reader goes away (a broken pipe).
"""

from __future__ import annotations

import io
import ipaddress
import logging
import os
import signal
import stat
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from fractions import Fraction
from pathlib import Path
from typing import IO, Any
from urllib.parse import urlsplit

import av
import numpy as np

from cache_schema import InvalidInput, replace_atomically, write_json
from synth.xd_standin import (FPS, HUM_HZ, VIOLENT_CODES, StandinConfig, StandinVideo, calm_audio, event_audio,
                              render_frames)

logger = logging.getLogger(__name__)

TRUTH_FORMAT = "avar-live-stream"
RESUME_MODES = ("clock", "hold")
SAMPLE_RATES = (48000, 44100)
AAC_FRAME = 1024                 # samples per AAC frame: audio is made and sent in these
UDP_PACKET = 1316                # 7 TS packets of 188 bytes: whole TS packets per datagram
_CRF = "23"
_AUDIO_BITRATE = 64_000          # per channel
# Ended states of a stream (StreamResult.ended).
COMPLETE, SIGNALLED, STOPPED, READER_GONE = "complete", "signal", "stopped", "reader gone"


@dataclass(frozen=True)
class StreamEvent:
    """A violent event from ``start_s`` to ``end_s`` (media seconds, rounded to frames) in
    the style of class ``code`` (``"B1"`` fighting, ``"B2"`` shooting, ...; XD-Violence's
    codes, ``synth.xd_standin.VIOLENT_CODES``)."""

    start_s: float
    end_s: float
    code: str = "B1"


@dataclass(frozen=True)
class StreamPause:
    """Send nothing for ``seconds`` of wall time at media time ``at_s``."""

    at_s: float
    seconds: float


@dataclass(frozen=True)
class StreamResize:
    """From media time ``at_s``, send frames of ``size`` (width, height)."""

    at_s: float
    size: tuple[int, int]


@dataclass(frozen=True)
class StreamPlan:
    """What the stream holds. ``seconds`` of media at ``fps`` (the renderer's 24); the
    content is drawn from ``seed``; ``audio`` off writes a video-only stream."""

    seconds: float = 20.0
    seed: int = 0
    event: StreamEvent | None = None
    audio: bool = True
    size: tuple[int, int] = (320, 240)
    fps: int = FPS
    sample_rate: int = 48000
    channels: int = 1
    pause: StreamPause | None = None
    resume: str = "clock"
    resize: StreamResize | None = None
    keyframe_s: float = 1.0

    def __post_init__(self) -> None:
        if not self.seconds > 0:
            raise InvalidInput(f"stream seconds {self.seconds}: give a positive length")
        if self.fps != FPS:
            raise InvalidInput(f"stream fps {self.fps}: the stand-in's scene is rendered at {FPS} fps")
        _check_size(self.size, "stream size")
        if self.sample_rate not in SAMPLE_RATES:
            raise InvalidInput(f"stream sample rate {self.sample_rate}: give one of {SAMPLE_RATES}")
        if self.channels not in (1, 2):
            raise InvalidInput(f"stream channels {self.channels}: give 1 (mono) or 2 (stereo)")
        if self.resume not in RESUME_MODES:
            raise InvalidInput(f"stream resume {self.resume!r}: give one of {RESUME_MODES}")
        if not 0 < self.keyframe_s <= 10:
            raise InvalidInput(f"stream keyframe interval {self.keyframe_s}: give 0 < seconds <= 10")
        if self.event is not None:
            ev = self.event
            if ev.code not in VIOLENT_CODES:
                raise InvalidInput(f"stream event class {ev.code!r}: give one of {', '.join(VIOLENT_CODES)}")
            a, b = self.frame(ev.start_s), self.frame(ev.end_s)
            if not (0 <= a < b <= self.n_frames):
                raise InvalidInput(f"stream event {ev.start_s:g}-{ev.end_s:g} s: it must lie inside the "
                                   f"{self.seconds:g} s stream and last at least one frame")
        if self.pause is not None:
            p = self.pause
            if not (0 < self.frame(p.at_s) < self.n_frames) or not p.seconds > 0:
                raise InvalidInput(f"stream pause at {p.at_s:g} s for {p.seconds:g} s: it must start inside "
                                   f"the {self.seconds:g} s stream (after its first frame) and last > 0 s")
        if self.resize is not None:
            _check_size(self.resize.size, "stream resize size")
            if not 0 < self.frame(self.resize.at_s) < self.n_frames:
                raise InvalidInput(f"stream resize at {self.resize.at_s:g} s: it must lie inside the stream")

    @property
    def n_frames(self) -> int:
        return max(int(round(self.seconds * self.fps)), 1)

    def frame(self, t: float) -> int:
        """The frame index at media time ``t`` (times are rounded to frames)."""
        return int(round(t * self.fps))

    @property
    def gop(self) -> int:
        return max(int(round(self.keyframe_s * self.fps)), 1)

    def dropped_frames(self) -> range:
        """The frames a ``"clock"`` pause never sends (empty otherwise)."""
        if self.pause is None or self.resume != "clock":
            return range(0)
        return range(self.frame(self.pause.at_s), min(self.frame(self.pause.at_s + self.pause.seconds), self.n_frames))


def _check_size(size: tuple[int, int], what: str) -> None:
    w, h = size
    if not (16 <= w <= 4096 and 16 <= h <= 4096) or w % 2 or h % 2:
        raise InvalidInput(f"{what} {w}x{h}: give even sizes from 16 to 4096 (H.264 in 4:2:0)")


def parse_size(text: str, what: str = "--size") -> tuple[int, int]:
    """``"320x240"`` -> ``(320, 240)`` (the CLI's form of a size)."""
    try:
        w, h = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise InvalidInput(f"{what} {text!r}: give WIDTHxHEIGHT, e.g. 320x240") from None
    _check_size((w, h), what)
    return w, h


def stream_truth(plan: StreamPlan) -> dict[str, Any]:
    """The plan's answer in media seconds (frame-aligned), for tests and benchmarks:
    where the event is, which media a pause loses, where the resolution changes."""
    fps = plan.fps
    events = []
    if plan.event is not None:
        a, b = plan.frame(plan.event.start_s), plan.frame(plan.event.end_s)
        events.append({"code": plan.event.code, "start": a / fps, "end": b / fps, "start_frame": a, "end_frame": b})
    pause = None
    if plan.pause is not None:
        at = plan.frame(plan.pause.at_s) / fps
        lost = plan.dropped_frames()
        pause = {"at": at, "wall_seconds": plan.pause.seconds, "resume": plan.resume,
                 # the media a clock pause never sends, [start, end); none for hold
                 "lost": [lost.start / fps, lost.stop / fps] if len(lost) else None}
    resize = None
    if plan.resize is not None:
        resize = {"at": plan.frame(plan.resize.at_s) / fps, "size": list(plan.resize.size)}
    return {"format": TRUTH_FORMAT, "version": 1, "plan": asdict(plan), "fps": fps,
            "seconds": plan.n_frames / fps, "frames": plan.n_frames, "keyframe_interval": plan.gop,
            "audio": plan.audio,
            # media time + this = the project's clip time (extract.probe: 0 at the earliest
            # stream start): the AAC encoder's priming frame starts before the first frame
            "clip_time_offset": AAC_FRAME / plan.sample_rate if plan.audio else 0.0,
            "events": events, "pause": pause, "resize": resize}


@dataclass(frozen=True)
class StreamResult:
    """How a stream went. ``ended``: ``"complete"``, ``"signal"`` (SIGTERM/SIGINT),
    ``"stopped"`` (the caller's ``stop`` event) or ``"reader gone"`` (a broken pipe).
    ``last_media_s``: the media time of the last frame sent; ``max_lag_s``: how far
    behind its wall-clock time a frame was sent at worst (real time only)."""

    truth: dict[str, Any]
    ended: str
    frames_sent: int
    audio_frames_sent: int
    last_media_s: float
    wall_seconds: float
    max_lag_s: float


# -- content ------------------------------------------------------------------------------
def _scene(plan: StreamPlan) -> tuple[StandinVideo, StandinConfig]:
    segments, codes = (), ()
    if plan.event is not None:
        segments = ((plan.frame(plan.event.start_s), plan.frame(plan.event.end_s)),)
        codes = (plan.event.code,)
    video = StandinVideo(name="live", split="live", codes=codes or ("A",), segments=segments,
                         n_frames=plan.n_frames, file="", segment_codes=codes)
    return video, StandinConfig(size=plan.size, sample_rate=plan.sample_rate, seed=plan.seed)


class _AudioSource:
    """The scene's sound in AAC frames, made as the stream reaches them (memory does not
    grow with the stream's length): the calm hum and hiss block by block, the event's
    bursts rendered once (a few seconds) and cut into the blocks they overlap."""

    def __init__(self, plan: StreamPlan) -> None:
        self.sr = plan.sample_rate
        self.channels = plan.channels
        self.rng = np.random.default_rng((plan.seed, 2, 1))
        self.hum = float(self.rng.uniform(*HUM_HZ))
        self.event_rng = np.random.default_rng((plan.seed, 2, 2))
        self.event: tuple[int, np.ndarray] | None = None
        self.event_span: tuple[int, int, str] | None = None
        if plan.event is not None:
            a, b = plan.frame(plan.event.start_s), plan.frame(plan.event.end_s)
            self.event_span = (int(round(a / plan.fps * self.sr)), int(round(b / plan.fps * self.sr)), plan.event.code)

    def block(self, start: int) -> np.ndarray:
        """Samples ``[start, start + AAC_FRAME)``: float32 ``[channels, AAC_FRAME]``."""
        idx = np.arange(start, start + AAC_FRAME)
        x = calm_audio(idx / self.sr, self.hum, self.rng)
        if self.event_span is not None:
            i0, i1, code = self.event_span
            lo, hi = max(start, i0), min(start + AAC_FRAME, i1)
            if lo < hi:
                if self.event is None:
                    self.event = (i0, event_audio(code, i1 - i0, self.sr, self.event_rng))
                x[lo - start:hi - start] = self.event[1][lo - i0:hi - i0]
        x = np.clip(x, -1, 1).astype(np.float32)
        return np.ascontiguousarray(np.repeat(x[None], self.channels, axis=0))


# -- targets ------------------------------------------------------------------------------
class _FlushingWriter(io.RawIOBase):
    """A file object that passes every write straight through (flushed), so a buffered
    pipe does not hold a live packet back until 8 KB have gathered."""

    def __init__(self, raw: IO[bytes]) -> None:
        super().__init__()
        self.raw = raw

    def writable(self) -> bool:
        return True

    def write(self, b) -> int:
        data = memoryview(b).cast("B")
        while data:                       # an unbuffered file object may take part of it
            n = self.raw.write(data)
            data = data[n if n is not None else 0:]
        self.raw.flush()
        return len(b)


def udp_url(target: str) -> str:
    """``udp://127.0.0.1:PORT`` -> the URL FFmpeg writes to (datagrams of whole TS
    packets); ``InvalidInput`` for another host, no port or extra options: the generated
    stream is for this machine only."""
    parts = urlsplit(target)
    try:
        port = parts.port
        host_ok = parts.hostname == "localhost" or ipaddress.ip_address(parts.hostname or "").is_loopback
    except ValueError:
        port, host_ok = None, False
    if not host_ok or not port or parts.path not in ("", "/") or parts.query or parts.fragment:
        raise InvalidInput(f"{target}: give udp://127.0.0.1:PORT (loopback only; the stream is for this machine)")
    host = f"[{parts.hostname}]" if ":" in (parts.hostname or "") else parts.hostname
    return f"udp://{host}:{port}?pkt_size={UDP_PACKET}"


def _is_fifo(path: str) -> bool:
    try:
        return stat.S_ISFIFO(os.stat(path).st_mode)
    except OSError:
        return False


# -- writing ------------------------------------------------------------------------------
def _x264_options(plan: StreamPlan) -> dict[str, str]:
    g = plan.gop
    return {"preset": "ultrafast", "tune": "zerolatency", "crf": _CRF,
            "x264-params": f"keyint={g}:min-keyint={g}:scenecut=0:bframes=0"}


def _video_encoder(plan: StreamPlan, size: tuple[int, int]) -> av.CodecContext:
    """A standalone encoder for a resized part of the stream (its packets go into the
    stream's one video track)."""
    cc = av.CodecContext.create("libx264", "w")
    cc.width, cc.height, cc.pix_fmt = size[0], size[1], "yuv420p"
    cc.time_base = Fraction(1, plan.fps)
    cc.framerate = Fraction(plan.fps)
    cc.gop_size = plan.gop
    cc.thread_count = 1
    cc.options = _x264_options(plan)
    cc.open()
    return cc


class _Writer:
    """One stream's muxing and pacing; :func:`write_stream` owns its lifetime."""

    def __init__(self, out: av.container.OutputContainer, plan: StreamPlan, realtime: bool,
                 stop: threading.Event, signals: _Signals) -> None:
        self.out, self.plan, self.realtime, self.stop, self.signals = out, plan, realtime, stop, signals
        vs = out.add_stream("libx264", rate=plan.fps, options=_x264_options(plan))
        vs.width, vs.height, vs.pix_fmt = plan.size[0], plan.size[1], "yuv420p"
        vs.codec_context.gop_size = plan.gop
        vs.codec_context.thread_count = 1
        self.vs = vs
        self.encoder: Any = vs                       # what encodes now (the stream, or a resize's encoder)
        self.ast = None
        if plan.audio:
            ast = out.add_stream("aac", rate=plan.sample_rate, options={"aac_coder": "fast"})
            ast.layout = "mono" if plan.channels == 1 else "stereo"
            ast.codec_context.bit_rate = _AUDIO_BITRATE * plan.channels
            ast.codec_context.thread_count = 1
            self.ast = ast
        self.frames_sent = self.audio_frames_sent = 0
        self.lost = (0.0, 0.0)                       # media seconds a clock pause never sends
        self.last_media_s = 0.0
        self.max_lag = 0.0
        self.wall0 = 0.0

    def _mux(self, packets) -> None:
        for pkt in packets:
            if pkt.stream is not self.vs and pkt.stream is not self.ast:
                pkt.stream = self.vs                  # a resize's standalone encoder
            self.out.mux_one(pkt)

    def _stopping(self) -> bool:
        return self.stop.is_set() or self.signals.fired

    def _wait_until(self, media_s: float, offset: float) -> bool:
        """Sleep until wall time ``wall0 + media_s + offset``; False when told to stop.
        Sleeps in short slices: a signal handler only sets a flag (setting an Event
        from a handler can deadlock on the Event's own lock)."""
        if self.realtime:
            delay = self.wall0 + media_s + offset - time.monotonic()
            self.max_lag = max(self.max_lag, -delay)
            while delay > 0 and not self._stopping():
                self.stop.wait(min(delay, 0.05))
                delay = self.wall0 + media_s + offset - time.monotonic()
        return not self._stopping()

    def _send_audio(self, audio: _AudioSource, until: float, lost: tuple[float, float]) -> None:
        """Encode the AAC frames that start before media time ``until`` and send their
        packets, except those whose time is ``lost`` to a pause. The encoder sees the
        whole track (no discontinuity to encode), and the packet of the last frame
        before a pause is encoded before it (AAC gives a frame's packet one frame later).
        The muxer's interleaving may still hold the last audio packets over the pause and
        send them first when it ends, stamped before it, as real muxers do (live mode
        starts a reopened stream's clock at its first video packet for that reason)."""
        sr = self.plan.sample_rate
        while self.next_sample / sr < until:
            start, self.next_sample = self.next_sample, self.next_sample + AAC_FRAME
            af = av.AudioFrame.from_ndarray(audio.block(start), format="fltp", layout=self.ast.layout.name)
            af.sample_rate, af.pts, af.time_base = sr, start, Fraction(1, sr)
            self._mux(self._audio_packets(self.ast.encode(af), lost))

    def _audio_packets(self, packets, lost: tuple[float, float]) -> list:
        kept = [p for p in packets if p.pts is None or not lost[0] <= float(p.pts * p.time_base) < lost[1]]
        self.audio_frames_sent += len(kept)
        return kept

    def run(self) -> bool:
        """Send the plan's frames; True when all were sent."""
        plan = self.plan
        fps = plan.fps
        video, cfg = _scene(plan)
        frames: Iterator[np.ndarray] = render_frames(video, cfg, np.random.default_rng((plan.seed, 2, 0)))
        audio = _AudioSource(plan) if self.ast is not None else None
        dropped = plan.dropped_frames()
        self.lost = (dropped.start / fps, dropped.stop / fps) if len(dropped) else (0.0, 0.0)
        pause_frame = plan.frame(plan.pause.at_s) if plan.pause is not None else None
        resize_frame = plan.frame(plan.resize.at_s) if plan.resize is not None else None
        end = plan.n_frames / fps
        self.next_sample = 0
        offset = 0.0                                   # wall seconds a "hold" pause added
        self.wall0 = time.monotonic()
        for k, img in enumerate(frames):
            t = k / fps
            if k == pause_frame and plan.resume == "hold":
                offset += plan.pause.seconds
            if not self._wait_until(t, offset):
                return False
            if k == resize_frame:
                self._mux(self.encoder.encode(None))
                self.encoder = _video_encoder(plan, plan.resize.size)
            if audio is not None:
                # The audio up to the next frame (and the AAC encoder's one frame of delay)
                # goes first: the muxer interleaves by timestamp and sends this frame only
                # once every stream has reached its time.
                self._send_audio(audio, min(t + 1 / fps + AAC_FRAME / plan.sample_rate, end), self.lost)
            if k in dropped:
                continue
            vf = av.VideoFrame.from_ndarray(img, format="rgb24")
            if self.encoder is not self.vs:
                vf = vf.reformat(width=plan.resize.size[0], height=plan.resize.size[1], format="yuv420p")
            vf.pts, vf.time_base = k, Fraction(1, fps)
            self._mux(self.encoder.encode(vf))
            self.frames_sent += 1
            self.last_media_s = t
        return True

    def flush(self) -> None:
        self._mux(self.encoder.encode(None))
        if self.ast is not None:
            self._mux(self._audio_packets(self.ast.encode(None), self.lost))


def _is_reader_gone(exc: BaseException) -> bool:
    if isinstance(exc, (BrokenPipeError, ConnectionResetError)):
        return True
    return isinstance(exc, av.FFmpegError) and getattr(exc, "errno", None) in (32, 104)  # EPIPE, ECONNRESET


class _Signals:
    """SIGTERM and SIGINT end the stream (main thread only: elsewhere Python cannot
    install handlers, and the caller's ``stop`` event is the way to end it)."""

    def __init__(self) -> None:
        self.fired, self.saved = False, {}

    def __enter__(self) -> _Signals:
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGTERM, signal.SIGINT):
                self.saved[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum, frame) -> None:
        self.fired = True

    def __exit__(self, *exc) -> None:
        for sig, handler in self.saved.items():
            signal.signal(sig, handler)


def _open(target: str | os.PathLike | IO[bytes]) -> tuple[str, Any]:
    """(kind, what av.open writes to): ``pipe`` (a file object; ``"-"`` is standard
    output), ``fifo`` (its path, opened for writing: that waits for a reader), ``udp``
    (its URL) or ``file`` (a path, written through a temporary name)."""
    if not isinstance(target, (str, os.PathLike)):
        if not hasattr(target, "write"):
            raise InvalidInput(f"stream target {target!r}: give a binary file object, '-', "
                               "udp://127.0.0.1:PORT or a path")
        return "pipe", target
    text = os.fspath(target)
    if text == "-":
        if sys.stdout.isatty():
            raise InvalidInput("--out -: standard output is a terminal; pipe it into a reader (| ffplay -) "
                               "or give udp://127.0.0.1:PORT or a file")
        return "pipe", sys.stdout.buffer
    if "://" in text:
        if not text.startswith("udp://"):
            raise InvalidInput(f"{text}: streams go to udp://127.0.0.1:PORT, '-' (standard output) or a file")
        return "udp", udp_url(text)
    if _is_fifo(text):
        return "fifo", text
    if Path(text).is_dir():
        raise InvalidInput(f"{text} is a folder; give a file name for the stream (e.g. {text}/stream.ts)")
    return "file", text


def write_stream(target: str | os.PathLike | IO[bytes], plan: StreamPlan = StreamPlan(), realtime: bool | None = True,
                 *, truth_path: str | os.PathLike | None = None, stop: threading.Event | None = None) -> StreamResult:
    """Write ``plan`` as MPEG-TS to ``target`` (see the module doc) and return how it went.

    ``realtime=None``: in real time for a stream (a file object, ``"-"``, a FIFO, udp),
    as fast as possible for a file. ``truth_path``: write :func:`stream_truth` there
    (JSON, atomically) before the first packet, so a reader can read the answer while
    the stream runs. ``stop``: an event
    that ends the stream early (as SIGTERM does from the main thread). A reader that goes
    away ends it too (``ended == "reader gone"``), as a camera keeps no client. A file
    object is not closed (its owner closes it); standard output, once its reader is gone,
    is pointed at /dev/null so that Python's exit does not fail flushing it.
    """
    kind, where = _open(target)
    realtime = kind != "file" if realtime is None else bool(realtime)
    truth = stream_truth(plan)
    if truth_path is not None:
        write_json(truth_path, truth)
    stop = stop if stop is not None else threading.Event()
    began = time.monotonic()
    state = {"ended": COMPLETE, "writer": None}

    def stream_into(dest: Any) -> None:
        out = av.open(dest, "w", format="mpegts",
                      container_options={"flush_packets": "1", "pes_payload_size": "0", "omit_video_pes_length": "0"})
        gone = False
        try:
            with _Signals() as signals:
                writer = state["writer"] = _Writer(out, plan, realtime, stop, signals)
                try:
                    done = writer.run()
                    writer.flush()
                except Exception as exc:
                    if not _is_reader_gone(exc):
                        raise
                    gone, done = True, False
            if not done:
                state["ended"] = READER_GONE if gone else SIGNALLED if signals.fired else STOPPED
        finally:
            try:
                out.close()
            except Exception as exc:               # the trailer after a reader left
                if not (gone or _is_reader_gone(exc)):
                    raise
                gone = True
            if gone:
                state["ended"] = READER_GONE

    if kind == "file":
        def into_file(tmp: Path) -> None:
            stream_into(str(tmp))
            if state["ended"] != COMPLETE:
                raise _Incomplete
        try:
            replace_atomically(where, into_file)
        except _Incomplete:                              # a stream cut short is not put in place
            logger.warning("%s: the stream ended early (%s); the file was not written", where, state["ended"])
    elif kind == "fifo":
        with open(where, "wb", buffering=0) as fifo:      # blocks until a reader opens it
            stream_into(_FlushingWriter(fifo))
    elif kind == "pipe":
        stream_into(_FlushingWriter(where))
        if state["ended"] == READER_GONE and where is sys.stdout.buffer:
            _silence_stdout()
    else:
        stream_into(where)
    writer: _Writer | None = state["writer"]
    result = StreamResult(truth=truth, ended=state["ended"], frames_sent=writer.frames_sent if writer else 0,
                          audio_frames_sent=writer.audio_frames_sent if writer else 0,
                          last_media_s=writer.last_media_s if writer else 0.0,
                          wall_seconds=time.monotonic() - began, max_lag_s=writer.max_lag if writer else 0.0)
    logger.info("stream to %s %s: %d frames, %d audio frames, %.2f s of media in %.2f s", kind, result.ended,
                result.frames_sent, result.audio_frames_sent, result.last_media_s, result.wall_seconds)
    return result


class _Incomplete(Exception):
    """A file stream that was stopped: its temporary is removed, not renamed."""


def _silence_stdout() -> None:
    """Point file descriptor 1 at /dev/null: Python flushes ``sys.stdout`` at exit, and a
    broken pipe there would print "Exception ignored ... BrokenPipeError"."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, sys.stdout.fileno())
    finally:
        os.close(devnull)


__all__ = [
    "AAC_FRAME", "COMPLETE", "READER_GONE", "RESUME_MODES", "SAMPLE_RATES", "SIGNALLED", "STOPPED", "TRUTH_FORMAT",
    "UDP_PACKET", "StreamEvent", "StreamPause", "StreamPlan", "StreamResize", "StreamResult", "parse_size",
    "stream_truth", "udp_url", "write_stream",
]
