"""Steps on a time grid (``--step-seconds S``, ``--frames-per-step K``) in extraction and
predict: ``ceil(d / S)`` steps with the right bounds, the frames nearest each target (by
pts, against the probe's frame index), K frames' features averaged, clips of different
step counts in one batch, a clip shorter than one step, audio per step (also steps
shorter than one wav2vec2 frame), the end-to-end command into a ragged cache, and a grid
run's whole-file timeline in predict. Real encoded media through PyAV throughout."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from cache_schema import CacheReader, StepLayout, validate
from extract.backbones import load_audio_backbone, load_video_backbone
from extract.decode import decode_clip
from extract.pipeline import Decoded, FeatureExtractor, worker_transform
from extract.probe import probe
from extract.sampling import target_frames
from tests.media_factory import write_clip

pytestmark = pytest.mark.usefixtures("one_thread")

FPS = 15


@pytest.fixture(scope="module")
def backbones():
    return load_video_backbone("tiny"), load_audio_backbone("tiny")


@pytest.fixture(scope="module")
def clips(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Clips whose frames all differ (brightness ramps, a moving square)."""
    root = tmp_path_factory.mktemp("grid")
    return {
        name: write_clip(root / f"{name}.mp4", duration=d, fps=FPS, gop=12, brightness=lambda t: 0.1 + 0.2 * t,
                         tone_hz=lambda t: 300.0 + 200.0 * t)
        for name, d in (("a", 2.3), ("b", 1.4), ("short", 0.4))
    }


def frame_index(path: Path) -> np.ndarray:
    """Clip times of every frame, from the probe's pts index (not from decoding)."""
    info = probe(str(path))
    return np.sort(info.video.frame_pts * float(info.video.time_base) - info.start)


@pytest.mark.parametrize("k", [1, 3])
def test_grid_steps_bounds_and_nearest_frames(clips: dict[str, Path], k: int) -> None:
    layout = StepLayout(step_seconds=0.5, frames_per_step=k)
    clip = decode_clip(clips["a"], layout)
    d = clip.duration
    assert clip.steps == math.ceil(d / 0.5) == 5
    np.testing.assert_allclose(clip.step_bounds[:, 0], np.arange(5) * 0.5, atol=1e-12)
    np.testing.assert_allclose(clip.step_bounds[:-1, 1], np.arange(1, 5) * 0.5, atol=1e-12)
    assert clip.step_bounds[-1, 1] == d                               # the last step is cut at d
    np.testing.assert_allclose(clip.step_times, clip.step_bounds.mean(axis=1))
    assert clip.frames_per_step == k and len(clip.frames) == 5 * k
    targets = layout.frame_times(clip.step_bounds).reshape(-1)
    times = frame_index(clips["a"])
    np.testing.assert_allclose(clip.frame_times, times[target_frames(times, targets)], atol=1e-9)
    assert clip.stats.frames_decoded <= clip.stats.min_frames + 1   # the plan's minimum
    assert clip.video_step_mask().all()


def test_short_clip_gets_one_step(clips: dict[str, Path], backbones) -> None:
    clip = decode_clip(clips["short"], StepLayout(step_seconds=1.0), frame_transform=worker_transform(backbones[0]))
    assert clip.steps == 1
    np.testing.assert_allclose(clip.step_bounds, [[0.0, clip.duration]])
    (record,) = FeatureExtractor(*backbones).records([Decoded("short", clip=clip)], isolate_failures=False)
    assert record.video.shape == (1, backbones[0].dim) and record.audio.shape == (1, backbones[1].dim)
    assert record.video_mask.tolist() == [True] and record.audio_mask.tolist() == [True]


def test_worker_frames_are_uint8_and_finish_exactly(clips: dict[str, Path], backbones) -> None:
    """A decode worker holds cropped uint8 frames (a quarter of the float tensor's bytes);
    the float transform, done per mini-batch, gives exactly timm's eval transform."""
    video = backbones[0]
    plain = decode_clip(clips["b"], StepLayout(step_seconds=0.5))
    small = decode_clip(clips["b"], StepLayout(step_seconds=0.5), frame_transform=worker_transform(video))
    assert all(f.dtype == np.uint8 and f.ndim == 3 for f in small.frames)
    whole = torch.stack([video.transform(f) for f in plain.frames])
    assert torch.equal(video.transform.finish(np.stack(small.frames)), whole)
    assert small.frames[0].nbytes * 4 == whole[0].numel() * whole[0].element_size()


