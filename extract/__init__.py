"""Stage 1: media -> per-step features in the cache.

The public face, by job (each name is loaded on first use, so importing one small module
of the package, e.g. ``extract.sampling``, does not import timm and transformers):

* datasets as manifests: ``prepare_dataset``, ``build_manifest``, ``Manifest``, ``ManifestRow``,
  ``walk_media`` (links followed, loops reported), ``read_manifest_file`` / ``ManifestFileError``
  (``--dataset manifest``);
* the decoding engine: ``MediaReader`` (probe, frames nearest target times, 16 kHz audio),
  and its two callers ``decode_clip`` (a clip cut into T steps) and ``decode_windows``
  (sliding windows over a video of any length); ``probe``, ``MediaInfo``, ``DecodeError``;
  hardware decoding (``--decode``): ``resolve_decode``, ``HardwareDecoder``, ``DECODE_CHOICES``;
* the GPU path: ``TorchFrameTransform`` (frames converted and transformed as torch ops on
  their device), ``DeviceFeed`` (decoded batches staged onto a CUDA device);
* the frozen backbones, picked by name: ``load_video_backbone``, ``load_audio_backbone``,
  ``BACKBONE_PRESETS``, ``preset_models``, ``BackboneUnavailable``; the audio windowing
  (``AudioWindowing``: clip windows, or causal step windows for time grids and live mode,
  ``causal_step_windows``, ``DEFAULT_AUDIO_CONTEXT_S``);
* the pipeline: ``ExtractConfig``, ``run_extract`` (workers, batching, resume, torchrun),
  ``FeatureExtractor`` (backbones over decoded clips, as the cache stores them);
* XD-Violence from the features the field released (XDVioDet, VadCLIP) instead of media:
  ``import_features``, ``ImportConfig``, ``RELEASED_FORMATS``.
"""

from __future__ import annotations

import importlib
from typing import Any

_WHERE = {
    "prepare_dataset": "datasets", "DATASET_NAMES": "datasets",
    "build_manifest": "datasets", "Manifest": "datasets", "ManifestRow": "datasets", "VAAR_CLASSES": "datasets",
    "walk_media": "datasets", "read_manifest_file": "datasets", "ManifestFileError": "datasets",
    "MediaReader": "media_reader", "DecodeStats": "media_reader", "FrameGroup": "media_reader",
    "probe": "probe", "MediaInfo": "probe", "DecodeError": "probe", "ClipTimeout": "probe",
    "ImplausibleTimeline": "probe",
    "decode_clip": "decode", "DecodedClip": "decode",
    "decode_windows": "windows", "DecodedWindow": "windows", "plan_windows": "windows",
    "resolve_decode": "hw_decode", "HardwareDecoder": "hw_decode", "DECODE_CHOICES": "hw_decode",
    "on_device": "hw_decode",
    "TorchFrameTransform": "frame_tensors", "DeviceFeed": "gpu_feed",
    "load_video_backbone": "backbones", "load_audio_backbone": "backbones", "VideoBackbone": "backbones",
    "AudioBackbone": "backbones", "BACKBONE_PRESETS": "backbones", "preset_models": "backbones",
    "BackboneUnavailable": "backbones", "resolve_device": "backbones",
    "AudioWindowing": "audio_windows", "DEFAULT_AUDIO_CONTEXT_S": "audio_windows",
    "causal_step_windows": "audio_windows",
    "autocast_context": "backbones",
    "ExtractConfig": "extract_config", "ExtractSummary": "extract_config", "run_extract": "pipeline",
    "FeatureExtractor": "feature_extractor", "Decoded": "decode_workers", "iter_decoded": "decode_workers",
    "DistEnv": "distributed", "RankFailed": "distributed",
    "load_xd_violence": "datasets",
    "import_features": "datasets", "ImportConfig": "datasets",
    "ImportSummary": "datasets", "RELEASED_FORMATS": "datasets",
    "ReleasedFeaturesError": "datasets", "MissingFeatureFiles": "datasets",
}

__all__ = sorted(_WHERE)


def __getattr__(name: str) -> Any:
    if name not in _WHERE:
        raise AttributeError(f"module 'extract' has no attribute {name!r}")
    value = getattr(importlib.import_module(f"extract.{_WHERE[name]}"), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
