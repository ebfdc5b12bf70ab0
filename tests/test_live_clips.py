"""A clip of every alert (``live.clips``, ``live.clip_buffer``): each camera's compressed
packets kept in a bounded ring buffer, an MP4 remuxed (not re-encoded) from the keyframe
before ``t_start - pre_s`` to ``t_end + post_s`` when an alert ends, named in the
``alert_end`` event; retention by size and age; a clip that cannot be written is
counted and scoring goes on.

Real media throughout: MPEG-TS streams of the stand-in's scene (``synth.live_stream``,
H.264 + AAC, a keyframe a second) with a violent event the stand-in's MIL run
(``xd_grid_run``, tiny backbones) alerts on, and files from ``tests/media_factory``.
Every clip is decoded with PyAV, and its frames are compared with the source's own
decoded frames at the same media time: a remux gives them bit for bit."""

from __future__ import annotations

import io
import json
import os
import threading
import time
from pathlib import Path

import av
import numpy as np
import pytest

from cache_schema import InvalidInput
from extract.probe import probe
from live import ClipConfig, ClipRecorder, EventHub, JsonLinesSink, WatchConfig, parse_source, run_watch
from live.alerts import AlertConfig
from live.clip_buffer import PacketRing
from live.clips import retain_clips
from live.events import ALERT_END, ALERT_START, AlertEvent
from live.sinks import slug
from tests.test_documented_commands import cli, documents

pytestmark = pytest.mark.usefixtures("one_thread")
FPS = 24
GOP_S = 1.0


def _stream_file(path: Path, seconds: float, event: tuple[float, float] | None, audio: bool, seed: int,
                 size: tuple[int, int] = (64, 48)) -> Path:
    from synth.live_stream import StreamEvent, StreamPlan, write_stream

    plan = StreamPlan(seconds=seconds, seed=seed, audio=audio, size=size, keyframe_s=GOP_S,
                      event=StreamEvent(*event) if event else None)
    write_stream(str(path), plan, realtime=False)
    return path


def _decoded(path: Path | str, origin: float) -> tuple[list[float], list[np.ndarray]]:
    """Every video frame's media time (timestamp - ``origin``) and pixels."""
    times, images = [], []
    with av.open(str(path)) as c:
        for frame in c.decode(video=0):
            times.append(float(frame.pts * frame.time_base) - origin)
            images.append(frame.to_ndarray(format="gray"))
    return times, images


def _media_start(clip: Path) -> float:
    with av.open(str(clip)) as c:
        meta = {k.lower(): v for k, v in c.metadata.items()}
    return float(meta["avar_media_start"])


def _tracks(clip: Path) -> list[str]:
    with av.open(str(clip)) as c:
        return sorted(s.type for s in c.streams)


def _watch(predictor, run_steps, sources, config: WatchConfig, realtime: bool = False) -> tuple[list[dict], object]:
    buf = io.StringIO()
    summary = run_watch(predictor, [parse_source(str(s), realtime=realtime) for s in sources], config,
                        EventHub([JsonLinesSink(buf)]), threading.Event(), run_steps=run_steps)
    return [json.loads(line) for line in buf.getvalue().splitlines()], summary


@pytest.fixture(scope="module")
def predictor(xd_grid_run: Path):
    from live import load_watch_predictor

    return load_watch_predictor(xd_grid_run)


