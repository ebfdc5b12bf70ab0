"""Issue 24, faults 1-10: live mode's outputs, sources and browser view met as a hostile or
unlucky user meets them, with real parts: a real file-size limit (``RLIMIT_FSIZE``), real
loopback HTTP servers and sockets, named pipes, real SIGTERM, real encoded media.

The rules: an output that fails never stops scoring and is never silent (faults 1-3); a
source is scored as offline scores the same bytes, a stop asked for is not a failure, and a
known data error takes the data-error path (4-7); the browser view answers only to its own
names and never lets idle sockets take the process's descriptors (8, 9); every input file
goes through ``optional_file``'s checks before it is opened (10)."""

from __future__ import annotations

import contextlib
import http.server
import io
import json
import logging
import os
import resource
import signal
import socket
import sys
import threading
import time
from pathlib import Path

import av
import numpy as np
import pytest
from click.testing import CliRunner

from cache_schema import InvalidInput
from live import EventHub, JsonLinesSink, WatchConfig, WebhookSink, parse_source, run_watch
from live.events import ALERT_START, AlertEvent
from tests.test_live import watch

pytestmark = pytest.mark.usefixtures("one_thread")


@contextlib.contextmanager
def file_size_limit(limit: int):
    """A real ``ulimit -f`` on this process: a write past ``limit`` bytes fails with EFBIG
    (SIGXFSZ ignored, as a shell's ``ulimit -f`` under a service manager leaves it)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    previous = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (limit, hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
        signal.signal(signal.SIGXFSZ, previous)


@pytest.fixture(scope="module")
def grid_predictor(xd_grid_run: Path):
    from live import load_watch_predictor

    return load_watch_predictor(xd_grid_run)


def violent_video(xd_standin_grid: dict) -> Path:
    test = json.loads(xd_standin_grid["split"].read_text())["test"]
    return xd_standin_grid["root"] / "videos" / next(k for k in test if "label_B" in k)


# -- 1. snapshots ---------------------------------------------------------------------------------

def test_a_snapshot_that_cannot_be_written_is_counted_and_scoring_goes_on(grid_predictor, xd_standin_grid: dict,
                                                                          tmp_path: Path,
                                                                          caplog: pytest.LogCaptureFixture) -> None:
    """Fault 1: under a file-size limit every snapshot write fails (EFBIG). The watch used to
    die with a traceback, every source stopping without its ``ended``; now each failure is
    logged and counted, the alert goes out without its snapshot, and scoring goes on."""
    predictor, run_steps = grid_predictor
    video = violent_video(xd_standin_grid)
    with caplog.at_level(logging.ERROR, logger="live.sinks"), file_size_limit(256):
        events, summary = watch(predictor, [video], WatchConfig(snapshots=str(tmp_path / "snaps")), run_steps)
    alerts = [e for e in events if e["type"].startswith("alert_")]
    assert alerts and all(a["snapshot"] is None for a in alerts)
    assert events[-1]["type"] == "ended" and "error" not in events[-1]
    assert summary.snapshot_failures == len(alerts) and not summary.failed
    assert len([e for e in events if e["type"] == "score"]) > len(alerts)
    failures = [r for r in caplog.records if "cannot be written" in r.getMessage()]
    assert len(failures) == len(alerts) and "File too large" in failures[0].getMessage()
    assert not list((tmp_path / "snaps").iterdir())   # no torn JPEG, no temporary left


# -- 2. --out ---------------------------------------------------------------------------------------

def test_an_out_file_that_cannot_be_written_keeps_whole_lines_and_exits_2(xd_grid_run: Path, xd_standin_grid: dict,
                                                                        tmp_path: Path) -> None:
    """Fault 2: when ``--out`` hits a full disk (here a file-size limit) the line being
    written was left torn, watch went on with its only output dropped, and exited 0. Now
    the torn part is taken back, the watch stops, and the command ends with one error line
    naming the file (exit 2)."""
    from cli import main

    out = tmp_path / "events.jsonl"
    out.write_text('{"type": "earlier"}\n')             # an earlier watch's lines are kept
    with file_size_limit(1500):
        result = CliRunner().invoke(main, ["watch", str(xd_grid_run), str(violent_video(xd_standin_grid)),
                                           "--out", str(out)])
    assert result.exit_code == 2, (result.output, result.exception)
    errors = [line for line in result.output.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and f"--out {out}: cannot be written (File too large)" in errors[0], result.output
    text = out.read_text()
    assert text.endswith("\n") and len(text) <= 1500
    lines = [json.loads(line) for line in text.splitlines()]    # every line whole JSON
    assert lines[0] == {"type": "earlier"} and len(lines) >= 3 and f"{len(lines) - 1} whole line(s)" in errors[0]


def test_a_sink_writes_whole_lines_into_stdout_redirected_to_a_file(tmp_path: Path) -> None:
    """The same rule for ``watch > file``: standard output that is a regular file gets whole
    lines or nothing; the sink says it failed and calls its stop."""
    stopped = threading.Event()
    path = tmp_path / "redirected.jsonl"
    with path.open("w") as stream, file_size_limit(300):
        sink = JsonLinesSink(stream, on_failed=stopped.set)
        for i in range(10):
            sink.handle(AlertEvent(ALERT_START, f"cam{i}", 0.0, None, "violent", 0.9, 0.0, i, 0.5))
    assert stopped.is_set() and sink.failed and "standard output: cannot be written" in sink.failed
    text = path.read_text()
    assert text.endswith("\n") and all(json.loads(line)["source"].startswith("cam") for line in text.splitlines())
    assert len(text.splitlines()) == sink.lines >= 1


# -- 3. webhook ---------------------------------------------------------------------------------------

def test_a_webhook_redirect_is_a_failed_delivery_and_is_not_followed(caplog: pytest.LogCaptureFixture) -> None:
    """Fault 3: on a 302 the webhook re-sent the alert as a GET without its body to wherever
    the receiver pointed, and counted it delivered. Now a 3xx is a failed delivery, logged
    with the status and the address it pointed to, and nothing is sent there."""
    elsewhere: list[str] = []

    class Other(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802
            elsewhere.append(self.path)
            self.send_response(200)
            self.end_headers()

        do_POST = do_GET  # noqa: N815

        def log_message(self, *args) -> None:
            pass

    other = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Other)
    posts: list[bytes] = []

    class Redirecting(http.server.BaseHTTPRequestHandler):
        def do_POST(self) -> None:  # noqa: N802
            posts.append(self.rfile.read(int(self.headers["Content-Length"])))
            self.send_response(302)
            self.send_header("Location", f"http://127.0.0.1:{other.server_address[1]}/stolen")
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *args) -> None:
            pass

    hook = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Redirecting)
    for server in (other, hook):
        threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        sink = WebhookSink(f"http://127.0.0.1:{hook.server_address[1]}/alerts", timeout=5.0, retries=2, backoff=0.05)
        with caplog.at_level(logging.WARNING, logger="live.sinks"):
            sink.handle(AlertEvent(ALERT_START, "cam", 1.0, None, "violent", 0.9, time.time(), 1, 1.5))
            sink.close(wait=5.0)
        assert (sink.delivered, sink.failed, sink.dropped) == (0, 1, 0)
        assert len(posts) == 1 and json.loads(posts[0])["alert_id"] == 1   # a redirect is an answer: not retried
        assert elsewhere == []
        assert any("answered 302" in r.getMessage() and "/stolen" in r.getMessage() for r in caplog.records)
    finally:
        hook.shutdown()
        other.shutdown()


# -- 4. a video track without video ---------------------------------------------------------------------

def write_audio_only_with_video_declared(path: Path, seconds: float = 4.0) -> Path:
    """A file (mpegts by suffix) whose header declares an H.264 video stream and an AAC
    audio stream, and whose packets are all audio."""
    with av.open(str(path), "w") as out:
        vs = out.add_stream("libx264", rate=15)
        vs.width, vs.height, vs.pix_fmt = 96, 64, "yuv420p"
        aus = out.add_stream("aac", rate=16000)
        aus.layout = "mono"
        n = int(seconds * 16000)
        samples = (0.3 * np.sin(2 * np.pi * 440 * np.arange(n) / 16000)).astype(np.float32)
        for i in range(0, n, 1024):
            frame = av.AudioFrame.from_ndarray(samples[None, i:i + 1024], format="flt", layout="mono")
            frame.sample_rate, frame.pts = 16000, i
            for p in aus.encode(frame):
                out.mux(p)
        for p in aus.encode(None):
            out.mux(p)
    return path


def test_a_stream_that_declares_video_and_sends_audio_is_scored_as_audio_only(xd_grid_fused_run: Path,
                                                                               tmp_path: Path) -> None:
    """Fault 4: such a stream gave 0 records and exit 0 (a pipe), or a traceback (a file),
    while predict scores the file as audio-only. Now both are scored as audio-only: a file
    at once (its probe finds no video frames), a stream once it has sent 5 s of audio and no
    video over 5 s of wall time, or at its end (the audio held meanwhile is scored too)."""
    from live import load_watch_predictor

    predictor, run_steps = load_watch_predictor(xd_grid_fused_run)
    media = write_audio_only_with_video_declared(tmp_path / "declared.ts")
    events, summary = watch(predictor, [media], WatchConfig(), run_steps)
    records = [e for e in events if e["type"] == "score"]
    assert len(records) == 7 and not summary.failed        # ceil(4.1 s / 0.6667 s) steps, the last cut
    assert events[-1]["type"] == "ended" and "error" not in events[-1]
    read_fd, write_fd = os.pipe()

    def feed() -> None:
        with os.fdopen(write_fd, "wb") as w:
            w.write(media.read_bytes())

    threading.Thread(target=feed, daemon=True).start()
    with os.fdopen(read_fd, "rb", buffering=0) as stdin:
        buf = io.StringIO()
        summary = run_watch(predictor, [parse_source("-")], WatchConfig(), EventHub([JsonLinesSink(buf)]),
                            run_steps=run_steps, stdin=stdin)
    piped = [json.loads(line) for line in buf.getvalue().splitlines()]
    scores = [e for e in piped if e["type"] == "score"]
    # a pipe read faster than real time ends before 5 s of wall time: its held audio is scored at its end;
    # a pipe is live, so steps are dropped (and counted) rather than queued
    assert len(scores) >= 2 and len(scores) + summary.sources["-"].dropped >= 6 and not summary.failed
    assert all(s["score"] is not None for s in scores)


# -- 5, 6. a stop while a pipe waits; a named pipe ---------------------------------------------------

def _short_ts(path: Path, seconds: float = 3.0) -> Path:
    from tests.media_factory import write_clip

    return write_clip(path, duration=seconds, sample_rate=16000)   # MPEG-TS by its suffix


def _sigterm_once_handled(after: float) -> tuple[threading.Thread, threading.Event]:
    """SIGTERM to this process ``after`` seconds once watch's handler is installed (never
    before, and never once it is gone: the handler it replaced, the default one or a test
    runner's, would end the whole test session, perhaps in the middle of another test).
    Set the returned event to call it off; join the thread."""
    before = signal.getsignal(signal.SIGTERM)
    cancel = threading.Event()

    def watch_handler_installed() -> bool:
        return signal.getsignal(signal.SIGTERM) not in (before, signal.SIG_DFL, None)

    def send() -> None:
        deadline = time.monotonic() + 60
        while not watch_handler_installed():
            if cancel.wait(0.05) or time.monotonic() > deadline:
                return
        if not cancel.wait(after) and watch_handler_installed():
            os.kill(os.getpid(), signal.SIGTERM)
    thread = threading.Thread(target=send, daemon=True)
    thread.start()
    return thread, cancel


@pytest.mark.skipif(threading.current_thread() is not threading.main_thread(), reason="signals need the main thread")
def test_sigterm_while_a_pipe_or_a_fifo_waits_for_its_writer_is_a_stop(xd_grid_run: Path, tmp_path: Path,
                                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    """Faults 5 and 6: SIGTERM while standard input (a pipe whose writer has not started)
    waits was reported as a failed source (``cannot open (End of file)``, exit 1). A stop
    that was asked for is not an error: exit 0, ``ended`` without an error. The same for a
    named pipe (a FIFO source, read as ``watch -`` reads it) that waits for its writer:
    the wait ends at the stop, at once."""
    from apply.predictor import PredictConfig
    from live.command import WatchOutputs, watch_command

    read_fd, write_fd = os.pipe()                  # the writer end stays open and silent
    fifo = tmp_path / "cam.ts"
    os.mkfifo(fifo)
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(os.fdopen(read_fd, "rb")))
    out = tmp_path / "events.jsonl"
    sender, cancel = _sigterm_once_handled(after=1.5)
    try:
        t0 = time.monotonic()
        status, summary = watch_command(xd_grid_run, ["-", str(fifo)], WatchConfig(), PredictConfig(),
                                        WatchOutputs(out=str(out)))
        took = time.monotonic() - t0
    finally:
        cancel.set()
        sender.join()
        os.close(write_fd)
    events = [json.loads(line) for line in out.read_text().splitlines()]
    ended = {e["source"]: e for e in events if e["type"] == "ended"}
    assert status == 0 and not summary.failed, [s.error for s in summary.sources.values()]
    assert set(ended) == {"-", str(fifo)} and not any("error" in e for e in ended.values())
    assert took < 20


def test_a_fifo_source_is_read_as_standard_input_is(grid_predictor, tmp_path: Path) -> None:
    """Fault 6: a FIFO source was refused with "reading a live stream is for the coming live
    mode". It is read as ``watch -`` reads the same bytes (an MPEG-TS stream), and the
    offline commands' message for a FIFO now says so truly."""
    from extract.probe import not_a_media_file

    predictor, run_steps = grid_predictor
    media = _short_ts(tmp_path / "clip.ts")
    fifo = tmp_path / "cam"
    os.mkfifo(fifo)
    spec = parse_source(str(fifo))
    assert spec.kind == "fifo"

    def feed() -> None:
        time.sleep(0.5)                            # the writer comes after the watch starts waiting
        with open(fifo, "wb") as w:
            w.write(media.read_bytes())

    threading.Thread(target=feed, daemon=True).start()
    events, summary = watch(predictor, [fifo], WatchConfig(), run_steps, watchdog_s=60)
    assert len([e for e in events if e["type"] == "score"]) >= 3 and not summary.failed
    assert events[-1]["type"] == "ended" and "error" not in events[-1]
    message = not_a_media_file(fifo)
    assert "coming live mode" not in message and f"cli.py watch RUN {fifo}" in message


