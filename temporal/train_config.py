"""What a training run is asked to do: :class:`TrainConfig`, the ``train`` section of a
run's ``config.json``.

It lives apart from the training loop so that the run directory (``rundir``), which
reads it back from ``config.json``, and the loop (``train``), which runs it, can both
import it without importing each other.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Sequence

from cache_schema import InvalidInput

from .data import STEP_CAP_MODES, streams_for
from .heads import HEADS
from .losses import LossConfig
from .split import SplitConfig

OBJECTIVES = ("auto", "step", "mil")
NORMAL = "normal"


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
    std_floor: float = 0.1          # input normalisation: a dimension's std >= this x its stream's RMS std (HTK: 1% of the variance)
    modality_dropout: float = 0.0   # fused runs: chance that a training clip loses one stream
    threads: int | None = 1         # torch intra-op threads during the run (None: leave as is); see torch_threads
    checkpoint_every: int = 1       # epochs between saved training states (for --resume); 0 = only at the end
    max_train_steps: int = 200      # longer training/validation clips are cut to this many steps (XDVioDet)
    train_steps_mode: str = "sample"  # "sample": np.linspace indices (XDVioDet); "pool": mean into bins (UR-DMU)
    objective: str = "auto"         # "auto" | "step" (per-step CE) | "mil" (top-k multiple-instance BCE)
    mil_sparsity: float = 0.0       # MIL: weight of Sultani et al.'s sparsity term (mean score of anomalous clips)
    mil_smoothness: float = 0.0     # MIL: weight of Sultani et al.'s smoothness term (squared score differences)
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
        if self.max_train_steps < 1:
            raise InvalidInput(f"--max-train-steps must be at least 1, got {self.max_train_steps}")
        if self.train_steps_mode not in STEP_CAP_MODES:
            raise InvalidInput(f"unknown --train-steps-mode {self.train_steps_mode!r}; choose one of {STEP_CAP_MODES}")
        if self.objective not in OBJECTIVES:
            raise InvalidInput(f"unknown --objective {self.objective!r}; choose one of {OBJECTIVES}")
        if self.mil_sparsity < 0 or self.mil_smoothness < 0:
            raise InvalidInput("--mil-sparsity and --mil-smoothness must be >= 0")

    @property
    def trained_objective(self) -> str:
        """The objective a recorded run was trained with: runs record it resolved; "auto"
        in a ``config.json`` is a run from before objectives existed, trained per step."""
        return "step" if self.objective == "auto" else self.objective

    def normal_index(self, class_names: Sequence[str]) -> int | None:
        """Index of the normal class among ``class_names`` (``normal_class``, or the class
        named "normal"); None when there is none. A ``normal_class`` that is not a class
        is an error naming the classes."""
        names = list(class_names)
        if self.normal_class:
            if self.normal_class not in names:
                raise InvalidInput(f"normal_class {self.normal_class!r} is not a class of this cache ({names}); "
                                   "name one of them")
            return names.index(self.normal_class)
        return names.index(NORMAL) if NORMAL in names else None

    def resolved_objective(self, class_names: Sequence[str], task: str | None = None) -> str:
        """"step" or "mil". "auto" is MIL for XD-Violence detection and for any two-class
        run with a normal class (weak, video-level labels), else the per-step
        cross-entropy (trimmed-clip recognition: VAAR, XD-VR). MIL needs two classes, one
        of them the normal class: otherwise an error that says so."""
        normal = self.normal_index(class_names)
        binary = len(class_names) == 2 and normal is not None
        if self.objective == "auto":
            return "mil" if task == "xd-detection" or binary else "step"
        if self.objective == "mil" and not binary:
            raise InvalidInput(f"--objective mil needs two classes, one of them the normal class (named 'normal', or "
                               f"the run's normal_class); this run has {list(class_names)}: use --task xd-detection, "
                               "or --objective step")
        return self.objective

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @staticmethod
    def from_json(d: dict[str, Any]) -> "TrainConfig":
        d = dict(d)
        d["loss"] = LossConfig(**d.get("loss", {}))
        d["split"] = SplitConfig(**d.get("split", {}))
        return TrainConfig(**d)


__all__ = ["OBJECTIVES", "TrainConfig"]
