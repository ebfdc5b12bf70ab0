"""Stage 1 end to end: manifest -> decode (worker processes) -> batched frozen backbones
-> batched cache writes.

Decoding runs in DataLoader worker processes so that it overlaps the model; each worker
also applies the video backbone's preprocessing, so the main process only stacks tensors
and runs the networks. One bad file never stops the run: every failure becomes a clip
with ``status=error`` and its reason, and a decoder that crashes its worker process is
isolated and recorded the same way.
"""

from __future__ import annotations

import logging
import signal
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from cache_schema import STATUS_ERROR, BackboneInfo, CacheConfig, CacheWriter, ClipRecord

from .backbones import AudioBackbone, VideoBackbone, load_audio_backbone, load_video_backbone, resolve_device
from .decode import ClipTimeout, DecodedClip, DecodeError, decode_clip
from .manifest import Manifest, ManifestRow

logger = logging.getLogger(__name__)

SAMPLE_RATE = 16000


@dataclass(frozen=True)
class ExtractConfig:
    steps: int = 10
    fmt: str | None = None  # None: from the output path's suffix
    video_model: str = "mobilevit_s.cvnets_in1k"
    audio_model: str = "facebook/wav2vec2-base"
    device: str = "auto"
    precision: str = "fp32"
    batch_size: int = 8
    workers: int = 2
    clip_timeout: float = 300.0
    feature_dtype: str = "float16"
    chunk_clips: int = 32
    retry_errors: bool = False
    progress: bool = True


@dataclass
class ExtractSummary:
    total: int
    skipped: int
    done: int = 0
    failed: dict[str, str] = field(default_factory=dict)
    seconds: float = 0.0
    cache: str = ""

    def describe(self) -> str:
        rate = self.done / self.seconds if self.seconds > 0 else 0.0
        lines = [
            f"extract: {self.done} clips done ({rate:.2f} clips/s), {self.skipped} already in the cache, "
            f"{len(self.failed)} failed, {self.seconds:.1f} s -> {self.cache}"
        ]
        lines += [f"  failed {k}: {why}" for k, why in sorted(self.failed.items())]
        return "\n".join(lines)


def configure_torch() -> None:
    """Denormal floats make untrained MobileViT ~10x slower on CPU; flush them before the
    first parallel op."""
    torch.set_flush_denormal(True)


# -- decoding in workers ----------------------------------------------------------------

@dataclass
class Decoded:
    """What a worker hands back: the decoded clip, or why it failed."""

    key: str
    clip: DecodedClip | None = None
    error: str = ""


@contextmanager
def _hard_limit(seconds: float) -> Iterator[None]:
    """Backstop for a decoder stuck inside one C call, where the cooperative deadline is
    never checked. Only possible in a process's main thread (true for DataLoader workers)."""
    if threading.current_thread() is not threading.main_thread() or seconds <= 0:
        yield
        return

    def _raise(signum: int, frame: Any) -> None:
        raise ClipTimeout(f"clip exceeded the {seconds:.0f} s limit")

    old = signal.signal(signal.SIGALRM, _raise)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)


class ClipDecodeDataset(Dataset):
    def __init__(self, rows: Sequence[ManifestRow], steps: int, frame_transform: Callable | None, timeout: float):
        self.rows = list(rows)
        self.steps = steps
        self.frame_transform = frame_transform
        self.timeout = timeout

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, i: int) -> Decoded:
        row = self.rows[i]
        try:
            with _hard_limit(self.timeout * 1.5 + 5):
                clip = decode_clip(
                    row.path, self.steps, sample_rate=SAMPLE_RATE, frame_transform=self.frame_transform,
                    deadline=time.monotonic() + self.timeout,
                )
            return Decoded(row.key, clip=clip)
        except DecodeError as exc:
            return Decoded(row.key, error=str(exc))
        except Exception as exc:  # any library failure on a bad file is that file's error
            return Decoded(row.key, error=f"{type(exc).__name__}: {exc}")


def _worker_init(_: int) -> None:
    torch.set_num_threads(1)
    configure_torch()


