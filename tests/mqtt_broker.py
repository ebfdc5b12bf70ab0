"""A real MQTT broker and subscriber for the tests: Debian's ``mosquitto`` started on a
free loopback port as a child of the test (``live.mosquitto``: it dies with it), and a
paho subscriber that keeps every message with its arrival time. Used by tests/test_live_mqtt.py and
tests/test_live_deploy.py; a module that uses them imports paho with
``pytest.importorskip`` first and marks its tests ``needs_broker``."""

from __future__ import annotations

import threading
import time
import uuid
from typing import Any, Callable

import paho.mqtt.client as mqtt
import pytest

from live.mosquitto import MOSQUITTO, Mosquitto, free_port  # noqa: F401 - free_port: the tests' too

needs_broker = pytest.mark.skipif(MOSQUITTO is None, reason="no mosquitto here (looked on PATH and in /usr/sbin): "
                                                            "`.ci/run` installs Debian's mosquitto")

# The tests' broker is the library's (live/mosquitto.py), persistent: killed and started
# again, it keeps the subscribers' sessions and the retained messages.
Broker = Mosquitto


class Collector:
    """A real subscriber: every message with its arrival time (monotonic). ``clean=False``
    keeps its session (and the QoS 1 messages for it) on the broker while it is away."""

    def __init__(self, port: int, topics: tuple[str, ...], client_id: str | None = None, clean: bool = True,
                 username: tuple[str, str] | None = None) -> None:
        self.messages: list[tuple[float, str, str, bool]] = []
        self._cond = threading.Condition()
        self.subscribed = threading.Event()
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=client_id or f"test-{uuid.uuid4().hex}",
                                  clean_session=clean)
        self.client.on_connect = lambda c, u, f, rc, p: c.subscribe([(t, 1) for t in topics])
        self.client.on_subscribe = lambda *a: self.subscribed.set()
        self.client.on_message = self._on_message
        self.client.reconnect_delay_set(1, 1)
        if username is not None:
            self.client.username_pw_set(*username)
        self.client.connect("127.0.0.1", port)
        self.client.loop_start()
        assert self.subscribed.wait(10), "the subscription was not acknowledged"

    def _on_message(self, client: Any, userdata: Any, msg: Any) -> None:
        with self._cond:
            self.messages.append((time.monotonic(), msg.topic, msg.payload.decode(), bool(msg.retain)))
            self._cond.notify_all()

    def wait_for(self, check: Callable[[], bool], timeout: float) -> bool:
        with self._cond:
            return self._cond.wait_for(check, timeout)

    def on(self, topic: str) -> list[str]:
        with self._cond:
            return [p for _, t, p, _ in self.messages if t == topic]

    def first(self, topic: str, payload: str | None = None) -> float | None:
        with self._cond:
            return next((at for at, t, p, _ in self.messages if t == topic and payload in (None, p)), None)

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()
