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

from cache_schema import UNLABELLED, CacheConfig, InvalidInput, open_cache

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
        identity = reader.identity
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
        raise InvalidInput(f"{path} has no labelled clip with status ok; extract a labelled dataset into it first")
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
        raise InvalidInput(f"unknown modality {modality!r}; choose one of {MODALITIES}")
    if fusion not in FUSIONS:
        raise InvalidInput(f"unknown fusion {fusion!r}; choose one of {FUSIONS}")
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


@dataclass(frozen=True)
class HeadInputs:
    """What a run's heads read for a set of clips: per stream, the standardised features
    ``[N, T, D]`` and step mask ``[N, T]`` (see :func:`stream_inputs`), plus each
    modality's own mask and the labels.

    Training builds these once per run and gathers batches out of them: standardising,
    scaling and concatenating 1,400-wide features anew for every batch used to cost more
    than the head itself (each is a fresh pass over, and allocation of, the whole batch).
    """

    streams: dict[str, tuple[Tensor, Tensor]]
    video_mask: Tensor   # [N, T] bool
    audio_mask: Tensor   # [N, T] bool
    label: Tensor        # [N] int64
    video_dim: int       # where the fused stream's columns split (see stream_inputs)

    def take(self, idx: Tensor | np.ndarray) -> "HeadInputs":
        idx = torch.as_tensor(idx, dtype=torch.long)
        return HeadInputs({s: (x[idx], m[idx]) for s, (x, m) in self.streams.items()},
                          self.video_mask[idx], self.audio_mask[idx], self.label[idx], self.video_dim)

    def __len__(self) -> int:
        return int(self.label.shape[0])


def feature_columns(stream: str, width: int) -> int:
    """How many leading columns of a stream are backbone features; the fused stream ends
    with its two presence channels, which input dropout must leave alone."""
    return width - 2 if stream == "fused" else width


class BatchGatherer:
    """Gathers training batches out of :class:`HeadInputs` into memory that is reused from
    batch to batch. A fresh batch of 1,400-wide features is megabytes that the allocator
    hands back to the system and faults in again every step: on CPU that cost more than
    the gather itself. A gathered batch is valid until the next ``take``."""

    def __init__(self, inputs: HeadInputs, batch_size: int) -> None:
        self.inputs = inputs
        self.buffers = {s: torch.empty((batch_size, *x.shape[1:]), dtype=x.dtype, device=x.device)
                        for s, (x, _) in inputs.streams.items()}

    def take(self, idx: Tensor) -> HeadInputs:
        n, src = len(idx), self.inputs
        streams = {s: (torch.index_select(x, 0, idx, out=self.buffers[s][:n]), m[idx])
                   for s, (x, m) in src.streams.items()}
        return HeadInputs(streams, src.video_mask[idx], src.audio_mask[idx], src.label[idx], src.video_dim)


def drop_features(batch: HeadInputs, p: float, generator: torch.Generator) -> HeadInputs:
    """Training augmentation: each clip loses whole feature dimensions (the same ones at
    every step; survivors scaled by 1/(1-p), the fused stream's presence channels kept).
    Frozen-backbone features are wide and, on small training sets, easy to memorise; this
    was worth several points of fused accuracy on the synthetic benchmark. It scales the
    gathered batch in place (see :class:`BatchGatherer`): one pass, no new batch. So pass
    it a batch from ``BatchGatherer.take`` or ``HeadInputs.take`` (copies), never the
    run's own inputs, which it would change for good."""
    if p <= 0:
        return batch
    for s, (x, _) in batch.streams.items():
        keep = torch.rand((x.shape[0], 1, x.shape[2]), generator=generator, dtype=x.dtype, device=x.device)
        keep = keep.ge_(p).div_(1 - p) if p < 1 else keep.zero_()
        keep[..., feature_columns(s, x.shape[-1]):] = 1.0
        x.mul_(keep)
    return batch


def drop_modalities(inputs: HeadInputs, p: float, generator: torch.Generator) -> HeadInputs:
    """Training augmentation (ModDrop, Neverova et al. 2015): each clip loses its whole
    video or its whole audio with probability ``p`` (either one, evenly), exactly as if the
    stream were absent from the file (mask False, features zero, presence channel 0). It
    stops an early-fusion head from leaning on the stronger or wider stream alone, and
    teaches it the missing-modality case it will meet at test time. A clip never loses its
    only stream."""
    if p <= 0:
        return inputs
    n = len(inputs)
    drop = torch.rand(n, generator=generator) < p
    which_video = torch.rand(n, generator=generator) < 0.5
    has_v, has_a = inputs.video_mask.any(1), inputs.audio_mask.any(1)
    drop_v = drop & which_video & has_a
    drop_a = drop & ~which_video & has_v
    vm = inputs.video_mask & ~drop_v.unsqueeze(1)
    am = inputs.audio_mask & ~drop_a.unsqueeze(1)
    streams = {}
    for s, (x, m) in inputs.streams.items():
        if s == "video":
            streams[s] = (torch.where(vm.unsqueeze(-1), x, 0.0), vm)
        elif s == "audio":
            streams[s] = (torch.where(am.unsqueeze(-1), x, 0.0), am)
        else:  # fused: [video (Dv) | audio (Da) | video present | audio present]
            dv, da = inputs.video_dim, x.shape[-1] - 2 - inputs.video_dim
            keep = torch.cat([vm.unsqueeze(-1).expand(-1, -1, dv), am.unsqueeze(-1).expand(-1, -1, da),
                              vm.unsqueeze(-1), am.unsqueeze(-1)], dim=-1)
            streams[s] = (torch.where(keep, x, 0.0), vm | am)
    return HeadInputs(streams, vm, am, inputs.label, inputs.video_dim)


def has_modality(clips: Clips, modality: str) -> np.ndarray:
    """Which clips hold at least one step of the modality (fused: of either stream)."""
    if modality == "video":
        m = clips.video_mask
    elif modality == "audio":
        m = clips.audio_mask
    else:
        m = clips.video_mask | clips.audio_mask
    return m.any(1).numpy()
