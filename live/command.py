"""``cli.py watch`` as one call: the run and sources checked, the sinks built, signals
handled, and the exit status decided (0; 1 when a source failed before giving a
record; an ``error:`` line and 2 when the JSON lines could not be written). ``cli.py``
only parses options into these arguments."""

from __future__ import annotations

import dataclasses
import logging
import signal
import sys
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from apply.predictor import PredictConfig
from cache_schema import InvalidInput
from extract.hw_decode import on_device, resolve_decode

from .alerts import AlertConfig
from .clips import ClipConfig, check_clips_dir
from .config_file import DeployConfig, flag_spelled, load_config, refuse_flags_beside
from .events import EventHub, Sink
from .metrics import MetricsConfig, MetricsServer, WatchMetrics
from .mqtt import MqttSink, mqtt_config_from_flags
from .outputs import WatchOutputs
from .redact import install_secret_filter, url_secrets
from .sinks import JsonLinesSink, OutputFailed, SnapshotWriter, WebhookSink, check_webhook_url
from .sources import SourceSpec, parse_source
from .watch import WatchConfig, WatchSummary, load_watch_predictor, run_watch

__all__ = ["WatchFlags", "WatchOutputs", "watch_cli", "watch_command", "watch_config_command"]

logger = logging.getLogger(__name__)

# One-off options that mean something only beside another (any one of the options in the
# key); given without them they are refused.
DEPENDENT_FLAGS = {("mqtt",): ("mqtt_prefix", "mqtt_user", "mqtt_password_file", "mqtt_client_id"),
                   ("clips",): ("clip_pre", "clip_post", "clips_max_bytes", "clips_max_age"),
                   ("serve", "metrics_address"): ("token", "token_file"),
                   ("serve",): ("serve_names",)}


