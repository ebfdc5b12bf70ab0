"""Stage 1 end to end: manifest -> decode (worker processes) -> batched frozen backbones
-> batched cache writes.

Decoding runs in DataLoader worker processes so that it overlaps the model; each worker
also applies the video backbone's preprocessing, so the main process only stacks tensors
and runs the networks. One bad file never stops the run: every failure becomes a clip
with ``status=error`` and its reason, and a decoder that crashes or hangs its worker
process is isolated and recorded the same way.

Under torchrun every rank runs :func:`run_extract` on its own chunk-aligned shard (see
``extract.distributed``); rank 0 alone holds the cache lock, creates, repairs and extends
the cache, and records completion once every rank has reported.
"""

from __future__ import annotations

import functools
import gc
import logging
import multiprocessing
import os
import signal
import threading
import time
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from cache_schema import (SAMPLE_RATE, STATUS_ERROR, BackboneInfo, CacheConfig, CacheError, CacheWriter, ClipRecord,
                          InvalidInput, StepLayout, detect_format, die_with_parent)
from cache_schema.lock import CacheLock, CacheWriteError

from .audio_windows import WINDOWING_CLIP, WINDOWING_STEP, AudioWindowing
from .backbones import (DEFAULT_AUDIO_MODEL, DEFAULT_VIDEO_MODEL, AudioBackbone, VideoBackbone, load_audio_backbone,
                        load_video_backbone, resolve_device)
from .decode import ClipTimeout, DecodedClip, DecodeError, decode_clip
from .distributed import DistEnv, Group, RankFailed, plan_shards, process_group, rank_device
from .backbones import VideoTransform
from .datasets import Manifest, ManifestRow

logger = logging.getLogger(__name__)

WEIGHED_CLIPS = 200_000  # up to this many pending clips, shards are balanced by file size


@dataclass(frozen=True)
class ExtractConfig:
    steps: int = 10
    # A time grid instead of ``steps`` equal steps per clip: steps of this many seconds
    # (``ceil(d / S)`` per clip, schema v2 ragged cache); 0 = the fixed ``steps``.
    step_seconds: float = 0.0
    frames_per_step: int = 1  # grid: video frames (evenly spaced) whose features are averaged per step
    fmt: str | None = None  # None: from the output path's suffix
    video_model: str = DEFAULT_VIDEO_MODEL
    audio_model: str = DEFAULT_AUDIO_MODEL
    device: str = "auto"
    precision: str = "auto"  # resolved when the backbones load (extract.backbones.resolve_precision)
    runtime: str = "torch"  # what runs the frozen backbones (extract.backbones.use_runtime); auto: the fastest here
    batch_size: int = 8
    workers: int = 2
    # Seconds one clip's decoding (probe, frames, audio, in its worker) may take. The backbones
    # run afterwards on batches in the main process and are not timed per clip; their cost
    # is bounded by the clip's duration, which the probe checks against the packets
    # (probe.check_timeline) before anything is sized by it.
    clip_timeout: float = 300.0
    feature_dtype: str = "float16"
    chunk_clips: int = 32  # rows per chunk of a new cache: also the unit of work of one rank
    retry_errors: bool = False
    progress: bool = True
    dist_timeout: float = 7200.0  # seconds a rank waits for the others (torchrun only)
    # Audio windows (extract.audio_windows): None = by layout, causal step windows on a time
    # grid (what live mode can reproduce), clip windows for fixed steps (as they always were).
    audio_windows: str | None = None
    audio_context: float | None = None  # causal step windows: seconds reaching back [DEFAULT_AUDIO_CONTEXT_S]

    def __post_init__(self) -> None:
        self.layout  # refuses an impossible combination (InvalidInput) before any work
        self.windowing  # likewise

    @property
    def layout(self) -> StepLayout:
        """Where each clip's steps lie (``steps`` is ignored on a time grid)."""
        return StepLayout(steps=0 if self.step_seconds else self.steps, step_seconds=self.step_seconds,
                          frames_per_step=self.frames_per_step)

    @property
    def windowing(self) -> AudioWindowing:
        """The audio backbone's windowing for this layout (see ``audio_windows``)."""
        grid = self.layout.grid
        mode = self.audio_windows or (WINDOWING_STEP if grid else WINDOWING_CLIP)
        if not grid and self.audio_context is not None:
            raise InvalidInput("--audio-context applies to time-grid caches (--step-seconds): a cache of fixed "
                               "--steps keeps clip audio windows; drop --audio-context")
        if not grid and mode == WINDOWING_STEP:
            raise InvalidInput("causal step audio windows apply to time-grid caches (--step-seconds); a cache of "
                               "fixed --steps keeps clip audio windows")
        if mode == WINDOWING_CLIP and self.audio_context is not None:
            raise InvalidInput("an audio context applies to causal step windows, not to clip windows; drop it")
        return AudioWindowing(mode, self.audio_context)

    @property
    def decode_batch(self) -> int:
        """Clips per batch handed from the decode workers. On a time grid a clip carries a
        frame per step (900 for 10 minutes at 0.6667 s, ~170 MB of uint8 crops at 256 px),
        and the loader holds ``workers x 2`` batches in flight: one clip per batch keeps
        that to a few clips, and the backbones batch the clip's frames themselves."""
        return 1 if self.step_seconds else self.batch_size


