"""What live mode emits: score records, alert events, status events and frames.

Every event is a small frozen dataclass with ``to_json()`` (the JSON-lines form, which
``docs/live.md`` documents field by field). They travel from the scorer to the sinks
through an :class:`EventHub`: the JSON-lines writer, the webhook, the snapshot writer and
the browser view all subscribe to the same hub, so they all see the same events in the
same order. A sink's ``handle`` runs on the scoring thread and must never block: a sink
that does slow work (HTTP, a browser) queues it on its own thread, bounded, and drops
for itself when it falls behind.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass, field
from typing import Any, Protocol

logger = logging.getLogger(__name__)

ALERT_START, ALERT_END = "alert_start", "alert_end"
STARTED, STALLED, RECONNECTED, DROPPED_STEPS, ENDED = "started", "stalled", "reconnected", "dropped_steps", "ended"
STATUS_TYPES = (STARTED, STALLED, RECONNECTED, DROPPED_STEPS, ENDED)


def _evidence_json(evidence: dict[str, float | None] | None) -> dict[str, float | None]:
    """``{"audio": .., "video": ..}``, always both keys (None: no evidence)."""
    evidence = evidence or {}
    return {k: None if evidence.get(k) is None else round(float(evidence[k]), 6)  # type: ignore[arg-type]
            for k in ("audio", "video")}


@dataclass(frozen=True)
class ScoreRecord:
    """One scored step. ``t`` is media time (seconds from the source's first packet) of
    the step's end; ``t_start`` its start. ``latency_s`` is the wall time of emission
    minus the wall time at which the step's last frame and sample arrived. ``score`` is
    ``1 - p(normal)`` (None for a run without a normal class); ``probs`` per class."""

    source: str
    t: float
    t_start: float
    wall_time: float
    latency_s: float
    label: str
    score: float | None
    probs: dict[str, float]
    type: str = "score"
    # a run that reads both modalities: the score with the video masked ("audio") and with the
    # audio masked ("video"); None values otherwise (apply/attribution.py, docs/live.md)
    evidence: dict[str, float | None] | None = None

    def to_json(self) -> dict[str, Any]:
        return {"type": self.type, "source": self.source, "t": round(self.t, 4), "t_start": round(self.t_start, 4),
                "wall_time": round(self.wall_time, 4), "latency_s": round(self.latency_s, 4), "label": self.label,
                "score": None if self.score is None else round(self.score, 6),
                "probs": {k: round(v, 6) for k, v in self.probs.items()},
                "evidence": _evidence_json(self.evidence)}


@dataclass(frozen=True)
class AlertEvent:
    """An alert opening (``alert_start``: ``t_end`` is None) or closing (``alert_end``).
    ``snapshot`` is the path of the peak frame's JPEG, where ``--snapshots`` is given
    (on ``alert_end``: the peak of the whole alert). ``clip`` (``alert_end`` only, with
    ``--clips``) is the path of the alert's video clip; None when it could not be written
    (``live.clips``)."""

    type: str
    source: str
    t_start: float
    t_end: float | None
    label: str
    peak_score: float
    wall_time: float
    alert_id: int
    peak_t: float
    snapshot: str | None = None
    # heard | seen | both, from the evidence at the peak step (``peak_evidence``) against the
    # camera's threshold (apply/attribution.py); None for a run that reads one modality
    trigger: str | None = None
    peak_evidence: dict[str, float | None] | None = None
    clip: str | None = None

    def to_json(self) -> dict[str, Any]:
        return {"type": self.type, "source": self.source, "alert_id": self.alert_id,
                "t_start": round(self.t_start, 4), "t_end": None if self.t_end is None else round(self.t_end, 4),
                "label": self.label, "peak_score": round(self.peak_score, 6), "peak_t": round(self.peak_t, 4),
                "wall_time": round(self.wall_time, 4), "snapshot": self.snapshot, "trigger": self.trigger,
                "peak_evidence": _evidence_json(self.peak_evidence),
                "clip": self.clip}


@dataclass(frozen=True)
class StatusEvent:
    """A change in a source's state: ``started``, ``stalled`` (no packets for
    ``--stall-timeout``), ``reconnected`` (``gap_s``: media time lost), ``dropped_steps``
    (``count`` steps skipped because scoring was behind, ``total`` so far), ``ended``."""

    type: str
    source: str
    wall_time: float
    t: float | None = None
    detail: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {"type": self.type, "source": self.source, "wall_time": round(self.wall_time, 4),
                "t": None if self.t is None else round(self.t, 4), **self.detail}


@dataclass(frozen=True, eq=False)
class FrameEvent:
    """The latest frame of a source as JPEG bytes, about once a second (for the browser
    view; not written as a JSON line)."""

    source: str
    t: float
    wall_time: float
    jpeg: bytes
    type: str = "frame"

    def to_json(self) -> dict[str, Any]:
        return {"type": self.type, "source": self.source, "t": round(self.t, 4), "wall_time": round(self.wall_time, 4)}


Event = ScoreRecord | AlertEvent | StatusEvent | FrameEvent


class Sink(Protocol):
    """Receives every event in order; ``handle`` must return at once (queue slow work)."""

    def handle(self, event: Event) -> None: ...

    def close(self) -> None: ...


class EventHub:
    """Hands every event to every sink, in order, from one lock (events come from the
    scorer thread and from source threads). A sink that raises is logged and removed;
    it never stops scoring or the other sinks."""

    def __init__(self, sinks: list[Sink] | None = None) -> None:
        self._sinks: list[Sink] = list(sinks or [])
        self._lock = threading.Lock()

    def subscribe(self, sink: Sink) -> None:
        with self._lock:
            self._sinks.append(sink)

    def publish(self, event: Event) -> None:
        with self._lock:
            for sink in list(self._sinks):
                try:
                    sink.handle(event)
                except Exception:  # a broken sink is a bug of its own: see it, keep scoring
                    logger.exception("sink %s failed on a %s event; removed", type(sink).__name__, event.type)
                    self._sinks.remove(sink)

    def close(self) -> None:
        with self._lock:
            sinks, self._sinks = self._sinks, []
        for sink in sinks:
            try:
                sink.close()
            except Exception:
                logger.exception("sink %s failed to close", type(sink).__name__)


__all__ = ["ALERT_END", "ALERT_START", "DROPPED_STEPS", "ENDED", "RECONNECTED", "STALLED", "STARTED", "STATUS_TYPES",
           "AlertEvent", "Event", "EventHub", "FrameEvent", "ScoreRecord", "Sink", "StatusEvent"]
