"""A small RTSP camera on 127.0.0.1 for live mode's tests (test support, not library code).

Live mode says it reads ``rtsp://`` cameras; this serves one path,
``rtsp://127.0.0.1:PORT/cam``, the way an IP camera does over TCP-interleaved transport,
so that a test runs FFmpeg's real RTSP client (through PyAV) against a real session:

* RTSP/1.0 requests on the connection: OPTIONS, DESCRIBE (an SDP with one MPEG-TS over RTP
  stream, RFC 2250: payload type 33, ``a=rtpmap:33 MP2T/90000``), SETUP (only
  ``RTP/AVP/TCP;unicast;interleaved=0-1``; a UDP request is answered 461), PLAY,
  GET_PARAMETER / SET_PARAMETER (keep-alives), PAUSE and TEARDOWN; anything else 501.
* After PLAY, RTP packets (12-byte header: version 2, payload type 33, a sequence
  number, a 90 kHz timestamp from the wall clock, the SSRC) of up to 7 whole 188-byte TS
  packets, framed as ``$``, channel 0, a 2-byte length. A packet is sent as soon as its
  TS packets are there (a camera does not hold a frame back to fill 1316 bytes).
* The TS comes from the project's real-time writer (``synth.live_stream.write_stream``)
  into a pipe whose read end this server reads: one feed for the camera, started at the
  first PLAY, shared by every session (a client that reconnects joins it where it is, as
  with a real camera). A ``StreamPause`` in the plan stops the feed; :meth:`reboot`
  drops every connection and refuses new ones for a while (a camera rebooting).

Everything it starts (the accept loop, one thread per connection, the feed and the
pump) ends on ``__exit__``; no child process is used.
"""

from __future__ import annotations

import logging
import os
import random
import select
import socket
import struct
import threading
import time
from dataclasses import dataclass, field

from synth.live_stream import StreamPlan, StreamResult, write_stream

logger = logging.getLogger(__name__)

TS_PACKET = 188
TS_PER_RTP = 7
PAYLOAD_TYPE = 33          # MP2T (RFC 3551's static payload type)
CLOCK = 90_000
PATH = "cam"
SESSION_TIMEOUT_S = 60


@dataclass
class _Client:
    """One RTSP connection. ``playing``: PLAY was answered and TEARDOWN not yet."""

    sock: socket.socket
    peer: str
    lock: threading.Lock = field(default_factory=threading.Lock)   # one writer at a time on the socket
    session: str | None = None
    playing: bool = False
    seq: int = field(default_factory=lambda: random.randrange(1 << 16))
    closed: bool = False

    def send(self, data: bytes) -> bool:
        with self.lock:
            if self.closed:
                return False
            try:
                self.sock.sendall(data)
                return True
            except OSError:
                self.close_locked()
                return False

    def close(self) -> None:
        with self.lock:
            self.close_locked()

    def close_locked(self) -> None:
        if not self.closed:
            self.closed = True
            self.playing = False
            try:
                self.sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            self.sock.close()


