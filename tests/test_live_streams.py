"""Live mode on real streams written in real time (``synth.live_stream``): an MPEG-TS
into a pipe (``cli.py synth-stream --out - | cli.py watch RUN -``, two processes) and into
``udp://127.0.0.1:PORT``, with a violent event at a known time and a sender that stops for
3 s and starts again. The run is the stand-in's MIL run on the snippet grid."""

from __future__ import annotations

import io
import json
import os
import socket
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from live import EventHub, JsonLinesSink, WatchConfig, parse_source, run_watch
from tests.test_documented_commands import documents
from tests.test_live import watch

pytestmark = pytest.mark.usefixtures("one_thread")
ROOT = Path(__file__).resolve().parent.parent
STEP = 0.6667


def _env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1",
            "OMP_WAIT_POLICY": "PASSIVE"}


def _free_udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@documents("cli.py watch", "cli.py synth-stream")
def test_piped_stream_one_alert_at_the_event_and_a_stall(xd_grid_run: Path) -> None:
    """Two processes and a pipe, as an operator runs it: exactly one alert starting within
    one step of the event, latency on every record, and a 3 s stop of the sender reported
    as stalled then reconnected, with scoring going on after it."""
    # The sender starts once the watcher has loaded its run: a sender started first writes
    # into a pipe nobody reads, falls behind its clock, and then sends its pause at once.
    read_end, write_end = os.pipe()
    watcher = subprocess.Popen([sys.executable, str(ROOT / "cli.py"), "watch", str(xd_grid_run), "-",
                                "--stall-timeout", "1", "--threshold", "0.5", "--min-duration", "1",
                                "--cooldown", "3", "--queue", "4"], stdin=read_end, stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True, env=_env())
    os.close(read_end)
    out: list[str] = []
    err: list[str] = []
    watching = threading.Event()

    def drain_stderr() -> None:
        for line in watcher.stderr:
            err.append(line)
            if "watching -" in line:
                watching.set()

    readers = [threading.Thread(target=drain_stderr, daemon=True),
               threading.Thread(target=lambda: out.extend(watcher.stdout), daemon=True)]
    for thread in readers:
        thread.start()
    writer = None
    try:
        assert watching.wait(120), "".join(err)[-3000:]
        writer = subprocess.Popen([sys.executable, str(ROOT / "cli.py"), "synth-stream", "--out", "-",
                                   "--seconds", "12.5", "--event-at", "4", "--event-seconds", "3", "--pause-at", "7.5",
                                   "--pause-seconds", "3", "--seed", "3", "--size", "64x48"],
                                  stdout=write_end, stderr=subprocess.DEVNULL, env=_env())
        os.close(write_end)
        write_end = -1
        assert writer.wait(timeout=120) == 0
        assert watcher.wait(timeout=60) == 0, "".join(err)[-3000:]
    finally:
        if write_end >= 0:
            os.close(write_end)
        for proc in (writer, watcher):
            if proc is not None and proc.poll() is None:
                proc.kill()
                proc.wait()
        for thread in readers:
            thread.join(timeout=10)
    events = [json.loads(line) for line in out]
    records = [e for e in events if e["type"] == "score"]
    starts = [e for e in events if e["type"] == "alert_start"]
    assert len(starts) == 1, [(e["type"], e.get("t")) for e in events if e["type"] != "score"]
    assert abs(starts[0]["t_start"] - 4.0) <= STEP + 0.05, [(e["type"], e.get("t"), e.get("score"), e.get("count"))
                                                           for e in events]
    assert [e["type"] for e in events if e["type"] == "alert_end"] == ["alert_end"]
    assert all(0 <= r["latency_s"] < 3.0 for r in records), max(r["latency_s"] for r in records)
    kinds = [e["type"] for e in events]
    assert "stalled" in kinds and "reconnected" in kinds and kinds.index("stalled") < kinds.index("reconnected")
    gap = next(e for e in events if e["type"] == "reconnected")
    assert 1.0 <= gap["gap_s"] <= 5.0   # the silence the reader saw (the sender had sent ahead of its pause)
    after = [r for r in records if r["wall_time"] > gap["wall_time"]]
    assert after and max(r["t"] for r in records) > 10.0            # scoring resumed after the stall
    assert events[-1]["type"] == "ended" and kinds[0] == "started"


