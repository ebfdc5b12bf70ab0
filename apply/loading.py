"""Loading a trained run for new media, and checking that its features can be reproduced.

A run directory records the identity of the cache it was trained on. The backbones named
there are loaded again and compared with it (weights checksum, dimension, preprocessing)
through the cache contract's own sameness rule (``cache_schema.backbone_differences``), so the head only ever sees features of the
kind it was trained on. A run whose backbones cannot be reproduced is refused with what
differs and how to fix it (``BackboneMismatch``).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from cache_schema import (SAMPLE_RATE, AvarError, BackboneInfo, CacheConfig, InvalidInput, backbone_differences,
                          informational_differences)
from extract.backbones import AudioBackbone, AudioWindowing, VideoBackbone, load_audio_backbone, load_video_backbone
from extract.backbones import require_runtime, resolve_device, resolve_precision
from temporal.evaluate import load_run
from temporal.metrics import resolve_normal_class
from temporal.rundir import RunDir

from .predictor import PredictConfig, Predictor

logger = logging.getLogger(__name__)

class BackboneMismatch(AvarError):
    """The run's features came from backbones that cannot be reproduced here."""


class AbsentVideo:
    """Stands in for the video backbone of an audio-only run: the head never reads video,
    so frames are shrunk to nothing and their features are zeros."""

    def __init__(self, dim: int) -> None:
        self.dim = dim

    @staticmethod
    def transform(image: Image.Image) -> torch.Tensor:
        return torch.zeros(3, 1, 1)

    def embed(self, images: torch.Tensor) -> torch.Tensor:
        return torch.zeros(images.shape[0], self.dim)


class AbsentAudio:
    """Stands in for the audio backbone of a video-only run (features are zeros)."""

    def __init__(self, dim: int) -> None:
        self.dim = dim

    def embed(self, clips: Sequence[tuple[np.ndarray, np.ndarray]],
              origins: Sequence[int] | None = None) -> list[np.ndarray]:
        return [np.zeros((len(bounds), self.dim), np.float32) for _, bounds in clips]


def load_checked_backbone(kind: str, expected: BackboneInfo | dict[str, Any], override: str | None, device: str,
                          precision: str, runtime: str = "torch") -> VideoBackbone | AudioBackbone:
    """The backbone a run's features came from (or ``override``, a local copy), refused
    with what differs when it is not the same. ``expected`` is the run's record of it (a
    dict is read as a :class:`~cache_schema.BackboneInfo`; one lacking a field is refused).
    An audio backbone is built with the windowing the run recorded (clip windows, or causal
    step windows and their context), so its windows are the cache's. The ``runtime`` that
    runs it is free, as the precision is: not identity (the features differ in rounding)."""
    if not isinstance(expected, BackboneInfo):
        try:
            expected = BackboneInfo.from_dict(expected)
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            detail = f"no {exc}" if isinstance(exc, KeyError) else str(exc)
            raise BackboneMismatch(f"the run's record of its {kind} backbone is incomplete ({detail}); "
                                   "retrain the run with this version of `train`") from None
    name = override or expected.name
    flag = f"--{kind}-model"
    try:
        if kind == "audio":
            windowing = AudioWindowing.from_preprocessing(expected.preprocessing)
            backbone = load_audio_backbone(name, device=device, precision=precision, windowing=windowing,
                                           runtime=runtime)
        else:
            backbone = load_video_backbone(name, device=device, precision=precision, runtime=runtime)
    except AvarError as exc:
        raise BackboneMismatch(
            f"cannot load the {kind} backbone {name!r} that this run's features came from ({exc}). "
            f"Pass {flag} PATH to a local copy of the same weights (sha256 {expected.checksum[:12]}…)."
        ) from exc
    loaded = backbone.describe()
    diffs = backbone_differences(kind, expected, loaded)
    for line in informational_differences(kind, expected, loaded):
        logger.warning("%s; the tensors are the same, going on", line)
    if diffs:
        raise BackboneMismatch(
            f"the {kind} backbone {name!r} loaded here is not the one this run was trained on: "
            + "; ".join(diffs) + f". Pass {flag} PATH to the weights the run's cache was extracted with "
            f"(recorded name {expected.name!r}), or retrain the head on a cache of these backbones."
        )
    return backbone


