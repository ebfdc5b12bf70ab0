"""YAMNet (AudioSet, 521 classes) in PyTorch, with its weights dequantized from the int8
TFLite file that google-coral/coralmicro publishes (``models/yamnet_spectra_in.tflite``).

Why a port rather than LiteRT: torch batches many patches per call and runs on a GPU, and
the run-time path then needs only a pure-Python flatbuffer reader (``tflite_graph``), no
native interpreter. The port runs float activations on the dequantized weights, where
LiteRT requantizes every activation to int8; the two therefore differ by that rounding
(measured in tests/test_yamnet.py), not by design.

The network is YAMNet's ``_YAMNET_LAYER_DEFS``: a 3x3 stride-2 convolution, then 13
depthwise-separable blocks (3x3 depthwise, 1x1 pointwise), each convolution followed by
its folded BatchNorm (a bias in the file) and the activation the graph fuses (ReLU6 in
this file); global average pooling gives the 1024-d embedding, a fully connected layer
the 521 logits, a sigmoid the scores. TF's 'SAME' padding is asymmetric for stride 2 (the
extra row/column goes at the bottom/right), which :class:`SamePad2d` reproduces.

The layer list is read from the graph and checked against that table, operator by
operator, so a different file fails loudly instead of loading into the wrong places.
"""

from __future__ import annotations

import csv
import hashlib
import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from .frozen import BackboneUnavailable, freeze
from .tflite_graph import FLOAT32, Operator, TfliteGraph, read_tflite_graph

logger = logging.getLogger(__name__)

YAMNET_SHA256 = "0a266465c46718f3fcc4137366be82882a8c93bfcc4f0278581a11d11dddcdf9"
"""sha256 of google-coral/coralmicro ``models/yamnet_spectra_in.tflite`` (commit c9f665b)."""
YAMNET_FILE = "yamnet_spectra_in.tflite"
YAMNET_CLASS_MAP_FILE = "yamnet_class_map.csv"
"""tensorflow/models ``research/audioset/yamnet/yamnet_class_map.csv``, kept beside the .tflite."""
YAMNET_ENV = "AVAR_YAMNET"
EMBEDDING_DIM = 1024
NUM_CLASSES = 521
PATCH_SHAPE = (96, 64)
"""One input patch: 96 frames (0.96 s) by 64 mel bands."""

YAMNET_LAYER_DEFS: tuple[tuple[str, int, int, int], ...] = (
    # (layer, kernel, stride, filters), as yamnet.py's _YAMNET_LAYER_DEFS
    ("conv", 3, 2, 32),
    ("separable_conv", 3, 1, 64),
    ("separable_conv", 3, 2, 128),
    ("separable_conv", 3, 1, 128),
    ("separable_conv", 3, 2, 256),
    ("separable_conv", 3, 1, 256),
    ("separable_conv", 3, 2, 512),
    ("separable_conv", 3, 1, 512),
    ("separable_conv", 3, 1, 512),
    ("separable_conv", 3, 1, 512),
    ("separable_conv", 3, 1, 512),
    ("separable_conv", 3, 1, 512),
    ("separable_conv", 3, 2, 1024),
    ("separable_conv", 3, 1, 1024),
)

ACTIVATIONS = {"NONE": nn.Identity, "RELU": nn.ReLU, "RELU6": nn.ReLU6}
LAYERS_PER_CONV = 3
"""Modules per convolution in ``YamNet.tower``: SamePad2d, Conv2d, activation."""


def where_to_get(path: str | Path, reason: str) -> str:
    """The one-line BackboneUnavailable message: what is wrong and how to fix it."""
    return (f"YAMNet weights {path}: {reason}. Get {YAMNET_FILE} from google-coral/coralmicro "
            f"(models/{YAMNET_FILE}, sha256 {YAMNET_SHA256}) and name it with --audio-model PATH "
            f"or the {YAMNET_ENV} environment variable; nothing is downloaded.")


@dataclass(frozen=True)
class ConvSpec:
    """One convolution of the tower, as the graph holds it."""

    depthwise: bool
    in_channels: int
    out_channels: int
    kernel: int
    stride: int
    activation: str