def _collate(batch: list[Decoded]) -> list[Decoded]:
    return batch


def _loader(rows: Sequence[ManifestRow], cfg: ExtractConfig, transform: Callable | None, workers: int) -> DataLoader:
    ds = ClipDecodeDataset(rows, cfg.steps, transform, cfg.clip_timeout)
    return DataLoader(
        ds, batch_size=cfg.batch_size, shuffle=False, num_workers=workers, collate_fn=_collate,
        worker_init_fn=_worker_init if workers else None, prefetch_factor=2 if workers else None,
        persistent_workers=False,
    )


def _worker_died(exc: BaseException) -> bool:
    return isinstance(exc, RuntimeError) and "worker" in str(exc).lower() and "exit" in str(exc).lower()


def iter_decoded(rows: Sequence[ManifestRow], cfg: ExtractConfig, transform: Callable | None) -> Iterator[list[Decoded]]:
    """Batches of decoded clips in manifest order. If a decoder crashes its worker
    process, the batch in flight is retried clip by clip in fresh processes, and a clip
    that crashes again is reported as an error instead of stopping the run."""
    start = 0
    while start < len(rows):
        batches_seen = 0
        try:
            for batch in _loader(rows[start:], cfg, transform, cfg.workers):
                batches_seen += 1
                yield batch
            return
        except RuntimeError as exc:
            if not _worker_died(exc) or cfg.workers == 0:
                raise
            bad_from = start + batches_seen * cfg.batch_size
            logger.warning("a decoding worker died (%s); isolating clips %d..%d", exc, bad_from, bad_from + cfg.batch_size - 1)
            isolated = []
            for row in rows[bad_from: bad_from + cfg.batch_size]:
                try:
                    isolated += next(iter(_loader([row], cfg, transform, 1)))
                except RuntimeError as exc2:
                    if not _worker_died(exc2):
                        raise
                    isolated.append(Decoded(row.key, error="the decoder crashed its process on this file"))
            yield isolated
            start = bad_from + cfg.batch_size


# -- features -------------------------------------------------------------------------

def audio_step_mask(clip: DecodedClip) -> np.ndarray:
    """A step has audio only where the stream really covers it: audio that ends early
    leaves the last steps without audio instead of inventing silence for them."""
    t = len(clip.step_times)
    if clip.audio is None:
        return np.zeros(t, bool)
    start, end = clip.step_bounds[:, 0], clip.step_bounds[:, 1]
    return start < clip.audio_end - 1e-6


class FeatureExtractor:
    """The two frozen backbones, applied to batches of decoded clips."""

    def __init__(self, video: VideoBackbone, audio: AudioBackbone, steps: int) -> None:
        self.video = video
        self.audio = audio
        self.steps = steps

    def records(self, batch: Sequence[Decoded]) -> list[ClipRecord]:
        """Embed a batch; if the batched call fails, retry clip by clip so that one clip
        that breaks a backbone cannot take the others down with it."""
        good = [d for d in batch if d.clip is not None]
        out = {d.key: ClipRecord.failed(d.key, d.error) for d in batch if d.clip is None}
        try:
            out.update({r.key: r for r in self._embed(good)})
        except Exception as exc:
            logger.warning("batched embedding failed (%s); retrying clip by clip", exc)
            for d in good:
                try:
                    out.update({r.key: r for r in self._embed([d])})
                except Exception as exc2:
                    out[d.key] = ClipRecord.failed(d.key, f"backbone failed: {type(exc2).__name__}: {exc2}",
                                                   d.clip.duration if d.clip else 0.0)
        return [out[d.key] for d in batch]

    def _embed(self, batch: Sequence[Decoded]) -> list[ClipRecord]:
        t = self.steps
        with_video = [d for d in batch if d.clip.frames is not None]
        with_audio = [d for d in batch if d.clip.audio is not None]
        vfeat: dict[str, np.ndarray] = {}
        if with_video:
            images = torch.stack([torch.as_tensor(f) for d in with_video for f in d.clip.frames])
            emb = self.video.embed(images).float().cpu().numpy().reshape(len(with_video), t, -1)
            vfeat = {d.key: emb[i] for i, d in enumerate(with_video)}
        afeat: dict[str, np.ndarray] = {}
        if with_audio:
            embs = self.audio.embed([(d.clip.audio, d.clip.step_bounds) for d in with_audio])
            afeat = {d.key: e for d, e in zip(with_audio, embs)}
        records = []
        for d in batch:
            c = d.clip
            records.append(ClipRecord(
                key=d.key,
                status="ok",
                video=vfeat.get(d.key),
                audio=afeat.get(d.key),
                video_mask=np.full(t, d.key in vfeat),
                audio_mask=audio_step_mask(c) if d.key in afeat else np.zeros(t, bool),
                audio_silent=bool(c.audio_silent) if c.audio is not None else False,
                duration=float(c.duration),
                step_time=np.asarray(c.step_times, dtype=np.float64),
            ))
        return records


