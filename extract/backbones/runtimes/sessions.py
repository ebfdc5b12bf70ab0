"""Inference sessions of an exported backbone: an OpenVINO compiled model or an ONNX Runtime
InferenceSession, on the CPU, with torch's thread count (``torch.get_num_threads()``, which
``--threads``-style settings and ``OMP_NUM_THREADS`` already govern), so that switching
runtime never changes how many cores a run takes.

A session maps one float32 array to one float32 array. OpenVINO gets the precision the
backbone resolved (``INFERENCE_PRECISION_HINT``: bf16 where torch would run bf16, f32
otherwise: on an AMX CPU OpenVINO would otherwise pick bf16 by itself even for an fp32
run); ONNX Runtime's CPU provider computes fp32.
"""

from __future__ import annotations

import functools
import sys
import threading
from collections.abc import Callable
from pathlib import Path
from types import ModuleType

import numpy as np
import torch

from .choice import ONNXRUNTIME, OPENVINO

Session = Callable[[np.ndarray], np.ndarray]

OPENVINO_PRECISION = {"fp32": "f32", "bf16": "bf16", "fp16": "f16"}


class OnnxRuntimeSession:
    """An ONNX Runtime CPU session (one input, first output)."""

    def __init__(self, path: Path, threads: int) -> None:
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.log_severity_level = 3  # warnings about unused initialisers are noise here
        # no spin-waiting between calls: the decode workers share these cores, and idle
        # spinning threads slowed whatever ran next by a third in bench extract --runtimes
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        self.session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        self.input = self.session.get_inputs()[0].name

    def __call__(self, x: np.ndarray) -> np.ndarray:
        return self.session.run(None, {self.input: x})[0]


_OPENVINO_LOCK = threading.RLock()   # the import and the one Core: made once, whichever thread asks first


def import_openvino() -> ModuleType:
    """``openvino``, with its telemetry left out.

    Why: ``import openvino`` imports its model converter, which by default sends a usage
    event to Google Analytics (from a child process forked off a background thread) and
    writes a client id under ``~/intel``, unless the user once ran ``opt_in_out
    --opt_out``. An operator's camera box must not call out of the process, and forking
    a process full of FFmpeg and torch threads is unsafe. Where ``openvino_telemetry``
    cannot be imported, OpenVINO uses its own no-op stub; it is made unimportable for
    the length of this import only."""
    with _OPENVINO_LOCK:     # one thread imports; another never sees it half imported
        if "openvino" in sys.modules:
            return sys.modules["openvino"]
        blocked = "openvino_telemetry" not in sys.modules
        if blocked:
            sys.modules["openvino_telemetry"] = None  # type: ignore[assignment]  # import raises ImportError
        try:
            import openvino
        finally:
            if blocked and sys.modules.get("openvino_telemetry", 0) is None:
                del sys.modules["openvino_telemetry"]
        return openvino


def openvino_core() -> object:
    """The process's one OpenVINO ``Core``, never freed.

    Why: the CPU plugin gives the thread that first compiles a model an alternate signal
    stack of its own, and frees it when the Core goes, putting back the previous stack
    on whichever thread frees it. A Core freed on another thread therefore left the
    compiling thread's alternate stack pointing at freed memory, and the next signal
    handled on that thread (SIGCHLD of a decode worker, SIGTERM) killed the process with
    SIGSEGV: the test workers that died "with no kernel message" late in the suite.
    OpenVINO means a Core to be shared by an application anyway."""
    with _OPENVINO_LOCK:     # two threads asking at once must not make (and then free) a second Core
        return _shared_core()


@functools.lru_cache(maxsize=1)
def _shared_core() -> object:
    return import_openvino().Core()


class OpenVinoSession:
    """An OpenVINO model compiled for the CPU at ``precision``; one inference at a time
    (its request's output buffer is reused, so the result is copied out)."""

    def __init__(self, path: Path, threads: int, precision: str) -> None:
        core = openvino_core()
        # no pinning: torch (the other backbone, the head) and the decode workers share these
        # cores, and threads pinned to them cannot move away from torch's spinning ones
        config = {"INFERENCE_NUM_THREADS": threads, "PERFORMANCE_HINT": "LATENCY", "ENABLE_CPU_PINNING": False,
                  "INFERENCE_PRECISION_HINT": OPENVINO_PRECISION[precision]}
        self.compiled = core.compile_model(core.read_model(str(path)), "CPU", config)
        self.request = self.compiled.create_infer_request()
        self.lock = threading.Lock()

    def __call__(self, x: np.ndarray) -> np.ndarray:
        with self.lock:
            result = self.request.infer({0: x})
            return np.array(result[self.compiled.output(0)], dtype=np.float32, copy=True)


def open_session(runtime: str, path: Path, precision: str) -> Session:
    """A session of ``runtime`` on the exported file ``path``."""
    threads = max(1, torch.get_num_threads())
    if runtime == OPENVINO:
        return OpenVinoSession(path, threads, precision)
    if runtime == ONNXRUNTIME:
        return OnnxRuntimeSession(path, threads)
    raise ValueError(f"{runtime!r} runs no exported model")


__all__ = ["OnnxRuntimeSession", "OpenVinoSession", "Session", "import_openvino", "open_session", "openvino_core"]
