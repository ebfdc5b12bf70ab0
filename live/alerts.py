"""From a stream of step scores to alerts an operator can act on: one fight is one alert.

A per-source state machine with hysteresis over *media* time:

* **quiet -> pending**: a step scores at or above ``threshold``;
* **pending -> active** (``alert_start``): the scores stay at or above the threshold for
  ``min_duration`` seconds (a single loud step is not an alert); a step below it before
  then, or a gap in the stream of ``cooldown`` seconds or more, returns to quiet (two
  blips either side of a stall are not one long run);
* **active -> quiet** (``alert_end``): no step has reached the threshold for
  ``cooldown`` seconds, so that a fight with pauses stays one alert. ``t_end`` is the end
  of the last step at or above the threshold, not the end of the cooldown.

A gap in the stream (dropped steps, a stall) counts as time passing with no evidence;
a source that ends, or stays silent for the cooldown (a dead camera), closes its open
alert then. The alert's label is the class of its peak
step; the peak's frame is kept for the snapshot.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from apply.attribution import trigger_of
from cache_schema import InvalidInput

from .events import ALERT_END, ALERT_START, AlertEvent

__all__ = ["AlertConfig", "AlertTracker"]


@dataclass(frozen=True)
class AlertConfig:
    threshold: float = 0.5      # anomaly score (1 - p(normal)) that counts as anomalous
    min_duration: float = 1.0   # seconds at or above the threshold before an alert starts
    cooldown: float = 5.0       # seconds below it before an open alert ends

    def __post_init__(self) -> None:
        if not (0.0 < self.threshold <= 1.0):
            raise InvalidInput(f"--threshold must lie in (0, 1], got {self.threshold}")
        for name in ("min_duration", "cooldown"):
            value = getattr(self, name)
            if not (math.isfinite(value) and value >= 0):
                raise InvalidInput(f"--{name.replace('_', '-')} must be >= 0 seconds, got {value}")


@dataclass
class _Open:
    t_start: float
    last_hot_end: float
    peak_score: float
    peak_t: float
    label: str
    peak_image: Any = None
    started: bool = False
    alert_id: int = 0
    peak_evidence: dict[str, float | None] | None = None


class AlertTracker:
    """The alert state of one source; ``update`` per scored step returns the events it
    causes (zero, one or two), each with the image of its alert's peak step so far (for
    the snapshot; whatever the caller passed as ``image``)."""

    def __init__(self, source: str, config: AlertConfig, first_id: int = 1) -> None:
        self.source = source
        self.config = config
        self._open: _Open | None = None
        self._next_id = first_id

    @property
    def active(self) -> bool:
        return self._open is not None and self._open.started

    def update(self, t_start: float, t_end: float, score: float | None, label: str, wall_time: float,
               image: Any = None, evidence: dict[str, float | None] | None = None) -> list[tuple[AlertEvent, Any]]:
        """One step ``[t_start, t_end)`` with its anomaly score, top class and (fused runs)
        its evidence per modality, of which the peak step's decides the alert's trigger."""
        events: list[tuple[AlertEvent, Any]] = []
        hot = score is not None and score >= self.config.threshold
        cur = self._open
        if cur is not None and not hot:
            if not cur.started:
                self._open = None                                    # a blip: back to quiet
            elif t_end - cur.last_hot_end >= self.config.cooldown:
                events.append(self._end(wall_time))
        elif hot:
            if cur is not None and not cur.started and t_start - cur.last_hot_end >= max(self.config.cooldown, 1e-3):
                cur = self._open = None   # a gap as long as the cooldown (a stall) breaks a run not yet an alert
            if cur is None:
                cur = self._open = _Open(t_start, t_end, float(score), t_end, label, image, peak_evidence=evidence)
            else:
                if cur.started and t_start - cur.last_hot_end >= self.config.cooldown:
                    events.append(self._end(wall_time))              # a gap longer than the cooldown
                    return events + self.update(t_start, t_end, score, label, wall_time, image, evidence)
                cur.last_hot_end = t_end
                if score > cur.peak_score:
                    cur.peak_score, cur.peak_t, cur.label, cur.peak_image = float(score), t_end, label, image
                    cur.peak_evidence = evidence
            if not cur.started and t_end - cur.t_start >= self.config.min_duration - 1e-9:
                cur.started, cur.alert_id = True, self._next_id
                self._next_id += 1
                events.append(self._event(ALERT_START, cur, None, wall_time))
        return events

    def finish(self, wall_time: float) -> list[tuple[AlertEvent, Any]]:
        """The source ended or went silent for the cooldown: close an open alert."""
        if self._open is not None and self._open.started:
            return [self._end(wall_time)]
        self._open = None
        return []

    def _end(self, wall_time: float) -> tuple[AlertEvent, Any]:
        cur = self._open
        assert cur is not None
        self._open = None
        return self._event(ALERT_END, cur, cur.last_hot_end, wall_time)

    def _event(self, kind: str, cur: _Open, t_end: float | None, wall_time: float) -> tuple[AlertEvent, Any]:
        ev = cur.peak_evidence
        trigger = None if ev is None else trigger_of(ev.get("audio"), ev.get("video"), self.config.threshold)
        return AlertEvent(kind, self.source, cur.t_start, t_end, cur.label, cur.peak_score, wall_time,
                          cur.alert_id, cur.peak_t, trigger=trigger, peak_evidence=ev), cur.peak_image
