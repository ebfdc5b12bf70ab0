"""Sane bounds on what a run's ``config.json`` asks to build, checked before anything is.

``config.json`` is a file a user can edit, copy from elsewhere or receive damaged. Read
as it was, a hidden size of 10**9 made ``evaluate`` allocate first and die with a
traceback, 0 attention heads failed deep inside torch, and 10**6 layers were built until
the process was killed. So every reader of a run (``RunConfig.from_json``: evaluate,
predict, watch, figures, ``--resume``) checks the numbers first:

* each number of the run (steps, feature dims, classes) and of the head's options lies
  in a range far wider than any real run and far below what would exhaust a machine
  (``BOUNDS``; depth options are bounded tighter, because each layer is a module);
* the head is then built on PyTorch's ``meta`` device, which allocates no memory, so
  options the head itself refuses (heads that do not divide the width, say) are found
  without building anything real, and its parameter count is compared with
  ``MAX_HEAD_PARAMETERS``.

A problem is returned as one sentence; the caller names ``config.json`` in its error.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Mapping, Sequence

import torch

from .heads import create_head

MAX_HEAD_PARAMETERS = 100_000_000
"""400 MB of float32 weights per stream: 400 times the paper's head (AVAR-Net's MTCN: 245k)."""


@dataclass(frozen=True)
class Bound:
    low: float
    high: float


BOUNDS: dict[str, Bound] = {
    # the run
    "steps": Bound(1, 1_000_000), "video_dim": Bound(0, 65_536), "audio_dim": Bound(0, 65_536),
    "classes": Bound(1, 100_000),
    # head options by name: depths (one module per layer), attention heads, and any other count
    "stages": Bound(1, 64), "layers": Bound(1, 64), "num_layers": Bound(1, 64),
    "attention_heads": Bound(1, 1024), "heads": Bound(1, 1024),
}
OPTION_BOUND = Bound(0, 65_536)
"""Any other numeric head option (widths, kernels, windows)."""
PROBABILITY = Bound(0.0, 1.0)   # options named *dropout*: 0 <= p < 1


def _number_problem(name: str, value: Any, bound: Bound, integer: bool = True) -> str | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or (integer and not float(value).is_integer()):
        return f"{name} is {value!r}, not {'a whole number' if integer else 'a number'}"
    if not math.isfinite(value) or not bound.low <= value <= bound.high:
        return f"{name} = {value!r} is outside the sane range {bound.low:g}..{bound.high:g}"
    return None


def option_problem(name: str, value: Any) -> str | None:
    """Why the head option ``name = value`` is out of bounds (None: it is not, or it is not a number)."""
    if value is None or isinstance(value, str):
        return None
    where = f"head option {name}"
    if "dropout" in name:
        problem = _number_problem(where, value, PROBABILITY, integer=False)
        return problem or (f"{where} = {value!r} must be below 1" if value >= 1 else None)
    return _number_problem(where, value, BOUNDS.get(name, OPTION_BOUND))


def run_bounds_problem(head: str, options: Mapping[str, Any], steps: int, video_dim: int, audio_dim: int,
                       class_names: Sequence[str], streams: Sequence[str]) -> str | None:
    """Why a run with these settings cannot be built safely, or None (module doc)."""
    for name, value in (("steps", steps), ("video_dim", video_dim), ("audio_dim", audio_dim),
                        ("classes", len(class_names))):
        problem = _number_problem(name, value, BOUNDS[name])
        if problem is not None:
            return problem
    for name, value in options.items():
        problem = option_problem(str(name), value)
        if problem is not None:
            return problem
    try:
        with torch.device("meta"):  # shapes only: nothing is allocated
            built = create_head(head, max(1, video_dim + audio_dim), len(class_names), steps, dict(options))
    except (ValueError, TypeError, AssertionError, RuntimeError, ZeroDivisionError) as exc:
        return f"its head {head!r} cannot be built with options {dict(options)} ({exc})"
    parameters = sum(p.numel() for p in built.parameters()) * max(1, len(streams))
    if parameters > MAX_HEAD_PARAMETERS:
        return (f"its {head!r} head with options {dict(options)} would have {parameters:,} parameters, more than "
                f"the sane bound of {MAX_HEAD_PARAMETERS:,}")
    return None


__all__ = ["BOUNDS", "MAX_HEAD_PARAMETERS", "OPTION_BOUND", "Bound", "option_problem", "run_bounds_problem"]
