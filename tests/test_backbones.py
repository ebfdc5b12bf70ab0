"""The frozen backbones: preprocessing parity with timm and the feature extractor, features
equal to calling the models directly, batching and windowing that never change results,
untrained presets that still carry the input, offline errors, local checkpoints."""

from __future__ import annotations

import json
import math
import pickle
from pathlib import Path

import huggingface_hub.constants
import numpy as np
import pytest
import timm
import torch
from PIL import Image
from safetensors.torch import save_file
from timm.data import create_transform, resolve_data_config
from transformers import Wav2Vec2FeatureExtractor, Wav2Vec2Model

from cache_schema import SAMPLE_RATE, VideoPreprocessing
from extract.backbones.hf_audio import Wav2Vec2Backbone, default_feature_extractor, tiny_wav2vec2_config
from extract.audio_windows import FrameGeometry, normalize_like_wav2vec2, plan_windows, pool_frames_per_step
from extract.backbones import BackboneUnavailable, load_audio_backbone, load_video_backbone

SR = SAMPLE_RATE


@pytest.fixture(scope="module")
def tiny_video():
    return load_video_backbone("tiny")


@pytest.fixture(scope="module")
def tiny_audio():
    return load_audio_backbone("tiny")


def _frame(height: int = 97, width: int = 130, seed: int = 0) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8))


def _two_images(size: int) -> tuple[Image.Image, Image.Image]:
    """Structurally different frames: a smooth colour gradient and a coarse checkerboard."""
    y, x = np.mgrid[0:size, 0:size] / size
    gradient = np.stack([x, y, 1 - x], axis=-1)
    checker = ((np.floor(x * 8) + np.floor(y * 8)) % 2)[..., None] * np.array([1.0, 0.2, 0.6])
    return tuple(Image.fromarray((a * 255).astype(np.uint8)) for a in (gradient, checker))


def _two_sounds(seconds: float = 1.0) -> tuple[np.ndarray, np.ndarray]:
    t = np.arange(int(seconds * SR)) / SR
    tone = np.sin(2 * math.pi * 440 * t).astype(np.float32)
    noise = np.random.default_rng(0).standard_normal(t.size).astype(np.float32)
    return tone, noise


def _relative_distance(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.linalg.norm(a - b) / max(np.linalg.norm(a), np.linalg.norm(b)))


def _steps(duration: float, n: int) -> np.ndarray:
    edges = np.linspace(0.0, duration, n + 1)
    return np.stack([edges[:-1], edges[1:]], axis=1)


# --- video -------------------------------------------------------------------------------


def test_transform_is_timms_own_and_pickles(tiny_video) -> None:
    frame = _frame()
    reference = create_transform(**resolve_data_config({}, model=tiny_video.model))(frame)
    ours = tiny_video.transform(frame)
    assert ours.shape == (3, 64, 64) and ours.dtype == torch.float32
    assert torch.equal(ours, reference)
    assert torch.equal(pickle.loads(pickle.dumps(tiny_video.transform))(frame), reference)
    # cvnets MobileViT: inputs stay in [0, 1] (mean 0, std 1), RGB, bicubic, crop 0.9
    pre = tiny_video.preprocessing
    assert pre["mean"] == [0.0, 0.0, 0.0] and pre["std"] == [1.0, 1.0, 1.0] and pre["input_scale"] == "unit_interval"
    assert pre["channel_order"] == "RGB" and pre["resize"]["interpolation"] == "bicubic"
    assert pre["crop"] == {"mode": "center", "size": [64, 64], "crop_pct": 0.9}
    json.dumps(tiny_video.describe())  # must be storable as cache attributes


