"""A run's whole network: feature standardisation, the stream(s) of the chosen modality
and fusion, and one head per stream.

Early fusion (and single-modality runs) has one stream and one head. Late fusion has a
``video`` and an ``audio`` head, each trained on its own stream, and averages their class
probabilities over the modalities a clip actually has: a clip without audio gets the
video head's answer alone, never a vote from a head that read zeros. Per step, the
average runs over the streams present at that step.

A MIL run (``objective="mil"``) is trained on, and so predicts, the clip score of the
multiple-instance objective: its clip probability of the anomalous class is the mean of
the top ``k = T_valid // 16 + 1`` step anomaly scores ``1 - p_t(normal)`` (see
``temporal/losses.py``), so ``evaluate`` and ``predict`` report what was trained.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from .data import Clips, HeadInputs, RaggedClips, stream_dim, stream_inputs, streams_for
from .heads import HeadOutput, count_parameters, create_head
from .heads.base import LOG_ZERO
from .losses import step_anomaly_scores, topk_clip_score


class FeatureStandardizer(nn.Module):
    """Per-dimension standardisation of each backbone's features, fitted on the training
    clips' valid steps (the two backbones' features live on unrelated scales). Absent
    steps stay exactly zero. Stored as buffers, so it travels with the checkpoint: what
    ``evaluate``, ``predict`` and ``watch`` apply is what training fitted.

    A dimension's std is floored at ``std_floor`` times the stream's RMS std (see
    :meth:`fit`): real backbones have many near-constant dimensions (YAMNet on ESC-10:
    456 of 1,024 with std below 1e-3, against an RMS std of 0.15), and dividing by their
    tiny std turns rounding noise, or a value a test clip holds and no training clip did,
    into z-scores in the hundreds."""

    def __init__(self, video_dim: int, audio_dim: int) -> None:
        super().__init__()
        for name, dim in (("video", video_dim), ("audio", audio_dim)):
            self.register_buffer(f"{name}_mean", torch.zeros(dim))
            self.register_buffer(f"{name}_std", torch.ones(dim))

    @torch.no_grad()
    def fit(self, clips: Clips | RaggedClips, std_floor: float = 0.0) -> None:
        """Fit on the valid steps of ``clips`` (dense or ragged: the same steps in the same
        order). ``std_floor`` > 0 raises every dimension's std to at least that fraction of
        the stream's RMS std (the square root of its mean variance), so that a near-constant
        dimension is scaled like the stream, not blown up; a constant one keeps std 1 when
        the floor is 0 (the only guard before floors existed)."""
        for name in ("video", "audio"):
            x, m = getattr(clips, name), getattr(clips, f"{name}_mask")
            valid = x[m].float()
            if len(valid) < 2:
                continue  # stream absent from every training clip: nothing to learn
            std = valid.std(0)
            floor = std_floor * float(std.square().mean().sqrt())
            std = std.clamp_min(floor) if floor > 1e-6 else torch.where(std > 1e-6, std, torch.ones_like(std))
            getattr(self, f"{name}_mean").copy_(valid.mean(0))
            getattr(self, f"{name}_std").copy_(std)

    def forward(self, clips: Clips) -> Clips:
        # Absent steps become exact zeros by selection, not by multiplying with the mask:
        # 0 x NaN is NaN, and an absent stream's storage is not data.
        v = torch.where(clips.video_mask.unsqueeze(-1), (clips.video - self.video_mean) / self.video_std, 0.0)
        a = torch.where(clips.audio_mask.unsqueeze(-1), (clips.audio - self.audio_mean) / self.audio_std, 0.0)
        return Clips(v, a, clips.video_mask, clips.audio_mask, clips.label)


@dataclass(frozen=True)
class ModelOutput:
    clip_logits: Tensor                              # [B, C]; log-probabilities for late fusion
    step_logits: Tensor                              # [B, T, C]
    step_mask: Tensor                                # [B, T]
    streams: dict[str, tuple[HeadOutput, Tensor]]    # per stream: head output and its step mask


class AnomalyModel(nn.Module):
    def __init__(self, head: str, modality: str, fusion: str, video_dim: int, audio_dim: int, num_classes: int,
                 steps: int, head_options: dict | None = None, objective: str = "step",
                 normal_index: int | None = None) -> None:
        super().__init__()
        if objective == "mil" and (normal_index is None or num_classes != 2):
            raise ValueError("a MIL model needs two classes and the index of the normal one")
        self.objective = objective
        self.normal_index = normal_index
        self.streams = streams_for(modality, fusion)
        self.standardize = FeatureStandardizer(video_dim, audio_dim)
        self.heads = nn.ModuleDict({
            s: create_head(head, stream_dim(s, video_dim, audio_dim), num_classes, steps, head_options)
            for s in self.streams
        })

    def parameter_count(self) -> int:
        return count_parameters(self)

    def head_inputs(self, clips: Clips | RaggedClips) -> HeadInputs:
        """Standardise the clips and build each stream's input. Training calls this once
        per run (see :class:`HeadInputs`); evaluation goes through :meth:`forward`.
        Ragged clips are padded to their longest first."""
        if isinstance(clips, RaggedClips):
            clips = clips.dense()
        clips = self.standardize(clips)
        return HeadInputs({s: stream_inputs(clips, s) for s in self.streams}, clips.video_mask, clips.audio_mask,
                          clips.label, int(clips.video.shape[-1]))

    def forward(self, clips: Clips) -> ModelOutput:
        return self.forward_inputs(self.head_inputs(clips))

    def forward_inputs(self, inputs: HeadInputs) -> ModelOutput:
        outs = {}
        for s, (x, m) in inputs.streams.items():
            outs[s] = (self.heads[s](x, m), m)
        if len(outs) == 1:
            (out, m), = outs.values()
            result = ModelOutput(out.clip_logits, out.step_logits, m, outs)
        else:
            result = _late_fusion(outs)
        return mil_clip_output(result, self.normal_index) if self.objective == "mil" else result


class PaddedBatches:
    """Training batches of ragged clips: each padded to its own longest clip, then
    standardised and fused (``model.head_inputs``), with the interface of
    :class:`~temporal.data.BatchGatherer` (``take``) and of :class:`HeadInputs` (``len``)."""

    def __init__(self, model: "AnomalyModel", clips: RaggedClips) -> None:
        self.model, self.clips = model, clips

    @torch.no_grad()
    def take(self, idx: Tensor) -> HeadInputs:
        return self.model.head_inputs(self.clips.pad(idx))

    def __len__(self) -> int:
        return len(self.clips)


def mil_clip_output(out: ModelOutput, normal_index: int) -> ModelOutput:
    """``out`` with clip logits replaced by the log of the MIL clip distribution: the
    anomalous class gets the top-k mean of the step anomaly scores (see module doc)."""
    score = topk_clip_score(step_anomaly_scores(out.step_logits, normal_index), out.step_mask)
    score = score.clamp(1e-6, 1 - 1e-6)
    cols = [1.0 - score, score] if normal_index == 0 else [score, 1.0 - score]
    probs = torch.stack(cols, dim=-1)
    return ModelOutput(torch.log(probs), out.step_logits, out.step_mask, out.streams)


def _late_fusion(outs: dict[str, tuple[HeadOutput, Tensor]]) -> ModelOutput:
    """Average class probabilities over the streams present (per clip, and per step)."""
    clip_p, clip_w, step_p, step_w = 0.0, 0.0, 0.0, 0.0
    for out, m in outs.values():
        present = m.any(1, keepdim=True).to(out.clip_logits.dtype)          # [B, 1]
        clip_p = clip_p + torch.softmax(out.clip_logits, -1) * present
        clip_w = clip_w + present
        sm = m.unsqueeze(-1).to(out.step_logits.dtype)                       # [B, T, 1]
        step_p = step_p + torch.softmax(out.step_logits, -1) * sm
        step_w = step_w + sm
    clip = torch.log(clip_p / clip_w.clamp_min(1.0)).clamp_min(LOG_ZERO)
    step_mask = step_w[..., 0] > 0
    step = torch.log(step_p / step_w.clamp_min(1.0)).clamp_min(LOG_ZERO) * step_mask.unsqueeze(-1)
    return ModelOutput(clip, step, step_mask, outs)
