"""The cache plan of a run: rank 0 locks and opens (creates, repairs, extends) the cache,
finds the clips still to do (and finished ones whose file changed since), and shards
them over the ranks in whole chunks; every other rank attaches to its shard."""

from __future__ import annotations

import logging
import os
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path

from cache_schema import SAMPLE_RATE, CacheConfig, CacheError, CacheWriter, detect_format
from cache_schema.lock import CacheLock

from .backbones import AudioBackbone, VideoBackbone
from .datasets import Manifest, ManifestRow
from .decode_workers import source_stat
from .distributed import DistEnv, Group, RankFailed, plan_shards
from .extract_config import ExtractConfig
from .feature_extractor import backbone_info, load_extract_backbones

__all__ = ["ShardPlan", "WEIGHED_CLIPS", "attach_shard", "build_cache_config", "check_distributed_format",
           "describe_error", "open_cache"]

logger = logging.getLogger(__name__)

WEIGHED_CLIPS = 200_000  # up to this many pending clips, shards are balanced by file size


@dataclass(frozen=True)
class ShardPlan:
    """Rank 0's answer to every rank: which clips each rank extracts (row, key), in which
    chunks it may write, and how many clips were already in the cache."""

    shards: tuple[tuple[tuple[int, str], ...], ...]
    chunks: tuple[frozenset[int], ...]
    skipped: int
    changed: tuple[str, ...] = ()  # finished clips planned again because their file changed


def build_cache_config(manifest: Manifest, cfg: ExtractConfig, video: VideoBackbone,
                       audio: AudioBackbone) -> CacheConfig:
    layout = cfg.layout
    return CacheConfig(
        steps=layout.steps, step_seconds=layout.step_seconds, frames_per_step=layout.frames_per_step,
        sample_rate=SAMPLE_RATE, video=backbone_info(video), audio=backbone_info(audio),
        class_names=manifest.class_names, feature_dtype=cfg.feature_dtype,
    )


def check_distributed_format(out: Path, cfg: ExtractConfig, env: DistEnv) -> None:
    """HDF5 has no concurrent writers. Every rank checks this before any collective, so
    that all of them stop with the same message instead of waiting for each other."""
    if env.distributed and (cfg.fmt or detect_format(out)) == "hdf5":
        raise CacheError(
            f"{out}: an HDF5 cache cannot take the concurrent writers of a distributed run ({env.world} ranks). "
            "Extract into a Zarr cache (an --out ending in .zarr, or --format zarr), which every rank writes "
            "in parallel; or run HDF5 extraction as a single process."
        )


def open_cache(group: Group, stack: ExitStack, manifest: Manifest, out: Path, cfg: ExtractConfig,
               backbones: tuple[VideoBackbone, AudioBackbone] | None, decode: str = "sw",
               ) -> tuple[tuple[VideoBackbone, AudioBackbone], CacheConfig, ShardPlan, CacheWriter | None]:
    """Rank 0 takes the lock (first: a refused run should not load models), loads the
    backbones, opens (creates, repairs, extends) the cache and plans the shards; the other
    ranks load their backbones meanwhile and then learn the plan, or rank 0's error.
    Returns rank 0's writer (None on other ranks: they attach once they know their shard).
    ``decode`` (where the video was decoded: sw, cuda, ...) is recorded as a description."""
    env = group.env
    plan: ShardPlan | None = None
    writer: CacheWriter | None = None
    error: Exception | None = None
    if env.is_main:
        try:
            stack.enter_context(CacheLock(out))
            backbones = backbones or load_extract_backbones(cfg, env)
            cache_config = build_cache_config(manifest, cfg, *backbones)
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
                                                        for kind, b in zip(("video", "audio"), backbones)},
                                            # descriptive too: hardware decoders give the same frames
                                            "decode": decode})
            stack.callback(writer.close)
            plan = _plan(writer, manifest, cfg, env.world)
            if env.distributed:
                writer.restrict_to(plan.chunks[0])
        except Exception as exc:
            error = exc
    else:
        backbones = backbones or load_extract_backbones(cfg, env)
    try:
        answer = group.broadcast((plan, None if error is None else describe_error(error)))
    except Exception as exc:  # a rank died before the run began (e.g. its model would not load)
        raise RankFailed(f"a rank stopped before the run began ({exc}); its log says why. Nothing was "
                         "extracted; fix that and rerun") from (error or exc)
    if error is not None:
        raise error
    plan, message = answer
    if plan is None:
        raise CacheError(f"rank 0 could not open the cache {out}, so this rank stops too: {message}")
    assert backbones is not None
    return backbones, build_cache_config(manifest, cfg, *backbones), plan, writer


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


def attach_shard(stack: ExitStack, out: Path, cfg: ExtractConfig, cache_config: CacheConfig, plan: ShardPlan,
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


def describe_error(exc: BaseException) -> str:
    return str(exc) if isinstance(exc, CacheError) else f"{type(exc).__name__}: {exc}"