@pytest.mark.parametrize("data_config", [
    {"input_size": (3, 256, 256), "interpolation": "bicubic", "mean": (0.0,) * 3, "std": (1.0,) * 3,
     "crop_pct": 0.9, "crop_mode": "center"},
    {"input_size": (3, 224, 224), "interpolation": "bilinear", "mean": (0.485, 0.456, 0.406),
     "std": (0.229, 0.224, 0.225), "crop_pct": 0.875, "crop_mode": "center"},
    {"input_size": (3, 192, 256), "interpolation": "bicubic", "mean": (0.5,) * 3, "std": (0.5,) * 3,
     "crop_pct": 0.95, "crop_mode": "center"},
    {"input_size": (3, 224, 224), "interpolation": "bicubic", "mean": (0.5,) * 3, "std": (0.5,) * 3,
     "crop_pct": 1.0, "crop_mode": "squash"},
    {"input_size": (3, 224, 224), "interpolation": "bilinear", "mean": (0.5,) * 3, "std": (0.5,) * 3,
     "crop_pct": 0.9, "crop_mode": "border"},
])
def test_recorded_video_preprocessing_is_the_transform_timm_builds(data_config: dict) -> None:
    """The cache's fields are derived without timm (old caches are upgraded from their data
    config): they must say what timm's eval transform really does."""
    pre = VideoPreprocessing.from_timm_data_config(data_config)
    steps = create_transform(**data_config).transforms
    resize, crop, normalize = steps[0], steps[1], steps[-1]
    size = resize.size if isinstance(resize.size, (tuple, list)) else (resize.size, resize.size)
    assert tuple(size) == pre.resize.size
    interpolation = getattr(resize, "interpolation", None)
    assert str(getattr(interpolation, "value", interpolation)).lower().endswith(pre.resize.interpolation)
    edge = {"Resize": "shortest" if not isinstance(resize.size, (tuple, list)) else "both"}.get(type(resize).__name__)
    if type(resize).__name__ == "ResizeKeepRatio":
        edge = "longest" if resize.longest == 1.0 else "shortest"
    assert edge == pre.resize.edge
    assert tuple(crop.size) == pre.crop.size
    assert normalize.mean.tolist() == pytest.approx(list(pre.mean)) and normalize.std.tolist() == pytest.approx(list(pre.std))
    assert VideoPreprocessing.from_dict(pre.to_dict()) == pre


def test_video_embed_equals_direct_model_call(tiny_video) -> None:
    images = torch.stack([tiny_video.transform(_frame(seed=s)) for s in range(5)])
    tiny_video.batch_size = 2  # 3 micro-batches
    try:
        features = tiny_video.embed(images)
    finally:
        tiny_video.batch_size = 32
    with torch.inference_mode():
        direct = tiny_video.model(images)
    assert features.shape == (5, tiny_video.dim) == (5, 320)
    assert features.dtype == torch.float32 and features.device.type == "cpu"
    torch.testing.assert_close(features, direct, rtol=1e-4, atol=1e-5)


def test_video_bf16_autocast_stays_close() -> None:
    backbone = load_video_backbone("tiny", precision="bf16")
    images = torch.stack([backbone.transform(_frame(seed=s)) for s in range(2)])
    low = backbone.embed(images)
    with torch.inference_mode():
        full = backbone.model(images)
    assert low.dtype == torch.float32 and torch.isfinite(low).all()
    assert _relative_distance(low.numpy(), full.numpy()) < 0.05


@pytest.mark.parametrize("preset", ["tiny", "random"])
def test_untrained_video_presets_separate_inputs(preset: str) -> None:
    backbone = load_video_backbone(preset)
    assert backbone.pretrained is False
    size = backbone.transform.data_config["input_size"][-1]
    images = torch.stack([backbone.transform(img) for img in _two_images(size)])
    features = backbone.embed(images).numpy()
    assert np.isfinite(features).all()
    assert _relative_distance(features[0], features[1]) > 0.05
    if preset == "random":
        assert (backbone.arch, backbone.dim, size) == ("mobilevit_s", 640, 256)


# --- audio -------------------------------------------------------------------------------


def test_normalisation_matches_wav2vec2_feature_extractor() -> None:
    audio = (np.random.default_rng(1).standard_normal(5000) * 0.3 + 0.1).astype(np.float32)
    reference = Wav2Vec2FeatureExtractor(do_normalize=True)(audio, sampling_rate=SR).input_values[0]
    assert np.array_equal(normalize_like_wav2vec2(audio), reference)


def test_recorded_normalisation_follows_the_feature_extractor(tiny_audio) -> None:
    assert tiny_audio.preprocessing["normalize"] == {"kind": "zero_mean_unit_var", "eps": 1e-7, "per": "window"}
    assert tiny_audio.preprocessing["sample_rate"] == SR and tiny_audio.preprocessing["min_window_samples"] == 400
    extractor = default_feature_extractor(tiny_audio.model.config)
    extractor.do_normalize = False
    plain = Wav2Vec2Backbone(tiny_audio.model, extractor, name="t", pretrained=False)
    assert plain.preprocessing["normalize"] == {"kind": "none", "eps": None, "per": None}


