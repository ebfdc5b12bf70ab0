"""The two frozen backbones applied to decoded clips: :class:`FeatureExtractor` turns
batches of :class:`~extract.decode_workers.Decoded` clips into the cache's records."""

from __future__ import annotations

import logging
from typing import Any, Callable, Sequence

import numpy as np
import torch

from cache_schema import BackboneInfo, ClipRecord, StepLayout

from .backbones import (AudioBackbone, VideoBackbone, VideoTransform, load_audio_backbone, load_video_backbone,
                        resolve_device)
from .decode import DecodedClip
from .decode_workers import Decoded
from .distributed import DistEnv, rank_device
from .extract_config import ExtractConfig

__all__ = ["FRAME_BATCH", "FeatureExtractor", "audio_step_mask", "backbone_info", "load_extract_backbones",
           "worker_transform"]

logger = logging.getLogger(__name__)


def audio_step_mask(clip: DecodedClip) -> np.ndarray:
    """A step has audio only where the stream really covers it: audio that ends early
    leaves the last steps without audio instead of inventing silence for them."""
    t = clip.steps
    if clip.audio is None:
        return np.zeros(t, bool)
    return clip.step_bounds[:, 0] < clip.audio_end - 1e-6


def worker_transform(video: VideoBackbone) -> Callable:
    """What a decode worker applies to each chosen frame: the backbone transform's PIL
    half (resized, cropped uint8, a quarter of the float tensor's size) where it splits,
    so that a long clip's frames stay small until ``FeatureExtractor`` turns them into
    float per mini-batch; else the whole transform."""
    transform = video.transform
    return transform.geometry if isinstance(transform, VideoTransform) and transform.splits else transform


FRAME_BATCH = 256
"""Frames that ``FeatureExtractor`` turns into float and hands to the video backbone at
once (a 20-minute clip on a 2/3 s grid is 1,800 frames: never all at once)."""