# -- 7. a clock that jumps ------------------------------------------------------------------------------

def test_a_file_whose_clock_jumps_ends_with_its_error_and_no_traceback(grid_predictor, tmp_path: Path,
                                                                      caplog: pytest.LogCaptureFixture) -> None:
    """Fault 7: a file whose audio clock jumps by an hour was logged as "reading failed" with
    a traceback. ``ImplausibleTimeline`` is a known data error: the source ends with it
    (``ended`` with the error, exit 1 as any failed source), no traceback; a good file
    beside it is scored."""
    from tests.media_factory import write_audio_jump_clip, write_clip

    predictor, run_steps = grid_predictor
    jumpy = write_audio_jump_clip(tmp_path / "jump.mkv", jump=3600.0)
    good = write_clip(tmp_path / "good.mp4", duration=2.0)
    with caplog.at_level(logging.INFO):
        events, summary = watch(predictor, [jumpy, good], WatchConfig(), run_steps)
    ended = {e["source"]: e for e in events if e["type"] == "ended"}
    assert "jump" in ended[str(jumpy)].get("error", "") and "error" not in ended[str(good)]
    assert summary.failed == [str(jumpy)] and summary.sources[str(good)].records > 0
    assert not [r for r in caplog.records if r.exc_info], "a known data error printed a traceback"
    assert not any("reading failed" in r.getMessage() for r in caplog.records)


