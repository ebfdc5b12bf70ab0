"""The cache in memory, and the choice of modality.

Stage 2 reads the whole cache once (a VAAR-sized cache is ~170 MB in fp32) and indexes
batches out of tensors: no per-sample file access, no DataLoader workers.

Clips of different lengths. The cache is held in the ragged form of
``CacheReader.load_steps``: every clip's steps concatenated along one axis plus per-clip
``offsets`` (:class:`RaggedClips`), never padded to the longest clip (XD-Violence on 16-frame
snippets is ~900k steps of clips from 5 to 2,074 steps). A batch is padded to the
longest clip *of that batch* (:meth:`RaggedClips.pad`), with masks False on the padding, which
every head honours. A fixed-step (v1) cache has ``T`` steps per clip, so its padded
batches are exactly the dense ``[B, T, D]`` tensors of before (a view, no copy, when the
whole set is taken: :meth:`RaggedClips.dense`). A grid cache keeps its stored feature dtype
(float16 halves the memory) and batches are cast to float32 when padded.

Training caps a long clip at ``max_train_steps`` (:func:`cap_steps`): uniform index
sampling as XDVioDet (``np.linspace(0, T-1, N).astype(int)``) or average pooling into
``N`` bins as UR-DMU.

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
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from cache_schema import UNLABELLED, CacheConfig, InvalidInput, StepLayout, open_cache

logger = logging.getLogger(__name__)

MODALITIES = ("fused", "video", "audio")


def modalities_of(modality: str) -> tuple[str, ...]:
    """The streams a run of ``modality`` reads: ("video", "audio") for fused."""
    return ("video", "audio") if modality == "fused" else (modality,)
FUSIONS = ("early", "late")
STREAMS = ("fused", "video", "audio")


@dataclass(frozen=True)
class Clips:
    """A dense batch ``[B, T, ...]`` (padded to its longest clip), as the model reads it."""

    video: Tensor        # [B, T, Dv] float32
    audio: Tensor        # [B, T, Da] float32
    video_mask: Tensor   # [B, T] bool, False on padding
    audio_mask: Tensor   # [B, T] bool, False on padding
    label: Tensor        # [B] int64

    def take(self, idx: Tensor | np.ndarray) -> "Clips":
        idx = torch.as_tensor(idx, dtype=torch.long)
        return Clips(self.video[idx], self.audio[idx], self.video_mask[idx], self.audio_mask[idx], self.label[idx])

    def __len__(self) -> int:
        return int(self.label.shape[0])


@dataclass(frozen=True)
class RaggedClips:
    """Clips in the ragged form: per-step tensors with every clip's steps concatenated
    (clip ``i`` is rows ``offsets[i]:offsets[i+1]``) and per-clip labels. ``take`` gives a
    subset (still ragged), ``pad`` a dense :class:`Clips` padded to its longest clip."""

    video: Tensor        # [S, Dv] (float32, or the cache's dtype for grid caches)
    audio: Tensor        # [S, Da]
    video_mask: Tensor   # [S] bool
    audio_mask: Tensor   # [S] bool
    label: Tensor        # [N] int64
    offsets: Tensor      # [N + 1] int64

    @staticmethod
    def from_dense(video: Tensor, audio: Tensor, video_mask: Tensor, audio_mask: Tensor, label: Tensor) -> "RaggedClips":
        """``[N, T, ...]`` tensors as ragged clips of ``T`` steps each (views, no copy)."""
        n, t = video_mask.shape
        return RaggedClips(video.reshape(n * t, -1), audio.reshape(n * t, -1), video_mask.reshape(-1),
                     audio_mask.reshape(-1), label, torch.arange(n + 1, dtype=torch.long) * t)

    @property
    def lengths(self) -> Tensor:
        """Steps of each clip ``[N]``."""
        return self.offsets[1:] - self.offsets[:-1]

    @property
    def total_steps(self) -> int:
        return int(self.offsets[-1] - self.offsets[0])

    def uniform_steps(self) -> int | None:
        """``T`` when every clip has ``T`` steps (a fixed-step cache), else None."""
        lengths = self.lengths
        if len(lengths) == 0:
            return None
        t = int(lengths[0])
        return t if bool((lengths == t).all()) else None

    def clip_of_step(self) -> Tensor:
        """The clip index of each flat step row ``[S]``."""
        return torch.repeat_interleave(torch.arange(len(self)), self.lengths)

    def per_clip_sum(self, x: Tensor) -> Tensor:
        """Sum of a per-step quantity ``[S]`` over each clip's steps ``[N]``."""
        return torch.zeros(len(self), dtype=x.dtype).index_add_(0, self.clip_of_step(), x[int(self.offsets[0]):])

    def step_rows(self, idx: Tensor | np.ndarray) -> Tensor:
        """The flat step rows of clips ``idx``, in order."""
        return self._step_index(torch.as_tensor(idx, dtype=torch.long))[0]

    def _step_index(self, idx: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """For clips ``idx``, every step's flat row, the position of its clip in ``idx``,
        and its step number within the clip (each ``[sum of their lengths]``)."""
        lengths = self.lengths[idx]
        clip_of = torch.repeat_interleave(torch.arange(len(idx)), lengths)
        first = torch.cumsum(lengths, 0) - lengths
        pos = torch.arange(int(lengths.sum())) - first[clip_of]
        return self.offsets[idx][clip_of] + pos, clip_of, pos

    def take(self, idx: Tensor | np.ndarray) -> "RaggedClips":
        idx = torch.as_tensor(idx, dtype=torch.long)
        rows = self.step_rows(idx)
        offsets = torch.zeros(len(idx) + 1, dtype=torch.long)
        offsets[1:] = torch.cumsum(self.lengths[idx], 0)
        return RaggedClips(self.video[rows], self.audio[rows], self.video_mask[rows], self.audio_mask[rows],
                     self.label[idx], offsets)

    def dense(self) -> Clips:
        """Every clip as one dense batch; for uniform clips a view of the flat tensors."""
        t = self.uniform_steps()
        if t is None or int(self.offsets[0]) != 0:
            return self.pad(torch.arange(len(self)))
        n = len(self)
        return Clips(self.video.reshape(n, t, -1).float(), self.audio.reshape(n, t, -1).float(),
                     self.video_mask.reshape(n, t), self.audio_mask.reshape(n, t), self.label)

    def pad(self, idx: Tensor | np.ndarray) -> Clips:
        """Clips ``idx`` as a dense float32 batch padded to the longest of them (zeros,
        masks False on the padding)."""
        idx = torch.as_tensor(idx, dtype=torch.long)
        lengths = self.lengths[idx]
        b, t = len(idx), int(lengths.max()) if len(idx) else 0
        rows, clip_of, pos = self._step_index(idx)
        out = []
        for x in (self.video, self.audio):
            dense = torch.zeros((b, t, x.shape[-1]), dtype=torch.float32)
            dense[clip_of, pos] = x[rows].float()
            out.append(dense)
        masks = []
        for m in (self.video_mask, self.audio_mask):
            dense_m = torch.zeros((b, t), dtype=torch.bool)
            dense_m[clip_of, pos] = m[rows]
            masks.append(dense_m)
        return Clips(out[0], out[1], masks[0], masks[1], self.label[idx])

    def __len__(self) -> int:
        return int(self.label.shape[0])


MAX_BATCH_CLIPS = 512
MAX_BATCH_STEPS = 1 << 16    # padded steps per evaluation batch: bounds activations (~steps x hidden)
MAX_BATCH_PAIRS = 1 << 24    # padded steps^2 per batch: bounds a full attention matrix per head


def step_batches(lengths: np.ndarray, max_clips: int = MAX_BATCH_CLIPS, max_steps: int = MAX_BATCH_STEPS,
                 max_pairs: int = MAX_BATCH_PAIRS) -> list[np.ndarray]:
    """Clip indices in batches whose padded size stays within a budget, so that clips of
    thousands of steps run at full length in bounded memory: clips in order of length
    (stable: clips of one length keep their order, so a fixed-step set is cut into
    ``max_clips`` consecutive clips exactly as before), a batch closed when one more clip
    would exceed ``max_clips`` clips, ``max_steps`` padded steps or ``max_pairs`` padded
    step pairs (``B * T^2``, what self-attention holds). A clip over budget alone is a
    batch of its own."""
    lengths = np.asarray(lengths, dtype=np.int64)
    order = np.argsort(lengths, kind="stable")
    out, start = [], 0
    while start < len(order):
        end = start + 1
        while end < len(order):
            b, t = end + 1 - start, int(lengths[order[end]])  # sorted: the newcomer is the longest
            if b > max_clips or b * t > max_steps or b * t * t > max_pairs:
                break
            end += 1
        out.append(order[start:end])
        start = end
    return out


def cap_indices(length: int, cap: int) -> np.ndarray:
    """XDVioDet's uniform index sampling of ``cap`` of ``length`` steps."""
    return np.linspace(0, length - 1, cap).astype(int)


def pool_bins(length: int, cap: int) -> np.ndarray:
    """UR-DMU's ``cap + 1`` bin edges over ``length`` steps (``np.linspace(0, T, N+1)``)."""
    return np.linspace(0, length, cap + 1).astype(int)


STEP_CAP_MODES = ("sample", "pool")


def cap_steps(clips: RaggedClips, cap: int, mode: str = "sample") -> RaggedClips:
    """Every clip longer than ``cap`` steps cut to ``cap``: ``sample`` takes the steps at
    ``np.linspace(0, T-1, cap).astype(int)`` (XDVioDet, MACIL-SD); ``pool`` averages the
    valid steps of each of ``cap`` bins ``np.linspace(0, T, cap+1)`` (UR-DMU; a bin that
    is empty takes its first step, as UR-DMU's does; a pooled step is valid where any of
    its steps is). Shorter clips are kept whole. Deterministic: no random draw."""
    if mode not in STEP_CAP_MODES:
        raise InvalidInput(f"unknown train steps mode {mode!r}; choose one of {STEP_CAP_MODES}")
    if cap < 1:
        raise InvalidInput(f"max_train_steps must be at least 1, got {cap}")
    lengths = clips.lengths.tolist()
    if all(t <= cap for t in lengths):
        return clips
    if mode == "sample":
        parts = []
        for i, t in enumerate(lengths):
            start = int(clips.offsets[i])
            parts.append(start + (cap_indices(t, cap) if t > cap else np.arange(t)))
        rows = torch.from_numpy(np.concatenate(parts).astype(np.int64))
        new_len = torch.tensor([min(t, cap) for t in lengths], dtype=torch.long)
        offsets = torch.zeros(len(lengths) + 1, dtype=torch.long)
        offsets[1:] = torch.cumsum(new_len, 0)
        return RaggedClips(clips.video[rows], clips.audio[rows], clips.video_mask[rows], clips.audio_mask[rows],
                     clips.label, offsets)
    # pool: a segment-mean of the valid steps, one index_add over all clips at once
    seg, src = [], []
    n_out = 0
    for i, t in enumerate(lengths):
        start = int(clips.offsets[i])
        if t <= cap:
            seg.append(np.arange(n_out, n_out + t)), src.append(np.arange(start, start + t))
            n_out += t
            continue
        edges = pool_bins(t, cap)
        lo, hi = edges[:-1], np.maximum(edges[1:], edges[:-1] + 1)  # an empty bin takes its first step
        for b in range(cap):
            idx = np.arange(lo[b], hi[b])
            seg.append(np.full(len(idx), n_out + b)), src.append(start + idx)
        n_out += cap
    seg_t = torch.from_numpy(np.concatenate(seg).astype(np.int64))
    src_t = torch.from_numpy(np.concatenate(src).astype(np.int64))
    out = {}
    for name in ("video", "audio"):
        x, m = getattr(clips, name), getattr(clips, f"{name}_mask")
        w = m[src_t].to(torch.float32)
        total = torch.zeros((n_out, x.shape[-1]), dtype=torch.float32).index_add_(0, seg_t, x[src_t].float() * w[:, None])
        count = torch.zeros(n_out, dtype=torch.float32).index_add_(0, seg_t, w)
        out[name] = (total / count.clamp_min(1.0)[:, None]).to(x.dtype)
        out[f"{name}_mask"] = count > 0
    new_len = torch.tensor([min(t, cap) for t in lengths], dtype=torch.long)
    offsets = torch.zeros(len(lengths) + 1, dtype=torch.long)
    offsets[1:] = torch.cumsum(new_len, 0)
    return RaggedClips(out["video"], out["audio"], out["video_mask"], out["audio_mask"], clips.label, offsets)


@dataclass(frozen=True)
class CacheData:
    """Every usable clip of a cache: status ``ok`` and labelled. ``left_out`` counts the
    clips that were not loaded and why (``error``, ``pending``, ``unlabelled``)."""

    path: Path
    config: CacheConfig
    identity: dict[str, Any]
    keys: np.ndarray     # [N] str
    groups: np.ndarray   # [N] str, the cache's group array (source video; default = key)
    clips: RaggedClips
    left_out: dict[str, int] = field(default_factory=dict)

    @property
    def class_names(self) -> tuple[str, ...]:
        return self.config.class_names

    @property
    def steps(self) -> int:
        """The cache's fixed step count; 0 for a time-grid cache (see :attr:`layout`)."""
        return self.config.steps

    @property
    def layout(self) -> StepLayout:
        """Where the cache's steps lie in time (fixed ``T`` or a grid of ``S`` seconds)."""
        return StepLayout.from_attrs(self.identity)

    @property
    def lengths(self) -> np.ndarray:
        """Steps of each clip ``[N]`` (all ``T`` for a fixed-step cache)."""
        return self.clips.lengths.numpy()

    def rows_of(self, keys: list[str] | tuple[str, ...]) -> np.ndarray:
        index = {k: i for i, k in enumerate(self.keys.tolist())}
        return np.array([index[k] for k in keys if k in index], dtype=np.int64)

    def pretrained_backbones(self, modalities: Sequence[str] = ("video", "audio")) -> dict[str, Any]:
        """Whether the backbones were pretrained, and which ``untrained`` ones of those that
        ``modalities`` read ("video", "audio"): a video-only run on a pretrained video
        backbone beside an untrained audio one is not a run on untrained features. The
        weights' provenance (source, sha256, licence) comes along for the run's record."""
        v, a = self.config.video, self.config.audio
        used = {"video": v, "audio": a}
        return {"video": v.pretrained, "audio": a.pretrained, "both": v.pretrained and a.pretrained,
                "video_backbone": v.name, "audio_backbone": a.name,
                "untrained": [f"{m} {used[m].name}" for m in ("video", "audio") if m in modalities
                              and not used[m].pretrained],
                "weights": {m: b.weights for m, b in used.items() if b.weights}}


def load_cache(path: str | Path) -> CacheData:
    """Read every ``ok``, labelled clip of the cache into memory in the ragged form (see
    module doc): float32 for fixed-step caches, the stored dtype for grid caches."""
    path = Path(path)
    with open_cache(path) as reader:
        counts = reader.counts()
        config = reader.config
        grid = StepLayout.from_attrs(reader.identity).grid
        d = reader.load_steps(fields=("group", "label", "video", "audio", "video_mask", "audio_mask"), only_ok=True,
                              float32=not grid)
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
    offsets = torch.from_numpy(np.asarray(d["offsets"], dtype=np.int64))
    every = RaggedClips(torch.from_numpy(np.ascontiguousarray(d["video"])),
                        torch.from_numpy(np.ascontiguousarray(d["audio"])),
                        torch.from_numpy(np.ascontiguousarray(d["video_mask"])),
                        torch.from_numpy(np.ascontiguousarray(d["audio_mask"])),
                        torch.from_numpy(labels), offsets)
    clips = every if len(keep) == len(labels) else every.take(torch.from_numpy(keep))
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


def has_modality(clips: RaggedClips | Clips, modality: str) -> np.ndarray:
    """Which clips hold at least one step of the modality (fused: of either stream)."""
    if modality == "video":
        m = clips.video_mask
    elif modality == "audio":
        m = clips.audio_mask
    else:
        m = clips.video_mask | clips.audio_mask
    if isinstance(clips, Clips):
        return m.any(1).numpy()
    return (clips.per_clip_sum(m.to(torch.long)) > 0).numpy()
