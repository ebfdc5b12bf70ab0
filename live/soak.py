"""``cli.py bench soak``: does a long watch leak? Streams watched for tens of minutes
through ``watch``'s own command, with its process sampled every minute.

What runs is what an operator runs, in one process:

* **cameras**: ``streams`` loopback TCP cameras (``synth.loop_camera``), each looping a
  generated MPEG-TS clip (H.264 + AAC, a violent event in it) in real time, so every loop
  brings an alert;
* **the watch**: ``live.command.watch_command`` on a run trained with the tiny backbones
  (built first when none is given: the XD-Violence stand-in, extracted on its snippet
  grid, an MTCN with fused audio and video), the cameras named ``cam0``.. as a config
  file names them, with every output this branch has: JSON lines to a file, snapshots,
  alert clips (a folder with a small ``max_bytes``, so that retention deletes old clips
  during the soak), the webhook (POSTed to a receiver on loopback, in the same process),
  MQTT (a ``mosquitto`` of the soak's own on a loopback port, a child process, with a
  subscriber on ``{prefix}/#`` counting messages; skipped, and said so in the report, where
  there is no ``mosquitto``) and the browser view (``--serve``), which a client polls
  (``/api/sources``, ``/api/alerts``, a frame, ``/metrics``) as an open page and
  Prometheus would;
* **the sampler**: every ``sample_every`` seconds the process's resident memory
  (``VmRSS``), open descriptors (``/proc/self/fd``), threads (``threading.active_count``
  and ``/proc/self/task``), and what each stream scored so far.

The report gives, per quantity, its growth after warm-up (the samples of the first
``warmup_s`` seconds are excluded: models, buffers and the page's first requests allocate
then): the last sample minus the first after warm-up, the least-squares slope per hour,
and whether the growth stays within a noise threshold (descriptors and threads: a
fixed count; memory: megabytes or a share of the warm figure, whichever is larger; see
:func:`growth`). It also gives records, dropped steps, alerts, stalls and reconnects per
stream, and the records scored in each interval, so that a soak that silently stopped
scoring fails.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from apply.predictor import PredictConfig
from cache_schema import InvalidInput, check_output_file, cpu_model, write_json
from synth.live_stream import StreamEvent, StreamPlan, write_stream
from synth.loop_camera import LoopingCamera

from .alerts import AlertConfig
from .clips import ClipConfig
from .command import watch_command
from .events import (ALERT_START, DROPPED_STEPS, ENDED, RECONNECTED, STALLED, AlertEvent, Event, ScoreRecord,
                     StatusEvent)
from .mosquitto import MOSQUITTO, Mosquitto, free_port
from .mqtt import MqttConfig
from .outputs import WatchOutputs
from .sources import parse_source
from .watch import WatchConfig
from .webhook_receiver import WebhookReceiver

__all__ = ["GrowthLimits", "SoakConfig", "build_soak_run", "read_process", "run_soak", "soak_summary"]

logger = logging.getLogger(__name__)

MIB = 1024 * 1024


@dataclass(frozen=True)
class GrowthLimits:
    """How much a quantity may grow after warm-up and still be noise.

    * ``fds``: 7 descriptors. Open at a sample's instant and gone by the next in a
      healthy watch: a page poll's (or a ``/metrics`` scrape's: the poller does one at a
      time) connection and a webhook POST's, each on both ends (4), a snapshot JPEG being
      written, an alert clip being written (the clip writer writes one at a time), and a
      camera connection being reopened. MQTT's sockets (the watch's client, the
      subscriber, the broker is another process) stay open: no slack.
    * ``threads``: 2. The browser view's server, the webhook sink, the clip writer, the
      MQTT sink's two threads and the subscriber's, the sampler, the poller and the
      receivers keep fixed threads, started before warm-up ends; what may come and go is
      a decoder's threads (the kernel's count) or a reader's while a camera is reopened.
    * ``rss``: 32 MiB or 10 % of the first figure after warm-up, whichever is larger:
      glibc's arenas (one per thread that allocates: decoders, sinks) and PyTorch's
      caching allocator grow in steps of several MiB to a plateau, which a leak does not
      reach; a leak of a frame per step (320x240 RGB, 230 KB, 6 steps/s over 4 streams) is
      about 5 GiB an hour.
    """

    fds: int = 7
    threads: int = 2
    rss_mib: float = 32.0
    rss_share: float = 0.10


@dataclass(frozen=True)
class SoakConfig:
    """``minutes`` of watching ``streams`` cameras; samples every ``sample_every`` seconds,
    the first ``warmup_s`` seconds excluded from the growth. ``clip_s``: the looped clip's
    length (an event from ``event_s[0]`` to ``event_s[1]`` in it); ``size``: its frames.
    ``run``: a run directory (None: one is trained with the tiny backbones first);
    ``serve``: the browser view on, and a client polling it (and ``/metrics``) every
    ``poll_every`` s; ``clips``: alert clips kept within ``clips_max_bytes``; ``mqtt``:
    publish to a broker of the soak's own (where ``mosquitto`` is installed); ``threshold``:
    every camera's alert threshold (a soak needs each loop's event to alert, to exercise
    the alert outputs; a weakly trained run may need it lower than watch's 0.5)."""

    minutes: float = 20.0
    sample_every: float = 60.0
    warmup_s: float = 120.0
    streams: int = 4
    clip_s: float = 24.0
    event_s: tuple[float, float] = (10.0, 14.0)
    size: tuple[int, int] = (320, 240)
    run: str | None = None
    device: str = "cpu"
    serve: bool = True
    poll_every: float = 2.0
    snapshots: bool = True
    webhook: bool = True
    clips: bool = True
    clips_max_bytes: int = 24_000_000   # a few clips at 320x240 (2-10 MB each): retention runs in minutes
    mqtt: bool = True
    threshold: float = 0.5
    limits: GrowthLimits = GrowthLimits()
    notes: str = ""

    def __post_init__(self) -> None:
        if not self.minutes > 0:
            raise InvalidInput(f"--minutes {self.minutes}: give a positive number of minutes")
        if not 0 < self.sample_every <= self.minutes * 60:
            raise InvalidInput(f"--sample-every {self.sample_every}: give positive seconds, at most the soak's "
                               f"{self.minutes * 60:g} s")
        if not 0 <= self.warmup_s < self.minutes * 60:
            raise InvalidInput(f"--warmup {self.warmup_s}: give seconds shorter than the soak")
        if self.after_warmup_samples < 2:
            raise InvalidInput(f"--minutes {self.minutes:g} with --sample-every {self.sample_every:g} s and "
                               f"--warmup {self.warmup_s:g} s leaves fewer than 2 samples after warm-up: "
                               "sample more often or soak longer")
        if not 1 <= self.streams <= 16:
            raise InvalidInput(f"--streams {self.streams}: give 1 to 16")
        if not 0 < self.event_s[0] < self.event_s[1] < self.clip_s:
            raise InvalidInput(f"soak event {self.event_s}: it must lie inside the {self.clip_s:g} s clip")

    @property
    def after_warmup_samples(self) -> int:
        total = int(self.minutes * 60 // self.sample_every) + 1     # a sample at 0 and one per interval
        return sum(1 for k in range(total) if k * self.sample_every >= self.warmup_s)


# -- the process ---------------------------------------------------------------------------
def read_process() -> dict[str, Any]:
    """This process now: resident memory (bytes), open descriptors, threads (Python's and
    the kernel's: FFmpeg and PyTorch start threads Python does not see)."""
    rss = 0
    with open("/proc/self/status", encoding="ascii") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                rss = int(line.split()[1]) * 1024
                break
    return {"rss_bytes": rss, "fds": len(os.listdir("/proc/self/fd")),
            "threads_python": threading.active_count(), "threads_os": len(os.listdir("/proc/self/task"))}


class SoakCounter:
    """A sink that counts, per stream, what the watch emitted (runs on the scoring thread:
    counting only)."""

    def __init__(self, names: Sequence[str]) -> None:
        self.lock = threading.Lock()
        self.counts = {n: {"records": 0, "dropped_steps": 0, "alerts": 0, "stalls": 0, "reconnects": 0,
                           "ended": 0, "max_latency_s": 0.0, "last_record_wall": None, "alert_peaks_t": []}
                       for n in names}

    def handle(self, event: Event) -> None:
        c = self.counts.get(event.source)
        if c is None:
            return
        with self.lock:
            if isinstance(event, ScoreRecord):
                c["records"] += 1
                c["max_latency_s"] = max(c["max_latency_s"], round(event.latency_s, 3))
                c["last_record_wall"] = event.wall_time
            elif isinstance(event, AlertEvent) and event.type == ALERT_START:
                c["alerts"] += 1
            elif isinstance(event, AlertEvent):   # its end: where its peak was, on the stream's clock
                c["alert_peaks_t"].append(round(event.peak_t, 2))
            elif isinstance(event, StatusEvent):
                if event.type == DROPPED_STEPS:
                    c["dropped_steps"] += int(event.detail.get("count", 0))
                elif event.type == STALLED:
                    c["stalls"] += 1
                elif event.type == RECONNECTED:
                    c["reconnects"] += 1
                elif event.type == ENDED:
                    c["ended"] += 1

    def snapshot(self) -> dict[str, dict[str, Any]]:
        with self.lock:
            return {n: {k: list(v) if isinstance(v, list) else v for k, v in c.items()} for n, c in self.counts.items()}

    def close(self) -> None:
        pass


class PagePoller(threading.Thread):
    """A client of the browser view, as an open page is: the sources and alerts as JSON
    every ``every`` seconds, and one source's latest frame; and Prometheus's scrape of
    ``/metrics`` on the same port, parsed, its last figures kept. Counts what answered."""

    def __init__(self, base: str, go: threading.Event, stop: threading.Event, every: float) -> None:
        super().__init__(name="soak-page-poller", daemon=True)
        self.base, self.go, self.stop, self.every = base, go, stop, every
        self.ok = 0
        self.failed = 0
        self.last_error: str | None = None
        self.scrapes_ok = 0
        self.scrapes_failed = 0
        self.last_scrape: dict[str, Any] = {}   # the last /metrics: steps scored per camera, MQTT and clip counters

    def scrape(self) -> None:
        """``/metrics``, parsed as Prometheus parses it; a page that does not parse fails."""
        from prometheus_client.parser import text_string_to_metric_families

        page = self.get("/metrics")
        if page is None:
            self.scrapes_failed += 1
            return
        try:
            scored, totals = {}, {}
            for family in text_string_to_metric_families(page.decode()):
                for sample in family.samples:
                    if sample.name == "avar_steps_scored_total":
                        scored[sample.labels["camera"]] = int(sample.value)
                    elif sample.name in ("avar_mqtt_dropped_total", "avar_clips_written_total",
                                         "avar_clip_failures_total", "avar_mqtt_connected"):
                        totals[sample.name] = int(sample.value)
        except (ValueError, KeyError, UnicodeDecodeError) as exc:
            self.scrapes_failed += 1
            self.last_error = f"/metrics: {exc!r}"
            return
        self.scrapes_ok += 1
        self.last_scrape = {"steps_scored": scored, **totals}

    def get(self, path: str) -> bytes | None:
        try:
            with urllib.request.urlopen(self.base + path, timeout=5) as response:
                return response.read()
        except (urllib.error.URLError, OSError, TimeoutError) as exc:
            self.failed += 1
            self.last_error = f"{path}: {exc}"
            return None

    def run(self) -> None:
        while not self.go.wait(0.2):
            if self.stop.is_set():
                return
        while not self.stop.wait(self.every):
            sources = self.get("/api/sources")
            alerts = self.get("/api/alerts")
            if sources is None or alerts is None:
                continue
            self.ok += 2
            try:
                listed = json.loads(sources)
            except ValueError:
                self.failed += 1
                continue
            if isinstance(listed, dict):
                listed = listed.get("sources", [])
            ids = [s.get("id") for s in listed if isinstance(s, dict) and s.get("id") is not None]
            if ids and self.get(f"/api/sources/{ids[0]}/frame.jpg") is not None:
                self.ok += 1
            self.scrape()


class Broker:
    """A ``mosquitto`` of the soak's own (``live.mosquitto``: a loopback port, a child
    process that dies with this one, stopped on exit) and a paho subscriber on
    ``{prefix}/#`` counting the messages the watch published (retained discovery
    messages included)."""

    def __init__(self, folder: Path, prefix: str) -> None:
        self.mosquitto = Mosquitto(folder, persistence=False)
        self.port, self.prefix, self.received = self.mosquitto.port, prefix, 0
        self.client: Any = None

    def __enter__(self) -> Broker:
        import paho.mqtt.client as mqtt

        self.mosquitto.start()
        try:
            subscribed = threading.Event()
            self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="avar-soak-subscriber")
            self.client.on_connect = lambda c, u, f, rc, p: c.subscribe(f"{self.prefix}/#", qos=1)
            self.client.on_subscribe = lambda *a: subscribed.set()
            self.client.on_message = self._count
            self.client.connect("127.0.0.1", self.port)
            self.client.loop_start()
            if not subscribed.wait(10):
                raise RuntimeError("the soak's MQTT subscription was not acknowledged")
        except BaseException:
            self.__exit__()
            raise
        return self

    def _count(self, client: Any, userdata: Any, msg: Any) -> None:
        self.received += 1   # paho's network thread only

    def __exit__(self, *exc: object) -> None:
        if self.client is not None:
            self.client.disconnect()
            self.client.loop_stop()
        self.mosquitto.stop()

