"""Live mode (``cli.py watch``): alerts with hysteresis, the unit plans, parity with the
offline path, dropping when scoring is slow, and the webhook.

Streams written in real time (a pipe, udp) are in tests/test_live_streams.py. The run
watched here is the stand-in's MIL run on the snippet grid (``xd_grid_run``) and the
fixed-step synthetic run (``synthetic_run``)."""

from __future__ import annotations

import http.server
import io
import json
import os
import socket
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from cache_schema import ClipRecord, InvalidInput, StepLayout
from live import AlertConfig, AlertTracker, EventHub, JsonLinesSink, WatchConfig, parse_source, run_watch
from live.plans import GridPlan, WindowPlan

pytestmark = pytest.mark.usefixtures("one_thread")


def events_of(buf: io.StringIO) -> list[dict]:
    return [json.loads(line) for line in buf.getvalue().splitlines()]


def watch(predictor, sources, config: WatchConfig, run_steps: int = 200, sinks=(), realtime: bool = False,
          watchdog_s: float | None = None) -> tuple[list[dict], object]:
    """``run_watch`` over ``sources`` (paths or URLs) into JSON lines; the events and the
    summary. ``watchdog_s``: stop it after that many seconds of wall time (a stream that
    may never end)."""
    buf = io.StringIO()
    stop = threading.Event()
    watchdog = threading.Timer(watchdog_s, stop.set) if watchdog_s is not None else None
    if watchdog is not None:
        watchdog.start()
    try:
        summary = run_watch(predictor, [parse_source(str(s), realtime=realtime) for s in sources], config,
                            EventHub([JsonLinesSink(buf), *sinks]), stop, run_steps=run_steps)
    finally:
        if watchdog is not None:
            watchdog.cancel()
        stop.set()
    return events_of(buf), summary


# -- alerts -------------------------------------------------------------------------------

def _feed(tracker: AlertTracker, scores: list[float], step: float = 0.5) -> list:
    out = []
    for i, s in enumerate(scores):
        out += [e for e, _ in tracker.update(i * step, (i + 1) * step, s, "violent" if s >= 0.5 else "normal",
                                             time.time(), image=i)]
    return out


def test_alerts_have_hysteresis() -> None:
    cfg = AlertConfig(threshold=0.5, min_duration=1.0, cooldown=2.0)
    # a blip shorter than min_duration is no alert; a fight with a short pause is one alert
    scores = [0.1, 0.9, 0.1, 0.1] + [0.9, 0.8, 0.95, 0.2, 0.1, 0.9, 0.7] + [0.1] * 6
    events = _feed(AlertTracker("cam", cfg), scores)
    assert [e.type for e in events] == ["alert_start", "alert_end"]
    start, end = events
    assert start.t_start == 2.0 and start.t_end is None and start.alert_id == end.alert_id == 1
    assert end.t_end == 5.5 and end.peak_score == 0.95 and end.peak_t == 3.5 and end.label == "violent"
    # two fights further apart than the cooldown are two alerts; an open alert closes at the end
    tracker = AlertTracker("cam", cfg)
    events = _feed(tracker, [0.9] * 3 + [0.1] * 5 + [0.9] * 3)
    assert [e.type for e in events] == ["alert_start", "alert_end", "alert_start"]
    assert [e.type for e, _ in tracker.finish(time.time())] == ["alert_end"]
    with pytest.raises(InvalidInput, match="threshold"):
        AlertConfig(threshold=1.5)


# -- standard input -------------------------------------------------------------------------

def test_pipe_stalls_only_after_its_first_bytes() -> None:
    """A pipe whose writer has not started yet is waiting, not stalled; once bytes have
    come, a silence of ``stall_timeout`` is one stall, and the next bytes resume it with
    the silence measured from the bytes' arrival."""
    from live.sources import PipeInput

    read_fd, write_fd = os.pipe()
    stalls: list[float] = []
    gaps: list[float] = []
    with os.fdopen(read_fd, "rb", buffering=0) as stream:
        pipe = PipeInput(stream, 0.3, threading.Event(), lambda: stalls.append(time.monotonic()), gaps.append)
        got: list[bytes] = []
        reading = threading.Thread(target=lambda: got.append(pipe.read(16)))
        reading.start()
        time.sleep(0.8)                       # no writer yet: more than twice the stall timeout
        assert not stalls
        os.write(write_fd, b"abc")
        reading.join(5)
        assert got == [b"abc"] and not stalls
        reading = threading.Thread(target=lambda: got.append(pipe.read(16)))
        reading.start()
        time.sleep(0.8)                       # the writer stops
        assert len(stalls) == 1
        os.write(write_fd, b"de")
        reading.join(5)
        assert got[-1] == b"de" and len(gaps) == 1 and 0.7 <= gaps[0] < 3.0
        os.close(write_fd)
        assert pipe.read(16) == b""           # end of stream


