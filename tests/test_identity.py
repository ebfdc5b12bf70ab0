"""Sameness of features: identity vs informational fields, canonical comparison, readable
differences, and caches written before preprocessing had named fields (legacy layout)."""

from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import pytest

from cache_schema import (
    IDENTITY_KEYS,
    AudioPreprocessing,
    BackboneInfo,
    CacheConfig,
    CacheReader,
    CacheWriter,
    ClipEntry,
    backbone_differences,
    cache_identity,
    feature_identity_differences,
    identity_informational_differences,
    informational_differences,
    validate,
)
from cache_schema.legacy import upgrade_preprocessing
from extract.backbones import load_audio_backbone, load_video_backbone
from tests.cache_factory import make_config, ok_record

# The backbone identities of the tiny presets exactly as the code before named fields
# (f5aa983) wrote them into a cache's attributes and a run's cache_identity.
LEGACY_TINY_VIDEO = {
    "name": "tiny",
    "arch": "mobilevit_xxs",
    "dim": 320,
    "pretrained": False,
    "checksum": "a591498682d9ba856cbdf52173675d00aae6bb1b42eb6b0e916bcc2e229dd086",
    "preprocessing": {
        "library": "timm 1.0.31",
        "data_config": {
            "input_size": [3, 64, 64],
            "interpolation": "bicubic",
            "mean": [0.0, 0.0, 0.0],
            "std": [1.0, 1.0, 1.0],
            "crop_pct": 0.9,
            "crop_mode": "center",
        },
        "transform": "timm.data.create_transform(**data_config) (eval: resize short side to size/crop_pct, "
                     "centre crop, to [0,1], (x-mean)/std)",
        "channel_order": "RGB",
        "pretrained_tag": None,
    },
}
LEGACY_TINY_AUDIO = {
    "name": "tiny",
    "arch": "wav2vec2",
    "dim": 32,
    "pretrained": False,
    "checksum": "8e52722300b0195cbb62f0ea8429ddee7135a7abe346e48633c86858d24d050e",
    "preprocessing": {
        "library": "transformers 5.24.0",
        "sample_rate": 16000,
        "channels": "mono",
        "window_s": 30.0,
        "windows": "consecutive, non-overlapping, last one shorter",
        "normalize": "per window: (x - mean) / sqrt(var + 1e-07) as Wav2Vec2FeatureExtractor",
        "min_window_samples": 400,
        "pad": "zeros after normalisation",
        "attention_mask": False,
        "batching": "equal-length windows only",
        "layer": "last_hidden_state",
        "frame_stride_s": 0.02,
        "frame_time": "window start + (k*stride + receptive_field/2) / sample_rate",
        "pooling": "mean of frames with time in [start, end) of the step; nearest frame if none",
    },
}


def _legacy_identity(steps: int = 10) -> dict:
    return {
        "schema_version": 1, "steps": steps, "sample_rate": 16000, "feature_dtype": "float16",
        "video_backbone": copy.deepcopy(LEGACY_TINY_VIDEO), "audio_backbone": copy.deepcopy(LEGACY_TINY_AUDIO),
        "class_names": ["normal", "crash"],
    }


@pytest.fixture(scope="module")
def tiny():
    return load_video_backbone("tiny"), load_audio_backbone("tiny")


def _library_lines(lines: list[str]) -> list[str]:
    return [line for line in lines if "preprocessing library" not in line]


# --- legacy caches ---------------------------------------------------------------------


def test_a_legacy_identity_equals_todays_tiny_backbones(tiny) -> None:
    video, audio = tiny
    assert backbone_differences("video", LEGACY_TINY_VIDEO, video.describe()) == []
    assert backbone_differences("audio", LEGACY_TINY_AUDIO, audio.describe()) == []
    # only the library version may differ (another timm or transformers installed)
    assert _library_lines(informational_differences("video", LEGACY_TINY_VIDEO, video.describe())) == []
    assert _library_lines(informational_differences("audio", LEGACY_TINY_AUDIO, audio.describe())) == []
    today = {**_legacy_identity(), "video_backbone": BackboneInfo.from_dict(video.describe()).to_dict(),
             "audio_backbone": BackboneInfo.from_dict(audio.describe()).to_dict()}
    assert feature_identity_differences(_legacy_identity(), today) == []
    assert feature_identity_differences(today, _legacy_identity()) == []


def test_the_upgrade_gives_the_named_fields(tiny) -> None:
    video, audio = tiny
    assert upgrade_preprocessing(LEGACY_TINY_VIDEO["preprocessing"]) == {**video.preprocessing, "library": "timm 1.0.31"}
    upgraded = upgrade_preprocessing(LEGACY_TINY_AUDIO["preprocessing"])
    assert upgraded == {**audio.preprocessing, "library": "transformers 5.24.0"}
    assert AudioPreprocessing.from_dict(upgraded).to_dict() == upgraded
    assert upgrade_preprocessing(upgraded) == upgraded  # today's form stays as it is


