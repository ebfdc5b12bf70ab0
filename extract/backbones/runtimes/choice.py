"""Which runtimes run the frozen backbones, which of them are installed, and the one line
that says how to install a missing one.

``torch`` is always there (eager PyTorch, as stage 1 always ran). ``openvino`` and
``onnxruntime`` are the project's optional extras of the same names; they run an ONNX
export of the backbone's frozen forward on the CPU (``export_cache``, ``sessions``).
``auto`` is resolved per backbone when it loads (``select``).
"""

from __future__ import annotations

import importlib.metadata
import importlib.util

import torch

from cache_schema import InvalidInput

TORCH = "torch"
OPENVINO = "openvino"
ONNXRUNTIME = "onnxruntime"
AUTO = "auto"

RUNTIMES = (TORCH, OPENVINO, ONNXRUNTIME)
RUNTIME_CHOICES = (*RUNTIMES, AUTO)
"""What ``--runtime`` accepts."""

EXPORTED = (OPENVINO, ONNXRUNTIME)
"""The runtimes that run an exported model (CPU only: on CUDA, torch runs the backbones)."""

PACKAGES = {OPENVINO: "openvino", ONNXRUNTIME: "onnxruntime"}
"""Runtime -> (import name = PyPI name = the project's extra)."""


def check_runtime(runtime: str) -> str:
    """``runtime`` if it is one of :data:`RUNTIME_CHOICES`, else InvalidInput."""
    if runtime not in RUNTIME_CHOICES:
        raise InvalidInput(f"Unknown runtime {runtime!r}: choose one of {', '.join(RUNTIME_CHOICES)}.")
    return runtime


EXPORT_PACKAGES = ("onnx", "onnxscript")
"""What torch's ONNX exporters need besides the runtime (in both extras)."""


def runtime_installed(runtime: str) -> bool:
    """Whether ``runtime``'s package and the exporter's can be imported (torch always can)."""
    return runtime == TORCH or all(importlib.util.find_spec(m) is not None
                                   for m in (PACKAGES[runtime], *EXPORT_PACKAGES))


def installed_runtimes() -> tuple[str, ...]:
    """The runtimes this environment has, in :data:`RUNTIMES` order."""
    return tuple(r for r in RUNTIMES if runtime_installed(r))


def runtime_version(runtime: str) -> str:
    """The installed version of ``runtime``'s package (torch's without a local ``+cpu`` tag)."""
    if runtime == TORCH:
        return torch.__version__.split("+")[0]
    return importlib.metadata.version(PACKAGES[runtime])


def install_hint(runtime: str) -> str:
    package = PACKAGES[runtime]
    return f"pip install -e '.[{package}]' (the project's extra) or pip install {package}"


def require_runtime(runtime: str, device: str) -> str:
    """An explicit ``--runtime``, checked against this machine: its package installed, and a
    CPU device (the exported runtimes run on the CPU). InvalidInput otherwise."""
    check_runtime(runtime)
    if runtime in (TORCH, AUTO):
        return runtime
    if not runtime_installed(runtime):
        raise InvalidInput(f"--runtime {runtime}: the package {PACKAGES[runtime]} (or the exporter's "
                           f"{' / '.join(EXPORT_PACKAGES)}) is not installed: "
                           f"{install_hint(runtime)}; or use --runtime torch or auto.")
    if torch.device(device).type != "cpu":
        raise InvalidInput(f"--runtime {runtime} runs the backbones on the CPU, but the device is {device}: "
                           "use --runtime torch (or auto) on a GPU, or --device cpu.")
    return runtime


__all__ = ["AUTO", "EXPORTED", "ONNXRUNTIME", "OPENVINO", "PACKAGES", "RUNTIMES", "RUNTIME_CHOICES", "TORCH",
           "check_runtime", "install_hint", "installed_runtimes", "require_runtime", "runtime_installed",
           "runtime_version"]
