"""Credentials never leave the process (issue 22, section 1): a password in a camera's URL,
given on the command line or as ``{AVAR_...}`` secrets in a config file, is kept only to
open the stream. Every output is searched for it: the JSON lines, the log lines (the
library's own, with no filter, and the whole process's standard error), the browser
view's JSON, the webhook's payloads (a loopback aiohttp server) and the snapshot file
names; against a real RTSP session (``tests/loopback_rtsp.py``) and a closed loopback port
(FFmpeg's errors repeat the URL)."""

from __future__ import annotations

import io
import json
import logging
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

import pytest

from live import EventHub, JsonLinesSink, WatchConfig, load_watch_predictor, parse_source, run_watch
from live.redact import SecretFilter, redact_text, redact_url, url_secrets
from synth.live_stream import StreamEvent, StreamPlan
from tests.loopback_rtsp import LoopbackRtspServer
from live.webhook_receiver import WebhookReceiver

pytestmark = pytest.mark.usefixtures("one_thread")
ROOT = Path(__file__).resolve().parent.parent
SECRET = "s3cretPw"          # the camera's password
DEAD_SECRET = "d34dPass"     # the password of a camera that does not answer
TOKEN = "t0kenValue"         # a secret query parameter


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_redact_masks_passwords_and_secret_parameters() -> None:
    assert redact_url("rtsp://admin:s3cret@127.0.0.1:9/stream") == "rtsp://admin:***@127.0.0.1:9/stream"
    assert redact_url("rtsp://admin:p@ss@cam/s") == "rtsp://admin:***@cam/s"        # the last @ ends the user info
    assert redact_url("http://cam/video.mjpg?user=a&pwd=xyz&fps=5") == "http://cam/video.mjpg?user=a&pwd=***&fps=5"
    for plain in ("rtsp://cam/stream", "/dev/video0", "-", "clips/a.mp4", "rtsp://admin@cam/s"):
        assert redact_url(plain) == plain
    said = "[Errno 111] Connection refused: 'rtsp://u:pw%40x@10.0.0.1:554/s'"
    assert redact_text(said) == "[Errno 111] Connection refused: 'rtsp://u:***@10.0.0.1:554/s'"
    assert url_secrets("rtsp://u:pw%40x@h/s?token=abc") == {"pw%40x", "pw@x", "abc"}
    assert redact_text("a t here, but not in text", {"t"}) == "a *** here, but not in text"
    spec = parse_source(f"rtsp://admin:{SECRET}@127.0.0.1:9/stream")
    assert spec.name == "rtsp://admin:***@127.0.0.1:9/stream" and SECRET in spec.url
    assert SECRET not in repr(spec) and SECRET not in str(spec) and SECRET not in f"{spec}"


def test_the_log_filter_scrubs_messages_arguments_and_tracebacks() -> None:
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(logging.Formatter("%(message)s"))
    handler.addFilter(SecretFilter({"hunter22"}))
    log = logging.getLogger("test_live_redaction.filter")
    log.addHandler(handler)
    log.propagate = False
    try:
        log.warning("opening %s", "rtsp://admin:hunter22@cam/s")
        log.warning("the token is %s", "hunter22")
        try:
            raise OSError("cannot reach http://u:other@h/?password=hunter22")
        except OSError:
            log.exception("failed")
    finally:
        log.removeHandler(handler)
    text = stream.getvalue()
    assert "hunter22" not in text and "other" not in text, text
    assert text.count("***") >= 4 and "Traceback" in text


def test_a_camera_that_does_not_answer_says_nothing_of_its_password(xd_grid_run: Path,
                                                                    caplog: pytest.LogCaptureFixture) -> None:
    """The issue's case: ``watch RUN rtsp://admin:PASSWORD@127.0.0.1:PORT/stream`` on a
    closed port. The library alone (no log filter installed) keeps the password out of the
    events and out of every log line, FFmpeg's error texts included; the source is named
    by its URL with the password masked."""
    predictor, run_steps = load_watch_predictor(xd_grid_run)
    port = _closed_port()
    url = f"rtsp://admin:{SECRET}@127.0.0.1:{port}/stream?token={TOKEN}"
    buf = io.StringIO()
    stop = threading.Event()
    timer = threading.Timer(3.0, stop.set)
    timer.start()
    try:
        with caplog.at_level(logging.DEBUG):
            run_watch(predictor, [parse_source(url)], WatchConfig(stall_timeout=1.0), EventHub([JsonLinesSink(buf)]),
                      stop, run_steps=run_steps)
    finally:
        timer.cancel()
    events = [json.loads(line) for line in buf.getvalue().splitlines()]
    name = f"rtsp://admin:***@127.0.0.1:{port}/stream?token=***"
    assert events and events[-1]["type"] == "ended" and {e["source"] for e in events} == {name}
    retries = [r for r in caplog.records if "cannot open" in r.getMessage()]
    assert len(retries) >= 2, [r.getMessage() for r in caplog.records]       # FFmpeg's refusals were logged
    logged = "\n".join(r.getMessage() for r in caplog.records) + caplog.text
    for secret in (SECRET, TOKEN):
        assert secret not in buf.getvalue() and secret not in logged, logged


