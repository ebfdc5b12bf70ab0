"""Prometheus metrics of a watch: per camera, what came in, what was scored, how late,
what broke and what was raised.

Two halves, both feeding one ``CollectorRegistry`` of the watch's own (never the
library's global one: several watches may run in one process, the tests do):

* a hub sink (``WatchMetrics.handle``) counts from the events every other output sees:
  steps scored and their latency (``ScoreRecord``), stalls, reconnects and dropped steps
  (``StatusEvent``), alerts by trigger (``AlertEvent``). It runs on the scoring thread and
  only increments counters;
* a custom collector reads, at scrape time, the counters the sources and the scorer
  already keep (``SourceReader.frames_in``/``video_packets``/...; ``LiveScorer.backbone_s``):
  nothing is added to the readers' hot loops but a ``+= 1``.

Per-step backbone seconds are observed from the scoring loop (``observe_step``). Labels
are camera *names* (``SourceSpec.name``), never URLs, so no credential reaches a label.

It is served on the ``--serve`` port as ``/metrics`` (the page's token rule, a bearer
header included, so that Prometheus can scrape it with ``authorization``), or on a port
of its own (``--metrics HOST:PORT``; ``MetricsServer``), under the same rule.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import threading
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest
from prometheus_client.process_collector import ProcessCollector
from prometheus_client.registry import Collector

from apply.attribution import TRIGGERS
from cache_schema import InvalidInput

from .events import ALERT_START, DROPPED_STEPS, RECONNECTED, STALLED, AlertEvent, Event, ScoreRecord, StatusEvent

__all__ = ["LATENCY_BUCKETS", "STEP_SECONDS_BUCKETS", "MetricsConfig", "MetricsServer", "WatchMetrics",
           "metrics_response"]

logger = logging.getLogger(__name__)

PREFIX = "avar"
# live latency: a realtime camera's step is out in well under a second on a fast machine, a
# few seconds when scoring is behind; anything past 30 s is a lag an operator must see
LATENCY_BUCKETS = (0.05, 0.1, 0.25, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0, 5.0, 10.0, 30.0)
# backbone seconds per step: tiny backbones take milliseconds, the full-size ones on a CPU
# a good part of a second
STEP_SECONDS_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)


@dataclass(frozen=True)
class MetricsConfig:
    """``/metrics``: always on the ``--serve`` port when there is one; ``address``
    (HOST:PORT) also on a port of its own (then ``token`` is required on every request when
    the address is not loopback, as for ``--serve``). ``process``: the client's process
    collector (CPU, memory, descriptors of this process)."""

    address: str | None = None
    token: str | None = None
    process: bool = True

    def __post_init__(self) -> None:
        if self.token is not None and not self.token.strip():
            raise InvalidInput("the metrics token is empty; give a non-empty token or leave it out (loopback only)")


class _SourceCounters(Collector):
    """Reads the sources' and the scorer's own counters at scrape time."""

    def __init__(self) -> None:
        self.readers: Sequence[Any] = ()
        self.scorer: Any = None
        self.mqtt: Any = None       # live.mqtt.MqttSink, where --mqtt is on
        self.clips: Any = None      # live.clips.ClipRecorder, where --clips is on

    def collect(self) -> Iterable[Any]:
        frames = CounterMetricFamily(f"{PREFIX}_frames", "Decoded video frames read, per camera", labels=["camera"])
        packets = CounterMetricFamily(f"{PREFIX}_packets", "Compressed packets read, per camera and stream",
                                      labels=["camera", "stream"])
        received = CounterMetricFamily(f"{PREFIX}_received_bytes", "Compressed bytes read, per camera",
                                       labels=["camera"])
        corrupt = CounterMetricFamily(f"{PREFIX}_corrupt_packets", "Packets that failed to decode, per camera",
                                      labels=["camera"])
        media = GaugeMetricFamily(f"{PREFIX}_media_seconds", "Media time reached, per camera (seconds)",
                                  labels=["camera"])
        for reader in self.readers:
            name = reader.spec.name
            frames.add_metric([name], reader.frames_in)
            packets.add_metric([name, "video"], reader.video_packets)
            packets.add_metric([name, "audio"], reader.audio_packets)
            received.add_metric([name], reader.bytes_in)
            corrupt.add_metric([name], reader.corrupt_packets)
            media.add_metric([name], reader.media_t)
        yield from (frames, packets, received, corrupt, media)
        scorer = self.scorer
        if scorer is not None:
            spent = CounterMetricFamily(f"{PREFIX}_scoring_seconds", "Seconds spent scoring, all cameras, by part "
                                        "(backbones: features; head: the head with its evidence passes)",
                                        labels=["part"])
            spent.add_metric(["backbones"], scorer.backbone_s)
            spent.add_metric(["head"], scorer.head_s)
            yield spent
            yield CounterMetricFamily(f"{PREFIX}_scoring_batches", "Batches scored, all cameras",
                                      value=scorer.batches)
        if self.mqtt is not None:
            yield CounterMetricFamily(f"{PREFIX}_mqtt_dropped", "MQTT messages dropped (queue full, or held alerts "
                                      "too many or too old when the broker came back)", value=self.mqtt.dropped)
            yield GaugeMetricFamily(f"{PREFIX}_mqtt_connected", "1 while connected to the MQTT broker",
                                    value=1.0 if self.mqtt.connected else 0.0)
        if self.clips is not None:
            yield CounterMetricFamily(f"{PREFIX}_clips_written", "Alert clips written", value=self.clips.written)
            yield CounterMetricFamily(f"{PREFIX}_clip_failures", "Alert clips lost (write errors, full disk, "
                                      "no container for the codecs, queue full)", value=self.clips.failures)
            ring = GaugeMetricFamily(f"{PREFIX}_clip_buffer_bytes", "Bytes held in each camera's clip ring buffer",
                                     labels=["camera"])
            for name, stats in self.clips.stats()["buffers"].items():
                ring.add_metric([name], stats["bytes"])
            yield ring


class WatchMetrics:
    """A watch's metrics: a hub sink (``handle``) plus the collectors of its sources and
    scorer (``attach``), in a registry of its own; ``exposition()`` is the text format."""

    def __init__(self, cameras: Sequence[str] = (), config: MetricsConfig = MetricsConfig()) -> None:
        self.config = config
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.scored = Counter(f"{PREFIX}_steps_scored", "Steps scored (score records), per camera", ["camera"],
                              registry=r)
        self.dropped = Counter(f"{PREFIX}_steps_dropped", "Steps dropped because scoring was behind, per camera",
                               ["camera"], registry=r)
        self.latency = Histogram(f"{PREFIX}_latency_seconds", "Wall seconds from a step's last frame and sample "
                                 "arriving to its score record", ["camera"], buckets=LATENCY_BUCKETS, registry=r)
        self.backbone = Histogram(f"{PREFIX}_backbone_seconds", "Seconds in the backbones per scored step (its "
                                  "share of its batch)", ["camera"], buckets=STEP_SECONDS_BUCKETS, registry=r)
        self.stalls = Counter(f"{PREFIX}_stalls", "Stalls (no packets for --stall-timeout), per camera", ["camera"],
                              registry=r)
        self.reconnects = Counter(f"{PREFIX}_reconnects", "Reconnections after a stall or a failed read, per camera",
                                  ["camera"], registry=r)
        self.alerts = Counter(f"{PREFIX}_alerts", "Alerts raised, per camera and trigger (heard, seen, both; none: "
                              "a run that reads one modality)", ["camera", "trigger"], registry=r)
        self.score = Gauge(f"{PREFIX}_score", "The latest anomaly score, per camera", ["camera"], registry=r)
        self.last_record = Gauge(f"{PREFIX}_last_record_timestamp_seconds", "Wall time of the latest score record, "
                                 "per camera (alert when it stops moving)", ["camera"], registry=r)
        self.sources = _SourceCounters()
        r.register(self.sources)
        if config.process:
            ProcessCollector(namespace=PREFIX, registry=r)
        for camera in cameras:   # every camera's series exist from the start (0, not absent)
            self._touch(camera)

    def _touch(self, camera: str) -> None:
        for metric in (self.scored, self.dropped, self.stalls, self.reconnects):
            metric.labels(camera)
        self.latency.labels(camera)
        self.backbone.labels(camera)

    def attach(self, readers: Sequence[Any], scorer: Any, clips: Any = None) -> None:
        """The watch's ``SourceReader``s, ``LiveScorer`` and ``ClipRecorder``, read at scrape time."""
        self.sources.readers, self.sources.scorer, self.sources.clips = tuple(readers), scorer, clips

    def attach_mqtt(self, sink: Any) -> None:
        """The ``MqttSink``, whose drops and connection are read at scrape time."""
        self.sources.mqtt = sink

    def observe_step(self, camera: str, backbone_s: float) -> None:
        self.backbone.labels(camera).observe(backbone_s)

    # -- the sink (scoring thread) -------------------------------------------------------
    def handle(self, event: Event) -> None:
        camera = event.source
        if isinstance(event, ScoreRecord):
            self.scored.labels(camera).inc()
            self.latency.labels(camera).observe(max(0.0, event.latency_s))
            self.last_record.labels(camera).set(event.wall_time)
            if event.score is not None:
                self.score.labels(camera).set(event.score)
        elif isinstance(event, StatusEvent):
            if event.type == STALLED:
                self.stalls.labels(camera).inc()
            elif event.type == RECONNECTED:
                self.reconnects.labels(camera).inc()
            elif event.type == DROPPED_STEPS:
                self.dropped.labels(camera).inc(int(event.detail.get("count", 0)))
        elif isinstance(event, AlertEvent) and event.type == ALERT_START:
            trigger = event.trigger if event.trigger in TRIGGERS else "none"
            self.alerts.labels(camera, trigger).inc()

    def close(self) -> None:
        pass

    def exposition(self) -> bytes:
        """The registry in Prometheus's text format."""
        return generate_latest(self.registry)