# -- 8, 9. the browser view ------------------------------------------------------------------------------

def _get(port: int, path: str, host: str | None) -> tuple[int, bytes]:
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        head = f"GET {path} HTTP/1.1\r\n" + (f"Host: {host}\r\n" if host is not None else "") + "Connection: close\r\n\r\n"
        s.sendall(head.encode())
        data = b""
        while chunk := s.recv(65536):
            data += chunk
    status = int(data.split(b" ", 2)[1])
    return status, data.split(b"\r\n\r\n", 1)[1]


def test_the_view_refuses_a_host_that_is_not_its_address_or_a_configured_name() -> None:
    """Fault 8: the view answered any Host header on loopback, so a page whose domain is
    rebound to 127.0.0.1 (DNS rebinding) could read sources, frames and alerts from the
    operator's browser. Now only the bound address, ``localhost`` on loopback, and names
    given with ``--serve-name`` are answered; any other Host gets 421 and no data."""
    from live.web import WebConfig, WebView

    view = WebView(WebConfig(host="127.0.0.1", port=0, names=("cams.example.org",)), sources=("cam1",))
    view.start()
    port = int(view.url.rstrip("/").rsplit(":", 1)[1])
    try:
        for host in (f"127.0.0.1:{port}", f"localhost:{port}", "cams.example.org", "CAMS.example.org."):
            status, body = _get(port, "/api/sources", host)
            assert status == 200 and b"cam1" in body, (host, status)
        for host in (f"attacker.example:{port}", "attacker.example", f"cams.example.org.evil:{port}", "[::2]"):
            for path in ("/api/sources", "/api/alerts", "/", "/api/events"):
                status, body = _get(port, path, host)
                assert status == 421 and b"cam1" not in body and b"--serve-name" in body, (host, path, status)
        assert view.stats()["connections"]["refused_hosts"] == 16
    finally:
        view.close()
    with pytest.raises(InvalidInput, match="bare host name"):
        WebConfig(names=("http://cams.example.org",))