def test_udp_stream_without_audio_is_scored_and_reopened(xd_grid_run: Path) -> None:
    """A camera with no audio over UDP: scored (audio masked as missing), and when the sender
    stops for 3 s the source is reported stalled, reopened, and scored again. The alert open
    when it went silent ends once the silence has lasted the cooldown, before it comes back."""
    from live import AlertConfig, load_watch_predictor
    from synth.live_stream import StreamEvent, StreamPause, StreamPlan, write_stream

    predictor, run_steps = load_watch_predictor(xd_grid_run)
    port = _free_udp_port()
    url = f"udp://127.0.0.1:{port}"
    plan = StreamPlan(seconds=10.5, seed=4, audio=False, size=(64, 48), event=StreamEvent(0.5, 4.0),
                      pause=StreamPause(4.0, 3.0))
    sender = threading.Thread(target=write_stream, args=(url, plan), daemon=True)
    threading.Timer(0.3, sender.start).start()                       # the reader listens first
    alerts = AlertConfig(threshold=0.5, min_duration=1.0, cooldown=1.5)
    events, summary = watch(predictor, [url], WatchConfig(stall_timeout=1.0, duration=9.5, alerts=alerts), run_steps,
                            watchdog_s=40)
    kinds = [e["type"] for e in events]
    records = [e for e in events if e["type"] == "score"]
    assert len(records) >= 5 and all(r["score"] is not None for r in records)
    assert "stalled" in kinds and "reconnected" in kinds, kinds
    reconnect = next(e for e in events if e["type"] == "reconnected")
    assert reconnect["reopened"] is True and reconnect["gap_s"] > 1.0
    assert any(r["wall_time"] > reconnect["wall_time"] for r in records)   # scored again after the reopen
    assert summary.sources[url].error is None
    assert [e["type"] for e in events if e["type"].startswith("alert")] == ["alert_start", "alert_end"], kinds
    end = next(e for e in events if e["type"] == "alert_end")
    assert end["wall_time"] < reconnect["wall_time"] and end["t_end"] <= 4.0 + STEP, (end, reconnect)



def test_a_dead_camera_beside_a_live_one_holds_up_nothing(xd_grid_run: Path) -> None:
    """Two cameras in one watch: a UDP camera with an event at 2-5 s, and a tcp:// camera
    that accepts the connection and never sends. The live one is scored as if alone
    (latency bounded, one alert at the event); the dead one gives no record and still
    ends when the watch is stopped."""
    from live import AlertConfig, load_watch_predictor
    from synth.live_stream import StreamEvent, StreamPlan, write_stream

    predictor, run_steps = load_watch_predictor(xd_grid_run)
    live_url = f"udp://127.0.0.1:{_free_udp_port()}"
    plan = StreamPlan(seconds=7.0, seed=6, audio=False, size=(64, 48), event=StreamEvent(2.0, 5.0))
    sender = threading.Thread(target=write_stream, args=(live_url, plan), daemon=True)
    with socket.create_server(("127.0.0.1", 0)) as dead:        # the kernel accepts; nobody answers
        dead_url = f"tcp://127.0.0.1:{dead.getsockname()[1]}"
        threading.Timer(0.3, sender.start).start()
        alerts = AlertConfig(threshold=0.5, min_duration=1.0, cooldown=2.0)
        events, summary = watch(predictor, [live_url, dead_url], WatchConfig(stall_timeout=1.0, alerts=alerts),
                                run_steps, watchdog_s=8.5)                # the sender ends at about 7.3 s
    records = [e for e in events if e["type"] == "score"]
    assert records and {r["source"] for r in records} == {live_url}
    assert max(r["t"] for r in records) >= 6.0 and summary.sources[live_url].records == len(records)
    assert all(0 <= r["latency_s"] < 3.0 for r in records), max(r["latency_s"] for r in records)
    starts = [e for e in events if e["type"] == "alert_start"]
    assert len(starts) == 1 and starts[0]["source"] == live_url and abs(starts[0]["t_start"] - 2.0) <= STEP + 0.05
    ended = [e["source"] for e in events if e["type"] == "ended"]
    assert sorted(ended) == sorted([live_url, dead_url]), ended


