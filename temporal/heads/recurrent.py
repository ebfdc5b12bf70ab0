"""The paper's recurrent comparison heads: GRU, BiGRU, LSTM, BiLSTM.

Masks are respected with packed sequences. Masks need not be a prefix (a stream can be
missing in the middle of a clip), so valid steps are first moved to the front in their
original order, packed, run, and scattered back; a masked step is never fed to the cell,
so it changes no output.

Clip logits come from the final hidden state (forward direction: after the last valid
step; backward direction: after the first), through the same classifier that turns each
step's state into per-step logits. Training uses the clip logits only.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

from .base import HeadOutput

CELLS = {"gru": nn.GRU, "lstm": nn.LSTM}


@dataclass(frozen=True)
class RecurrentConfig:
    hidden: int = 128
    num_layers: int = 1
    dropout: float = 0.3


def compact_valid_steps(x: Tensor, mask: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Valid steps moved to the front (stable), their count, and the permutation used."""
    order = torch.argsort((~mask).to(torch.int8), dim=1, stable=True)  # [B, T]
    compacted = torch.gather(x, 1, order.unsqueeze(-1).expand_as(x))
    return compacted, mask.sum(1), order


class RecurrentHead(nn.Module):
    def __init__(self, in_dim: int, num_classes: int, steps: int, config: RecurrentConfig = RecurrentConfig(),
                 cell: str = "gru", bidirectional: bool = False) -> None:
        super().__init__()
        if cell not in CELLS:
            raise ValueError(f"unknown recurrent cell {cell!r}; choose one of {sorted(CELLS)}")
        self.config = config
        self.bidirectional = bidirectional
        self.rnn = CELLS[cell](
            in_dim, config.hidden, num_layers=config.num_layers, batch_first=True, bidirectional=bidirectional,
            dropout=config.dropout if config.num_layers > 1 else 0.0,
        )
        self.dropout = nn.Dropout(config.dropout)
        self.classifier = nn.Linear(config.hidden * (2 if bidirectional else 1), num_classes)

    def forward(self, features: Tensor, mask: Tensor) -> HeadOutput:
        b, t, _ = features.shape
        # Zeroed first so that even a row with no valid step (packed with length 1 below)
        # reads nothing but zeros.
        features = features * mask.unsqueeze(-1).to(features.dtype)
        compacted, lengths, order = compact_valid_steps(features, mask)
        # A row with no valid step still needs length >= 1 to be packed; its outputs are
        # masked away below and its clip is excluded by the caller.
        packed = pack_padded_sequence(compacted, lengths.clamp_min(1).cpu(), batch_first=True, enforce_sorted=False)
        out, hidden = self.rnn(packed)
        if isinstance(hidden, tuple):  # LSTM: (h, c)
            hidden = hidden[0]
        out, _ = pad_packed_sequence(out, batch_first=True, total_length=t)
        per_step = torch.zeros_like(out).scatter(1, order.unsqueeze(-1).expand_as(out), out)
        last = hidden[-2:] if self.bidirectional else hidden[-1:]  # top layer's directions
        summary = torch.cat(list(last), dim=-1)  # [B, H * dirs]
        step_logits = self.classifier(self.dropout(per_step)) * mask.unsqueeze(-1).to(out.dtype)
        return HeadOutput(step_logits, self.classifier(self.dropout(summary)))