def watch_command(rundir: str | Path, sources: Sequence[str | SourceSpec], config: WatchConfig,
                  predict: PredictConfig, outputs: WatchOutputs = WatchOutputs(), realtime: bool = False,
                  extra_sinks: Sequence[Sink] = (), stop: threading.Event | None = None) -> tuple[int, WatchSummary]:
    """``sources``: SOURCE texts, or specs already made (a config file's named cameras)."""
    stop = stop or threading.Event()
    # a missing file is refused before loading
    specs = [s if isinstance(s, SourceSpec) else parse_source(s, realtime=realtime) for s in sources]
    decoder = on_device(resolve_decode(predict.decode), predict.device)  # likewise: refused when missing
    specs = [dataclasses.replace(s, decoder=decoder) for s in specs]
    view = None
    metrics = metrics_server = None
    token = None
    if outputs.serve is not None or outputs.metrics is not None:
        from .web import read_token_file

        token = outputs.token or (read_token_file(outputs.token_file) if outputs.token_file else None)
        metrics = WatchMetrics(tuple(s.name for s in specs), MetricsConfig(address=outputs.metrics, token=token))
    if outputs.metrics is not None:   # refused before loading anything: beyond loopback needs a token
        from .web import parse_serve

        metrics_server = MetricsServer(metrics, *parse_serve(outputs.metrics), token=token)
    if outputs.serve is not None:  # refused before loading anything: binding beyond loopback needs a token
        from .web import WebConfig, WebView, check_serve_access, parse_serve

        host, port = parse_serve(outputs.serve)
        check_serve_access(host, token)
        view = WebView(WebConfig(host=host, port=port, token=token, threshold=config.alerts.threshold,
                                 names=tuple(outputs.serve_names),
                                 thresholds=tuple((s.name, s.alerts.threshold) for s in specs if s.alerts)),
                       sources=tuple(s.name for s in specs), metrics=metrics)
    # every other option that can be wrong is refused here too, before the (slow) load
    if outputs.webhook:
        check_webhook_url(outputs.webhook)
    if config.snapshots:
        SnapshotWriter(config.snapshots)
    if config.clips is not None:
        check_clips_dir(config.clips)
    out = JsonLinesSink(path=outputs.out, on_failed=stop.set) if outputs.out else \
        JsonLinesSink(sys.stdout, on_closed=stop.set, on_failed=stop.set)
    sinks: list[Any] = [out]
    try:
        predictor, run_steps = load_watch_predictor(rundir, predict)
        if view is not None:
            logger.info("browser view on %s", view.start())
            sinks.append(view)
        if metrics_server is not None:
            logger.info("metrics on %s", metrics_server.start())
            sinks.append(metrics_server)
        if outputs.webhook:
            sinks.append(WebhookSink(outputs.webhook, timeout=outputs.webhook_timeout,
                                     retries=outputs.webhook_retries))
        if outputs.mqtt is not None:   # a broker that is down is not fatal: it is retried, scoring goes on
            sinks.append(MqttSink(outputs.mqtt, cameras=tuple(s.name for s in specs)))
            if metrics is not None:
                metrics.attach_mqtt(sinks[-1])
    except BaseException:
        for sink in reversed(sinks):
            sink.close()
        raise
    hub = EventHub([*sinks, *extra_sinks])
    previous = {}

    def on_signal(signum: int, _: Any) -> None:
        logger.info("%s: stopping (outputs are flushed)", signal.Signals(signum).name)
        stop.set()

    if threading.current_thread() is threading.main_thread():
        for sig in (signal.SIGINT, signal.SIGTERM):
            previous[sig] = signal.signal(sig, on_signal)
    try:
        summary = run_watch(predictor, specs, config, hub, stop, run_steps=run_steps, metrics=metrics)
    finally:
        hub.close()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    for name, s in summary.sources.items():
        logger.info("%s: %d records, %d dropped steps, %d alerts, max latency %.2f s%s", name, s.records, s.dropped,
                    s.alerts, s.max_latency_s, f", error: {s.error}" if s.error else "")
    if summary.snapshot_failures:
        logger.warning("--snapshots %s: %d snapshot(s) could not be written (logged above); their alerts went out "
                       "without them", config.snapshots, summary.snapshot_failures)
    if config.clips is not None:
        logger.info("--clips %s: %d clip(s) written, %d lost", config.clips.dir, summary.clips_written,
                    summary.clip_failures)
    if out.failed:   # the operator's only full record is gone: never exit 0 (live/sinks.py)
        raise OutputFailed(out.failed)
    return (1 if summary.failed else 0), summary


def watch_config_command(deploy: DeployConfig, config: WatchConfig = WatchConfig(),
                         predict: PredictConfig = PredictConfig(), extra_sinks: Sequence[Sink] = (),
                         stop: threading.Event | None = None) -> tuple[int, WatchSummary]:
    """``cli.py watch --config FILE``: the file's enabled cameras (each with its name and
    settings; a disabled one is never opened) and outputs, with ``config``'s settings the
    file does not describe (``--stall-timeout``, ``--duration``, ``--queue``, ``--hop``)."""
    for camera in deploy.cameras:
        if not camera.enabled:
            logger.info("camera %s: disabled in %s; not opened", camera.name, deploy.path)
    specs = [camera.spec(realtime=deploy.realtime) for camera in deploy.enabled]
    watch = dataclasses.replace(config, snapshots=deploy.snapshots, clips=deploy.clips,
                                frames=deploy.outputs.serve is not None, window=None)
    return watch_command(deploy.run, specs, watch, dataclasses.replace(predict, device=deploy.device), deploy.outputs,
                         realtime=deploy.realtime, extra_sinks=extra_sinks, stop=stop)


