"""Causal per-step audio windows (time-grid caches and live mode): the window arithmetic,
features equal to running the model on each step's window, a feature that never hears the
audio after its step (clip windows do), recent audio + origin giving the whole clip's
features bit for bit, batching that never changes a feature, the windowing recorded in
the backbone's identity, and a DecodedClip that holds only recent audio."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from transformers import Wav2Vec2FeatureExtractor, Wav2Vec2Model

from cache_schema import SAMPLE_RATE, InvalidInput, StepLayout, backbone_differences
from extract.backbones.hf_audio import Wav2Vec2Backbone, default_feature_extractor, tiny_wav2vec2_config
from extract.audio_windows import DEFAULT_AUDIO_CONTEXT_S, AudioWindowing, causal_step_windows
from extract.backbones import load_audio_backbone, load_video_backbone
from extract.decode import decode_clip
from extract.pipeline import Decoded, ExtractConfig, FeatureExtractor, audio_step_mask, worker_transform
from tests.media_factory import write_clip

pytestmark = pytest.mark.usefixtures("one_thread")

SR = SAMPLE_RATE


def _grid(duration: float, step: float) -> np.ndarray:
    """Step bounds of a time grid: [i*S, (i+1)*S), the last cut at the duration."""
    starts = np.arange(0.0, duration - 1e-9, step)
    return np.stack([starts, np.minimum(starts + step, duration)], axis=1)


def _noise(seconds: float, seed: int = 0) -> np.ndarray:
    return (np.random.default_rng(seed).standard_normal(int(round(seconds * SR))) * 0.2).astype(np.float32)


@pytest.fixture(scope="module")
def causal():
    return load_audio_backbone("tiny", windowing=AudioWindowing.step(1.0))


# --- arithmetic ------------------------------------------------------------------------


def test_causal_step_windows_arithmetic() -> None:
    bounds = _grid(3.2, 0.5)  # 7 steps, the last 0.2 s
    alone = causal_step_windows(bounds, 0.0)
    assert alone.dtype == np.int64 and alone.shape == (7, 2)
    assert alone.tolist() == [[8000 * i, min(8000 * (i + 1), 51200)] for i in range(7)]
    assert causal_step_windows(bounds, 0.2).tolist() == alone.tolist()  # context within each step: the step alone
    assert causal_step_windows(bounds, 0.3)[6].tolist() == [51200 - 4800, 51200]  # the short last step reaches back
    one = causal_step_windows(bounds, 1.0)
    assert one[:, 1].tolist() == alone[:, 1].tolist()  # every window ends at its step's end
    assert one[:, 0].tolist() == [0, 0, 8000, 16000, 24000, 32000, 35200]  # 1 s back, cut at sample 0
    # rint of each time, not a running sum: S = 0.6667 s steps land on rint(i * S * sr)
    snippets = causal_step_windows(_grid(3.0, 0.6667), 2.0)
    assert snippets[:, 1].tolist() == [10667, 21334, 32002, 42669, 48000]
    assert snippets[:, 0].tolist() == [0, 0, 32002 - 32000, 42669 - 32000, 48000 - 32000]
    assert causal_step_windows(np.zeros((0, 2)), 1.0).shape == (0, 2)
    with pytest.raises(ValueError):
        causal_step_windows(bounds, -1.0)


def test_windowing_config_and_its_record() -> None:
    assert AudioWindowing() == AudioWindowing("clip", None)
    assert AudioWindowing.step().context_s == DEFAULT_AUDIO_CONTEXT_S == 1.0
    assert AudioWindowing.step(0).context_s == 0.0
    for bad in (lambda: AudioWindowing("clip", 1.0), lambda: AudioWindowing("step", -0.5),
                lambda: AudioWindowing("future")):
        with pytest.raises(InvalidInput):
            bad()
    clip = load_audio_backbone("tiny")
    step = load_audio_backbone("tiny", windowing=AudioWindowing.step(2.0))
    assert "context_s" not in clip.preprocessing and clip.preprocessing["windows"] == "consecutive"
    assert step.preprocessing["windows"] == "causal_step" and step.preprocessing["context_s"] == 2.0
    assert AudioWindowing.from_preprocessing(clip.preprocessing) == AudioWindowing()
    assert AudioWindowing.from_preprocessing(step.preprocessing) == AudioWindowing.step(2.0)
    with pytest.raises(InvalidInput):
        AudioWindowing.from_preprocessing({"windows": "causal_step"})
    # the identity names the fields that differ, and only those
    lines = backbone_differences("audio", clip.describe(), step.describe())
    assert len(lines) == 2 and "windows" in lines[1] and "context_s" in lines[0], lines
    assert backbone_differences("audio", step.describe(),
                                load_audio_backbone("tiny", windowing=AudioWindowing.step(1.0)).describe()) == [
        "audio preprocessing context_s: run has 2.0, loaded 1.0"]


def test_the_layout_picks_the_windowing() -> None:
    assert ExtractConfig(steps=10).windowing == AudioWindowing()  # fixed steps: clip windows, as ever
    assert ExtractConfig(step_seconds=0.6667).windowing == AudioWindowing.step(DEFAULT_AUDIO_CONTEXT_S)
    assert ExtractConfig(step_seconds=0.5, audio_context=0).windowing == AudioWindowing.step(0.0)
    assert ExtractConfig(step_seconds=0.5, audio_windows="clip").windowing == AudioWindowing()
    for bad in (dict(steps=10, audio_context=1.0), dict(steps=10, audio_windows="step"),
                dict(step_seconds=0.5, audio_windows="clip", audio_context=1.0)):
        with pytest.raises(InvalidInput):
            ExtractConfig(**bad)


def test_cli_refuses_audio_context_with_fixed_steps(tmp_path: Path) -> None:
    import cli

    result = CliRunner().invoke(cli.main, ["extract", "--dataset", "folder", "--root", str(tmp_path), "--out",
                                           str(tmp_path / "c.zarr"), "--steps", "4", "--audio-context", "1"])
    assert result.exit_code == 2
    lines = [x for x in result.output.splitlines() if x.strip()]
    assert len(lines) == 1 and "--audio-context" in lines[0] and "--step-seconds" in lines[0], result.output


# --- features ----------------------------------------------------------------------------


def test_step_features_equal_a_direct_model_run(causal) -> None:
    """Reference built independently: each step's window cut by hand, the library's
    feature extractor, the model, receptive-field-centre frame times, a plain mean."""
    audio = _noise(2.9, seed=1)
    bounds = _grid(2.9, 0.6667)
    (features,) = causal.embed([(audio, bounds)])
    assert features.shape == (len(bounds), 32) and features.dtype == np.float32
    extractor = Wav2Vec2FeatureExtractor(do_normalize=True)
    for i, (a, b) in enumerate(bounds):
        hi = int(round(b * SR))
        lo = max(0, min(int(round(a * SR)), hi - SR))
        inputs = extractor(audio[lo:hi], sampling_rate=SR, return_tensors="pt").input_values
        with torch.inference_mode():
            frames = causal.model(inputs).last_hidden_state[0].numpy()
        times = (lo + np.arange(frames.shape[0]) * 320 + 200) / SR
        expected = frames[(times >= a) & (times < b)].mean(axis=0)
        np.testing.assert_allclose(features[i], expected, rtol=1e-4, atol=1e-5)


def test_a_step_never_hears_the_audio_after_it(causal) -> None:
    """The core property: changing the audio after step i's end leaves steps 0..i exactly
    as they were; clip windows (everything in one 30 s window) change every step."""
    audio = _noise(4.0, seed=2)
    bounds = _grid(4.0, 0.5)
    cut = int(round(bounds[3, 1] * SR))
    later = audio.copy()
    later[cut:] = _noise(4.0, seed=3)[cut:] * 5  # a loud, different future
    (before,) = causal.embed([(audio, bounds)])
    (after,) = causal.embed([(later, bounds)])
    assert np.array_equal(before[:4], after[:4])
    assert not np.allclose(before[4:], after[4:], atol=1e-3)
    clip = load_audio_backbone("tiny")
    (c_before,) = clip.embed([(audio, bounds)])
    (c_after,) = clip.embed([(later, bounds)])
    assert not np.allclose(c_before[:4], c_after[:4], atol=1e-4)  # the test can fail: clip windows hear it


def test_recent_audio_with_its_origin_gives_the_whole_clips_features(causal) -> None:
    """Live mode holds only recent audio: a slice starting at clip sample `origin`, steps
    still in clip time, gives bit-identical features to the whole clip's audio."""
    audio = _noise(6.0, seed=4)
    bounds = _grid(6.0, 0.6667)[4:]  # steps from 2.67 s; their windows reach back to 1.67 s
    origin = 25_000  # 1.5625 s
    (whole,) = causal.embed([(audio, bounds)])
    (recent,) = causal.embed([(audio[origin:], bounds)], origins=[origin])
    assert np.array_equal(whole, recent)
    (two,) = causal.embed([(audio[origin:], bounds), (audio, bounds)], origins=[origin, 0])[1:]
    assert np.array_equal(two, whole)
    with pytest.raises(ValueError, match="before the audio given"):
        causal.embed([(audio[40_000:], bounds)], origins=[40_000])  # the first window starts at 37,336
    with pytest.raises(ValueError, match="origin 0"):
        load_audio_backbone("tiny").embed([(audio[origin:], bounds)], origins=[origin])