# -- plans ----------------------------------------------------------------------------------

def test_plans_cut_streams_as_offline_cuts_files() -> None:
    from extract.windows import plan_windows, window_steps

    layout = StepLayout(step_seconds=0.6667, frames_per_step=2)
    plan = GridPlan(layout, context=1.0)
    bounds = layout.segments(20.0)
    for i in (0, 1, 7, 28):  # (29, the last, is cut at the file's end)
        unit = plan.unit(i)
        assert np.array_equal(unit.step_bounds[0], bounds[i])
        assert np.array_equal(unit.targets, layout.frame_times(bounds[i:i + 1]).reshape(-1))
        assert unit.audio_hi == int(np.rint(bounds[i, 1] * 16000))
        assert unit.audio_lo == max(0, unit.audio_hi - 16000)
    wplan = WindowPlan(steps=10, window=5.0, hop=2.5)
    offline = plan_windows(30.0, 5.0, 2.5)
    segs, centres = window_steps(offline, 10)
    for k in range(len(offline) - 1):
        unit = wplan.unit(k)
        assert (unit.start, unit.end) == tuple(offline[k])
        assert np.array_equal(unit.step_bounds, segs[k]) and np.array_equal(unit.targets, centres[k])
    assert parse_source("udp://127.0.0.1:5000").kind == "stream"
    assert parse_source("-").kind == "stdin" and parse_source("/dev/video0").format == "v4l2"
    with pytest.raises(InvalidInput, match="no such file"):
        parse_source("/nonexistent/cam.mp4")
    with pytest.raises(InvalidInput, match="unknown source scheme"):
        parse_source("gopher://cam")


# -- parity -----------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def grid_predictor(xd_grid_run: Path):
    from live import load_watch_predictor

    return load_watch_predictor(xd_grid_run)


def _offline_window_scores(predictor, video, audio, vmask, amask, window: int) -> np.ndarray:
    """The head over the last ``window`` cached steps ending at each step: what a live
    stream of the same file must give, step for step."""
    out = []
    for i in range(len(vmask)):
        j = max(0, i - window + 1)
        record = ClipRecord(key="x", status="ok", video=video[j:i + 1], audio=audio[j:i + 1],
                            video_mask=vmask[j:i + 1], audio_mask=amask[j:i + 1])
        _, step_p, _ = predictor.score_records([record])
        out.append(float(predictor.anomaly(step_p[0, i - j])))
    return np.array(out)


def test_grid_run_gives_the_offline_scores_step_for_step(grid_predictor, xd_standin_grid: dict) -> None:
    from temporal import load_cache

    predictor, run_steps = grid_predictor
    data = load_cache(xd_standin_grid["cache"])
    test = json.loads(xd_standin_grid["split"].read_text())["test"]
    key = next(k for k in test if "label_B" in k)          # a violent test video
    row = list(data.keys).index(key)
    path = xd_standin_grid["root"] / "videos" / key
    window = 12
    events, summary = watch(predictor, [path], WatchConfig(window=window * 0.6667), run_steps)
    records = [e for e in events if e["type"] == "score"]
    lo, hi = int(data.clips.offsets[row]), int(data.clips.offsets[row + 1])
    clips = data.clips
    offline = _offline_window_scores(predictor, np.asarray(clips.video[lo:hi]), np.asarray(clips.audio[lo:hi]),
                                     np.asarray(clips.video_mask[lo:hi]), np.asarray(clips.audio_mask[lo:hi]), window)
    # every step of the file, the last one cut at the file's end as offline extraction cuts it
    assert len(records) == hi - lo
    live = np.array([r["score"] for r in records])
    np.testing.assert_allclose(live, offline[:len(live)], atol=1e-4)
    assert [r["t"] for r in records][:-1] == pytest.approx(list(np.arange(1, len(live)) * 0.6667), abs=1e-3)
    assert (len(live) - 1) * 0.6667 < records[-1]["t"] <= len(live) * 0.6667 + 1e-3
    assert all(0 <= r["latency_s"] < 30 for r in records)
    assert events[0]["type"] == "started" and events[-1]["type"] == "ended"
    assert summary.sources[str(path)].dropped == 0          # a file read as fast as it decodes waits, never drops


