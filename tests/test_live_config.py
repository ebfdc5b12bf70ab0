"""``cli.py watch --config cameras.yml`` (issue 22, section 1): the file checked whole before
anything loads, every error with its line; the schema; ``{AVAR_...}`` secrets from the
environment, a ``_FILE`` or systemd's credentials folder, literal passwords refused; and
per-camera settings that change what a real watch does (threshold, window, audio,
enabled)."""

from __future__ import annotations

import json
import re
import threading
from pathlib import Path

import pytest
from click.testing import CliRunner

from cache_schema import InvalidInput, StepLayout
from live.config_file import ConfigFile, load_config

pytestmark = pytest.mark.usefixtures("one_thread")
EXAMPLE = Path(__file__).resolve().parents[1] / "docs" / "cameras.example.yml"

BAD = """\
run: runs/x
device: cpu
defaults:
  threshhold: 0.5
cameras:
  front_door:
    url: "rtsp://admin:hunter2@192.168.1.10/stream"
    threshold: 1.5
  "back yard":
    url: /dev/video0
  garage:
    url: "rtsp://{AVAR_GARAGE_USER}:{AVAR_NOT_SET}@10.0.0.3/s"
  side: {url: /dev/video1}
  side: {url: /dev/video2}
outputs:
  mqtt: {host: broker, password: plain-text}
  serve: {address: "127.0.0.1:8765", token: sekrit}
  webhook: {url: "ftp://hooks"}
"""
BAD_LINES = {4: "defaults.threshhold: Extra inputs are not permitted",
             7: "cameras.front_door.url: a literal password",
             8: "cameras.front_door.threshold: Input should be less than or equal to 1",
             9: "cameras.back yard: String should match pattern",
             12: "cameras.garage.url: {AVAR_NOT_SET} is not set",
             14: "cameras.side: duplicate key (first at line 13)",
             16: "outputs.mqtt.password: a literal secret",
             17: "outputs.serve.token: a literal secret",
             18: "outputs.webhook.url: give an http:// or https:// URL"}


def _cli(*args: str, env: dict[str, str] | None = None):
    from cli import main

    return CliRunner().invoke(main, ["watch", *args], env=env)


def test_every_error_of_the_file_is_reported_with_its_line_before_anything_loads(tmp_path: Path) -> None:
    """The run named does not exist: what is refused is the file, with every error (and
    not the first only), each naming its line, in one ``error:`` block, exit 2. The
    literal passwords are not repeated in the message."""
    cfg = tmp_path / "cameras.yml"
    cfg.write_text(BAD)
    result = _cli("--config", str(cfg), env={"AVAR_GARAGE_USER": "admin"})
    assert result.exit_code == 2, result.output
    out = result.output
    assert out.startswith(f"error: --config {cfg}: {len(BAD_LINES)} error(s)") and "Traceback" not in out, out
    listed = [line.strip() for line in out.splitlines()[1:] if line.strip()]
    assert len(listed) == len(BAD_LINES), out
    for (line, says), got in zip(sorted(BAD_LINES.items()), listed):
        assert got.startswith(f"{cfg}:{line}: {says}"), (line, got)
    assert "hunter2" not in out and "plain-text" not in out and "sekrit" not in out
    # a file that is not YAML: its line too
    cfg.write_text("run: x\ncameras:\n  a: {url: x\n")
    result = _cli("--config", str(cfg))
    assert result.exit_code == 2 and re.search(rf"{re.escape(str(cfg))}:\d+: ", result.output), result.output
    result = _cli("--config", str(tmp_path / "none.yml"))
    assert result.exit_code == 2 and "no such file" in result.output, result.output
    # /metrics on a port of its own beyond loopback takes outputs.serve's token: none, refused at its line
    (tmp_path / "run").mkdir()
    cfg.write_text("run: run\ncameras:\n  door: {url: /dev/video0}\noutputs:\n  metrics:\n"
                   "    address: 0.0.0.0:9109\n")
    result = _cli("--config", str(cfg))
    assert result.exit_code == 2 and f"{cfg}:6: outputs.metrics.address" in result.output, result.output


