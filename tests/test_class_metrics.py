"""Metrics over the classes a dataset has, the binary view's normal class, every modality
scored on the same test clips, and ``--precision auto``."""

from __future__ import annotations

import json
import logging
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from cache_schema import InvalidInput
from extract.backbones import frozen as frozen_model
from extract.backbones import load_video_backbone
from extract.backbones.frozen import choose_precision, read_cpu_flags, resolve_precision
from temporal.compare import compare
from temporal.evaluate import evaluate_run
from temporal.metrics import classification_metrics, present_classes
from temporal.train import TrainConfig, train
from tests.cache_factory import make_config, write_class_cache

# VAAR-like names: a user brought two of them (brawling, normal)
NAMES = ("abuse", "brawling", "crash", "fight", "normal", "riot", "siren", "theft", "vandalism", "shooting")
QUICK = TrainConfig(epochs=4, progress=False, checkpoint_every=0)

pytestmark = pytest.mark.usefixtures("one_thread")


def test_metrics_of_a_perfect_two_class_run_cover_two_classes() -> None:
    y = np.array([1, 4, 1, 4, 4, 1])
    probs = np.eye(len(NAMES))[y]
    everything = classification_metrics(y, probs, NAMES)  # the old way: empty classes count as zeros
    assert everything["f1_macro"] == pytest.approx(0.2)
    m = classification_metrics(y, probs, NAMES, labels=present_classes(y, len(NAMES)))
    assert m["f1_macro"] == 1.0 and m["precision_macro"] == 1.0 and m["accuracy"] == 1.0
    assert m["class_names"] == ["brawling", "normal"] and list(m["per_class"]) == ["brawling", "normal"]
    assert m["confusion_matrix"] == [[3, 0], [0, 3]] and m["n_predicted_without_data"] == 0
    # a prediction of a class without data is a mistake, with no column of its own
    wrong = probs.copy()
    wrong[0] = np.eye(len(NAMES))[2]
    m = classification_metrics(y, wrong, NAMES, labels=[1, 4])
    assert m["accuracy"] == pytest.approx(5 / 6) and m["per_class"]["brawling"]["recall"] == pytest.approx(2 / 3)
    assert m["n_predicted_without_data"] == 1 and np.sum(m["confusion_matrix"]) == 5