class Sampler(threading.Thread):
    """Samples the process every ``every`` seconds from ``go`` (the watch's first event:
    the run is loaded) and sets ``stop`` once ``seconds`` have passed; a watch that has not
    started after ``startup_s`` is stopped (``never_started``)."""

    def __init__(self, counter: SoakCounter, go: threading.Event, stop: threading.Event, every: float,
                 seconds: float, startup_s: float = 600.0) -> None:
        super().__init__(name="soak-sampler", daemon=True)
        self.counter, self.go, self.stop, self.every, self.seconds = counter, go, stop, every, seconds
        self.startup_s = startup_s
        self.samples: list[dict[str, Any]] = []
        self.never_started = False
        self.t0 = time.monotonic()

    def take(self) -> None:
        counts = self.counter.snapshot()
        self.samples.append({"t_s": round(time.monotonic() - self.t0, 1), **read_process(),
                             "records": {n: c["records"] for n, c in counts.items()}})

    def run(self) -> None:
        deadline = time.monotonic() + self.startup_s
        while not self.go.wait(0.2):
            if self.stop.is_set():
                return
            if time.monotonic() > deadline:
                logger.error("soak: the watch gave no event in %.0f s; stopping it", self.startup_s)
                self.never_started = True
                self.stop.set()
                return
        self.t0 = time.monotonic()
        self.take()
        k = 1
        while True:
            due = self.t0 + min(k * self.every, self.seconds)
            if self.stop.wait(max(0.0, due - time.monotonic())):
                return   # the watch ended before its time: the report says so
            self.take()
            if k * self.every >= self.seconds:
                break
            k += 1
        self.stop.set()


