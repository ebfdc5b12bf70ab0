"""Training speed on a VAAR-sized cache (3,000 clips x T steps x 640+768 features).

The cache is generated (random features and labels) through ``cache_schema``'s writer in
a temporary directory, so the benchmark reads exactly what a real cache offers; the
figure is the wall time of one training epoch over all clips on this machine.
"""

from __future__ import annotations

import json
import os
import platform
import statistics
import tempfile
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import torch

from cache_schema import BackboneInfo, CacheConfig, CacheWriter, ClipEntry, ClipRecord

from .data import load_cache
from .train import TrainConfig, build_model, make_optimizer, torch_threads, train_epoch


def build_bench_cache(path: str | Path, n_clips: int = 3000, steps: int = 10, video_dim: int = 640,
                      audio_dim: int = 768, num_classes: int = 10, seed: int = 0) -> Path:
    """A cache of random fp16 features with the real schema (untrained-backbone flags)."""
    path = Path(path)
    config = CacheConfig(
        steps=steps, sample_rate=16000,
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
                audio_dim: int = 768) -> dict[str, Any]:
    """Seconds per training epoch of ``config``'s head over ``n_clips`` cached clips
    (with ``config.threads`` intra-op threads)."""
    with torch_threads(config.threads):
        return _bench(out_json, n_clips, steps, epochs, config, workdir, video_dim, audio_dim)


def _bench(out_json: str | Path | None, n_clips: int, steps: int, epochs: int, config: TrainConfig,
           workdir: str | Path | None, video_dim: int, audio_dim: int) -> dict[str, Any]:
    torch.set_flush_denormal(True)
    with tempfile.TemporaryDirectory(dir=workdir) as tmp:
        t0 = time.perf_counter()
        cache = build_bench_cache(Path(tmp) / "bench.zarr", n_clips=n_clips, steps=steps, video_dim=video_dim,
                                  audio_dim=audio_dim)
        t_build = time.perf_counter() - t0
        t0 = time.perf_counter()
        data = load_cache(cache)
        t_load = time.perf_counter() - t0
    torch.manual_seed(config.seed)
    model = build_model(config, data)
    model.standardize.fit(data.clips)
    with torch.no_grad():
        inputs = model.head_inputs(data.clips)
    optimizer = make_optimizer(model, config)
    generator = torch.Generator().manual_seed(config.seed)
    times = []
    for _ in range(epochs):
        t0 = time.perf_counter()
        train_epoch(model, inputs, optimizer, config, generator)
        times.append(time.perf_counter() - t0)
    result = {
        "head": config.head, "modality": config.modality, "fusion": config.fusion, "params": model.parameter_count(),
        "n_clips": n_clips, "steps": steps, "video_dim": video_dim, "audio_dim": audio_dim, "batch_size": config.batch_size,
        "epochs_timed": epochs, "seconds_per_epoch": statistics.median(times), "epoch_seconds": times,
        "cache_build_seconds": t_build, "cache_load_seconds": t_load,
        "torch_threads": torch.get_num_threads(), "cpu_count": os.cpu_count(), "torch": torch.__version__,
        "machine": platform.processor() or platform.machine(), "head_options": asdict(config).get("head_options"),
    }
    if out_json is not None:
        Path(out_json).parent.mkdir(parents=True, exist_ok=True)
        Path(out_json).write_text(json.dumps(result, indent=1))
    return result
