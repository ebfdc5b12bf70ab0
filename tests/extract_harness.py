"""Helpers for the fault, distributed and fuzz tests of stage 1: a small dataset, a
reference run, exact cache comparison, and extraction in child processes.

Why child processes from a forkserver: a child forked from a process that already
imported torch, transformers and zarr starts in milliseconds where a fresh interpreter
takes seconds. It is still a real process: ``kill -9`` ends it mid-write, its flock dies
with it, and a group of them talks gloo like torchrun's ranks do. Children set one torch
thread, as torchrun does, and the reference runs do the same: CPU kernels may sum in
another order with another thread count, and these tests compare features bit for bit.
"""

from __future__ import annotations

import errno
import logging
import multiprocessing as mp
import os
import signal
import socket
import time
from contextlib import AbstractContextManager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from cache_schema import CacheReader, CacheWriter
from cache_schema.storage import ZarrBackend
from temporal.train import torch_threads
from extract.distributed import DistEnv
from extract.datasets import VAAR_CLASSES, Manifest, build_manifest
from extract.pipeline import ExtractConfig, run_extract
from tests.media_factory import write_clip

REPO = Path(__file__).resolve().parents[1]
REALDATA = REPO.parent / "shared" / "realdata"
# batch_size 1: batch composition changes the padding of the audio model's inputs, and
# a resumed or sharded run batches other clips together than a reference run.
CFG = ExtractConfig(video_model="tiny", audio_model="tiny", progress=False, workers=0, batch_size=1,
                    chunk_clips=2, steps=4, feature_dtype="float32", clip_timeout=60.0)
# The same settings as command-line options, for runs through cli.py (torchrun, subprocesses).
CLI_TINY = ["--backbones", "tiny", "--workers", "0", "--batch-size", "1", "--steps", "4",
            "--feature-dtype", "float32", "--chunk-clips", "2"]
COMPARED = ("key", "group", "label", "status", "error", "video", "audio", "video_mask", "audio_mask",
            "audio_silent", "duration", "step_time")
DEADLINE_S = 120.0  # no wait in these tests lasts longer


def make_dataset(root: Path, n: int = 8, bad: tuple[str, ...] = ("crash/bad.mp4",)) -> Path:
    """``n`` short clips over three classes with distinct content, plus unreadable files."""
    for i in range(n):
        write_clip(root / f"{VAAR_CLASSES[i % 3]}/c{i}.mp4", duration=1.0 + 0.125 * i,
                   brightness=lambda t, i=i: 0.1 + 0.08 * i, tone_hz=lambda t, i=i: 300.0 + 100 * i)
    for b in bad:
        (root / b).parent.mkdir(parents=True, exist_ok=True)
        (root / b).write_text("this is not a video")
    return root


def manifest(root: Path) -> Manifest:
    return build_manifest("synth", root)


def one_thread() -> AbstractContextManager[None]:
    """One intra-op thread: bit-identical features whatever the batch makeup or load."""
    return torch_threads(1)


def extract_here(root: Path, out: Path, cfg: ExtractConfig = CFG, **kw):
    """A single-process run in this process, with one thread (see the module doc)."""
    with one_thread():
        return run_extract(manifest(root), out, replace(cfg, **kw) if kw else cfg, env=DistEnv())


def assert_same_cache(ref: Path, got: Path) -> None:
    """Clip for clip and bit for bit, by key (row order may differ after a repair)."""
    with CacheReader(ref) as a, CacheReader(got) as b:
        ka, kb = list(a.keys), list(b.keys)
        assert sorted(k for k in ka if k) == sorted(k for k in kb if k)
        order = np.array([kb.index(k) for k in ka])
        for name in COMPARED:
            np.testing.assert_array_equal(a.read(name), b.read(name)[order], err_msg=name)
        assert b.attrs["complete"] is True


# -- extraction in child processes ---------------------------------------------------------

class Fault:
    """Something a child process does to itself before it extracts (picklable)."""

    def install(self) -> None:
        raise NotImplementedError


