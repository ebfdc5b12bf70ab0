"""What the browser view remembers: per source its latest frame, state and score
timeline, and the alert list, all bounded.

It is a plain object owned by the server's event loop (one thread applies events and
answers requests), so it needs no lock. Every collection has a cap (``WebConfig``): a
watch that runs for weeks keeps the last ``timeline_s`` seconds per source, the last few
frames, the last ``max_alerts`` alerts each with its own short timeline.

URLs name sources by their index (``id``, in order of first appearance) and alerts by a
key ``<source id>-<alert_id>``: source names are whatever the user typed (URLs with
slashes, query strings, spaces), so they appear in JSON only, never in a path. A
snapshot is served from the path its ``AlertEvent`` named, never from a path a request
names.
"""

from __future__ import annotations

import math
from collections import OrderedDict, deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from live.events import (ALERT_END, ALERT_START, DROPPED_STEPS, ENDED, RECONNECTED, STALLED, STARTED, AlertEvent, Event,
                         FrameEvent, ScoreRecord, StatusEvent)

from .config import WebConfig

WAITING, LIVE, STALLED_STATE, RECONNECTING, ENDED_STATE = "waiting", "live", "stalled", "reconnecting", "ended"
# A status event's type -> the state a tile shows. "reconnecting" is accepted too (as a
# type, or as a ``reconnecting: true`` detail of ``stalled``) for a core that tells it.
_STATE_OF_STATUS = {STARTED: LIVE, RECONNECTED: LIVE, STALLED: STALLED_STATE, "reconnecting": RECONNECTING,
                    ENDED: ENDED_STATE}


def _finite(x: float | None) -> float | None:
    return None if x is None or not math.isfinite(x) else x


@dataclass
class SourceState:
    """One source: the newest frames (a few, so an alert without a snapshot file can
    show the frame nearest its peak), the score timeline, the latest class and state."""

    id: int
    name: str
    state: str = WAITING
    label: str | None = None
    score: float | None = None
    evidence: dict[str, float | None] | None = None   # the latest record's (fused runs)
    t: float | None = None
    wall_time: float | None = None
    dropped_steps: int = 0
    last_status: dict[str, Any] | None = None
    frames: deque[FrameEvent] = field(default_factory=deque)
    frame_count: int = 0
    timeline: deque[tuple[float, float | None]] = field(default_factory=deque)
    recording: list[str] = field(default_factory=list)  # keys of alerts whose timeline still grows

    def latest_frame(self) -> FrameEvent | None:
        return self.frames[-1] if self.frames else None

    def frame_near(self, t: float) -> FrameEvent | None:
        return min(self.frames, key=lambda f: abs(f.t - t), default=None)


@dataclass
class AlertState:
    """One alert, its start and end merged by ``(source, alert_id)``, with the timeline
    around it (``alert_context_s`` before the start to as long after the end)."""

    key: str
    source_id: int
    start: AlertEvent | None = None
    end: AlertEvent | None = None
    points: deque[tuple[float, float | None]] = field(default_factory=deque)
    frame: bytes | None = None  # the source's frame nearest the peak: shown when no snapshot file is given

    @property
    def latest(self) -> AlertEvent:
        event = self.end or self.start
        assert event is not None
        return event


