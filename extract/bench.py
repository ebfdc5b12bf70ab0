"""``cli.py bench extract``: stage 1's speed and memory with the full-size architectures
(untrained weights: the figures are about compute, not accuracy).

Every ratio is measured within one run on the same clips, because this machine is shared
and absolute timings drift between runs. Peak memory is measured in fresh processes (one
per clip length), since a process's peak RSS never goes down.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import resource
import tempfile
import threading
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch

from cache_schema import StepLayout, check_output_file, cpu_model, spawned_worker_init, write_json
from synth.bench_clip import write_bench_clip

from .decode import decode_all_frames_sequentially, decode_clip
from .backbones import resolve_device, resolve_precision
from .datasets import Manifest, ManifestRow
from .pipeline import Decoded, ExtractConfig, FeatureExtractor, load_extract_backbones, run_extract
from .backbones import VideoTransform
from .decode_workers import iter_decoded
from .hw_decode import HW_KINDS, SOFTWARE, decode_mode, device_error, on_device, resolve_decode

GRID_VIDEO_S = 600.0
GRID_STEP_S = 0.6667  # XD-Violence's snippet: 16 frames at 24 fps

logger = logging.getLogger(__name__)


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


def measure_throughput(paths: list[Path], cfg: ExtractConfig, workdir: Path,
                       backbones: tuple[Any, Any] | None = None) -> dict[str, Any]:
    """Backbone-only time (inputs decoded beforehand) vs end-to-end time on the same clips."""
    video, audio = backbones or load_extract_backbones(cfg)
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
    """``probe_one`` in a fresh (spawned) process, whose peak RSS is this clip's alone."""
    ctx = multiprocessing.get_context("spawn")
    # A spawned process starts with the default floating-point mode: flush denormals there
    # too, as every entry point does (untrained MobileViT is ~10x slower without it); it
    # dies with this process.
    with ctx.Pool(1, initializer=spawned_worker_init, initargs=(os.getpid(),)) as pool:
        return pool.apply(probe_one, (path, replace(cfg, workers=0)))


