"""Live mode on ``http://`` cameras, from real HTTP servers on 127.0.0.1: an MJPEG camera
(``multipart/x-mixed-replace``, what most IP cameras serve besides RTSP), and a live HLS
playlist (what NVRs and relays such as go2rtc publish for browsers), written in real time
by FFmpeg's own HLS muxer.

MJPEG carries no timestamps: FFmpeg numbers its frames as if they came at 25 fps,
whatever the camera sends. The camera here sends 12 frames a second, so a watch that
trusted those numbers would run its media clock at half speed and put the event at the
wrong time; live mode takes such a stream's arrival time as its media time."""

from __future__ import annotations

import functools
import http.server
import io
import math
import threading
import time
from pathlib import Path

import av
import pytest

from live import AlertConfig, WatchConfig, load_watch_predictor
from tests.test_live import watch

pytestmark = pytest.mark.usefixtures("one_thread")
STEP = 0.6667
CAMERA_FPS = 12


def _scene(tmp_path: Path, seconds: float, event: tuple[float, float], audio: bool) -> Path:
    """The stand-in's scene (64 x 48, 24 fps, a violent event at ``event``) as MPEG-TS."""
    from synth.live_stream import StreamEvent, StreamPlan, write_stream

    media = tmp_path / "scene.ts"
    write_stream(str(media), StreamPlan(seconds=seconds, seed=5, audio=audio, size=(64, 48),
                                        event=StreamEvent(*event)), realtime=False)
    return media


def _jpeg_frames(tmp_path: Path, seconds: float, event: tuple[float, float]) -> list[bytes]:
    """Every other frame of the scene as a JPEG: a 12 fps camera."""
    media = _scene(tmp_path, seconds, event, audio=False)
    out = []
    with av.open(str(media)) as container:
        for k, frame in enumerate(container.decode(video=0)):
            if k % 2 == 0:
                buf = io.BytesIO()
                frame.to_image().save(buf, "JPEG", quality=90)
                out.append(buf.getvalue())
    return out


class _MjpegCamera(http.server.ThreadingHTTPServer):
    """Serves ``/video`` as multipart JPEG at ``fps`` in real time, once per connection."""

    daemon_threads = True

    def __init__(self, frames: list[bytes], fps: float) -> None:
        self.frames, self.fps = frames, fps
        self.connections = 0
        super().__init__(("127.0.0.1", 0), _MjpegHandler)


class _MjpegHandler(http.server.BaseHTTPRequestHandler):
    server: _MjpegCamera

    def do_GET(self) -> None:  # noqa: N802 (http.server's name)
        self.server.connections += 1
        self.send_response(200)
        self.send_header("Content-Type", "multipart/x-mixed-replace; boundary=frame")
        self.end_headers()
        began = time.monotonic()
        try:
            for k, jpeg in enumerate(self.server.frames):
                delay = began + k / self.server.fps - time.monotonic()
                if delay > 0:
                    time.sleep(delay)
                self.wfile.write(b"--frame\r\nContent-Type: image/jpeg\r\nContent-Length: %d\r\n\r\n" % len(jpeg)
                                 + jpeg + b"\r\n")
                self.wfile.flush()
        except (BrokenPipeError, ConnectionResetError):
            pass  # the watch stopped reading

    def log_message(self, *args) -> None:
        pass


