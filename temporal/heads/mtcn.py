"""MTCN, AVAR-Net's temporal head: an attention block in front of a multi-stage dilated
temporal convolution network in the style of MS-TCN (Farha & Gall, CVPR 2019).

One class per box of the paper's figure::

    features [B,T,D] --> AttentionBlock --> Stage 1 --> softmax --> Stage 2 --> ... --> Stage S
                         (Conv1d, MHSA,     (1x1 in, L x DilatedResidualLayer, 1x1 out)
                          residual)

``MTCN`` chains them; every stage emits per-step logits and all of them are supervised
(see ``temporal/losses.py``). The clip prediction is the mean of the last stage's
per-step probabilities over the valid steps; the per-step anomaly score is
``1 - p(normal)`` of those probabilities.

Choice of L (layers per stage), derived from T rather than hard-coded. L layers of
kernel 3 with dilations 1, 2, ..., 2^(L-1) have a receptive field of 2^(L+1) - 1 steps,
centred, i.e. 2^L - 1 steps to each side. For every step's output to depend on every
other step of a T-step clip (the clip label is an average over steps, so the first step
must be able to see an event in the last one), we need 2^L - 1 >= T - 1, so
``L = ceil(log2 T)``: T=10 gives L=4 (dilations 1, 2, 4, 8; field 31). This is also the
largest useful L: its top dilation 2^(L-1) is below T, whereas a layer of dilation >= T
reaches only the zero padding from every step and is pure waste. (MS-TCN's L=10 was
chosen for videos of thousands of frames; with T=10, seven of its ten layers would only
read padding.) The weaker reading "field >= T" would give L=3 (field 15), which leaves
steps 0 and 9 unable to see each other within a stage.

Masks: every layer multiplies its output by the step mask (as MS-TCN does), and the
attention block excludes masked steps as keys and never lets their features into a valid
step's output (kernel 1: their projection is replaced by the bias; kernel 3: they are
zeroed before the convolution). Outputs are independent of what a masked step holds; in
training, non-finite garbage there would still reach the kernel-1 projection's weight
gradient, which is why the run's inputs hold exact zeros at absent steps (the
standardiser selects, it does not multiply).

Layout: the attention block works on ``[B, T, C]`` (as attention wants); the stages work
time-major, ``[T, B, C]``, where shifting every clip by d steps is an offset of d*B rows
of one contiguous matrix. A 1x1 convolution is a per-step linear map, so it is an
``nn.Linear``; the dilated kernel-3 convolution is ``TemporalConv``, the same maths as
``nn.Conv1d(C, C, 3, padding=d, dilation=d)`` as three matrix products into row-offset
views, without padding. On 10-step clips this is several times cheaper on CPU
than oneDNN's convolution, whose set-up cost dominates such small inputs. When every
step of a batch is valid (the usual case), the per-layer mask products are skipped: they
would multiply by one.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .base import HeadOutput, attention_padding, channel_dropout, mean_probability_logits


ATTENTION_SCORES = 1 << 24  # attention scores held at once (B x heads x queries x T); beyond, queries are chunked


def layers_for_steps(steps: int) -> int:
    """Smallest L whose dilated stack lets every step see every other (see module doc)."""
    return max(1, math.ceil(math.log2(steps))) if steps > 1 else 1


def receptive_field(layers: int) -> int:
    """Steps seen by one output of ``layers`` kernel-3 layers with dilations 1..2^(L-1)."""
    return 2 ** (layers + 1) - 1


@dataclass(frozen=True)
class MTCNConfig:
    hidden: int = 64            # channels of the attention block and of every stage
    stages: int = 2             # see docs/temporal.md (MS-TCN: 4)
    layers: int | None = None   # per stage; None = layers_for_steps(T)
    attention_heads: int = 4
    attention_kernel: int = 1   # the block's Conv1d: 1 (a per-step projection) or 3
    dropout: float = 0.2        # channel dropout in every dilated residual layer (MS-TCN: 0.5)
    attention_dropout: float = 0.1
    # None: every step attends to every other (the paper's block); W >= 0: only to steps at
    # most W away (0: to itself alone). See "MIL on a time grid" in docs/temporal.md.
    attention_window: int | None = None


class TemporalConv(nn.Module):
    """Kernel-3 convolution over steps with dilation d, zero-padded, on time-major
    ``[T, B, C]``: ``out[t] = W0 x[t-d] + W1 x[t] + W2 x[t+d] + b``, exactly
    ``nn.Conv1d(in, out, 3, padding=d, dilation=d)`` (same initialisation too)."""

    def __init__(self, in_channels: int, out_channels: int, dilation: int = 1) -> None:
        super().__init__()
        self.dilation = dilation
        self.taps = nn.Linear(in_channels, 3 * out_channels, bias=False)  # [W0; W1; W2]
        self.bias = nn.Parameter(torch.empty(out_channels))
        bound = 1.0 / math.sqrt(3 * in_channels)  # nn.Conv1d's default: fan-in = in x kernel
        nn.init.uniform_(self.taps.weight, -bound, bound)
        nn.init.uniform_(self.bias, -bound, bound)

    def forward(self, x: Tensor) -> Tensor:
        t, b = x.shape[0], x.shape[1]
        rows = x.reshape(t * b, -1)
        w0, w1, w2 = self.taps.weight.chunk(3)
        out = torch.addmm(self.bias, rows, w1.t())
        shift = self.dilation * b  # rows of d steps; a dilation >= T reaches only padding
        if self.dilation < t:
            # autocast casts addmm but not the in-place addmm_: follow the output's dtype
            rows, w0, w2 = rows.to(out.dtype), w0.to(out.dtype), w2.to(out.dtype)
            out[shift:].addmm_(rows[:-shift], w0.t())   # step t reads t-d
            out[:-shift].addmm_(rows[shift:], w2.t())   # step t reads t+d
        return out.view(t, b, -1)


class AttentionBlock(nn.Module):
    """Conv1d (D -> hidden), then multi-head self-attention over the steps, residual.

    Attention lets every step weigh every other step once, before the local dilated
    convolutions; the residual keeps each step's own projected features.

    The attention's weights live in an ``nn.MultiheadAttention`` (its usual parameter
    names), but the forward pass calls ``scaled_dot_product_attention`` on them directly:
    the same maths as the module (a test checks), in a handful of operations instead of
    the module's few dozen of shape checks, mask merges and reshapes, which on 10-step
    clips cost more than the attention itself.
    """

    def __init__(self, in_dim: int, hidden: int, heads: int, kernel_size: int, dropout: float,
                 window: int | None = None) -> None:
        super().__init__()
        if kernel_size not in (1, 3):
            raise ValueError(f"attention_kernel must be 1 or 3, got {kernel_size}")
        if window is not None and window < 0:
            raise ValueError(f"attention_window must be None or >= 0, got {window}")
        self.window = window
        self.conv = nn.Linear(in_dim, hidden) if kernel_size == 1 else TemporalConv(in_dim, hidden)
        self.attention = nn.MultiheadAttention(hidden, heads, dropout=dropout, batch_first=True)
        self.norm = nn.LayerNorm(hidden)

    def forward(self, x: Tensor, mask: Tensor | None) -> Tensor:
        """x ``[B, T, D]``, mask ``[B, T, 1]`` (bool; None = every step valid) -> ``[B, T, hidden]``."""
        if isinstance(self.conv, nn.Linear):
            # A per-step projection: a masked step's output is what zero input gives (the
            # bias), selected after the product so that the wide input is never copied.
            h = self.conv(x) if mask is None else torch.where(mask, self.conv(x), self.conv.bias)
        else:  # kernel 3 mixes neighbours: masked steps must be zero before it
            x = x if mask is None else torch.where(mask, x, 0.0)
            h = self.conv(x.transpose(0, 1)).transpose(0, 1)
        h = F.relu(h)
        h = self.norm(h + self._self_attention(h, None if mask is None else mask[..., 0]))
        return h if mask is None else h * mask

    def _self_attention(self, h: Tensor, valid: Tensor | None) -> Tensor:
        mha = self.attention
        b, t, c = h.shape
        if self.window == 0:  # a step attending to itself alone: its softmax weight is 1, the output its value
            _, _, w_v = mha.in_proj_weight.chunk(3)
            _, _, b_v = mha.in_proj_bias.chunk(3)
            return mha.out_proj(F.linear(h, w_v, b_v))
        q, k, v = F.linear(h, mha.in_proj_weight, mha.in_proj_bias).view(b, t, 3, mha.num_heads, -1).permute(2, 0, 3, 1, 4)
        keys = None if valid is None else ~attention_padding(valid)[:, None, None, :]  # True = may be attended to
        p = mha.dropout if self.training else 0.0
        rows = max(1, ATTENTION_SCORES // max(1, b * mha.num_heads * t))  # queries per chunk
        chunks = []
        for i in range(0, t, min(rows, t)):  # long clips: queries in chunks, so the score matrix stays bounded
            allowed = keys
            if self.window is not None:  # a band: query j may read keys within the window
                j = torch.arange(i, min(t, i + rows), device=h.device)[:, None]
                band = (j - torch.arange(t, device=h.device)[None, :]).abs() <= self.window
                allowed = band[None, None] if keys is None else keys & band[None, None]
            chunks.append(F.scaled_dot_product_attention(q[:, :, i:i + rows], k, v, attn_mask=allowed, dropout_p=p))
        a = chunks[0] if len(chunks) == 1 else torch.cat(chunks, dim=2)
        return mha.out_proj(a.transpose(1, 2).reshape(b, t, c))


class DilatedResidualLayer(nn.Module):
    """MS-TCN's layer: dilated conv (kernel 3), ReLU, 1x1 conv, dropout, residual, masked.

    The dropout drops whole channels of a clip ("spatial" dropout) where MS-TCN drops
    single values: on 10-step clips a value dropped at one step is easily read from its
    neighbours, and on CPU it needs T times fewer random draws.
    """

    def __init__(self, dilation: int, channels: int, dropout: float) -> None:
        super().__init__()
        self.conv_dilated = TemporalConv(channels, channels, dilation)
        self.conv_1x1 = nn.Linear(channels, channels)
        self.dropout = nn.Dropout1d(dropout)

    def forward(self, x: Tensor, mask: Tensor | None) -> Tensor:
        """x ``[T, B, C]``, mask ``[T, B, 1]`` (float; None = every step valid)."""
        out = self.conv_1x1(F.relu(self.conv_dilated(x)))
        out = x + channel_dropout(out, self.dropout.p, self.training, channel_dim=2, clip_dim=1)
        return out if mask is None else out * mask


class Stage(nn.Module):
    """One stage: 1x1 conv in, L dilated residual layers (dilation 2^i), 1x1 conv out."""

    def __init__(self, in_dim: int, hidden: int, num_classes: int, layers: int, dropout: float) -> None:
        super().__init__()
        self.conv_in = nn.Linear(in_dim, hidden)
        self.layers = nn.ModuleList(DilatedResidualLayer(2**i, hidden, dropout) for i in range(layers))
        self.conv_out = nn.Linear(hidden, num_classes)

    def forward(self, x: Tensor, mask: Tensor | None) -> Tensor:
        """x ``[T, B, D]`` -> logits ``[T, B, classes]``; mask ``[T, B, 1]`` or None."""
        h = self.conv_in(x)
        h = h if mask is None else h * mask
        for layer in self.layers:
            h = layer(h, mask)
        out = self.conv_out(h)
        return out if mask is None else out * mask


class MTCN(nn.Module):
    """Attention block, then S stages; stages after the first refine the previous
    stage's softmax (MS-TCN), which smooths per-step predictions over time."""

    def __init__(self, in_dim: int, num_classes: int, steps: int, config: MTCNConfig = MTCNConfig()) -> None:
        super().__init__()
        self.config = config
        self.num_layers = config.layers or layers_for_steps(steps)
        self.attention = AttentionBlock(
            in_dim, config.hidden, config.attention_heads, config.attention_kernel, config.attention_dropout,
            config.attention_window,
        )
        self.stages = nn.ModuleList(
            Stage(config.hidden if s == 0 else num_classes, config.hidden, num_classes, self.num_layers, config.dropout)
            for s in range(config.stages)
        )

    def forward(self, features: Tensor, mask: Tensor) -> HeadOutput:
        every = bool(mask.all())  # then masking multiplies by one: skip it
        h = self.attention(features, None if every else mask.unsqueeze(-1))
        m = None if every else mask.t().unsqueeze(-1).to(features.dtype)  # [T, B, 1]
        out = self.stages[0](h.transpose(0, 1), m)                           # time-major from here
        stage_logits = [out]
        for stage in self.stages[1:]:
            p = F.softmax(out, dim=-1)
            out = stage(p if m is None else p * m, m)
            stage_logits.append(out)
        stage_logits = [o.transpose(0, 1) for o in stage_logits]             # back to [B, T, C]
        return HeadOutput(stage_logits[-1], mean_probability_logits(stage_logits[-1], mask), tuple(stage_logits))