@pytest.fixture(scope="module")
def two_class_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Ten class names, clips of two (brawling, normal); clips 3 and 8 have no audio, 5 no video."""
    path = tmp_path_factory.mktemp("two") / "c.zarr"
    write_class_cache(path, make_config(classes=NAMES), 48, separation=3.0, present=(1, 4), no_audio=(3, 8),
                      no_video=(5,))
    return path


def test_a_run_on_two_of_ten_classes_reports_exactly_those(two_class_cache: Path, tmp_path: Path) -> None:
    m = train(two_class_cache, tmp_path / "run", QUICK).metrics
    assert m["class_names"] == ["brawling", "normal"] and set(m["per_class"]) == {"brawling", "normal"}
    assert np.asarray(m["confusion_matrix"]).shape == (2, 2)
    assert np.sum(m["confusion_matrix"]) == m["n_test"] - m["n_predicted_without_data"]
    assert m["f1_macro"] > 0.5  # learnable features: two real classes, not ten
    assert m["normal_class"] == "normal" and isinstance(m["ap_anomaly"], float)
    per_class = (tmp_path / "run" / "per_class.md").read_text()
    assert "| brawling |" in per_class and "| crash |" not in per_class and "over 2 classes" in per_class
    # --normal-class at evaluation: another binary view of the same run; an unknown one is refused
    again = evaluate_run(tmp_path / "run", write=False, normal_class="brawling")
    assert again["normal_class"] == "brawling" and again["ap_anomaly"] is not None
    with pytest.raises(InvalidInput, match="--normal-class 'nope' is not a class"):
        evaluate_run(tmp_path / "run", write=False, normal_class="nope")
    with pytest.raises(InvalidInput, match="--normal-class"):
        train(two_class_cache, tmp_path / "bad", replace(QUICK, normal_class="Normal"))


def test_without_a_normal_class_the_binary_view_is_left_out_with_the_reason(tmp_path: Path,
                                                                            caplog: pytest.LogCaptureFixture) -> None:
    cache = tmp_path / "fights.zarr"
    write_class_cache(cache, make_config(classes=("fight", "noFight")), 24, separation=3.0)
    m = train(cache, tmp_path / "run", replace(QUICK, epochs=2, normal_class="noFight")).metrics
    assert m["normal_class"] == "noFight" and isinstance(m["ap_anomaly"], float)
    with caplog.at_level(logging.INFO, logger="temporal.evaluate"):
        m = evaluate_run(tmp_path / "run", write=False, normal_class="")  # "": the class named normal
    assert m["ap_anomaly"] is None and m["normal_class"] is None
    assert "no class is named 'normal'" in m["binary_view"] and "--normal-class NAME" in m["binary_view"]
    assert any("no class is named 'normal'" in r.getMessage() for r in caplog.records)


def test_table2_scores_every_modality_on_the_same_test_clips(two_class_cache: Path, tmp_path: Path) -> None:
    cells = compare(two_class_cache, tmp_path / "rep", heads=("gru",), base=replace(QUICK, epochs=1))
    runs = {c.labels["modality"]: c.runs[0] for c in cells}
    keys = {m: r["test_keys"] for m, r in runs.items()}
    assert keys["audio"] == keys["video"] == keys["fused"] and len(keys["audio"]) == runs["audio"]["n_test"]
    split = json.loads((tmp_path / "rep" / "runs" / "gru-audio-s0" / "split.json").read_text())
    assert sorted(keys["audio"]) == sorted(split["test"])
    no_audio = {k for k in split["test"] if k.endswith(("_0003.mp4", "_0008.mp4"))}
    no_video = {k for k in split["test"] if k.endswith("_0005.mp4")}
    assert set(runs["audio"]["test_keys_without_stream"]) == no_audio
    assert set(runs["video"]["test_keys_without_stream"]) == no_video
    assert runs["fused"]["n_test_without_stream"] == 0
    assert all(r["test_without"] == {"audio": len(no_audio), "video": len(no_video)} for r in runs.values())
    table = (tmp_path / "rep" / "table2.md").read_text()
    assert (f"Every column is scored on the same {len(split['test'])} test clips; {len(no_audio)} of them have no "
            f"audio and {len(no_video)} no video") in table
    assert "Metrics over the 2 classes with clips in the cache (brawling, normal)" in table
    assert "| crash |" not in (tmp_path / "rep" / "per_class.md").read_text()
    # what the audio run predicts for a clip without audio: its training class prior, stored with the run
    prior = np.asarray(json.loads((tmp_path / "rep" / "runs" / "gru-audio-s0" / "training.json").read_text())
                       ["class_prior"])
    assert prior.shape == (len(NAMES),) and prior.sum() == pytest.approx(1.0) and set(np.flatnonzero(prior)) == {1, 4}


def test_precision_auto_follows_the_cpu_flags(tmp_path: Path, caplog: pytest.LogCaptureFixture,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    epyc = {"fpu", "sse4_2", "avx", "avx2", "fma"}
    assert choose_precision("cpu", epyc) == "fp32"
    assert choose_precision("cpu", epyc | {"amx_bf16", "amx_tile"}) == "bf16"
    assert choose_precision("cpu", epyc | {"avx512f", "avx512_bf16"}) == "bf16"
    assert choose_precision("cuda", set(), cuda_bf16=True) == "bf16"
    assert choose_precision("cuda", set(), cuda_bf16=False) == "fp32"
    info = tmp_path / "cpuinfo"
    info.write_text("processor\t: 0\nflags\t\t: fpu avx2 amx_bf16\n\nprocessor\t: 1\nflags\t\t: fpu avx2 amx_bf16\n")
    assert read_cpu_flags(info) == {"fpu", "avx2", "amx_bf16"} and read_cpu_flags(tmp_path / "none") == set()
    assert resolve_precision("auto", "cpu", cpu_flags=epyc) == "fp32"
    assert resolve_precision("auto", "cpu", cpu_flags=read_cpu_flags(info)) == "bf16"
    # bf16 asked for on a CPU that emulates it: run as asked, one warning with the numbers and the fix
    monkeypatch.setattr(frozen_model, "_warned_slow_bf16", set())
    with caplog.at_level(logging.WARNING, logger="extract.backbones.frozen"):
        assert resolve_precision("bf16", "cpu", cpu_flags=epyc) == "bf16"
        assert resolve_precision("bf16", "cpu", cpu_flags=epyc) == "bf16"
        assert resolve_precision("bf16", "cpu", cpu_flags=read_cpu_flags(info)) == "bf16"
    warnings = [r.getMessage() for r in caplog.records]
    assert len(warnings) == 1 and "250 s instead of 3.6 s" in warnings[0] and "--precision auto or fp32" in warnings[0]
    with pytest.raises(InvalidInput, match="Unknown precision"):
        resolve_precision("fp8", "cpu")
    # a backbone loaded with auto describes the precision it runs at, never "auto"; the tiny
    # test presets run fp32 on every CPU (tests and the demo give the same numbers on AMX)
    from extract.backbones import preset_precision

    assert preset_precision("tiny", "auto") == "fp32" and preset_precision("random", "auto") == "auto"
    assert preset_precision("tiny", "bf16") == "bf16"  # asked for explicitly: as asked
    assert load_video_backbone("tiny", precision="auto").describe()["precision"] == "fp32"
    assert load_video_backbone("random", precision="auto").describe()["precision"] == \
        choose_precision("cpu", read_cpu_flags())
