"""Live mode: score cameras and streams as they arrive (``cli.py watch``).

Composed on top of the other stages, like ``apply``: a run's :class:`~apply.Predictor`
(its head and the backbones that reproduce its features) applied to media that is still
arriving. The parts, in the order media flows through them:

* ``sources``: parse a SOURCE, open it with PyAV, read it on its own thread, reconnect;
* ``plans`` / ``assembler``: which frames and samples each step (or window) needs, and
  when it is complete;
* ``scheduler``: bounded queues between the sources and the scorer (drop, never lag);
* ``scorer``: stage 1's feature extractor and the head over each source's recent steps;
* ``alerts``: hysteresis from step scores to alerts;
* ``clip_buffer`` / ``clips``: each camera's recent packets, and a clip of every alert;
* ``events`` / ``sinks``: what is emitted, and where it goes (JSON lines, webhook,
  snapshots; the browser view subscribes to the same hub);
* ``watch``: the loop that ties them together.
"""

from .alerts import AlertConfig, AlertTracker
from .clips import ClipConfig, ClipRecorder
from .events import AlertEvent, EventHub, FrameEvent, ScoreRecord, Sink, StatusEvent
from .sinks import JsonLinesSink, OutputFailed, SnapshotWriter, WebhookSink
from .sources import SourceSpec, parse_source
from .watch import WatchConfig, WatchSummary, load_watch_predictor, run_watch

__all__ = ["AlertConfig", "AlertEvent", "AlertTracker", "ClipConfig", "ClipRecorder", "EventHub", "FrameEvent", "JsonLinesSink", "OutputFailed", "ScoreRecord",
           "Sink", "SnapshotWriter", "SourceSpec", "StatusEvent", "WatchConfig", "WatchSummary", "WebhookSink",
           "load_watch_predictor", "parse_source", "run_watch"]