class FeatureExtractor:
    """The two frozen backbones, applied to batches of decoded clips.

    Each clip has its own number of steps (``clip.steps``: fixed, or its duration on a
    time grid). Video: the features of a step's frame, or the mean of its ``K`` frames'
    features; frames go to the backbone in mini-batches of about ``frame_batch``. Audio:
    the backbone's hidden states averaged over each step's bounds, from the windows of its
    windowing (clip or causal step windows); a clip's ``audio_origin`` says which clip
    sample its audio starts at, so a clip holding only recent audio (live mode) works."""

    def __init__(self, video: VideoBackbone, audio: AudioBackbone, steps: int | StepLayout = 0,
                 frame_batch: int = FRAME_BATCH) -> None:
        self.video = video
        self.audio = audio
        self.steps = steps  # informational: each clip brings its own steps
        # a multiple of the backbone's own batch, so that its forward passes see the same
        # batches as when a whole batch of clips went in at once
        per = max(1, int(getattr(video, "batch_size", 1) or 1))
        self.frame_batch = max(1, frame_batch // per) * per

    def _images(self, frames: Sequence[Any]) -> torch.Tensor:
        """A mini-batch of decoded frames as the backbone's float input ``[N, 3, H, W]``."""
        first = frames[0]
        if isinstance(first, np.ndarray):  # a worker's uint8 geometry (``worker_transform``)
            return self.video.transform.finish(np.stack(frames))
        if isinstance(first, torch.Tensor) and first.dtype == torch.uint8:  # that geometry, copied to the GPU
            return self.video.transform.finish(torch.stack(list(frames)))
        return torch.stack([torch.as_tensor(f) for f in frames])

    def _video_features(self, clips: Sequence[DecodedClip]) -> list[np.ndarray]:
        """Per clip ``[T, D]``: every frame embedded once, in mini-batches across clips."""
        flat = [f for c in clips for f in c.frames]
        parts = []
        for start in range(0, len(flat), self.frame_batch):
            parts.append(self.video.embed(self._images(flat[start:start + self.frame_batch])).float().cpu().numpy())
        emb = np.concatenate(parts) if parts else np.zeros((0, self.video.dim), np.float32)
        out, at = [], 0
        for c in clips:
            k = c.frames_per_step
            n = c.steps * k
            if len(c.frames) != n:
                raise ValueError(f"{c.path}: {len(c.frames)} frames for {c.steps} steps of {k} frames")
            e = emb[at:at + n]
            out.append(e if k == 1 else e.reshape(c.steps, k, -1).mean(axis=1, dtype=np.float32))
            at += n
        return out

    def records(self, batch: Sequence[Decoded], isolate_failures: bool = True) -> list[ClipRecord]:
        """Embed a batch. With ``isolate_failures`` (extraction: one clip must never stop a
        run of thousands), a failed batched call is retried clip by clip and a clip that
        still breaks a backbone becomes an error record; without it (applying a run to a
        few files, where a failure here is a bug to see) the exception propagates."""
        good = [d for d in batch if d.clip is not None]
        out = {d.key: ClipRecord.failed(d.key, d.error) for d in batch if d.clip is None}
        if not isolate_failures:
            out.update({r.key: r for r in self._embed(good)})
            return _with_sources(batch, out)
        try:
            out.update({r.key: r for r in self._embed(good)})
        except Exception as exc:
            logger.warning("batched embedding failed (%s); retrying clip by clip", exc, exc_info=True)
            for d in good:
                try:
                    out.update({r.key: r for r in self._embed([d])})
                except Exception as exc2:
                    out[d.key] = ClipRecord.failed(d.key, f"backbone failed: {type(exc2).__name__}: {exc2}",
                                                   d.clip.duration if d.clip else 0.0)
        return _with_sources(batch, out)

    def _embed(self, batch: Sequence[Decoded]) -> list[ClipRecord]:
        with_video = [d for d in batch if d.clip.frames is not None]
        with_audio = [d for d in batch if d.clip.audio is not None]
        vfeat: dict[str, np.ndarray] = {}
        if with_video:
            feats = self._video_features([d.clip for d in with_video])
            vfeat = {d.key: e for d, e in zip(with_video, feats)}
        afeat: dict[str, np.ndarray] = {}
        if with_audio:
            embs = self.audio.embed([(d.clip.audio, d.clip.step_bounds) for d in with_audio],
                                    origins=[d.clip.audio_origin for d in with_audio])
            afeat = {d.key: e for d, e in zip(with_audio, embs)}
        records = []
        for d in batch:
            c = d.clip
            t = c.steps
            if d.key not in vfeat:
                video_mask = np.zeros(t, bool)
            elif c.on_grid:
                video_mask = c.video_step_mask()
            else:  # fixed steps: every step has its nearest frame, as ever
                video_mask = np.ones(t, bool)
            records.append(ClipRecord(
                key=d.key,
                status="ok",
                video=vfeat.get(d.key),
                audio=afeat.get(d.key),
                video_mask=video_mask,
                audio_mask=audio_step_mask(c) if d.key in afeat else np.zeros(t, bool),
                audio_silent=bool(c.audio_silent) if c.audio is not None else False,
                duration=float(c.duration),
                step_time=np.asarray(c.step_times, dtype=np.float64),
            ))
        return records


def _with_sources(batch: Sequence[Decoded], records: dict[str, ClipRecord]) -> list[ClipRecord]:
    """The records in batch order, each with its source file's size and mtime."""
    out = []
    for d in batch:
        r = records[d.key]
        if d.source is not None:
            r.source_size, r.source_mtime = d.source
        out.append(r)
    return out


def backbone_info(b: VideoBackbone | AudioBackbone) -> BackboneInfo:
    return BackboneInfo.from_dict(b.describe())


def load_extract_backbones(cfg: ExtractConfig, env: DistEnv | None = None) -> tuple[VideoBackbone, AudioBackbone]:
    device = resolve_device(rank_device(cfg.device, env or DistEnv()))
    video = load_video_backbone(cfg.video_model, device=device, precision=cfg.precision, runtime=cfg.runtime)
    audio = load_audio_backbone(cfg.audio_model, device=device, precision=cfg.precision, windowing=cfg.windowing,
                                runtime=cfg.runtime)
    return video, audio