def test_schema_is_printed_and_is_the_files_shape() -> None:
    result = _cli("--config-schema")
    assert result.exit_code == 0, result.output
    schema = json.loads(result.output)
    assert schema == ConfigFile.model_json_schema()
    assert set(schema["required"]) == {"run", "cameras"} and schema["additionalProperties"] is False
    assert {"jsonl", "snapshots", "clips", "webhook", "mqtt", "serve", "metrics"} <= set(
        schema["$defs"]["Outputs"]["properties"])
    assert set(schema["$defs"]["Mqtt"]["properties"]) == {
        "host", "port", "username", "password", "topic_prefix", "client_id", "discovery", "discovery_prefix", "queue",
        "alert_max_age_s"}
    assert set(schema["$defs"]["Camera"]["properties"]) == {
        "url", "enabled", "threshold", "min_duration", "cooldown", "window", "audio"}


def test_secrets_come_from_the_environment_a_file_or_the_credentials_folder(tmp_path: Path) -> None:
    cfg = tmp_path / "cams.yml"
    cfg.write_text('run: run\ncameras:\n  door:\n    url: "rtsp://{AVAR_USER}:{AVAR_PASS}@10.0.0.2/s?token={AVAR_TOK}"\n'
                   'outputs:\n  serve: {address: "0.0.0.0:8765", token: "{AVAR_TOK}"}\n'
                   '  mqtt: {host: broker, username: avar, password: "{AVAR_MQTT}"}\n')
    (tmp_path / "run").mkdir()
    (tmp_path / "pass").write_text("from-a-file\n")
    creds = tmp_path / "creds"
    creds.mkdir()
    (creds / "AVAR_TOK").write_text("from-systemd")
    (creds / "AVAR_MQTT").write_text("mqtt-from-systemd")
    env = {"AVAR_USER": "admin", "AVAR_PASS_FILE": str(tmp_path / "pass"), "CREDENTIALS_DIRECTORY": str(creds),
           "AVAR_MQTT": "mqtt-from-env"}                       # the variable goes before the credential
    deploy = load_config(cfg, env)
    camera, = deploy.cameras
    assert camera.url == "rtsp://admin:from-a-file@10.0.0.2/s?token=from-systemd"
    assert deploy.outputs.serve is not None and deploy.outputs.token == "from-systemd"
    assert deploy.outputs.mqtt is not None and deploy.outputs.mqtt.password == "mqtt-from-env"
    assert {"from-a-file", "from-systemd", "mqtt-from-env"} <= deploy.secrets
    assert deploy.run == tmp_path / "run"                       # relative to the file's folder
    for shown in (repr(deploy), repr(camera), str(camera.spec()), repr(camera.spec())):
        assert "from-a-file" not in shown and "from-systemd" not in shown and "mqtt-from-env" not in shown, shown
    assert camera.spec().name == "door" and camera.spec().url == camera.url
    # unset: the error names the line and how to set it
    with pytest.raises(InvalidInput, match=rf"{re.escape(str(cfg))}:4: cameras.door.url: {{AVAR_PASS}} is not set"):
        load_config(cfg, {"AVAR_USER": "admin", "AVAR_TOK": "t", "AVAR_MQTT": "m"})
    # only AVAR_ names are substituted; anything else in braces is left as written
    cfg.write_text('run: run\ncameras:\n  door: {url: "rtsp://{USER}@10.0.0.2/{AVAR_PATH}"}\n')
    assert load_config(cfg, {"AVAR_PATH": "s1"}).cameras[0].url == "rtsp://{USER}@10.0.0.2/s1"


