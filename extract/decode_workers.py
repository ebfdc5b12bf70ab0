"""Decoding in worker processes: manifest rows -> batches of :class:`Decoded` clips.

Decoding runs in DataLoader worker processes so that it overlaps the model; each worker
also applies the video backbone's preprocessing (``worker_transform``), so the main
process only stacks tensors and runs the networks. A decoder that crashes or hangs its
worker process is isolated and its clip recorded as failed, so one bad file never stops
a run.
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
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import torch
from torch.utils.data import DataLoader, Dataset

from cache_schema import SAMPLE_RATE, StepLayout, die_with_parent

from .datasets import ManifestRow
from .decode import ClipTimeout, DecodedClip, DecodeError, decode_clip
from .extract_config import ExtractConfig
from .hw_decode import HardwareDecoder

__all__ = ["ClipDecodeDataset", "Decoded", "hard_limit_s", "iter_decoded", "source_stat"]

logger = logging.getLogger(__name__)


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
                 timeout: float, decoder: HardwareDecoder | None = None):
        self.rows = list(rows)
        self.decoder = decoder
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
                    deadline=time.monotonic() + self.timeout, decoder=self.decoder,
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
    # A worker dies with the process that started it (kill -9 and the OOM killer run no
    # cleanup, and an orphaned worker can wait for ever on its result pipe); the lock's
    # descriptor was already closed here by ``cache_schema.lock``'s fork hook.
    die_with_parent(parent_pid)
    torch.set_num_threads(1)
    torch.set_flush_denormal(True)  # a forked worker has it already; a spawned one (CUDA decoding) starts afresh


def _collate(batch: list[Decoded]) -> list[Decoded]:
    return batch


def _collect_before_fork() -> None:
    """Free this process's garbage before forking decode workers. A PyAV frame left in a
    reference cycle owns FFmpeg (swscale) threads; a forked child inherits the frame but
    not the threads, and when the child's garbage collector frees it, FFmpeg waits for
    those threads forever (seen in gdb: ``avpriv_slicethread_free`` in a stuck worker)."""
    gc.collect()


def _worker_context(decoder: HardwareDecoder | None = None) -> multiprocessing.context.BaseContext:
    """Decode workers are forked where the platform can (they start in milliseconds and
    inherit the parent's start-up), whatever the process's default start method is (a
    process started by a forkserver defaults to one, and Python 3.14 makes it the default).

    Workers that decode on a CUDA device are spawned instead: CUDA cannot be initialised
    again in a child forked from a process that initialised it (the device check and a
    backbone on the GPU both do), so a forked worker's NVDEC would never open."""
    methods = multiprocessing.get_all_start_methods()
    if decoder is not None and decoder.kind == "cuda":
        return multiprocessing.get_context("spawn")
    return multiprocessing.get_context("fork" if "fork" in methods else None)


def _loader(rows: Sequence[ManifestRow], cfg: ExtractConfig, transform: Callable | None, workers: int,
            batch_size: int | None = None, decoder: HardwareDecoder | None = None) -> DataLoader:
    if workers:
        _collect_before_fork()
    ds = ClipDecodeDataset(rows, cfg.layout, transform, cfg.clip_timeout, decoder)
    bs = batch_size or cfg.decode_batch
    ctx = _worker_context(decoder) if workers else None
    # a forked or spawned worker's parent is this process, which lets the worker check it is still
    # there (a forkserver's children are the server's)
    parent = os.getpid() if ctx is not None and ctx.get_start_method() in ("fork", "spawn") else None
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


def iter_decoded(rows: Sequence[ManifestRow], cfg: ExtractConfig, transform: Callable | None,
                 decoder: HardwareDecoder | None = None) -> Iterator[list[Decoded]]:
    """Batches of decoded clips in manifest order. If a decoder crashes its worker
    process, or hangs it where even the in-process time limit cannot reach (inside one C
    call), the batch in flight is retried clip by clip in fresh processes, and a clip that
    fails again is reported as an error instead of stopping (or stalling) the run.
    ``decoder``: the hardware decoder the run resolved (``extract.hw_decode``), None: software."""
    start = 0
    while start < len(rows):
        batches = iter(_loader(rows[start:], cfg, transform, cfg.workers, decoder=decoder))
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
            yield [_isolated(row, cfg, transform, decoder) for row in bad]
        start = bad_from + cfg.decode_batch


def _isolated(row: ManifestRow, cfg: ExtractConfig, transform: Callable | None,
              decoder: HardwareDecoder | None) -> Decoded:
    """One clip decoded alone in a fresh worker process."""
    batches = iter(_loader([row], cfg, transform, 1, batch_size=1, decoder=decoder))
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