def test_idle_connections_are_closed_and_limited(monkeypatch: pytest.MonkeyPatch) -> None:
    """Fault 9: the view kept every TCP connection that never sent a request, without limit
    or timeout (300 idle connections under a 256-descriptor limit starved the view and the
    scoring). Now a connection idle past the timeout is closed by the view, at most a budget
    of connections is held (the rest closed on arrival), and the view still answers."""
    from live.web import WebConfig, WebView

    view = WebView(WebConfig(host="127.0.0.1", port=0, token="t0ken", idle_timeout_s=0.5, max_connections=16))
    view.start()
    port = int(view.url.rstrip("/").rsplit(":", 1)[1])
    idle: list[socket.socket] = []
    try:
        for _ in range(300):
            idle.append(socket.create_connection(("127.0.0.1", port), timeout=10))
        deadline = time.monotonic() + 5
        while True:                                    # until the view has accepted all 300 (some wait in the backlog)
            stats = view.stats()["connections"]
            assert stats["open"] <= 16 and stats["limit"] == 16, stats
            if stats["accepted"] + stats["refused"] >= 300 or time.monotonic() > deadline:
                break
            time.sleep(0.02)
        assert stats["refused"] >= 250, stats
        idle[0].settimeout(5)
        t0 = time.monotonic()
        assert idle[0].recv(1) == b""                  # closed by the view, not by us
        assert time.monotonic() - t0 < 3
        deadline = time.monotonic() + 5
        while view.stats()["connections"]["open"] and time.monotonic() < deadline:
            time.sleep(0.05)
        status, body = _get(port, "/healthz?token=t0ken", f"127.0.0.1:{port}")
        assert status == 200 and json.loads(body)["status"] == "ok"
    finally:
        for s in idle:
            s.close()
        view.close()


