"""Stage 2 on clips of different lengths: per-batch padding, the training-length cap, the
MIL objective, every head at thousands of steps, and frame AP with its layout's ceiling."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from sklearn.metrics import average_precision_score

from cache_schema import InvalidInput, StepLayout
from temporal.data import CacheData, RaggedClips, cap_steps, load_cache, step_batches
from temporal.evaluate import predict
from temporal.heads import create_head, list_heads
from temporal.heads import mtcn as mtcn_module
from temporal.losses import MilConfig, mil_loss, topk_clip_score
from temporal.model import PaddedBatches
from temporal.rundir import RunConfig, RunDir
from temporal.train import (
    TrainConfig,
    build_model,
    make_optimizer,
    resolve_config,
    train,
    train_epoch,
)
from temporal.xd_detection import (
    VideoScores,
    frame_arrays,
    frame_level_ap,
    official_frame_count,
    oracle_ap,
)
from tests.cache_factory import make_config


def ragged(lengths: list[int], dv: int = 3, da: int = 2, seed: int = 0, labels: list[int] | None = None) -> RaggedClips:
    g = torch.Generator().manual_seed(seed)
    s = sum(lengths)
    offsets = torch.zeros(len(lengths) + 1, dtype=torch.long)
    offsets[1:] = torch.cumsum(torch.tensor(lengths), 0)
    label = torch.tensor(labels if labels is not None else [i % 2 for i in range(len(lengths))])
    return RaggedClips(torch.randn(s, dv, generator=g), torch.randn(s, da, generator=g), torch.ones(s, dtype=torch.bool),
                       torch.ones(s, dtype=torch.bool), label, offsets)


def test_batches_are_padded_to_their_own_longest_clip_with_masks() -> None:
    clips = ragged([3, 5, 2])
    batch = clips.pad(torch.tensor([2, 0]))
    assert batch.video.shape == (2, 3, 3) and batch.audio.shape == (2, 3, 2)   # longest of the batch, not 5
    assert batch.video_mask.tolist() == [[True, True, False], [True, True, True]]
    assert torch.equal(batch.video[0, :2], clips.video[8:10]) and torch.equal(batch.video[1], clips.video[0:3])
    assert float(batch.video[0, 2].abs().sum()) == 0.0 and batch.label.tolist() == [0, 0]
    sub = clips.take(torch.tensor([1]))
    assert sub.lengths.tolist() == [5] and torch.equal(sub.video, clips.video[3:8])
    # budgeted batches: by length, bounded padded size, every clip once
    lengths = np.array([3000, 10, 10, 400, 10])
    batches = step_batches(lengths, max_clips=2, max_steps=1000)
    assert sorted(np.concatenate(batches).tolist()) == [0, 1, 2, 3, 4]
    assert all(len(b) * lengths[b].max() <= 1000 or len(b) == 1 for b in batches)
    assert [b.tolist() for b in step_batches(np.full(7, 10), max_clips=3)] == [[0, 1, 2], [3, 4, 5], [6]]


def test_training_length_cap_by_sampling_and_pooling() -> None:
    clips = ragged([10, 3])
    clips = RaggedClips(clips.video, clips.audio, clips.video_mask.clone(), clips.audio_mask, clips.label, clips.offsets)
    clips.video_mask[1] = False  # a step without video: pooling must not average it in
    sampled = cap_steps(clips, 4, "sample")
    assert sampled.lengths.tolist() == [4, 3]
    idx = np.linspace(0, 9, 4).astype(int)  # XDVioDet: [0, 3, 6, 9]
    assert torch.equal(sampled.video[:4], clips.video[idx]) and torch.equal(sampled.video[4:], clips.video[10:])
    pooled = cap_steps(clips, 4, "pool")
    edges = np.linspace(0, 10, 5).astype(int)  # UR-DMU: [0, 2, 5, 7, 10]
    assert pooled.lengths.tolist() == [4, 3] and edges.tolist() == [0, 2, 5, 7, 10]
    assert torch.allclose(pooled.video[0], clips.video[0])  # bin [0, 2) without the masked step 1
    assert torch.allclose(pooled.audio[0], clips.audio[0:2].mean(0))
    assert torch.allclose(pooled.video[1], clips.video[2:5].mean(0))
    assert torch.allclose(pooled.video[3], clips.video[7:10].mean(0))
    assert cap_steps(clips, 10, "sample") is clips
    with pytest.raises(InvalidInput, match="train steps mode"):
        cap_steps(clips, 4, "crop")


def test_mil_loss_on_a_hand_made_example() -> None:
    # Two classes, normal = 0: logits (0, z) give anomaly score sigmoid(z).
    t = 20
    z = torch.full((2, t), -4.0)
    z[0, 3], z[0, 7] = 4.0, 2.0          # clip 0 (anomalous): two high steps
    z[1, 5] = 6.0                        # clip 1 (normal): its highest step is masked out
    mask = torch.ones(2, t, dtype=torch.bool)
    mask[1, 5] = False
    mask[1, 15:] = False                 # clip 1 has 14 valid steps: k = 14 // 16 + 1 = 1
    logits = torch.stack([torch.zeros_like(z), z], dim=-1)
    scores = torch.sigmoid(z)
    clip = topk_clip_score(scores, mask)
    k0 = t // 16 + 1                     # 2
    assert k0 == 2
    assert torch.allclose(clip[0], (torch.sigmoid(torch.tensor(4.0)) + torch.sigmoid(torch.tensor(2.0))) / 2)
    assert torch.allclose(clip[1], torch.sigmoid(torch.tensor(-4.0)))   # masked step 5 is not the max
    labels = torch.tensor([1, 0])
    loss = mil_loss(logits, labels, mask, MilConfig(normal_index=0))
    expect = -(torch.log(clip[0]) + torch.log(1 - clip[1])) / 2
    assert torch.allclose(loss, expect, atol=1e-6)
    # Sultani's terms: sparsity = mean valid score of the anomalous clips, smoothness = mean squared jump
    sparse = mil_loss(logits, labels, mask, MilConfig(0, sparsity=1.0)) - loss
    assert torch.allclose(sparse, scores[0].mean(), atol=1e-6)
    smooth = mil_loss(logits, labels, mask, MilConfig(0, smoothness=1.0)) - loss
    assert torch.allclose(smooth, ((scores[0, 1:] - scores[0, :-1]) ** 2).mean(), atol=1e-6)
    # normal index 1 flips which class is the anomaly
    flipped = torch.stack([z, torch.zeros_like(z)], dim=-1)
    assert torch.allclose(mil_loss(flipped, torch.tensor([0, 1]), mask, MilConfig(normal_index=1)), expect, atol=1e-6)


@pytest.mark.parametrize("head", list_heads())
def test_every_head_runs_on_3000_steps(head: str, monkeypatch: pytest.MonkeyPatch) -> None:
    torch.manual_seed(0)
    model = create_head(head, 12, 2, 200).eval()
    x = torch.randn(1, 3000, 12)
    mask = torch.ones(1, 3000, dtype=torch.bool)
    mask[0, 2600:] = False
    with torch.no_grad():
        out = model(x, mask)
        assert out.step_logits.shape == (1, 3000, 2) and torch.isfinite(out.step_logits).all()
        assert torch.isfinite(out.clip_logits).all()
        if head == "mtcn":  # chunked attention over queries gives the same numbers
            monkeypatch.setattr(mtcn_module, "ATTENTION_SCORES", 1 << 20)
            chunked = model(x, mask)
            assert torch.allclose(chunked.step_logits, out.step_logits, atol=1e-5)


def _grid_data(tmp_path: Path, n: int = 48, seed: int = 0) -> tuple[CacheData, np.ndarray]:
    """Untrimmed clips of 30..120 steps; violent ones hold one 5-step event (video dims
    shifted): labels are per video, the event's steps are returned for scoring."""
    rng = np.random.default_rng(seed)
    config = make_config(dv=6, da=3, classes=("normal", "violent"))
    config = dataclasses.replace(config, steps=0, step_seconds=2 / 3)   # on a 2/3 s grid
    lengths = rng.integers(30, 121, n)
    labels = np.arange(n) % 2
    video, events = [], []
    for t, y in zip(lengths, labels):
        v = rng.standard_normal((t, 6)).astype(np.float32)
        e = np.zeros(t, dtype=bool)
        if y:
            s = rng.integers(0, t - 5)
            v[s:s + 5, :3] += 2.5
            e[s:s + 5] = True
        video.append(v), events.append(e)
    s = int(lengths.sum())
    offsets = torch.from_numpy(np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64))
    clips = RaggedClips(torch.from_numpy(np.concatenate(video)), torch.from_numpy(rng.standard_normal((s, 3)).astype(np.float32)),
                        torch.ones(s, dtype=torch.bool), torch.ones(s, dtype=torch.bool), torch.from_numpy(labels), offsets)
    keys = np.array([f"v{i:03d}.mp4" for i in range(n)])
    data = CacheData(tmp_path / "grid.zarr", config, config.identity(), keys, keys.copy(), clips)
    return data, np.concatenate(events)


