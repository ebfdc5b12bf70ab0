"""Training speed on a VAAR-sized cache (3,000 clips x T steps x 640+768 features).

The cache is generated (random features and labels) through ``cache_schema``'s writer in
a temporary directory, so the benchmark reads exactly what a real cache offers; the
figure is the wall time of one training epoch over all clips on this machine.
"""

from __future__ import annotations

import os
import statistics
import tempfile
import time
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from cache_schema import (SAMPLE_RATE, BackboneInfo, CacheConfig, CacheWriter, ClipEntry, ClipRecord, check_output_file,
                          cpu_model, write_json)

from .data import CacheData, HeadInputs, load_cache
from .train import TrainConfig, build_model, make_optimizer, torch_threads, train_epoch


def build_bench_cache(path: str | Path, n_clips: int = 3000, steps: int = 10, video_dim: int = 640,
                      audio_dim: int = 768, num_classes: int = 10, seed: int = 0) -> Path:
    """A cache of random fp16 features with the real schema (untrained-backbone flags)."""
    path = Path(path)
    config = CacheConfig(
        steps=steps, sample_rate=SAMPLE_RATE,
        video=BackboneInfo("bench", "random", "0" * 8, False, video_dim),
        audio=BackboneInfo("bench", "random", "0" * 8, False, audio_dim),
        class_names=tuple(f"class{i}" for i in range(num_classes - 1)) + ("normal",),
    )
    rng = np.random.default_rng(seed)
    entries = [ClipEntry(f"c/{i:05d}.mp4", i % num_classes) for i in range(n_clips)]
    with CacheWriter.open(path, config, entries, chunk_clips=256) as w:
        for start in range(0, n_clips, 256):
            w.write([
                ClipRecord(key=e.key, status="ok",
                           video=rng.standard_normal((steps, video_dim), dtype=np.float32),
                           audio=rng.standard_normal((steps, audio_dim), dtype=np.float32),
                           video_mask=np.ones(steps, bool), audio_mask=np.ones(steps, bool), duration=5.0,
                           step_time=(np.arange(steps) + 0.5) * 5.0 / steps)
                for e in entries[start:start + 256]
            ])
        w.finish()
    return path


def bench_train(out_json: str | Path | None = None, n_clips: int = 3000, steps: int = 10, epochs: int = 3,
                config: TrainConfig = TrainConfig(), workdir: str | Path | None = None, video_dim: int = 640,
                audio_dim: int = 768, grid: Sequence[tuple[int, int]] = ()) -> dict[str, Any]:
    """Seconds per training epoch of ``config``'s head over ``n_clips`` cached clips, for
    ``config`` itself (batch size, threads) and for each ``(batch_size, threads)`` of
    ``grid``. Every setting gets its own model; the settings take turns epoch by epoch, so
    that a slow spell of this shared machine hits them all alike (the ratios between them
    are what one run can vouch for)."""
    if out_json is not None:
        check_output_file(out_json)
    with tempfile.TemporaryDirectory(dir=workdir) as tmp:
        t0 = time.perf_counter()
        cache = build_bench_cache(Path(tmp) / "bench.zarr", n_clips=n_clips, steps=steps, video_dim=video_dim,
                                  audio_dim=audio_dim)
        t_build = time.perf_counter() - t0
        t0 = time.perf_counter()
        data = load_cache(cache)
        t_load = time.perf_counter() - t0
    settings = [(config.batch_size, config.threads or torch.get_num_threads())]
    for g in grid:
        if g not in settings:
            settings.append(g)
    runs = [_Timed(data, replace(config, batch_size=settings[0][0], threads=settings[0][1]))]
    # The settings share one set of head inputs (the same standardised clips; the
    # augmentations act on gathered copies): 170 MB each at the paper's dims.
    runs += [_Timed(data, replace(config, batch_size=b, threads=t), runs[0].inputs) for b, t in settings[1:]]
    for _ in range(epochs):
        for run in runs:
            run.epoch()
    default = runs[0]
    result = {
        "head": config.head, "modality": config.modality, "fusion": config.fusion, "params": default.params,
        "n_clips": n_clips, "steps": steps, "video_dim": video_dim, "audio_dim": audio_dim,
        "batch_size": config.batch_size, "torch_threads": default.config.threads, "epochs_timed": epochs,
        "seconds_per_epoch": statistics.median(default.times), "epoch_seconds": default.times,
        "grid": [{"batch_size": r.config.batch_size, "threads": r.config.threads,
                  "seconds_per_epoch": statistics.median(r.times), "epoch_seconds": r.times} for r in runs],
        "cache_build_seconds": t_build, "cache_load_seconds": t_load, "cpu_count": os.cpu_count(),
        "torch": torch.__version__, "machine": cpu_model(),
        "head_options": asdict(config).get("head_options"),
    }
    if out_json is not None:
        Path(out_json).parent.mkdir(parents=True, exist_ok=True)
        write_json(out_json, result)
    return result


class _Timed:
    """One benchmarked setting: its own model and optimizer, timed per epoch."""

    def __init__(self, data: CacheData, config: TrainConfig, inputs: HeadInputs | None = None) -> None:
        self.config = config
        torch.manual_seed(config.seed)
        self.model = build_model(config, data)
        self.params = self.model.parameter_count()
        self.model.standardize.fit(data.clips)
        if inputs is None:
            with torch.no_grad():
                inputs = self.model.head_inputs(data.clips)
        self.inputs = inputs
        self.optimizer = make_optimizer(self.model, config)
        self.generator = torch.Generator().manual_seed(config.seed)
        self.times: list[float] = []

    def epoch(self) -> None:
        with torch_threads(self.config.threads):
            t0 = time.perf_counter()
            train_epoch(self.model, self.inputs, self.optimizer, self.config, self.generator)
            self.times.append(time.perf_counter() - t0)
