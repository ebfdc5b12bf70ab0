"""The generated live stream (``synth.live_stream``, ``cli.py synth-stream``): real
MPEG-TS (libx264 + AAC through PyAV) into a file, a pipe, UDP on loopback and standard
output, read back by PyAV and by the project's decoding engine.

Real-time tests stream 2-3 s of media each; bounds on wall time are generous (the suite
runs on 2 shared cores), but each would fail for a writer that does not pace (it finishes
in a fraction of the time), does not pause (no gap) or buffers (frames arrive in a burst).
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import av
import numpy as np
import pytest

from cache_schema import InvalidInput
from extract.decode import decode_clip
from extract.probe import probe
from synth.live_stream import (READER_GONE, SIGNALLED, STOPPED, StreamEvent, StreamPause, StreamPlan, StreamResize,
                               stream_truth, udp_url, write_stream)

ROOT = Path(__file__).resolve().parents[1]


def _brightness(frames) -> np.ndarray:
    return np.array([np.asarray(f, dtype=np.float32).mean() for f in frames])


@pytest.mark.parametrize("audio", [True, False])
def test_file_stream_decodes_through_the_engine(tmp_path: Path, audio: bool) -> None:
    plan = StreamPlan(seconds=4.0, event=StreamEvent(1.5, 2.5, "B1"), audio=audio)
    path = tmp_path / "cam.ts"
    result = write_stream(path, plan, realtime=False, truth_path=tmp_path / "truth.json")
    assert result.ended == "complete" and result.frames_sent == 96
    assert result.wall_seconds < 3.0                      # not paced
    assert not list(tmp_path.glob(".*"))                  # the temporary was renamed into place

    info = probe(path)
    assert info.container_format == "mpegts"
    assert info.duration == pytest.approx(4.0, abs=0.05)
    assert (info.video.width, info.video.height, info.video.fps) == (320, 240, 24.0)
    assert info.has_audio is audio
    assert info.video.start - info.start == pytest.approx(result.truth["clip_time_offset"], abs=1e-3)
    if audio:
        assert (info.audio.codec, info.audio.sample_rate, info.audio.channels) == ("aac", 48000, 1)
    # a keyframe every second: a reader joining mid-stream starts within one
    assert np.allclose(np.diff(info.video.keyframe_pts) / 90000, 1.0)

    clip = decode_clip(path, 8)                           # steps of 0.5 s; the event covers steps 3 and 4
    lit = _brightness(clip.frames)
    assert lit[3:5].min() > 2 * lit[[0, 1, 2, 5, 6, 7]].max(), lit
    if audio:
        loud = np.array([np.sqrt(np.mean(clip.step_audio(i) ** 2)) for i in range(8)])
        assert loud[3:5].min() > 1.5 * loud[[0, 1, 2, 5, 6, 7]].max(), loud
    else:
        assert clip.audio is None

    truth = json.loads((tmp_path / "truth.json").read_text())
    assert truth == json.loads(json.dumps(result.truth))
    assert truth["events"] == [{"code": "B1", "start": 1.5, "end": 2.5, "start_frame": 36, "end_frame": 60}]
    assert truth["seconds"] == 4.0 and truth["audio"] is audio


def _video_frames(path: Path) -> list[tuple[float, int, int]]:
    """(pts seconds, width, height) of every decoded video frame."""
    with av.open(str(path)) as c:
        return [(float(f.pts * f.time_base), f.width, f.height) for f in c.decode(video=0)]


def test_pause_modes_and_resize_in_a_file(tmp_path: Path) -> None:
    """``clock``: the media of the pause is lost and the timestamps jump by it; ``hold``:
    nothing is lost. A resize changes the decoded size at its frame, in the same stream."""
    base = dict(seconds=3.0, pause=StreamPause(1.0, 0.5), resize=StreamResize(2.0, (160, 120)))
    for resume in ("clock", "hold"):
        plan = StreamPlan(**base, resume=resume)
        result = write_stream(tmp_path / f"{resume}.ts", plan, realtime=False)
        frames = _video_frames(tmp_path / f"{resume}.ts")
        pts = np.array([f[0] for f in frames]) - frames[0][0]
        sizes = [f[1:] for f in frames]
        truth = result.truth
        if resume == "clock":
            assert result.frames_sent == len(frames) == 72 - 12
            assert truth["pause"] == {"at": 1.0, "wall_seconds": 0.5, "resume": "clock", "lost": [1.0, 1.5]}
            gap = int(np.argmax(np.diff(pts)))
            assert pts[gap] == pytest.approx(1.0 - 1 / 24, abs=1e-3) and pts[gap + 1] == pytest.approx(1.5, abs=1e-3)
            first_small = 72 - 12 - 24
        else:
            assert result.frames_sent == len(frames) == 72
            assert truth["pause"]["lost"] is None
            assert np.allclose(np.diff(pts), 1 / 24, atol=1e-3)
            first_small = 48
        assert sizes[:first_small] == [(320, 240)] * first_small
        assert sizes[first_small:] == [(160, 120)] * (len(frames) - first_small)
        assert truth["resize"] == {"at": 2.0, "size": [160, 120]}
        info = probe(tmp_path / f"{resume}.ts")              # the engine reads both
        assert info.duration == pytest.approx(3.0, abs=0.05)


def test_realtime_pipe_paces_and_pauses() -> None:
    """3 s of media with a 1 s stall at 1.5 s (clock): the writer takes ~3 s of wall time,
    a PyAV reader on the pipe gets each frame about when its media time comes, and no
    packet arrives for ~1 s at the pause."""
    plan = StreamPlan(seconds=3.0, pause=StreamPause(1.5, 1.0))
    r, w = os.pipe()
    done: dict = {}

    def send() -> None:
        with os.fdopen(w, "wb") as wf:
            done["result"] = write_stream(wf, plan)

    began = time.monotonic()
    sender = threading.Thread(target=send, daemon=True)
    sender.start()
    arrivals = []                                           # (wall, stream type, media seconds)
    with av.open(os.fdopen(r, "rb", buffering=0), format="mpegts",
                 options={"probesize": "32768", "analyzeduration": "500000"}) as c:
        for pkt in c.demux():
            if pkt.pts is None:
                continue
            for frame in pkt.decode():
                assert frame.pts is not None
            arrivals.append((time.monotonic() - began, pkt.stream.type, float(pkt.pts * pkt.time_base)))
    sender.join(10)
    result = done["result"]
    assert result.ended == "complete" and result.frames_sent == 72 - 24
    assert 2.8 < result.wall_seconds < 5.0, result.wall_seconds
    video = [a for a in arrivals if a[1] == "video"]
    assert len(video) == 48
    m0 = video[0][2]
    # After the reader's open (which holds the first frames), each frame comes about at its
    # media time, not in a burst at the end. (FFmpeg's H.264 parser releases a frame when the
    # next one begins, so the last frame before the stall comes only after it.)
    lag = np.array([wall - (media - m0) for wall, _, media in video if 1.0 < media - m0 < 1.4 or media - m0 > 2.4])
    assert lag.max() - lag.min() < 0.5, str([(round(a, 3), round(m - m0, 3)) for a, t, m in video])
    walls = np.array([a[0] for a in arrivals])
    gaps = np.diff(walls)
    stall = int(np.argmax(gaps))
    assert 0.7 < gaps[stall] < 1.6, gaps[stall]
    assert np.sort(gaps)[-2] < 0.5                          # one stall only
    # the frame the parser held, then the clock that kept running through the pause
    after = [a[2] - m0 for a in arrivals[stall + 1:] if a[1] == "video"][:2]
    assert after == pytest.approx([1.5 - 1 / 24, 2.5], abs=0.01)


def _free_udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _udp_bound(port: int) -> bool:
    """Whether a socket is bound to udp ``port``, from the kernel's own table: probing by
    binding the port would race the reader's bind (FFmpeg's unicast socket is exclusive)
    and could make it fail with 'Address already in use'."""
    for line in Path("/proc/net/udp").read_text().splitlines()[1:]:
        local = line.split()[1]                    # "0100007F:DB84": address and port in hex
        if int(local.rsplit(":", 1)[1], 16) == port:
            return True
    return False


def _wait_bound(port: int, got: dict, timeout: float = 20.0) -> None:
    """Wait until the reader listens on udp ``port``; ``got["error"]``: why the reader
    gave up, if it did."""
    end = time.monotonic() + timeout
    while time.monotonic() < end and "error" not in got:
        if _udp_bound(port):
            return
        time.sleep(0.02)
    raise AssertionError(f"no reader bound udp port {port}: {got.get('error', 'not in time')}")


def test_udp_reader_receives_decodable_video_and_audio() -> None:
    port = _free_udp_port()
    got: dict = {"video": 0, "audio": 0, "sizes": set()}

    def read() -> None:
        try:
            with av.open(f"udp://127.0.0.1:{port}", format="mpegts", timeout=(10.0, 0.5),
                         options={"probesize": "32768", "analyzeduration": "500000"}) as c:
                for pkt in c.demux():
                    for frame in pkt.decode():
                        got[pkt.stream.type] += 1
                        if pkt.stream.type == "video":
                            got["sizes"].add((frame.width, frame.height))
                        else:
                            got["rate"] = frame.sample_rate
        except av.ExitError:            # the read timeout once the sender has stopped: the end
            pass
        except Exception as exc:        # shown by _wait_bound's assertion
            got["error"] = repr(exc)

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    _wait_bound(port, got)
    result = write_stream(f"udp://127.0.0.1:{port}", StreamPlan(seconds=2.5, event=StreamEvent(1.0, 1.5, "G")))
    reader.join(10)
    assert not reader.is_alive()
    assert result.ended == "complete" and 2.3 < result.wall_seconds < 4.5
    # loopback does not drop at this rate; allow a little for a loaded machine
    assert got["video"] >= 0.8 * 60 and got["audio"] >= 0.8 * 117, got
    assert got["sizes"] == {(320, 240)} and got["rate"] == 48000


@pytest.mark.parametrize("target", ["udp://10.1.2.3:5000", "udp://example.com:5000", "udp://127.0.0.1",
                                    "udp://127.0.0.1:5000?ttl=3", "tcp://127.0.0.1:5000", "rtmp://127.0.0.1/x"])
def test_only_loopback_udp_is_written(target: str) -> None:
    with pytest.raises(InvalidInput):
        write_stream(target, StreamPlan(seconds=1.0))


def test_udp_url_keeps_whole_ts_packets() -> None:
    assert udp_url("udp://127.0.0.1:5000") == "udp://127.0.0.1:5000?pkt_size=1316"
    assert udp_url("udp://localhost:5000/") == "udp://localhost:5000?pkt_size=1316"
    assert udp_url("udp://[::1]:5000") == "udp://[::1]:5000?pkt_size=1316"


@pytest.mark.parametrize("bad", [
    dict(seconds=0), dict(fps=30), dict(size=(321, 240)), dict(sample_rate=16000), dict(channels=3),
    dict(event=StreamEvent(3.0, 6.0)), dict(event=StreamEvent(1.0, 2.0, "A")), dict(pause=StreamPause(0.0, 1.0)),
    dict(pause=StreamPause(1.0, 0.0)), dict(resume="skip"), dict(resize=StreamResize(9.0, (160, 120))),
])
def test_bad_plans_are_refused(bad: dict) -> None:
    with pytest.raises(InvalidInput):
        StreamPlan(seconds=bad.pop("seconds", 5.0), **bad)


def test_truth_is_frame_aligned() -> None:
    truth = stream_truth(StreamPlan(seconds=5.0, event=StreamEvent(1.01, 2.03, "B6"), pause=StreamPause(3.0, 2.0)))
    assert truth["events"][0]["start_frame"] == 24 and truth["events"][0]["end_frame"] == 49
    assert truth["events"][0]["end"] == pytest.approx(49 / 24)
    assert truth["pause"]["lost"] == [3.0, 5.0]               # cut at the stream's end
    assert truth["keyframe_interval"] == 24 and truth["frames"] == 120


def test_stop_event_and_reader_gone(tmp_path: Path) -> None:
    """A stream ends early, cleanly, on the caller's stop event and when its reader leaves;
    a file stream that was stopped is not put in place."""
    stop = threading.Event()
    threading.Timer(0.3, stop.set).start()
    result = write_stream(tmp_path / "cut.ts", StreamPlan(seconds=10.0), realtime=True, stop=stop)
    assert result.ended == STOPPED and result.wall_seconds < 2.0
    assert not (tmp_path / "cut.ts").exists() and not list(tmp_path.iterdir())

    r, w = os.pipe()
    rf = os.fdopen(r, "rb", buffering=0)
    threading.Timer(0.4, rf.close).start()
    with os.fdopen(w, "wb", buffering=0) as wf:
        result = write_stream(wf, StreamPlan(seconds=10.0))
    assert result.ended == READER_GONE and result.wall_seconds < 2.0 and result.frames_sent > 0


def _stream_process(seconds: float) -> subprocess.Popen:
    """``write_stream("-")`` in a child (the CLI's path without its start-up cost)."""
    code = ("import logging, sys; logging.basicConfig(level=logging.INFO); "
            "from synth.live_stream import StreamPlan, write_stream; "
            f"r = write_stream('-', StreamPlan(seconds={seconds})); print(r.ended, file=sys.stderr)")
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)