def test_k_frames_features_are_the_mean_of_their_embeddings(clips: dict[str, Path], backbones) -> None:
    video, audio = backbones
    k = 3
    clip = decode_clip(clips["a"], StepLayout(step_seconds=0.5, frames_per_step=k),
                       frame_transform=worker_transform(video))
    (record,) = FeatureExtractor(video, audio, frame_batch=4).records([Decoded("a", clip=clip)],
                                                                      isolate_failures=False)
    each = video.embed(video.transform.finish(np.stack(clip.frames))).numpy().reshape(clip.steps, k, -1)
    np.testing.assert_allclose(record.video, each.mean(axis=1), rtol=1e-5, atol=1e-6)
    assert record.video.shape == (5, video.dim)
    # not the centre frame alone: the average is of distinct frames
    assert not np.allclose(record.video, each[:, k // 2], atol=1e-4)


def test_variable_steps_in_one_batch(clips: dict[str, Path], backbones) -> None:
    """Clips of different T share a batch (frames across clips in mini-batches smaller
    than the batch): each gets its own T rows, equal to the clip embedded alone."""
    layout = StepLayout(step_seconds=0.3)
    transform = worker_transform(backbones[0])
    decoded = [Decoded(n, clip=decode_clip(clips[n], layout, frame_transform=transform)) for n in ("a", "b", "short")]
    extractor = FeatureExtractor(*backbones, frame_batch=5)
    together = extractor.records(decoded, isolate_failures=False)
    assert [r.video.shape[0] for r in together] == [math.ceil(d.clip.duration / 0.3 - 1e-6) for d in decoded]
    assert len({r.video.shape[0] for r in together}) == 3
    for d, r in zip(decoded, together):
        (alone,) = extractor.records([d], isolate_failures=False)
        np.testing.assert_allclose(r.video, alone.video, rtol=1e-5, atol=1e-6)
        assert r.step_time.shape == r.video_mask.shape == r.audio_mask.shape == (r.video.shape[0],)
        assert r.audio.shape == (r.video.shape[0], backbones[1].dim)


def test_audio_steps_follow_the_tone_and_tiny_steps_get_features(clips: dict[str, Path], backbones) -> None:
    """Audio features are the hidden states averaged over each step; steps shorter than one
    20 ms wav2vec2 frame still get one (the nearest frame's)."""
    video, audio = backbones
    clip = decode_clip(clips["short"], StepLayout(step_seconds=0.01), frame_transform=worker_transform(video))
    assert clip.steps == math.ceil(clip.duration / 0.01 - 1e-6)
    (record,) = FeatureExtractor(video, audio).records([Decoded("short", clip=clip)], isolate_failures=False)
    assert np.isfinite(record.audio).all() and record.audio_mask[:-2].all()
    assert np.abs(record.audio).sum(axis=1).min() > 0
    # steps 0.5 s apart hear different tones (300 Hz rising): features differ between them
    coarse = decode_clip(clips["a"], StepLayout(step_seconds=0.5), frame_transform=worker_transform(video))
    (r2,) = FeatureExtractor(video, audio).records([Decoded("a", clip=coarse)], isolate_failures=False)
    assert not np.allclose(r2.audio[0], r2.audio[3], atol=1e-3)


def test_video_mask_follows_the_stream_on_a_grid(tmp_path: Path, backbones) -> None:
    """On a grid a step outside the video's extent has no video (audio-only tail)."""
    from extract.pipeline import audio_step_mask

    path = write_clip(tmp_path / "v.mp4", duration=1.0, fps=FPS, tone_hz=lambda t: 440.0)
    clip = decode_clip(path, StepLayout(step_seconds=0.25))
    clip.video_end = 0.6  # as a stream that stops early would report it
    assert clip.video_step_mask().tolist() == [True, True, True, False]
    assert audio_step_mask(clip).all()


def test_cli_refuses_steps_with_step_seconds(tmp_path: Path) -> None:
    import cli

    result = CliRunner().invoke(cli.main, ["extract", "--dataset", "folder", "--root", str(tmp_path), "--out",
                                           str(tmp_path / "c.zarr"), "--steps", "4", "--step-seconds", "0.5"])
    assert result.exit_code == 2
    lines = [x for x in result.output.splitlines() if x.strip()]
    assert len(lines) == 1 and "--steps" in lines[0] and "--step-seconds" in lines[0], result.output


@pytest.fixture(scope="module")
def grid_cache(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """`extract --step-seconds 0.5 --frames-per-step 2` of 15 generated clips of 0.4 to
    1.8 s over three classes (enough for a stratified split)."""
    import cli
    from extract.datasets import VAAR_CLASSES

    work = tmp_path_factory.mktemp("grid_cache")
    root = work / "data"
    for i in range(15):
        write_clip(root / VAAR_CLASSES[i % 3] / f"c{i}.mp4", duration=0.4 + 0.1 * i, fps=FPS,
                   brightness=lambda t, i=i: 0.1 + 0.05 * i, tone_hz=lambda t, i=i: 300.0 + 50 * i)
    out = work / "grid.zarr"
    result = CliRunner().invoke(cli.main, ["extract", "--dataset", "synth", "--root", str(root), "--out", str(out),
                                           "--backbones", "tiny", "--workers", "0", "--step-seconds", "0.5",
                                           "--frames-per-step", "2", "--feature-dtype", "float32"])
    assert result.exit_code == 0, result.output
    return {"root": root, "cache": out, "work": work}


def test_extract_on_a_grid_end_to_end(grid_cache: dict[str, Path]) -> None:
    """A ragged (v2) cache that validates, whose clips have ``ceil(d / S)`` steps each."""
    out = grid_cache["cache"]
    report = validate(out)
    assert report.ok, report
    with CacheReader(out) as reader:
        assert reader.config.layout == StepLayout(step_seconds=0.5, frames_per_step=2)
        data = reader.load_steps(fields=("video", "audio", "video_mask", "step_time"))
        durations = reader.read("duration")[data["row"]]
        counts = np.diff(data["offsets"])
        assert len(counts) == 15 and counts.tolist() == [math.ceil(d / 0.5 - 1e-6) for d in durations]
        assert len(set(counts.tolist())) == 4  # 1 to 4 steps
        assert data["video"].shape[0] == counts.sum() and data["video_mask"].all()
        # the precision the run really used is recorded: --precision auto, which the tiny
        # presets run in fp32 on every CPU (extract.backbones.FP32_PRESETS), never "auto"
        assert reader.attrs["precision"] == {"video": "fp32", "audio": "fp32"}


def test_predict_with_a_run_trained_on_a_grid(grid_cache: dict[str, Path]) -> None:
    """Train on the grid cache, then `predict` a longer file than any training clip: its
    whole length at the run's grid; `--window` is refused in one line."""
    import json

    import cli
    from temporal.train import TrainConfig, train

    run = grid_cache["work"] / "run"
    train(grid_cache["cache"], run, TrainConfig(epochs=1, progress=False))
    video = write_clip(grid_cache["work"] / "long.mp4", duration=3.2, fps=FPS, brightness=lambda t: 0.1 + 0.2 * t)
    result = CliRunner().invoke(cli.main, ["predict", str(run), str(video), "--json", "--device", "cpu"])
    assert result.exit_code == 0, result.output
    pred = json.loads([line for line in result.output.splitlines() if line.startswith("{")][0])
    assert pred["error"] is None and len(pred["steps"]) == math.ceil(pred["duration"] / 0.5 - 1e-6) == 7
    np.testing.assert_allclose([s["t"] for s in pred["steps"]][:6], np.arange(6) * 0.5 + 0.25, atol=1e-6)
    refused = CliRunner().invoke(cli.main, ["predict", str(run), str(video), "--window", "1"])
    assert refused.exit_code == 2
    lines = [x for x in refused.output.splitlines() if x.strip()]
    assert len(lines) == 1 and "time grid" in lines[0] and "--window" in lines[0], refused.output


def test_predict_scores_a_whole_file_at_the_run_grid(clips: dict[str, Path], backbones) -> None:
    """A grid run (here a head over the grid's features; the training of ragged runs is
    stage 2's) scores a whole file at full length: ``ceil(d / S)`` step scores at the step
    centres; a batch of files of different lengths is padded with masks and scores each
    as if alone; --window is refused for it."""
    from apply import PredictConfig, Predictor
    from temporal.model import AnomalyModel

    video, audio = backbones
    torch.manual_seed(0)
    model = AnomalyModel("mtcn", "fused", "early", video.dim, audio.dim, 2, 0)
    layout = StepLayout(step_seconds=0.25, frames_per_step=2)
    predictor = Predictor(model, ("explosion", "normal"), layout, "float16", video, audio)
    pred = predictor.predict(clips["a"])
    assert pred.error is None, pred.error
    n = math.ceil(pred.duration / 0.25 - 1e-6)
    assert len(pred.scores) == len(pred.times) == n == 10
    np.testing.assert_allclose(pred.times, (np.arange(n) * 0.25 + np.minimum((np.arange(n) + 1) * 0.25,
                                                                             pred.duration)) / 2)
    assert np.isfinite(pred.scores).all()
    transform = worker_transform(video)
    decoded = [Decoded(k, clip=decode_clip(clips[k], layout, frame_transform=transform)) for k in ("a", "b")]
    together = predictor.score(decoded)
    assert [len(s.step_scores) for s in together] == [10, math.ceil(decoded[1].clip.duration / 0.25 - 1e-6)]
    for d, s in zip(decoded, together):
        (alone,) = predictor.score([d])
        np.testing.assert_allclose(s.step_scores, alone.step_scores, atol=1e-5)
        np.testing.assert_allclose(s.probs, alone.probs, atol=1e-5)
    np.testing.assert_allclose(together[0].step_scores, pred.scores, atol=1e-6)
    windowed = predictor.predict(clips["a"], PredictConfig(window=1.0))
    assert windowed.error is not None and "time grid" in windowed.error


def test_grid_decoding_hands_over_one_clip_at_a_time(grid_cache: dict[str, Path]) -> None:
    """On a grid a clip carries a frame per step, so the decode workers hand over one clip
    per batch (few clips in flight, whatever --batch-size), where fixed steps keep it."""
    from extract.datasets import ManifestRow
    from extract.pipeline import ExtractConfig, iter_decoded

    rows = [ManifestRow(p.name, p) for p in sorted(grid_cache["root"].rglob("*.mp4"))[:5]]
    grid = [len(b) for b in iter_decoded(rows, ExtractConfig(step_seconds=0.5, batch_size=4, workers=1), None)]
    fixed = [len(b) for b in iter_decoded(rows, ExtractConfig(steps=3, batch_size=4, workers=1), None)]
    assert grid == [1] * 5 and fixed == [4, 1]


def test_a_grid_cache_records_and_reproduces_causal_audio_windows(grid_cache: dict[str, Path]) -> None:
    """Grid extraction defaults to causal step windows (1 s of context), records them in the
    audio backbone's preprocessing, and a run's loading rebuilds the backbone with them
    (its features equal the cache's); another --audio-context on the same cache is refused
    with the field that differs."""
    import cli
    from apply.loading import load_checked_backbone
    from extract.backbones import AudioWindowing

    with CacheReader(grid_cache["cache"]) as reader:
        info = reader.config.audio
        data = reader.load_steps(fields=("audio",))
    assert info.preprocessing["windows"] == "causal_step" and info.preprocessing["context_s"] == 1.0
    audio = load_checked_backbone("audio", info, None, "cpu", "fp32")
    assert audio.windowing == AudioWindowing.step(1.0)
    i = int(np.argmax(np.diff(data["offsets"])))  # the longest clip
    path = next(grid_cache["root"].rglob(Path(str(data["key"][i])).name))
    clip = decode_clip(path, StepLayout(step_seconds=0.5, frames_per_step=2))
    (features,) = audio.embed([(clip.audio, clip.step_bounds)])
    np.testing.assert_allclose(features, data["audio"][data["offsets"][i]:data["offsets"][i + 1]], rtol=1e-4,
                               atol=1e-5)
    again = CliRunner().invoke(cli.main, ["extract", "--dataset", "synth", "--root", str(grid_cache["root"]), "--out",
                                          str(grid_cache["cache"]), "--backbones", "tiny", "--workers", "0",
                                          "--step-seconds", "0.5", "--frames-per-step", "2", "--feature-dtype",
                                          "float32", "--audio-context", "2"])
    assert again.exit_code == 2, again.output
    assert "audio preprocessing context_s: requested 2.0, cache has 1.0" in again.output, again.output