def test_the_example_file_is_valid(tmp_path: Path) -> None:
    """docs/cameras.example.yml, with its secrets set, beside the run it names."""
    env = {"AVAR_FRONT_USER": "admin", "AVAR_FRONT_PASSWORD": "pw", "AVAR_SERVE_TOKEN": "t", "AVAR_MQTT_PASSWORD": "m"}
    with pytest.raises(InvalidInput, match=r"cameras.example.yml:10: run: .*runs/vaar-fused: no such run folder"):
        load_config(EXAMPLE, env)
    (tmp_path / "runs" / "vaar-fused").mkdir(parents=True)
    cfg = tmp_path / "cameras.yml"
    cfg.write_text(EXAMPLE.read_text())
    deploy = load_config(cfg, env)
    assert [c.name for c in deploy.cameras] == ["front_door", "backyard", "garage"]
    assert [c.name for c in deploy.enabled] == ["front_door", "backyard"]
    front, back, _ = deploy.cameras
    assert (front.threshold, front.cooldown, back.threshold, back.cooldown, back.audio) == (0.7, 5.0, 0.5, 10.0, False)
    # every output section is live, each a component's own config
    assert deploy.clips is not None and deploy.clips.dir == str(tmp_path / "clips")
    assert deploy.outputs.mqtt is not None and deploy.outputs.mqtt.password == "m" and "m" in deploy.secrets
    # metrics: {address: null} is /metrics on the serve port, which serves it whenever it is on
    assert deploy.outputs.serve is not None and deploy.outputs.metrics is None
    assert deploy.outputs.out == str(tmp_path / "events.jsonl")
    assert (deploy.outputs.webhook, deploy.outputs.webhook_timeout, deploy.outputs.webhook_retries) == \
        ("http://127.0.0.1:8080/hook", 5.0, 3)


def test_flags_the_file_sets_are_refused_beside_it(tmp_path: Path) -> None:
    cfg = tmp_path / "cams.yml"
    cfg.write_text("run: run\ncameras:\n  door: {url: /dev/video0}\n")
    result = _cli("--config", str(cfg), "--threshold", "0.3", "--out", str(tmp_path / "x.jsonl"))
    assert result.exit_code == 2 and "--threshold (the file's defaults.threshold" in result.output, result.output
    assert "--out (the file's outputs.jsonl)" in result.output
    # a one-off run's options that belong to another, given without it: refused, never ignored
    result = _cli(str(tmp_path), "udp://127.0.0.1:9", "--mqtt-user", "avar", "--clip-pre", "3")
    assert result.exit_code == 2 and "--mqtt-user, --clip-pre given without" in result.output, result.output
    assert "(--clips, --mqtt)" in result.output, result.output
    # a token (or a page's host name) with nothing served to ask it of
    result = _cli(str(tmp_path), "udp://127.0.0.1:9", "--token", "t0ken-for-nothing", "--serve-name", "cams.local")
    assert result.exit_code == 2, result.output
    assert "--token, --serve-name given without the option they belong to (--serve, --serve or --metrics)" \
        in result.output, result.output
    assert "t0ken-for-nothing" not in result.output
    # named as the user types them, not by their parameter names
    result = _cli("--config", str(cfg), "--metrics", "127.0.0.1:9109", "--serve-name", "cams.local")
    assert result.exit_code == 2 and "--metrics (the file's outputs.metrics.address)" in result.output, result.output
    assert "--serve-name (the file's outputs.serve.names)" in result.output
    result = _cli("--config", str(cfg), "--clips", str(tmp_path / "c"), "--mqtt", "127.0.0.1")
    assert result.exit_code == 2 and "--clips (the file's outputs.clips.dir)" in result.output, result.output
    assert "--mqtt (the file's outputs.mqtt.host)" in result.output
    result = _cli(str(tmp_path), "udp://127.0.0.1:9", "--config", str(cfg))
    assert result.exit_code == 2 and "not both" in result.output, result.output
    result = _cli()
    assert result.exit_code == 2 and "RUN and at least one SOURCE" in result.output, result.output


# -- per-camera settings on real media --------------------------------------------------------

def test_audio_off_is_not_read_and_the_head_sees_it_masked(tmp_path: Path) -> None:
    """A camera with ``audio: false``: its units carry no audio, as a camera without audio
    (the scorer's record then has its audio masked)."""
    from live.assembler import Assembler
    from live.config_file import CameraConfig
    from live.plans import GridPlan
    from live.sources import SourceReader
    from synth.live_stream import StreamPlan, write_stream

    media = tmp_path / "cam.ts"
    write_stream(str(media), StreamPlan(seconds=2.0, size=(64, 48), audio=True), realtime=False)
    plan = GridPlan(StepLayout(step_seconds=0.5))
    got = {}
    for audio in (True, False):
        spec = CameraConfig("cam", str(media), audio=audio).spec()
        units: list = []
        reader = SourceReader(spec, lambda seg, base, has_video, track: Assembler(
            spec.name, plan, None, track, has_video, segment=seg), units.append, lambda e: None, threading.Event())
        reader.run()
        got[audio] = units
    assert len(got[True]) == len(got[False]) >= 3
    assert all(u.audio is not None and u.audio.size for u in got[True])
    assert all(u.audio is None for u in got[False])