@dataclass(frozen=True)
class PauseBeforeStatus(Fault):
    """Stop between the features and the status of the ``nth`` batch written, touch
    ``marker`` and wait to be killed: the one moment a crash must leave a batch pending."""

    nth: int
    marker: Path

    def install(self) -> None:
        calls = [0]

        def pause(writer: CacheWriter, rows: np.ndarray) -> None:
            calls[0] += 1
            if calls[0] == self.nth:
                self.marker.touch()
                time.sleep(DEADLINE_S)  # until the test kills this process

        CacheWriter._before_status = pause  # type: ignore[method-assign]


@dataclass(frozen=True)
class PauseInResize(Fault):
    """Stop after ``after`` array resizes while rows are being added to the cache."""

    after: int
    marker: Path

    def install(self) -> None:
        real = ZarrBackend.resize
        calls = [0]

        def resize(backend: ZarrBackend, name: str, n: int) -> None:
            real(backend, name, n)
            calls[0] += 1
            if calls[0] == self.after:
                self.marker.touch()
                time.sleep(DEADLINE_S)

        ZarrBackend.resize = resize  # type: ignore[method-assign]


@dataclass(frozen=True)
class DiskFullAtClip(Fault):
    """The disk fills up while the ``nth`` clip's features are written."""

    nth: int

    def install(self) -> None:
        real = ZarrBackend.write
        clips = [0]

        def write(backend: ZarrBackend, name: str, rows: np.ndarray, values: np.ndarray) -> None:
            if name == "video":
                clips[0] += len(rows)
                if clips[0] >= self.nth:
                    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
            real(backend, name, rows, values)

        ZarrBackend.write = write  # type: ignore[method-assign]


@dataclass(frozen=True)
class Job:
    root: Path
    out: Path
    cfg: ExtractConfig
    env: DistEnv
    port: int | None
    faults: tuple[Fault, ...]


def _child_main(job: Job) -> None:
    torch.set_num_threads(1)  # as torchrun does (see the module doc)
    logging.getLogger().setLevel(logging.WARNING)
    if job.port is not None:  # what torchrun would set
        os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(job.port))
    for fault in job.faults:
        fault.install()
    run_extract(manifest(job.root), job.out, job.cfg, env=job.env)


def _context() -> mp.context.BaseContext:
    """Children fork from a forkserver that imported everything once and never ran a
    thread. Forking the test process itself is unsafe: zarr's I/O threads and torch's
    OpenMP pool live there, and a lock one of them held at fork time stays held in the
    child forever (seen as a rank stuck while building its model)."""
    ctx = mp.get_context("forkserver")
    ctx.set_forkserver_preload(["tests.extract_harness"])  # takes effect when the server starts
    return ctx


def fork_extract(root: Path, out: Path, cfg: ExtractConfig = CFG, env: DistEnv | None = None,
                 faults: tuple[Fault, ...] = (), port: int | None = None) -> mp.Process:
    """``run_extract`` in a child process (started), after installing ``faults``. The
    child is a daemon (it dies with the test session) unless it decodes in workers:
    multiprocessing forbids a daemon to have children."""
    p = _context().Process(target=_child_main, args=(Job(root, out, cfg, env or DistEnv(), port, faults),),
                           daemon=cfg.workers == 0)
    p.start()
    return p


def fork_ranks(root: Path, out: Path, world: int, cfg: ExtractConfig = CFG,
               faults: dict[int, tuple[Fault, ...]] | None = None) -> list[mp.Process]:
    """``world`` ranks of one distributed run in child processes (gloo on localhost)."""
    port = free_port()
    return [fork_extract(root, out, cfg, env=DistEnv(r, world, r), faults=(faults or {}).get(r, ()), port=port)
            for r in range(world)]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_for(condition: Callable[[], bool], what: str, timeout: float = DEADLINE_S) -> None:
    """Poll ``condition`` until true; fail the test after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(0.02)


def join(procs: list[mp.Process], timeout: float = DEADLINE_S) -> list[int | None]:
    deadline = time.monotonic() + timeout
    for p in procs:
        p.join(max(0.0, deadline - time.monotonic()))
    codes = [p.exitcode for p in procs]
    for p in procs:
        if p.is_alive():
            kill(p)
    assert None not in codes, f"processes still running after {timeout:.0f} s: exit codes {codes}"
    return codes


def kill(p: mp.Process) -> None:
    """kill -9, and reap it."""
    if p.pid is not None and p.is_alive():
        os.kill(p.pid, signal.SIGKILL)
    p.join(10)