def test_mjpeg_camera_over_http_runs_on_its_arrival_clock(xd_grid_run: Path, tmp_path: Path) -> None:
    """A 12 fps MJPEG camera with an event at 2-5 s: scored on a media clock that keeps
    wall time (FFmpeg's own numbering would reach only 12/25 of it), with one alert
    starting at the event, within a step and the arrival jitter."""
    frames = _jpeg_frames(tmp_path, 8.0, (2.0, 5.0))
    predictor, run_steps = load_watch_predictor(xd_grid_run)
    camera = _MjpegCamera(frames, CAMERA_FPS)
    threading.Thread(target=camera.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{camera.server_address[1]}/video"
    try:
        alerts = AlertConfig(threshold=0.5, min_duration=1.0, cooldown=2.0)
        began = time.monotonic()
        events, summary = watch(predictor, [url], WatchConfig(stall_timeout=2.0, duration=7.0, alerts=alerts),
                                run_steps, watchdog_s=40)
        took = time.monotonic() - began
    finally:
        camera.shutdown()
        camera.server_close()
    records = [e for e in events if e["type"] == "score"]
    assert events[0]["type"] == "started" and events[-1]["type"] == "ended", [e["type"] for e in events]
    assert summary.sources[url].error is None and camera.connections == 1
    assert len(records) >= 8 and all(math.isfinite(r["score"]) for r in records)
    # media time kept wall time: 7 s of media took about 7 s (not 7 x 25 / 12 = 14.6 s)
    assert 6.0 <= took <= 10.0, took
    assert max(r["t"] for r in records) >= 6.0
    assert all(0 <= r["latency_s"] < 3.0 for r in records), max(r["latency_s"] for r in records)
    starts = [e for e in events if e["type"] == "alert_start"]
    assert len(starts) == 1, [(e["type"], e.get("t_start")) for e in events if e["type"] != "score"]
    assert abs(starts[0]["t_start"] - 2.0) <= STEP + 0.3, starts[0]


class _QuietFiles(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args) -> None:
        pass


def _publish_hls(media: Path, folder: Path, stop: threading.Event) -> None:
    """Remux ``media`` into a live HLS playlist (1 s segments, the last 4 listed, older
    ones deleted) at the pace of its timestamps, as a relay publishes a camera."""
    options = {"hls_time": "1", "hls_list_size": "4", "hls_flags": "delete_segments"}
    with av.open(str(media)) as src, av.open(str(folder / "cam.m3u8"), "w", format="hls", options=options) as out:
        inputs = [s for s in src.streams if s.type in ("video", "audio")]
        streams = {s.index: out.add_stream_from_template(s) for s in inputs}
        began, first = time.monotonic(), None
        for packet in src.demux(*inputs):
            if packet.dts is None:
                continue
            at = float(packet.dts * packet.time_base)
            first = at if first is None else first
            if stop.wait(max(0.0, began + at - first - time.monotonic())):
                return
            packet.stream = streams[packet.stream.index]
            out.mux(packet)


def test_live_hls_playlist_over_http_is_scored_as_it_grows(xd_grid_run: Path, tmp_path: Path) -> None:
    """A live HLS playlist (H.264 and AAC in 1 s segments), an event at 2-5 s: scored as
    the segments appear, on the segments' own timestamps, one alert starting at the event."""
    media = _scene(tmp_path, 8.0, (2.0, 5.0), audio=True)
    folder = tmp_path / "hls"
    folder.mkdir()
    predictor, run_steps = load_watch_predictor(xd_grid_run)
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(_QuietFiles, directory=str(folder)))
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    published = threading.Event()
    publisher = threading.Thread(target=_publish_hls, args=(media, folder, published), daemon=True)
    publisher.start()
    url = f"http://127.0.0.1:{server.server_address[1]}/cam.m3u8"
    try:
        deadline = time.monotonic() + 10
        while not (folder / "cam.m3u8").exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        alerts = AlertConfig(threshold=0.5, min_duration=1.0, cooldown=2.0)
        events, summary = watch(predictor, [url], WatchConfig(stall_timeout=3.0, duration=6.5, alerts=alerts),
                                run_steps, watchdog_s=40)
    finally:
        published.set()
        publisher.join(10)
        server.shutdown()
        server.server_close()
    records = [e for e in events if e["type"] == "score"]
    assert events[0]["type"] == "started" and events[-1]["type"] == "ended", [e["type"] for e in events]
    assert summary.sources[url].error is None
    assert len(records) >= 8 and all(math.isfinite(r["score"]) for r in records)
    assert max(r["t"] for r in records) >= 5.5
    assert all(0 <= r["latency_s"] < 3.0 for r in records), max(r["latency_s"] for r in records)
    starts = [e for e in events if e["type"] == "alert_start"]
    assert len(starts) == 1, [(e["type"], e.get("t_start")) for e in events if e["type"] != "score"]
    assert abs(starts[0]["t_start"] - 2.0) <= STEP + 0.1, starts[0]