def test_the_other_legacy_sentences_are_recognised() -> None:
    old = {**LEGACY_TINY_AUDIO["preprocessing"], "normalize": "none (feature extractor has do_normalize=False)",
           "attention_mask": True, "batching": "padded with attention mask"}
    new = upgrade_preprocessing(old)
    assert new["normalize"] == {"kind": "none", "eps": None, "per": None}
    assert new["batching"] == "padded_with_mask" and new["attention_mask"] is True


@pytest.mark.parametrize("change", [
    {"transform": "timm.data.create_transform(**data_config), reworded"},
    {"channel_order": "BGR"},
    {"extra": 1},
])
def test_an_unrecognised_legacy_video_layout_stays_a_difference(tiny, change: dict) -> None:
    old = copy.deepcopy(LEGACY_TINY_VIDEO)
    old["preprocessing"].update(change)
    assert upgrade_preprocessing(old["preprocessing"]) == old["preprocessing"]
    diffs = backbone_differences("video", old, tiny[0].describe())
    assert diffs and all(line.startswith("video preprocessing ") for line in diffs)


def test_an_unrecognised_legacy_audio_sentence_stays_a_difference(tiny) -> None:
    old = copy.deepcopy(LEGACY_TINY_AUDIO)
    old["preprocessing"]["batching"] = "padded with attention mask"  # contradicts attention_mask False
    diffs = backbone_differences("audio", old, tiny[1].describe())
    assert diffs and all(line.startswith("audio preprocessing ") for line in diffs)
    old = copy.deepcopy(LEGACY_TINY_AUDIO)
    old["preprocessing"]["window_s"] = 10.0  # recognised layout, other window: a real difference
    assert backbone_differences("audio", old, tiny[1].describe()) == [
        "audio preprocessing window_s: run has 10.0, loaded 30.0"]


def test_a_legacy_cache_opens_resumes_and_reads_upgraded(tmp_path: Path, tiny) -> None:
    """A cache whose attributes were written in the old layout (as the old writer did: the
    BackboneInfo held the old dict) is read, validated, and resumed by today's backbones;
    its attributes are never rewritten."""
    legacy = _legacy_identity(steps=4)
    old = CacheConfig(steps=4, sample_rate=16000, video=BackboneInfo(**legacy["video_backbone"]),
                      audio=BackboneInfo(**legacy["audio_backbone"]), class_names=("normal", "crash"))
    rng = np.random.default_rng(0)
    with CacheWriter.open(tmp_path / "old.zarr", old, [ClipEntry("a.mp4", 0), ClipEntry("b.mp4", 1)]) as w:
        w.write([ok_record("a.mp4", old, rng)])
        w.finish()
    with CacheReader(tmp_path / "old.zarr") as r:
        assert r.attrs["video_backbone"]["preprocessing"]["transform"] == LEGACY_TINY_VIDEO["preprocessing"]["transform"]
        assert "resize" in r.config.video.preprocessing and "windows" in r.config.audio.preprocessing
        assert r.identity["audio_backbone"]["preprocessing"]["pooling"] == "mean_in_step_else_nearest"
        assert set(r.identity) == set(IDENTITY_KEYS)
    assert validate(tmp_path / "old.zarr").ok
    video, audio = tiny
    today = CacheConfig(steps=4, sample_rate=16000, video=BackboneInfo.from_dict(video.describe()),
                        audio=BackboneInfo.from_dict(audio.describe()), class_names=("normal", "crash"))
    with CacheWriter.open(tmp_path / "old.zarr", today, [ClipEntry("a.mp4", 0), ClipEntry("c.mp4", 1)]) as w:
        assert w.todo(["a.mp4", "b.mp4", "c.mp4"]) == ["b.mp4", "c.mp4"]
    with CacheReader(tmp_path / "old.zarr") as r:
        assert r.n == 3 and "transform" in r.attrs["video_backbone"]["preprocessing"]


# --- what is identity, what is informational ---------------------------------------------


def _info(**change) -> dict:
    d = BackboneInfo("tiny", "arch", "c" * 64, False, 8, {"library": "timm 1", "pretrained_tag": None,
                                                          "resize": {"size": [71, 71], "interpolation": "bicubic"},
                                                          "mean": [0.0, 0.0, 0.0]}).to_dict()
    pre = change.pop("preprocessing", {})
    d.update(change)
    d["preprocessing"].update(pre)
    return d


@pytest.mark.parametrize("change,line", [
    ({"checksum": "0" * 64}, "video weights: run has sha256 cccccccccccc…, loaded sha256 000000000000…"),
    ({"arch": "other"}, "video architecture: run has 'arch', loaded 'other'"),
    ({"dim": 16}, "video feature dim: run has 8, loaded 16"),
    ({"preprocessing": {"resize": {"size": [72, 71], "interpolation": "bicubic"}}},
     "video preprocessing resize.size: run has [71, 71], loaded [72, 71]"),
    ({"preprocessing": {"mean": [0.5, 0.0, 0.0]}}, "video preprocessing mean: run has [0.0, 0.0, 0.0], loaded [0.5, 0.0, 0.0]"),
    ({"preprocessing": {"crop": {"mode": "center"}}}, "video preprocessing crop: run has nothing, loaded {'mode': 'center'}"),
])
def test_identity_fields_are_differences(change: dict, line: str) -> None:
    assert backbone_differences("video", _info(), _info(**change)) == [line]
    assert informational_differences("video", _info(), _info(**change)) == []


