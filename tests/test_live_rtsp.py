"""Live mode on a real RTSP session: FFmpeg's RTSP client (through PyAV, with the options
``parse_source`` gives an ``rtsp://`` source) against a camera on 127.0.0.1
(``tests/loopback_rtsp.py``: TCP-interleaved RTP carrying MPEG-TS from the project's
real-time writer). The run is the stand-in's MIL run on the snippet grid."""

from __future__ import annotations

import math
import threading
from pathlib import Path

import pytest

from live import AlertConfig, WatchConfig, load_watch_predictor
from synth.live_stream import StreamEvent, StreamPause, StreamPlan
from tests.loopback_rtsp import LoopbackRtspServer
from tests.test_live import watch

pytestmark = pytest.mark.usefixtures("one_thread")
STEP = 0.6667
STALL = 1.0


def _watch(rundir: Path, url: str, config: WatchConfig, watchdog_s: float = 40.0,
           during: threading.Timer | None = None) -> tuple[list[dict], object]:
    predictor, run_steps = load_watch_predictor(rundir)
    if during is not None:
        during.start()
    try:
        return watch(predictor, [url], config, run_steps, watchdog_s=watchdog_s)
    finally:
        if during is not None:
            during.cancel()


def test_rtsp_camera_alerts_at_the_event_and_is_reopened_one_timeout_after_it_stalls(xd_grid_run: Path) -> None:
    """An RTSP camera (H.264 and AAC), an event at 1-3.5 s, and a 2.5 s stop of its sender
    at 4 s (the muxer holds its last audio packets over the stop and sends them first, stamped
    before it: the reopened stream's clock must start at its first video packet): the session is set up over TCP (OPTIONS, DESCRIBE, SETUP, PLAY), every step
    is scored with a finite score and a bounded latency, one alert starts within a step of
    the event, and the stop is reported ``stalled`` one stall timeout after the last packet
    (not two: FFmpeg's RTSP demuxer answers the first timed-out read with the frame its
    parser held), then ``reconnected`` (a new RTSP session) with the silence as its gap,
    and scoring goes on after it on the camera's clock."""
    plan = StreamPlan(seconds=9.0, seed=3, audio=True, size=(64, 48), event=StreamEvent(1.0, 3.5),
                      pause=StreamPause(4.0, 2.5))
    with LoopbackRtspServer(plan) as cam:
        alerts = AlertConfig(threshold=0.5, min_duration=1.0, cooldown=1.5)
        events, summary = _watch(xd_grid_run, cam.url, WatchConfig(stall_timeout=STALL, duration=8.8, alerts=alerts))
        sent = list(cam.sent_at)
    assert cam.feed_error is None
    kinds = [e["type"] for e in events]
    assert kinds[0] == "started" and kinds[-1] == "ended" and summary.sources[cam.url].error is None, kinds
    assert cam.requests[:4] == ["OPTIONS", "DESCRIBE", "SETUP", "PLAY"] and cam.sessions_played == 2, cam.requests
    records = [e for e in events if e["type"] == "score"]
    assert len(records) >= 8 and all(math.isfinite(r["score"]) and 0 <= r["score"] <= 1 for r in records)
    assert all(0 <= r["latency_s"] < 3.0 for r in records), max(r["latency_s"] for r in records)
    starts = [e for e in events if e["type"] == "alert_start"]
    assert len(starts) == 1 and abs(starts[0]["t_start"] - 1.0) <= STEP + 0.05, \
        [(e["type"], e.get("t"), e.get("score")) for e in events]
    assert all(r["score"] < 0.5 for r in records if r["t"] <= 0.7)       # calm before the event

    # The stall, against the server's last packet before the pause and its first after it.
    gaps = [(a, b) for a, b in zip(sent, sent[1:]) if b - a > 1.5]
    assert len(gaps) == 1, gaps
    last_before, first_after = gaps[0]
    stalled = next(e for e in events if e["type"] == "stalled")
    reconnected = next(e for e in events if e["type"] == "reconnected")
    assert kinds.index("stalled") < kinds.index("reconnected")
    assert STALL - 0.1 <= stalled["wall_time"] - last_before <= STALL + 0.5, stalled["wall_time"] - last_before
    assert reconnected["reopened"] is True and stalled["reconnecting"] is True
    assert abs(reconnected["gap_s"] - (first_after - last_before)) <= 0.5, (reconnected, first_after - last_before)
    after = [r for r in records if r["wall_time"] > reconnected["wall_time"]]
    assert len(after) >= 2 and 6.5 <= min(r["t_start"] for r in after) and max(r["t"] for r in after) <= 9.0, \
        [(r["t_start"], r["t"]) for r in after]                                # on the camera's clock again


def test_rtsp_camera_with_audio_that_reboots_is_reconnected(xd_grid_run: Path) -> None:
    """An RTSP camera with audio (AAC beside H.264 in the TS) that drops its connection
    at 3 s and refuses connections for 0.8 s, as a rebooting camera does: an alert at its
    event, the end of the session reported ``stalled`` (``reason: ended``), the refused
    attempts retried, and a new session scored on."""
    plan = StreamPlan(seconds=6.5, seed=5, audio=True, size=(64, 48), event=StreamEvent(0.5, 2.5))
    with LoopbackRtspServer(plan) as cam:
        reboot = threading.Timer(3.0, cam.reboot, args=(0.8,))
        alerts = AlertConfig(threshold=0.5, min_duration=1.0, cooldown=1.0)
        events, summary = _watch(xd_grid_run, cam.url, WatchConfig(stall_timeout=STALL, duration=6.3, alerts=alerts),
                                 during=reboot)
    assert cam.feed_error is None
    kinds = [e["type"] for e in events]
    assert kinds[0] == "started" and kinds[-1] == "ended" and summary.sources[cam.url].error is None, kinds
    assert cam.refused >= 1 and cam.sessions_played == 2, (cam.refused, cam.requests)
    records = [e for e in events if e["type"] == "score"]
    assert all(math.isfinite(r["score"]) and 0 <= r["score"] <= 1 and 0 <= r["latency_s"] < 3.0 for r in records)
    starts = [e for e in events if e["type"] == "alert_start"]
    assert len(starts) == 1 and abs(starts[0]["t_start"] - 0.5) <= STEP + 0.05, \
        [(e["type"], e.get("t"), e.get("score")) for e in events]
    stalled = next(e for e in events if e["type"] == "stalled")
    reconnected = next(e for e in events if e["type"] == "reconnected")
    assert stalled["reason"] == "ended" and kinds.index("stalled") < kinds.index("reconnected")
    assert reconnected["reopened"] is True and 0.8 <= reconnected["gap_s"] <= 3.0, reconnected
    after = [r for r in records if r["wall_time"] > reconnected["wall_time"]]
    assert after and max(r["t"] for r in after) <= 6.5 + STEP, [(r["t_start"], r["t"]) for r in after]
