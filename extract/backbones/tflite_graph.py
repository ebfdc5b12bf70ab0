"""Reads a .tflite file's single graph: its operators, their options, and its constant
tensors dequantized to float32.

Kept apart from any one model so that a port (``yamnet``) only maps a graph it can see
onto torch modules, and never runs LiteRT: the run-time path needs only the pure-Python
``tflite`` flatbuffer classes (the ``lite`` extra), no native interpreter. Nothing here
executes code from the file; a flatbuffer is plain data.

Errors are :class:`ValueError` with a sentence naming what is wrong; the caller decides
what that means for its user (``yamnet`` turns it into ``BackboneUnavailable``).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

import numpy as np

logger = logging.getLogger(__name__)

FILE_IDENTIFIER = b"TFL3"
"""Bytes 4..8 of every TFLite flatbuffer (the schema's ``file_identifier``)."""

INT8 = "INT8"
INT32 = "INT32"
FLOAT32 = "FLOAT32"


@dataclass(frozen=True)
class Quantization:
    """Affine quantization of one tensor: real = scale * (q - zero_point), per tensor
    (one scale) or per channel along ``axis``."""

    scale: np.ndarray
    zero_point: np.ndarray
    axis: int


@dataclass(frozen=True)
class TensorInfo:
    index: int
    name: str
    shape: tuple[int, ...]
    dtype: str
    """The schema's ``TensorType`` name: ``INT8``, ``INT32``, ``FLOAT32``..."""
    quantization: Quantization | None
    data: np.ndarray | None
    """The raw constant (the file's bytes viewed as ``dtype``, reshaped), None for an
    activation."""


@dataclass(frozen=True)
class Operator:
    index: int
    op: str
    """The builtin operator's name: ``CONV_2D``, ``DEPTHWISE_CONV_2D``..."""
    inputs: tuple[int, ...]
    outputs: tuple[int, ...]
    options: dict[str, Any] = field(default_factory=dict)
    """The options this reader knows for the operator (strides, padding, fused activation
    as their schema names), empty for the others."""


@dataclass(frozen=True)
class TfliteGraph:
    inputs: tuple[int, ...]
    outputs: tuple[int, ...]
    tensors: tuple[TensorInfo, ...]
    operators: tuple[Operator, ...]

    def dequantized(self, index: int) -> np.ndarray:
        """Constant tensor ``index`` as float32: ``scale * (q - zero_point)``, broadcast
        along the quantized axis for per-channel scales; a float constant as it is."""
        tensor = self.tensors[index]
        if tensor.data is None:
            raise ValueError(f"tensor {index} ({tensor.name}) is not a constant")
        if tensor.dtype == FLOAT32:
            return tensor.data.astype(np.float32)
        q = tensor.quantization
        if q is None:
            raise ValueError(f"tensor {index} ({tensor.name}) is {tensor.dtype} without quantization parameters")
        shape = [1] * tensor.data.ndim
        if q.scale.size > 1:
            if tensor.data.ndim == 0 or tensor.data.shape[q.axis] != q.scale.size:
                raise ValueError(f"tensor {index} ({tensor.name}): {q.scale.size} scales along axis {q.axis} "
                                 f"of shape {tensor.data.shape}")
            shape[q.axis] = q.scale.size
        scale = q.scale.astype(np.float64).reshape(shape)
        zero = q.zero_point.astype(np.float64).reshape(shape)
        return (scale * (tensor.data.astype(np.float64) - zero)).astype(np.float32)


def _enum_names(enum_class: type) -> dict[int, str]:
    return {v: k for k, v in vars(enum_class).items() if not k.startswith("_") and isinstance(v, int)}


def _import_tflite() -> Any:
    try:
        import tflite  # the schema's generated flatbuffer classes, pure Python
    except ImportError as err:
        raise ImportError("reading .tflite files needs the 'tflite' package: pip install -e '.[lite]'") from err
    return tflite


def read_tflite_graph(data: bytes) -> TfliteGraph:
    """Parse a .tflite flatbuffer with one subgraph into a :class:`TfliteGraph`.

    Raises ValueError when the bytes are not a TFLite model or hold a structure this reader
    does not handle (several subgraphs, buffers stored outside the flatbuffer)."""
    tflite = _import_tflite()
    if len(data) < 8 or data[4:8] != FILE_IDENTIFIER:
        raise ValueError(f"not a TFLite flatbuffer (bytes 4..8 are {data[4:8]!r}, expected {FILE_IDENTIFIER!r})")
    try:
        return _parse(tflite, data)
    except ValueError:
        raise
    except Exception as err:
        # A truncated or corrupt flatbuffer surfaces as out-of-range reads (IndexError,
        # struct.error...) deep in the generated classes: one malformed-file error.
        raise ValueError(f"malformed TFLite flatbuffer: {type(err).__name__}: {err}") from err


def _parse(tflite: Any, data: bytes) -> TfliteGraph:
    model = tflite.Model.GetRootAsModel(data, 0)
    if model.SubgraphsLength() != 1:
        raise ValueError(f"expected one subgraph, found {model.SubgraphsLength()}")
    graph = model.Subgraphs(0)
    type_names = _enum_names(tflite.TensorType)
    op_names = _enum_names(tflite.BuiltinOperator)
    dtypes = {INT8: np.int8, INT32: np.int32, FLOAT32: np.float32, "UINT8": np.uint8, "INT64": np.int64}

    tensors = []
    for i in range(graph.TensorsLength()):
        t = graph.Tensors(i)
        dtype = type_names.get(t.Type(), str(t.Type()))
        shape = tuple(int(s) for s in t.ShapeAsNumpy()) if t.ShapeLength() else ()
        buffer = model.Buffers(t.Buffer())
        if buffer.Offset() > 1:
            raise ValueError(f"tensor {i} keeps its data outside the flatbuffer (offset {buffer.Offset()})")
        raw = None
        if buffer.DataLength():
            if dtype not in dtypes:
                raise ValueError(f"tensor {i} has constant data of unsupported type {dtype}")
            raw = np.frombuffer(buffer.DataAsNumpy().tobytes(), dtype=dtypes[dtype]).reshape(shape)
        tensors.append(TensorInfo(i, t.Name().decode("utf-8", "replace"), shape, dtype, _quantization(t), raw))

    operators = []
    for i in range(graph.OperatorsLength()):
        op = graph.Operators(i)
        code = model.OperatorCodes(op.OpcodeIndex())
        # Codes past 127 live in BuiltinCode; older files only fill DeprecatedBuiltinCode.
        name = op_names.get(max(code.BuiltinCode(), code.DeprecatedBuiltinCode()), "UNKNOWN")
        operators.append(Operator(i, name, tuple(int(x) for x in op.InputsAsNumpy()),
                                  tuple(int(x) for x in op.OutputsAsNumpy()), _options(tflite, op)))
    return TfliteGraph(tuple(int(x) for x in graph.InputsAsNumpy()), tuple(int(x) for x in graph.OutputsAsNumpy()),
                       tuple(tensors), tuple(operators))


def _quantization(tensor: Any) -> Quantization | None:
    q = tensor.Quantization()
    if q is None or not q.ScaleLength():
        return None
    return Quantization(q.ScaleAsNumpy().astype(np.float32).copy(), q.ZeroPointAsNumpy().astype(np.int64).copy(),
                        int(q.QuantizedDimension()))


def _options(tflite: Any, op: Any) -> dict[str, Any]:
    """The options of the operators a convolutional classifier uses, by schema name."""
    kinds = {
        tflite.BuiltinOptions.Conv2DOptions: (tflite.Conv2DOptions, ("Padding", "StrideH", "StrideW",
                                                                      "FusedActivationFunction",
                                                                      "DilationHFactor", "DilationWFactor")),
        tflite.BuiltinOptions.DepthwiseConv2DOptions: (tflite.DepthwiseConv2DOptions,
                                                       ("Padding", "StrideH", "StrideW", "DepthMultiplier",
                                                        "FusedActivationFunction", "DilationHFactor",
                                                        "DilationWFactor")),
        tflite.BuiltinOptions.ReducerOptions: (tflite.ReducerOptions, ("KeepDims",)),
        tflite.BuiltinOptions.FullyConnectedOptions: (tflite.FullyConnectedOptions,
                                                      ("FusedActivationFunction", "WeightsFormat", "KeepNumDims")),
        tflite.BuiltinOptions.SplitOptions: (tflite.SplitOptions, ("NumSplits",)),
    }
    kind = kinds.get(op.BuiltinOptionsType())
    table = op.BuiltinOptions()
    if kind is None or table is None:
        return {}
    cls, fields = kind
    options = cls()
    options.Init(table.Bytes, table.Pos)
    out: dict[str, Any] = {f: getattr(options, f)() for f in fields}
    if "Padding" in out:
        out["Padding"] = _enum_names(tflite.Padding)[out["Padding"]]
    if "FusedActivationFunction" in out:
        out["FusedActivationFunction"] = _enum_names(tflite.ActivationFunctionType)[out["FusedActivationFunction"]]
    return out
