"""A real MQTT broker and subscriber for the tests: Debian's ``mosquitto`` started on a
free loopback port as a child of the test (it dies with it), and a paho subscriber that
keeps every message with its arrival time. Used by tests/test_live_mqtt.py and
tests/test_live_deploy.py; a module that uses them imports paho with
``pytest.importorskip`` first and marks its tests ``needs_broker``."""

from __future__ import annotations

import functools
import getpass
import os
import shutil
import signal
import socket
import subprocess
import threading
import time
import uuid
from pathlib import Path
from typing import Any, Callable

import paho.mqtt.client as mqtt
import pytest

from cache_schema import die_with_parent

MOSQUITTO = shutil.which("mosquitto") or next((p for p in ("/usr/sbin/mosquitto",) if os.access(p, os.X_OK)), None)
needs_broker = pytest.mark.skipif(MOSQUITTO is None, reason="no mosquitto here (looked on PATH and in /usr/sbin): "
                                                            "`.ci/run` installs Debian's mosquitto")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Broker:
    """A mosquitto of its own on ``127.0.0.1:port``, a child of this process (it dies with
    it), persistent sessions saved every second into ``folder``."""

    def __init__(self, folder: Path, users: dict[str, str] | None = None) -> None:
        self.folder, self.port = folder, free_port()
        folder.mkdir(parents=True, exist_ok=True)
        self.conf = folder / "mosquitto.conf"
        access = "allow_anonymous true\n"
        if users:                    # only these users, with these passwords (mosquitto_passwd's hashes)
            passwords = folder / "passwords"
            passwords.write_text("")
            for user, password in users.items():
                subprocess.run([shutil.which("mosquitto_passwd") or "/usr/bin/mosquitto_passwd", "-b", str(passwords),
                                user, password], check=True, capture_output=True)
            access = f"allow_anonymous false\npassword_file {passwords}\n"
        self.conf.write_text(f"listener {self.port} 127.0.0.1\n{access}persistence true\n"
                             f"persistence_location {folder}/\nautosave_interval 1\nlog_dest stderr\n"
                             f"user {getpass.getuser()}\n")
        self.log = folder / "mosquitto.log"
        self.proc: subprocess.Popen | None = None

    def start(self) -> None:
        with self.log.open("ab") as log:
            self.proc = subprocess.Popen([MOSQUITTO, "-c", str(self.conf)], stdout=subprocess.DEVNULL, stderr=log,
                                         preexec_fn=functools.partial(die_with_parent, os.getpid()))
        deadline = time.monotonic() + 10
        while True:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.5).close()
                return
            except OSError:
                assert self.proc.poll() is None and time.monotonic() < deadline, self.log.read_text()[-2000:]
                time.sleep(0.02)

    def kill(self, sig: int = signal.SIGKILL) -> None:
        assert self.proc is not None
        self.proc.send_signal(sig)
        self.proc.wait(10)


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