@pytest.mark.parametrize("encoder_norm", ["group", "layer"])
def test_batching_never_changes_a_step_feature(encoder_norm: str) -> None:
    """group: only equal-length windows share a pass (the full-context ones); layer: padded
    with a mask. Either way a step's feature is its window's alone."""
    config = tiny_wav2vec2_config()
    config.feat_extract_norm = encoder_norm
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = Wav2Vec2Model(config)
    backbone = Wav2Vec2Backbone(model, default_feature_extractor(config), name="t", pretrained=False, batch_size=8,
                             windowing="step", context_s=1.0)
    clips = [(_noise(3.3, seed=5), _grid(3.3, 0.5)), (_noise(2.2, seed=6) * 3, _grid(2.2, 0.5))]
    calls: list[tuple[int, ...]] = []
    model.register_forward_pre_hook(lambda _m, args: calls.append(tuple(args[0].shape)))
    together = backbone.embed(clips)
    windows = sum(len(b) for _, b in clips)
    assert len(calls) < windows  # 12 windows: full 1 s ones shared passes
    if encoder_norm == "group":  # no window was padded: the passes hold exactly the windows' samples
        lengths = [hi - lo for _, b in clips for lo, hi in causal_step_windows(b, 1.0).tolist()]
        assert sum(n * length for n, length in calls) == sum(lengths)
    backbone.batch_size = 1  # reference: every window alone, unpadded
    calls.clear()
    alone = [backbone.embed([c])[0] for c in clips]
    assert len(calls) == windows
    for batched, single in zip(together, alone):
        np.testing.assert_allclose(batched, single, rtol=1e-4, atol=1e-5)


