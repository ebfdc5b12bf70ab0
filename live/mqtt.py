"""Live events on an MQTT broker, with Home Assistant discovery (``watch --mqtt``).

One more sink of the watch's event hub (``live/events.py``). Its ``handle`` only puts
the event on a bounded queue (a full queue drops the event and counts it); a thread of
its own turns events into MQTT messages and hands them to paho-mqtt, whose own network
thread connects, reconnects with backoff (1 s doubling to 5 s) and sends. A broker that
is down, slow or refusing therefore never delays scoring.

Topics (``P`` is ``topic_prefix``, ``C`` a camera's topic id, :func:`camera_topic_id`):

* ``P/available``: ``online`` / ``offline``, retained; ``offline`` is also the last
  will, which the broker publishes when the process dies without saying goodbye;
* ``P/events`` and ``P/C/event``: every ``alert_start`` / ``alert_end`` as its JSON
  line, QoS 1, not retained;
* ``P/C/state``: ``live`` | ``stalled`` | ``ended``, retained;
* ``P/C/anomaly``: ``ON`` while an alert is open, else ``OFF``, retained;
* ``P/C/label``: the newest record's top class, retained, sent when it changes;
* ``P/C/score``: the newest score record as JSON, at most once a second per camera.

With ``discovery``, each camera is announced to Home Assistant (retained configs under
``discovery_prefix``): a binary sensor ``anomaly``, sensors ``score``, ``label`` and
``state``, all of one device named after the camera. They are sent again at every
(re)connection and when Home Assistant says it came online (``discovery_prefix/status``).

While the broker cannot be reached (or is too slow: more than ``MAX_IN_FLIGHT``
messages handed over and not yet sent), nothing queues without bound: retained states
and scores keep only their newest value per topic, sent once it is back; alert events
are held, the newest ``queue`` of them, and those older than ``alert_max_age_s`` when
the broker comes back are dropped (counted in ``dropped``, logged): an alarm that old
is history, which the JSON lines keep.
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import os
import queue
import re
import threading
import time
from collections import deque
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt

from cache_schema import InvalidInput, MissingInput, optional_file

from .events import ALERT_END, ALERT_START, ENDED, RECONNECTED, STALLED, STARTED, AlertEvent, Event, FrameEvent, \
    ScoreRecord, StatusEvent

__all__ = ["MqttConfig", "MqttSink", "PASSWORD_ENV", "camera_topic_id", "mqtt_config_from_flags", "parse_mqtt_address"]

logger = logging.getLogger(__name__)

DEFAULT_PORT = 1883
PASSWORD_ENV = "AVAR_MQTT_PASSWORD"
SCORE_INTERVAL_S = 1.0        # the score topic's rate per camera
MAX_IN_FLIGHT = 100           # messages handed to paho and not yet written (QoS 0) or acknowledged (QoS 1)
RECONNECT_MIN_S, RECONNECT_MAX_S = 1, 5    # a broker back is found within 5 s
KEEPALIVE_S = 30              # a connection that dies silently gets its last will after 1.5x this
CONNECT_TIMEOUT_S = 3.0
_SAFE_ID = re.compile(r"[A-Za-z0-9_-]+")


@dataclass(frozen=True)
class MqttConfig:
    """Where and how to publish. ``password`` is never shown (``repr``) nor logged;
    ``queue`` bounds both the events waiting for the publishing thread and the alert
    events held while the broker is away; ``alert_max_age_s`` is how old a held alert may
    be when the broker comes back and still be sent."""

    host: str
    port: int = DEFAULT_PORT
    username: str | None = None
    password: str | None = field(default=None, repr=False)
    topic_prefix: str = "avar"
    client_id: str = "avar-net"
    discovery: bool = True
    discovery_prefix: str = "homeassistant"
    queue: int = 1000
    alert_max_age_s: float = 600.0

    def __post_init__(self) -> None:
        if not self.host or any(c.isspace() for c in self.host):
            raise InvalidInput(f"MQTT host {self.host!r}: give a host name or address, e.g. 127.0.0.1")
        if not 1 <= int(self.port) <= 65535:
            raise InvalidInput(f"MQTT port {self.port}: give a port in 1-65535 (the broker's is usually 1883)")
        for what, prefix in (("topic prefix", self.topic_prefix), ("discovery prefix", self.discovery_prefix)):
            if not prefix or prefix.startswith("/") or prefix.endswith("/") or set(prefix) & {"+", "#", "\0"}:
                raise InvalidInput(f"MQTT {what} {prefix!r}: give topic levels without wildcards (+, #) and "
                                   "without a leading or trailing /, e.g. avar or home/avar")
        if not self.client_id:
            raise InvalidInput("MQTT client id: give one (two clients with one id push each other off the broker)")
        if self.queue < 1:
            raise InvalidInput(f"MQTT queue {self.queue}: give at least 1")
        if not self.alert_max_age_s > 0:
            raise InvalidInput(f"MQTT alert_max_age_s {self.alert_max_age_s}: give a positive number of seconds")


def parse_mqtt_address(text: str) -> tuple[str, int]:
    """``HOST``, ``HOST:PORT``, ``[IPv6]`` or ``[IPv6]:PORT`` as (host, port); the port
    defaults to 1883. Anything else is refused with :class:`InvalidInput`."""
    raw = text.strip()
    if "@" in raw or "/" in raw:       # a URL, perhaps with credentials: never echoed
        raise InvalidInput("--mqtt takes the broker's HOST[:PORT] only (e.g. 127.0.0.1:1883), not a URL; give its "
                           f"user with --mqtt-user and its password through --mqtt-password-file or ${PASSWORD_ENV}")
    host, port_text = raw, None
    if raw.startswith("["):
        end = raw.find("]")
        rest = raw[end + 1:]
        if end < 0 or (rest and not rest.startswith(":")):
            raise InvalidInput(f"--mqtt {text!r}: write an IPv6 address as [ADDRESS] or [ADDRESS]:PORT")
        host, port_text = raw[1:end], rest[1:] if rest else None
    elif raw.count(":") == 1:
        host, port_text = raw.split(":")
    elif ":" in raw:
        raise InvalidInput(f"--mqtt {text!r}: write an IPv6 address in brackets, e.g. [::1]:1883")
    if not host or any(c.isspace() for c in host):
        raise InvalidInput(f"--mqtt {text!r} is not HOST[:PORT] (e.g. 127.0.0.1:1883); give the broker's host, "
                           "and its credentials through --mqtt-user and --mqtt-password-file or "
                           f"${PASSWORD_ENV}")
    if port_text is None:
        return host, DEFAULT_PORT
    if not port_text.isdigit() or not 1 <= int(port_text) <= 65535:
        raise InvalidInput(f"--mqtt {text!r}: the port must be a number in 1-65535")
    return host, int(port_text)


def _read_password_file(path: str | Path) -> str:
    path = Path(path)
    if optional_file(path, "the --mqtt-password-file (the password on its first line)") is None:
        raise MissingInput(f"--mqtt-password-file {path}: no such file; write the broker's password on its first line")
    try:
        text = path.read_text()
    except (IsADirectoryError, UnicodeDecodeError, PermissionError, FileNotFoundError) as e:
        raise InvalidInput(f"--mqtt-password-file {path}: cannot read a password from it ({e.__class__.__name__})") \
            from None
    password = text.splitlines()[0].strip() if text.strip() else ""
    if not password:
        raise InvalidInput(f"--mqtt-password-file {path}: its first line is empty; write the password there")
    return password


def mqtt_config_from_flags(address: str, prefix: str = "avar", username: str | None = None,
                           password_file: str | Path | None = None, client_id: str = "avar-net",
                           environ: Mapping[str, str] | None = None) -> MqttConfig:
    """``watch --mqtt HOST[:PORT]``'s options as a config, checked. The password is never
    an option (``ps`` shows options to every user): it comes from ``password_file`` or
    else from the environment variable ``AVAR_MQTT_PASSWORD``."""
    host, port = parse_mqtt_address(address)
    env = os.environ if environ is None else environ
    password = _read_password_file(password_file) if password_file is not None else env.get(PASSWORD_ENV) or None
    if password is not None and username is None:
        raise InvalidInput(f"--mqtt: a password was given ({'--mqtt-password-file' if password_file else PASSWORD_ENV})"
                           " without --mqtt-user; MQTT sends a password only with a user name")
    return MqttConfig(host=host, port=port, username=username, password=password, topic_prefix=prefix,
                      client_id=client_id)


def camera_topic_id(name: str) -> str:
    """A camera's name as one topic level and Home Assistant id (``[A-Za-z0-9_-]``): the
    name itself when it is one already (a config file's ``front_door``); else its other
    characters replaced by ``_`` and a short hash of the whole name added, so that two
    names never share topics (a one-off source's URL)."""
    if _SAFE_ID.fullmatch(name):
        return name
    slug = re.sub(r"[^A-Za-z0-9_-]+", "_", name).strip("_")[:60] or "camera"
    return f"{slug}_{hashlib.sha256(name.encode()).hexdigest()[:6]}"


@functools.lru_cache(maxsize=1)
def _version() -> str:
    try:
        from importlib.metadata import version

        return version("avar-net")
    except Exception:   # a checkout that is not installed
        return "unknown"


@dataclass
class HeldAlert:
    """An alert event waiting for the broker: when it was raised (monotonic), its camera's
    topic id, its JSON, and whether ``P/events`` has it already (then only the camera's
    topic is still owed)."""

    born: float
    camera: str
    payload: str
    on_events: bool = False


class MqttSink:
    """The hub sink that publishes live events to MQTT (module doc). ``cameras``: the
    names known at the start, announced to Home Assistant before their first event.

    ``connected`` says whether the broker is connected now; ``dropped`` counts what was
    lost: events the queue could not take, and held alert events beyond the bound or too
    old. ``alerts_sent`` counts alert events handed to the broker."""

    def __init__(self, config: MqttConfig, cameras: Sequence[str] = ()) -> None:
        self.config = config
        p = config.topic_prefix
        self.available_topic = f"{p}/available"
        self.events_topic = f"{p}/events"
        self.alerts_sent = 0
        self._dropped_queue = 0           # written by handle() only (under the hub's lock)
        self._dropped_held = 0            # written by the publishing thread only
        self._queue_burst = 0
        self._held_burst = 0
        self._closed = False
        self._stop = threading.Event()
        self._connected = threading.Event()
        self._resync = threading.Event()
        self._lost_at: float | None = None
        self._refused: str | None = None
        self._node = camera_topic_id(p.replace("/", "_"))
        # the publishing thread's own state
        self._cameras: dict[str, str] = {}
        self._retained: dict[str, str] = {}                 # every retained topic's newest payload
        self._pending: dict[str, tuple[str, int, bool]] = {}  # newest per topic, not yet handed over
        self._scores: dict[str, str] = {}                   # camera id -> newest score JSON
        self._score_due: dict[str, float] = {}
        self._labels: dict[str, str] = {}
        self._held: deque[HeldAlert] = deque()
        self._in_flight: list[mqtt.MQTTMessageInfo] = []
        self._deadline = 0.0
        for name in cameras:
            self._camera(name)
        self._queue: queue.Queue[Any] = queue.Queue(maxsize=config.queue)

        client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=config.client_id, clean_session=True,
                             protocol=mqtt.MQTTv311)
        if config.username is not None:
            client.username_pw_set(config.username, config.password)
        client.will_set(self.available_topic, "offline", qos=1, retain=True)
        client.reconnect_delay_set(RECONNECT_MIN_S, RECONNECT_MAX_S)
        client.connect_timeout = CONNECT_TIMEOUT_S
        client.on_connect = self._on_connect
        client.on_disconnect = self._on_disconnect
        client.on_connect_fail = self._on_connect_fail
        client.on_message = self._on_message
        self._client = client
        self._where = f"mqtt://{config.host}:{config.port}"
        client.connect_async(config.host, config.port, keepalive=KEEPALIVE_S)
        client.loop_start()
        self._thread = threading.Thread(target=self._run, name="mqtt", daemon=True)
        self._thread.start()

    # -- what other threads see -------------------------------------------------------

    @property
    def connected(self) -> bool:
        return self._connected.is_set()

    @property
    def dropped(self) -> int:
        return self._dropped_queue + self._dropped_held

    @property
    def held(self) -> int:
        """Alert events waiting for the broker."""
        return len(self._held)

    def handle(self, event: Event) -> None:
        if isinstance(event, FrameEvent) or self._closed:
            return
        try:
            self._queue.put_nowait(event)
        except queue.Full:
            self._dropped_queue += 1
            if not self._queue_burst:
                logger.warning("%s: the publishing queue is full (%d events): events are dropped and counted",
                               self._where, self.config.queue)
            self._queue_burst += 1
            return
        if self._queue_burst:
            logger.warning("%s: %d event(s) dropped while the publishing queue was full (%d in all)", self._where,
                           self._queue_burst, self._dropped_queue)
            self._queue_burst = 0

    # -- paho's network thread ----------------------------------------------------------

    def _on_connect(self, client: mqtt.Client, userdata: Any, flags: Any, reason: Any, properties: Any) -> None:
        if reason.is_failure:
            if self._refused != str(reason):
                logger.error("%s refused the connection: %s (check --mqtt-user and the password); retrying",
                             self._where, reason)
                self._refused = str(reason)
            return
        self._refused = None
        if self._lost_at is not None:
            logger.info("%s: connected again after %.1f s; %d held alert event(s) to send", self._where,
                        time.monotonic() - self._lost_at, len(self._held))
        else:
            logger.info("%s: connected (topics under %s/)", self._where, self.config.topic_prefix)
        self._lost_at = None
        if self.config.discovery:
            client.subscribe(f"{self.config.discovery_prefix}/status", qos=1)
        self._resync.set()
        self._connected.set()

    def _on_disconnect(self, client: mqtt.Client, userdata: Any, flags: Any, reason: Any, properties: Any) -> None:
        was = self._connected.is_set()
        self._connected.clear()
        if was and not self._closed:
            self._lost_at = time.monotonic()
            logger.warning("%s: connection lost (%s); reconnecting with backoff (%d-%d s), alert events are held "
                           "(the newest %d, up to %.0f s old)", self._where, reason, RECONNECT_MIN_S,
                           RECONNECT_MAX_S, self.config.queue, self.config.alert_max_age_s)

    def _on_connect_fail(self, client: mqtt.Client, userdata: Any) -> None:
        if self._lost_at is None:       # once per outage: the first failure at start or after a loss
            self._lost_at = time.monotonic()
            logger.warning("%s: cannot connect; retrying with backoff (%d-%d s) while scoring goes on",
                           self._where, RECONNECT_MIN_S, RECONNECT_MAX_S)

    def _on_message(self, client: mqtt.Client, userdata: Any, message: mqtt.MQTTMessage) -> None:
        # Home Assistant's birth message: it (re)started and wants the discovery configs again
        if message.topic == f"{self.config.discovery_prefix}/status" and message.payload == b"online":
            self._resync.set()

    # -- the publishing thread ----------------------------------------------------------

    def _camera(self, name: str) -> str:
        cam = self._cameras.get(name)
        if cam is None:
            cam = self._cameras[name] = camera_topic_id(name)
            if self.config.discovery:
                for topic, payload in self._discovery(name, cam):
                    self._state(topic, payload)
        return cam

    def _topic(self, cam: str, what: str) -> str:
        return f"{self.config.topic_prefix}/{cam}/{what}"

    def _state(self, topic: str, payload: str) -> None:
        self._retained[topic] = payload
        self._pending.pop(topic, None)          # newest last, in the order of change
        self._pending[topic] = (payload, 1, True)

    def _route(self, event: Event) -> None:
        cam = self._camera(event.source)
        if isinstance(event, ScoreRecord):
            self._scores[cam] = json.dumps(event.to_json(), ensure_ascii=False)
            if self._labels.get(cam) != event.label:
                self._labels[cam] = event.label
                self._state(self._topic(cam, "label"), event.label)
        elif isinstance(event, AlertEvent) and event.type in (ALERT_START, ALERT_END):
            self._state(self._topic(cam, "anomaly"), "ON" if event.type == ALERT_START else "OFF")
            if len(self._held) >= self.config.queue:
                self._held.popleft()
                self._drop_held(1, f"more than {self.config.queue} alert events held")
            self._held.append(HeldAlert(time.monotonic(), cam, json.dumps(event.to_json(), ensure_ascii=False)))
        elif isinstance(event, StatusEvent):
            state = {STARTED: "live", RECONNECTED: "live", STALLED: "stalled", ENDED: "ended"}.get(event.type)
            if state is not None:
                self._state(self._topic(cam, "state"), state)
            if event.type == STARTED and self._topic(cam, "anomaly") not in self._retained:
                self._state(self._topic(cam, "anomaly"), "OFF")   # a retained ON of an earlier watch is cleared

    def _drop_held(self, count: int, why: str) -> None:
        self._dropped_held += count
        if not self._held_burst:
            logger.warning("%s: held alert events dropped (%s); %d dropped in all", self._where, why, self.dropped)
        self._held_burst += count

    def _discovery(self, name: str, cam: str) -> list[tuple[str, str]]:
        """Home Assistant's discovery configs of camera ``name``: topic, JSON payload."""
        c = self.config
        device = {"identifiers": [f"{self._node}_{cam}"], "name": name, "manufacturer": "AVAR-Net",
                  "model": "audio-visual anomaly detector", "sw_version": _version()}
        origin = {"name": "avar-net", "sw_version": _version()}
        common = {"availability_topic": self.available_topic, "payload_available": "online",
                  "payload_not_available": "offline", "device": device, "origin": origin}
        entities = {
            ("binary_sensor", "anomaly"): {"name": "Anomaly", "state_topic": self._topic(cam, "anomaly"),
                                           "payload_on": "ON", "payload_off": "OFF", "device_class": "safety",
                                           "json_attributes_topic": self._topic(cam, "event")},
            ("sensor", "score"): {"name": "Anomaly score", "state_topic": self._topic(cam, "score"),
                                  "value_template": "{{ value_json.score }}", "state_class": "measurement",
                                  "suggested_display_precision": 2, "icon": "mdi:chart-bell-curve"},
            ("sensor", "label"): {"name": "Label", "state_topic": self._topic(cam, "label"), "icon": "mdi:tag"},
            ("sensor", "state"): {"name": "Stream", "state_topic": self._topic(cam, "state"), "device_class": "enum",
                                  "options": ["live", "stalled", "ended"], "icon": "mdi:cctv"},
        }
        out = []
        for (component, what), entity in entities.items():
            object_id = f"{cam}_{what}"
            payload = {**entity, "unique_id": f"{self._node}_{object_id}", **common}
            out.append((f"{c.discovery_prefix}/{component}/{self._node}/{object_id}/config", json.dumps(payload)))
        return out

    def _announce(self) -> None:
        """After a (re)connection or Home Assistant's birth: availability, the discovery
        configs and every retained state again, before anything else."""
        again = {self.available_topic: ("online", 1, True)}
        again.update((t, (p, 1, True)) for t, p in self._retained.items())
        again.update(self._pending)
        self._pending = again

    def _send(self, topic: str, payload: str, qos: int, retain: bool) -> bool:
        info = self._client.publish(topic, payload, qos=qos, retain=retain)
        if info.rc == mqtt.MQTT_ERR_SUCCESS or (qos > 0 and info.rc == mqtt.MQTT_ERR_NO_CONN):
            self._in_flight.append(info)       # (a QoS 1 message paho keeps and sends on reconnection)
            return True
        return False

    def _flush(self, final: bool = False) -> None:
        if not self._connected.is_set():
            return
        self._in_flight = [i for i in self._in_flight if not i.is_published()]
        budget = MAX_IN_FLIGHT - len(self._in_flight)
        while self._pending and budget > 0:
            topic, (payload, qos, retain) = next(iter(self._pending.items()))
            if not self._send(topic, payload, qos, retain):
                return
            del self._pending[topic]
            budget -= 1
        now = time.monotonic()
        while self._held and budget > 1:
            alert = self._held[0]
            if now - alert.born > self.config.alert_max_age_s and not alert.on_events:
                self._held.popleft()
                self._drop_held(1, f"older than {self.config.alert_max_age_s:.0f} s when the broker came back")
                continue
            # the two topics one at a time: an alert whose second publish failed is not sent to the first again
            if not alert.on_events:
                if not self._send(self.events_topic, alert.payload, 1, False):
                    return
                alert.on_events = True
            if not self._send(self._topic(alert.camera, "event"), alert.payload, 1, False):
                return
            self._held.popleft()
            self.alerts_sent += 1
            budget -= 2
        if not self._held and self._held_burst:
            logger.warning("%s: %d held alert event(s) were dropped in that outage", self._where, self._held_burst)
            self._held_burst = 0
        for cam in list(self._scores):
            if budget <= 0:
                break
            if not final and now < self._score_due.get(cam, 0.0):
                continue
            if not self._send(self._topic(cam, "score"), self._scores[cam], 0, False):
                return
            del self._scores[cam]
            self._score_due[cam] = now + SCORE_INTERVAL_S
            budget -= 1

    def _run(self) -> None:
        stopping = False
        while not stopping:
            stopping = self._stop.is_set()     # (what was queued before close() is still taken below)
            try:
                item = self._queue.get(timeout=0.1)
            except queue.Empty:
                item = None
            while item is not None:
                try:
                    self._route(item)
                except Exception:   # a bug: seen, and the thread goes on
                    logger.exception("mqtt: a %s event could not be published", item.type)
                try:
                    item = self._queue.get_nowait()
                except queue.Empty:
                    item = None
            if self._resync.is_set() and self._connected.is_set():
                self._resync.clear()
                self._announce()
            self._flush(final=stopping)
        self._finish()

    def _finish(self) -> None:
        """Send what is left until the deadline, then ``offline`` and a clean disconnect
        (so that the broker does not publish the last will)."""
        while time.monotonic() < self._deadline and self._connected.is_set() and \
                (self._pending or self._held or self._scores):
            if self._resync.is_set():
                self._resync.clear()
                self._announce()
            self._flush(final=True)
            time.sleep(0.02)
        if self._connected.is_set():
            self._send(self.available_topic, "offline", 1, True)
        while time.monotonic() < self._deadline and self._connected.is_set() and \
                any(not i.is_published() for i in self._in_flight):
            time.sleep(0.02)
        if self._held:
            self._dropped_held += len(self._held)
            logger.warning("%s: %d alert event(s) not delivered by the end (the broker was %s)", self._where,
                           len(self._held), "not reachable" if not self._connected.is_set() else "too slow")
            self._held.clear()
        self._client.disconnect()

    def close(self, wait: float = 2.0) -> None:
        """Publish what is queued for up to ``wait`` seconds, then ``offline``, and stop
        both threads; held alerts still not sent by then are counted as dropped."""
        if self._closed:
            return
        self._closed = True                  # handle() takes nothing more
        self._deadline = time.monotonic() + wait
        self._stop.set()
        self._thread.join(wait + 1.0)
        self._client.loop_stop()
        self._connected.clear()
        if self.dropped:
            logger.warning("%s: %d alert event(s) sent, %d event(s) dropped", self._where, self.alerts_sent,
                           self.dropped)