def test_fixed_step_run_gives_predict_windows_scores(synthetic_run: Path, tmp_path: Path) -> None:
    """A run trained on T steps per clip: windows every --hop cut into T steps exactly as
    ``predict --window`` cuts them, with audio: the same class probabilities per window."""
    from apply import PredictConfig, load_predictor
    from live import load_watch_predictor
    from tests.test_predict import render

    video = tmp_path / "long.mp4"
    render(video, "explosion", 12.0, seed=903, event_at=6.0, event_span=4.0)
    window, hop = 5.0, 2.5
    offline = load_predictor(synthetic_run, PredictConfig(device="cpu", window=window, hop=hop)).predict(
        video, PredictConfig(device="cpu", window=window, hop=hop))
    predictor, run_steps = load_watch_predictor(synthetic_run, PredictConfig(device="cpu"))
    events, _ = watch(predictor, [video], WatchConfig(window=window, hop=hop), run_steps)
    records = [e for e in events if e["type"] == "score"]
    regular = [w for w in offline.windows if abs((w.start / hop) - round(w.start / hop)) < 1e-9]  # not the end-aligned one
    assert len(records) == len(regular) >= 3
    for r, w in zip(records, regular):
        assert (r["t_start"], r["t"]) == pytest.approx((w.start, w.end), abs=1e-4)
        assert r["label"] == w.label
        np.testing.assert_allclose([r["probs"][c] for c in predictor.class_names], w.probs, atol=1e-5)


class _SlowVideo:
    """The run's video backbone, slowed down: scoring falls behind a real-time source."""

    def __init__(self, inner, delay: float) -> None:
        self.inner, self.delay = inner, delay
        self.dim, self.transform = inner.dim, inner.transform
        self.batch_size = getattr(inner, "batch_size", 1)

    def embed(self, images):
        time.sleep(self.delay)
        return self.inner.embed(images)


def _short_standin(tmp_path: Path, seconds: float, audio: bool = True) -> Path:
    from synth.encode import write_clip

    rng = np.random.default_rng(0)
    fps, n = 24, int(seconds * 24)
    frames = (rng.integers(0, 60, (n, 96, 128, 3))).astype(np.uint8)
    path = tmp_path / f"short{'_noaudio' if not audio else ''}.mp4"
    from fractions import Fraction
    write_clip(path, "mp4", "aac" if audio else None, 128, 96, Fraction(fps), np.arange(n) / fps, False, iter(frames),
               rng.normal(0, 0.1, (1, int(seconds * 16000))).astype(np.float32) if audio else None, 16000)
    return path


def test_slow_scoring_drops_whole_steps_and_latency_stays_bounded(grid_predictor, tmp_path: Path) -> None:
    from apply import Predictor

    predictor, run_steps = grid_predictor

    delay = 1.0  # per scoring round, against a step every 0.67 s
    slowed = Predictor(predictor.model, predictor.class_names, predictor.layout, str(predictor.feature_dtype),
                       _SlowVideo(predictor.video_backbone, delay), predictor.audio_backbone,
                       normal=predictor.normal_class)
    video = _short_standin(tmp_path, 5.0)
    events, summary = watch(slowed, [video], WatchConfig(depth=1), run_steps, realtime=True)
    records = [e for e in events if e["type"] == "score"]
    drops = [e for e in events if e["type"] == "dropped_steps"]
    assert drops and sum(d["count"] for d in drops) == drops[-1]["total"] == summary.sources[str(video)].dropped
    assert len(records) + drops[-1]["total"] == 8        # every step (7 whole, the last cut at 5 s) scored or counted
    # latency: at most the queue (1) plus the round in progress, whatever the file's length
    assert max(r["latency_s"] for r in records) < 2 * delay + 1.0


