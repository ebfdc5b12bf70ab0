"""Temporal heads: the shared interface, masks, the MTCN's structure and loss, late
fusion over present modalities."""

from __future__ import annotations

import pytest
import torch

from temporal.data import Clips, stream_dim
from temporal.heads import HEADS, PAPER_HEADS, count_parameters, create_head, layers_for_steps, receptive_field
from temporal.losses import LossConfig, head_loss, smoothing_loss
from temporal.metrics import anomaly_score
from temporal.model import AnomalyModel


pytestmark = pytest.mark.usefixtures("one_thread")


def _batch(b: int = 5, t: int = 10, d: int = 12, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(b, t, d, generator=g)
    mask = torch.ones(b, t, dtype=torch.bool)
    mask[1, 7:] = False          # padded tail
    mask[2, 3] = False           # a gap in the middle (a stream missing for one step)
    mask[3, :4] = False          # missing head
    mask[4] = False              # no step at all
    return x, mask


@pytest.mark.parametrize("name", list(HEADS))
def test_shapes_and_padded_steps_change_nothing(name: str) -> None:
    torch.manual_seed(0)
    head = create_head(name, 12, 4, 10).eval()
    x, mask = _batch()
    out = head(x, mask)
    assert out.step_logits.shape == (5, 10, 4) and out.clip_logits.shape == (5, 4)
    assert torch.isfinite(out.step_logits).all() and torch.isfinite(out.clip_logits).all()
    noisy = x.clone()
    noisy[~mask] = 1e3 * torch.randn_like(noisy[~mask])  # garbage where there is no data
    out2 = head(noisy, mask)
    torch.testing.assert_close(out2.clip_logits, out.clip_logits)
    torch.testing.assert_close(out2.step_logits, out.step_logits)
    assert (out.step_logits[~mask] == 0).all()


@pytest.mark.parametrize("name", ["gru", "bilstm"])
def test_recurrent_head_skips_a_gap_as_if_it_were_not_there(name: str) -> None:
    """Packed sequences: a clip with a masked step in the middle gets the same clip logits
    as the clip with that step cut out."""
    torch.manual_seed(0)
    head = create_head(name, 12, 4, 10).eval()
    x = torch.randn(1, 10, 12)
    mask = torch.ones(1, 10, dtype=torch.bool)
    mask[0, 4] = False
    cut = torch.cat([x[:, :4], x[:, 5:]], dim=1)
    a = head(x, mask).clip_logits
    b = head(cut, torch.ones(1, 9, dtype=torch.bool)).clip_logits
    torch.testing.assert_close(a, b)


def test_mtcn_depth_follows_steps() -> None:
    assert [layers_for_steps(t) for t in (5, 10, 15, 16, 17)] == [3, 4, 4, 4, 5]
    for t in (5, 10, 15, 30):
        layers = layers_for_steps(t)
        half = (receptive_field(layers) - 1) // 2
        assert half >= t - 1                      # every step sees every other step
        assert 2 ** (layers - 1) < t              # the top dilation still reaches real steps
    head = create_head("mtcn", 12, 4, 10)
    assert head.num_layers == 4 and [l.conv_dilated.dilation for l in head.stages[0].layers] == [1, 2, 4, 8]


def test_mtcn_is_light_on_the_papers_dims() -> None:
    dim = stream_dim("fused", 640, 768)
    head = create_head("mtcn", dim, 10, 10)
    assert count_parameters(head) < 2_000_000
    model = AnomalyModel("mtcn", "fused", "early", 640, 768, 10, 10)
    assert model.parameter_count() < 2_000_000


def test_mtcn_clip_prediction_is_mean_of_last_stage_probabilities() -> None:
    torch.manual_seed(0)
    head = create_head("mtcn", 12, 4, 10).eval()
    x, mask = _batch()
    out = head(x, mask)
    assert len(out.stage_logits) == head.config.stages
    p = torch.softmax(out.step_logits, -1)
    for i in range(4):
        want = p[i][mask[i]].mean(0)
        torch.testing.assert_close(torch.softmax(out.clip_logits[i], -1), want)


def test_smoothing_loss_is_zero_for_constant_predictions_and_positive_for_jumps() -> None:
    mask = torch.ones(2, 10, dtype=torch.bool)
    constant = torch.randn(2, 1, 4).expand(2, 10, 4).contiguous()
    assert smoothing_loss(constant, mask).item() == 0.0
    jumpy = constant.clone()
    jumpy[:, 5] += torch.tensor([9.0, 0.0, 0.0, 0.0])
    assert smoothing_loss(jumpy, mask).item() > 0
    # a jump across a masked step is not a jump between consecutive valid steps
    mask[:, 5] = False
    assert smoothing_loss(jumpy, mask).item() == 0.0
    # truncated: at most tau^2 per class and step pair
    huge = constant.clone()
    huge[:, 5:] += torch.tensor([1e4, 0.0, 0.0, 0.0])
    assert smoothing_loss(huge, torch.ones(2, 10, dtype=torch.bool), tau=4.0).item() <= 16.0


def test_head_loss_ignores_clips_without_data() -> None:
    torch.manual_seed(0)
    labels = torch.tensor([0, 1, 2, 3, 0])
    x, mask = _batch()
    for name in ("mtcn", "gru"):
        out = create_head(name, 12, 4, 10)(x, mask)
        loss = head_loss(out, labels, mask, LossConfig())
        assert torch.isfinite(loss)
        nothing = head_loss(out, labels, torch.zeros_like(mask), LossConfig())
        assert nothing.item() == 0.0


def _clips(b: int = 4, t: int = 10, dv: int = 8, da: int = 6) -> Clips:
    g = torch.Generator().manual_seed(1)
    vm = torch.ones(b, t, dtype=torch.bool)
    am = torch.ones(b, t, dtype=torch.bool)
    am[0] = False            # clip 0 has no audio at all
    am[1, 5:] = False        # clip 1 loses its audio half-way
    vm[2] = False            # clip 2 has no video
    v = torch.randn(b, t, dv, generator=g) * vm.unsqueeze(-1)
    a = torch.randn(b, t, da, generator=g) * am.unsqueeze(-1)
    return Clips(v, a, vm, am, torch.tensor([0, 1, 2, 0]))


@pytest.mark.parametrize("head", ["mtcn", "gru"])
def test_late_fusion_averages_only_present_modalities(head: str) -> None:
    torch.manual_seed(0)
    model = AnomalyModel(head, "fused", "late", 8, 6, 3, 10).eval()
    clips = _clips()
    out = model(clips)
    pv = torch.softmax(out.streams["video"][0].clip_logits, -1)
    pa = torch.softmax(out.streams["audio"][0].clip_logits, -1)
    p = torch.softmax(out.clip_logits, -1)
    torch.testing.assert_close(p[0], pv[0])                 # no audio: the video head alone
    torch.testing.assert_close(p[2], pa[2])                 # no video: the audio head alone
    torch.testing.assert_close(p[3], (pv[3] + pa[3]) / 2)   # both: the mean
    # per step: after the audio stops, clip 1's steps are the video head's alone
    sv = torch.softmax(out.streams["video"][0].step_logits, -1)
    torch.testing.assert_close(torch.softmax(out.step_logits[1, 7], -1), sv[1, 7])


def test_early_fusion_marks_absent_streams_and_never_reads_their_zeros_as_data() -> None:
    torch.manual_seed(0)
    model = AnomalyModel("mtcn", "fused", "early", 8, 6, 3, 10).eval()
    clips = _clips()
    # Same features, but the absent audio of clip 0 now holds garbage: nothing may change.
    a = clips.audio.clone()
    a[0] = 1e3
    garbled = Clips(clips.video, a, clips.video_mask, clips.audio_mask, clips.label)
    torch.testing.assert_close(model(garbled).clip_logits, model(clips).clip_logits)
    # A present-but-silent step (zeros with mask True) is not the same input as an absent one.
    silent = Clips(clips.video, clips.audio, clips.video_mask, torch.ones_like(clips.audio_mask), clips.label)
    assert not torch.allclose(model(silent).clip_logits[0], model(clips).clip_logits[0])


def test_anomaly_score_is_one_minus_p_normal() -> None:
    probs = torch.tensor([[0.7, 0.2, 0.1], [0.1, 0.1, 0.8]]).numpy()
    s = anomaly_score(probs, ["crash", "normal", "fight"])
    assert s.tolist() == pytest.approx([0.8, 0.9])
    assert anomaly_score(probs, ["a", "b", "c"]) is None


def test_unknown_head_or_option_says_what_exists() -> None:
    with pytest.raises(ValueError, match="choose one of"):
        create_head("tcn", 4, 2, 10)
    with pytest.raises(ValueError, match="its options are"):
        create_head("gru", 4, 2, 10, {"stages": 3})
    assert set(PAPER_HEADS) <= set(HEADS)


@pytest.mark.parametrize("dilation", [1, 2, 4, 8, 16])
def test_temporal_conv_is_a_dilated_conv1d(dilation: int) -> None:
    """MTCN's TemporalConv computes exactly nn.Conv1d(kernel 3, padding=d, dilation=d), also where
    the dilation reaches past the clip (16 > T)."""
    from temporal.heads.mtcn import TemporalConv

    torch.manual_seed(0)
    tc = TemporalConv(6, 5, dilation)
    w0, w1, w2 = tc.taps.weight.chunk(3, dim=0)               # each [out, in]
    weight = torch.stack([w0, w1, w2], dim=-1)                # [out, in, 3]
    x = torch.randn(2, 10, 6)
    want = torch.nn.functional.conv1d(x.transpose(1, 2), weight, tc.bias, padding=dilation, dilation=dilation)
    torch.testing.assert_close(tc(x.transpose(0, 1)).transpose(0, 1), want.transpose(1, 2))  # time-major in


@pytest.mark.parametrize("padded", [False, True])
def test_mtcn_attention_is_the_multihead_attention_module(padded: bool) -> None:
    """The block calls scaled_dot_product_attention on nn.MultiheadAttention's weights; in
    eval it must give what the module itself gives, masked keys included."""
    from temporal.heads.mtcn import AttentionBlock

    torch.manual_seed(0)
    block = AttentionBlock(12, 16, 4, 1, 0.1).eval()
    h = torch.randn(3, 10, 16)
    valid = torch.ones(3, 10, dtype=torch.bool)
    if padded:
        valid[1, 6:] = False
        valid[2, 0] = False
    want, _ = block.attention(h, h, h, key_padding_mask=~valid if padded else None, need_weights=False)
    got = block._self_attention(h, valid if padded else None)
    torch.testing.assert_close(got, want)


def test_mtcn_gives_a_clip_the_same_answer_alone_or_beside_a_padded_clip() -> None:
    """A batch whose steps are all valid skips the mask products; a batch with one padded
    clip does not. Both paths must give the full clip the same outputs."""
    torch.manual_seed(0)
    head = create_head("mtcn", 12, 4, 10).eval()
    x, mask = _batch()
    alone = head(x[:1], mask[:1])             # clip 0 is complete: the unmasked path
    beside = head(x[:2], mask[:2])            # clip 1 is padded: the masked path
    torch.testing.assert_close(beside.step_logits[:1], alone.step_logits)
    torch.testing.assert_close(beside.clip_logits[:1], alone.clip_logits)


def test_mtcn_loss_over_stacked_stages_is_the_sum_of_per_stage_losses() -> None:
    from temporal.losses import step_cross_entropy

    torch.manual_seed(0)
    x, mask = _batch()
    labels = torch.tensor([0, 1, 2, 3, 0])
    weight = torch.tensor([1.0, 2.0, 0.5, 1.5])
    out = create_head("mtcn", 12, 4, 10)(x, mask)
    cfg = LossConfig()
    want = sum(step_cross_entropy(s, labels, mask, weight) + cfg.smoothing_weight * smoothing_loss(s, mask, cfg.smoothing_tau)
               for s in out.stage_logits)
    torch.testing.assert_close(head_loss(out, labels, mask, cfg, weight), want)


@pytest.mark.parametrize("options", [{}, {"attention_kernel": 3}])
def test_every_head_runs_under_bf16_autocast(options: dict) -> None:
    """predict and the efficiency table run the model under autocast; MTCN's in-place
    products must follow autocast's dtype (CPU bf16 here; CUDA fp16/bf16 take the same path)."""
    for name in HEADS:
        if options and name != "mtcn":
            continue
        torch.manual_seed(0)
        head = create_head(name, 12, 4, 10, options).eval()
        x, mask = _batch()
        want = head(x, mask)
        with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
            got = head(x, mask)
        assert torch.isfinite(got.clip_logits.float()).all(), name
        p_want, p_got = torch.softmax(want.clip_logits, -1), torch.softmax(got.clip_logits.float(), -1)
        assert (p_want - p_got).abs().max() < 0.05, name   # bf16 keeps about 3 digits


@pytest.mark.parametrize("kernel", [1, 3])
def test_mtcn_padded_steps_change_nothing_with_either_attention_kernel_in_training(kernel: int) -> None:
    x, mask = _batch()
    noisy = x.clone()
    noisy[~mask] = 1e3 * torch.randn_like(noisy[~mask])
    outs = []
    for features in (x, noisy):
        torch.manual_seed(0)
        head = create_head("mtcn", 12, 4, 10, {"attention_kernel": kernel}).train()
        torch.manual_seed(1)  # the same dropout draws for both inputs
        outs.append(head(features, mask))
    torch.testing.assert_close(outs[1].clip_logits, outs[0].clip_logits)
    torch.testing.assert_close(outs[1].step_logits, outs[0].step_logits)