# -- growth --------------------------------------------------------------------------------
def growth(samples: Sequence[dict[str, Any]], key: str, warmup_s: float, limit: float) -> dict[str, Any]:
    """Growth of ``key`` over the samples at or after ``warmup_s``: last - first, the
    least-squares slope per hour and the fitted line's rise over those samples. It
    ``grows`` when both last - first and the rise exceed ``limit``: a steady growth or a
    step shows in both, while a count that goes up and down (the kernel's threads:
    decoders' and OpenMP's come and go) can end one sample high without its line rising."""
    kept = [s for s in samples if s["t_s"] >= warmup_s]
    if len(kept) < 2:
        return {"samples": len(kept), "grows": None, "why": "fewer than 2 samples after warm-up"}
    t = np.array([s["t_s"] for s in kept], dtype=float) / 3600.0
    v = np.array([s[key] for s in kept], dtype=float)
    slope = float(np.polyfit(t, v, 1)[0]) if np.ptp(t) > 0 else 0.0
    delta = float(v[-1] - v[0])
    rise = slope * float(np.ptp(t))
    return {"samples": len(kept), "first": v[0].item(), "last": v[-1].item(), "min": v.min().item(),
            "max": v.max().item(), "last_minus_first": delta, "slope_per_hour": round(slope, 3),
            "fitted_rise": round(rise, 3), "noise_limit": limit, "grows": bool(delta > limit and rise > limit)}