class MetricsServer:
    """``/metrics`` on a port of its own (``--metrics HOST:PORT``): a small aiohttp app on
    its own thread, with ``--serve``'s rule: beyond loopback only with a token, sent as
    ``Authorization: Bearer TOKEN`` (what Prometheus's ``authorization`` sends)."""

    def __init__(self, metrics: WatchMetrics, host: str, port: int, token: str | None = None) -> None:
        from .web import check_serve_access

        check_serve_access(host, token)
        self.metrics, self.host, self.port, self.token = metrics, host, port, token
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self.url: str | None = None

    def start(self) -> str:
        """Bind (port 0: a free one) and serve; the URL of ``/metrics``."""
        try:
            family = socket.getaddrinfo(self.host, self.port, type=socket.SOCK_STREAM)[0][0]
            sock = socket.create_server((self.host, self.port), family=family)
        except (OSError, UnicodeError) as e:
            raise InvalidInput(f"--metrics {self.host}:{self.port}: cannot listen there ({e}); choose another "
                               "address or port") from None
        host, port = sock.getsockname()[:2]
        self.url = f"http://{f'[{host}]' if ':' in host else host}:{port}/metrics"
        ready: Future[None] = Future()
        self._thread = threading.Thread(target=self._run, args=(sock, ready), name="live-metrics", daemon=True)
        self._thread.start()
        ready.result(timeout=30)
        return self.url

    def _run(self, sock: socket.socket, ready: Future[None]) -> None:
        from aiohttp import web

        loop = asyncio.new_event_loop()
        asyncio.set_event_loop(loop)
        app = web.Application()
        app.router.add_get("/metrics", self._serve)
        runner = web.AppRunner(app, handle_signals=False, access_log=None, shutdown_timeout=1.0)
        try:
            loop.run_until_complete(runner.setup())
            loop.run_until_complete(web.SockSite(runner, sock).start())
        except BaseException as e:  # noqa: BLE001 - handed to start()
            sock.close()
            loop.close()
            ready.set_exception(e)
            return
        self._loop = loop
        ready.set_result(None)
        try:
            loop.run_forever()
        finally:
            loop.run_until_complete(runner.cleanup())
            loop.close()

    async def _serve(self, request: Any) -> Any:
        from aiohttp import web

        from .web import token_given

        # the header only: a scraper sends it (Prometheus' authorization setting), and a token in a URL
        # ends up in proxies' and servers' access logs
        if not token_given(self.token, request.headers.get("Authorization", "")):
            return web.Response(status=401, text="401: /metrics needs the token: 'Authorization: Bearer TOKEN'\n",
                                headers={"WWW-Authenticate": 'Bearer realm="avar metrics"'})
        return metrics_response(self.metrics)

    def handle(self, event: Event) -> None:
        """A hub sink only so that the hub closes it with the others (it counts nothing)."""

    def close(self) -> None:
        from .web import stop_serving

        stop_serving(self._loop, self._thread, "the metrics server")


def metrics_response(metrics: WatchMetrics | Callable[[], bytes]) -> Any:
    """An aiohttp response of the text format (``WatchMetrics`` or a callable giving it)."""
    from aiohttp import web

    body = metrics.exposition() if isinstance(metrics, WatchMetrics) else metrics()
    return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})
