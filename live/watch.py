"""``cli.py watch``: score cameras and streams as they arrive, one thread per source and
one scoring loop, and publish every record and event to the hub's sinks.

    sources (threads) -> units -> Scheduler (bounded) -> LiveScorer -> records, alerts -> EventHub

The scoring loop runs on the calling thread: it takes the oldest unit of every source,
scores them in one batch, emits a score record per unit with its latency, feeds each
source's alert tracker, and reports what was dropped. Status events from the source
threads pass through the same loop, so a source's ``ended`` comes after its last
record, and every output is written by one thread in one order.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import queue
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

from apply import Predictor, load_predictor
from apply.predictor import PredictConfig
from cache_schema import InvalidInput
from extract.audio_windows import WINDOWING_STEP, AudioWindowing
from extract.pipeline import worker_transform
from temporal.rundir import RunDir

from .alerts import AlertConfig, AlertTracker
from .assembler import Assembler
from .clips import ClipConfig, ClipRecorder
from .events import DROPPED_STEPS, ENDED, STALLED, EventHub, FrameEvent, ScoreRecord, StatusEvent
from .metrics import WatchMetrics
from .plans import GridPlan, UnitPlan, WindowPlan
from .scheduler import Scheduler
from .scorer import LiveScorer, ScoredUnit
from .sinks import SnapshotWriter, jpeg_bytes
from .sources import AssemblerFactory, SourceReader, SourceSpec

__all__ = ["DEFAULT_FIXED_WINDOW_S", "SourceSummary", "WatchConfig", "WatchSummary", "assembler_factory",
           "audio_context", "audio_windowing", "frame_transform", "load_watch_predictor", "plan_for", "run_watch"]

logger = logging.getLogger(__name__)

DEFAULT_FIXED_WINDOW_S = 10.0
FRAME_EVERY_S = 1.0


@dataclass(frozen=True)
class WatchConfig:
    """How to watch. ``window``: seconds the head sees (grid runs: default what the run was
    trained on; fixed-step runs: ``DEFAULT_FIXED_WINDOW_S``); ``hop``: seconds between
    windows (fixed-step runs; default ``window / 2`` as ``predict --window``). ``depth``:
    units queued per source before the oldest is dropped."""

    window: float | None = None
    hop: float | None = None
    alerts: AlertConfig = AlertConfig()
    stall_timeout: float = 5.0
    duration: float | None = None
    depth: int = 2
    snapshots: str | None = None
    frames: bool = False            # publish a FrameEvent per source about once a second (browser view)
    slack: float = 2.0              # seconds one stream may lag the other before a unit goes without it
    clips: ClipConfig | None = None  # a clip of every alert (live.clips); None: no clips

    def __post_init__(self) -> None:
        for name in ("window", "hop", "duration"):
            value = getattr(self, name)
            if value is not None and not (math.isfinite(value) and value > 0):
                raise InvalidInput(f"--{name} must be a positive number of seconds, got {value}")
        if not (math.isfinite(self.stall_timeout) and self.stall_timeout > 0):
            raise InvalidInput(f"--stall-timeout must be positive seconds, got {self.stall_timeout}")
        if self.depth < 1:
            raise InvalidInput("--queue must be at least 1")


@dataclass
class SourceSummary:
    records: int = 0
    dropped: int = 0
    alerts: int = 0
    max_latency_s: float = 0.0
    error: str | None = None


@dataclass
class WatchSummary:
    sources: dict[str, SourceSummary] = field(default_factory=dict)
    wall_s: float = 0.0
    scoring_s: float = 0.0          # wall time spent in backbones and head
    snapshot_failures: int = 0      # snapshots that could not be written (their alerts went out without them)
    clips_written: int = 0          # alert clips written (--clips)
    clip_failures: int = 0          # alert clips lost (a full disk, ...; their alert_end went out with clip null)

    @property
    def failed(self) -> list[str]:
        return [name for name, s in self.sources.items() if s.error and not s.records]


def audio_windowing(predictor: Predictor) -> AudioWindowing | None:
    """The windowing the run's audio backbone was rebuilt with (from its cache's record);
    None for a run that reads no audio."""
    return getattr(predictor.audio_backbone, "windowing", None)


def load_watch_predictor(rundir: str | Path, predict: PredictConfig = PredictConfig()) -> tuple[Predictor, int]:
    """The run's predictor and the number of steps its head was built for. A grid run
    whose audio features were computed over whole-clip windows (caches extracted before
    causal step windows) is refused: a live stream has no future to hear."""
    predictor = load_predictor(rundir, predict)
    windowing = audio_windowing(predictor)
    if predictor.layout.grid and windowing is not None and windowing.mode != WINDOWING_STEP:
        raise InvalidInput(f"{rundir}: its cache's audio features were computed over {windowing.describe()} of the "
                           "whole clip, which hear each step's future; live audio has only the past. Re-extract "
                           "the cache with this version (grid caches use causal step windows, --audio-context) and "
                           "retrain, or train on --modality video")
    return predictor, int(RunDir(rundir).read_config().steps)


def plan_for(predictor: Predictor, run_steps: int, config: WatchConfig, context: float) -> tuple[UnitPlan, int]:
    """The unit plan of a source (at media time 0) and the head's window in steps."""
    layout = predictor.layout
    if layout.grid:
        if config.hop is not None:
            raise InvalidInput(f"this run's steps lie on a time grid ({layout.describe()}): every step is scored "
                               "with the last --window seconds; --hop applies to fixed-step runs only. Drop --hop")
        window = config.window if config.window is not None else run_steps * layout.step_seconds
        return GridPlan(layout, context), max(1, round(window / layout.step_seconds))
    window = config.window if config.window is not None else DEFAULT_FIXED_WINDOW_S
    hop = config.hop if config.hop is not None else window / 2
    return WindowPlan(layout.steps, window, hop), 1