def analyse(samples: Sequence[dict[str, Any]], cfg: SoakConfig) -> dict[str, Any]:
    kept = [s for s in samples if s["t_s"] >= cfg.warmup_s]
    rss0 = kept[0]["rss_bytes"] if kept else 0
    lim = cfg.limits
    rss_limit = max(lim.rss_mib * MIB, lim.rss_share * rss0)
    out = {
        "rss_bytes": growth(samples, "rss_bytes", cfg.warmup_s, rss_limit),
        "fds": growth(samples, "fds", cfg.warmup_s, lim.fds),
        "threads_python": growth(samples, "threads_python", cfg.warmup_s, lim.threads),
        "threads_os": growth(samples, "threads_os", cfg.warmup_s, lim.threads),
    }
    return out


def scoring_intervals(samples: Sequence[dict[str, Any]]) -> dict[str, list[int]]:
    """Records each stream scored between consecutive samples."""
    if not samples:
        return {}
    names = list(samples[0]["records"])
    return {n: [b["records"][n] - a["records"][n] for a, b in zip(samples, samples[1:])] for n in names}


# -- the run and the media -----------------------------------------------------------------
def build_soak_run(work: Path, device: str = "cpu") -> Path:
    """A run to watch with: the XD-Violence stand-in (short videos), extracted with the tiny
    backbones on its snippet grid (causal audio windows), an MTCN on fused features with
    the multiple-instance objective, 40 epochs: enough to find the looped clip's event
    (about half a minute on 2 cores)."""
    from extract.backbones import preset_models
    from extract.datasets import prepare_dataset
    from extract.pipeline import ExtractConfig, run_extract
    from synth.xd_standin import StandinConfig, generate_standin
    from temporal import SplitConfig, TrainConfig, load_cache
    from temporal.train import torch_threads, train
    from temporal.xd_tasks import apply_task

    root, cache, rundir = work / "xd", work / "cache" / "xd-grid.zarr", work / "run"
    if (rundir / "metrics.json").exists():
        return rundir
    generate_standin(root, StandinConfig(lengths=(18.0, 36.0)), workers=1)
    video, audio = preset_models("tiny")
    prepared = prepare_dataset("xd-violence", root / "videos", cache, root / "lists")
    run_extract(prepared.manifest, cache, ExtractConfig(step_seconds=0.6667, video_model=video, audio_model=audio,
                                                        device=device, workers=0, progress=False))
    split = cache.with_name(cache.name + ".official_split.json")
    with torch_threads(1):
        train(cache, rundir, TrainConfig(head="mtcn", modality="fused", objective="mil", epochs=40,
                                         split=SplitConfig(split_file=str(split)), progress=False),
              data=apply_task(load_cache(cache), "xd-detection"), overwrite=True)
    return rundir


