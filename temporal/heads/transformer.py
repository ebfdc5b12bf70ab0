"""The paper's Transformer comparison head: a small pre-norm Transformer encoder over
the steps.

Masked steps are excluded as attention keys (``src_key_padding_mask``), so they change no
valid output. Positions are sinusoidal and follow the step index in the clip (not the
index among valid steps), so a gap stays a gap in time. Clip logits come from the masked
mean of the encoded steps through the same classifier as the per-step logits; training
uses the clip logits.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from .base import HeadOutput, attention_padding, masked_mean


@dataclass(frozen=True)
class TransformerConfig:
    d_model: int = 64
    heads: int = 4
    num_layers: int = 2
    feedforward: int = 128
    dropout: float = 0.1


def sinusoidal_positions(steps: int, dim: int) -> Tensor:
    """Vaswani et al.'s fixed encoding, ``[steps, dim]``: works for any T without training."""
    pos = torch.arange(steps, dtype=torch.float32).unsqueeze(1)
    freq = torch.exp(torch.arange(0, dim, 2, dtype=torch.float32) * (-math.log(10000.0) / dim))
    pe = torch.zeros(steps, dim)
    pe[:, 0::2] = torch.sin(pos * freq)
    pe[:, 1::2] = torch.cos(pos * freq[: dim // 2])
    return pe


class TransformerHead(nn.Module):
    def __init__(self, in_dim: int, num_classes: int, steps: int, config: TransformerConfig = TransformerConfig()) -> None:
        super().__init__()
        self.config = config
        self.project = nn.Linear(in_dim, config.d_model)
        layer = nn.TransformerEncoderLayer(
            config.d_model, config.heads, config.feedforward, config.dropout, batch_first=True, norm_first=True
        )
        self.encoder = nn.TransformerEncoder(
            layer, config.num_layers, norm=nn.LayerNorm(config.d_model), enable_nested_tensor=False
        )
        self.classifier = nn.Linear(config.d_model, num_classes)
        self.register_buffer("positions", sinusoidal_positions(steps, config.d_model), persistent=False)

    def forward(self, features: Tensor, mask: Tensor) -> HeadOutput:
        t = features.shape[1]
        pos = self.positions if t <= self.positions.shape[0] else sinusoidal_positions(t, self.config.d_model)
        h = self.project(features) + pos[:t].to(features.dtype)
        h = self.encoder(h, src_key_padding_mask=attention_padding(mask))
        h = h * mask.unsqueeze(-1).to(h.dtype)
        step_logits = self.classifier(h) * mask.unsqueeze(-1).to(h.dtype)
        return HeadOutput(step_logits, self.classifier(masked_mean(h, mask)))