def audio_context(predictor: Predictor) -> float:
    """Seconds of audio before a grid step that its features read (the cache's windowing)."""
    windowing = audio_windowing(predictor)
    return float(windowing.context_s) if windowing is not None and windowing.mode == WINDOWING_STEP else 0.0


def frame_transform(predictor: Predictor) -> Callable[[Any], Any]:
    """What a chosen frame goes through: the transform its offline path uses (grid
    extraction: the uint8 geometry, finished per mini-batch; ``predict --window``: the
    whole transform)."""
    return worker_transform(predictor.video_backbone) if predictor.layout.grid \
        else predictor.video_backbone.transform


def assembler_factory(name: str, plan: UnitPlan, transform: Callable[[Any], Any], config: WatchConfig,
                      ) -> AssemblerFactory:
    """A new ``Assembler`` per connection of source ``name``, its plan starting at ``base``."""
    def make(segment: int, base: float, has_video: bool, track: Any) -> Assembler:
        return Assembler(name, dataclasses.replace(plan, base=base), transform, track, has_video,
                         slack=config.slack, segment=segment)
    return make


class _Loop:
    """The scoring loop's state: trackers, summaries, what is waiting to be published."""

    def __init__(self, predictor: Predictor, config: WatchConfig, hub: EventHub, names: Sequence[str],
                 alerts: dict[str, AlertConfig] | None = None) -> None:
        self.predictor, self.config, self.hub = predictor, config, hub
        self.alerts = {n: (alerts or {}).get(n) or config.alerts for n in names}   # per camera (a config file's)
        self.trackers = {n: AlertTracker(n, self.alerts[n]) for n in names}
        self.summary = WatchSummary({n: SourceSummary() for n in names})
        self.snapshots = SnapshotWriter(config.snapshots) if config.snapshots else None
        # alert events go through the clip recorder, which holds an alert_end until its clip is written
        self.clips = ClipRecorder(config.clips, hub.publish) if config.clips is not None else None
        self.status: queue.Queue[StatusEvent] = queue.Queue()
        self.held_end: dict[str, StatusEvent] = {}
        self.silent_since: dict[str, float] = {}   # stalled sources: wall time their last packet came
        self.last_frame: dict[str, float] = {}

    def emit(self, scored: ScoredUnit) -> None:
        u = scored.unit
        now = time.time()
        latency = now - u.arrived
        names = self.predictor.class_names
        record = ScoreRecord(u.source, u.unit.end, u.unit.start, now, latency, scored.label, scored.score,
                             {c: float(p) for c, p in zip(names, scored.probs)}, evidence=scored.evidence)
        self.hub.publish(record)
        since = self.silent_since.get(u.source)
        if since is not None and u.arrived > since:
            del self.silent_since[u.source]   # media again (a reopen that brings none does not count)
        s = self.summary.sources[u.source]
        s.records += 1
        s.max_latency_s = max(s.max_latency_s, latency)
        for event, image in self.trackers[u.source].update(u.unit.start, u.unit.end, scored.score, scored.label,
                                                           now, u.picture, scored.evidence):
            self.alert(event, image)
        if self.config.frames and u.picture is not None and now - self.last_frame.get(u.source, 0.0) >= FRAME_EVERY_S:
            self.last_frame[u.source] = now
            self.hub.publish(FrameEvent(u.source, u.unit.end, now, jpeg_bytes(u.picture, 75)))

    def alert(self, event: Any, image: Any) -> None:
        if self.snapshots is not None:
            event = dataclasses.replace(event, snapshot=self.snapshots.write(event, image))
        if event.type == "alert_start":
            self.summary.sources[event.source].alerts += 1
        if self.clips is not None:
            self.clips.submit(event)
        else:
            self.hub.publish(event)

    def statuses(self, pending: dict[str, int] | None) -> None:
        """Publish status events in arrival order; a source's ``ended`` waits until none of
        its units is ``pending`` (None: hold every ``ended`` for now)."""
        while True:
            try:
                event = self.status.get_nowait()
            except queue.Empty:
                break
            if event.type == ENDED:
                self.held_end[event.source] = event
                if self.clips is not None:   # its media is complete: its last clip need not wait for more
                    self.clips.source_ended(event.source)
                if event.detail.get("error"):
                    self.summary.sources[event.source].error = event.detail["error"]
            else:
                if event.type == STALLED:   # a read waited stall_timeout for nothing, or the stream ended now
                    waited = 0.0 if event.detail.get("reason") == "ended" else event.detail.get("stall_timeout_s", 0.0)
                    # the first stall of a silence counts: a reopen that brings no media does not end it
                    self.silent_since.setdefault(event.source, event.wall_time - float(waited))
                self.hub.publish(event)
        self.close_stalled_alerts(pending)
        for name in list(self.held_end):
            if pending is not None and not pending.get(name):
                for alert, image in self.trackers[name].finish(time.time()):
                    self.alert(alert, image)
                if self.clips is not None and self.clips.pending(name):
                    continue                 # its last alert_end waits for its clip; ``ended`` comes after it
                self.hub.publish(self.held_end.pop(name))

    def close_stalled_alerts(self, pending: dict[str, int] | None) -> None:
        """A source silent for the cooldown ends its open alert then, not when (if ever) it
        comes back: a dead camera must not leave an alert open. Its queued steps go first."""
        now = time.time()
        for name, since in list(self.silent_since.items()):
            if pending is None or pending.get(name) or now - since < self.alerts[name].cooldown:
                continue
            del self.silent_since[name]
            if self.trackers[name].active:
                for alert, image in self.trackers[name].finish(now):
                    self.alert(alert, image)

    def drops(self, reports: dict[str, int], totals: dict[str, int]) -> None:
        for name, count in reports.items():
            self.summary.sources[name].dropped = totals[name]
            self.hub.publish(StatusEvent(DROPPED_STEPS, name, time.time(), None, {"count": count, "total": totals[name]}))