def test_stdout_stream_stops_on_sigterm_and_on_a_closed_pipe() -> None:
    term = _stream_process(10.0)
    gone = _stream_process(10.0)
    try:
        for child in (term, gone):
            assert len(child.stdout.read(4000)) == 4000     # streaming has begun
        term.send_signal(signal.SIGTERM)
        tail = term.stdout.read()                             # the rest, to the clean end
        gone.stdout.close()                                   # the reader leaves
        for child in (term, gone):
            child.wait(10)
        err_term, err_gone = term.stderr.read().decode(), gone.stderr.read().decode()
    finally:
        for child in (term, gone):
            if child.poll() is None:
                child.kill()
                child.wait()
    assert term.returncode == 0 and SIGNALLED in err_term and "Traceback" not in err_term, err_term
    assert (4000 + len(tail)) % 188 == 0                      # whole TS packets up to the end
    assert gone.returncode == 0 and READER_GONE in err_gone, err_gone
    assert "Traceback" not in err_gone and "Exception ignored" not in err_gone, err_gone


def test_fifo_target(tmp_path: Path) -> None:
    """A FIFO path is a stream, not a file: opened for writing (no temporary, no rename)."""
    fifo = tmp_path / "cam.fifo"
    os.mkfifo(fifo)
    done: dict = {}
    sender = threading.Thread(target=lambda: done.update(r=write_stream(fifo, StreamPlan(seconds=2.0), realtime=False)),
                              daemon=True)
    sender.start()
    with open(fifo, "rb", buffering=0) as f, av.open(f, format="mpegts") as c:
        frames = sum(1 for _ in c.decode(video=0))
    sender.join(10)
    assert frames == 48 and done["r"].ended == "complete"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cam.fifo"]
