"""A camera on loopback TCP that runs for as long as it is asked: a short encoded clip's
packets sent again and again, timestamps continuing, in real time.

Long runs of live mode (``cli.py bench soak``, its short test) need sources that behave
like cameras for tens of minutes without rendering and encoding tens of minutes of media:
this reads the clip's packets once (H.264 and AAC, as ``synth.live_stream`` writes them
into a file) and remuxes them, without re-encoding, into one MPEG-TS feed whose
timestamps go on across every loop (loop ``k`` is the clip shifted by ``k`` times its
length; an audio packet that would not advance its track is left out at the seam). The
clip starts with a keyframe, so each loop decodes on its own, as after a scene cut.

:class:`LoopingCamera` serves that feed on ``tcp://127.0.0.1:PORT``: the feed runs from
``__enter__`` on, paced by the wall clock, whether or not anybody reads it (a client that
connects joins it where it is, as with a real camera); every connected client gets every
byte; a client that stops reading for ``send_timeout`` seconds is dropped. Its threads
(accept loop, feed) end on ``__exit__``; no child process is used.
"""

from __future__ import annotations

import logging
import socket
import threading
import time
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import av

from cache_schema import InvalidInput

__all__ = ["LoopingCamera"]

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class _Packet:
    """One packet of the clip, kept as bytes (an ``av.Packet`` is made anew each loop)."""

    stream: int              # 0: video, 1: audio (the output's stream order)
    data: bytes
    pts: int | None
    dts: int | None
    keyframe: bool


class _FanOut:
    """The muxer's file object: each write goes to every connected client."""

    def __init__(self, send_timeout: float) -> None:
        self.send_timeout = send_timeout
        self.clients: list[socket.socket] = []
        self.lock = threading.Lock()
        self.bytes_sent = 0
        self.dropped_clients = 0

    def add(self, sock: socket.socket) -> None:
        sock.settimeout(self.send_timeout)
        with self.lock:
            self.clients.append(sock)

    def write(self, data: bytes) -> int:
        with self.lock:
            clients = list(self.clients)
        for sock in clients:
            try:
                sock.sendall(data)
                self.bytes_sent += len(data)
            except OSError:           # gone, or not reading: a camera keeps no client
                self.drop(sock)
        return len(data)

    def drop(self, sock: socket.socket) -> None:
        with self.lock:
            if sock not in self.clients:
                return
            self.clients.remove(sock)
            self.dropped_clients += 1
        try:
            sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        sock.close()

    def close(self) -> None:
        with self.lock:
            clients, self.clients = self.clients, []
        for sock in clients:
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            sock.close()


