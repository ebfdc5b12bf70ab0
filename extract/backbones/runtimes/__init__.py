"""Runtimes for the frozen backbones (``--runtime torch|openvino|onnxruntime|auto``).

* ``choice``: the runtimes, which are installed, the error naming the extra to install;
* ``export_cache``: the ONNX export per architecture, weights checksum, input and exporter,
  in ``<user cache>/exports/`` (a changed checkpoint never reuses a stale export);
* ``sessions``: OpenVINO / ONNX Runtime CPU sessions with torch's thread count;
* ``probe``: what ``auto`` measures, kept per machine, backbone and input;
* ``accelerate``: ``use_runtime(backbone, runtime)``, the frozen forward swapped, the
  preprocessing untouched.
"""

from .accelerate import FrozenModule, RuntimeForward, runtime_precision, use_runtime
from .choice import (
    AUTO,
    EXPORTED,
    ONNXRUNTIME,
    OPENVINO,
    RUNTIME_CHOICES,
    RUNTIMES,
    TORCH,
    check_runtime,
    installed_runtimes,
    require_runtime,
    runtime_installed,
    runtime_version,
)
from .export_cache import EXPORTER, ExportSpec, export_path, exported_model
from .probe import cached_choice, probe_key, probe_path

__all__ = ["AUTO", "EXPORTED", "EXPORTER", "ExportSpec", "FrozenModule", "ONNXRUNTIME", "OPENVINO", "RUNTIMES",
           "RUNTIME_CHOICES", "RuntimeForward", "TORCH", "cached_choice", "check_runtime", "export_path",
           "exported_model", "installed_runtimes", "probe_key", "probe_path", "require_runtime",
           "runtime_installed", "runtime_precision", "runtime_version", "use_runtime"]
