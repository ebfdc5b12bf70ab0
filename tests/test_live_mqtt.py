"""Live mode on MQTT (``live/mqtt.py``, ``watch --mqtt``) against a real broker: Debian's
``mosquitto``, started here on a free loopback port with persistence on (as an operator's
broker keeps its sessions across a restart), and real paho subscribers.

Checked: the topics and payloads of a watch's events, the retained Home Assistant
discovery configs a fresh subscriber gets; a broker that is down at the start (scoring is
not held up; the held alerts are bounded by count and by age); the broker killed and
restarted while a real watch scores a stream in real time (records keep coming, the
alerts raised during the outage are delivered after the restart); and ``kill -9`` of a
``cli.py watch`` process (the broker publishes its last will, ``offline``)."""

from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from live.events import (ALERT_END, ALERT_START, ENDED, STARTED, AlertEvent, Event, EventHub, ScoreRecord,
                         StatusEvent)

mqtt = pytest.importorskip("paho.mqtt.client", reason="paho-mqtt is a dependency of live mode: pip install -e .")

from live.mqtt import MqttConfig, MqttSink, camera_topic_id, parse_mqtt_address  # noqa: E402
from tests.mqtt_broker import MOSQUITTO, Broker, Collector, needs_broker  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_thread")
ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def broker(tmp_path: Path):
    if MOSQUITTO is None:
        pytest.skip("no mosquitto")
    b = Broker(tmp_path / "broker")
    b.start()
    yield b
    if b.proc is not None and b.proc.poll() is None:
        b.kill(signal.SIGTERM)


def _score(source: str, t: float, score: float) -> ScoreRecord:
    label = "fight" if score >= 0.5 else "normal"
    return ScoreRecord(source, t, t - 0.5, time.time(), 0.01, label, score, {"fight": score, "normal": 1 - score})


def _alert(kind: str, source: str, alert_id: int) -> AlertEvent:
    return AlertEvent(kind, source, 1.0 * alert_id, None if kind == ALERT_START else 2.0 * alert_id, "fight", 0.9,
                      time.time(), alert_id, 1.0 * alert_id)