@dataclass
class ExtractSummary:
    total: int
    skipped: int
    done: int = 0
    failed: dict[str, str] = field(default_factory=dict)
    seconds: float = 0.0
    cache: str = ""
    rank: int = 0
    ranks: list[dict[str, Any]] = field(default_factory=list)  # per rank, on rank 0 of a distributed run
    changed: list[str] = field(default_factory=list)  # finished clips redone because their file changed

    def describe(self) -> str:
        rate = self.done / self.seconds if self.seconds > 0 else 0.0
        if self.rank:  # rank 0 prints the run's summary; the others only their share
            return f"rank {self.rank}: {self.done} clips done, {len(self.failed)} failed, {self.seconds:.1f} s"
        lines = [
            f"extract: {self.done} clips done ({rate:.2f} clips/s), {self.skipped} already in the cache, "
            f"{len(self.failed)} failed, {self.seconds:.1f} s -> {self.cache}"
        ]
        if self.changed:
            lines.append(f"  {len(self.changed)} clips extracted again because their file changed since "
                         f"(size or modification time): {', '.join(self.changed[:5])}"
                         + (" ..." if len(self.changed) > 5 else ""))
        if self.ranks:
            lines.append("  ranks: " + ", ".join(f"{r['rank']}: {r['done']} done, {r['failed']} failed"
                                                 for r in self.ranks))
        lines += [f"  failed {k}: {why}" for k, why in sorted(self.failed.items())]
        return "\n".join(lines)


# -- decoding in workers ----------------------------------------------------------------

@dataclass
class Decoded:
    """What a worker hands back: the decoded clip, or why it failed."""

    key: str
    clip: DecodedClip | None = None
    error: str = ""
    source: tuple[int, float] | None = None  # (size, mtime) of the file before it was decoded


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
    # PyAV frames whose side data were read form reference cycles with their container
    # (about 1.3 MB a file); with torch imported the interpreter's full collection runs
    # too rarely to free them, so a worker collects itself every so many clips (a full
    # collection costs ~0.25 s here, ~8 ms a clip amortised).
    GC_EVERY = 32

    def __init__(self, rows: Sequence[ManifestRow], steps: int | StepLayout, frame_transform: Callable | None,
                 timeout: float):
        self.rows = list(rows)
        self.steps = steps
        self.frame_transform = frame_transform
        self.timeout = timeout
        self._decoded = 0

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, i: int) -> Decoded:
        row = self.rows[i]
        self._decoded += 1
        if self._decoded % self.GC_EVERY == 0:
            gc.collect()
        source = source_stat(row.path)  # before decoding: a file still growing then is seen to change later
        try:
            with _hard_limit(hard_limit_s(self.timeout)):
                clip = decode_clip(
                    row.path, self.steps, sample_rate=SAMPLE_RATE, frame_transform=self.frame_transform,
                    deadline=time.monotonic() + self.timeout,
                )
            return Decoded(row.key, clip=clip, source=source)
        except DecodeError as exc:
            return Decoded(row.key, error=str(exc), source=source)
        except Exception as exc:  # any library failure on a bad file is that file's error
            return Decoded(row.key, error=f"{type(exc).__name__}: {exc}", source=source)


