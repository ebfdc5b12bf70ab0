"""An order-blind baseline (not in the paper): an MLP on each step, clip = mean of the
per-step probabilities. It sees no temporal context at all, so classes that differ only
in the order or timing of their events must be confused by it; that is what it is for.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor, nn

from .base import HeadOutput, mean_probability_logits


@dataclass(frozen=True)
class PoolConfig:
    hidden: int = 128
    dropout: float = 0.3


class PoolHead(nn.Module):
    def __init__(self, in_dim: int, num_classes: int, steps: int, config: PoolConfig = PoolConfig()) -> None:
        super().__init__()
        self.config = config
        self.mlp = nn.Sequential(
            nn.Linear(in_dim, config.hidden), nn.ReLU(), nn.Dropout(config.dropout), nn.Linear(config.hidden, num_classes)
        )

    def forward(self, features: Tensor, mask: Tensor) -> HeadOutput:
        step_logits = self.mlp(features) * mask.unsqueeze(-1).to(features.dtype)
        return HeadOutput(step_logits, mean_probability_logits(step_logits, mask))
