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
from extract.hw_decode import resolve_decode

from .events import EventHub, Sink
from .sinks import JsonLinesSink, OutputFailed, SnapshotWriter, WebhookSink, check_webhook_url
from .sources import parse_source
from .watch import WatchConfig, WatchSummary, load_watch_predictor, run_watch

__all__ = ["WatchOutputs", "watch_command"]

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class WatchOutputs:
    """Where events go: ``out`` (JSON lines appended; None: standard output), ``webhook``
    (alert events POSTed), and extra sinks (the browser view)."""

    out: str | None = None
    webhook: str | None = None
    webhook_timeout: float = 5.0
    webhook_retries: int = 3
    serve: str | None = None        # HOST:PORT of the browser view
    token: str | None = None
    token_file: str | None = None
    serve_names: tuple[str, ...] = ()   # host names the browser view answers to besides its address


def watch_command(rundir: str | Path, sources: Sequence[str], config: WatchConfig, predict: PredictConfig,
                  outputs: WatchOutputs = WatchOutputs(), realtime: bool = False,
                  extra_sinks: Sequence[Sink] = (), stop: threading.Event | None = None) -> tuple[int, WatchSummary]:
    stop = stop or threading.Event()
    specs = [parse_source(s, realtime=realtime) for s in sources]   # a missing file is refused before loading
    decoder = resolve_decode(predict.decode)  # likewise a hardware decoder asked for and missing
    specs = [dataclasses.replace(s, decoder=decoder) for s in specs]
    view = None
    if outputs.serve is not None:  # refused before loading anything: binding beyond loopback needs a token
        from .web import WebConfig, WebView, check_serve_access, parse_serve, read_token_file

        host, port = parse_serve(outputs.serve)
        token = outputs.token or (read_token_file(outputs.token_file) if outputs.token_file else None)
        check_serve_access(host, token)
        view = WebView(WebConfig(host=host, port=port, token=token, threshold=config.alerts.threshold,
                                 names=tuple(outputs.serve_names)),
                       sources=tuple(s.name for s in specs))
    # every other option that can be wrong is refused here too, before the (slow) load
    if outputs.webhook:
        check_webhook_url(outputs.webhook)
    if config.snapshots:
        SnapshotWriter(config.snapshots)
    out = JsonLinesSink(path=outputs.out, on_failed=stop.set) if outputs.out else \
        JsonLinesSink(sys.stdout, on_closed=stop.set, on_failed=stop.set)
    sinks: list[Any] = [out]
    try:
        predictor, run_steps = load_watch_predictor(rundir, predict)
        if view is not None:
            logger.info("browser view on %s", view.start())
            sinks.append(view)
        if outputs.webhook:
            sinks.append(WebhookSink(outputs.webhook, timeout=outputs.webhook_timeout,
                                     retries=outputs.webhook_retries))
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
        summary = run_watch(predictor, specs, config, hub, stop, run_steps=run_steps)
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
    if out.failed:   # the operator's only full record is gone: never exit 0 (live/sinks.py)
        raise OutputFailed(out.failed)
    return (1 if summary.failed else 0), summary
