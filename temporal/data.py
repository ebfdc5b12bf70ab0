"""The cache in memory, and the choice of modality.

Stage 2 reads the whole cache once (a VAAR-sized cache is ~170 MB in fp32) and indexes
batches out of tensors: no per-sample file access, no DataLoader workers.

Modalities and masks. A step's features are only data where its mask is True; absent
streams are stored as zeros, and zeros must never be read as real audio or video:

* ``video`` / ``audio``: that stream's features; the step mask is that stream's mask. A
  clip with no step of that stream is excluded from the run and counted
  (``no_video`` / ``no_audio``).
* ``fused`` (early fusion, the paper's choice): video and audio concatenated per step,
  plus two 0/1 channels saying which of the two is present at that step, so a head can
  tell "silent" from "no audio track". The step mask is video OR audio; a clip needs at
  least one of them. The wider stream is scaled by sqrt(narrow dim / wide dim) so that
  both carry the same total variance per step (features arrive standardised per
  dimension): otherwise a 320-d stream outweighs a 32-d one tenfold in the first layer
  before anything is learnt. With the paper's 640 + 768 dims the factor is 0.91.
* late fusion uses the ``video`` and ``audio`` streams side by side, one head each (see
  ``temporal/model.py``).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from cache_schema import UNLABELLED, CacheConfig, open_cache

logger = logging.getLogger(__name__)

MODALITIES = ("fused", "video", "audio")
FUSIONS = ("early", "late")
STREAMS = ("fused", "video", "audio")


@dataclass(frozen=True)
class Clips:
    """Per-clip tensors (rows aligned); a batch is ``clips.take(idx)``."""

    video: Tensor        # [N, T, Dv] float32
    audio: Tensor        # [N, T, Da] float32
    video_mask: Tensor   # [N, T] bool
    audio_mask: Tensor   # [N, T] bool
    label: Tensor        # [N] int64

    def take(self, idx: Tensor | np.ndarray) -> "Clips":
        idx = torch.as_tensor(idx, dtype=torch.long)
        return Clips(self.video[idx], self.audio[idx], self.video_mask[idx], self.audio_mask[idx], self.label[idx])

    def __len__(self) -> int:
        return int(self.label.shape[0])


@dataclass(frozen=True)
class CacheData:
    """Every usable clip of a cache: status ``ok`` and labelled. ``left_out`` counts the
    clips that were not loaded and why (``error``, ``pending``, ``unlabelled``)."""

    path: Path
    config: CacheConfig
    identity: dict[str, Any]
    keys: np.ndarray     # [N] str
    groups: np.ndarray   # [N] str, the cache's group array (source video; default = key)
    clips: Clips
    left_out: dict[str, int] = field(default_factory=dict)

    @property
    def class_names(self) -> tuple[str, ...]:
        return self.config.class_names

    @property
    def steps(self) -> int:
        return self.config.steps

    def rows_of(self, keys: list[str] | tuple[str, ...]) -> np.ndarray:
        index = {k: i for i, k in enumerate(self.keys.tolist())}
        return np.array([index[k] for k in keys if k in index], dtype=np.int64)

    def pretrained_backbones(self) -> dict[str, Any]:
        v, a = self.config.video, self.config.audio
        return {"video": v.pretrained, "audio": a.pretrained, "both": v.pretrained and a.pretrained,
                "video_backbone": v.name, "audio_backbone": a.name}


def load_cache(path: str | Path) -> CacheData:
    """Read every ``ok``, labelled clip of the cache into memory (float32)."""
    path = Path(path)
    with open_cache(path) as reader:
        counts = reader.counts()
        d = reader.load(fields=("group", "label", "video", "audio", "video_mask", "audio_mask"), only_ok=True)
        config = reader.config
        identity = {k: reader.attrs.get(k) for k in config.identity()}
    labels = d["label"].astype(np.int64)
    labelled = labels != UNLABELLED
    left_out = {"error": counts["error"], "pending": counts["pending"], "unlabelled": int((~labelled).sum())}
    if counts["pending"]:
        logger.warning("%s: %d clips are still pending (extraction unfinished); they are left out",
                       path, counts["pending"])
    if counts["error"]:
        logger.info("%s: %d clips failed extraction (status error); they are left out", path, counts["error"])
    keep = np.flatnonzero(labelled)
    if len(keep) == 0:
        raise ValueError(f"{path} has no labelled clip with status ok; extract a labelled dataset into it first")
    clips = Clips(
        video=torch.from_numpy(np.ascontiguousarray(d["video"][keep])),
        audio=torch.from_numpy(np.ascontiguousarray(d["audio"][keep])),
        video_mask=torch.from_numpy(np.ascontiguousarray(d["video_mask"][keep])),
        audio_mask=torch.from_numpy(np.ascontiguousarray(d["audio_mask"][keep])),
        label=torch.from_numpy(labels[keep]),
    )
    return CacheData(path, config, identity, d["key"][keep], d["group"][keep], clips, left_out)


def streams_for(modality: str, fusion: str) -> tuple[str, ...]:
    """The input streams a run needs: one head per stream."""
    if modality not in MODALITIES:
        raise ValueError(f"unknown modality {modality!r}; choose one of {MODALITIES}")
    if fusion not in FUSIONS:
        raise ValueError(f"unknown fusion {fusion!r}; choose one of {FUSIONS}")
    if modality == "fused":
        return ("fused",) if fusion == "early" else ("video", "audio")
    return (modality,)


def stream_dim(stream: str, video_dim: int, audio_dim: int) -> int:
    return {"fused": video_dim + audio_dim + 2, "video": video_dim, "audio": audio_dim}[stream]


def stream_balance(video_dim: int, audio_dim: int) -> tuple[float, float]:
    """Factors that give both streams equal total variance in the fused input."""
    narrow = min(video_dim, audio_dim)
    return (narrow / video_dim) ** 0.5, (narrow / audio_dim) ** 0.5


def stream_inputs(clips: Clips, stream: str) -> tuple[Tensor, Tensor]:
    """Features ``[B, T, D]`` and step mask ``[B, T]`` of one stream (see module doc)."""
    if stream == "video":
        return clips.video, clips.video_mask
    if stream == "audio":
        return clips.audio, clips.audio_mask
    if stream == "fused":
        vm, am = clips.video_mask, clips.audio_mask
        wv, wa = stream_balance(clips.video.shape[-1], clips.audio.shape[-1])
        x = torch.cat([clips.video * wv, clips.audio * wa, vm.unsqueeze(-1).to(clips.video.dtype),
                       am.unsqueeze(-1).to(clips.video.dtype)], dim=-1)
        return x, vm | am
    raise ValueError(f"unknown stream {stream!r}; choose one of {STREAMS}")


def drop_modalities(clips: Clips, p: float, generator: torch.Generator) -> Clips:
    """Training augmentation (ModDrop, Neverova et al. 2015): each clip loses its whole
    video or its whole audio with probability ``p`` (either one, evenly), exactly as if the
    stream were absent from the file (mask False, features zero). It stops an early-fusion
    head from leaning on the stronger or wider stream alone, and teaches it the
    missing-modality case it will meet at test time. A clip never loses its only stream."""
    if p <= 0:
        return clips
    n = len(clips)
    drop = torch.rand(n, generator=generator) < p
    which_video = torch.rand(n, generator=generator) < 0.5
    has_v, has_a = clips.video_mask.any(1), clips.audio_mask.any(1)
    drop_v = drop & which_video & has_a
    drop_a = drop & ~which_video & has_v
    vm = clips.video_mask & ~drop_v.unsqueeze(1)
    am = clips.audio_mask & ~drop_a.unsqueeze(1)
    return Clips(clips.video * vm.unsqueeze(-1), clips.audio * am.unsqueeze(-1), vm, am, clips.label)


def has_modality(clips: Clips, modality: str) -> np.ndarray:
    """Which clips hold at least one step of the modality (fused: of either stream)."""
    if modality == "video":
        m = clips.video_mask
    elif modality == "audio":
        m = clips.audio_mask
    else:
        m = clips.video_mask | clips.audio_mask
    return m.any(1).numpy()
