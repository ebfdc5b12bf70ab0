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

import threading
from collections.abc import Callable
from pathlib import Path

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


class OpenVinoSession:
    """An OpenVINO model compiled for the CPU at ``precision``; one inference at a time
    (its request's output buffer is reused, so the result is copied out)."""

    def __init__(self, path: Path, threads: int, precision: str) -> None:
        import openvino as ov

        core = ov.Core()
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


__all__ = ["OnnxRuntimeSession", "OpenVinoSession", "Session", "open_session"]