class _PagePoller(threading.Thread):
    """GETs the browser view's JSON every 0.3 s while the watch runs: everything it served."""

    def __init__(self, port: int) -> None:
        super().__init__(daemon=True)
        self.base, self.bodies, self.stop = f"http://127.0.0.1:{port}/", [], threading.Event()

    def run(self) -> None:
        while not self.stop.wait(0.3):
            for path in ("api/sources", "api/alerts", ""):
                try:
                    with urllib.request.urlopen(self.base + path, timeout=2) as r:
                        body = r.read().decode()
                except OSError:
                    continue
                self.bodies.append(body)
                if path == "api/alerts":
                    for alert in json.loads(body)["alerts"]:
                        try:
                            with urllib.request.urlopen(self.base + alert["timeline_url"], timeout=2) as r:
                                self.bodies.append(r.read().decode())
                        except OSError:
                            pass


@pytest.mark.parametrize("how", ["arguments", "config"])
def test_no_output_of_a_watch_holds_a_password(xd_grid_run: Path, tmp_path: Path, how: str) -> None:
    """``cli.py watch`` (a real process) on an RTSP camera whose URL holds a password and a
    token, with an event that alerts, beside a camera on a closed port that holds another:
    given as SOURCE arguments, or as ``{AVAR_...}`` secrets in a config file. The JSON
    lines, standard error (every log line), the page's JSON, the webhook's payloads and
    the snapshot file names are searched for every secret; each output did get something."""
    port = _closed_port()
    serve = _closed_port()
    plan = StreamPlan(seconds=7.0, seed=3, audio=True, size=(64, 48), event=StreamEvent(1.0, 4.0))
    out, snaps = tmp_path / "events.jsonl", tmp_path / "snaps"
    env = {**os.environ, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    with LoopbackRtspServer(plan) as cam, WebhookReceiver(keep=True) as hook:
        live_url = cam.url.replace("rtsp://", f"rtsp://admin:{SECRET}@") + f"?token={TOKEN}"
        dead_url = f"rtsp://admin:{DEAD_SECRET}@127.0.0.1:{port}/stream"
        common = ["--stall-timeout", "1", "--duration", "6.5"]
        if how == "arguments":
            args = [str(xd_grid_run), live_url, dead_url, "--out", str(out), "--snapshots", str(snaps), "--webhook",
                    f"http://127.0.0.1:{hook.port}/hook", "--serve", f"127.0.0.1:{serve}", "--cooldown", "1.5"]
            names = {redact_url(live_url), redact_url(dead_url)}
        else:
            cfg = tmp_path / "cams.yml"
            cfg.write_text(f"""run: {xd_grid_run}
defaults: {{cooldown: 1.5}}
cameras:
  front: {{url: "{cam.url.replace('rtsp://', 'rtsp://{AVAR_FRONT_USER}:{AVAR_FRONT_PASSWORD}@')}?token={{AVAR_TOKEN}}"}}
  dead: {{url: "rtsp://admin:{{AVAR_DEAD_PASSWORD}}@127.0.0.1:{port}/stream"}}
outputs:
  jsonl: {out.name}
  snapshots: snaps
  webhook: {{url: "http://127.0.0.1:{hook.port}/hook"}}
  serve: {{address: "127.0.0.1:{serve}"}}
""")
            (tmp_path / "front-password").write_text(SECRET + "\n")
            creds = tmp_path / "creds"
            creds.mkdir()
            (creds / "AVAR_DEAD_PASSWORD").write_text(DEAD_SECRET)
            env |= {"AVAR_FRONT_USER": "admin", "AVAR_FRONT_PASSWORD_FILE": str(tmp_path / "front-password"),
                    "AVAR_TOKEN": TOKEN, "CREDENTIALS_DIRECTORY": str(creds)}
            args = ["--config", str(cfg)]
            names = {"front", "dead"}
        page = _PagePoller(serve)
        page.start()
        proc = subprocess.Popen([sys.executable, "cli.py", "watch", *args, *common], cwd=ROOT, env=env,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
        try:
            deadline = time.monotonic() + 120
            # the live camera ends after --duration; the dead one never does: stopped as a supervisor stops it
            while not (out.exists() and out.read_text().count('"type": "ended"') >= 1):
                assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()[1][-3000:]
                time.sleep(0.2)
            time.sleep(1.0)                                   # the page is polled once more
            proc.send_signal(signal.SIGTERM)
            stdout, stderr = proc.communicate(timeout=30)
        finally:
            page.stop.set()
            if proc.poll() is None:
                proc.kill()
                proc.communicate()
        page.join(10)
    assert proc.returncode == 0, stderr[-3000:]
    events = [json.loads(line) for line in out.read_text().splitlines()]
    assert {e["source"] for e in events} == names, {e["source"] for e in events}
    assert [e for e in events if e["type"] == "alert_start"], "no alert: the webhook and snapshots were not exercised"
    assert hook.bodies and any(b'"alert_start"' in b for b in hook.bodies)
    files = [p.name for p in snaps.iterdir()]
    assert files and page.bodies and any('"alerts": [{' in b for b in page.bodies)
    assert "cannot open" in stderr                            # the dead camera's FFmpeg errors were logged
    outputs = {"json lines": out.read_text(), "stdout": stdout, "stderr": stderr, "page": "\n".join(page.bodies),
               "webhook": b"\n".join(hook.bodies).decode(), "snapshot names": "\n".join(files)}
    for where, text in outputs.items():
        for secret in (SECRET, DEAD_SECRET, TOKEN):
            assert secret not in text, (where, secret, text[-2000:])
