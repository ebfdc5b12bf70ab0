"""A producer of real ``live.events`` for the browser view's tests, in real time.

It stands where ``cli.py watch`` stands: a thread that publishes score records (four a
second per source, the score moving), a frame a second per source (JPEG made with PIL,
a box that moves and the media time written on it), one alert on the first source
(``alert_start``, then ``alert_end`` with a snapshot JPEG written beside it and, with
``FeedScenario.clip``, a real MP4 clip as ``watch --clips`` names one), and status
events (the second source stalls). ``FeedScenario`` fixes the times, so a test knows
when the alert comes; ``published`` keeps every event in order (what the JSON lines
would hold).
"""

from __future__ import annotations

import io
import math
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from PIL import Image, ImageDraw

from cache_schema import write_bytes
from live.events import (ALERT_END, ALERT_START, STALLED, STARTED, AlertEvent, Event, EventHub, FrameEvent, ScoreRecord,
                         StatusEvent)

# Names as users type them: URLs with slashes, a query string, spaces, non-ASCII.
SOURCES = ("cam 1 / entrance", "rtsp://10.0.0.5:554/stream?ch=2&name=Hof-Süd")


@dataclass(frozen=True)
class FeedScenario:
    sources: tuple[str, ...] = SOURCES
    step_s: float = 0.25
    duration_s: float = 12.0
    alert_start_s: float = 3.0
    alert_end_s: float = 4.5
    stall_second_at_s: float = 2.0
    frame_every_s: float = 1.0
    label: str = "fight"
    clip: bool = False          # the alert_end names a real MP4 (H.264 + AAC) as --clips does


def frame_jpeg(t: float, name: str, size: tuple[int, int] = (320, 180), alarm: bool = False) -> bytes:
    """A small frame that visibly changes with ``t``."""
    image = Image.new("RGB", size, (30, 40, 60) if not alarm else (90, 30, 30))
    draw = ImageDraw.Draw(image)
    x = int((t * 40) % (size[0] - 40))
    draw.rectangle([x, 60, x + 40, 100], fill=(240, 200, 60))
    draw.text((8, 8), f"{name[:30]}  t={t:5.1f}s", fill=(255, 255, 255))
    out = io.BytesIO()
    image.save(out, format="JPEG", quality=80)
    return out.getvalue()


def score_at(t: float, sc: FeedScenario, first: bool) -> float:
    base = 0.15 + 0.08 * math.sin(t * 1.7 + (0.0 if first else 1.0))
    if first and sc.alert_start_s - 0.5 <= t <= sc.alert_end_s:
        return 0.92 - 0.05 * math.cos(t * 3.0)
    return base


class FeedProducer(threading.Thread):
    """Publishes the scenario into ``hub`` in real time until done or ``stop()``."""

    def __init__(self, hub: EventHub, snapshot_dir: Path, scenario: FeedScenario = FeedScenario()) -> None:
        super().__init__(name="live-feed", daemon=True)
        self.hub, self.snapshot_dir, self.scenario = hub, Path(snapshot_dir), scenario
        self.published: list[Event] = []
        self.alert_started = threading.Event()
        self.alert_ended = threading.Event()
        self.alert_started_at: float | None = None
        self._halt = threading.Event()

    def stop(self) -> None:
        self._halt.set()

    def publish(self, event: Event) -> None:
        self.published.append(event)
        self.hub.publish(event)

    def run(self) -> None:
        sc = self.scenario
        clip = None
        if sc.clip:   # written before the clock starts: the feed's timing stays the scenario's
            from tests.media_factory import write_clip

            clip = str(write_clip(self.snapshot_dir / "alert-1.mp4", duration=sc.alert_end_s - sc.alert_start_s + 2.0,
                                  fps=12, size=(320, 180), brightness=lambda t: 0.35 + 0.3 * (1.0 <= t <= 2.5)))
        t0 = time.time()
        for name in sc.sources:
            self.publish(StatusEvent(STARTED, name, t0, 0.0))
        steps = int(sc.duration_s / sc.step_s)
        peak = (0.0, 0.0)
        next_frame = 0.0
        for i in range(1, steps + 1):
            t = i * sc.step_s
            delay = t0 + t - time.time()
            if self._halt.wait(max(0.0, delay)):
                return
            now = time.time()
            for k, name in enumerate(sc.sources):
                stalled = k > 0 and t > sc.stall_second_at_s
                if stalled:
                    continue
                score = score_at(t, sc, k == 0)
                label = sc.label if score > 0.5 else "normal"
                self.publish(ScoreRecord(name, t, t - sc.step_s, now, 0.01, label, score,
                                         {sc.label: score, "normal": 1 - score},
                                         evidence={"audio": score, "video": min(score, 0.2)}))
                if k == 0 and sc.alert_start_s <= t <= sc.alert_end_s and score > peak[1]:
                    peak = (t, score)
            if t >= next_frame:
                next_frame += sc.frame_every_s
                for k, name in enumerate(sc.sources):
                    if not (k > 0 and t > sc.stall_second_at_s):
                        self.publish(FrameEvent(name, t, now, frame_jpeg(t, name, alarm=k == 0 and peak[1] > 0.5)))
            if len(sc.sources) > 1 and abs(t - sc.stall_second_at_s - 1.0) < sc.step_s / 2:
                self.publish(StatusEvent(STALLED, sc.sources[1], now, sc.stall_second_at_s, {"timeout_s": 1.0}))
            first = sc.sources[0]
            if abs(t - sc.alert_start_s) < sc.step_s / 2:
                snap = write_bytes(self.snapshot_dir / "alert-1-start.jpg", frame_jpeg(t, first, alarm=True))
                self.alert_started_at = time.time()
                self.publish(AlertEvent(ALERT_START, first, sc.alert_start_s, None, sc.label, peak[1], now, 1, peak[0],
                                        str(snap), trigger="heard", peak_evidence={"audio": peak[1], "video": 0.2}))
                self.alert_started.set()
            if abs(t - sc.alert_end_s) < sc.step_s / 2:
                snap = write_bytes(self.snapshot_dir / "alert-1.jpg", frame_jpeg(peak[0], first, alarm=True))
                self.publish(AlertEvent(ALERT_END, first, sc.alert_start_s, sc.alert_end_s, sc.label, peak[1], now, 1,
                                        peak[0], str(snap), trigger="heard",
                                        peak_evidence={"audio": peak[1], "video": 0.2}, clip=clip))
                self.alert_ended.set()