def tower_specs(activations: Sequence[str] | None = None) -> list[ConvSpec]:
    """The 27 convolutions of :data:`YAMNET_LAYER_DEFS`, each with its activation
    (RELU6 unless given, one per convolution)."""
    specs: list[ConvSpec] = []
    channels = 1
    for kind, kernel, stride, filters in YAMNET_LAYER_DEFS:
        if kind == "conv":
            specs.append(ConvSpec(False, channels, filters, kernel, stride, "RELU6"))
        else:
            specs.append(ConvSpec(True, channels, channels, kernel, stride, "RELU6"))
            specs.append(ConvSpec(False, channels, filters, 1, 1, "RELU6"))
        channels = filters
    if activations is not None:
        if len(activations) != len(specs):
            raise ValueError(f"{len(activations)} activations for {len(specs)} convolutions")
        specs = [ConvSpec(s.depthwise, s.in_channels, s.out_channels, s.kernel, s.stride, a)
                 for s, a in zip(specs, activations)]
    return specs


class SamePad2d(nn.Module):
    """TF 'SAME' padding: output size ceil(input / stride), the total padding split with
    the smaller half before (top/left) and the larger after (bottom/right)."""

    def __init__(self, kernel: int, stride: int) -> None:
        super().__init__()
        self.kernel = kernel
        self.stride = stride

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pads: list[int] = []
        for size in (x.shape[-1], x.shape[-2]):  # F.pad wants the last dimension first
            total = max((math.ceil(size / self.stride) - 1) * self.stride + self.kernel - size, 0)
            pads += [total // 2, total - total // 2]
        if not any(pads):
            return x
        return nn.functional.pad(x, pads)


class YamNet(nn.Module):
    """YAMNet on log-mel patches: ``[B, 96, 64]`` -> (embeddings ``[B, 1024]``, scores
    ``[B, 521]``). Built empty; :func:`load_yamnet` fills it from the TFLite file."""

    def __init__(self, activations: Sequence[str] | None = None) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        for spec in tower_specs(activations):
            if spec.activation not in ACTIVATIONS:
                raise ValueError(f"unsupported fused activation {spec.activation}")
            layers.append(SamePad2d(spec.kernel, spec.stride))
            layers.append(nn.Conv2d(spec.in_channels, spec.out_channels, spec.kernel, spec.stride,
                                    groups=spec.in_channels if spec.depthwise else 1))
            layers.append(ACTIVATIONS[spec.activation]())
        self.tower = nn.Sequential(*layers)
        self.classifier = nn.Linear(EMBEDDING_DIM, NUM_CLASSES)

    def forward(self, patches: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if patches.dim() != 3 or tuple(patches.shape[1:]) != PATCH_SHAPE:
            raise ValueError(f"YamNet expects patches [B, 96, 64], got {list(patches.shape)}")
        # The graph's NHWC [1, 96, 64, 1]: height = frames, width = mel bands, one channel.
        # channels_last (NHWC in memory, as load_yamnet lays out the weights) made the
        # depthwise-separable tower ~25% faster on an AVX2 CPU at batch 32.
        x = self.tower(patches.unsqueeze(1).contiguous(memory_format=torch.channels_last))
        embeddings = x.mean(dim=(2, 3))
        return embeddings, torch.sigmoid(self.classifier(embeddings))

    def conv_layers(self) -> list[nn.Conv2d]:
        return [m for m in self.tower if isinstance(m, nn.Conv2d)]


def _expect(condition: bool, message: str) -> None:
    if not condition:
        raise ValueError(f"not the YAMNet graph this port expects: {message}")


def _chained(ops: Sequence[Operator], graph: TfliteGraph) -> None:
    """Each operator reads what the one before it wrote: the graph is one straight line."""
    def data_input(op: Operator) -> int:
        return op.inputs[1] if op.op == "SPLIT" else op.inputs[0]  # SPLIT reads (axis, data)

    for before, op in zip(ops, ops[1:]):
        _expect(len(before.outputs) == 1 and len(op.inputs) > (op.op == "SPLIT") and data_input(op) == before.outputs[0],
                f"operator {op.index} ({op.op}) does not read operator {before.index}'s output")
    _expect(ops[0].inputs[0] == graph.inputs[0] and ops[-1].outputs[0] == graph.outputs[0],
            "the operators do not run from the graph's input to its output")


def state_dict_from_graph(graph: TfliteGraph) -> tuple[dict[str, torch.Tensor], list[str]]:
    """YamNet's state dict (float32, torch layouts) and the activation of each convolution,
    read from the graph after checking it operator by operator against
    :data:`YAMNET_LAYER_DEFS`. Raises ValueError naming the first mismatch."""
    _expect(len(graph.inputs) == 1 and len(graph.outputs) == 1, "one input and one output")
    inp, out = graph.tensors[graph.inputs[0]], graph.tensors[graph.outputs[0]]
    _expect(inp.shape == (1, *PATCH_SHAPE) and inp.dtype == FLOAT32, f"input {inp.shape} {inp.dtype}")
    _expect(out.shape == (1, NUM_CLASSES) and out.dtype == FLOAT32, f"output {out.shape} {out.dtype}")
    ops = list(graph.operators)
    _chained(ops, graph)
    names = [op.op for op in ops]
    # Front: QUANTIZE, then only shape plumbing (RESHAPE to NHWC, a one-way SPLIT).
    _expect(names[0] == "QUANTIZE", f"starts with {names[0]}")
    first_conv = names.index("CONV_2D") if "CONV_2D" in names else len(names)
    for op in ops[1:first_conv]:
        _expect(op.op == "RESHAPE" or (op.op == "SPLIT" and op.options.get("NumSplits") == 1),
                f"operator {op.index} ({op.op}) before the first convolution")
    specs = tower_specs()
    convs = ops[first_conv:first_conv + len(specs)]
    tail = names[first_conv + len(specs):]
    _expect(tail == ["MEAN", "FULLY_CONNECTED", "LOGISTIC", "DEQUANTIZE"], f"after the tower: {tail}")

    state: dict[str, torch.Tensor] = {}
    activations: list[str] = []
    for position, (spec, op) in enumerate(zip(specs, convs, strict=True)):
        module_index = LAYERS_PER_CONV * position + 1  # YamNet.tower: pad, conv, activation
        expected_op = "DEPTHWISE_CONV_2D" if spec.depthwise else "CONV_2D"
        where = f"operator {op.index} ({op.op})"
        _expect(op.op == expected_op, f"{where}: expected {expected_op}")
        opts = op.options
        _expect(opts.get("Padding") == "SAME" and opts.get("StrideH") == spec.stride == opts.get("StrideW")
                and opts.get("DilationHFactor") == 1 == opts.get("DilationWFactor"),
                f"{where}: options {opts}, expected SAME, stride {spec.stride}, no dilation")
        _expect(opts.get("FusedActivationFunction") in ACTIVATIONS,
                f"{where}: fused activation {opts.get('FusedActivationFunction')}")
        _expect(len(op.inputs) == 3, f"{where}: {len(op.inputs)} inputs, expected input, weights, bias")
        weight = graph.dequantized(op.inputs[1])
        bias = graph.dequantized(op.inputs[2])
        if spec.depthwise:
            _expect(opts.get("DepthMultiplier") == 1, f"{where}: depth multiplier {opts.get('DepthMultiplier')}")
            _expect(weight.shape == (1, spec.kernel, spec.kernel, spec.out_channels),
                    f"{where}: weights {weight.shape}")
            weight = weight.transpose(3, 0, 1, 2)  # [1, kh, kw, C] -> [C, 1, kh, kw]
        else:
            _expect(weight.shape == (spec.out_channels, spec.kernel, spec.kernel, spec.in_channels),
                    f"{where}: weights {weight.shape}")
            weight = weight.transpose(0, 3, 1, 2)  # [O, kh, kw, I] -> [O, I, kh, kw]
        _expect(bias.shape == (spec.out_channels,), f"{where}: bias {bias.shape}")
        state[f"tower.{module_index}.weight"] = torch.from_numpy(np.ascontiguousarray(weight))
        state[f"tower.{module_index}.bias"] = torch.from_numpy(bias)
        activations.append(opts["FusedActivationFunction"])

    mean, fc = ops[first_conv + len(specs)], ops[first_conv + len(specs) + 1]
    axes = graph.tensors[mean.inputs[1]].data
    _expect(axes is not None and sorted(int(a) for a in axes.ravel()) == [1, 2],
            f"MEAN over axes {None if axes is None else axes.ravel().tolist()}, expected [1, 2] (time, frequency)")
    _expect(fc.options.get("FusedActivationFunction") == "NONE" and len(fc.inputs) == 3,
            f"FULLY_CONNECTED options {fc.options}")
    fc_weight, fc_bias = graph.dequantized(fc.inputs[1]), graph.dequantized(fc.inputs[2])
    _expect(fc_weight.shape == (NUM_CLASSES, EMBEDDING_DIM) and fc_bias.shape == (NUM_CLASSES,),
            f"FULLY_CONNECTED weights {fc_weight.shape}, bias {fc_bias.shape}")
    state["classifier.weight"] = torch.from_numpy(fc_weight)
    state["classifier.bias"] = torch.from_numpy(fc_bias)
    return state, activations


def load_yamnet(path: str | Path, expected_sha256: str | None = YAMNET_SHA256) -> YamNet:
    """YamNet with the weights of the TFLite file at ``path``, frozen (eval mode, no
    gradients), on the CPU. The file's sha256 must be ``expected_sha256`` (None skips the
    check, for tests of the structure checks). Anything wrong with the file, missing,
    unreadable, another file, or a graph of another shape, raises BackboneUnavailable with
    one line that says how to get the right one; nothing is ever downloaded."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as err:
        raise BackboneUnavailable(where_to_get(path, f"cannot be read ({err.strerror or err})")) from err
    digest = hashlib.sha256(data).hexdigest()
    if expected_sha256 is not None and digest != expected_sha256:
        raise BackboneUnavailable(where_to_get(path, f"sha256 is {digest}, not the expected one "
                                                     f"({len(data)} bytes; truncated or another file?)"))
    try:
        state, activations = state_dict_from_graph(read_tflite_graph(data))
    except (ValueError, ImportError) as err:
        raise BackboneUnavailable(where_to_get(path, str(err).replace("\n", " "))) from err
    model = YamNet(activations)
    model.load_state_dict(state, strict=True)
    model.to(memory_format=torch.channels_last)  # see YamNet.forward; values unchanged
    logger.info("YAMNet loaded from %s (sha256 %s, %d convolutions, activations %s)", path, digest[:12],
                len(activations), sorted(set(activations)))
    return freeze(model)


def yamnet_class_names(csv_path: str | Path) -> list[str]:
    """The 521 display names, in output order, from YAMNet's class map CSV
    (``index,mid,display_name``). A missing or malformed file raises BackboneUnavailable."""
    csv_path = Path(csv_path)
    try:
        with csv_path.open(newline="", encoding="utf-8") as handle:
            rows = list(csv.DictReader(handle))
    except (OSError, UnicodeDecodeError, csv.Error) as err:
        raise BackboneUnavailable(f"YAMNet class map {csv_path} cannot be read ({err}): it is "
                                  f"tensorflow/models research/audioset/yamnet/{YAMNET_CLASS_MAP_FILE}, "
                                  f"kept beside {YAMNET_FILE}.") from err
    try:
        indices = [int(row["index"]) for row in rows]
        names = [row["display_name"] for row in rows]
    except (KeyError, TypeError, ValueError):
        indices, names = [], []
    if indices != list(range(NUM_CLASSES)) or not all(names):
        raise BackboneUnavailable(f"YAMNet class map {csv_path} is not {NUM_CLASSES} rows of index,mid,display_name "
                                  f"numbered 0..{NUM_CLASSES - 1} (tensorflow/models "
                                  f"research/audioset/yamnet/{YAMNET_CLASS_MAP_FILE}).")
    return names
