"""What a backbone does to its input before the network sees it, as named fields.

Preprocessing is part of a cache's identity (other resizing or other audio windows give
other features), so it is recorded with every cache and compared field by field. The
fields are short enum-like values, not sentences, so that rewording a description never
invalidates a cache; each family's fields are named once, here, by a frozen dataclass
that the backbone fills in and the cache stores as ``to_dict()``.

This module knows no library: the video fields are derived from timm's ``data_config``
by :meth:`VideoPreprocessing.from_timm_data_config`, a pure function that mirrors timm's
eval transform (``tests/test_backbones.py`` checks it against the transform timm builds),
so that the legacy upgrade of old caches (``cache_schema.legacy``) can use it without timm.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any, Mapping

# timm's defaults when a data_config leaves crop_pct / crop_mode unset
# (timm.data.constants.DEFAULT_CROP_PCT, transforms_imagenet_eval's "center").
TIMM_DEFAULT_CROP_PCT = 0.875
TIMM_DEFAULT_CROP_MODE = "center"

# resize.edge: which edge(s) the resize fits to resize.size
RESIZE_EDGES = {"center": "shortest", "squash": "both", "border": "longest"}


@dataclass(frozen=True)
class Resize:
    """``edge``: "shortest" (aspect kept, the short side fits), "both" (squashed to
    ``size``) or "longest" (aspect kept, the long side fits); ``size`` [H, W]."""

    edge: str
    size: tuple[int, int]
    interpolation: str


@dataclass(frozen=True)
class Crop:
    """``mode`` as timm names it ("center", "squash", "border": centre crop, padded with
    the mean colour for "border"); ``size`` [H, W] is the network's input size."""

    mode: str
    size: tuple[int, int]
    crop_pct: float


@dataclass(frozen=True)
class VideoPreprocessing:
    """A frame's way from decoded RGB uint8 pixels to the network's input tensor:
    resize, crop, scale to ``input_scale`` ("unit_interval": x / 255), then
    ``(x - mean) / std`` per channel, channels in ``channel_order``.

    ``library`` and ``pretrained_tag`` describe where the values came from but do not
    define the tensors (see ``cache_schema.identity``)."""

    resize: Resize
    crop: Crop
    mean: tuple[float, ...]
    std: tuple[float, ...]
    channel_order: str = "RGB"
    input_scale: str = "unit_interval"
    library: str = ""
    pretrained_tag: str | None = None

    @classmethod
    def from_timm_data_config(cls, data_config: Mapping[str, Any], *, library: str = "",
                              pretrained_tag: str | None = None, channel_order: str = "RGB") -> "VideoPreprocessing":
        """The fields of ``timm.data.create_transform(**data_config)`` in eval mode (as
        ``transforms_imagenet_eval`` computes them: resize to floor(size / crop_pct),
        then crop to size)."""
        size = data_config["input_size"]
        h, w = (int(size[-2]), int(size[-1])) if isinstance(size, (tuple, list)) else (int(size), int(size))
        crop_pct = float(data_config.get("crop_pct") or TIMM_DEFAULT_CROP_PCT)
        mode = str(data_config.get("crop_mode") or TIMM_DEFAULT_CROP_MODE)
        mode = mode if mode in RESIZE_EDGES else TIMM_DEFAULT_CROP_MODE  # timm treats any other mode as centre
        scale = (math.floor(h / crop_pct), math.floor(w / crop_pct))
        return cls(
            resize=Resize(edge=RESIZE_EDGES[mode], size=scale, interpolation=str(data_config["interpolation"])),
            crop=Crop(mode=mode, size=(h, w), crop_pct=crop_pct),
            mean=tuple(float(x) for x in data_config["mean"]),
            std=tuple(float(x) for x in data_config["std"]),
            channel_order=channel_order,
            library=library,
            pretrained_tag=pretrained_tag,
        )

    def to_dict(self) -> dict[str, Any]:
        """The JSON form stored in a cache's ``preprocessing`` attribute (lists, not tuples)."""
        return _jsonable(asdict(self))

    @staticmethod
    def from_dict(d: Mapping[str, Any]) -> "VideoPreprocessing":
        r, c = d["resize"], d["crop"]
        return VideoPreprocessing(
            resize=Resize(str(r["edge"]), (int(r["size"][0]), int(r["size"][1])), str(r["interpolation"])),
            crop=Crop(str(c["mode"]), (int(c["size"][0]), int(c["size"][1])), float(c["crop_pct"])),
            mean=tuple(float(x) for x in d["mean"]),
            std=tuple(float(x) for x in d["std"]),
            channel_order=str(d["channel_order"]),
            input_scale=str(d["input_scale"]),
            library=str(d.get("library", "")),
            pretrained_tag=d.get("pretrained_tag"),
        )