def test_every_alert_gets_a_clip_with_its_margins_frames_and_tracks(predictor, tmp_path: Path) -> None:
    """Two cameras in one watch, sending in real time, one with audio and one without,
    each with an event: each alert_end (held until the camera has sent ``post_s`` more
    than the cooldown) names an MP4 that starts at the keyframe at or before t_start - pre_s and
    ends at or after t_end + post_s (within a GOP), whose frames are the camera's own,
    bit for bit, covering the whole alert; audio only where the camera has it."""
    pre, post = 2.0, 3.0
    with_audio = _stream_file(tmp_path / "door.ts", 13.0, (4.0, 7.0), audio=True, seed=3)
    silent = _stream_file(tmp_path / "yard.ts", 13.0, (4.0, 7.0), audio=False, seed=5)
    clips = tmp_path / "clips"
    config = WatchConfig(alerts=AlertConfig(threshold=0.5, min_duration=1.0, cooldown=1.5),
                         clips=ClipConfig(str(clips), pre_s=pre, post_s=post, buffer_s=30.0))
    events, summary = _watch(*predictor, [with_audio, silent], config, realtime=True)
    ends = [e for e in events if e["type"] == ALERT_END]
    assert {e["source"] for e in ends} == {str(with_audio), str(silent)}, [e["type"] for e in events]
    assert summary.clips_written == len(ends) and summary.clip_failures == 0
    for source, has_audio in ((with_audio, True), (silent, False)):
        kinds = [e["type"] for e in events if e["source"] == str(source) and e["type"] != "score"]
        assert kinds[-1] == "ended" and kinds.index(ALERT_END) < kinds.index("ended")
        end = next(e for e in ends if e["source"] == str(source))
        clip = Path(end["clip"])
        assert clip.parent == clips and clip.suffix == ".mp4" and clip.is_file()
        assert clip.name.startswith(slug(str(source))) and f"alert{end['alert_id']:04d}" in clip.name
        assert _tracks(clip) == (["audio", "video"] if has_audio else ["video"])
        zero = _media_start(clip)
        times, images = _decoded(clip, -zero)               # clip time + zero = media time
        src_times, src_images = _decoded(source, probe(source).start)
        want_from, want_to = end["t_start"] - pre, min(end["t_end"] + post, src_times[-1])
        assert want_from - GOP_S - 1e-3 <= times[0] <= want_from + 1e-3, (times[0], end)
        assert want_to - 1e-3 <= times[-1] + 1 / FPS and times[-1] <= want_to + GOP_S, (times[-1], end)
        by_time = {round(t, 3): img for t, img in zip(src_times, src_images)}
        for t, img in zip(times, images):                   # the camera's own frames, not re-encoded
            assert np.array_equal(by_time[round(t, 3)], img), t
        alert_frames = [t for t in src_times if end["t_start"] <= t <= end["t_end"]]
        assert alert_frames and all(round(t, 3) in {round(x, 3) for x in times} for t in alert_frames)
        assert len(times) == len(set(round(t, 3) for t in times))
        if has_audio:                                       # the camera's sound, all along the clip
            with av.open(str(clip)) as c:
                audio = [float(f.pts * f.time_base) for f in c.decode(audio=0)]
            assert audio[0] <= 0.1 and audio[-1] >= times[-1] - zero - 0.1, (audio[0], audio[-1], times[-1] - zero)


@documents("cli.py watch")
def test_a_clip_that_cannot_be_written_is_counted_and_scoring_goes_on(xd_grid_run: Path, tmp_path: Path) -> None:
    """``cli.py watch --clips`` with a folder budget smaller than one clip: the clip is
    lost (counted, logged), its alert_end goes out with clip null, and every step is still
    scored; a clips folder that cannot be made is refused before the run is loaded."""
    source = _stream_file(tmp_path / "cam.ts", 10.0, (3.0, 6.0), audio=True, seed=3)
    clips = tmp_path / "clips"
    result = cli("watch", xd_grid_run, source, "--cooldown", "1.5", "--clips", clips, "--clip-pre", "1",
                 "--clip-post", "1", "--clips-max-bytes", "2000", "--clips-max-age", "3600")
    assert result.exit_code == 0, result.output
    events = [json.loads(line) for line in result.stdout.splitlines() if line.startswith("{")]
    ends = [e for e in events if e["type"] == ALERT_END]
    assert ends and all(e["clip"] is None for e in ends)
    assert not list(clips.iterdir())                        # no clip, no temporary left behind
    records = [e for e in events if e["type"] == "score"]
    assert records[-1]["t"] >= 9.0 and events[-1]["type"] == "ended"
    (tmp_path / "file").write_text("")
    refused = cli("watch", xd_grid_run, source, "--clips", tmp_path / "file" / "clips")
    assert refused.exit_code == 2 and "--clips" in refused.output and "cannot make the folder" in refused.output


