"""Training losses.

MTCN is trained as MS-TCN is: every stage's per-step logits get a cross-entropy against
the clip's label (each valid step carries the clip label) plus a truncated MSE that
penalises jumps of the log-probabilities between consecutive steps (lambda 0.15, tau 4 in
MS-TCN, with the previous step detached so that the smoothing pulls each step towards its
predecessor and not the other way round). Heads without per-stage outputs are trained
with cross-entropy on their clip logits.

The multiple-instance objective (``objective="mil"``, weakly supervised detection as
XDVioDet, MACIL-SD, UR-DMU train it): each step's anomaly score is
``s_t = 1 - p_t(normal)``; a clip's score is the mean of its ``k = T_valid // 16 + 1``
highest valid step scores (:func:`topk_clip_score`), and the loss is the binary
cross-entropy of that score against the video label, on every MTCN stage (heads without
stages: on their step logits), plus MS-TCN's smoothing on the stages, plus, as options,
Sultani et al.'s (CVPR 2018) sparsity (mean score of the anomalous clips' valid steps)
and smoothness (mean squared difference of consecutive valid scores of anomalous clips)
terms. Both are means per step, so their weights do not scale with the clip length
(Sultani's sums over 32 segments with weight 8e-5 are a mean with weight 2.56e-3).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from .heads import HeadOutput

IGNORE = -100


MIL_K_DIVISOR = 16  # k = T_valid // 16 + 1 (XDVioDet, MACIL-SD, UR-DMU)


@dataclass(frozen=True)
class MilConfig:
    """What the MIL objective needs beyond :class:`LossConfig`."""

    normal_index: int
    sparsity: float = 0.0
    smoothness: float = 0.0


@dataclass(frozen=True)
class LossConfig:
    smoothing_weight: float = 0.15  # MS-TCN's lambda
    smoothing_tau: float = 4.0      # MS-TCN's tau: squared log-prob jumps are clamped at tau^2


def smoothing_loss(step_logits: Tensor, mask: Tensor, tau: float = 4.0) -> Tensor:
    """MS-TCN's truncated MSE over consecutive valid steps; 0 for constant predictions.
    ``step_logits`` is ``[..., B, T, C]`` (leading dims: stages, averaged like the rest)."""
    logp = F.log_softmax(step_logits, dim=-1)
    delta = logp[..., 1:, :] - logp[..., :-1, :].detach()
    sq = torch.clamp(delta**2, min=0.0, max=tau**2)
    pair = (mask[:, 1:] & mask[:, :-1]).unsqueeze(-1).to(sq.dtype)
    denom = pair.sum() * sq.shape[-1] * math.prod(sq.shape[:-3])  # x stages, if stacked
    return (sq * pair).sum() / denom.clamp_min(1.0)


def step_cross_entropy(step_logits: Tensor, labels: Tensor, mask: Tensor, weight: Tensor | None = None) -> Tensor:
    """Cross-entropy of every valid step against its clip's label (weighted mean).
    ``step_logits`` is ``[..., B, T, C]`` (leading dims: stages, averaged like the rest)."""
    if not mask.any():
        return step_logits.sum() * 0.0
    targets = labels.unsqueeze(1).expand_as(mask).masked_fill(~mask, IGNORE)
    targets = targets.expand(*step_logits.shape[:-1])
    return F.cross_entropy(step_logits.reshape(-1, step_logits.shape[-1]), targets.reshape(-1),
                           weight=weight, ignore_index=IGNORE)


def clip_cross_entropy(clip_logits: Tensor, labels: Tensor, valid: Tensor, weight: Tensor | None = None) -> Tensor:
    if not valid.any():
        return clip_logits.sum() * 0.0
    return F.cross_entropy(clip_logits[valid], labels[valid], weight=weight)


def head_loss(out: HeadOutput, labels: Tensor, mask: Tensor, config: LossConfig = LossConfig(),
              weight: Tensor | None = None) -> Tensor:
    """The loss a head is trained with (see module doc). Clips without a valid step in
    ``mask`` contribute nothing (late fusion: a stream absent from a clip)."""
    if out.stage_logits:
        # All stages at once: every stage has the same valid steps and targets, so the
        # sum of per-stage means is the number of stages times the mean over the stack
        # (one loss computation instead of one per stage; it is the per-step cost that
        # counts for heads this small).
        stages = torch.stack(out.stage_logits)
        per_stage = step_cross_entropy(stages, labels, mask, weight) + \
            config.smoothing_weight * smoothing_loss(stages, mask, config.smoothing_tau)
        return per_stage * len(out.stage_logits)
    return clip_cross_entropy(out.clip_logits, labels, mask.any(1), weight)


def mil_k(valid_steps: Tensor) -> Tensor:
    """The number of top steps a clip's MIL score averages: ``T_valid // 16 + 1``."""
    return valid_steps // MIL_K_DIVISOR + 1