def test_mil_learns_a_short_event_in_untrimmed_ragged_clips(tmp_path: Path) -> None:
    data, events = _grid_data(tmp_path)
    assert data.layout.grid and data.lengths.min() >= 30 and data.lengths.max() > 64
    # The order-blind pool head localises a 5-step event reliably at this tiny scale (the
    # generated stand-in's end-to-end test is MTCN's); the ragged path, the cap, MIL and
    # full-length scoring are the same for every head.
    cfg = TrainConfig(head="pool", epochs=10, batch_size=8, max_train_steps=64, lr=3e-3, progress=False,
                      checkpoint_every=0, input_dropout=0.0)
    result = train(data.path, tmp_path / "run", cfg, data=data)
    run = RunDir(result.rundir).read_config()
    assert run.train.objective == "mil" and run.steps == 64             # "auto" recorded resolved; head T = cap
    assert run.layout.grid and abs(run.layout.step_seconds - 2 / 3) < 1e-9
    doc = json.loads(RunDir(result.rundir).config.read_text())
    assert doc["train"]["objective"] == "mil" and doc["step_seconds"] == pytest.approx(2 / 3)
    # full-length scoring of every clip: step AP of the planted event far above chance
    from temporal.evaluate import load_run
    model, _ = load_run(result.rundir)
    pred = predict(model, data.clips)
    assert pred.step_probs.shape[1] == int(data.lengths.max())
    step_scores = np.concatenate([1 - pred.step_probs[i, :t, 0] for i, t in enumerate(data.lengths)])
    chance = events.mean()
    ap = average_precision_score(events, step_scores)
    assert ap > 0.5 > 4 * chance, (ap, chance)
    # the MIL clip probability is the top-k mean of the step scores
    i = 1
    s = np.sort(1 - pred.step_probs[i, :data.lengths[i], 0])[::-1]
    k = data.lengths[i] // 16 + 1
    assert pred.clip_probs[i, 1] == pytest.approx(s[:k].mean(), abs=1e-5)