def run_watch(predictor: Predictor, sources: Sequence[SourceSpec], config: WatchConfig, hub: EventHub,
              stop: threading.Event | None = None, *, run_steps: int = 200, stdin: BinaryIO | None = None,
              metrics: WatchMetrics | None = None) -> WatchSummary:
    """Watch ``sources`` until each has ended (or ``config.duration`` of media, or ``stop``).

    Returns what happened per source. Nothing here raises for a source that fails: it
    is reported (``ended`` with ``error``) and the others go on. ``metrics`` is
    subscribed to ``hub`` and reads the sources' and the scorer's counters."""
    names = [s.name for s in sources]
    if len(set(names)) != len(names):
        raise InvalidInput(f"a source is given twice: {', '.join(sorted({n for n in names if names.count(n) > 1}))}")
    if sum(s.kind == "stdin" for s in sources) > 1:
        raise InvalidInput("standard input (-) can be one source only")
    stop = stop or threading.Event()
    # Per-camera windows: a grid run's plan is one step whatever the window (the window is
    # how many steps of history the head reads), a fixed-step run's units are T steps
    # whatever their seconds, so units of cameras with different windows share a batch
    # (score_records pads and masks records of different lengths).
    plans = {s.name: plan_for(predictor, run_steps, config if s.window is None else
                              dataclasses.replace(config, window=s.window), audio_context(predictor)) for s in sources}
    window_steps = plan_for(predictor, run_steps, config, audio_context(predictor))[1]
    scorer = LiveScorer(predictor, window_steps, {name: steps for name, (_, steps) in plans.items()})
    scheduler = Scheduler(config.depth)
    loop = _Loop(predictor, config, hub, names, {s.name: s.alerts for s in sources if s.alerts is not None})
    transform = frame_transform(predictor)

    def on_unit(spec: SourceSpec) -> Any:
        live = spec.kind != "file" or spec.realtime
        return lambda unit: scheduler.put(unit, block=not live, stop=stop)

    try:
        readers = [SourceReader(spec, assembler_factory(spec.name, plans[spec.name][0], transform, config),
                                on_unit(spec), loop.status.put, stop, stall_timeout=config.stall_timeout,
                                duration=config.duration, grid_every=plans[spec.name][0].every, stdin=stdin,
                                packets=loop.clips.ring(spec.name) if loop.clips is not None else None)
                   for spec in sources]
        if metrics is not None:
            metrics.attach(readers, scorer, clips=loop.clips)
            hub.subscribe(metrics)
    except BaseException:   # the clip writer's thread runs from _Loop on: never left behind
        if loop.clips is not None:
            loop.clips.close()
        raise
    began = time.monotonic()
    logger.info("watching %s", ", ".join(names))   # loaded: sources are read from now on
    for reader in readers:
        reader.start()
    try:
        while True:
            batch = scheduler.take(0.1)
            loop.statuses(None)  # ``started`` before the first record; ``ended`` waits
            if batch:
                t0 = time.monotonic()
                scored = scorer.score(batch)
                loop.summary.scoring_s += time.monotonic() - t0
                for item in scored:
                    loop.emit(item)
                    if metrics is not None:
                        metrics.observe_step(item.unit.source, item.backbone_s)
            loop.drops(scheduler.take_drop_reports(), scheduler.dropped)
            alive = any(r.is_alive() for r in readers)
            loop.statuses({n: scheduler.pending(n) for n in names})
            if stop.is_set() or (not alive and not scheduler.pending()):
                break
    finally:
        stop.set()
        for reader in readers:
            reader.release()   # a named pipe still waiting for its writer stops waiting
        scheduler.close()
        deadline = time.monotonic() + config.stall_timeout + 2   # one wait for all, not one each
        for reader in readers:
            reader.join(timeout=max(0.0, deadline - time.monotonic()))
        for reader in readers:
            if reader.is_alive():  # blocked in FFmpeg (opening a camera that does not answer): do not wait
                logger.warning("%s: still busy in FFmpeg when stopped; left behind", reader.spec.name)
                loop.status.put(StatusEvent(ENDED, reader.spec.name, time.time(), reader.media_t,
                                            {"corrupt_packets": reader.corrupt_packets, "stopped_busy": True}))
        loop.statuses({})
        if loop.clips is not None:   # the clips still waiting are written with what is buffered
            loop.clips.close()
            loop.statuses({})
            loop.summary.clips_written, loop.summary.clip_failures = loop.clips.written, loop.clips.failures
        loop.summary.wall_s = time.monotonic() - began
        loop.summary.snapshot_failures = loop.snapshots.failed if loop.snapshots is not None else 0
    return loop.summary
