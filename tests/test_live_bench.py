"""``cli.py bench live`` with the tiny backbones on a few seconds of media: every row is
there with sane figures (the full-size rows take minutes: ``make bench-live``)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from tests.test_documented_commands import documents

pytestmark = pytest.mark.usefixtures("one_thread")


@documents("cli.py bench live")
def test_bench_live_writes_every_row(tmp_path: Path) -> None:
    from cli import main

    out = tmp_path / "bench" / "live.json"
    result = CliRunner().invoke(main, ["bench", "live", "--out", str(out), "--no-full", "--tiny-seconds", "2",
                                       "--notes", "test"])
    assert result.exit_code == 0, (result.output, result.exception)
    data = json.loads(out.read_text())
    assert data["cpu"] and data["cpu_cores"] >= 1 and data["notes"] == "test"
    rows = [r for r in data["rows"] if r["device"] == "cpu"]
    assert {r["backbones"] for r in data["rows"]} == {"tiny"}
    assert [(r["row"], r["streams"]) for r in rows] == [
        ("backbones alone", 1), ("live, as fast as it decodes", 1),
        ("live, real time", 1), ("live, real time", 4), ("live, real time", 8)]
    alone, fast, *paced = rows
    steps = alone["steps"]
    assert steps == 3 and fast["steps_scored"] == steps                 # 2 s of 0.6667 s steps
    assert 0 < alone["seconds"] and 0 < fast["live_over_backbones"] < 50
    assert fast["steps_dropped"] == 0                                     # not paced: blocks, never drops
    assert fast["real_time_factor"] == pytest.approx(fast["wall_s"] / 2, rel=1e-2)
    for r in rows:
        assert r["cpu"] == data["cpu"] and r["precision"] == "fp32" and r["media_s"] == 2
    for r in paced:
        # paced at the media's rate: the watch lasts about as long as the media
        assert r["wall_s"] >= 1.5
        assert r["steps_scored"] + r["steps_dropped"] >= r["steps"] - r["streams"]
        assert 0 <= r["latency_p50_s"] <= r["latency_p95_s"] <= r["latency_max_s"] < 30
        assert r["kept_real_time"] == (r["steps_dropped"] == 0)
        assert r["real_time_factor"] > 0
    targets = data["targets"]
    assert targets["8 tiny streams in real time (CPU)"] == paced[-1]["kept_real_time"]
    assert targets["live <= 1.2x backbones alone (full-size fp32 CPU)"] is None   # not run