@pytest.mark.parametrize("change,line", [
    ({"name": "/models/copy.safetensors"}, "audio name: run has 'tiny', loaded '/models/copy.safetensors'"),
    ({"pretrained": True}, "audio pretrained: run has False, loaded True"),
    ({"preprocessing": {"library": "timm 2"}}, "audio preprocessing library: run has 'timm 1', loaded 'timm 2'"),
    ({"preprocessing": {"pretrained_tag": "in1k"}}, "audio preprocessing pretrained_tag: run has nothing, loaded 'in1k'"),
])
def test_informational_fields_only_warn(change: dict, line: str) -> None:
    assert backbone_differences("audio", _info(), _info(**change)) == []
    assert informational_differences("audio", _info(), _info(**change)) == [line]


def test_comparison_is_canonical() -> None:
    """Tuples equal lists and 30 equals 30.0, as a cache stores them; extra keys of a
    backbone's describe() (device, precision) are not part of the comparison."""
    a = _info(preprocessing={"window_s": 30, "mean": (0.0, 0.0, 0.0)})
    b = {**_info(preprocessing={"window_s": 30.0}), "device": "cuda", "precision": "bf16"}
    assert backbone_differences("audio", a, b) == [] == informational_differences("audio", a, b)
    assert backbone_differences("audio", BackboneInfo.from_dict(a), BackboneInfo.from_dict(b)) == []


def test_whole_identities() -> None:
    base = make_config().identity()
    assert feature_identity_differences(base, make_config().identity()) == []
    assert feature_identity_differences(base, make_config(steps=5).identity()) == ["steps: requested 10, cache has 5"]
    assert feature_identity_differences(base, make_config(classes=("a", "b")).identity()) == [
        "class_names: requested ['normal', 'crash'], cache has ['a', 'b']"]
    view = {**base, "task": "xd-detection"}  # a run trained on a task view vs the raw cache
    assert feature_identity_differences(view, base, ("run has", "cache has")) == [
        "task: run has 'xd-detection', cache has nothing"]
    renamed = make_config(video_name="local").identity()
    assert feature_identity_differences(base, renamed) == []
    assert identity_informational_differences(base, renamed) == ["video name: requested 'tiny', cache has 'local'"]
    assert set(base) == set(IDENTITY_KEYS) and set(cache_identity(base)) == set(IDENTITY_KEYS)


# The tiny audio backbone's preprocessing as every cache recorded it before causal step
# windows existed (fixed steps and time grids alike): fixed-step caches keep exactly it.
TINY_AUDIO_PREPROCESSING_BEFORE_CAUSAL_WINDOWS = {
    "sample_rate": 16000, "channels": "mono", "window_s": 30.0, "windows": "consecutive",
    "normalize": {"kind": "zero_mean_unit_var", "eps": 1e-07, "per": "window"}, "min_window_samples": 400,
    "pad": "zeros_after_normalize", "attention_mask": False, "batching": "equal_length_only",
    "layer": "last_hidden_state", "frame_stride_s": 0.02, "frame_time": "receptive_field_centre",
    "pooling": "mean_in_step_else_nearest", "library": "transformers 5.24.0",
}


def test_audio_windowing_in_the_identity() -> None:
    """Fixed-step extraction keeps clip windows and the very same record (no new field, so
    a v1 cache's identity is unchanged); a grid's causal windows are recorded and differ
    from clip windows in exactly the windowing fields; a record without them is clip."""
    from extract.audio_windows import AudioWindowing
    from extract.pipeline import ExtractConfig, load_extract_backbones

    before = TINY_AUDIO_PREPROCESSING_BEFORE_CAUSAL_WINDOWS
    fixed = load_extract_backbones(ExtractConfig(steps=10, video_model="tiny", audio_model="tiny"))[1]
    assert {**fixed.preprocessing, "library": ""} == {**before, "library": ""}
    assert AudioPreprocessing.from_dict(before).to_dict() == before
    assert AudioWindowing.from_preprocessing(before) == AudioWindowing()
    grid = load_extract_backbones(ExtractConfig(step_seconds=0.6667, video_model="tiny", audio_model="tiny"))[1]
    assert grid.preprocessing == {**fixed.preprocessing, "windows": "causal_step", "context_s": 1.0}
    old = {**LEGACY_TINY_AUDIO, "preprocessing": before}
    assert backbone_differences("audio", old, fixed.describe()) == []
    assert backbone_differences("audio", old, grid.describe(), ("cache has", "requested")) == [
        "audio preprocessing context_s: cache has nothing, requested 1.0",
        "audio preprocessing windows: cache has 'consecutive', requested 'causal_step'",
    ]