class LoopbackRtspServer:
    """``with LoopbackRtspServer(plan) as cam: ... cam.url``. Counters for the test:
    ``requests`` (method names in order), ``sessions_played``, ``rtp_packets``,
    ``refused`` (connections closed while rebooting), ``sent_at`` (the wall time,
    ``time.time()``, of every RTP packet sent to a client); ``feed_result`` once the feed ended."""

    def __init__(self, plan: StreamPlan, *, send_timeout: float = 5.0) -> None:
        self.plan = plan
        self.send_timeout = send_timeout
        self.requests: list[str] = []
        self.sessions_played = 0
        self.rtp_packets = 0
        self.refused = 0
        self.sent_at: list[float] = []
        self.feed_result: StreamResult | None = None
        self.feed_error: BaseException | None = None
        self._stop = threading.Event()
        self._feed_stop = threading.Event()
        self._clients: list[_Client] = []
        self._lock = threading.Lock()
        self._threads: list[threading.Thread] = []
        self._refuse_until = 0.0
        self._feed_started = False
        self._t0 = time.monotonic()
        self._ssrc = random.randrange(1 << 32)
        self._listener: socket.socket | None = None
        self.port = 0

    # -- lifetime
    def __enter__(self) -> LoopbackRtspServer:
        listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", 0))
        listener.listen(8)
        listener.settimeout(0.1)
        self._listener, self.port = listener, listener.getsockname()[1]
        self._spawn(self._accept_loop, "rtsp-accept")
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._feed_stop.set()
        with self._lock:
            clients = list(self._clients)
        for client in clients:
            client.close()
        for thread in list(self._threads):
            thread.join(timeout=10)
        if self._listener is not None:
            self._listener.close()
        alive = [t.name for t in self._threads if t.is_alive()]
        if alive:
            raise RuntimeError(f"loopback RTSP server: threads still running: {alive}")

    @property
    def url(self) -> str:
        return f"rtsp://127.0.0.1:{self.port}/{PATH}"

    def reboot(self, down_s: float) -> None:
        """Drop every connection now and refuse new ones (accepted, then closed at once)
        for ``down_s`` seconds; the feed goes on meanwhile, as a camera's clock does."""
        self._refuse_until = time.monotonic() + down_s
        with self._lock:
            clients = list(self._clients)
        for client in clients:
            client.close()

    def _spawn(self, target, name: str, *args) -> None:
        thread = threading.Thread(target=target, args=args, name=name, daemon=True)
        self._threads.append(thread)
        thread.start()

    # -- connections
    def _accept_loop(self) -> None:
        assert self._listener is not None
        while not self._stop.is_set():
            try:
                sock, peer = self._listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            if time.monotonic() < self._refuse_until:
                self.refused += 1
                sock.close()
                continue
            sock.settimeout(self.send_timeout)     # a client that stops reading is dropped
            client = _Client(sock, f"{peer[0]}:{peer[1]}")
            with self._lock:
                self._clients.append(client)
            self._spawn(self._serve, f"rtsp-client-{peer[1]}", client)

    def _serve(self, client: _Client) -> None:
        buf = b""
        try:
            while not self._stop.is_set() and not client.closed:
                request, buf = self._next_request(client, buf)
                if request is None:
                    break
                if not request:
                    continue
                self._answer(client, request)
        finally:
            client.close()
            with self._lock:
                if client in self._clients:
                    self._clients.remove(client)

    def _next_request(self, client: _Client, buf: bytes) -> tuple[bytes | None, bytes]:
        """The next request's header block (its body, if any, is read and dropped); b""
        for an interleaved frame the client sent (RTCP), None once the connection ended."""
        while True:
            if buf.startswith(b"$"):
                if len(buf) >= 4:
                    size = struct.unpack(">H", buf[2:4])[0]
                    if len(buf) >= 4 + size:
                        return b"", buf[4 + size:]
            elif b"\r\n\r\n" in buf:
                head, rest = buf.split(b"\r\n\r\n", 1)
                length = 0
                for line in head.split(b"\r\n")[1:]:
                    name, _, value = line.partition(b":")
                    if name.strip().lower() == b"content-length":
                        length = int(value.strip() or 0)
                if len(rest) >= length:
                    return head, rest[length:]
            try:
                ready, _, _ = select.select([client.sock], [], [], 0.2)
                if not ready:
                    if self._stop.is_set():
                        return None, buf
                    continue
                data = client.sock.recv(65536)
            except (OSError, ValueError):          # closed by reboot() or __exit__
                return None, buf
            if not data:
                return None, buf
            buf += data

    def _answer(self, client: _Client, head: bytes) -> None:
        lines = head.decode("latin-1").split("\r\n")
        method, uri, _version = (lines[0].split(" ") + ["", ""])[:3]
        headers = {}
        for line in lines[1:]:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
        self.requests.append(method)
        cseq = headers.get("cseq", "0")
        extra: list[str] = []
        body = b""
        path = uri.split("://", 1)[-1].partition("/")[2].split("?")[0].rstrip("/")
        if method == "OPTIONS":
            status = "200 OK"
            extra.append("Public: OPTIONS, DESCRIBE, SETUP, PLAY, PAUSE, TEARDOWN, GET_PARAMETER, SET_PARAMETER")
        elif method in ("DESCRIBE", "SETUP", "PLAY") and path.split("/")[0] != PATH:
            status = "404 Not Found"
        elif method == "DESCRIBE":
            status = "200 OK"
            body = self._sdp().encode()
            extra += [f"Content-Base: {self.url}/", "Content-Type: application/sdp"]
        elif method == "SETUP":
            transport = headers.get("transport", "")
            if "RTP/AVP/TCP" not in transport.upper():
                status = "461 Unsupported Transport"
            else:
                status = "200 OK"
                client.session = client.session or f"{random.randrange(1 << 40):010X}"
                extra += ["Transport: RTP/AVP/TCP;unicast;interleaved=0-1",
                          f"Session: {client.session};timeout={SESSION_TIMEOUT_S}"]
        elif method == "PLAY":
            if client.session is None:
                status = "455 Method Not Valid in This State"
            else:
                status = "200 OK"
                extra += [f"Session: {client.session}", "Range: npt=0.000-",
                          f"RTP-Info: url={self.url}/track0;seq={client.seq};rtptime={self._rtp_time()}"]
        elif method in ("GET_PARAMETER", "SET_PARAMETER", "PAUSE", "TEARDOWN"):
            status = "200 OK"
            if client.session is not None:
                extra.append(f"Session: {client.session}")
        else:
            status = "501 Not Implemented"
        response = [f"RTSP/1.0 {status}", f"CSeq: {cseq}", "Server: avar-loopback-rtsp", *extra,
                    f"Content-Length: {len(body)}", "", ""]
        client.send("\r\n".join(response).encode() + body)
        if method == "PLAY" and status.startswith("200"):
            client.playing = True
            self.sessions_played += 1
            self._start_feed()
        elif method == "PAUSE":
            client.playing = False
        elif method == "TEARDOWN":
            client.close()

    def _sdp(self) -> str:
        return "\r\n".join(["v=0", "o=- 0 0 IN IP4 127.0.0.1", "s=avar loopback camera", "c=IN IP4 127.0.0.1",
                            "t=0 0", "a=control:*", "a=range:npt=0-", f"m=video 0 RTP/AVP {PAYLOAD_TYPE}",
                            f"a=rtpmap:{PAYLOAD_TYPE} MP2T/{CLOCK}", "a=control:track0", ""])

    def _rtp_time(self) -> int:
        return int((time.monotonic() - self._t0) * CLOCK) & 0xFFFFFFFF

    # -- the camera's feed
    def _start_feed(self) -> None:
        with self._lock:
            if self._feed_started:
                return
            self._feed_started = True
        read_end, write_end = os.pipe()
        self._spawn(self._feed, "rtsp-feed", write_end)
        self._spawn(self._pump, "rtsp-pump", read_end)

    def _feed(self, write_end: int) -> None:
        try:
            with os.fdopen(write_end, "wb", buffering=0) as pipe:
                self.feed_result = write_stream(pipe, self.plan, realtime=True, stop=self._feed_stop)
        except BaseException as exc:        # shown by the test (feed_error), not lost on a thread
            self.feed_error = exc
            logger.exception("loopback RTSP feed failed")

    def _pump(self, read_end: int) -> None:
        """TS bytes from the pipe, as RTP packets to every playing client, until the
        feed's end (EOF). Keeps reading when nobody plays: the writer never blocks."""
        pending = b""
        with os.fdopen(read_end, "rb", buffering=0) as pipe:
            while True:
                data = pipe.read(65536)
                if not data:
                    return
                pending += data
                whole = len(pending) // TS_PACKET * TS_PACKET
                chunk, pending = pending[:whole], pending[whole:]
                for i in range(0, len(chunk), TS_PACKET * TS_PER_RTP):
                    self._send_rtp(chunk[i:i + TS_PACKET * TS_PER_RTP])

    def _send_rtp(self, payload: bytes) -> None:
        stamp = self._rtp_time()
        with self._lock:
            clients = [c for c in self._clients if c.playing]
        for client in clients:
            header = struct.pack(">BBHII", 0x80, PAYLOAD_TYPE, client.seq, stamp, self._ssrc)
            client.seq = (client.seq + 1) & 0xFFFF
            packet = header + payload
            if client.send(b"$\x00" + struct.pack(">H", len(packet)) + packet):
                self.rtp_packets += 1
                self.sent_at.append(time.time())


__all__ = ["LoopbackRtspServer"]
