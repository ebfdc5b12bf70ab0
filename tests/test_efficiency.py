"""Table 4's benchmark runs end to end (tiny backbones, two short clips): every row field is
a finite measurement, the parameter counts are the models' own, and the markdown says so."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from apply.efficiency import BenchConfig, build_setup, run, to_markdown


def test_efficiency_table_on_tiny_backbones(tmp_path: Path) -> None:
    cfg = BenchConfig(clips=2, duration=2.0, width=64, height=48, video_model="tiny", audio_model="tiny", workers=0,
                      targets=(("cpu", "fp32"),))
    result = run(cfg, tmp_path / "eff.json")
    assert json.loads((tmp_path / "eff.json").read_text())["rows"] == result["rows"]
    (row,) = result["rows"]
    for key in ("fps", "latency_ms", "inference_ms"):
        assert math.isfinite(row[key]) and row[key] > 0, key
    assert row["inference_ms"] >= row["latency_ms"] * 0.5  # file -> prediction includes decoding
    setup = build_setup(cfg, "cpu", "fp32")
    assert result["params"]["head"] == sum(p.numel() for p in setup.model.parameters())
    assert result["params"]["total"] == sum(v for k, v in result["params"].items() if k != "total")
    md = (tmp_path / "eff.md").read_text()
    assert md == to_markdown(result) and "| ours |" in md and "| paper |" in md


@pytest.mark.parametrize("command", ["train", "extract", "efficiency"])
def test_a_bench_output_that_cannot_be_written_is_refused_before_any_work(tmp_path: Path, command: str) -> None:
    """A folder where the report should go, or a file where its folder should be, was an
    IsADirectoryError traceback after the whole benchmark had run."""
    from click.testing import CliRunner

    import cli

    (tmp_path / "taken.json").mkdir()
    (tmp_path / "afile").write_text("")
    for out in (tmp_path / "taken.json", tmp_path / "afile" / "x.json"):
        result = CliRunner().invoke(cli.main, ["bench", command, "--out", str(out)])
        assert result.exit_code == 2, result.output
        assert result.output.count("\n") == 1 and str(out) in result.output and "--out" in result.output
