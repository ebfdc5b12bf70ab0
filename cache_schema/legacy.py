"""Caches written before preprocessing became named fields: their layout, and its upgrade.

Until then the backbones described their preprocessing partly in sentences (see
``git show f5aa983:extract/video_backbone.py`` and ``:extract/audio_backbone.py``; the
layout never changed before that commit). Those dicts were produced by fixed code, so the
exact layout is known and maps one to one onto today's fields: :func:`upgrade_preprocessing`
turns such a dict into the ``VideoPreprocessing`` / ``AudioPreprocessing`` form, so that an
old cache compares equal to today's backbones when the features are the same, and can be
resumed, extended, trained on and predicted with. A dict that is not exactly that layout
(another sentence, a missing or extra key) is returned unchanged, so whatever cannot be
recognised stays a difference: it is never guessed equal.

The cache files themselves are never rewritten: the upgrade happens on every read.
"""

from __future__ import annotations

from typing import Any, Mapping

from .preprocessing import (
    BATCHING_EQUAL_LENGTH,
    BATCHING_PADDED_WITH_MASK,
    NORMALIZE_NONE,
    NORMALIZE_ZERO_MEAN_UNIT_VAR,
    AudioPreprocessing,
    Normalization,
    VideoPreprocessing,
)

# -- the old video layout (extract/video_backbone.py up to f5aa983) -------------------
LEGACY_VIDEO_KEYS = frozenset({"library", "data_config", "transform", "channel_order", "pretrained_tag"})
LEGACY_VIDEO_TRANSFORM = (
    "timm.data.create_transform(**data_config) (eval: resize short side to size/crop_pct, centre crop, "
    "to [0,1], (x-mean)/std)"
)
LEGACY_DATA_CONFIG_KEYS = frozenset({"input_size", "interpolation", "mean", "std", "crop_pct", "crop_mode"})

# -- the old audio layout (extract/audio_backbone.py up to f5aa983) -------------------
LEGACY_AUDIO_KEYS = frozenset({
    "library", "sample_rate", "channels", "window_s", "windows", "normalize", "min_window_samples", "pad",
    "attention_mask", "batching", "layer", "frame_stride_s", "frame_time", "pooling",
})
LEGACY_AUDIO_SENTENCES = {
    "channels": "mono",
    "windows": "consecutive, non-overlapping, last one shorter",
    "pad": "zeros after normalisation",
    "layer": "last_hidden_state",
    "frame_time": "window start + (k*stride + receptive_field/2) / sample_rate",
    "pooling": "mean of frames with time in [start, end) of the step; nearest frame if none",
}
# f"per window: (x - mean) / sqrt(var + {NORM_EPS}) ..." with NORM_EPS = 1e-7
LEGACY_NORMALIZE = {
    "per window: (x - mean) / sqrt(var + 1e-07) as Wav2Vec2FeatureExtractor":
        Normalization(NORMALIZE_ZERO_MEAN_UNIT_VAR, eps=1e-7, per="window"),
    "none (feature extractor has do_normalize=False)": Normalization(NORMALIZE_NONE),
}
# the old code derived the batching sentence from attention_mask
LEGACY_BATCHING = {
    True: ("padded with attention mask", BATCHING_PADDED_WITH_MASK),
    False: ("equal-length windows only", BATCHING_EQUAL_LENGTH),
}


def is_legacy_video(d: Mapping[str, Any]) -> bool:
    if set(d) != LEGACY_VIDEO_KEYS or d["transform"] != LEGACY_VIDEO_TRANSFORM or d["channel_order"] != "RGB":
        return False
    config = d["data_config"]
    return (isinstance(config, Mapping) and set(config) == LEGACY_DATA_CONFIG_KEYS
            and isinstance(d["library"], str) and d["library"].startswith("timm "))


def is_legacy_audio(d: Mapping[str, Any]) -> bool:
    if set(d) != LEGACY_AUDIO_KEYS:
        return False
    if any(d[k] != v for k, v in LEGACY_AUDIO_SENTENCES.items()):
        return False
    if not isinstance(d["attention_mask"], bool) or d["normalize"] not in LEGACY_NORMALIZE:
        return False
    return d["batching"] == LEGACY_BATCHING[d["attention_mask"]][0] and str(d["library"]).startswith("transformers ")


def upgrade_preprocessing(d: Mapping[str, Any]) -> dict[str, Any]:
    """Today's form of a preprocessing dict: the old layouts upgraded, anything else as it is."""
    d = dict(d)
    try:
        if is_legacy_video(d):
            return VideoPreprocessing.from_timm_data_config(
                d["data_config"], library=d["library"], pretrained_tag=d["pretrained_tag"],
                channel_order=d["channel_order"],
            ).to_dict()
        if is_legacy_audio(d):
            return AudioPreprocessing(
                sample_rate=int(d["sample_rate"]),
                window_s=float(d["window_s"]),
                normalize=LEGACY_NORMALIZE[d["normalize"]],
                min_window_samples=int(d["min_window_samples"]),
                attention_mask=d["attention_mask"],
                batching=LEGACY_BATCHING[d["attention_mask"]][1],
                frame_stride_s=float(d["frame_stride_s"]),
                library=d["library"],
            ).to_dict()
    except (KeyError, TypeError, ValueError):  # the right keys with values of another shape: not ours
        return d
    return d


__all__ = ["is_legacy_audio", "is_legacy_video", "upgrade_preprocessing"]