@dataclass(frozen=True)
class WatchFlags:
    """``cli.py watch``'s options as parsed (names as the options', defaults as theirs):
    a one-off run's whole description, or, beside ``--config``, the few settings the
    file does not describe."""

    rundir: Path | None = None
    sources: tuple[str, ...] = ()
    realtime: bool = False
    window: float | None = None
    hop: float | None = None
    threshold: float = 0.5
    min_duration: float = 1.0
    cooldown: float = 5.0
    snapshots: Path | None = None
    clips: Path | None = None
    clip_pre: float = 5.0
    clip_post: float = 5.0
    clips_max_bytes: int = 2_000_000_000
    clips_max_age: float = 259200.0
    webhook: str | None = None
    out: Path | None = None
    stall_timeout: float = 5.0
    duration: float | None = None
    depth: int = 2
    serve: str | None = None
    token: str | None = None
    token_file: Path | None = None
    serve_names: tuple[str, ...] = ()
    metrics_address: str | None = None
    mqtt: str | None = None
    mqtt_prefix: str = "avar"
    mqtt_user: str | None = None
    mqtt_password_file: Path | None = None
    mqtt_client_id: str = "avar-net"
    video_model: str | None = None
    audio_model: str | None = None
    device: str = "auto"
    precision: str = "auto"
    decode: str = "sw"
    runtime: str = "torch"


def watch_cli(flags: WatchFlags, config_file: str | Path | None = None, given: Sequence[str] = ()) -> int:
    """``cli.py watch`` after parsing: with ``config_file`` the file's run, cameras and
    outputs (``given``: the options set on the command line, refused where the file sets
    them too), else the one-off run ``flags`` describe. Every log record is scrubbed of
    the passwords and tokens known (URLs, token, the file's secrets) while it runs.
    Returns the exit status."""
    scrubber = install_secret_filter([s for text in (*flags.sources, flags.webhook or "") for s in url_secrets(text)]
                                     + [flags.token or ""])
    try:
        predict = PredictConfig(video_model=flags.video_model, audio_model=flags.audio_model, device=flags.device,
                                precision=flags.precision, decode=flags.decode,
                                runtime=flags.runtime)
        if config_file is not None:
            refuse_flags_beside(config_file, given)
            deploy = load_config(config_file)
            scrubber.add(deploy.secrets)
            status, _ = watch_config_command(deploy, WatchConfig(hop=flags.hop, stall_timeout=flags.stall_timeout,
                                                                 duration=flags.duration, depth=flags.depth), predict)
            return status
        assert flags.rundir is not None, "cli.py checks that RUN and SOURCES are given"
        orphans = {kid: parents for parents, kids in DEPENDENT_FLAGS.items()
                   if all(getattr(flags, p) is None for p in parents) for kid in kids if kid in given}
        if orphans:   # never silently ignored: the operator meant something by them
            listed = ", ".join(flag_spelled(kid) for kid in orphans)
            parents = ", ".join(sorted({" or ".join(flag_spelled(p) for p in ps) for ps in orphans.values()}))
            raise InvalidInput(f"{listed} given without the option they belong to ({parents})")
        mqtt = mqtt_config_from_flags(flags.mqtt, flags.mqtt_prefix, flags.mqtt_user, flags.mqtt_password_file,
                                      flags.mqtt_client_id) if flags.mqtt is not None else None
        from .web import read_token_file

        token = flags.token or (read_token_file(str(flags.token_file)) if flags.token_file else None)
        scrubber.add([mqtt.password if mqtt is not None and mqtt.password else "", token or ""])
        clips = ClipConfig(str(flags.clips), flags.clip_pre, flags.clip_post, flags.clips_max_bytes,
                           flags.clips_max_age, buffer_s=max(60.0, flags.clip_pre + flags.clip_post + 30.0)) \
            if flags.clips else None
        config = WatchConfig(window=flags.window, hop=flags.hop,
                             alerts=AlertConfig(flags.threshold, flags.min_duration, flags.cooldown),
                             stall_timeout=flags.stall_timeout, duration=flags.duration, depth=flags.depth,
                             snapshots=str(flags.snapshots) if flags.snapshots else None,
                             frames=flags.serve is not None, clips=clips)
        outputs = WatchOutputs(out=str(flags.out) if flags.out else None, webhook=flags.webhook, serve=flags.serve,
                               token=token, serve_names=flags.serve_names, metrics=flags.metrics_address, mqtt=mqtt)
        status, _ = watch_command(flags.rundir, flags.sources, config, predict, outputs, realtime=flags.realtime)
        return status
    finally:
        scrubber.uninstall()