def load_predictor(rundir: str | Path, config: PredictConfig = PredictConfig()) -> Predictor:
    """The run's head and the backbones of the cache it was trained on, checked.

    Raises an ``AvarError`` for a path that is not a finished run, and ``BackboneMismatch``
    when the backbones cannot be loaded or differ from the run's."""
    rundir = Path(rundir)
    model, run = load_run(rundir)
    source = RunDir(rundir).config
    identity = run.cache_identity or {}
    missing = [k for k in ("video_backbone", "audio_backbone", "steps") if identity.get(k) is None]
    if missing:
        raise BackboneMismatch(f"{source} records no {', '.join(missing)} for its cache: it cannot "
                               "say which backbones made its features. Retrain it with this version of `train`.")
    # Typed, through the cache contract: older runs lack sample_rate / feature_dtype (then 16 kHz, float32)
    defaults = {"sample_rate": SAMPLE_RATE, "feature_dtype": "float32", "class_names": list(run.class_names)}
    try:
        cache = CacheConfig.from_attrs({**defaults, **{k: v for k, v in identity.items() if v is not None}})
    except AvarError as exc:  # CacheSchemaError: a field missing or of the wrong type
        raise BackboneMismatch(f"{source} records its cache's identity incompletely ({exc}); it cannot say which "
                               "backbones made its features. Retrain it with this version of `train`.") from None
    if cache.sample_rate != SAMPLE_RATE:
        raise BackboneMismatch(f"the run's cache has audio at {cache.sample_rate} Hz; this pipeline decodes at "
                               f"{SAMPLE_RATE} Hz. Re-extract the cache and retrain.")
    device = resolve_device(config.device)
    require_runtime(config.runtime, device)  # a missing package is the user's one line, not a backbone mismatch
    streams = set(run.streams or model.streams)
    needs_video = bool(streams & {"fused", "video"})
    needs_audio = bool(streams & {"fused", "audio"})
    video = load_checked_backbone("video", cache.video, config.video_model, device, config.precision,
                                  config.runtime) if needs_video else AbsentVideo(cache.video.dim)
    audio = load_checked_backbone("audio", cache.audio, config.audio_model, device, config.precision,
                                  config.runtime) \
        if needs_audio else AbsentAudio(cache.audio.dim)
    layout = cache.layout
    if layout.grid and config.window is not None:
        raise InvalidInput(f"{rundir} was trained on {layout.describe()} (a time grid): predict scores each whole file "
                           "at that grid, full length, and its step scores are the timeline; --window/--hop cut "
                           "fixed-step clips and do not apply. Drop --window/--hop")
    logger.info("run %s: %s head on %s, %s, classes %s", rundir, run.train.head, run.train.modality,
                layout.describe(), ", ".join(run.class_names))
    normal, _ = resolve_normal_class(run.train.normal_class, run.class_names)
    predictor = Predictor(model, run.class_names, layout, cache.feature_dtype,
                          video, audio, device=device,
                          precision=_precision_used(video, audio, device, config.precision), normal=normal)
    predictor.decoder(config)  # a hardware decoder asked for and missing is refused here, before any file
    return predictor


def _precision_used(video: object, audio: object, device: str, precision: str) -> str:
    """The precision the loaded backbones resolved ``precision`` (``auto``) to; the head
    runs at the same one. Absent streams have no backbone to ask."""
    for backbone in (video, audio):
        used = getattr(backbone, "precision", None)
        if isinstance(used, str):
            return used
    return resolve_precision(precision, device)

__all__ = ["AbsentAudio", "AbsentVideo", "BackboneMismatch", "load_checked_backbone",
           "load_predictor"]