def source_stat(path: str | Path) -> tuple[int, float] | None:
    """(size, mtime) of a source file, or None when it cannot be looked at."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    return int(st.st_size), float(st.st_mtime)


def hard_limit_s(clip_timeout: float) -> float:
    """The backstop after the cooperative deadline: a little later, so that the deadline
    (with its clearer message) fires first whenever the decoder still checks it."""
    return clip_timeout + min(5.0, 0.5 * clip_timeout)


def _batch_timeout_s(cfg: ExtractConfig, clips: int) -> float:
    """How long the main process waits for one batch from the workers before it treats
    them as hung: every clip of the batch at its hard limit, plus one for slack."""
    return (clips + 1) * hard_limit_s(cfg.clip_timeout)


def _worker_init(parent_pid: int | None, _: int) -> None:
    # A worker dies with the process that forked it (kill -9 and the OOM killer run no
    # cleanup, and an orphaned worker can wait for ever on its result pipe); the lock's
    # descriptor was already closed here by ``cache_schema.lock``'s fork hook.
    die_with_parent(parent_pid)
    torch.set_num_threads(1)  # a forked worker keeps the parent's floating-point mode (denormals flushed)


def _collate(batch: list[Decoded]) -> list[Decoded]:
    return batch


def _collect_before_fork() -> None:
    """Free this process's garbage before forking decode workers. A PyAV frame left in a
    reference cycle owns FFmpeg (swscale) threads; a forked child inherits the frame but
    not the threads, and when the child's garbage collector frees it, FFmpeg waits for
    those threads forever (seen in gdb: ``avpriv_slicethread_free`` in a stuck worker)."""
    gc.collect()


def _worker_context() -> multiprocessing.context.BaseContext:
    """Decode workers are forked where the platform can (they start in milliseconds and
    inherit the parent's start-up), whatever the process's default start method is (a
    process started by a forkserver defaults to one, and Python 3.14 makes it the default)."""
    methods = multiprocessing.get_all_start_methods()
    return multiprocessing.get_context("fork" if "fork" in methods else None)


def _loader(rows: Sequence[ManifestRow], cfg: ExtractConfig, transform: Callable | None, workers: int,
            batch_size: int | None = None) -> DataLoader:
    if workers:
        _collect_before_fork()
    ds = ClipDecodeDataset(rows, cfg.layout, transform, cfg.clip_timeout)
    bs = batch_size or cfg.decode_batch
    ctx = _worker_context() if workers else None
    # a forked worker's parent is this process, which lets the worker check it is still there
    parent = os.getpid() if ctx is not None and ctx.get_start_method() == "fork" else None
    return DataLoader(
        ds, batch_size=bs, shuffle=False, num_workers=workers, collate_fn=_collate, multiprocessing_context=ctx,
        worker_init_fn=functools.partial(_worker_init, parent) if workers else None,
        prefetch_factor=2 if workers else None,
        persistent_workers=False, timeout=_batch_timeout_s(cfg, bs) if workers else 0,
    )


def _worker_failure(exc: BaseException) -> str | None:
    """Why the DataLoader gave up on its workers ("crashed", "hung"), or None when the
    error is something else."""
    msg = str(exc).lower()
    if not isinstance(exc, RuntimeError):
        return None
    if "worker" in msg and "exit" in msg:
        return "crashed"
    if "timed out" in msg:
        return "hung"
    return None


def _failed_clip(row: ManifestRow, how: str, cfg: ExtractConfig) -> Decoded:
    if how == "hung":
        return Decoded(row.key, error=f"decoding hung past the {hard_limit_s(cfg.clip_timeout):.0f} s limit "
                                      "and its process was stopped")
    return Decoded(row.key, error="the decoder crashed its process on this file")


def iter_decoded(rows: Sequence[ManifestRow], cfg: ExtractConfig, transform: Callable | None) -> Iterator[list[Decoded]]:
    """Batches of decoded clips in manifest order. If a decoder crashes its worker
    process, or hangs it where even the in-process time limit cannot reach (inside one C
    call), the batch in flight is retried clip by clip in fresh processes, and a clip that
    fails again is reported as an error instead of stopping (or stalling) the run."""
    start = 0
    while start < len(rows):
        batches = iter(_loader(rows[start:], cfg, transform, cfg.workers))
        seen, how = 0, None
        try:
            for batch in batches:
                seen += 1
                yield batch
        except RuntimeError as exc:
            how = _worker_failure(exc)
            if how is None or cfg.workers == 0:
                raise
            logger.warning("a decoding worker %s (%s); isolating the clips of its batch", how, exc)
        finally:
            _stop_workers(batches)
        if how is None:
            return
        bad_from = start + seen * cfg.decode_batch
        bad = rows[bad_from: bad_from + cfg.decode_batch]
        if how == "hung" and len(bad) == 1:  # nothing to isolate: retrying would only hang again
            yield [_failed_clip(bad[0], how, cfg)]
        else:
            yield [_isolated(row, cfg, transform) for row in bad]
        start = bad_from + cfg.decode_batch


def _isolated(row: ManifestRow, cfg: ExtractConfig, transform: Callable | None) -> Decoded:
    """One clip decoded alone in a fresh worker process."""
    batches = iter(_loader([row], cfg, transform, 1, batch_size=1))
    how = None
    try:
        return next(batches)[0]
    except RuntimeError as exc:
        how = _worker_failure(exc)
        if how is None:
            raise
        return _failed_clip(row, how, cfg)
    finally:
        _stop_workers(batches)


def _stop_workers(batches: Iterator[Any]) -> None:
    """Shut the loader's worker processes down now, not whenever the garbage collector
    reaches the iterator (an exception's traceback keeps it alive): over a week-long run,
    hung decoders must not pile up. The DataLoader's own shutdown terminates a worker that
    does not exit within 5 s, after unregistering it, so that its death is not reported
    as a crash; killing it here first would be."""
    shutdown = getattr(batches, "_shutdown_workers", None)
    if shutdown is not None:
        shutdown()


# -- features -------------------------------------------------------------------------

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
        if isinstance(frames[0], np.ndarray):  # a worker's uint8 geometry (``worker_transform``)
            return self.video.transform.finish(np.stack(frames))
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


@dataclass(frozen=True)
class ShardPlan:
    """Rank 0's answer to every rank: which clips each rank extracts (row, key), in which
    chunks it may write, and how many clips were already in the cache."""

    shards: tuple[tuple[tuple[int, str], ...], ...]
    chunks: tuple[frozenset[int], ...]
    skipped: int
    changed: tuple[str, ...] = ()  # finished clips planned again because their file changed


def run_extract(manifest: Manifest, out: str | Path, cfg: ExtractConfig,
                backbones: tuple[VideoBackbone, AudioBackbone] | None = None,
                env: DistEnv | None = None) -> ExtractSummary:
    """Extract every clip of ``manifest`` that the cache at ``out`` does not hold yet.

    ``backbones`` lets a caller that already loaded them (benchmarks, predict) reuse them.
    ``env`` is this process's rank; by default it is read from torchrun's variables, so
    the same call runs alone or as one rank of ``torchrun --nproc-per-node N``.

    Raises :class:`CacheLocked` when another job writes the cache, :class:`CacheWriteError`
    when the storage refuses a write (the clips finished before are kept), and
    :class:`RankFailed` when a rank of a distributed run stopped.
    """
    t0 = time.monotonic()
    env = env or DistEnv.from_environ()
    out = Path(out)
    _check_distributed_format(out, cfg, env)
    with process_group(env, cfg.dist_timeout) as group, ExitStack() as stack:
        (video, audio), cache_config, plan, writer = _open_cache(group, stack, manifest, out, cfg, backbones)
        summary = ExtractSummary(total=len(manifest), skipped=plan.skipped, cache=str(out), rank=env.rank,
                                 changed=list(plan.changed))
        failure: Exception | None = None
        try:
            if writer is None:
                writer = _attach(stack, out, cfg, cache_config, plan, env)
            _extract_shard(writer, plan.shards[env.rank], manifest, cfg, (video, audio), summary, env)
        except Exception as exc:  # reported to rank 0 first, raised below
            failure = exc
        summary.seconds = time.monotonic() - t0
        return _conclude(group, writer, summary, failure)


def _cache_config(manifest: Manifest, cfg: ExtractConfig, video: VideoBackbone, audio: AudioBackbone) -> CacheConfig:
    layout = cfg.layout
    return CacheConfig(
        steps=layout.steps, step_seconds=layout.step_seconds, frames_per_step=layout.frames_per_step,
        sample_rate=SAMPLE_RATE, video=backbone_info(video), audio=backbone_info(audio),
        class_names=manifest.class_names, feature_dtype=cfg.feature_dtype,
    )


def _check_distributed_format(out: Path, cfg: ExtractConfig, env: DistEnv) -> None:
    """HDF5 has no concurrent writers. Every rank checks this before any collective, so
    that all of them stop with the same message instead of waiting for each other."""
    if env.distributed and (cfg.fmt or detect_format(out)) == "hdf5":
        raise CacheError(
            f"{out}: an HDF5 cache cannot take the concurrent writers of a distributed run ({env.world} ranks). "
            "Extract into a Zarr cache (an --out ending in .zarr, or --format zarr), which every rank writes "
            "in parallel; or run HDF5 extraction as a single process."
        )


def _open_cache(group: Group, stack: ExitStack, manifest: Manifest, out: Path, cfg: ExtractConfig,
                backbones: tuple[VideoBackbone, AudioBackbone] | None,
                ) -> tuple[tuple[VideoBackbone, AudioBackbone], CacheConfig, ShardPlan, CacheWriter | None]:
    """Rank 0 takes the lock (first: a refused run should not load models), loads the
    backbones, opens (creates, repairs, extends) the cache and plans the shards; the other
    ranks load their backbones meanwhile and then learn the plan, or rank 0's error.
    Returns rank 0's writer (None on other ranks: they attach once they know their shard)."""
    env = group.env
    plan: ShardPlan | None = None
    writer: CacheWriter | None = None
    error: Exception | None = None
    if env.is_main:
        try:
            stack.enter_context(CacheLock(out))
            backbones = backbones or load_extract_backbones(cfg, env)
            cache_config = _cache_config(manifest, cfg, *backbones)
            writer = CacheWriter.open(out, cache_config, manifest.entries(), fmt=cfg.fmt,
                                      chunk_clips=cfg.chunk_clips,
                                      # absolute: a relative root means nothing from another folder
                                      info={"dataset": manifest.dataset, "root": os.path.abspath(manifest.root),
                                            # descriptive, not identity (bf16 and fp32 features differ in
                                            # rounding only): the precision this run used, never "auto"
                                            "precision": {kind: getattr(b, "precision", None)
                                                          for kind, b in zip(("video", "audio"), backbones)},
                                            # descriptive too: the runtimes differ in rounding only
                                            "runtime": {kind: getattr(b, "runtime", None)
                                                        for kind, b in zip(("video", "audio"), backbones)}})
            stack.callback(writer.close)
            plan = _plan(writer, manifest, cfg, env.world)
            if env.distributed:
                writer.restrict_to(plan.chunks[0])
        except Exception as exc:
            error = exc
    else:
        backbones = backbones or load_extract_backbones(cfg, env)
    try:
        answer = group.broadcast((plan, None if error is None else _describe(error)))
    except Exception as exc:  # a rank died before the run began (e.g. its model would not load)
        raise RankFailed(f"a rank stopped before the run began ({exc}); its log says why. Nothing was "
                         "extracted; fix that and rerun") from (error or exc)
    if error is not None:
        raise error
    plan, message = answer
    if plan is None:
        raise CacheError(f"rank 0 could not open the cache {out}, so this rank stops too: {message}")
    assert backbones is not None
    return backbones, _cache_config(manifest, cfg, *backbones), plan, writer


def _plan(writer: CacheWriter, manifest: Manifest, cfg: ExtractConfig, world: int) -> ShardPlan:
    by_key = {r.key: r for r in manifest.rows}
    todo = writer.todo(list(by_key), retry_errors=cfg.retry_errors)
    changed = _changed_sources(writer, by_key, set(todo))
    todo += changed
    key_of = {writer.row_of(k): k for k in todo}
    rows = sorted(key_of)
    # file sizes balance the ranks' decoding time; past WEIGHED_CLIPS the stat calls (slow
    # on a network filesystem) cost more than counting clips, which balances anyway
    weigh = 1 < world and len(rows) <= WEIGHED_CLIPS
    weights = [_file_size(by_key[key_of[r]].path) for r in rows] if weigh else None
    shards = plan_shards(rows, writer.chunk_rows, world, weights)
    idle = sum(not s.rows for s in shards)
    if rows and idle:
        logger.warning("%d pending clips lie in only %d chunks of %d clips, so %d of %d ranks have nothing to do; "
                       "a new cache with a smaller --chunk-clips spreads better", len(rows), world - idle,
                       writer.chunk_rows, idle, world)
    return ShardPlan(
        shards=tuple(tuple((r, key_of[r]) for r in s.rows) for s in shards),
        chunks=tuple(s.chunks for s in shards),
        skipped=len(manifest) - len(todo),
        changed=tuple(changed),
    )


def _changed_sources(writer: CacheWriter, by_key: dict[str, ManifestRow], todo: set[str]) -> list[str]:
    """Finished clips whose source file's size or modification time differs from when
    they were extracted (a file extracted while still being copied, or replaced since)."""
    recorded = writer.recorded_sources([k for k in by_key if k not in todo])
    changed = [k for k, was in recorded.items() if source_stat(by_key[k].path) not in (None, was)]
    if changed:
        logger.warning("%d clips changed on disk since they were extracted and are extracted again: %s",
                       len(changed), ", ".join(changed[:5]) + (" ..." if len(changed) > 5 else ""))
    return changed


def _file_size(path: Path) -> float:
    try:
        return float(Path(path).stat().st_size)
    except OSError:
        return 0.0


def _attach(stack: ExitStack, out: Path, cfg: ExtractConfig, cache_config: CacheConfig, plan: ShardPlan,
            env: DistEnv) -> CacheWriter:
    try:
        writer = CacheWriter.attach(out, cache_config, {k: r for r, k in plan.shards[env.rank]},
                                    plan.chunks[env.rank], fmt=cfg.fmt)
    except FileNotFoundError:
        raise CacheError(
            f"{env.label()} cannot see the cache {out} that rank 0 created: on several nodes, --out must lie on a "
            "filesystem that every node mounts at the same path"
        ) from None
    stack.callback(writer.close)
    return writer


def _extract_shard(writer: CacheWriter, shard: Sequence[tuple[int, str]], manifest: Manifest, cfg: ExtractConfig,
                   backbones: tuple[VideoBackbone, AudioBackbone], summary: ExtractSummary, env: DistEnv) -> None:
    video, audio = backbones
    by_key = {r.key: r for r in manifest.rows}
    untrained = [f"{kind} {b.name}" for kind, b in (("video", video), ("audio", audio)) if not b.pretrained]
    if env.is_main and untrained:
        logger.warning("UNTRAINED backbone weights (%s): their features are for testing the pipeline only",
                       ", ".join(untrained))
    logger.info("%s: %d clips to extract, %d already in %s", env.label(), len(shard), summary.skipped, summary.cache)
    extractor = FeatureExtractor(video, audio, cfg.layout)
    progress = _progress(len(shard), cfg.progress and env.is_main)
    try:
        for batch in iter_decoded([by_key[k] for _, k in shard], cfg, worker_transform(video)):
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


def _conclude(group: Group, writer: CacheWriter | None, summary: ExtractSummary,
              failure: Exception | None) -> ExtractSummary:
    """Every rank reports to rank 0 (even one that failed, so that nobody waits for it);
    rank 0 records completion and the run's figures, then raises if any rank failed."""
    env = group.env
    report = {"rank": env.rank, "done": summary.done, "failed": dict(summary.failed),
              "seconds": round(summary.seconds, 2), "error": None if failure is None else _describe(failure)}
    lost: Exception | None = None
    try:
        reports = group.gather(report)
    except Exception as exc:  # a peer died (gloo notices at once) or the timeout passed
        reports, lost = None, exc
    if not env.is_main:
        if failure is not None:
            raise failure
        if lost is not None:
            raise RankFailed(f"{env.label()} could not report to rank 0 ({lost}); the clips it finished are kept")
        return summary
    reports = reports or [report]
    merged = _merge(summary, reports) if env.distributed else summary
    counts = _finish_quietly(writer, merged)
    pending = "?" if counts is None else counts["pending"]
    rerun = (f"{pending} clips are still pending: rerun the same command (with any number of ranks) "
             "to extract only those")
    if lost is not None:
        raise RankFailed(f"not every rank reported to rank 0 ({lost}); what every rank finished is kept and "
                         f"valid. {rerun}") from lost
    if failure is not None and not env.distributed:
        if isinstance(failure, CacheWriteError):
            raise CacheWriteError(f"{failure}. The clips finished before are kept and valid; free space or fix "
                                  f"the folder's permissions, then: {rerun}") from failure
        raise failure
    failed = [r for r in reports if r["error"]]
    if failed:
        raise RankFailed("; ".join(f"rank {r['rank']} stopped: {r['error']}" for r in failed)
                         + f". What every rank finished is kept and valid. {rerun}")
    return merged


def _describe(exc: BaseException) -> str:
    return str(exc) if isinstance(exc, CacheError) else f"{type(exc).__name__}: {exc}"


def _merge(own: ExtractSummary, reports: list[dict[str, Any]]) -> ExtractSummary:
    failed: dict[str, str] = {}
    for r in reports:
        failed.update(r["failed"])
    return ExtractSummary(
        total=own.total, skipped=own.skipped, done=sum(r["done"] for r in reports), failed=failed,
        seconds=max([own.seconds] + [r["seconds"] for r in reports]), cache=own.cache, rank=0, changed=own.changed,
        ranks=[{k: r[k] for k in ("rank", "done", "seconds")} | {"failed": len(r["failed"])} for r in reports],
    )


def _finish_quietly(writer: CacheWriter | None, summary: ExtractSummary) -> dict[str, int] | None:
    """Record completion; when the storage refuses even that (disk full), say so and
    keep the error that got us here rather than replacing it with this one."""
    if writer is None:
        return None
    last_run: dict[str, Any] = {"done": summary.done, "failed": len(summary.failed), "seconds": round(summary.seconds, 2)}
    if summary.ranks:
        last_run["ranks"] = summary.ranks
    try:
        return writer.finish({"last_run": last_run})
    except (OSError, CacheError) as exc:
        logger.warning("could not record completion in %s: %s", summary.cache, exc)
        try:
            return writer.counts()
        except Exception:
            return None


def _progress(total: int, enabled: bool):
    from tqdm import tqdm

    return tqdm(total=total, unit="clip", desc="extract", disable=not enabled or total == 0, smoothing=0.1)