def backbone_info(b: VideoBackbone | AudioBackbone) -> BackboneInfo:
    return BackboneInfo(b.name, b.arch, b.checksum, b.pretrained, b.dim, dict(b.preprocessing))


def load_extract_backbones(cfg: ExtractConfig) -> tuple[VideoBackbone, AudioBackbone]:
    configure_torch()
    device = resolve_device(cfg.device)
    video = load_video_backbone(cfg.video_model, device=device, precision=cfg.precision)
    audio = load_audio_backbone(cfg.audio_model, device=device, precision=cfg.precision)
    return video, audio


def run_extract(manifest: Manifest, out: str | Path, cfg: ExtractConfig,
                backbones: tuple[VideoBackbone, AudioBackbone] | None = None) -> ExtractSummary:
    """Extract every clip of ``manifest`` that the cache at ``out`` does not hold yet.
    ``backbones`` lets a caller that already loaded them (benchmarks, predict) reuse them."""
    t0 = time.monotonic()
    video, audio = backbones or load_extract_backbones(cfg)
    cache_config = CacheConfig(
        steps=cfg.steps, sample_rate=SAMPLE_RATE, video=backbone_info(video), audio=backbone_info(audio),
        class_names=manifest.class_names, feature_dtype=cfg.feature_dtype,
    )
    info = {"dataset": manifest.dataset, "root": str(manifest.root)}
    writer = CacheWriter.open(out, cache_config, manifest.entries(), fmt=cfg.fmt, chunk_clips=cfg.chunk_clips, info=info)
    by_key = {r.key: r for r in manifest.rows}
    todo = writer.todo(list(by_key), retry_errors=cfg.retry_errors)
    summary = ExtractSummary(total=len(manifest), skipped=len(manifest) - len(todo), cache=str(out))
    if not (video.pretrained and audio.pretrained):
        logger.warning("backbones carry UNTRAINED weights (%s, %s): features are for testing the pipeline only",
                       video.name, audio.name)
    logger.info("%d clips to extract, %d already in %s", len(todo), summary.skipped, out)
    extractor = FeatureExtractor(video, audio, cfg.steps)
    progress = _progress(len(todo), cfg.progress)
    try:
        for batch in iter_decoded([by_key[k] for k in todo], cfg, video.transform):
            records = extractor.records(batch)
            writer.write(records)
            for r in records:
                if r.status == STATUS_ERROR:
                    summary.failed[r.key] = r.error
                    logger.warning("failed %s: %s", r.key, r.error)
            summary.done += len(records) - sum(r.status == STATUS_ERROR for r in records)
            progress.update(len(records))
    finally:
        progress.close()
        summary.seconds = time.monotonic() - t0
        writer.finish({"last_run": {"done": summary.done, "failed": len(summary.failed), "seconds": round(summary.seconds, 2)}})
        writer.close()
    return summary


def _progress(total: int, enabled: bool):
    from tqdm import tqdm

    return tqdm(total=total, unit="clip", desc="extract", disable=not enabled or total == 0, smoothing=0.1)
