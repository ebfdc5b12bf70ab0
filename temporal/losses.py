"""Training losses.

MTCN is trained as MS-TCN is: every stage's per-step logits get a cross-entropy against
the clip's label (each valid step carries the clip label) plus a truncated MSE that
penalises jumps of the log-probabilities between consecutive steps (lambda 0.15, tau 4 in
MS-TCN, with the previous step detached so that the smoothing pulls each step towards its
predecessor and not the other way round). Heads without per-stage outputs are trained
with cross-entropy on their clip logits.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from .heads import HeadOutput

IGNORE = -100


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