@needs_broker
def test_topics_payloads_and_retained_discovery(broker: Broker) -> None:
    """A watch's events as MQTT messages, and what a fresh subscriber (Home Assistant
    starting later) gets from the broker: the discovery configs and every state, retained."""
    cams = ("front_door", "Hof-Süd / cam 2")
    ids = [camera_topic_id(c) for c in cams]
    assert ids[0] == "front_door" and ids[1].startswith("Hof-S_d_cam_2_")
    assert camera_topic_id("Hof-Süd / cam 3") != ids[1] and camera_topic_id("Hof-Süd / cam 2_") != ids[1]
    sub = Collector(broker.port, ("avar/#", "homeassistant/#"))
    sink = MqttSink(MqttConfig("127.0.0.1", broker.port), cameras=cams)
    events: list[Event] = [StatusEvent(STARTED, c, time.time(), 0.0) for c in cams]
    events += [_score(cams[0], 0.5 * i, 0.1 + 0.01 * i) for i in range(1, 21)]     # 20 records at once
    events += [_score(cams[1], 0.5, 0.2), _alert(ALERT_START, cams[0], 1)]
    took = []
    for event in events:
        t0 = time.perf_counter()
        sink.handle(event)
        took.append(time.perf_counter() - t0)
    assert sub.wait_for(lambda: len(sub.on("avar/events")) == 1 and sub.on("avar/front_door/score"), 10)
    configs_sent = lambda: len([m for m in sub.messages if m[1].endswith("/config")])  # noqa: E731
    assert configs_sent() == 8                       # 4 entities per camera
    sub.client.publish("homeassistant/status", "online")     # Home Assistant (re)started: they come again
    assert sub.wait_for(lambda: configs_sent() == 16, 5)
    time.sleep(max(0.0, 1.3 - (time.monotonic() - sub.first("avar/front_door/score"))))   # the next score: 1 s on
    for event in [_score(cams[0], 11.0, 0.95), _alert(ALERT_END, cams[0], 1),
                  *[StatusEvent(ENDED, c, time.time(), 11.0) for c in cams]]:
        sink.handle(event)
        events.append(event)
    sink.close()
    assert sink.dropped == 0 and sink.alerts_sent == 2 and not sink.connected
    assert max(took) < 0.05 and sorted(took)[len(took) // 2] < 0.001, max(took)   # handle() only queues

    alerts = [json.loads(p) for p in sub.on("avar/events")]
    assert alerts == [e.to_json() for e in events if isinstance(e, AlertEvent)]          # as the JSON lines
    assert [json.loads(p) for p in sub.on("avar/front_door/event")] == alerts
    changes = lambda xs: [x for i, x in enumerate(xs) if i == 0 or xs[i - 1] != x]  # noqa: E731 (states re-sent)
    assert changes(sub.on("avar/front_door/anomaly"))[-2:] == ["ON", "OFF"]
    assert changes(sub.on("avar/front_door/state")) == changes(sub.on(f"avar/{ids[1]}/state")) == ["live", "ended"]
    scores = [json.loads(p) for p in sub.on("avar/front_door/score")]
    sent = [at for at, t, _, _ in sub.messages if t == "avar/front_door/score"]
    assert 2 <= len(scores) <= 3 and scores[-2]["t"] == 10.0 and scores[-1]["t"] == 11.0   # the newest each time
    assert all(b - a > 0.8 for a, b in zip(sent, sent[1:]))                                # about 1 Hz at most
    assert scores[-1] == _score(cams[0], 11.0, 0.95).to_json() | {"wall_time": scores[-1]["wall_time"]}
    assert changes(sub.on("avar/front_door/label")) == ["normal", "fight"]
    assert changes(sub.on("avar/available")) == ["online", "offline"]          # an explicit offline at a clean end
    sub.close()

    fresh = Collector(broker.port, ("homeassistant/#", "avar/#"))
    configs = {}
    assert fresh.wait_for(lambda: len([m for m in fresh.messages if m[1].endswith("/config")]) == 8, 10)
    time.sleep(0.2)
    retained = {t: p for _, t, p, r in fresh.messages if r}
    fresh.close()
    for topic, payload in retained.items():
        if topic.endswith("/config"):
            configs[topic] = json.loads(payload)
    for name, cam in zip(cams, ids):
        for component, what in (("binary_sensor", "anomaly"), ("sensor", "score"), ("sensor", "label"),
                                ("sensor", "state")):
            # <discovery_prefix>/<component>/<node_id>/<object_id>/config
            config = configs[f"homeassistant/{component}/avar/{cam}_{what}/config"]
            assert config["state_topic"] == f"avar/{cam}/{what}" and config["unique_id"] == f"avar_{cam}_{what}"
            assert config["availability_topic"] == "avar/available" and config["payload_not_available"] == "offline"
            assert config["device"]["name"] == name and config["device"]["identifiers"] == [f"avar_{cam}"]
        assert configs[f"homeassistant/binary_sensor/avar/{cam}_anomaly/config"]["device_class"] == "safety"
        assert retained[f"avar/{cam}/state"] == "ended" and retained[f"avar/{cam}/anomaly"] == "OFF"
    assert retained["avar/available"] == "offline" and retained["avar/front_door/label"] == "fight"
    assert "avar/events" not in retained and "avar/front_door/score" not in retained
    assert len({c["unique_id"] for c in configs.values()}) == 8


@needs_broker
def test_a_broker_down_at_the_start_delays_nothing_and_held_alerts_are_bounded(broker: Broker) -> None:
    """The broker is down when the sinks start: ``handle`` still returns at once, the
    alerts are held (the newest ``queue`` of them, the others counted), and when it comes
    up they are delivered; held alerts older than ``alert_max_age_s`` are dropped."""
    sub = Collector(broker.port, ("held/#", "aged/#"), client_id="held-sub", clean=False)
    sub.close()
    broker.kill(signal.SIGTERM)               # (it saves the subscriber's session as it stops)
    bounded = MqttSink(MqttConfig("127.0.0.1", broker.port, topic_prefix="held", client_id="held", queue=3))
    aged = MqttSink(MqttConfig("127.0.0.1", broker.port, topic_prefix="aged", client_id="aged",
                               alert_max_age_s=0.5))
    try:
        alerts = [_alert(ALERT_START, "cam", 1), _alert(ALERT_END, "cam", 1), _alert(ALERT_START, "cam", 2),
                  _alert(ALERT_END, "cam", 2), _alert(ALERT_START, "cam", 3)]
        t0 = time.perf_counter()
        for i in range(300):
            aged.handle(_score("cam", 0.5 * i, 0.3))
        aged.handle(alerts[0])
        assert time.perf_counter() - t0 < 0.5
        for event in [StatusEvent(STARTED, "cam", time.time(), 0.0), *alerts]:
            bounded.handle(event)                  # (a queue of 3 takes them one at a time)
            time.sleep(0.05)
        deadline = time.monotonic() + 5
        while not (bounded.held == 3 and aged.held == 1):
            assert time.monotonic() < deadline, (bounded.held, aged.held)
            time.sleep(0.05)
        assert not bounded.connected and bounded.dropped == 2        # the two oldest
        time.sleep(0.6)                                              # the aged sink's alert is now too old
        broker.start()
        sub = Collector(broker.port, ("held/#", "aged/#"), client_id="held-sub", clean=False)
        assert sub.wait_for(lambda: len(sub.on("held/events")) == 3 and sub.on("aged/cam/anomaly"), 15), sub.messages
        assert [json.loads(p) for p in sub.on("held/events")] == [e.to_json() for e in alerts[2:]]
        assert bounded.connected and bounded.dropped == 2 and bounded.held == 0
        deadline = time.monotonic() + 5
        while aged.dropped != 1:
            assert time.monotonic() < deadline, aged.dropped
            time.sleep(0.05)
        time.sleep(0.3)
        assert sub.on("aged/events") == [] and sub.on("aged/cam/anomaly") == ["ON"]   # the state still goes
        assert [json.loads(p)["t"] for p in sub.on("aged/cam/score")] == [149.5]      # only the newest score
        sub.close()
    finally:
        bounded.close()
        aged.close()


@needs_broker
def test_a_broker_that_refuses_the_login_holds_up_nothing(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """A broker with users: the wrong password is refused (logged once, without the
    password; ``handle`` still returns at once), the right one publishes."""
    broker = Broker(tmp_path / "broker", users={"avar": "right-pw"})
    broker.start()
    try:
        sub = Collector(broker.port, ("auth/#",), username=("avar", "right-pw"))
        with caplog.at_level("WARNING", logger="live.mqtt"):
            wrong = MqttSink(MqttConfig("127.0.0.1", broker.port, username="avar", password="wrong-pw",
                                        topic_prefix="auth", client_id="wrong", discovery=False))
            right = MqttSink(MqttConfig("127.0.0.1", broker.port, username="avar", password="right-pw",
                                        topic_prefix="auth", client_id="right", discovery=False))
            try:
                t0 = time.perf_counter()
                for sink in (wrong, right):
                    sink.handle(StatusEvent(STARTED, "cam", time.time(), 0.0))
                    sink.handle(_alert(ALERT_START, "cam", 1))
                assert time.perf_counter() - t0 < 0.05
                assert sub.wait_for(lambda: len(sub.on("auth/events")) == 1, 10)
                time.sleep(1.5)                                   # the wrong one has tried again
                assert right.connected and not wrong.connected and wrong.held == 1
            finally:
                wrong.close(wait=0.5)
                right.close()
        sub.close()
    finally:
        broker.kill(signal.SIGTERM)
    refused = [r.getMessage() for r in caplog.records if "refused the connection" in r.getMessage()]
    assert len(refused) == 1 and "wrong-pw" not in caplog.text and "right-pw" not in caplog.text, caplog.text
    assert wrong.dropped == 1                        # its held alert, given up at the end


class _Clock:
    """A sink that notes when each event passed through the hub (monotonic)."""

    def __init__(self) -> None:
        self.seen: list[tuple[float, dict]] = []
        self.alert_end = threading.Event()

    def handle(self, event: Event) -> None:
        if event.type != "frame":
            self.seen.append((time.monotonic(), event.to_json()))
        if event.type == ALERT_END:
            self.alert_end.set()

    def close(self) -> None:
        pass


@needs_broker
def test_the_broker_killed_and_restarted_mid_stream(broker: Broker, xd_grid_run: Path, tmp_path: Path) -> None:
    """A real watch of a stream paced in real time, with an event at 3.5-6.5 s; the broker
    is killed (SIGKILL) once scores arrive and restarted after the alert has ended. Scoring
    goes on through the outage, and both alert events raised during it reach a subscriber
    after the restart, as the JSON lines have them."""
    from live import AlertConfig, JsonLinesSink, WatchConfig, load_watch_predictor, parse_source, run_watch
    from synth.live_stream import StreamEvent, StreamPlan, write_stream

    video = tmp_path / "cam.ts"
    write_stream(str(video), StreamPlan(seconds=10.0, seed=6, audio=False, size=(64, 48),
                                        event=StreamEvent(3.5, 6.5)), realtime=False)
    predictor, run_steps = load_watch_predictor(xd_grid_run)
    sub = Collector(broker.port, ("out/#",), client_id="outage-sub", clean=False)
    subscribed_at = time.monotonic()
    buf, clock = io.StringIO(), _Clock()
    sink = MqttSink(MqttConfig("127.0.0.1", broker.port, topic_prefix="out", client_id="outage"))
    stop = threading.Event()
    result: dict = {}

    def watch() -> None:
        try:
            result["summary"] = run_watch(predictor, [parse_source(str(video), realtime=True)],
                                          WatchConfig(alerts=AlertConfig(0.5, 1.0, 1.5)),
                                          EventHub([JsonLinesSink(buf), sink, clock]), stop, run_steps=run_steps)
        except BaseException as exc:
            result["error"] = exc

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    try:
        cam = camera_topic_id(str(video))
        assert sub.wait_for(lambda: sub.on(f"out/{cam}/score"), 60), result
        time.sleep(max(0.0, subscribed_at + 1.2 - time.monotonic()))   # the session is saved before the kill
        broker.kill()
        killed_at = time.monotonic()
        assert clock.alert_end.wait(30), [e["type"] for _, e in clock.seen]
        time.sleep(0.5)
        broker.start()
        restarted_at = time.monotonic()
        raised = [at for at, e in clock.seen if e["type"] in (ALERT_START, ALERT_END)]
        assert sub.wait_for(lambda: len(sub.on("out/events")) >= len(raised), 20), (sub.messages[-5:], sink.held)
        delivered_at = time.monotonic()
        watcher.join(30)
        sink.close()
    finally:
        stop.set()
        watcher.join(10)
        sink.close()
        sub.close()
    assert "error" not in result, result
    lines = [json.loads(line) for line in buf.getvalue().splitlines()]
    alerts = [e for e in lines if e["type"] in (ALERT_START, ALERT_END)]
    assert [json.loads(p) for p in sub.on("out/events")] == alerts and len(alerts) >= 2      # every one, in order
    assert len(raised) >= 2 and all(killed_at < at < restarted_at for at in raised)   # raised during the outage
    during = [e for at, e in clock.seen if killed_at < at < restarted_at and e["type"] == "score"]
    assert len(during) >= 4 and max(e["latency_s"] for e in during) < 3.0         # scoring went on, on time
    first = sub.first("out/events")
    assert first is not None and first > restarted_at and sink.dropped == 0
    assert sub.on(f"out/{cam}/anomaly")[-1] == "OFF" and sub.on(f"out/{cam}/state")[-1] == "ended"
    print(f"\nMQTT outage: broker down {restarted_at - killed_at:.2f} s ({len(during)} records scored meanwhile); "
          f"held alerts delivered {first - restarted_at:.2f} s after the restart "
          f"(both within {delivered_at - restarted_at:.2f} s); alert raised {raised[0] - killed_at:.2f} s into the "
          "outage")


@needs_broker
def test_kill_9_of_a_watch_gives_its_last_will(broker: Broker, xd_grid_run: Path, tmp_path: Path) -> None:
    """``cli.py watch --mqtt``, killed with SIGKILL while it publishes: the broker publishes
    ``offline`` on ``P/available`` (the last will), retained for whoever comes later; the
    password (from ``$AVAR_MQTT_PASSWORD``) is in no line the watch wrote."""
    from synth.live_stream import StreamPlan, write_stream

    video = tmp_path / "cam.ts"
    write_stream(str(video), StreamPlan(seconds=30.0, size=(64, 48), audio=False), realtime=False)
    sub = Collector(broker.port, ("k9/#",))
    env = {**os.environ, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1",
           "AVAR_MQTT_PASSWORD": "s3cret-mqtt"}
    out = tmp_path / "events.jsonl"
    proc = subprocess.Popen([sys.executable, str(ROOT / "cli.py"), "watch", str(xd_grid_run), str(video), "--realtime",
                             "--out", str(out), "--mqtt", f"127.0.0.1:{broker.port}", "--mqtt-prefix", "k9",
                             "--mqtt-client-id", "k9-watch", "--mqtt-user", "avar"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=env)
    err: list[str] = []
    drain = threading.Thread(target=lambda: err.extend(proc.stderr), daemon=True)   # a full pipe would stall it
    drain.start()
    try:
        cam = camera_topic_id(str(video))
        assert sub.wait_for(lambda: sub.on("k9/available") == ["online"] and sub.on(f"k9/{cam}/score"), 90), \
            ("".join(err)[-3000:], sub.messages)
        proc.kill()
        killed_at = time.monotonic()
        proc.wait(10)
        assert sub.wait_for(lambda: sub.on("k9/available")[-1:] == ["offline"], 10)
        print(f"\nkill -9: the broker published offline {sub.first('k9/available', 'offline') - killed_at:.3f} s later")
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        sub.close()
    assert sub.on(f"k9/{cam}/state") == ["live"]          # no clean end: the will is all that came
    late = Collector(broker.port, ("k9/available",))
    assert late.wait_for(lambda: late.on("k9/available") == ["offline"], 5)   # retained
    late.close()
    drain.join(10)
    assert err and "s3cret-mqtt" not in "".join(err) + out.read_text()


def test_mqtt_options_are_checked_before_the_run_loads(tmp_path: Path) -> None:
    """A wrong ``--mqtt`` option is one ``error:`` line and exit status 2, at once (the
    RUNDIR here holds no run: nothing was loaded)."""
    from click.testing import CliRunner

    from cli import main

    assert parse_mqtt_address("broker.lan") == ("broker.lan", 1883)
    assert parse_mqtt_address("[::1]:1884") == ("::1", 1884) and parse_mqtt_address("[::1]") == ("::1", 1883)
    assert parse_mqtt_address("10.0.0.2:8883") == ("10.0.0.2", 8883)
    secret = tmp_path / "pw"
    secret.write_text("hunter2\n")
    for args, says in ((["--mqtt", "127.0.0.1:70000"], "1-65535"), (["--mqtt", "user:pw@host:1883"], "HOST[:PORT]"),
                       (["--mqtt", "mqtt://host"], "not a URL"), (["--mqtt", "host:"], "1-65535"),
                       (["--mqtt", "::1"], "brackets"), (["--mqtt", "h", "--mqtt-prefix", "a/#"], "wildcards"),
                       (["--mqtt", "h", "--mqtt-user", "u", "--mqtt-password-file", str(tmp_path / "none")],
                        "no such file"),
                       (["--mqtt", "h", "--mqtt-password-file", str(secret)], "--mqtt-user")):
        result = CliRunner().invoke(main, ["watch", str(tmp_path), "cam.mp4", *args])
        assert result.exit_code == 2 and result.output.startswith("error:") and says in result.output, \
            (args, result.output)
        assert "hunter2" not in result.output and "pw@" not in result.output
    from live.mqtt import mqtt_config_from_flags

    config = mqtt_config_from_flags("h", username="u", password_file=secret)
    assert config.password == "hunter2" and "hunter2" not in repr(config)
    assert mqtt_config_from_flags("h", username="u", environ={"AVAR_MQTT_PASSWORD": "x"}).password == "x"