# -- 10. input files that are not files ------------------------------------------------------------------

def _finishes(fn, seconds: float = 10.0):
    """``fn()`` in a thread that must finish within ``seconds`` (a FIFO opened would block)."""
    box: dict = {}

    def run() -> None:
        try:
            box["value"] = fn()
        except BaseException as exc:  # noqa: BLE001 - handed to the test
            box["error"] = exc
    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(seconds)
    assert not thread.is_alive(), "it blocked on the FIFO"
    return box


def test_a_token_file_or_split_file_that_is_a_fifo_is_refused_at_once(xd_grid_run: Path, tmp_path: Path) -> None:
    """Fault 10: ``--token-file`` naming a FIFO blocked watch forever. Every input file goes
    through ``optional_file``'s checks: a FIFO, a folder or a broken link is refused at once,
    naming it; the same for ``--split-file`` (a FIFO named .json blocked ``train``)."""
    from cli import main
    from live.web import read_token_file
    from temporal.split import read_split_file
    from tests.media_factory import write_clip

    fifo = tmp_path / "token"
    os.mkfifo(fifo)
    box = _finishes(lambda: read_token_file(fifo))
    assert isinstance(box.get("error"), InvalidInput) and "not a regular file" in str(box["error"])
    broken = tmp_path / "gone"
    broken.symlink_to(tmp_path / "nowhere")
    for bad, says in ((tmp_path, "is a folder"), (broken, "is a broken link")):
        with pytest.raises(InvalidInput, match=says):
            read_token_file(bad)
    video = write_clip(tmp_path / "cam.mp4", duration=1.0)
    box = _finishes(lambda: CliRunner().invoke(main, ["watch", str(xd_grid_run), str(video), "--serve",
                                                      "127.0.0.1:0", "--token-file", str(fifo)]))
    result = box["value"]
    assert result.exit_code == 2 and result.output.startswith("error: ") and str(fifo) in result.output
    split = tmp_path / "split.json"
    os.mkfifo(split)
    box = _finishes(lambda: read_split_file(split))
    assert isinstance(box.get("error"), InvalidInput) and "--split-file" in str(box["error"])