def _resident_kb() -> int:
    """This process's resident set size now (kB), from /proc (Linux)."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * resource.getpagesize() // 1024
    except (OSError, ValueError, IndexError):
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


def decode_grid_one(path: Path, step_seconds: float, data_config: dict[str, Any]) -> dict[str, Any]:
    """Run in a fresh process: decode one file on a time grid as an extraction worker does
    (frames kept as the backbone transform's uint8 crops), report cost and peak RSS."""
    transform = VideoTransform(data_config)
    # The process's high-water mark (ru_maxrss) is set by importing torch, before any
    # decoding: sample the resident size during the decode instead.
    base_kb, peak = _resident_kb(), [0]
    done = threading.Event()

    def sample() -> None:
        while not done.wait(0.02):
            peak[0] = max(peak[0], _resident_kb())

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    t0 = time.perf_counter()
    try:
        clip = decode_clip(path, StepLayout(step_seconds=step_seconds), frame_transform=transform.geometry)
    finally:
        seconds = time.perf_counter() - t0
        done.set()
        sampler.join()
    peak_kb = max(peak[0], _resident_kb())
    held = sum(f.nbytes for f in {id(f): f for f in clip.frames}.values()) if clip.frames else 0
    c, h, w = (int(x) for x in data_config["input_size"])
    return {
        "steps": clip.steps, "frames_decoded": clip.stats.frames_decoded, "frames_minimum": clip.stats.min_frames,
        "frames_decoded_over_minimum": round(clip.stats.frames_decoded / max(1, clip.stats.min_frames), 4),
        "decode_mode": clip.stats.mode, "seeks": clip.stats.seeks, "decode_s": round(seconds, 3),
        "frames_held_mb": round(held / 2**20, 1),
        "frames_as_float_tensors_would_hold_mb": round(clip.steps * c * h * w * 4 / 2**20, 1),
        "peak_rss_mb": round(peak_kb / 1024, 1), "rss_before_decode_mb": round(base_kb / 1024, 1),
        "growth_mb": round((peak_kb - base_kb) / 1024, 1),
    }


def measure_grid_video(work: Path, cfg: ExtractConfig, duration: float = GRID_VIDEO_S,
                       step_seconds: float = GRID_STEP_S) -> dict[str, Any]:
    """A long 720p video (H.264, a keyframe every 2 s as a camera writes) decoded on a time
    grid in a fresh process: frames decoded vs the plan's minimum, time vs one sequential
    decode of every frame, peak RSS of the decoding process."""
    path = write_bench_clip(work / "grid_720p.mp4", duration, grain=8)
    video = load_video_backbone_config(cfg)
    ctx = multiprocessing.get_context("spawn")
    with ctx.Pool(1, initializer=spawned_worker_init, initargs=(os.getpid(),)) as pool:
        row = pool.apply(decode_grid_one, (path, step_seconds, video))
    t0 = time.perf_counter()
    row["frames_in_file"] = decode_all_frames_sequentially(path)
    row["full_sequential_decode_s"] = round(time.perf_counter() - t0, 3)
    row["decode_over_full_decode"] = round(row["decode_s"] / row["full_sequential_decode_s"], 4)
    row.update(video=f"{duration:g} s 1280x720 H.264 at 25 fps, keyframe every 2 s, 8-pixel noise cells",
               step_seconds=step_seconds)
    return row


def load_video_backbone_config(cfg: ExtractConfig) -> dict[str, Any]:
    """The data config of the bench's video backbone (what its worker transform crops to)."""
    from .backbones import load_video_backbone

    return dict(load_video_backbone(cfg.video_model, device="cpu").transform.data_config)


def run_grid_bench(out: Path, cfg: ExtractConfig) -> dict[str, Any]:
    """The time-grid row alone (``bench extract --grid-only``); the JSON goes to ``out``."""
    check_output_file(out)
    with tempfile.TemporaryDirectory() as tmp:
        grid = measure_grid_video(Path(tmp), cfg)
    result = {"cpu": cpu_model(), "video_model": cfg.video_model,
              "grid_600s_720p": grid,
              "targets": {"grid frames_decoded_over_minimum <= 1.05": grid["frames_decoded_over_minimum"] <= 1.05}}
    out.parent.mkdir(parents=True, exist_ok=True)
    write_json(out, result, indent=2)
    return result


def run_bench(out: Path, cfg: ExtractConfig, n_clips: int = 8, grid_video: bool = False) -> dict[str, Any]:
    """Every figure of ``bench extract`` on freshly written clips; the JSON goes to ``out``.
    ``grid_video`` adds the 10-minute 720p video on a 0.6667 s grid (minutes to write)."""
    check_output_file(out)
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        logger.info("writing benchmark clips")
        clips = [write_bench_clip(work / f"clip{i}.mp4", 10.0, 640, 360, seed=i) for i in range(n_clips)]
        short = write_bench_clip(work / "short_720p.mp4", 10.0)
        long = write_bench_clip(work / "long_720p.mp4", 120.0)
        logger.info("decode plan vs full decode")
        decode = measure_decode(clips + [short, long], cfg.steps)
        logger.info("decode-only per decode mode available here")
        modes = measure_decode_modes(clips, cfg, load_video_backbone_config(cfg))
        logger.info("backbone-only vs end-to-end on %d clips", n_clips)
        throughput = measure_throughput(clips, cfg, work)
        logger.info("peak RSS and time: 10 s vs 120 s 720p, one process each")
        p10 = _probe_in_subprocess(short, cfg)
        p120 = _probe_in_subprocess(long, cfg)
        grid = None
        if grid_video:
            logger.info("a %g s 720p video on a %g s grid", GRID_VIDEO_S, GRID_STEP_S)
            grid = measure_grid_video(work, cfg)
    result = {
        "device": cfg.device, "precision": resolve_precision(cfg.precision, resolve_device(cfg.device)),
        "cpu": cpu_model(),
        "torch_threads": torch.get_num_threads(), "workers": cfg.workers, "batch_size": cfg.batch_size,
        "steps": cfg.steps, "video_model": cfg.video_model, "audio_model": cfg.audio_model,
        "weights": "untrained (random preset): compute figures only",
        "decode": decode,
        "decode_modes": modes,
        "throughput": throughput,
        "clip_10s_720p": p10,
        "clip_120s_720p": p120,
        "peak_rss_120s_over_10s": round(p120["peak_rss_mb"] / p10["peak_rss_mb"], 4),
        "time_120s_over_10s": round(p120["seconds"] / p10["seconds"], 3),
    }
    if grid is not None:
        result["grid_600s_720p"] = grid
    result["targets"] = {
        "end_to_end_over_backbone_only <= 1.3": throughput["end_to_end_over_backbone_only"] <= 1.3,
        "frames_decoded_over_minimum <= 1.05": decode["frames_decoded_over_minimum"] <= 1.05,
        "peak_rss_120s_over_10s <= 1.2": result["peak_rss_120s_over_10s"] <= 1.2,
        "time_120s_over_10s <= 13": result["time_120s_over_10s"] <= 13,
    }
    if grid is not None:
        result["targets"]["grid frames_decoded_over_minimum <= 1.05"] = grid["frames_decoded_over_minimum"] <= 1.05
    out.parent.mkdir(parents=True, exist_ok=True)
    write_json(out, result, indent=2)
    return result


def run_preset_bench(out: Path, cfg: ExtractConfig, preset: str, baseline: str = "random",
                     n_clips: int = 4) -> dict[str, Any]:
    """``bench extract --backbones PRESET``: the preset's backbones against the paper's
    architectures (``baseline``: ``random``, the same cost as the pretrained hub weights)
    in one run, on the same clips: a 10 s 720p clip end to end in a fresh process each,
    and backbone-only vs end-to-end throughput on ``n_clips`` 10 s 640x360 clips."""
    from .backbones import BACKBONE_PRESETS

    check_output_file(out)
    rows: dict[str, dict[str, Any]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        clips = [write_bench_clip(work / f"clip{i}.mp4", 10.0, 640, 360, seed=i) for i in range(n_clips)]
        short = write_bench_clip(work / "short_720p.mp4", 10.0)
        for name in (baseline, preset):
            video_model, audio_model = BACKBONE_PRESETS[name]
            run_cfg = replace(cfg, video_model=video_model, audio_model=audio_model)
            logger.info("%s backbones (%s + %s)", name, video_model, audio_model)
            (work / name).mkdir()
            rows[name] = {"video_model": video_model, "audio_model": audio_model,
                          "clip_10s_720p": _probe_in_subprocess(short, run_cfg),
                          "throughput": measure_throughput(clips, run_cfg, work / name)}
    def ratio(*path: str) -> float:
        a, b = rows[preset], rows[baseline]
        for key in path:
            a, b = a[key], b[key]
        return round(a / b, 4)

    ratios = {"10s_720p_clip_fresh_process": ratio("clip_10s_720p", "seconds"),
              "backbone_only": ratio("throughput", "backbone_only_s"),
              "end_to_end": ratio("throughput", "end_to_end_s")}
    result = {
        "device": cfg.device, "precision": resolve_precision(cfg.precision, resolve_device(cfg.device)),
        "cpu": cpu_model(), "torch_threads": torch.get_num_threads(), "workers": cfg.workers,
        "steps": cfg.steps, "rows": rows,
        f"{preset}_over_{baseline}": ratios,
        "definitions": {"10s_720p_clip_fresh_process": "one 10 s 720p clip extracted in a fresh process, backbones "
                                                       "loaded first (decode, cache writes and start-up included)",
                        "backbone_only": f"{n_clips} 10 s 360p clips, inputs decoded beforehand",
                        "end_to_end": f"the same {n_clips} clips through run_extract"},
        "targets": {f"{preset} 10 s clip <= 1/10 of the paper backbones' cost": ratios["10s_720p_clip_fresh_process"]
                    <= 0.1},
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    write_json(out, result, indent=2)
    return result


def decode_modes_here() -> tuple[list[str], dict[str, str]]:
    """The decode modes this machine can run (``sw`` always), and why each other is missing."""
    missing = {kind: why for kind in HW_KINDS if (why := device_error(kind)) is not None}
    return [SOFTWARE] + [k for k in HW_KINDS if k not in missing], missing


def measure_decode_only(paths: list[Path], cfg: ExtractConfig, data_config: dict[str, Any],
                        keep: list[list[Decoded]] | None = None) -> dict[str, Any]:
    """Clips per second through the decode workers alone (``cfg.workers`` processes, the
    worker transform applied, no backbone): what decoding can feed the backbones. The
    decoded batches are appended to ``keep`` where given (the backbone-only row's input)."""
    decoder = on_device(resolve_decode(cfg.decode), cfg.device)   # the GPU the run's backbones use
    transform = VideoTransform(data_config)
    rows = [ManifestRow(p.name, p) for p in paths]
    t0 = time.perf_counter()
    done = failed = 0
    for batch in iter_decoded(rows, cfg, transform.geometry if transform.splits else transform, decoder):
        done += sum(d.clip is not None for d in batch)
        failed += sum(d.clip is None for d in batch)
        if keep is not None:
            keep.append(batch)
    seconds = time.perf_counter() - t0
    return {"decode": decode_mode(decoder), "clips": done, "failed": failed, "decode_only_s": round(seconds, 3),
            "decode_only_clips_per_s": round(done / seconds, 3) if seconds > 0 else None}


def measure_backbone_only(batches: list[list[Decoded]], extractor: FeatureExtractor) -> float:
    """Seconds the backbones take over batches decoded beforehand (a warm-up call first)."""
    if batches:
        extractor.records(batches[0][:1])
    cuda = str(extractor.video.device).startswith("cuda")
    if cuda:
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    for batch in batches:
        extractor.records(batch)
    if cuda:
        torch.cuda.synchronize()
    return time.perf_counter() - t0


def measure_decode_modes(paths: list[Path], cfg: ExtractConfig, data_config: dict[str, Any]) -> dict[str, Any]:
    """A decode-only row per decode mode available on this machine, on the same clips."""
    modes, missing = decode_modes_here()
    rows = {mode: measure_decode_only(paths, replace(cfg, decode=mode), data_config) for mode in modes}
    return {"rows": rows, "unavailable": missing}


def bench_clips(folder: Path, n: int, width: int = 1280, height: int = 720, duration: float = 10.0) -> list[Path]:
    """``n`` generated H.264 clips in ``folder`` (files already there are reused, so that
    several bench runs time the same clips), written in parallel fresh processes."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = [folder / f"clip{i:04d}_{width}x{height}_{duration:g}s.mp4" for i in range(n)]
    todo = [(p, duration, width, height, 25, i, 8) for i, p in enumerate(paths) if not p.is_file()]
    if todo:
        ctx = multiprocessing.get_context("spawn")
        with ctx.Pool(max(1, min(len(todo), os.cpu_count() or 1)), initializer=spawned_worker_init,
                      initargs=(os.getpid(),)) as pool:
            pool.starmap(write_bench_clip, todo)
    return paths


def run_throughput_bench(out: Path, cfg: ExtractConfig, n_clips: int, clip_dir: Path | None = None) -> dict[str, Any]:
    """``bench extract --throughput-only``: on ``n_clips`` 10 s 720p clips, decode-only (per
    decode mode available here), backbone-only (on the clips decoded by the asked mode)
    and end-to-end (``run_extract``) throughput, in one run; the JSON goes to ``out``."""
    check_output_file(out)
    decoder = resolve_decode(cfg.decode)  # an explicit device that does not open: refused before any work
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        paths = bench_clips(clip_dir or work / "clips", n_clips)
        video, audio = load_extract_backbones(cfg)
        data_config = dict(video.transform.data_config)
        modes, missing = decode_modes_here()
        rows: dict[str, Any] = {}
        decoded: list[list[Decoded]] = []
        for mode in modes:
            asked = mode == decode_mode(decoder)
            rows[mode] = measure_decode_only(paths, replace(cfg, decode=mode), data_config,
                                             keep=decoded if asked else None)
        if not decoded:  # the asked mode is not among those measured (cannot happen: it resolved here)
            rows[decode_mode(decoder)] = measure_decode_only(paths, cfg, data_config, keep=decoded)
        extractor = FeatureExtractor(video, audio, cfg.steps)
        backbone_s = measure_backbone_only(decoded, extractor)
        del decoded
        t0 = time.perf_counter()
        run_extract(_manifest(paths), work / "bench.zarr", cfg, backbones=(video, audio))
        e2e_s = time.perf_counter() - t0
    device = resolve_device(cfg.device)
    decode_row = rows[decode_mode(decoder)]
    result = {
        "device": device,
        "gpu": torch.cuda.get_device_name(torch.device(device)) if device.startswith("cuda") else None,
        "cpu": cpu_model(), "cpu_cores": os.cpu_count(), "precision": getattr(video, "precision", None),
        "decode": decode_mode(decoder), "workers": cfg.workers, "batch_size": cfg.batch_size, "steps": cfg.steps,
        "video_model": cfg.video_model, "audio_model": cfg.audio_model,
        "clips": f"{n_clips} generated 10 s 1280x720 H.264 clips at 25 fps",
        "decode_only_clips_per_s": decode_row["decode_only_clips_per_s"],
        "backbone_only_clips_per_s": round(n_clips / backbone_s, 3) if backbone_s > 0 else None,
        "end_to_end_clips_per_s": round(n_clips / e2e_s, 3),
        "decode_modes": {"rows": rows, "unavailable": missing},
        "definitions": {
            "decode_only": "the decode workers alone: probe, keyframe-planned frames, audio, the transform's crops",
            "backbone_only": "both backbones over those decoded clips (crops finished to float, copied to the device)",
            "end_to_end": "run_extract: decode workers, backbones, cache writes",
        },
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    write_json(out, result, indent=2)
    return result
