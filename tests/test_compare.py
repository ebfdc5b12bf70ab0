"""The comparison tables (Table 2, Table 3, fusion) and the training benchmark's cache."""

from __future__ import annotations

import csv
import json
from dataclasses import replace
from pathlib import Path

import pytest

from cache_schema import validate
from temporal.bench import bench_train, build_bench_cache
from temporal.compare import ablate_fusion, ablate_steps, compare, top_confusions
from temporal.train import TrainConfig
from tests.cache_factory import make_config, write_class_cache

CLASSES = ("normal", "crash", "fight", "siren")
FAST = TrainConfig(epochs=2, progress=False)


pytestmark = pytest.mark.usefixtures("one_thread")


def test_compare_writes_table2_for_every_head_and_modality(tmp_path: Path) -> None:
    cache = tmp_path / "c.zarr"
    write_class_cache(cache, make_config(classes=CLASSES), 60, no_audio=(4,))
    cells = compare(cache, tmp_path / "rep", heads=("mtcn", "gru"), seeds=(0, 1), base=FAST)
    assert len(cells) == 6 and all(len(c.runs) == 2 for c in cells)
    splits = {tuple(sorted(c.runs[0]["split"]["sizes"].items())) for c in cells}
    assert len(splits) == 1  # every run on the same split
    md = (tmp_path / "rep" / "table2.md").read_text()
    assert "UNTRAINED" in md and "| mtcn |" in md and "| gru |" in md and "±" in md
    assert "Audio-visual Acc" in md and "Video F1" in md
    with (tmp_path / "rep" / "table2.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert [(r["head"], r["modality"]) for r in rows] == [
        (h, m) for h in ("mtcn", "gru") for m in ("audio", "video", "fused")]
    assert all(0 <= float(r["accuracy_mean"]) <= 1 for r in rows)
    assert (tmp_path / "rep" / "table2.png").stat().st_size > 0
    assert "confuses" in (tmp_path / "rep" / "per_class.md").read_text()


def test_ablations_steps_and_fusion(tmp_path: Path) -> None:
    caches = []
    for steps in (5, 10):
        caches.append(tmp_path / f"c{steps}.zarr")
        write_class_cache(caches[-1], make_config(classes=CLASSES, steps=steps), 40)
    cells = ablate_steps(caches, tmp_path / "rep", base=FAST)
    assert [c.labels["steps"] for c in cells] == [5, 10]
    assert {c.runs[0]["n_test"] for c in cells} == {cells[0].runs[0]["n_test"]}  # one split for all
    assert "| 10 |" in (tmp_path / "rep" / "table3.md").read_text()
    cells = ablate_fusion(caches[1], tmp_path / "rep", base=replace(FAST, epochs=1))
    assert [c.labels["fusion"] for c in cells] == ["early", "late"]
    assert "mtcn late" in (tmp_path / "rep" / "fusion.md").read_text()


def test_tables_train_on_the_task_view_they_are_given(tmp_path: Path) -> None:
    """``--task xd-detection`` reaches every table: compare, ablate-steps and ablate-fusion
    train on the normal-vs-violent view (two classes, MIL by default), not the raw cache."""
    cache = tmp_path / "c.zarr"
    write_class_cache(cache, make_config(classes=CLASSES), 40)
    one = replace(FAST, epochs=1)
    for cells in (compare(cache, tmp_path / "t2", heads=("pool",), modalities=("video",), base=one,
                          task="xd-detection"),
                  ablate_steps([cache], tmp_path / "t3", head="pool", base=one, task="xd-detection"),
                  ablate_fusion(cache, tmp_path / "tf", heads=("pool",), base=one, task="xd-detection")):
        for c in cells:
            assert c.runs[0]["class_names"] == ["normal", "violent"], c.labels
    recorded = json.loads((tmp_path / "t2" / "runs" / "pool-video-s0" / "config.json").read_text())
    assert recorded["train"]["objective"] == "mil" and recorded["cache_identity"]["task"] == "xd-detection"


def test_top_confusions() -> None:
    runs = [{"confusion_matrix": [[5, 2, 0], [0, 4, 1], [3, 0, 2]]}, {"confusion_matrix": [[5, 0, 0], [0, 5, 0], [1, 0, 4]]}]
    assert top_confusions(runs, ["a", "b", "c"], k=2) == [("c", "a", 4), ("a", "b", 2)]


def test_bench_cache_is_a_valid_cache_and_bench_reports_seconds(tmp_path: Path) -> None:
    path = build_bench_cache(tmp_path / "b.zarr", n_clips=24, video_dim=16, audio_dim=12)
    assert validate(path).ok
    result = bench_train(tmp_path / "bench.json", n_clips=24, epochs=2, video_dim=16, audio_dim=12,
                         grid=[(8, 1), (16, 1), (8, 1)])
    assert result["n_clips"] == 24 and result["seconds_per_epoch"] > 0
    settings = [(g["batch_size"], g["threads"]) for g in result["grid"]]
    assert settings == [(16, 1), (8, 1)]          # the default config first, duplicates once
    assert all(len(g["epoch_seconds"]) == 2 and g["seconds_per_epoch"] > 0 for g in result["grid"])
    assert json.loads((tmp_path / "bench.json").read_text())["grid"] == result["grid"]


def test_parallel_runs_give_the_same_table_as_sequential_runs(tmp_path: Path) -> None:
    """--jobs runs cells in worker processes; each run is seeded and single-threaded, so
    the metrics must not depend on it."""
    from temporal.train import TrainConfig

    cache = tmp_path / "c.zarr"
    write_class_cache(cache, make_config(classes=("normal", "crash", "pain")), n=36, seed=0, separation=0.6)
    base = TrainConfig(epochs=3, progress=False, checkpoint_every=0)
    kw = dict(heads=("mtcn", "gru"), modalities=("fused",), seeds=(0, 1), base=base)  # 4 runs: 2 per worker
    one = compare(cache, tmp_path / "one", jobs=1, **kw)
    two = compare(cache, tmp_path / "two", jobs=2, **kw)
    assert [c.labels for c in one] == [c.labels for c in two]
    for a, b in zip(one, two):
        assert [r["seed"] for r in a.runs] == [r["seed"] for r in b.runs] == [0, 1]
        for ra, rb in zip(a.runs, b.runs):
            assert ra["accuracy"] == rb["accuracy"] and ra["confusion_matrix"] == rb["confusion_matrix"]
    assert (tmp_path / "two" / "table2.md").read_text().replace("/two", "/one") == \
        (tmp_path / "one" / "table2.md").read_text()