def test_ragged_batches_of_uniform_clips_equal_the_dense_path(tmp_path: Path) -> None:
    from tests.cache_factory import write_class_cache
    write_class_cache(tmp_path / "c.zarr", make_config(classes=("a", "b", "c")), 24)
    data = load_cache(tmp_path / "c.zarr")
    assert data.clips.uniform_steps() == 10 and not data.layout.grid
    cfg = resolve_config(TrainConfig(batch_size=5, progress=False), data)
    assert cfg.objective == "step"
    losses = []
    for dense in (True, False):
        torch.manual_seed(0)
        model = build_model(cfg, data)
        model.standardize.fit(data.clips)
        with torch.no_grad():
            inputs = model.head_inputs(data.clips) if dense else PaddedBatches(model, data.clips)
        opt, g = make_optimizer(model, cfg), torch.Generator().manual_seed(0)
        losses.append([train_epoch(model, inputs, opt, cfg, g) for _ in range(2)])
        dense_pred = predict(model, data.clips.dense())
        ragged_pred = predict(model, data.clips)
        assert np.allclose(dense_pred.step_probs, ragged_pred.step_probs, atol=1e-6)
    assert losses[0] == losses[1]


def test_objective_resolution() -> None:
    assert TrainConfig().resolved_objective(("normal", "crash")) == "mil"
    assert TrainConfig().resolved_objective(("a", "b", "c")) == "step"
    assert TrainConfig().resolved_objective(("normal", "violent"), "xd-detection") == "mil"
    assert TrainConfig(objective="step").resolved_objective(("normal", "crash")) == "step"
    assert TrainConfig(objective="mil", normal_class="b").resolved_objective(("a", "b")) == "mil"
    with pytest.raises(InvalidInput, match="needs two classes"):
        TrainConfig(objective="mil").resolved_objective(("normal", "a", "b"))
    with pytest.raises(InvalidInput, match="objective"):
        TrainConfig(objective="topk")
    assert TrainConfig.from_json({}).trained_objective == "step"   # a run from before objectives