# AudioPreprocessing's enum-like values, each meaning one rule of extract/audio_backbone.py
NORMALIZE_ZERO_MEAN_UNIT_VAR = "zero_mean_unit_var"  # (x - mean) / sqrt(var + eps), float32
NORMALIZE_NONE = "none"
BATCHING_PADDED_WITH_MASK = "padded_with_mask"  # windows zero-padded, attention mask given
BATCHING_EQUAL_LENGTH = "equal_length_only"  # only windows of the same length share a batch
WINDOWS_CONSECUTIVE = "consecutive"  # non-overlapping, from sample 0, the last one shorter
# one window per step, ending at the step's end: [max(0, min(a, b - context_s)), b), in samples
# rint(t * sample_rate); a step's feature is pooled from its own window only (no future audio)
WINDOWS_CAUSAL_STEP = "causal_step"
# the whole clip, as one waveform, however it is cut for memory (YAMNet: its patches are local)
WINDOWS_WHOLE_CLIP = "whole_clip"
PAD_ZEROS_AFTER_NORMALIZE = "zeros_after_normalize"  # to min_window_samples
# YAMNet's pad_waveform: zeros at the end to one patch, then to whole patch hops; a causal
# step window instead takes the whole patches that end at its end (zeros before a window
# shorter than one patch), so that its last patch always ends with the step
PAD_YAMNET = "yamnet_pad_end_causal_right_aligned"
BATCHING_INDEPENDENT_PATCHES = "independent_patches"  # patches are separate inputs: any batch
FRAME_TIME_RECEPTIVE_FIELD_CENTRE = "receptive_field_centre"  # window start + (k*stride + field/2) / rate
POOLING_MEAN_IN_STEP_ELSE_NEAREST = "mean_in_step_else_nearest"  # frames in [start, end); else nearest centre


@dataclass(frozen=True)
class Normalization:
    """``kind`` "zero_mean_unit_var" over each ``per`` unit ("window") with ``eps`` under
    the root, as Wav2Vec2FeatureExtractor does; or "none" (``eps`` and ``per`` None)."""

    kind: str
    eps: float | None = None
    per: str | None = None


@dataclass(frozen=True, kw_only=True)
class AudioPreprocessing:
    """A clip's way from decoded audio to per-step features: ``channels`` audio at
    ``sample_rate``, cut into ``windows``, each normalised, padded to at least
    ``min_window_samples``, run through the encoder in ``batching`` groups (with an
    attention mask or not), ``layer`` taken; each output frame is placed in time by
    ``frame_time`` (``frame_stride_s`` apart) and a step's feature is ``pooling`` of them.

    ``windows`` is "consecutive" (windows of ``window_s`` from the clip start; a step's
    frames may come from audio after it) or "causal_step" (one window per step, the step
    and up to ``context_s`` seconds before its end: only the past, as a live stream has it).
    ``context_s`` exists for "causal_step" only: it is None, and absent from ``to_dict()``,
    for "consecutive" windows, so the record of a clip-windowed cache is exactly what it was
    before causal windows existed (a cache without the field reads as "consecutive").

    ``library`` describes but does not define the features (see ``cache_schema.identity``)."""

    sample_rate: int
    channels: str = "mono"
    window_s: float
    windows: str = WINDOWS_CONSECUTIVE
    context_s: float | None = None
    normalize: Normalization
    min_window_samples: int
    pad: str = PAD_ZEROS_AFTER_NORMALIZE
    attention_mask: bool
    batching: str
    layer: str = "last_hidden_state"
    frame_stride_s: float
    frame_time: str = FRAME_TIME_RECEPTIVE_FIELD_CENTRE
    pooling: str = POOLING_MEAN_IN_STEP_ELSE_NEAREST
    frontend: dict[str, Any] | None = None
    """What turns samples into the encoder's input before the network, where that is not
    the waveform itself (YAMNet's log-mel patches: window, hop, FFT, mel bands, log offset,
    patch length and hop), as named fields; None, and absent from ``to_dict()``, for
    encoders that read the waveform (wav2vec2), so their records stay what they were."""
    library: str = ""

    def to_dict(self) -> dict[str, Any]:
        """The JSON form stored in a cache's ``preprocessing`` attribute (without
        ``context_s`` or ``frontend`` when they are None: see the class docstring)."""
        d = _jsonable(asdict(self))
        for optional in ("context_s", "frontend"):
            if d[optional] is None:
                del d[optional]
        return d

    @staticmethod
    def from_dict(d: Mapping[str, Any]) -> "AudioPreprocessing":
        n = d["normalize"]
        return AudioPreprocessing(
            sample_rate=int(d["sample_rate"]),
            window_s=float(d["window_s"]),
            normalize=Normalization(str(n["kind"]), None if n.get("eps") is None else float(n["eps"]), n.get("per")),
            min_window_samples=int(d["min_window_samples"]),
            attention_mask=bool(d["attention_mask"]),
            batching=str(d["batching"]),
            frame_stride_s=float(d["frame_stride_s"]),
            channels=str(d["channels"]),
            windows=str(d["windows"]),
            context_s=None if d.get("context_s") is None else float(d["context_s"]),
            pad=str(d["pad"]),
            layer=str(d["layer"]),
            frame_time=str(d["frame_time"]),
            pooling=str(d["pooling"]),
            frontend=None if d.get("frontend") is None else dict(d["frontend"]),
            library=str(d.get("library", "")),
        )


def _jsonable(value: Any) -> Any:
    if isinstance(value, (tuple, list)):
        return [_jsonable(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    return value


__all__ = [
    "AudioPreprocessing", "Crop", "Normalization", "Resize", "VideoPreprocessing",
    "NORMALIZE_ZERO_MEAN_UNIT_VAR", "NORMALIZE_NONE", "BATCHING_PADDED_WITH_MASK", "BATCHING_EQUAL_LENGTH",
    "WINDOWS_CAUSAL_STEP", "WINDOWS_CONSECUTIVE", "WINDOWS_WHOLE_CLIP", "PAD_ZEROS_AFTER_NORMALIZE", "PAD_YAMNET",
    "BATCHING_INDEPENDENT_PATCHES", "FRAME_TIME_RECEPTIVE_FIELD_CENTRE",
    "POOLING_MEAN_IN_STEP_ELSE_NEAREST",
]