def test_webhook_gets_alerts_and_a_dead_receiver_delays_nothing(grid_predictor, xd_standin_grid: dict) -> None:
    from live import WebhookSink

    predictor, run_steps = grid_predictor
    got: list[dict] = []

    class Receiver(http.server.BaseHTTPRequestHandler):
        def do_POST(self) -> None:  # noqa: N802
            got.append(json.loads(self.rfile.read(int(self.headers["Content-Length"]))))
            self.send_response(204)
            self.end_headers()

        def log_message(self, *args) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Receiver)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    silent = socket.socket()                      # accepts connections, never answers
    silent.bind(("127.0.0.1", 0))
    silent.listen(16)
    test = json.loads(xd_standin_grid["split"].read_text())["test"]
    video = xd_standin_grid["root"] / "videos" / next(k for k in test if "label_B" in k)
    try:
        good = WebhookSink(f"http://127.0.0.1:{server.server_address[1]}/alerts")
        dead = WebhookSink(f"http://127.0.0.1:{silent.getsockname()[1]}/alerts", timeout=30.0, retries=0)
        t0 = time.monotonic()
        events, _ = watch(predictor, [video], WatchConfig(), run_steps, sinks=[good, dead])
        took = time.monotonic() - t0
        good.close()
        alerts = [e for e in events if e["type"].startswith("alert_")]
        assert alerts and got == alerts                           # every alert event, in order, as JSON
        assert took < 25                                          # the dead receiver (30 s timeout) held up nothing
        t0 = time.monotonic()
        dead.close(wait=1.0)                                      # nor the end of the watch: given up, counted
        assert time.monotonic() - t0 < 3.0
        assert dead.delivered == 0 and dead.dropped + dead.failed == len(alerts)
    finally:
        server.shutdown()
        silent.close()


@pytest.mark.parametrize("audio", [True, False], ids=["with-audio", "no-audio"])
def test_fused_grid_run_matches_offline_extraction_with_and_without_audio(xd_grid_fused_run: Path, tmp_path: Path,
                                                                          audio: bool) -> None:
    """Audio too: a fused run's live scores equal the head over stage 1's own features of
    the file (``decode_clip`` + ``FeatureExtractor``, as ``extract`` computes them), because
    both window a step's audio causally (the step and its context before it); a stream
    without audio is scored with audio masked as missing."""
    from extract import Decoded, decode_clip
    from extract.pipeline import worker_transform
    from live import load_watch_predictor
    from synth.live_stream import StreamEvent, StreamPlan, write_stream

    predictor, run_steps = load_watch_predictor(xd_grid_fused_run)
    assert predictor.audio_backbone.preprocessing["windows"] == "causal_step"
    video = tmp_path / "cam.ts"
    # 7.9 s: 11 whole steps and a last one cut at 7.9 s, whose frame target (7.667 -> 7.617 s)
    # and causal audio window move; without audio its whole-step target is met by a frame
    # before the file ends, and it must still wait to be cut
    write_stream(str(video), StreamPlan(seconds=7.9, seed=6, size=(64, 48), audio=audio,
                                        event=StreamEvent(3.0, 5.0, "B2")), realtime=False)
    clip = decode_clip(video, predictor.layout, frame_transform=worker_transform(predictor.video_backbone))
    record = predictor.feature_extractor.records([Decoded("x", clip=clip)], isolate_failures=False)[0]
    assert record.audio_mask.any() == audio
    window = 6
    audio_features = record.audio if record.audio is not None else np.zeros((len(record.video_mask),
                                                                             predictor.audio_backbone.dim), np.float32)
    offline = _offline_window_scores(predictor, record.video, audio_features, record.video_mask, record.audio_mask,
                                     window)
    events, _ = watch(predictor, [video], WatchConfig(window=window * 0.6667), run_steps)
    live = np.array([e["score"] for e in events if e["type"] == "score"])
    assert len(live) == len(offline)
    np.testing.assert_allclose(live, offline[:len(live)], atol=1e-4)
    # heard / seen evidence (apply/attribution.py): with the audio masked, a stream without
    # audio scores exactly as it did; with audio, both modalities have their own score
    evidence = [e["evidence"] for e in events if e["type"] == "score"]
    if audio:
        assert all(e["audio"] is not None and e["video"] is not None for e in evidence)
    else:
        assert all(e["audio"] is None for e in evidence)
        np.testing.assert_allclose([e["video"] for e in evidence], live, atol=1e-5)