def write_clips(work: Path, cfg: SoakConfig) -> list[Path]:
    """One clip per stream (each its own seed): ``clip_s`` seconds, the event in it."""
    clips = []
    for i in range(cfg.streams):
        path = work / f"clip{i}.ts"
        plan = StreamPlan(seconds=cfg.clip_s, seed=i, size=cfg.size, keyframe_s=1.0,
                          event=StreamEvent(cfg.event_s[0], cfg.event_s[1], "B1"))
        write_stream(path, plan, realtime=False)
        clips.append(path)
    return clips


@dataclass
class _Parts:
    """What a soak started, for its report."""

    cameras: list[LoopingCamera] = field(default_factory=list)
    poller: PagePoller | None = None
    webhook: WebhookReceiver | None = None
    broker: Broker | None = None
    mqtt_skipped: str | None = None     # why MQTT was not exercised
    clips: Path | None = None


def run_soak(out: Path, cfg: SoakConfig = SoakConfig(), work: Path | None = None) -> dict[str, Any]:
    """Soak (see the module doc) and write the report to ``out`` (JSON, atomically).
    ``work``: where the run (when built), clips, JSON lines and snapshots go (default: a
    temporary folder, removed after)."""
    check_output_file(out)
    if cfg.run is not None and not (Path(cfg.run) / "config.json").is_file():
        raise InvalidInput(f"--run {cfg.run}: not a run directory (no config.json); give a trained run, or leave "
                           "--run out to train one with the tiny backbones")
    with contextlib.ExitStack() as stack:
        if work is None:
            work = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="avar-soak-")))
        work.mkdir(parents=True, exist_ok=True)
        began = time.perf_counter()
        run = Path(cfg.run) if cfg.run else build_soak_run(work / "soak-run", cfg.device)
        built_s = time.perf_counter() - began
        clips = write_clips(work, cfg)
        parts = _Parts()
        for clip in clips:
            parts.cameras.append(stack.enter_context(LoopingCamera(clip)))
        # named as a config file names its cameras (live/config_file.py)
        specs = [parse_source(cam.url, name=f"cam{i}") for i, cam in enumerate(parts.cameras)]
        names = [spec.name for spec in specs]
        parts.webhook = stack.enter_context(WebhookReceiver()) if cfg.webhook else None
        if not cfg.mqtt:
            parts.mqtt_skipped = "turned off (--no-mqtt)"
        elif MOSQUITTO is None:
            parts.mqtt_skipped = "no mosquitto here (looked on PATH and in /usr/sbin)"
            logger.warning("soak: %s: MQTT is not exercised", parts.mqtt_skipped)
        else:
            parts.broker = stack.enter_context(Broker(work / "broker", prefix="avar-soak"))
        events = work / "events.jsonl"
        snapshots = work / "snapshots" if cfg.snapshots else None
        parts.clips = work / "clips" if cfg.clips else None
        port = free_port() if cfg.serve else None
        stop = threading.Event()
        counter = SoakCounter(names)
        go = threading.Event()   # the watch's first event: the sampler's clock and the poller start
        sampler = Sampler(counter, go, stop, cfg.sample_every, cfg.minutes * 60)
        clips = ClipConfig(dir=str(parts.clips), max_bytes=cfg.clips_max_bytes) if parts.clips else None
        config = WatchConfig(snapshots=str(snapshots) if snapshots else None, frames=cfg.serve,
                             alerts=AlertConfig(threshold=cfg.threshold), clips=clips)
        mqtt = MqttConfig(host="127.0.0.1", port=parts.broker.port, topic_prefix=parts.broker.prefix,
                          client_id="avar-soak") if parts.broker else None
        outputs = WatchOutputs(out=str(events), serve=f"127.0.0.1:{port}" if port else None,
                               webhook=parts.webhook.url if parts.webhook else None, mqtt=mqtt)
        poller = PagePoller(f"http://127.0.0.1:{port}", go, stop, cfg.poll_every) if port else None
        parts.poller = poller
        watch_began = time.perf_counter()
        try:
            for thread in (sampler, poller):
                if thread is not None:
                    thread.start()
            code, summary = watch_command(run, specs, config, PredictConfig(device=cfg.device), outputs,
                                          extra_sinks=[counter, _OnFirst(go.set)], stop=stop)
        finally:
            stop.set()
            for thread in (sampler, poller):
                if thread is not None and thread.is_alive():
                    thread.join(timeout=30)
        watch_s = time.perf_counter() - watch_began
        feed_errors = {name: repr(cam.feed_error) for name, cam in zip(names, parts.cameras)
                       if cam.feed_error is not None}
        result = report(cfg, sampler.samples, counter, summary, parts, code, run, built_s, watch_s, feed_errors,
                        events, snapshots, sampler.never_started)
    out.parent.mkdir(parents=True, exist_ok=True)
    write_json(out, result, indent=2)
    return result


