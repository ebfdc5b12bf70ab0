"""The baseline every table is judged by (not in the paper): logistic regression on the
clip's mean-pooled step features.

A head that does not beat it has learnt nothing from temporal order, or from depth, that
a linear probe on the average feature did not already give; on small real sets the deep
heads can do worse than it (issue 21), which is why it is a row of every Table 2.

It reads what every head reads: features standardised per dimension with statistics of
the training split's valid steps (the run's ``FeatureStandardizer``), so the probe is
"standardise, then logistic regression", trained by the same loop (AdamW, its weight
decay as the L2 penalty, input dropout, best epoch on validation) as the other heads.

Because the map is linear, applying it to each step gives per-step logits whose masked
mean is exactly the clip logits: detection, MIL and live scoring read the step logits of
the very model the clip accuracy measures.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor, nn

from .base import HeadOutput, masked_mean


@dataclass(frozen=True)
class LinearConfig:
    """No options: a probe with knobs would stop being a fixed yardstick. Its regularisation
    is the training loop's (``TrainConfig.weight_decay``, ``input_dropout``)."""


class LinearHead(nn.Module):
    def __init__(self, in_dim: int, num_classes: int, steps: int, config: LinearConfig = LinearConfig()) -> None:
        super().__init__()
        self.config = config
        self.classifier = nn.Linear(in_dim, num_classes)
        # Logistic regression starts from zero (every class equally likely), so the
        # yardstick does not depend on a random initialisation: only the batch order and
        # the input dropout change with the seed.
        nn.init.zeros_(self.classifier.weight)
        nn.init.zeros_(self.classifier.bias)

    def forward(self, features: Tensor, mask: Tensor) -> HeadOutput:
        # Padded steps are replaced by zeros by selection (0 x NaN would be NaN), so that
        # whatever their storage holds reaches neither the step logits nor the mean.
        valid = mask.unsqueeze(-1)
        features = features.masked_fill(~valid, 0.0)
        step_logits = self.classifier(features).masked_fill(~valid, 0.0)
        clip_logits = self.classifier(masked_mean(features, mask))
        return HeadOutput(step_logits, clip_logits)