@documents("make watch")
def test_make_watch_ends_cleanly_on_sigterm_and_serve_is_refused_beyond_loopback(xd_grid_run: Path,
                                                                                  tmp_path: Path) -> None:
    """``make watch`` on a file paced as a camera, stopped with SIGTERM (as a supervisor
    stops it): every line written is whole JSON, ``ended`` is the last, and it stopped
    early; ``--serve`` on a non-loopback address without a token exits 2 with the reason,
    before loading anything."""
    import signal
    import time

    from synth.live_stream import StreamPlan, write_stream

    video = tmp_path / "cam.ts"
    write_stream(str(video), StreamPlan(seconds=30.0, size=(64, 48)), realtime=False)
    out = tmp_path / "events.jsonl"
    proc = subprocess.Popen(["make", "-s", "watch", f"PY={sys.executable}", f"RUN={xd_grid_run}", f"SOURCE={video}",
                             f"WATCH_ARGS=--realtime --out {out}"], cwd=ROOT, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True, env=_env(), start_new_session=True)
    try:
        deadline = time.monotonic() + 90
        while not (out.exists() and out.read_text().count('"type": "score"') >= 2):
            assert proc.poll() is None and time.monotonic() < deadline, proc.stderr.read() if proc.poll() else "slow"
            time.sleep(0.1)
        os.killpg(proc.pid, signal.SIGTERM)       # make and the watch it runs, as a process group
        proc.wait(timeout=15)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    assert "Traceback" not in proc.stderr.read()
    events = [json.loads(line) for line in out.read_text().splitlines()]   # whole lines only
    assert events[0]["type"] == "started" and events[-1]["type"] == "ended"
    assert 2 <= sum(e["type"] == "score" for e in events) and max(e["t"] for e in events if e["type"] == "score") < 25
    from click.testing import CliRunner

    from cli import main

    refused = CliRunner().invoke(main, ["watch", str(xd_grid_run), str(video), "--serve", "0.0.0.0:0"])
    assert refused.exit_code == 2 and "--token" in refused.output


def test_a_change_of_resolution_mid_stream_is_scored_through(xd_grid_run: Path, tmp_path: Path) -> None:
    from live import load_watch_predictor
    from synth.live_stream import StreamPlan, StreamResize, write_stream

    video = tmp_path / "resized.ts"
    write_stream(str(video), StreamPlan(seconds=6.0, size=(64, 48), resize=StreamResize(3.0, (96, 72))),
                 realtime=False)
    predictor, run_steps = load_watch_predictor(xd_grid_run)
    buf = io.StringIO()
    summary = run_watch(predictor, [parse_source(str(video))], WatchConfig(), EventHub([JsonLinesSink(buf)]),
                        run_steps=run_steps)
    events = [json.loads(line) for line in buf.getvalue().splitlines()]
    records = [e for e in events if e["type"] == "score"]
    from extract.probe import probe

    steps = predictor.layout.count(probe(video).duration)       # as offline extraction steps the file
    assert steps >= 9 and len(records) == steps and all(r["score"] is not None for r in records)  # both sizes
    assert events[-1]["type"] == "ended" and events[-1]["corrupt_packets"] == 0
    assert summary.sources[str(video)].error is None



def test_a_reader_that_goes_away_stops_the_watch(xd_grid_run: Path, tmp_path: Path) -> None:
    """``watch ... | head -n 3``: once the JSON lines' reader is gone (a broken pipe) the
    watch stops instead of scoring on into nothing."""
    import time

    from live import load_watch_predictor
    from synth.live_stream import StreamPlan, write_stream

    video = tmp_path / "cam.ts"
    write_stream(str(video), StreamPlan(seconds=30.0, size=(64, 48)), realtime=False)
    predictor, run_steps = load_watch_predictor(xd_grid_run)
    read_end, write_end = os.pipe()
    reader = os.fdopen(read_end, "r")
    writer = os.fdopen(write_end, "w")
    stop = threading.Event()
    sink = JsonLinesSink(writer, on_closed=stop.set)
    result: dict = {}

    def watch() -> None:
        try:
            result["summary"] = run_watch(predictor, [parse_source(str(video), realtime=True)], WatchConfig(),
                                          EventHub([sink]), stop, run_steps=run_steps)
        except BaseException as exc:   # shown by the assertion below instead of a silent hang
            result["error"] = exc
            stop.set()
            writer.close()

    watcher = threading.Thread(target=watch, daemon=True)
    began = time.monotonic()
    watcher.start()
    head: list[str] = []
    reading = threading.Thread(target=lambda: head.extend(reader.readline() for _ in range(3)), daemon=True)
    reading.start()
    reading.join(30)
    assert len(head) == 3 and all(head), (head, result.get("error"))
    reader.close()                                           # the reader goes away
    watcher.join(15)
    assert not watcher.is_alive() and stop.is_set() and sink.closed_by_reader
    assert time.monotonic() - began < 15                      # not the file's 30 s
    assert json.loads(head[0])["type"] == "started"
    try:
        writer.close()
    except BrokenPipeError:  # its last buffered bytes have nowhere to go
        pass