def test_a_decoded_clip_with_recent_audio_only(tmp_path: Path, causal) -> None:
    """FeatureExtractor passes ``DecodedClip.audio_origin`` on: a clip that holds its last
    steps and only the audio they need (as live mode builds one) gets the features and
    audio mask of those steps in the whole clip."""
    video = load_video_backbone("tiny")
    path = write_clip(tmp_path / "a.mp4", duration=3.0, fps=15, tone_hz=lambda t: 300.0 + 300.0 * t)
    whole = decode_clip(path, StepLayout(step_seconds=0.5), frame_transform=worker_transform(video))
    extractor = FeatureExtractor(video, causal)
    (full,) = extractor.records([Decoded("a", clip=whole)], isolate_failures=False)
    first = 3
    origin = int(round((whole.step_bounds[first, 1] - 1.0) * SR))
    recent = dataclasses.replace(
        whole, audio=whole.audio[origin:].copy(), audio_origin=origin, step_bounds=whole.step_bounds[first:],
        step_times=whole.step_times[first:], frames=whole.frames[first:], frame_times=whole.frame_times[first:])
    assert np.array_equal(recent.step_audio(0), whole.step_audio(first))
    (part,) = extractor.records([Decoded("a", clip=recent)], isolate_failures=False)
    np.testing.assert_allclose(part.audio, full.audio[first:], rtol=1e-4, atol=1e-5)
    assert np.array_equal(part.audio_mask, full.audio_mask[first:])
    assert np.array_equal(audio_step_mask(recent), audio_step_mask(whole)[first:])
