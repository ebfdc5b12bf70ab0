"""Table 4's benchmark runs end to end (tiny backbones, two short clips): every row field is
a finite measurement, the parameter counts are the models' own, and the markdown says so."""

from __future__ import annotations

import json
import math
from pathlib import Path

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