def test_an_rtsp_camera_that_reboots_mid_clip(predictor, tmp_path: Path) -> None:
    """A real RTSP session (H.264 + AAC) whose camera drops the connection at 3 s, 0.5 s
    after its event, and comes back: the clip spans both connections (the second one's
    packets from its first keyframe, on the camera's continued media time), decodes
    whole with rising timestamps, and has both tracks."""
    from synth.live_stream import StreamEvent, StreamPlan
    from tests.loopback_rtsp import LoopbackRtspServer

    plan = StreamPlan(seconds=7.5, seed=5, audio=True, size=(64, 48), event=StreamEvent(0.5, 2.5))
    clips = tmp_path / "clips"
    config = WatchConfig(stall_timeout=1.0, duration=7.3, alerts=AlertConfig(threshold=0.5, min_duration=1.0,
                                                                             cooldown=1.0),
                         clips=ClipConfig(str(clips), pre_s=0.5, post_s=3.0, buffer_s=30.0))
    with LoopbackRtspServer(plan) as cam:
        reboot = threading.Timer(3.0, cam.reboot, args=(0.8,))
        reboot.start()
        try:
            events, summary = _watch(*predictor, [cam.url], config)
        finally:
            reboot.cancel()
    kinds = [e["type"] for e in events if e["type"] != "score"]
    assert "reconnected" in kinds and kinds.index(ALERT_END) < kinds.index("ended"), kinds
    end = next(e for e in events if e["type"] == ALERT_END)
    reconnected = next(e for e in events if e["type"] == "reconnected")
    clip = Path(end["clip"])
    assert clip.suffix == ".mp4" and _tracks(clip) == ["audio", "video"] and summary.clips_written == 1
    times, images = _decoded(clip, -_media_start(clip))
    assert times[0] <= max(0.0, end["t_start"] - 0.5) + GOP_S and all(b > a for a, b in zip(times, times[1:]))
    assert times[-1] >= end["t_end"] + 3.0 - 1e-3 and times[-1] > reconnected["t"] + 0.5, (times[-1], reconnected)
    assert len(images) >= 2 * FPS


# -- the ring buffer and the recorder, on real packets, without a model ------------------------------------

def _read_into(ring: PacketRing, path: Path) -> float:
    """Demux ``path`` into ``ring`` as a camera's reader does (media time 0 at the file's
    start); returns the media time of the last packet."""
    origin = probe(path).start
    with av.open(str(path)) as c:
        streams = [s for s in (c.streams.video[:1] + c.streams.audio[:1])]
        video = c.streams.video[0] if c.streams.video else None
        audio = c.streams.audio[0] if c.streams.audio else None
        ring.connect(video, audio)
        for packet in c.demux(streams):
            ring.push(packet, origin, video is not None)
    ring.end()
    return ring.newest_t


def _noise_clip(path: Path, seconds: float, gop: int, size: tuple[int, int] = (320, 240)) -> Path:
    """Video of random pixels (nothing compresses: about 10 Mbit/s at 320x240), a
    keyframe every ``gop`` frames, no audio."""
    rng = np.random.default_rng(0)
    with av.open(str(path), "w") as out:
        stream = out.add_stream("libx264", rate=FPS)
        stream.width, stream.height, stream.pix_fmt, stream.gop_size = *size, "yuv420p", gop
        stream.options = {"preset": "ultrafast", "scenecut": "0"}
        for i in range(int(seconds * FPS)):
            frame = av.VideoFrame.from_ndarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8),
                                               format="rgb24")
            frame.pts = i
            out.mux(stream.encode(frame))
        out.mux(stream.encode())
    return path


def test_the_ring_buffer_stays_under_its_bounds_on_a_high_bitrate_source(tmp_path: Path) -> None:
    """A stream of noise (about 10 Mbit/s): the buffer never holds more than its bytes,
    spans at most buffer_s, and always starts at a keyframe; a GOP larger than the whole
    buffer is dropped whole and counted."""
    noisy = _noise_clip(tmp_path / "noisy.mkv", 4.0, gop=12)
    assert noisy.stat().st_size > 3_000_000                 # > 6 Mbit/s
    ring = PacketRing("noisy", buffer_s=3.0, buffer_bytes=1_000_000)
    _read_into(ring, noisy)
    assert 0 < ring.peak_bytes <= 1_000_000 and ring.bytes <= 1_000_000 and ring.overflows == 0
    start, newest = ring.span
    assert newest - start <= 3.0
    clip = ring.take(start, newest)
    assert clip is not None and clip.packets[0].kind == "video" and clip.packets[0].keyframe
    assert sum(len(p.data) for p in clip.packets) > 500_000  # it holds what fits, not nothing
    # by time: a 1 s buffer of the same stream holds about a second
    ring = PacketRing("noisy", buffer_s=1.0, buffer_bytes=10**9)
    _read_into(ring, noisy)
    start, newest = ring.span
    assert 0.4 <= newest - start <= 1.0
    # a keyframe every 3 s: one GOP is larger than a 1 MB buffer, dropped whole
    ring = PacketRing("long-gop", buffer_s=30.0, buffer_bytes=1_000_000)
    _read_into(ring, _noise_clip(tmp_path / "long_gop.mkv", 4.0, gop=72))
    assert ring.overflows >= 1 and ring.peak_bytes <= 1_000_000


