"""What a training run is asked to do: :class:`TrainConfig`, the ``train`` section of a
run's ``config.json``.

It lives apart from the training loop so that the run directory (``rundir``), which
reads it back from ``config.json``, and the loop (``train``), which runs it, can both
import it without importing each other.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from cache_schema import InvalidInput

from .data import streams_for
from .heads import HEADS
from .losses import LossConfig
from .split import SplitConfig


@dataclass(frozen=True)
class TrainConfig:
    head: str = "mtcn"
    modality: str = "fused"
    fusion: str = "early"
    epochs: int = 50
    seed: int = 0
    batch_size: int = 16            # see docs/temporal.md: larger is faster per epoch, and less accurate at 50 epochs
    lr: float = 1e-3
    weight_decay: float = 1e-2
    plateau_patience: int = 5       # epochs without a lower val loss before the LR is cut
    plateau_factor: float = 0.5
    min_lr: float = 1e-5
    early_stop: int = 0             # stop after this many epochs without a better val score; 0 = never
    class_weights: bool = False     # inverse-frequency class weights in the loss
    normal_class: str = ""  # "" = the class named "normal", if any
    input_dropout: float = 0.5      # drops whole feature dimensions of a training clip
    modality_dropout: float = 0.0   # fused runs: chance that a training clip loses one stream
    threads: int | None = 1         # torch intra-op threads during the run (None: leave as is); see torch_threads
    checkpoint_every: int = 1       # epochs between saved training states (for --resume); 0 = only at the end
    head_options: dict[str, Any] = field(default_factory=dict)
    loss: LossConfig = LossConfig()
    split: SplitConfig = SplitConfig()
    progress: bool = True

    def __post_init__(self) -> None:
        if self.head not in HEADS:
            raise InvalidInput(f"unknown head {self.head!r}; choose one of {', '.join(HEADS)}")
        streams_for(self.modality, self.fusion)  # raises with the valid choices
        if self.epochs < 1 or self.batch_size < 1:
            raise InvalidInput("epochs and batch_size must be at least 1")

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @staticmethod
    def from_json(d: dict[str, Any]) -> "TrainConfig":
        d = dict(d)
        d["loss"] = LossConfig(**d.get("loss", {}))
        d["split"] = SplitConfig(**d.get("split", {}))
        return TrainConfig(**d)


__all__ = ["TrainConfig"]
