"""Registry of temporal heads, picked by name (timm-style): ``create_head("mtcn", ...)``.

Every head takes step features ``[B, T, D]`` and a step mask ``[B, T]`` and returns a
:class:`HeadOutput` (per-step logits ``[B, T, C]``, clip logits ``[B, C]``). Options
override the head's config dataclass field by field, so a typo is an error, not a silent
default.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Callable

from torch import nn

from cache_schema import InvalidInput

from .base import HeadOutput, mean_probability_logits, masked_mean
from .linear import LinearConfig, LinearHead
from .mtcn import MTCN, MTCNConfig, layers_for_steps, receptive_field
from .pool import PoolConfig, PoolHead
from .recurrent import RecurrentConfig, RecurrentHead
from .transformer import TransformerConfig, TransformerHead


@dataclass(frozen=True)
class HeadSpec:
    build: Callable[..., nn.Module]
    config_type: type
    fixed: dict[str, Any]
    description: str
    # Options the head takes by default when trained with the MIL objective (weak,
    # video-level labels), where the user gave none: see docs/temporal.md.
    mil_defaults: dict[str, Any] = dataclasses.field(default_factory=dict)


HEADS: dict[str, HeadSpec] = {
    "mtcn": HeadSpec(MTCN, MTCNConfig, {}, "AVAR-Net: attention block + multi-stage dilated TCN",
                     mil_defaults={"stages": 1, "layers": 2, "attention_window": 0}),
    "gru": HeadSpec(RecurrentHead, RecurrentConfig, {"cell": "gru", "bidirectional": False}, "GRU"),
    "bigru": HeadSpec(RecurrentHead, RecurrentConfig, {"cell": "gru", "bidirectional": True}, "bidirectional GRU"),
    "lstm": HeadSpec(RecurrentHead, RecurrentConfig, {"cell": "lstm", "bidirectional": False}, "LSTM"),
    "bilstm": HeadSpec(RecurrentHead, RecurrentConfig, {"cell": "lstm", "bidirectional": True}, "bidirectional LSTM"),
    "transformer": HeadSpec(TransformerHead, TransformerConfig, {}, "Transformer encoder"),
    "pool": HeadSpec(PoolHead, PoolConfig, {}, "order-blind baseline: per-step MLP, mean of probabilities"),
    "linear": HeadSpec(LinearHead, LinearConfig, {},
                       "baseline: logistic regression on the standardised, mean-pooled step features"),
}
# The heads of the paper's Table 2, in its order.
PAPER_HEADS: tuple[str, ...] = ("mtcn", "gru", "bigru", "lstm", "bilstm", "transformer")
# The row every table is judged by (not in the paper): a head that does not beat a linear
# probe on the clip's mean feature has learnt nothing the mean did not already hold.
BASELINE_HEAD = "linear"
# The rows `compare` trains by default: the paper's, then the baseline.
TABLE_HEADS: tuple[str, ...] = (*PAPER_HEADS, BASELINE_HEAD)


def list_heads() -> list[str]:
    return list(HEADS)


def describe_heads() -> dict[str, str]:
    """Each head's name and its one-line description, in registry order (``train --list-heads``)."""
    return {name: spec.description for name, spec in HEADS.items()}


def head_config(name: str, options: dict[str, Any] | None = None) -> Any:
    """The head's config dataclass with ``options`` applied."""
    spec = _spec(name)
    options = dict(options or {})
    fields = {f.name for f in dataclasses.fields(spec.config_type)}
    unknown = sorted(set(options) - fields)
    if unknown:
        raise InvalidInput(f"head {name!r} has no option(s) {unknown}; its options are {sorted(fields)}")
    return spec.config_type(**options)


def mil_head_options(name: str, options: dict[str, Any] | None = None) -> dict[str, Any]:
    """``options`` completed with the head's MIL defaults (the user's choices win)."""
    return {**_spec(name).mil_defaults, **dict(options or {})}


def create_head(name: str, in_dim: int, num_classes: int, steps: int, options: dict[str, Any] | None = None) -> nn.Module:
    spec = _spec(name)
    return spec.build(in_dim, num_classes, steps, head_config(name, options), **spec.fixed)


def count_parameters(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters() if p.requires_grad)


def _spec(name: str) -> HeadSpec:
    if name not in HEADS:
        raise InvalidInput(f"unknown head {name!r}; choose one of {', '.join(HEADS)}")
    return HEADS[name]


__all__ = [
    "BASELINE_HEAD", "HEADS", "PAPER_HEADS", "TABLE_HEADS", "HeadOutput", "LinearHead", "LinearConfig", "HeadSpec", "MTCN", "MTCNConfig", "RecurrentHead", "RecurrentConfig",
    "TransformerHead", "TransformerConfig", "PoolHead", "PoolConfig", "count_parameters", "create_head",
    "describe_heads", "head_config", "mil_head_options", "layers_for_steps", "list_heads", "masked_mean", "mean_probability_logits",
    "receptive_field",
]
