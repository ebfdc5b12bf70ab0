"""What every temporal head shares: the output type and the masked reductions.

Every head maps step features ``[B, T, D]`` and a step mask ``[B, T]`` (True = the step
holds real data) to per-step logits ``[B, T, C]`` and clip logits ``[B, C]``. The mask is
part of the contract, not a hint: a step whose mask is False must not change any output,
whatever its features hold, because absent steps are stored as zeros that are not data.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

# Stands in for log(0) where a step is masked out: exp() of it is exactly 0 in fp32, and,
# unlike -inf, it never turns a fully masked row into NaN.
LOG_ZERO = -1e4


@dataclass(frozen=True)
class HeadOutput:
    """A head's answer for a batch.

    ``stage_logits`` holds the per-step logits of every stage for heads trained with a
    per-step loss (MTCN: the loss is applied to every stage, as in MS-TCN); it is empty
    for heads trained on their clip logits.
    """

    step_logits: Tensor  # [B, T, C], zero where the mask is False
    clip_logits: Tensor  # [B, C]
    stage_logits: tuple[Tensor, ...] = ()


def masked_mean(x: Tensor, mask: Tensor) -> Tensor:
    """Mean of ``x`` ``[B, T, F]`` over the valid steps; zeros for a row with none."""
    m = mask.to(x.dtype).unsqueeze(-1)
    return (x * m).sum(1) / m.sum(1).clamp_min(1.0)


def mean_probability_logits(step_logits: Tensor, mask: Tensor) -> Tensor:
    """Clip logits as the log of the mean per-step class probability over valid steps.

    Averaging probabilities (not logits) keeps a confident step from outvoting the rest,
    and the result is a proper log-distribution, so softmax(clip logits) is that mean.
    """
    logp = torch.log_softmax(step_logits, dim=-1).masked_fill(~mask.unsqueeze(-1), LOG_ZERO)
    count = mask.sum(1, keepdim=True).clamp_min(1).to(logp.dtype)
    return torch.logsumexp(logp, dim=1) - torch.log(count)


def attention_padding(mask: Tensor) -> Tensor:
    """Key-padding mask for attention (True = ignore). A row without any valid step would
    make every attention weight NaN, so such rows attend to everything instead; their
    outputs are masked away by the caller anyway."""
    pad = ~mask
    return pad & ~pad.all(dim=1, keepdim=True)


def channel_dropout(x: Tensor, p: float, training: bool, channel_dim: int = 2, clip_dim: int = 0) -> Tensor:
    """``nn.Dropout1d`` over the channels of ``x`` (one Bernoulli per clip and channel, the
    same at every step) for any layout, without transposing to ``[B, C, T]`` and back (four
    fewer autograd operations per layer). The defaults are ``[B, T, C]``; MTCN's stages
    pass ``channel_dim=2, clip_dim=1`` for time-major ``[T, B, C]``."""
    if not training or p == 0:
        return x
    if p == 1:
        return x * 0.0
    shape = [1] * x.dim()
    shape[clip_dim], shape[channel_dim] = x.shape[clip_dim], x.shape[channel_dim]
    noise = torch.empty(shape, dtype=x.dtype, device=x.device).bernoulli_(1 - p).div_(1 - p)
    return x * noise