def step_anomaly_scores(step_logits: Tensor, normal_index: int) -> Tensor:
    """``1 - p(normal)`` per step, ``[..., B, T]``."""
    return 1.0 - torch.softmax(step_logits, dim=-1)[..., normal_index]


def topk_clip_score(scores: Tensor, mask: Tensor) -> Tensor:
    """Mean of the ``k = T_valid // 16 + 1`` highest valid scores of each clip.
    ``scores`` is ``[..., B, T]``, ``mask`` ``[B, T]``; a clip without a valid step scores 0."""
    valid = mask.sum(1)
    k = mil_k(valid).clamp_max(mask.shape[1])                                   # [B]
    ranked = scores.masked_fill(~mask, -1.0).sort(dim=-1, descending=True).values
    take = (torch.arange(mask.shape[1], device=mask.device)[None, :] < k[:, None]) & (valid > 0)[:, None]
    return (ranked * take.to(ranked.dtype)).sum(-1) / k.to(ranked.dtype)


def mil_loss(step_logits: Tensor, labels: Tensor, mask: Tensor, mil: MilConfig,
             weight: Tensor | None = None) -> Tensor:
    """MIL binary cross-entropy of the top-k clip score against ``label != normal``, plus
    the optional sparsity and smoothness terms (see module doc). ``step_logits`` is
    ``[..., B, T, C]`` (leading dims: stages, each contributing its own mean)."""
    clip_valid = mask.any(1)
    if not clip_valid.any():
        return step_logits.sum() * 0.0
    scores = step_anomaly_scores(step_logits, mil.normal_index)                 # [..., B, T]
    clip = topk_clip_score(scores, mask).clamp(1e-6, 1 - 1e-6)                   # [..., B]
    target = (labels != mil.normal_index).to(clip.dtype).expand_as(clip)
    w = clip_valid.to(clip.dtype) if weight is None else weight[labels].to(clip.dtype) * clip_valid
    bce = F.binary_cross_entropy(clip, target, reduction="none")
    stages = math.prod(clip.shape[:-1])
    total = (bce * w).sum() / (w.sum().clamp_min(1e-12) * stages)
    anomalous = (labels != mil.normal_index) & clip_valid                        # [B]
    if (mil.sparsity or mil.smoothness) and anomalous.any():
        m = (mask & anomalous[:, None]).to(scores.dtype)
        if mil.sparsity:
            total = total + mil.sparsity * (scores * m).sum() / (m.sum() * stages).clamp_min(1.0)
        if mil.smoothness:
            pair = m[:, 1:] * m[:, :-1]
            sq = (scores[..., 1:] - scores[..., :-1]) ** 2
            total = total + mil.smoothness * (sq * pair).sum() / (pair.sum() * stages).clamp_min(1.0)
    return total


def head_mil_loss(out: HeadOutput, labels: Tensor, mask: Tensor, config: LossConfig, mil: MilConfig,
                  weight: Tensor | None = None) -> Tensor:
    """The MIL loss of one head: on every stage (times the number of stages, as
    :func:`head_loss`) plus MS-TCN's smoothing, or on the step logits of a head without
    stages."""
    if out.stage_logits:
        stages = torch.stack(out.stage_logits)
        per_stage = mil_loss(stages, labels, mask, mil, weight) + \
            config.smoothing_weight * smoothing_loss(stages, mask, config.smoothing_tau)
        return per_stage * len(out.stage_logits)
    return mil_loss(out.step_logits, labels, mask, mil, weight)
