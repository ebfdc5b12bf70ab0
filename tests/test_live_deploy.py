"""Live mode deployed as the README's Live section says (issue 22): ONE ``cli.py watch
--config cameras.yml`` process with every output of the file at once, against real
parts: a loopback RTSP camera whose URL holds ``{AVAR_...}`` credentials and whose
stream raises an alert, a camera on a closed port, a real mosquitto with a password, a
loopback aiohttp webhook receiver, and ``/metrics`` on the ``serve`` port behind a token
read from ``AVAR_SERVE_TOKEN_FILE``.

Checked together: the alert's ``alert_end`` names a clip that exists and decodes (PyAV);
MQTT got it on ``{prefix}/events`` with the same clip, and the camera's retained
discovery configs and state; ``/metrics`` (bearer token, parsed by prometheus_client's
parser) counts as many steps as the JSON lines hold records, the broker connected and a
clip written; and no secret appears in any output or file name."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import av
import pytest

pytest.importorskip("paho.mqtt.client", reason="paho-mqtt is a dependency of live mode: pip install -e .")

from prometheus_client.parser import text_string_to_metric_families  # noqa: E402

from synth.live_stream import StreamEvent, StreamPlan  # noqa: E402
from tests.loopback_rtsp import LoopbackRtspServer  # noqa: E402
from tests.mqtt_broker import Broker, Collector, free_port, needs_broker  # noqa: E402
from tests.test_documented_commands import documents  # noqa: E402
from live.webhook_receiver import WebhookReceiver  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_thread")
ROOT = Path(__file__).resolve().parent.parent
CAM_SECRET = "camPw9x7"        # the camera's password
DEAD_SECRET = "deadPw4q2"      # the unreachable camera's password
MQTT_SECRET = "mqttPw3k8"      # the broker user's password
SERVE_TOKEN = "srvTok5m1"      # the page's and /metrics' token
SECRETS = (CAM_SECRET, DEAD_SECRET, MQTT_SECRET, SERVE_TOKEN)


def _get(url: str) -> str:
    request = urllib.request.Request(url, headers={"Authorization": f"Bearer {SERVE_TOKEN}"})
    with urllib.request.urlopen(request, timeout=5) as r:
        return r.read().decode()


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@needs_broker
@documents("cli.py watch")
def test_one_watch_with_every_output_of_a_config_file(xd_grid_run: Path, tmp_path: Path) -> None:
    """The run is video only (the live tests' MIL run): its alerts' ``trigger`` is None."""
    broker = Broker(tmp_path / "broker", users={"avar": MQTT_SECRET})
    broker.start()
    serve, dead = free_port(), _closed_port()
    plan = StreamPlan(seconds=8.0, seed=3, audio=True, size=(64, 48), event=StreamEvent(1.0, 4.0), keyframe_s=1.0)
    deploy = tmp_path / "deploy"
    deploy.mkdir()
    secrets = tmp_path / "secrets"
    secrets.mkdir()
    (secrets / "cam-password").write_text(CAM_SECRET + "\n")
    (secrets / "serve-token").write_text(SERVE_TOKEN + "\n")
    env = {**os.environ, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1",
           "AVAR_FRONT_USER": "admin", "AVAR_FRONT_PASSWORD_FILE": str(secrets / "cam-password"),
           "AVAR_DEAD_PASSWORD": DEAD_SECRET, "AVAR_MQTT_PASSWORD": MQTT_SECRET,
           "AVAR_SERVE_TOKEN_FILE": str(secrets / "serve-token")}
    sub = Collector(broker.port, ("avar/#", "homeassistant/#"), username=("avar", MQTT_SECRET))
    proc = None
    try:
        with LoopbackRtspServer(plan) as cam, WebhookReceiver(keep=True) as hook:
            cfg = deploy / "cameras.yml"
            cfg.write_text(f"""run: {xd_grid_run}
device: cpu
defaults: {{cooldown: 1.0}}
cameras:
  front: {{url: "{cam.url.replace('rtsp://', 'rtsp://{AVAR_FRONT_USER}:{AVAR_FRONT_PASSWORD}@')}"}}
  dead: {{url: "rtsp://admin:{{AVAR_DEAD_PASSWORD}}@127.0.0.1:{dead}/stream"}}
outputs:
  jsonl: events.jsonl
  snapshots: snapshots/
  clips: {{dir: clips/, pre_s: 1.0, post_s: 1.0, buffer_s: 20.0}}
  webhook: {{url: "http://127.0.0.1:{hook.port}/hook", timeout: 5.0, retries: 1}}
  mqtt: {{host: 127.0.0.1, port: {broker.port}, username: avar, password: "{{AVAR_MQTT_PASSWORD}}",
         topic_prefix: avar, client_id: avar-deploy-test}}
  serve: {{address: "127.0.0.1:{serve}", token: "{{AVAR_SERVE_TOKEN}}"}}
  metrics: {{address: null}}
""")
            out = deploy / "events.jsonl"
            proc = subprocess.Popen([sys.executable, "cli.py", "watch", "--config", str(cfg), "--stall-timeout", "1",
                                     "--duration", "7.5"], cwd=ROOT, env=env, stdout=subprocess.PIPE,
                                    stderr=subprocess.PIPE, text=True, start_new_session=True)
            deadline = time.monotonic() + 90
            # the live camera ends after --duration; the dead one never does: stopped as a supervisor stops it
            while not (out.exists() and '"type": "ended"' in out.read_text()):
                assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()[1][-3000:]
                time.sleep(0.2)
            assert sub.wait_for(lambda: any('"alert_end"' in p for p in sub.on("avar/events")), 15), sub.messages
            base = f"http://127.0.0.1:{serve}"
            metrics_text = _get(f"{base}/metrics")
            state = {path: _get(f"{base}/api/{path}") for path in ("sources", "alerts")}
            with pytest.raises(urllib.error.HTTPError) as refused:
                urllib.request.urlopen(f"{base}/metrics", timeout=5)          # no token, no metrics
            assert refused.value.code == 401
            proc.send_signal(signal.SIGTERM)
            stdout, stderr = proc.communicate(timeout=30)
        assert proc.returncode == 0, stderr[-3000:]

        events = [json.loads(line) for line in out.read_text().splitlines()]
        assert {e["source"] for e in events} == {"front", "dead"}
        ends = [e for e in events if e["type"] == "alert_end" and e["source"] == "front"]
        assert ends, [e["type"] for e in events if e["type"] != "score"]
        end = ends[0]
        assert end["trigger"] is None                             # a single-modality run
        clip = Path(end["clip"])
        assert clip.parent == deploy / "clips" and clip.is_file() and clip.suffix == ".mp4"
        with av.open(str(clip)) as c:
            frames = sum(1 for _ in c.decode(video=0))
        assert frames >= (end["t_end"] - end["t_start"]) * plan.fps

        # MQTT: the alert on {prefix}/events with the same clip; retained discovery and state for a fresh client
        on_events = [json.loads(p) for p in sub.on("avar/events")]
        assert any(e["type"] == "alert_end" and e["source"] == "front" and e["clip"] == end["clip"]
                   for e in on_events), on_events
        fresh = Collector(broker.port, ("avar/#", "homeassistant/#"), username=("avar", MQTT_SECRET))
        try:
            discovery = {f"homeassistant/{kind}/avar/{cam}_{what}/config" for cam in ("front", "dead") for kind, what in
                         (("binary_sensor", "anomaly"), ("sensor", "score"), ("sensor", "label"), ("sensor", "state"))}
            fresh.wait_for(lambda: discovery | {"avar/front/state"} <= {t for _, t, _, _ in fresh.messages}, 10)
            retained = {t: p for _, t, p, r in fresh.messages if r}
        finally:
            fresh.close()
        assert discovery <= set(retained), sorted(retained)      # both cameras appear in Home Assistant
        configs = [json.loads(p) for t, p in retained.items() if t.startswith("homeassistant/") and "front_" in t]
        assert {c["state_topic"] for c in configs} == {f"avar/front/{what}" for what in ("anomaly", "score", "label",
                                                                                          "state")}, sorted(retained)
        assert retained["avar/front/state"] == "ended" and retained["avar/front/anomaly"] == "OFF"
        assert retained["avar/available"] == "offline"            # the watch said goodbye

        # /metrics: steps scored as many as the camera's JSON records, the broker connected, a clip written
        families = {f.name: f for f in text_string_to_metric_families(metrics_text)}
        scored = {s.labels["camera"]: s.value for s in families["avar_steps_scored"].samples
                  if s.name.endswith("_total")}
        assert scored["front"] == sum(1 for e in events if e["type"] == "score" and e["source"] == "front") > 0
        assert families["avar_mqtt_connected"].samples[0].value == 1
        assert families["avar_clips_written"].samples[0].value >= 1

        # no secret anywhere: outputs, MQTT, webhook bodies, metrics, the page's state, file names
        assert hook.bodies and any(b'"alert_end"' in b for b in hook.bodies)
        names = "\n".join(str(p.relative_to(tmp_path)) for p in deploy.rglob("*"))
        assert "snapshots/front" in names and "clips/front" in names, names
        outputs = {"stdout": stdout, "stderr": stderr, "json lines": out.read_text(),
                   "mqtt": "\n".join(f"{t} {p}" for _, t, p, _ in sub.messages),
                   "webhook": b"\n".join(hook.bodies).decode(), "metrics": metrics_text,
                   "state": "\n".join(state.values()), "file names": names}
        assert "cannot open" in stderr                            # the dead camera's errors were logged
        for where, text in outputs.items():
            for secret in SECRETS:
                assert secret not in text, (where, secret, text[-2000:])
    finally:
        sub.close()
        if proc is not None and proc.poll() is None:
            proc.kill()
            proc.communicate()
        broker.kill(signal.SIGTERM)
