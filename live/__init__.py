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
* ``outputs``: where the events go, as the flags or a config file describe it;
* ``mqtt``: the events on an MQTT broker, with Home Assistant discovery (``mosquitto``:
  a broker of our own on loopback, for ``bench soak`` and the tests);
* ``metrics``: Prometheus counters per camera (``/metrics``);
* ``watch``: the loop that ties them together;
* ``config_file``: ``watch --config``, named cameras and outputs in one YAML file;
* ``redact``: credentials out of every text that can reach an output;
* ``soak``: ``cli.py bench soak``, a long watch of looping loopback cameras
  (``webhook_receiver``: a loopback receiver of its webhook, and the tests').
"""

from .alerts import AlertConfig, AlertTracker
from .clips import ClipConfig, ClipRecorder
from .config_file import CameraConfig, DeployConfig, load_config
from .events import AlertEvent, EventHub, FrameEvent, ScoreRecord, Sink, StatusEvent
from .metrics import MetricsConfig, MetricsServer, WatchMetrics
from .mqtt import MqttConfig, MqttSink
from .outputs import WatchOutputs
from .redact import SecretFilter, redact_text, redact_url
from .sinks import JsonLinesSink, OutputFailed, SnapshotWriter, WebhookSink
from .sources import SourceSpec, parse_source
from .watch import WatchConfig, WatchSummary, load_watch_predictor, run_watch

__all__ = ["AlertConfig", "AlertEvent", "AlertTracker", "CameraConfig", "ClipConfig", "ClipRecorder", "DeployConfig",
           "EventHub", "FrameEvent", "JsonLinesSink", "MetricsConfig", "MetricsServer", "MqttConfig", "MqttSink",
           "OutputFailed", "ScoreRecord", "SecretFilter", "Sink", "SnapshotWriter", "SourceSpec", "StatusEvent",
           "WatchConfig", "WatchMetrics", "WatchOutputs", "WatchSummary", "WebhookSink", "load_config", "load_watch_predictor",
           "parse_source", "redact_text", "redact_url", "run_watch"]