def test_per_camera_threshold_and_window_change_the_watch_and_disabled_cameras_are_not_opened(
        xd_grid_run: Path, xd_standin_grid: dict, tmp_path: Path) -> None:
    """One violent stand-in video watched as two cameras through ``--config``: ``loose``
    (threshold 0.5) alerts; ``strict`` (threshold 1.0, a 2-step window) does not, and its
    scores differ from ``loose``'s once its window is full. Two disabled cameras (a file
    that does not exist, a closed port) are never opened: not refused, no events."""
    test = json.loads(xd_standin_grid["split"].read_text())["test"]
    video = xd_standin_grid["root"] / "videos" / next(k for k in test if "label_B" in k)
    cfg = tmp_path / "cams.yml"
    cfg.write_text(f"""run: {xd_grid_run}
device: cpu
defaults: {{threshold: 0.5, min_duration: 1.0, cooldown: 2.0}}
cameras:
  loose: {{url: "{video}"}}
  strict: {{url: "{video}", threshold: 1.0, window: 1.3334}}
  gone: {{url: missing.mp4, enabled: false}}
  dead: {{url: "rtsp://127.0.0.1:9/x", enabled: false}}
outputs: {{jsonl: events.jsonl, snapshots: snaps}}
""")
    result = _cli("--config", str(cfg), "--duration", "12")
    assert result.exit_code == 0, result.output
    events = [json.loads(line) for line in (tmp_path / "events.jsonl").read_text().splitlines()]
    assert {e["source"] for e in events} == {"loose", "strict"}
    scores = {n: [e["score"] for e in events if e["type"] == "score" and e["source"] == n] for n in ("loose", "strict")}
    alerts = {n: [e for e in events if e["type"] == "alert_start" and e["source"] == n] for n in scores}
    assert alerts["loose"] and not alerts["strict"], alerts
    assert max(scores["strict"]) < 1.0 and max(scores["loose"]) >= 0.5
    assert len(scores["loose"]) == len(scores["strict"]) >= 10
    assert scores["loose"][0] == pytest.approx(scores["strict"][0], abs=1e-6)    # one step of history: the same
    assert any(abs(a - b) > 1e-4 for a, b in zip(scores["loose"][3:], scores["strict"][3:]))
    snaps = sorted(p.name for p in (tmp_path / "snaps").iterdir())
    assert snaps and all(name.startswith("loose-") for name in snaps), snaps


def test_what_would_fail_at_start_is_refused_with_its_line(tmp_path: Path) -> None:
    """The run folder, an enabled camera's file and a view beyond loopback without a token
    are checked with the file; a disabled camera's file is not."""
    cfg = tmp_path / "cams.yml"
    cfg.write_text("run: nowhere\ncameras:\n  a: {url: a.mp4}\n  b: {url: b.mp4, enabled: false}\n"
                   "outputs:\n  serve: {address: '0.0.0.0:8765'}\n")
    with pytest.raises(InvalidInput) as err:
        load_config(cfg, {})
    listed = str(err.value).splitlines()[1:]
    assert [line.strip().split(": ")[0] for line in listed] == [f"{cfg}:1", f"{cfg}:3", f"{cfg}:6"], listed
    assert "no such run folder" in listed[0] and "a.mp4: no such file" in listed[1] and "needs a token" in listed[2]


def test_each_cameras_threshold_is_drawn_on_its_tile() -> None:
    from live.web import LiveState, WebConfig

    state = LiveState(WebConfig(threshold=0.5, thresholds=(("door", 0.8),)), sources=("door", "yard"))
    assert [(s["name"], s["threshold"]) for s in state.sources_json()["sources"]] == [("door", 0.8), ("yard", 0.5)]
