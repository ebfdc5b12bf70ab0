"""``make bench-extract``: stage 1's speed and memory with the full-size architectures
(untrained weights: the figures are about compute, not accuracy).

Every ratio is measured within one run on the same clips, because this machine is shared
and absolute timings drift between runs. Peak memory is measured in fresh processes (one
per clip length), since a process's peak RSS never goes down.
"""

from __future__ import annotations

import argparse
import json
import logging
import platform
import resource
import subprocess
import sys
import tempfile
import time
from fractions import Fraction
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import torch

from .decode import decode_all_frames_sequentially, decode_clip
from .manifest import Manifest, ManifestRow
from .pipeline import Decoded, ExtractConfig, FeatureExtractor, load_extract_backbones, run_extract

logger = logging.getLogger(__name__)


def write_bench_clip(path: Path, duration: float, width: int = 1280, height: int = 720, fps: int = 25,
                     seed: int = 0) -> Path:
    """An H.264/AAC clip with moving texture and noise, so that frames do not compress to
    nothing and decoding costs what real footage costs. Frames are generated lazily: the
    writer never holds the video either."""
    from synth.encode import write_clip

    rng = np.random.default_rng(seed)
    n = int(round(duration * fps))
    base = rng.integers(0, 255, size=(height + 64, width + 64, 3), dtype=np.uint8)

    def frames() -> Iterator[np.ndarray]:
        for k in range(n):
            dx, dy = (3 * k) % 64, (2 * k) % 64
            img = base[dy: dy + height, dx: dx + width].copy()
            img[: height // 4] = (k * 5) % 255
            yield img

    sr = 44100
    t = np.arange(int(duration * sr)) / sr
    audio = (0.2 * np.sin(2 * np.pi * 330 * t) + 0.05 * rng.standard_normal(t.shape)).astype(np.float32)[None]
    write_clip(path, "mp4", "aac", width, height, Fraction(fps), np.arange(n) / fps, False, frames(), audio, sr)
    return path


def _manifest(paths: list[Path]) -> Manifest:
    rows = tuple(ManifestRow(p.name, p) for p in paths)
    return Manifest("bench", paths[0].parent, (), rows)


def measure_decode(paths: list[Path], steps: int) -> dict[str, Any]:
    frames = minimum = 0
    t0 = time.perf_counter()
    for p in paths:
        clip = decode_clip(p, steps)
        frames += clip.stats.frames_decoded
        minimum += clip.stats.min_frames
    planned_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    full_frames = sum(decode_all_frames_sequentially(p) for p in paths)
    full_s = time.perf_counter() - t0
    return {
        "frames_decoded": frames,
        "frames_minimum": minimum,
        "frames_decoded_over_minimum": round(frames / max(1, minimum), 4),
        "frames_in_files": full_frames,
        "decode_s": round(planned_s, 3),
        "full_sequential_decode_s": round(full_s, 3),
        "decode_over_full_decode": round(planned_s / full_s, 4),
    }


def measure_throughput(paths: list[Path], cfg: ExtractConfig, workdir: Path) -> dict[str, Any]:
    """Backbone-only time (inputs decoded beforehand) vs end-to-end time on the same clips."""
    video, audio = load_extract_backbones(cfg)
    extractor = FeatureExtractor(video, audio, cfg.steps)
    decoded = [Decoded(p.name, clip=decode_clip(p, cfg.steps, frame_transform=video.transform)) for p in paths]
    extractor.records(decoded[:1])  # warm-up: first calls allocate
    t0 = time.perf_counter()
    for i in range(0, len(decoded), cfg.batch_size):
        extractor.records(decoded[i: i + cfg.batch_size])
    backbone_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    run_extract(_manifest(paths), workdir / "bench.zarr", cfg, backbones=(video, audio))
    e2e_s = time.perf_counter() - t0
    return {
        "clips": len(paths),
        "backbone_only_s": round(backbone_s, 3),
        "end_to_end_s": round(e2e_s, 3),
        "end_to_end_over_backbone_only": round(e2e_s / backbone_s, 4),
        "clips_per_s": round(len(paths) / e2e_s, 3),
        "video_params": sum(p.numel() for p in video.model.parameters()),
        "audio_params": sum(p.numel() for p in audio.model.parameters()),
    }


def probe_one(path: Path, cfg: ExtractConfig) -> dict[str, Any]:
    """Run in a fresh process: extract one clip, report time and peak RSS."""
    video, audio = load_extract_backbones(cfg)
    base_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        run_extract(_manifest([path]), Path(tmp) / "one.zarr", cfg, backbones=(video, audio))
        seconds = time.perf_counter() - t0
    peak_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return {"seconds": round(seconds, 3), "peak_rss_mb": round(peak_kb / 1024, 1),
            "rss_after_model_load_mb": round(base_kb / 1024, 1), "growth_mb": round((peak_kb - base_kb) / 1024, 1)}


def _probe_in_subprocess(path: Path, cfg: ExtractConfig) -> dict[str, Any]:
    cmd = [sys.executable, "-m", "extract.bench", "--probe", str(path), "--video-model", cfg.video_model,
           "--audio-model", cfg.audio_model]
    out = subprocess.run(cmd, check=True, capture_output=True, text=True, cwd=Path(__file__).resolve().parents[1])
    return json.loads(out.stdout.strip().splitlines()[-1])


def run_bench(out: Path, cfg: ExtractConfig, n_clips: int = 8) -> dict[str, Any]:
    torch.set_flush_denormal(True)
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        logger.info("writing benchmark clips")
        clips = [write_bench_clip(work / f"clip{i}.mp4", 10.0, 640, 360, seed=i) for i in range(n_clips)]
        short = write_bench_clip(work / "short_720p.mp4", 10.0)
        long = write_bench_clip(work / "long_720p.mp4", 120.0)
        logger.info("decode plan vs full decode")
        decode = measure_decode(clips + [short, long], cfg.steps)
        logger.info("backbone-only vs end-to-end on %d clips", n_clips)
        throughput = measure_throughput(clips, cfg, work)
        logger.info("peak RSS and time: 10 s vs 120 s 720p, one process each")
        p10 = _probe_in_subprocess(short, cfg)
        p120 = _probe_in_subprocess(long, cfg)
    result = {
        "device": cfg.device, "precision": cfg.precision, "cpu": platform.processor() or platform.machine(),
        "torch_threads": torch.get_num_threads(), "workers": cfg.workers, "batch_size": cfg.batch_size,
        "steps": cfg.steps, "video_model": cfg.video_model, "audio_model": cfg.audio_model,
        "weights": "untrained (random preset): compute figures only",
        "decode": decode,
        "throughput": throughput,
        "clip_10s_720p": p10,
        "clip_120s_720p": p120,
        "peak_rss_120s_over_10s": round(p120["peak_rss_mb"] / p10["peak_rss_mb"], 4),
        "time_120s_over_10s": round(p120["seconds"] / p10["seconds"], 3),
    }
    result["targets"] = {
        "end_to_end_over_backbone_only <= 1.3": throughput["end_to_end_over_backbone_only"] <= 1.3,
        "frames_decoded_over_minimum <= 1.05": decode["frames_decoded_over_minimum"] <= 1.05,
        "peak_rss_120s_over_10s <= 1.2": result["peak_rss_120s_over_10s"] <= 1.2,
        "time_120s_over_10s <= 13": result["time_120s_over_10s"] <= 13,
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2))
    return result


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--out", type=Path, default=Path("reports/bench/extract.json"))
    ap.add_argument("--video-model", default="random")
    ap.add_argument("--audio-model", default="random")
    ap.add_argument("--clips", type=int, default=8)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--device", default="cpu", choices=["cpu", "cuda", "auto"])
    ap.add_argument("--probe", type=Path, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    cfg = ExtractConfig(video_model=args.video_model, audio_model=args.audio_model, workers=args.workers,
                        batch_size=args.batch_size, progress=False, device=args.device)
    if args.probe:
        logging.disable(logging.WARNING)
        print(json.dumps(probe_one(args.probe, ExtractConfig(**{**cfg.__dict__, "workers": 0}))))
        return
    result = run_bench(args.out, cfg, args.clips)
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
