"""A backbone's frozen forward through the runtime chosen for it (``--runtime``).

Only the frozen network changes hands: each family's preprocessing (timm's transform,
wav2vec2's normalisation, YAMNet's log-mel patches), batching and pooling stay as they are,
and the family calls ``DescribedBackbone.frozen_forward``, which runs torch or the session
installed here. The backbone then describes its ``runtime`` (recorded beside the
precision, never identity: the runtimes' features differ in rounding only).
"""

from __future__ import annotations

import logging
from collections.abc import Callable

import torch
from torch import nn

from cache_schema import InvalidInput

from ..frozen import AUTO as AUTO_PRECISION
from ..frozen import DescribedBackbone
from .choice import AUTO, EXPORTED, ONNXRUNTIME, TORCH, installed_runtimes, require_runtime
from .export_cache import ExportSpec, exported_model
from .probe import cached_choice, measure_and_record, probe_key
from .sessions import Session, open_session

logger = logging.getLogger(__name__)


class FrozenModule(nn.Module):
    """The backbone's torch forward (``torch_forward``: model -> the features it keeps) as
    one module with one input, what the exporter traces. In eval mode from the start: the
    TorchScript exporter traces in eval mode and then restores the wrapper's own mode to
    every submodule, which would leave a training-mode wrapper's backbone updating its
    BatchNorm statistics on every later torch call."""

    def __init__(self, backbone: DescribedBackbone) -> None:
        super().__init__()
        self.model = backbone.model
        self.backbone_forward = backbone.torch_forward
        self.eval()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.backbone_forward(x)


class RuntimeForward:
    """A session as a frozen forward: a tensor in (any device and dtype), float32 CPU out."""

    def __init__(self, session: Session, runtime: str) -> None:
        self.session, self.runtime = session, runtime

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        array = x.detach().to("cpu", torch.float32).contiguous().numpy()
        return torch.from_numpy(self.session(array))

    def __repr__(self) -> str:
        return f"RuntimeForward({self.runtime})"


def runtime_precision(runtime: str, resolved: str, requested: str) -> str | None:
    """The precision ``runtime`` runs a backbone at whose precision resolved to ``resolved``
    from ``requested``: OpenVINO and torch as resolved; ONNX Runtime fp32, which stands in
    for a resolved bf16 only where the precision was left to ``auto`` (None: it cannot)."""
    if runtime != ONNXRUNTIME or resolved == "fp32":
        return resolved
    return "fp32" if requested == AUTO_PRECISION else None


def session_forward(backbone: DescribedBackbone, runtime: str, spec: ExportSpec, precision: str) -> RuntimeForward:
    path = exported_model(FrozenModule(backbone), spec)
    return RuntimeForward(open_session(runtime, path, precision), runtime)


def use_runtime(backbone: DescribedBackbone, runtime: str, requested_precision: str | None = None) -> str:
    """Run ``backbone``'s frozen forward on ``runtime`` (``auto``: the fastest installed
    here, see ``probe``); returns the runtime it runs on. ``requested_precision``: what the
    user asked for before it was resolved (``auto`` lets ONNX Runtime run fp32 in place
    of a resolved bf16). InvalidInput for a runtime that is not installed, not for this
    device, or not at this precision."""
    requested = requested_precision or backbone.precision
    runtime = require_runtime(runtime, backbone.device)
    backbone.accelerated, backbone.runtime = None, TORCH
    if runtime == TORCH:
        return TORCH
    spec = backbone.export_spec()
    if runtime == AUTO:
        return _use_fastest(backbone, spec, requested)
    if spec is None:
        raise InvalidInput(f"--runtime {runtime}: {backbone.name} ({backbone.arch}) takes an attention mask, which "
                           "the exported runtimes are not given: use --runtime torch or auto.")
    precision = runtime_precision(runtime, backbone.precision, requested)
    if precision is None:
        raise InvalidInput(f"--runtime {runtime} computes fp32 on the CPU, but --precision {requested} was asked for: "
                           "use --precision fp32 or auto, or --runtime openvino or torch.")
    _install(backbone, session_forward(backbone, runtime, spec, precision), precision)
    return runtime


def _use_fastest(backbone: DescribedBackbone, spec: ExportSpec | None, requested: str) -> str:
    """``auto``: torch on a GPU, for a backbone that cannot be exported, or where no other
    runtime is installed; else the probe's (or its kept) answer."""
    precisions = {r: runtime_precision(r, backbone.precision, requested) for r in installed_runtimes()}
    candidates = [r for r in EXPORTED if precisions.get(r)]
    if torch.device(backbone.device).type != "cpu" or spec is None or not candidates:
        return TORCH
    key = probe_key(spec, backbone.precision, [TORCH, *candidates])
    choice = cached_choice(key)
    made: dict[str, RuntimeForward] = {}
    if choice is None:
        forwards: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {TORCH: backbone.frozen_forward}
        for runtime in candidates:
            forwards[runtime] = made[runtime] = session_forward(backbone, runtime, spec, precisions[runtime])
        choice = measure_and_record(key, forwards)
    if choice == TORCH:
        return TORCH
    _install(backbone, made.get(choice) or session_forward(backbone, choice, spec, precisions[choice]),
             precisions[choice])
    return choice


def _install(backbone: DescribedBackbone, forward: RuntimeForward, precision: str) -> None:
    if precision != backbone.precision:
        logger.info("backbone %s runs %s on %s (resolved to %s for torch)", backbone.name, precision,
                    forward.runtime, backbone.precision)
    backbone.precision = precision
    backbone.accelerated, backbone.runtime = forward, forward.runtime


__all__ = ["FrozenModule", "RuntimeForward", "runtime_precision", "use_runtime"]