def test_run_config_records_a_grid_layout() -> None:
    ident = {"steps": 0, "step_seconds": 0.5, "frames_per_step": 2}
    cfg = RunConfig("c", ident, ("normal", "x"), 200, 4, 3, ("fused",), 10, TrainConfig())
    assert cfg.layout == StepLayout(step_seconds=0.5, frames_per_step=2)
    back = RunConfig.from_json({**cfg.to_json(), "cache_identity": {}})   # without the cache identity
    assert back.layout == cfg.layout
    fixed = RunConfig("c", {"steps": 10}, ("a",), 10, 4, 3, ("fused",), 10, TrainConfig())
    assert fixed.layout == StepLayout(steps=10) and "step_seconds" not in fixed.to_json()


def test_official_ground_truth_length() -> None:
    assert [official_frame_count(n) for n in (97, 96, 100, 17, 16, 10)] == [96, 80, 96, 16, 16, 10]
    assert official_frame_count(100, "all") == 100
    ann = {"a_label_B1-0-0": ((0, 40),)}
    v = VideoScores("a_label_B1-0-0", np.array([0.9, 0.1, 0.1, 0.1, 0.1, 0.1, 0.1]), 100 / 24, True)
    grid = StepLayout(step_seconds=16 / 24)
    gt, sc, info = frame_arrays([v], ann, fps=24, layout=grid)
    assert len(gt[v.name]) == 96 and info["gt_frames"] == "official"
    assert np.array_equal(sc[v.name], np.repeat(v.step_scores, 16)[:96])   # the official expansion
    gt_all, sc_all, _ = frame_arrays([v], ann, fps=24, gt_frames="all", layout=grid)
    assert len(gt_all[v.name]) == 100 and len(sc_all[v.name]) == 100


def test_oracle_ap_is_one_on_aligned_steps_and_lower_for_coarse_steps() -> None:
    # Three videos of 96 frames at 24 fps, violence on whole 16-frame snippets.
    ann = {"a_label_B1-0-0": ((16, 48),), "b_label_B1-0-0": ((64, 80),)}
    names = ["a_label_B1-0-0", "b_label_B1-0-0", "c_label_A"]
    dur = 97 / 24  # 97 frames: the official length is 96

    def ceiling(layout: StepLayout, steps: int) -> float:
        videos = [VideoScores(n, np.zeros(steps), dur, n in ann) for n in names]
        oracle: dict[str, np.ndarray] = {}
        gt, _, _ = frame_arrays(videos, ann, fps=24, layout=layout, oracle=oracle)
        return oracle_ap(gt, oracle)["ap_frame_oracle"]

    snippets = ceiling(StepLayout(step_seconds=16 / 24), 7)
    assert snippets == pytest.approx(1.0)
    coarse = ceiling(StepLayout(steps=3), 3)      # 3 fixed steps per video straddle the segments
    assert coarse < 0.9 < snippets
    # the oracle's two forms and the model's AP come from the same arrays
    videos = [VideoScores(n, np.linspace(0, 1, 7), dur, n in ann) for n in names]
    oracle = {}
    gt, sc, _ = frame_arrays(videos, ann, fps=24, layout=StepLayout(step_seconds=16 / 24), oracle=oracle)
    both = oracle_ap(gt, oracle)
    assert both["ap_frame_oracle_average_precision"] == pytest.approx(1.0)
    assert frame_level_ap(gt, sc)["ap_frame_pr_auc"] < 1.0


def test_a_fixed_step_cache_longer_than_the_cap_is_cut_and_says_so(tmp_path: Path,
                                                                     caplog: pytest.LogCaptureFixture) -> None:
    """A 10-step cache under ``--max-train-steps 4`` trains on 4 sampled steps, with a
    warning naming the option, and is still evaluated at its 10 steps."""
    from temporal.train import train
    from tests.cache_factory import write_class_cache

    write_class_cache(tmp_path / "c.zarr", make_config(classes=("a", "b", "c")), 24)
    with caplog.at_level("WARNING", logger="temporal.train"):
        run = train(tmp_path / "c.zarr", tmp_path / "run", TrainConfig(epochs=1, max_train_steps=4, progress=False))
    assert any("more than --max-train-steps 4" in r.getMessage() for r in caplog.records)
    assert run.metrics["n_test"] > 0