class LiveState:
    """Applies events (``apply``) and answers the view's questions in JSON-ready form."""

    def __init__(self, config: WebConfig, sources: tuple[str, ...] = ()) -> None:
        self.config = config
        self.sources: dict[str, SourceState] = {}
        self.by_id: list[SourceState] = []
        self.alerts: OrderedDict[str, AlertState] = OrderedDict()
        self.events = 0
        self.last_wall_time: float | None = None
        for name in sources:
            self.source(name)

    # -- applying events -------------------------------------------------------------
    def source(self, name: str) -> SourceState:
        state = self.sources.get(name)
        if state is None:
            state = SourceState(id=len(self.by_id), name=name,
                                frames=deque(maxlen=max(1, self.config.frames_kept)),
                                timeline=deque(maxlen=self.config.max_timeline_points))
            self.sources[name] = state
            self.by_id.append(state)
        return state

    def apply(self, event: Event) -> None:
        self.events += 1
        self.last_wall_time = event.wall_time
        src = self.source(event.source)
        if src.state == WAITING and not isinstance(event, StatusEvent):
            src.state = LIVE
        if isinstance(event, ScoreRecord):
            self._score(src, event)
        elif isinstance(event, FrameEvent):
            src.frames.append(event)
            src.frame_count += 1
            if src.state in (STALLED_STATE, RECONNECTING) and event.wall_time > self._status_wall_time(src):
                src.state = LIVE  # a new frame after a stall: packets flow again
        elif isinstance(event, AlertEvent):
            self._alert(src, event)
        elif isinstance(event, StatusEvent):
            self._status(src, event)

    def _score(self, src: SourceState, rec: ScoreRecord) -> None:
        score = _finite(rec.score)
        if src.timeline and rec.t < src.timeline[-1][0]:
            src.timeline.clear()  # media time went back (a restarted source): a new timeline
        src.timeline.append((rec.t, score))
        while src.timeline and src.timeline[0][0] < rec.t - self.config.timeline_s:
            src.timeline.popleft()
        src.label, src.score, src.t, src.wall_time = rec.label, score, rec.t, rec.wall_time
        src.evidence = rec.evidence
        for key in list(src.recording):
            alert = self.alerts.get(key)
            end = None if alert is None or alert.end is None else alert.end.t_end
            if alert is not None and (end is None or rec.t <= end + self.config.alert_context_s):
                alert.points.append((rec.t, score))
            else:
                src.recording.remove(key)

    def _alert(self, src: SourceState, event: AlertEvent) -> None:
        key = f"{src.id}-{event.alert_id}"
        alert = self.alerts.get(key)
        if alert is None:
            alert = AlertState(key=key, source_id=src.id, points=deque(maxlen=self.config.max_alert_points))
            since = event.t_start - self.config.alert_context_s
            alert.points.extend(p for p in src.timeline if p[0] >= since)
            self.alerts[key] = alert
            src.recording.append(key)
            while len(self.alerts) > self.config.max_alerts:
                self.alerts.popitem(last=False)
        if event.type == ALERT_END:
            alert.end = event
        elif event.type == ALERT_START and alert.start is None:
            alert.start = event
        near = src.frame_near(event.peak_t)
        if near is not None and (alert.frame is None or event.type == ALERT_END):
            alert.frame = near.jpeg

    def _status(self, src: SourceState, event: StatusEvent) -> None:
        src.last_status = event.to_json()
        if event.type == DROPPED_STEPS:
            src.dropped_steps = int(event.detail.get("total", src.dropped_steps + int(event.detail.get("count", 0))))
            return
        state = _STATE_OF_STATUS.get(event.type)
        if event.type == STALLED and event.detail.get("reconnecting"):
            state = RECONNECTING
        if state is not None:
            src.state = state

    @staticmethod
    def _status_wall_time(src: SourceState) -> float:
        return float((src.last_status or {}).get("wall_time") or 0.0)

    # -- answering -------------------------------------------------------------------
    def sources_json(self, timeline: bool = True) -> dict[str, Any]:
        out = []
        for src in self.by_id:
            frame = src.latest_frame()
            item: dict[str, Any] = {
                "id": src.id, "name": src.name, "threshold": self.config.threshold_of(src.name),
                "state": src.state, "label": src.label, "score": src.score,
                "evidence": None if src.evidence is None else {k: _finite(src.evidence.get(k)) for k in ("audio", "video")},
                "t": src.t, "wall_time": src.wall_time, "dropped_steps": src.dropped_steps,
                "last_status": src.last_status, "frames": src.frame_count,
                "frame_t": None if frame is None else frame.t,
                "frame_url": None if frame is None else f"api/sources/{src.id}/frame.jpg"}
            if timeline:
                item["timeline"] = [[t, s] for t, s in src.timeline]
            out.append(item)
        return {"threshold": self.config.threshold, "timeline_s": self.config.timeline_s, "sources": out}

    def alert_json(self, alert: AlertState) -> dict[str, Any]:
        latest = alert.latest
        has_snapshot = self.snapshot_path(alert) is not None or alert.frame is not None
        return {**latest.to_json(), "key": alert.key, "source_id": alert.source_id, "open": alert.end is None,
                "start_wall_time": None if alert.start is None else alert.start.wall_time,
                "snapshot_url": f"api/alerts/{alert.key}/snapshot.jpg" if has_snapshot else None,
                "timeline_url": f"api/alerts/{alert.key}/timeline",
                "clip_url": f"api/alerts/{alert.key}/clip" if self.clip_path(alert) is not None else None}

    def alerts_json(self) -> dict[str, Any]:
        """Newest first (by the wall time the alert started, else ended)."""
        order = sorted(enumerate(self.alerts.values()), key=lambda ia: ((ia[1].start or ia[1].latest).wall_time, ia[0]),
                       reverse=True)
        return {"alerts": [self.alert_json(a) for _, a in order]}

    def alert_timeline_json(self, alert: AlertState) -> dict[str, Any]:
        return {"alert": self.alert_json(alert), "threshold": self.config.threshold_of(alert.latest.source),
                "points": [[t, s] for t, s in alert.points]}

    def frame(self, source_id: int) -> FrameEvent | None:
        return self.by_id[source_id].latest_frame() if 0 <= source_id < len(self.by_id) else None

    @staticmethod
    def snapshot_path(alert: AlertState) -> Path | None:
        """The JPEG path the core named for this alert (the end's, else the start's)."""
        for event in (alert.end, alert.start):
            if event is not None and event.snapshot:
                return Path(event.snapshot)
        return None

    @staticmethod
    def clip_path(alert: AlertState) -> Path | None:
        """The video clip the core named at the alert's end (``--clips``)."""
        return Path(alert.end.clip) if alert.end is not None and alert.end.clip else None


__all__ = ["ENDED_STATE", "LIVE", "RECONNECTING", "STALLED_STATE", "WAITING", "AlertState", "LiveState", "SourceState"]