def _alert(source: str, alert_id: int, t_start: float, t_end: float) -> list[AlertEvent]:
    now = time.time()
    return [AlertEvent(ALERT_START, source, t_start, None, "fight", 0.9, now - (t_end - t_start), alert_id, t_start),
            AlertEvent(ALERT_END, source, t_start, t_end, "fight", 0.9, now, alert_id, t_start)]


def _record(tmp_path: Path, alerts: int, **media) -> tuple[Path, list[AlertEvent], ClipRecorder]:
    """Clips of ``alerts`` one-second alerts of a real file, through a recorder."""
    from tests.media_factory import write_clip

    source = write_clip(tmp_path / "cam.mp4", duration=6.0, fps=15, gop=15, **media)
    folder = tmp_path / "clips"
    published: list[AlertEvent] = []
    recorder = ClipRecorder(ClipConfig(str(folder), pre_s=0.5, post_s=0.5, buffer_s=20.0), published.append)
    try:
        _read_into(recorder.ring("cam"), source)
        for i in range(alerts):
            for event in _alert("cam", i + 1, 1.0 + i, 2.0 + i):
                recorder.submit(event)
    finally:
        recorder.close()
    return folder, published, recorder


def test_retention_removes_the_oldest_clips_first_by_size_and_by_age(tmp_path: Path) -> None:
    folder, published, recorder = _record(tmp_path, 3)
    assert [e.type for e in published] == [ALERT_START, ALERT_END] * 3
    clips = [Path(e.clip) for e in published if e.type == ALERT_END]
    assert all(c.is_file() for c in clips) and recorder.written == 3 and recorder.failures == 0
    for age, clip in zip((300.0, 200.0, 100.0), clips):      # the first is the oldest
        os.utime(clip, (time.time() - age, time.time() - age))
    (folder / "notes.txt").write_text("not a clip: never removed")
    sizes = [c.stat().st_size for c in clips]
    # by size: room for the two newest only
    removed = retain_clips(folder, max_bytes=sizes[1] + sizes[2], max_age_s=1e6)
    assert removed == [clips[0]] and clips[1].is_file() and clips[2].is_file()
    # by age: older than 150 s
    removed = retain_clips(folder, max_bytes=10**9, max_age_s=150.0)
    assert removed == [clips[1]] and clips[2].is_file() and (folder / "notes.txt").is_file()


