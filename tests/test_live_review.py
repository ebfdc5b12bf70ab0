"""Review fixes of live mode: an alert not started across a stall, the gap of a stream
that ends and comes back, and options that cannot work refused before the run loads."""

from __future__ import annotations

import dataclasses
import socket
import threading
import time
from pathlib import Path

import pytest
from click.testing import CliRunner

from cache_schema import InvalidInput, StepLayout
from live import AlertConfig, AlertTracker
from live.assembler import Assembler
from live.plans import GridPlan
from live.sources import SourceReader, parse_source


def test_two_blips_either_side_of_a_stall_are_no_alert() -> None:
    """``--min-duration 3``: one hot 1 s step, a 19 s stall, one hot step is not 3 s of
    anomaly; three contiguous hot steps after it are."""
    tracker = AlertTracker("cam", AlertConfig(threshold=0.5, min_duration=3.0, cooldown=5.0))
    assert tracker.update(0.0, 1.0, 0.9, "violent", 0.0) == []
    assert tracker.update(20.0, 21.0, 0.9, "violent", 0.0) == []
    assert tracker.update(21.0, 22.0, 0.9, "violent", 0.0) == []
    (start, _), = tracker.update(22.0, 23.0, 0.9, "violent", 0.0)
    assert start.type == "alert_start" and start.t_start == 20.0
    # a one-step hole shorter than the cooldown (a dropped step under load) does not reset
    tracker = AlertTracker("cam", AlertConfig(threshold=0.5, min_duration=1.0, cooldown=2.0))
    events = [e.type for i in (0, 2) for e, _ in tracker.update(i * 0.6667, (i + 1) * 0.6667, 0.9, "v", 0.0)]
    assert events == ["alert_start"]


@pytest.mark.parametrize("args, says", [
    (["--out", "/nonexistent-dir/events.jsonl"], "--out"),
    (["--webhook", "http://"], "--webhook"),
    (["--webhook", "http://[::1/hook"], "--webhook"),
    (["--webhook", "http://127.0.0.1:99999/hook"], "--webhook"),
])
def test_options_that_cannot_work_exit_2_before_loading(tmp_path: Path, args: list[str], says: str) -> None:
    """The run dir here is not a run: the option must be refused before the run is read."""
    from cli import main

    result = CliRunner().invoke(main, ["watch", str(tmp_path), "udp://127.0.0.1:9", *args])
    assert result.exit_code == 2, result.output
    assert says in result.output and "Traceback" not in result.output, result.output


def test_snapshots_folder_that_cannot_be_made_exits_2(tmp_path: Path) -> None:
    from cli import main
    from live.sinks import check_webhook_url

    (tmp_path / "afile").write_text("")
    result = CliRunner().invoke(main, ["watch", str(tmp_path), "udp://127.0.0.1:9",
                                       "--snapshots", str(tmp_path / "afile" / "alerts")])
    assert result.exit_code == 2 and "--snapshots" in result.output, result.output
    assert check_webhook_url("https://hooks.example/x?y=1") == "https://hooks.example/x?y=1"
    with pytest.raises(InvalidInput):
        check_webhook_url("ftp://hooks.example/x")


def test_a_stream_that_ends_and_comes_back_at_once_has_no_invented_gap(tmp_path: Path) -> None:
    """A tcp:// camera that closes its stream and answers again at once: the gap reported
    (and added to media time) is the wall time it was away, not that plus --stall-timeout."""
    from synth.live_stream import StreamPlan, write_stream

    media = tmp_path / "cam.ts"
    write_stream(str(media), StreamPlan(seconds=2.0, size=(64, 48)), realtime=False)
    data = media.read_bytes()
    server = socket.create_server(("127.0.0.1", 0))
    port = server.getsockname()[1]

    def serve() -> None:
        for _ in range(2):
            conn, _ = server.accept()
            with conn:
                conn.sendall(data)
        server.close()  # then the camera is gone: reopening is refused at once

    threading.Thread(target=serve, daemon=True).start()
    plan = GridPlan(StepLayout(step_seconds=0.5))
    spec = parse_source(f"tcp://127.0.0.1:{port}")
    events, units = [], []
    stop = threading.Event()
    reader = SourceReader(spec, lambda seg, base, has_video, track: Assembler(
        spec.name, dataclasses.replace(plan, base=base), None, track, has_video, segment=seg),
        units.append, events.append, stop, stall_timeout=5.0, grid_every=plan.every, open_timeout=3.0)
    reader.start()
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline and sum(e.type == "stalled" for e in events) < 2:
        time.sleep(0.05)
    stop.set()
    reader.join(10)
    reconnected = [e for e in events if e.type == "reconnected"]
    assert reconnected and reconnected[0].detail["reopened"] is True
    assert reconnected[0].detail["gap_s"] < 1.0, reconnected[0].detail     # was 5.0 (+ the stall timeout)
    first = [u.unit.start for u in units if u.segment == 0]
    second = [u.unit.start for u in units if u.segment == 1]
    assert first and second and second[0] - (first[-1] + 0.5) < 1.0, (first[-1], second[0])


def test_stopping_while_a_camera_does_not_answer_still_ends_it(xd_grid_run: Path) -> None:
    """A tcp:// camera that accepts the connection and never sends: stopped (as SIGINT
    stops), the watch returns within --stall-timeout + 2 s and still writes its ``ended``."""
    import io
    import json

    from live import (
        EventHub,
        JsonLinesSink,
        WatchConfig,
        load_watch_predictor,
        run_watch,
    )

    predictor, run_steps = load_watch_predictor(xd_grid_run)
    with socket.create_server(("127.0.0.1", 0)) as server:   # the kernel accepts; nobody answers
        url = f"tcp://127.0.0.1:{server.getsockname()[1]}"
        buf, stop = io.StringIO(), threading.Event()
        timer = threading.Timer(1.0, stop.set)
        timer.start()
        began = time.monotonic()
        run_watch(predictor, [parse_source(url)], WatchConfig(stall_timeout=1.0), EventHub([JsonLinesSink(buf)]),
                  stop, run_steps=run_steps)
        took = time.monotonic() - began
    events = [json.loads(line) for line in buf.getvalue().splitlines()]
    assert took < 1.0 + 1.0 + 2.0 + 1.0, took
    assert [e["type"] for e in events] == ["ended"] and events[0]["source"] == url, events