class LoopingCamera:
    """``with LoopingCamera(clip) as cam: ... cam.url``. ``loops``: loops begun so far;
    ``connections``: clients accepted; ``feed_error``: why the feed stopped, if it failed."""

    def __init__(self, clip: str | Path, *, realtime: bool = True, send_timeout: float = 5.0) -> None:
        self.clip = Path(clip)
        self.realtime = realtime
        self.loops = 0
        self.connections = 0
        self.feed_error: BaseException | None = None
        self.port = 0
        self._fanout = _FanOut(send_timeout)
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._listener: socket.socket | None = None
        self._packets: list[_Packet] = []
        self._templates: list[av.stream.Stream] = []
        self._input: av.container.InputContainer | None = None
        self._time_bases: list[Fraction] = []
        self._loop_ticks: list[int] = []

    @property
    def url(self) -> str:
        return f"tcp://127.0.0.1:{self.port}"

    @property
    def bytes_sent(self) -> int:
        return self._fanout.bytes_sent

    def __enter__(self) -> LoopingCamera:
        self._read_clip()
        listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", 0))
        listener.listen(8)
        listener.settimeout(0.2)
        self._listener, self.port = listener, listener.getsockname()[1]
        for target, name in ((self._accept_loop, "camera-accept"), (self._feed, "camera-feed")):
            thread = threading.Thread(target=target, name=f"{name}:{self.port}", daemon=True)
            self._threads.append(thread)
            thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=10)
        self._fanout.close()
        if self._listener is not None:
            self._listener.close()
        if self._input is not None:
            self._input.close()
        alive = [t.name for t in self._threads if t.is_alive()]
        if alive:
            raise RuntimeError(f"looping camera: threads still running: {alive}")

    # -- the clip
    def _read_clip(self) -> None:
        try:
            container = av.open(str(self.clip), metadata_errors="ignore")
        except (av.FFmpegError, OSError) as exc:
            raise InvalidInput(f"{self.clip}: cannot open the clip to loop ({exc})") from None
        self._input = container   # the templates' codec parameters live as long as it
        video = next(iter(container.streams.video), None)
        if video is None:
            raise InvalidInput(f"{self.clip}: the clip to loop has no video stream")
        audio = next(iter(container.streams.audio), None)
        streams = [s for s in (video, audio) if s is not None]
        index = {s.index: i for i, s in enumerate(streams)}
        ends = [0] * len(streams)
        starts: list[int | None] = [None] * len(streams)
        for packet in container.demux(streams):
            if packet.size == 0 or packet.dts is None:
                continue
            i = index[packet.stream.index]
            self._packets.append(_Packet(i, bytes(packet), packet.pts, packet.dts, bool(packet.is_keyframe)))
            starts[i] = packet.dts if starts[i] is None else starts[i]
            ends[i] = max(ends[i], packet.dts + (packet.duration or 0))
        if not self._packets or not self._packets[0].keyframe:
            raise InvalidInput(f"{self.clip}: the clip to loop must start with a video keyframe")
        self._templates = streams
        self._time_bases = [s.time_base for s in streams]
        # one loop lasts the video's span; every stream shifts by that, in its own ticks
        v0 = starts[0] or 0
        seconds = float((ends[0] - v0) * self._time_bases[0])
        self._loop_ticks = [int(round(seconds / tb)) for tb in self._time_bases]
        self._loop_seconds = seconds
        if seconds <= 0:
            raise InvalidInput(f"{self.clip}: the clip to loop has no length")

    # -- threads
    def _accept_loop(self) -> None:
        assert self._listener is not None
        while not self._stop.is_set():
            try:
                sock, _ = self._listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            self.connections += 1
            self._fanout.add(sock)

    def _feed(self) -> None:
        try:
            out = av.open(self._fanout, "w", format="mpegts",
                          container_options={"flush_packets": "1", "pes_payload_size": "0"})
        except BaseException as exc:
            self.feed_error = exc
            logger.exception("looping camera: cannot start the feed")
            return
        try:
            targets = [out.add_stream_from_template(s) for s in self._templates]
            self._run(out, targets)
        except BaseException as exc:         # shown by the caller (feed_error), not lost on a thread
            self.feed_error = exc
            logger.exception("looping camera %s: the feed failed", self.url)
        finally:
            try:
                out.close()
            except Exception:                # the trailer to clients that left
                pass

    def _run(self, out: av.container.OutputContainer, targets: list) -> None:
        first = self._packets[0]
        t0 = float(first.dts * self._time_bases[0])
        wall0 = time.monotonic()
        last_dts: list[int | None] = [None] * len(targets)
        while not self._stop.is_set():
            loop = self.loops
            self.loops += 1
            for p in self._packets:
                shift = loop * self._loop_ticks[p.stream]
                dts = p.dts + shift
                if last_dts[p.stream] is not None and dts <= last_dts[p.stream]:
                    continue                 # an audio frame across the seam: its track would go back
                if self.realtime:
                    due = wall0 + float(dts * self._time_bases[p.stream]) - t0
                    delay = due - time.monotonic()
                    if delay > 0 and self._stop.wait(delay):
                        return
                if self._stop.is_set():
                    return
                packet = av.Packet(p.data)
                packet.dts = dts
                packet.pts = None if p.pts is None else p.pts + shift
                packet.time_base = self._time_bases[p.stream]
                packet.is_keyframe = p.keyframe
                packet.stream = targets[p.stream]
                out.mux_one(packet)
                last_dts[p.stream] = dts
