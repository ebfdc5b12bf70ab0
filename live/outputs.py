"""Where a watch's events go (``WatchOutputs``): described once, whether by ``cli.py
watch``'s flags or by a config file's ``outputs`` (``live.config_file``), and turned into
sinks by ``live.command.watch_command``."""

from __future__ import annotations

from dataclasses import dataclass, field

from .mqtt import MqttConfig

__all__ = ["WatchOutputs"]


@dataclass(frozen=True)
class WatchOutputs:
    """Where events go: ``out`` (JSON lines appended; None: standard output), ``webhook``
    (alert events POSTed), ``serve`` (the browser view, with ``token`` or ``token_file``
    and the host names it answers to), ``metrics`` (Prometheus ``/metrics`` on a port of
    its own) and ``mqtt``. Secrets are kept out of ``repr``."""

    out: str | None = None
    webhook: str | None = field(default=None, repr=False)   # a URL may carry credentials
    webhook_timeout: float = 5.0
    webhook_retries: int = 3
    serve: str | None = None        # HOST:PORT of the browser view
    token: str | None = field(default=None, repr=False)
    token_file: str | None = None
    serve_names: tuple[str, ...] = ()   # host names the browser view answers to besides its address
    metrics: str | None = None      # HOST:PORT of /metrics on a port of its own (with --serve it is on that port too)
    mqtt: MqttConfig | None = None      # publish to this MQTT broker (live/mqtt.py), checked when made