def test_frame_geometry_matches_model(tiny_audio) -> None:
    geometry = tiny_audio.geometry
    assert (geometry.stride_samples, geometry.receptive_field_samples) == (320, 400)
    assert geometry.stride_s == pytest.approx(0.02)
    lengths = torch.tensor([400, 719, 720, SR, 30 * SR])
    expected = [(n - 400) // 320 + 1 for n in lengths.tolist()]
    assert tiny_audio.model._get_feat_extract_output_lengths(lengths).tolist() == expected


def test_audio_embed_equals_direct_model_run(tiny_audio) -> None:
    """Reference built independently: the library's feature extractor, the model, the
    receptive-field-centre frame times and a plain mean per step."""
    audio = np.random.default_rng(2).standard_normal(int(2.3 * SR)).astype(np.float32) * 0.1
    bounds = _steps(2.3, 4)
    (features,) = tiny_audio.embed([(audio, bounds)])
    inputs = Wav2Vec2FeatureExtractor(do_normalize=True)(audio, sampling_rate=SR, return_tensors="pt").input_values
    with torch.inference_mode():
        frames = tiny_audio.model(inputs).last_hidden_state[0].numpy()
    times = (np.arange(frames.shape[0]) * 320 + 200) / SR
    expected = np.stack([frames[(times >= s) & (times < e)].mean(axis=0) for s, e in bounds])
    assert features.shape == (4, 32) and features.dtype == np.float32
    json.dumps(tiny_audio.describe())
    np.testing.assert_allclose(features, expected, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("encoder_norm", ["group", "layer"])
def test_batching_clips_gives_the_same_features(encoder_norm: str) -> None:
    """group: no mask, only equal-length windows share a pass; layer: padding + mask."""
    config = tiny_wav2vec2_config()
    config.feat_extract_norm = encoder_norm
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = Wav2Vec2Model(config)
    backbone = Wav2Vec2Backbone(
        model, default_feature_extractor(config), name="t", pretrained=False, window_s=1.0, batch_size=8
    )
    assert backbone.uses_attention_mask is (encoder_norm == "layer")
    assert backbone.preprocessing["attention_mask"] is backbone.uses_attention_mask
    assert backbone.preprocessing["batching"] == ("padded_with_mask" if encoder_norm == "layer" else "equal_length_only")
    assert backbone.preprocessing["window_s"] == 1.0
    rng = np.random.default_rng(3)
    clip_a = (rng.standard_normal(int(2.5 * SR)).astype(np.float32), _steps(2.5, 5))
    clip_b = (rng.standard_normal(int(3.2 * SR)).astype(np.float32) * 3, _steps(3.2, 5))
    calls: list[tuple[int, ...]] = []
    model.register_forward_pre_hook(lambda _m, args: calls.append(tuple(args[0].shape)))
    together = backbone.embed([clip_a, clip_b])
    batched_passes = len(calls)
    assert batched_passes < 7  # 7 windows in all (1 s each, tails 0.5 s and 0.2 s): some shared a pass
    backbone.batch_size = 1  # reference: every window alone, unpadded
    alone = [backbone.embed([clip_a])[0], backbone.embed([clip_b])[0]]
    assert len(calls) - batched_passes == 7
    for batched, single in zip(together, alone):
        assert batched.shape == (5, 32)
        np.testing.assert_allclose(batched, single, rtol=1e-4, atol=1e-5)


def test_long_clip_is_run_in_windows(tiny_audio) -> None:
    backbone = load_audio_backbone("tiny", window_s=30.0, batch_size=1)
    calls: list[tuple[int, ...]] = []
    backbone.model.register_forward_pre_hook(lambda _m, args: calls.append(tuple(args[0].shape)))
    audio = np.random.default_rng(4).standard_normal(70 * SR).astype(np.float32)
    (features,) = backbone.embed([(audio, _steps(70.0, 7))])
    assert calls == [(1, 30 * SR), (1, 30 * SR), (1, 10 * SR)]
    assert features.shape == (7, 32) and np.isfinite(features).all()


def test_very_short_clip_still_gets_a_feature_per_step(tiny_audio) -> None:
    audio = np.random.default_rng(5).standard_normal(160).astype(np.float32)  # 10 ms < receptive field
    (features,) = tiny_audio.embed([(audio, _steps(0.01, 3))])
    assert features.shape == (3, 32) and np.isfinite(features).all()
    assert np.array_equal(features[0], features[2])  # all take the single frame


def test_pooling_rules() -> None:
    times = np.array([0.1, 0.2, 0.3])
    frames = np.array([[1.0], [2.0], [3.0]], dtype=np.float32)
    bounds = np.array([[0.0, 0.25], [0.25, 0.4], [0.21, 0.22], [0.9, 1.0]])
    pooled = pool_frames_per_step(times, frames, bounds)
    np.testing.assert_array_equal(pooled[:, 0], [1.5, 3.0, 2.0, 3.0])  # mean, mean, nearest, nearest
    assert plan_windows(70, 30) == [(0, 30), (30, 60), (60, 70)]
    assert FrameGeometry.from_conv((10, 3, 3, 3, 3, 2, 2), (5, 2, 2, 2, 2, 2, 2)).frame_times(320, 2).tolist() == [
        0.0325,
        0.0525,
    ]


@pytest.mark.parametrize("preset", ["tiny", "random"])
def test_untrained_audio_presets_separate_inputs(preset: str) -> None:
    backbone = load_audio_backbone(preset)
    assert backbone.pretrained is False
    tone, noise = _two_sounds()
    features = backbone.embed([(tone, _steps(1.0, 1)), (noise, _steps(1.0, 1))])
    assert all(np.isfinite(f).all() for f in features)
    assert _relative_distance(features[0][0], features[1][0]) > 0.05
    if preset == "random":
        assert (backbone.arch, backbone.dim) == ("wav2vec2", 768)


# --- loading -----------------------------------------------------------------------------


@pytest.fixture
def offline(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)  # read at import time


def test_offline_hub_names_raise_a_helpful_error(offline, tmp_path: Path) -> None:
    with pytest.raises(BackboneUnavailable) as video_error:
        load_video_backbone("mobilevit_s.cvnets_in1k", cache_dir=tmp_path)
    with pytest.raises(BackboneUnavailable) as audio_error:
        load_audio_backbone("facebook/wav2vec2-base", cache_dir=tmp_path)
    for error, name in ((video_error, "mobilevit_s.cvnets_in1k"), (audio_error, "facebook/wav2vec2-base")):
        message = str(error.value)
        assert name in message and "Hugging Face cache" in message
        assert "local" in message and "tiny / random" in message
    with pytest.raises(BackboneUnavailable, match="timm.list_models"):
        load_video_backbone("no_such_model_xyz")
    with pytest.raises(BackboneUnavailable, match="does not exist"):
        load_audio_backbone(str(tmp_path / "missing"))


def test_local_checkpoints_load_back_as_pretrained(tiny_video, tiny_audio, tmp_path: Path) -> None:
    video_dir = tmp_path / "video"
    timm.models.save_for_hf(tiny_video.model, video_dir, safe_serialization=True)  # config.json + model.safetensors
    images = torch.stack([tiny_video.transform(_frame(seed=s)) for s in range(2)])
    for source in (video_dir, video_dir / "model.safetensors"):
        loaded = load_video_backbone(str(source))
        assert loaded.pretrained is True and loaded.checksum == tiny_video.checksum
        assert loaded.transform.data_config["input_size"] == (3, 64, 64)
        torch.testing.assert_close(loaded.embed(images), tiny_video.embed(images))

    audio_dir = tmp_path / "audio"
    tiny_audio.model.save_pretrained(audio_dir)
    tiny_audio.feature_extractor.save_pretrained(audio_dir)
    loaded = load_audio_backbone(str(audio_dir))
    assert loaded.pretrained is True and loaded.checksum == tiny_audio.checksum


def test_bare_checkpoint_assumes_mobilevit_s(tiny_video, tmp_path: Path) -> None:
    """No config.json: the default architecture is assumed, and a mismatch says what to do."""
    torch.save(tiny_video.model.state_dict(), tmp_path / "weights.pth")
    with pytest.raises(BackboneUnavailable, match="config.json"):
        load_video_backbone(str(tmp_path / "weights.pth"))
    save_file({"x": torch.zeros(1)}, tmp_path / "odd.safetensors")
    (tmp_path / "config.json").write_text(json.dumps({"architecture": "mobilevit_xxs"}))
    with pytest.raises(BackboneUnavailable, match="missing keys"):
        load_video_backbone(str(tmp_path / "odd.safetensors"))


def test_preset_checksum_is_stable_and_global_rng_untouched() -> None:
    state = torch.get_rng_state()
    first, second = load_video_backbone("tiny"), load_video_backbone("tiny")
    audio_first, audio_second = load_audio_backbone("tiny"), load_audio_backbone("tiny")
    assert torch.equal(torch.get_rng_state(), state)
    assert first.checksum == second.checksum and len(first.checksum) == 64
    assert audio_first.checksum == audio_second.checksum
    assert first.checksum != load_video_backbone("random").checksum
