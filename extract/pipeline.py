"""Stage 1 end to end: manifest -> decode (worker processes) -> batched frozen backbones
-> batched cache writes.

The stages live in their own modules: ``extract_config`` (what a run is asked to do),
``decode_workers`` (decoding in worker processes, crashes and hangs isolated),
``feature_extractor`` (the backbones over decoded clips), ``cache_plan`` (the cache
opened, the pending clips sharded). This module runs them; it also re-exports their
public names, which callers have always imported from here.

One bad file never stops the run: every failure becomes a clip with ``status=error`` and
its reason. Under torchrun every rank runs :func:`run_extract` on its own chunk-aligned
shard (see ``extract.distributed``); rank 0 alone holds the cache lock, creates, repairs
and extends the cache, and records completion once every rank has reported.
"""

from __future__ import annotations

import logging
import time
from contextlib import ExitStack
from pathlib import Path
from typing import Any, Iterator, Sequence

import torch

from cache_schema import STATUS_ERROR, CacheError, CacheWriter
from cache_schema.lock import CacheWriteError

from .backbones import AudioBackbone, VideoBackbone
from .cache_plan import ShardPlan, attach_shard, check_distributed_format, describe_error, open_cache
from .datasets import Manifest
from .decode_workers import ClipDecodeDataset, Decoded, hard_limit_s, iter_decoded, source_stat
from .distributed import DistEnv, Group, RankFailed, process_group
from .extract_config import ExtractConfig, ExtractSummary
from .hw_decode import HardwareDecoder, decode_mode, on_device, resolve_decode
from .feature_extractor import (FRAME_BATCH, FeatureExtractor, audio_step_mask, backbone_info, load_extract_backbones,
                                worker_transform)

__all__ = [
    "FRAME_BATCH", "ClipDecodeDataset", "Decoded", "ExtractConfig", "ExtractSummary", "FeatureExtractor", "ShardPlan",
    "audio_step_mask", "backbone_info", "hard_limit_s", "iter_decoded", "load_extract_backbones", "run_extract",
    "source_stat", "worker_transform",
]

logger = logging.getLogger(__name__)


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
    check_distributed_format(out, cfg, env)
    decoder = resolve_decode(cfg.decode)  # a device asked for and missing: refused before any work
    with process_group(env, cfg.dist_timeout) as group, ExitStack() as stack:
        (video, audio), cache_config, plan, writer = open_cache(group, stack, manifest, out, cfg, backbones,
                                                                decode=decode_mode(decoder))
        summary = ExtractSummary(total=len(manifest), skipped=plan.skipped, cache=str(out), rank=env.rank,
                                 changed=list(plan.changed))
        failure: Exception | None = None
        try:
            if writer is None:
                writer = attach_shard(stack, out, cfg, cache_config, plan, env)
            _extract_shard(writer, plan.shards[env.rank], manifest, cfg, (video, audio), summary, env, decoder)
        except Exception as exc:  # reported to rank 0 first, raised below
            failure = exc
        summary.seconds = time.monotonic() - t0
        return _conclude(group, writer, summary, failure)


def _extract_shard(writer: CacheWriter, shard: Sequence[tuple[int, str]], manifest: Manifest, cfg: ExtractConfig,
                   backbones: tuple[VideoBackbone, AudioBackbone], summary: ExtractSummary, env: DistEnv,
                   decoder: HardwareDecoder | None = None) -> None:
    video, audio = backbones
    by_key = {r.key: r for r in manifest.rows}
    untrained = [f"{kind} {b.name}" for kind, b in (("video", video), ("audio", audio)) if not b.pretrained]
    if env.is_main and untrained:
        logger.warning("UNTRAINED backbone weights (%s): their features are for testing the pipeline only",
                       ", ".join(untrained))
    logger.info("%s: %d clips to extract, %d already in %s", env.label(), len(shard), summary.skipped, summary.cache)
    rows = [by_key[k] for _, k in shard]
    progress = _progress(len(shard), cfg.progress and env.is_main)
    decoder = on_device(decoder, video.device)   # a rank's NVDEC is its own GPU's, not GPU 0's
    with ExitStack() as stack:
        if torch.device(video.device).type == "cuda":  # decode, copies and backbones overlap (extract.gpu_feed)
            from .gpu_feed import gpu_batches

            feed = stack.enter_context(gpu_batches(rows, cfg, video, decoder))
            batches: Iterator[list[Decoded]] = iter(feed)
            stack.callback(batches.close)  # type: ignore[attr-defined]  # leaves the compute stream first
            extractor = FeatureExtractor(video, audio, cfg.layout, frame_batch=max(FRAME_BATCH, video.batch_size))
        else:  # the CPU path, as it always was
            batches = iter_decoded(rows, cfg, worker_transform(video), decoder)
            extractor = FeatureExtractor(video, audio, cfg.layout)
        _write_batches(batches, extractor, writer, summary, progress)


def _write_batches(batches: Iterator[list[Decoded]], extractor: FeatureExtractor, writer: CacheWriter,
                   summary: ExtractSummary, progress: Any) -> None:
    try:
        for batch in batches:
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
              "seconds": round(summary.seconds, 2), "error": None if failure is None else describe_error(failure)}
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