def test_a_quiet_recorder_still_ages_its_clips_out(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Retention by age runs on its own clock, not only after an alert: a camera that
    stays quiet for days still loses its old clips (a privacy promise, not a disk one)."""
    import live.clips

    monkeypatch.setattr(live.clips, "RETAIN_EVERY_S", 0.2)
    folder = tmp_path / "clips"
    folder.mkdir()
    recorder = ClipRecorder(ClipConfig(str(folder), max_age_s=60.0), publish=lambda event: None)
    try:
        old = folder / "cam-0000-20261201T000000-alert1.mp4"
        old.write_bytes(b"\0" * 10)          # made after the recorder started: only its clock removes it
        os.utime(old, (time.time() - 3600, time.time() - 3600))
        deadline = time.monotonic() + 10
        while old.exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not old.exists()
    finally:
        recorder.close()


def test_the_page_plays_the_clip_with_its_token(tmp_path: Path) -> None:
    """The browser view serves the clip its alert_end named (with range requests, for a
    <video>), only with the token, and nothing else under that route."""
    from live.web import WebConfig, WebView
    from tests.test_live_web import get

    _, published, _ = _record(tmp_path, 1)
    clip = Path(published[-1].clip)
    view = WebView(WebConfig(port=0, threshold=0.5, token="s3cret-token"), sources=("cam",))
    url = view.start()
    try:
        for event in published + _alert("cam", 2, 4.0, 4.5):    # alert 2: no clip
            view.handle(event)
        auth = {"Authorization": "Bearer s3cret-token"}
        deadline = time.monotonic() + 10
        while True:
            status, body, _ = get(url + "api/alerts", auth)
            alerts = {a["alert_id"]: a for a in json.loads(body)["alerts"]}
            if len(alerts) == 2 or time.monotonic() > deadline:
                break
            time.sleep(0.05)
        assert alerts[1]["clip_url"] == "api/alerts/0-1/clip" and alerts[1]["clip"] == str(clip)
        assert alerts[2]["clip_url"] is None
        assert get(url + alerts[1]["clip_url"])[0] == 401
        status, body, headers = get(url + alerts[1]["clip_url"], auth)
        assert status == 200 and body == clip.read_bytes() and headers["Content-Type"] == "video/mp4"
        status, body, _ = get(url + alerts[1]["clip_url"], {**auth, "Range": "bytes=0-99"})
        assert status == 206 and body == clip.read_bytes()[:100]
        status, body, _ = get(url + alerts[1]["clip_url"] + "?token=s3cret-token")
        assert status == 200 and body == clip.read_bytes()
        for bad in ("api/alerts/0-2/clip", "api/alerts/0-9/clip", "api/alerts/..%2F..%2Fetc/clip",
                    "api/alerts/0-1/clip/../../../etc/passwd"):
            assert get(url + bad, auth)[0] in (403, 404), bad
        clip.unlink()                                         # removed by retention: gone
        assert get(url + alerts[1]["clip_url"], auth)[0] == 404
    finally:
        view.close()


def test_write_failures_lose_the_clip_not_the_event(tmp_path: Path) -> None:
    """The clips folder replaced by a file (every write fails with an OSError), and the
    order of a camera's alert events kept while an end waits for its clip."""
    from tests.media_factory import write_clip

    media = write_clip(tmp_path / "cam.mp4", duration=4.0, fps=15, gop=15, tone_hz=None)
    folder = tmp_path / "clips"
    published: list[AlertEvent] = []
    recorder = ClipRecorder(ClipConfig(str(folder), pre_s=0.5, post_s=0.5, buffer_s=20.0), published.append)
    try:
        ring = recorder.ring("cam")
        start, end = _alert("cam", 1, 1.0, 2.0)
        recorder.submit(start)
        recorder.submit(end)                                # waits: no media buffered yet
        later = _alert("cam", 2, 2.5, 3.0)[0]
        recorder.submit(later)                              # held behind the end
        assert [e.type for e in published] == [ALERT_START] and recorder.pending("cam") == 2
        folder.rmdir()
        folder.write_text("a file where the folder was")
        _read_into(ring, media)
        deadline = time.monotonic() + 10
        while recorder.pending("cam") and time.monotonic() < deadline:
            time.sleep(0.05)
    finally:
        recorder.close()
    assert [(e.type, e.alert_id, e.clip) for e in published] == [(ALERT_START, 1, None), (ALERT_END, 1, None),
                                                                 (ALERT_START, 2, None)]
    assert recorder.failures == 1 and recorder.written == 0


def test_an_audio_only_camera_and_codecs_mp4_refuses(tmp_path: Path) -> None:
    """An audio-only camera gets an audio-only MP4 (its packets are all keyframes); a
    camera whose codecs MP4 does not take gets Matroska (VP8 video) or QuickTime (G.711
    audio, which Matroska refuses too), still without re-encoding."""
    from tests.media_factory import write_clip

    for name, media, suffix in (("mic.mkv", dict(video=False), ".mp4"),
                                ("vp8.mkv", dict(vcodec="libvpx", fps=15, gop=15), ".mkv"),
                                ("g711.mov", dict(acodec="pcm_mulaw", sample_rate=8000, fps=15, gop=15), ".mov")):
        source = write_clip(tmp_path / name, duration=4.0, **media)
        published: list[AlertEvent] = []
        recorder = ClipRecorder(ClipConfig(str(tmp_path / "clips"), pre_s=0.5, post_s=0.5, buffer_s=20.0),
                                published.append)
        try:
            _read_into(recorder.ring(name), source)
            for event in _alert(name, 1, 1.5, 2.5):
                recorder.submit(event)
        finally:
            recorder.close()
        clip = Path(published[-1].clip)
        assert clip.suffix == suffix and recorder.written == 1, published[-1]
        assert _tracks(clip) == (["audio"] if name == "mic.mkv" else ["audio", "video"])
        with av.open(str(clip)) as c:
            samples = sum(f.samples for f in c.decode(audio=0))
            rate = c.streams.audio[0].sample_rate
        assert 1.9 <= samples / rate <= 2.0 + 1.1, samples / rate   # 1 s to 3 s, cut on its packets


def test_clip_options_are_checked() -> None:
    with pytest.raises(InvalidInput, match="--clip-pre"):
        ClipConfig("clips", pre_s=-1.0)
    with pytest.raises(InvalidInput, match="buffer_s"):
        ClipConfig("clips", pre_s=40.0, post_s=30.0)
    with pytest.raises(InvalidInput, match="--clips-max-bytes"):
        ClipConfig("clips", max_bytes=0)
