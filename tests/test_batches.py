"""Training batches: the per-run head inputs, the reusable gather, and the two
augmentations (feature dropout, modality dropout) on them."""

from __future__ import annotations

import pytest
import torch

from temporal.data import BatchGatherer, Clips, drop_features, drop_modalities
from temporal.model import AnomalyModel

pytestmark = pytest.mark.usefixtures("one_thread")

DV, DA = 8, 6


def _clips(n: int = 12, t: int = 10) -> Clips:
    g = torch.Generator().manual_seed(0)
    vm = torch.ones(n, t, dtype=torch.bool)
    am = torch.ones(n, t, dtype=torch.bool)
    am[0] = False            # no audio track
    vm[1] = False            # no video
    am[2, 6:] = False        # audio stops
    v = torch.randn(n, t, DV, generator=g) * vm.unsqueeze(-1)
    a = torch.randn(n, t, DA, generator=g) * am.unsqueeze(-1)
    return Clips(v, a, vm, am, torch.arange(n) % 3)


def _inputs(fusion: str = "early", modality: str = "fused"):
    model = AnomalyModel("pool", modality, fusion, DV, DA, 3, 10)
    model.standardize.fit(_clips())
    return model, model.head_inputs(_clips())


def test_head_inputs_are_what_the_model_reads_from_clips() -> None:
    model, inputs = _inputs()
    model.eval()
    torch.testing.assert_close(model.forward_inputs(inputs).clip_logits, model(_clips()).clip_logits)


def test_gathered_batches_equal_take_and_reuse_one_buffer() -> None:
    _, inputs = _inputs()
    gather = BatchGatherer(inputs, 4)
    first = gather.take(torch.tensor([3, 0, 7, 5]))
    ptr = first.streams["fused"][0].data_ptr()
    want = inputs.take(torch.tensor([3, 0, 7, 5]))
    for s in inputs.streams:
        torch.testing.assert_close(first.streams[s][0], want.streams[s][0])
        assert torch.equal(first.streams[s][1], want.streams[s][1])
    last = gather.take(torch.tensor([9, 2]))                    # a short last batch
    assert last.streams["fused"][0].data_ptr() == ptr and len(last) == 2
    torch.testing.assert_close(last.streams["fused"][0], inputs.take(torch.tensor([9, 2])).streams["fused"][0])
    assert torch.equal(last.label, inputs.label[torch.tensor([9, 2])])


def test_feature_dropout_drops_whole_dimensions_and_keeps_presence_channels() -> None:
    _, inputs = _inputs()
    batch = inputs.take(torch.arange(12))
    x0 = batch.streams["fused"][0].clone()
    drop_features(batch, 0.5, torch.Generator().manual_seed(0))
    x = batch.streams["fused"][0]
    features = DV + DA
    torch.testing.assert_close(x[..., features:], x0[..., features:])          # presence channels untouched
    scale = x[..., :features] / x0[..., :features].where(x0[..., :features] != 0, torch.ones(()))
    dropped = (x[..., :features] == 0) & (x0[..., :features] != 0)
    # a dimension is dropped at every step of a clip or at none
    present = x0[..., :features] != 0
    per_dim = (dropped | ~present).all(1) | (~dropped).all(1)
    assert per_dim.all()
    kept = ~dropped & present
    torch.testing.assert_close(scale[kept], torch.full_like(scale[kept], 2.0))   # survivors scaled by 1/(1-p)
    assert 0.3 < dropped.any(1).float().mean() < 0.7
    again = inputs.take(torch.arange(12))
    drop_features(again, 0.5, torch.Generator().manual_seed(0))
    assert torch.equal(again.streams["fused"][0], x)                            # seeded


@pytest.mark.parametrize("fusion", ["early", "late"])
def test_modality_dropout_removes_a_whole_stream_as_if_absent(fusion: str) -> None:
    _, inputs = _inputs(fusion)
    out = drop_modalities(inputs, 1.0, torch.Generator().manual_seed(0))
    lost_v = inputs.video_mask.any(1) & ~out.video_mask.any(1)
    lost_a = inputs.audio_mask.any(1) & ~out.audio_mask.any(1)
    both = inputs.video_mask.any(1) & inputs.audio_mask.any(1)
    assert (lost_v ^ lost_a)[both].all()                       # p=1: a clip with both loses exactly one
    assert not (lost_v | lost_a)[~both].any()                  # and a clip never loses its only stream
    if fusion == "early":
        x, m = out.streams["fused"]
        assert (x[lost_v][..., :DV] == 0).all() and (x[lost_v][..., DV + DA] == 0).all()
        assert (x[lost_a][..., DV:DV + DA] == 0).all() and (x[lost_a][..., DV + DA + 1] == 0).all()
        assert torch.equal(m, out.video_mask | out.audio_mask)
        kept = ~lost_v & ~lost_a
        assert not kept.any() or torch.equal(x[kept], inputs.streams["fused"][0][kept])
    else:
        assert (out.streams["video"][0][lost_v] == 0).all() and not out.streams["video"][1][lost_v].any()
        assert (out.streams["audio"][0][lost_a] == 0).all() and not out.streams["audio"][1][lost_a].any()
    assert drop_modalities(inputs, 0.0, torch.Generator()) is inputs


def test_augmenting_a_batch_leaves_the_run_inputs_and_the_global_rng_alone() -> None:
    """Augmentations act on gathered copies and draw only from the run's generator (whose
    state a resume restores)."""
    _, inputs = _inputs()
    before = {s: x.clone() for s, (x, _) in inputs.streams.items()}
    rng = torch.get_rng_state()
    g = torch.Generator().manual_seed(0)
    batch = BatchGatherer(inputs, 6).take(torch.arange(6))
    drop_modalities(drop_features(batch, 0.5, g), 0.5, g)
    drop_modalities(drop_features(inputs.take(torch.arange(12)), 0.5, g), 0.5, g)
    for s, (x, _) in inputs.streams.items():
        assert torch.equal(x, before[s])
    assert torch.equal(torch.get_rng_state(), rng)


def test_absent_steps_holding_nan_change_no_output_of_any_head() -> None:
    """The standardiser selects zeros for absent steps (0 x NaN would be NaN), so whatever
    an absent stream's storage holds never reaches a head."""
    from temporal.heads import HEADS

    clips = _clips()
    v, a = clips.video.clone(), clips.audio.clone()
    v[~clips.video_mask] = float("nan")
    a[~clips.audio_mask] = float("inf")
    garbled = Clips(v, a, clips.video_mask, clips.audio_mask, clips.label)
    for head in HEADS:
        for fusion in ("early", "late"):
            torch.manual_seed(0)
            model = AnomalyModel(head, "fused", fusion, DV, DA, 3, 10)
            model.standardize.fit(clips)
            model.eval()
            want, got = model(clips), model(garbled)
            assert torch.isfinite(got.clip_logits).all(), (head, fusion)
            torch.testing.assert_close(got.clip_logits, want.clip_logits)
            torch.testing.assert_close(got.step_logits, want.step_logits)