class _OnFirst:
    """A sink that calls ``callback()`` at the first event (the watch has loaded and started)."""

    def __init__(self, callback: Any) -> None:
        self.callback, self.done = callback, False

    def handle(self, event: Event) -> None:
        if not self.done:
            self.done = True
            self.callback()

    def close(self) -> None:
        pass


def report(cfg: SoakConfig, samples: list[dict[str, Any]], counter: SoakCounter, summary: Any, parts: _Parts,
           code: int, run: Path, built_s: float, watch_s: float, feed_errors: dict[str, str], events: Path,
           snapshots: Path | None, never_started: bool) -> dict[str, Any]:
    counts = counter.snapshot()
    per_stream = {}
    intervals = scoring_intervals(samples)
    scraped = parts.poller.last_scrape.get("steps_scored", {}) if parts.poller else {}
    for (name, c), cam in zip(counts.items(), parts.cameras):
        per_stream[name] = {
            "url": cam.url, "records": c["records"], "metrics_steps_scored": scraped.get(name),
            "dropped_steps": c["dropped_steps"], "alerts": c["alerts"], "alert_peaks_t": c["alert_peaks_t"],
            "stalls": c["stalls"], "reconnects": c["reconnects"], "max_latency_s": c["max_latency_s"],
            "records_per_interval": intervals.get(name, []), "camera_loops": cam.loops,
            "camera_connections": cam.connections,
            "error": summary.sources[name].error if name in summary.sources else None,
        }
    growth_rows = analyse(samples, cfg)
    sampled_s = samples[-1]["t_s"] if samples else 0.0
    scoring_continued = bool(samples) and all(
        s["records_per_interval"] and min(s["records_per_interval"]) > 0 for s in per_stream.values())
    completed = sampled_s >= cfg.minutes * 60 - 1
    no_growth = all(g["grows"] is False for g in growth_rows.values())
    jsonl_lines = sum(1 for _ in events.open()) if events.exists() else 0
    snapshot_files = len(list(snapshots.iterdir())) if snapshots is not None and snapshots.exists() else 0
    kept = [p for p in parts.clips.iterdir() if p.is_file()] if parts.clips and parts.clips.exists() else []
    scrape = parts.poller.last_scrape if parts.poller else {}
    return {
        "config": {**asdict(cfg), "limits": asdict(cfg.limits)},
        "cpu": cpu_model(), "cpu_cores": len(os.sched_getaffinity(0)),
        "run": str(run), "run_built_s": round(built_s, 1), "watch_s": round(watch_s, 1),
        "sampled_s": sampled_s, "completed": completed, "exit_code": code, "never_started": never_started,
        "outputs": {"jsonl_lines": jsonl_lines, "snapshots": snapshot_files,
                    "serve_polls_ok": parts.poller.ok if parts.poller else None,
                    "serve_polls_failed": parts.poller.failed if parts.poller else None,
                    "serve_last_error": parts.poller.last_error if parts.poller else None,
                    "webhook_received": parts.webhook.received if parts.webhook else None,
                    "snapshot_failures": summary.snapshot_failures,
                    "clips_written": summary.clips_written if parts.clips else None,
                    "clip_failures": summary.clip_failures if parts.clips else None,
                    "clips_kept": len(kept) if parts.clips else None,
                    "clips_kept_bytes": sum(p.stat().st_size for p in kept) if parts.clips else None,
                    "mqtt_received": parts.broker.received if parts.broker else None,
                    "mqtt_dropped": scrape.get("avar_mqtt_dropped_total") if parts.broker else None,
                    "mqtt_skipped": parts.mqtt_skipped,
                    "metrics_scrapes_ok": parts.poller.scrapes_ok if parts.poller else None,
                    "metrics_scrapes_failed": parts.poller.scrapes_failed if parts.poller else None,
                    "metrics_last_scrape": scrape or None},
        "streams": per_stream,
        "samples": samples,
        "growth_after_warmup": growth_rows,
        "feed_errors": feed_errors,
        "verdict": {
            "no_growth_beyond_noise": no_growth,
            "scoring_continued": scoring_continued,
            "completed": completed,
            "ok": bool(no_growth and scoring_continued and completed and not feed_errors),
        },
        "notes": cfg.notes,
    }


