"""The frozen backbones of stage 1, one module per family, picked by name from one registry.

* ``timm_image``: timm image models (MobileViT-S by default), per-frame pooled features;
* ``hf_audio``: Hugging Face wav2vec2-family speech encoders (wav2vec2-base by default);
* ``frozen``: what every family shares (device, precision, freezing, weights checksum);
* ``loading``: names, presets and files -> loaded backbones.
"""

from .frozen import (
    AUTO,
    PRECISION_CHOICES,
    BackboneUnavailable,
    autocast_context,
    choose_precision,
    cpu_has_native_bf16,
    read_cpu_flags,
    resolve_device,
    resolve_precision,
)
from .hf_audio import AudioBackbone
from .loading import (
    AUDIO_PRESETS,
    BACKBONE_PRESETS,
    DEFAULT_AUDIO_CONTEXT_S,
    DEFAULT_AUDIO_MODEL,
    DEFAULT_VIDEO_MODEL,
    FP32_PRESETS,
    VIDEO_PRESETS,
    AudioWindowing,
    BackboneConfig,
    load_audio_backbone,
    load_backbones,
    load_video_backbone,
    preset_models,
    preset_precision,
)
from .timm_image import VideoBackbone, VideoTransform

__all__ = [
    "AUDIO_PRESETS", "AUTO", "AudioBackbone", "AudioWindowing", "BACKBONE_PRESETS", "BackboneConfig",
    "BackboneUnavailable", "DEFAULT_AUDIO_CONTEXT_S", "DEFAULT_AUDIO_MODEL", "DEFAULT_VIDEO_MODEL", "FP32_PRESETS",
    "PRECISION_CHOICES", "VIDEO_PRESETS", "VideoBackbone", "VideoTransform", "autocast_context", "choose_precision",
    "cpu_has_native_bf16", "load_audio_backbone", "load_backbones", "load_video_backbone", "preset_models",
    "preset_precision", "read_cpu_flags", "resolve_device", "resolve_precision",
]
