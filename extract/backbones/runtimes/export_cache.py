"""The exported backbones: one ONNX file per architecture, weights checksum, input signature
and exporter (version and kind), kept in the user's cache folder (``<user cache>/exports/``).

The key holds the state_dict checksum (``DescribedBackbone.checksum``), so a changed
checkpoint gets a new file and never a stale export; the input signature (the example's
shape, ``N`` for a dimension that varies: the batch, wav2vec2's samples), and the
exporter (torch's version and the ONNX opset), since another exporter may write another
graph. Both exported runtimes read the same file. It is written under a temporary name and
renamed into place (``cache_schema.atomic``): concurrent exporters (torchrun ranks, test
workers) write the same bytes and a reader never sees half a file.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import logging
import re
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from cache_schema import replace_atomically

from ..frozen import BackboneUnavailable, user_cache_dir
from .choice import runtime_version

logger = logging.getLogger(__name__)

OPSET = 18
EXPORTER = f"torch {runtime_version('torch')} onnx opset {OPSET}"
TRACER, DYNAMO = "torchscript", "dynamo"
"""torch's two ONNX exporters: the TorchScript tracer (a few times faster to export) where
only the batch varies; the dynamo exporter (``torch.export``) where another dimension
varies too, since the tracer bakes wav2vec2's sequence length into its graph."""


@dataclass(frozen=True)
class ExportSpec:
    """What a backbone's frozen forward takes: ``shape`` of an example input, the
    dimensions that vary (``dynamic``: index -> smallest size) and ``probe_shape``, the
    input the ``auto`` probe times (not part of the key)."""

    arch: str
    checksum: str
    shape: tuple[int, ...]
    dynamic: tuple[tuple[int, int], ...]
    probe_shape: tuple[int, ...]

    def signature(self) -> str:
        """The input's shape with ``N`` for varying dimensions: ``Nx3x256x256``, ``NxN``."""
        varying = dict(self.dynamic)
        return "x".join("N" if i in varying else str(d) for i, d in enumerate(self.shape))

    @property
    def exporter(self) -> str:
        return TRACER if all(i == 0 for i, _ in self.dynamic) else DYNAMO

    def key(self) -> dict:
        return {"arch": self.arch, "checksum": self.checksum, "input": self.signature(),
                "exporter": f"{EXPORTER} {self.exporter}"}

    def digest(self) -> str:
        return hashlib.sha256(json.dumps(self.key(), sort_keys=True).encode()).hexdigest()


def export_path(spec: ExportSpec, root: Path | None = None) -> Path:
    """Where ``spec``'s export lives: ``exports/<arch>/<checksum>/<input>-<key digest>.onnx``."""
    arch = re.sub(r"[^A-Za-z0-9._-]+", "_", spec.arch) or "model"
    return ((root or user_cache_dir()) / "exports" / arch / spec.checksum[:16]
            / f"{spec.signature()}-{spec.digest()[:16]}.onnx")


def exported_model(module: nn.Module, spec: ExportSpec, root: Path | None = None) -> Path:
    """The ONNX file of ``module`` (the frozen forward, one input ``x``, one output ``y``)
    for ``spec``, exported now if this key has none yet."""
    path = export_path(spec, root)
    if path.is_file():
        return path
    if module.training:
        raise ValueError(f"{spec.arch}: a frozen backbone is exported in eval mode; call .eval() first")
    started = time.perf_counter()
    example = torch.randn(spec.shape, generator=torch.Generator().manual_seed(0))
    # the exporters report their stages on stdout and warn about traced Python branches:
    # kept out of the user's terminal, in the debug log
    chatter = io.StringIO()
    # the exporter's libraries log an INFO line per rewritten node
    quiet = [logging.getLogger(name) for name in ("onnx_ir", "onnxscript")]
    levels = [q.level for q in quiet]
    for q in quiet:
        q.setLevel(logging.WARNING)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with contextlib.redirect_stdout(chatter), warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter("ignore")
            replace_atomically(path, lambda tmp: _export(module, example, spec, tmp))
    except OSError as err:
        raise BackboneUnavailable(f"cannot write the exported {spec.arch} to {path} ({err}): "
                                  "set AVAR_CACHE_DIR to a writable folder") from err
    except Exception as err:  # the exporters raise many types; the message says which operation
        raise BackboneUnavailable(f"cannot export {spec.arch} to ONNX ({type(err).__name__}: {str(err)[:300]}): "
                                  "use --runtime torch") from err
    finally:
        for q, level in zip(quiet, levels):
            q.setLevel(level)
    logger.debug("exporter output: %s", chatter.getvalue())
    logger.info("exported %s (%s) to %s in %.1fs", spec.arch, spec.signature(), path, time.perf_counter() - started)
    return path


def _export(module: nn.Module, example: torch.Tensor, spec: ExportSpec, target: Path) -> None:
    """Write ``module``'s ONNX graph (input ``x``, output ``y``, weights inside) to ``target``."""
    if spec.exporter == TRACER:
        torch.onnx.export(module, (example,), str(target), dynamo=False, input_names=["x"], output_names=["y"],
                          dynamic_axes={"x": {0: "batch"}, "y": {0: "batch"}}, opset_version=OPSET)
        return
    dims = {i: torch.export.Dim.DYNAMIC for i, _ in spec.dynamic}
    program = torch.onnx.export(module, (example,), dynamo=True, dynamic_shapes={"x": dims},
                                input_names=["x"], output_names=["y"], opset_version=OPSET)
    program.save(str(target), external_data=False)


__all__ = ["DYNAMO", "EXPORTER", "TRACER", "ExportSpec", "export_path", "exported_model"]