def soak_summary(result: dict[str, Any]) -> str:
    """One screen: the growth after warm-up, and what each stream scored."""
    cfg = result["config"]
    lines = [f"soak: {len(result['streams'])} streams, {result['sampled_s'] / 60:.1f} of {cfg['minutes']:g} min "
             f"sampled every {cfg['sample_every']:g} s, warm-up {cfg['warmup_s']:g} s excluded "
             f"({result['cpu']}, {result['cpu_cores']} cores)",
             f"{'quantity':<16}{'first':>12}{'last':>12}{'growth':>12}{'per hour':>12}{'limit':>10}  verdict"]
    for key, g in result["growth_after_warmup"].items():
        if g.get("grows") is None:
            lines.append(f"{key:<16}  {g.get('why')}")
            continue
        scale, unit = (MIB, " MiB") if key == "rss_bytes" else (1, "")
        f = (lambda v: f"{v / scale:.1f}") if scale != 1 else (lambda v: f"{v:g}")
        lines.append(f"{key + unit:<16}{f(g['first']):>12}{f(g['last']):>12}{f(g['last_minus_first']):>12}"
                     f"{f(g['slope_per_hour']):>12}{f(g['noise_limit']):>10}  {'GROWS' if g['grows'] else 'flat'}")
    lines.append(f"{'stream':<8}{'records':>9}{'dropped':>9}{'alerts':>8}{'stalls':>8}{'reconn':>8}"
                 f"{'max lat s':>11}{'min/interval':>14}")
    for name, s in result["streams"].items():
        per = min(s["records_per_interval"]) if s["records_per_interval"] else 0
        error = f"  {s['error']}" if s["error"] else ""
        lines.append(f"{name:<8}{s['records']:>9}{s['dropped_steps']:>9}{s['alerts']:>8}{s['stalls']:>8}"
                     f"{s['reconnects']:>8}{s['max_latency_s']:>11.2f}{per:>14}{error}")
    o = result["outputs"]
    lines.append(f"outputs: {o['jsonl_lines']} JSON lines, {o['snapshots']} snapshots, {o['webhook_received']} "
                 f"webhook POSTs, page polls {o['serve_polls_ok']} ok / {o['serve_polls_failed']} failed")
    lines.append(f"clips: {o['clips_written']} written, {o['clip_failures']} failed, {o['clips_kept']} kept "
                 f"({(o['clips_kept_bytes'] or 0) / MIB:.1f} MiB); MQTT: "
                 + (f"skipped ({o['mqtt_skipped']})" if o["mqtt_skipped"] else
                    f"{o['mqtt_received']} messages received, {o['mqtt_dropped']} dropped")
                 + f"; /metrics scrapes {o['metrics_scrapes_ok']} ok / {o['metrics_scrapes_failed']} failed")
    v = result["verdict"]
    lines.append(f"verdict: {'OK' if v['ok'] else 'FAILED'} (no growth beyond noise: {v['no_growth_beyond_noise']}, "
                 f"scoring continued: {v['scoring_continued']}, completed: {v['completed']})")
    return "\n".join(lines)
