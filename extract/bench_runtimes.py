"""``cli.py bench extract --runtimes``: the frozen backbones on every runtime installed here,
in one run on the same decoded clip, next to a measured matmul roofline.

Per runtime: the video backbone on one 10 s 720p clip's frames (10 at the backbone's input
size) and the audio backbone on its 10 s of audio, each timed alone (backbone-only,
decoding excluded), and the same clip end to end through ``run_extract``. Every runtime's
backbones are loaded first and then timed in interleaved rounds, the best of each kept, so
that other work on a shared machine slows them alike. GFLOP per frame and per second of audio are torch's counts
(``registry.measure_cost``); the roofline is a plain square matmul at the backbones'
precision, measured in the same run, so "fraction of peak" is the GFLOP/s a runtime
reaches over what this CPU's matmul reaches. Ratios, not times: the machine is shared.
"""

from __future__ import annotations

import logging
import tempfile
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from cache_schema import check_output_file, cpu_model, write_json
from synth.bench_clip import write_bench_clip

from .backbones import AUTO, installed_runtimes, resolve_device, resolve_precision
from .backbones.registry import AUDIO, VIDEO, entry, measure_cost
from .backbones.runtimes import RUNTIMES
from .decode import decode_clip
from .pipeline import ExtractConfig, load_extract_backbones, run_extract

logger = logging.getLogger(__name__)

MATMUL_N = 2048
REPEATS = 5
SETTLE_S = 0.5
"""Pause before each timed call: the thread pools of the runtime timed before (OpenVINO's,
torch's) spin a while after their last call and would slow the next one."""
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def matmul_gflops(precision: str = "fp32", n: int = MATMUL_N, repeats: int = 5) -> float:
    """GFLOP/s of a plain ``n x n`` matmul in torch at ``precision`` (best of ``repeats``)."""
    dtype = DTYPES[precision]
    a, b = torch.randn(n, n).to(dtype), torch.randn(n, n).to(dtype)
    torch.mm(a, b)
    best = float("inf")
    for _ in range(repeats):
        started = time.perf_counter()
        torch.mm(a, b)
        best = min(best, time.perf_counter() - started)
    return 2 * n**3 / best / 1e9


def runtimes_to_bench(requested: str) -> list[str]:
    """``all`` -> every installed runtime and ``auto``; else the comma-separated names."""
    if requested == "all":
        return [*installed_runtimes(), AUTO]
    return [r.strip() for r in requested.split(",") if r.strip()]


def backbone_gflop(modality: str, name: str) -> float | None:
    known = entry(modality, name)
    return measure_cost(known, repeats=1).gflop if known else None


class RuntimeRow:
    """One runtime's backbones, loaded once, timed in rounds with the others."""

    def __init__(self, runtime: str, cfg: ExtractConfig, clip: Path) -> None:
        self.runtime, self.cfg = runtime, replace(cfg, runtime=runtime)
        started = time.perf_counter()
        self.video, self.audio = load_extract_backbones(self.cfg)
        self.load_s = time.perf_counter() - started
        decoded = decode_clip(clip, cfg.steps, frame_transform=self.video.transform)
        self.images = torch.stack([torch.as_tensor(f) for f in decoded.frames])
        self.waveform = np.asarray(decoded.audio, dtype=np.float32)
        self.bounds = np.asarray(decoded.step_bounds, dtype=np.float64)
        self.video_s = self.audio_s = self.end_to_end_s = float("inf")
        with torch.inference_mode():  # warm-up: first calls allocate (and compile, for the exported runtimes)
            self.video.embed(self.images)
            self.audio.embed([(self.waveform, self.bounds)])

    def time_backbones(self) -> None:
        with torch.inference_mode():
            time.sleep(SETTLE_S)
            started = time.perf_counter()
            self.video.embed(self.images)
            middle = time.perf_counter()
            time.sleep(SETTLE_S)
            resumed = time.perf_counter()
            self.audio.embed([(self.waveform, self.bounds)])
            ended = time.perf_counter()
        self.video_s, self.audio_s = min(self.video_s, middle - started), min(self.audio_s, ended - resumed)

    def time_end_to_end(self, clip: Path, out: Path) -> None:
        time.sleep(SETTLE_S)
        started = time.perf_counter()
        run_extract(_manifest(clip), out, self.cfg, backbones=(self.video, self.audio))
        self.end_to_end_s = min(self.end_to_end_s, time.perf_counter() - started)

    def row(self) -> dict[str, Any]:
        return {"video": {"runtime": self.video.runtime, "precision": self.video.precision,
                          "frames": int(self.images.shape[0]), "seconds": round(self.video_s, 4)},
                "audio": {"runtime": self.audio.runtime, "precision": self.audio.precision,
                          "audio_s": round(self.waveform.shape[0] / 16000, 3), "seconds": round(self.audio_s, 4)},
                "backbones_s": round(self.video_s + self.audio_s, 4), "end_to_end_s": round(self.end_to_end_s, 3),
                "load_s": round(self.load_s, 2)}


def _manifest(path: Path):
    from .datasets import Manifest, ManifestRow

    return Manifest("bench", path.parent, (), (ManifestRow(path.name, path),))


def add_roofline(row: dict[str, Any], gflop: dict[str, float | None], peak: dict[str, float]) -> None:
    """GFLOP/s and fraction of the matmul roofline of each backbone in ``row``."""
    units = {"video": row["video"]["frames"], "audio": row["audio"]["audio_s"]}
    for kind in ("video", "audio"):
        if gflop[kind] is None:
            continue
        rate = gflop[kind] * units[kind] / row[kind]["seconds"]
        row[kind]["gflop_per_s"] = round(rate, 2)
        row[kind]["fraction_of_matmul"] = round(rate / peak[row[kind]["precision"]], 4)


def run_runtime_bench(out: Path, cfg: ExtractConfig, runtimes: str = "all", rounds: int = REPEATS) -> dict[str, Any]:
    """Every runtime in ``runtimes`` (``all``: those installed, and ``auto``) on the same
    10 s 720p clip, with the matmul roofline, each timed in ``rounds`` interleaved rounds
    (the best of each kept); the JSON goes to ``out``."""
    check_output_file(out)
    names = runtimes_to_bench(runtimes)
    unknown = [n for n in names if n not in (*RUNTIMES, AUTO)]
    if unknown or not names:
        from cache_schema import InvalidInput

        raise InvalidInput(f"--runtimes {runtimes}: name some of {', '.join((*RUNTIMES, AUTO))}, or 'all'")
    device = resolve_device(cfg.device)
    precision = resolve_precision(cfg.precision, device)
    gflop = {"video": backbone_gflop(VIDEO, cfg.video_model), "audio": backbone_gflop(AUDIO, cfg.audio_model)}
    rows: dict[str, dict[str, Any]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        clip = write_bench_clip(work / "clip_720p.mp4", 10.0)
        precisions = sorted({"fp32", precision})
        peak = {p: matmul_gflops(p) for p in precisions}
        loaded = {}
        for name in names:
            logger.info("loading the backbones on runtime %s", name)
            loaded[name] = RuntimeRow(name, cfg, clip)
        # in rounds, every runtime once per round: drift on a shared machine hits them alike
        for round_ in range(rounds):
            logger.info("round %d of %d", round_ + 1, rounds)
            for name, bench in loaded.items():
                bench.time_backbones()
                bench.time_end_to_end(clip, work / f"{name}-{round_}.zarr")
            for p in precisions:  # the roofline too, in every round: the best the CPU gave
                peak[p] = max(peak[p], matmul_gflops(p))
        for name, bench in loaded.items():
            rows[name] = bench.row()
            add_roofline(rows[name], gflop, peak)
        peak_after = matmul_gflops("fp32")
    base = rows.get("torch")
    speedups = {}
    if base:
        speedups = {name: {"video": round(base["video"]["seconds"] / row["video"]["seconds"], 3),
                           "audio": round(base["audio"]["seconds"] / row["audio"]["seconds"], 3),
                           "backbones": round(base["backbones_s"] / row["backbones_s"], 3),
                           "end_to_end": round(base["end_to_end_s"] / row["end_to_end_s"], 3)}
                    for name, row in rows.items()}
    result = {
        "device": device, "precision": precision, "cpu": cpu_model(), "torch_threads": torch.get_num_threads(),
        "video_model": cfg.video_model, "audio_model": cfg.audio_model, "steps": cfg.steps,
        "gflop": {"video_per_frame": gflop["video"], "audio_per_s": gflop["audio"]},
        "matmul_gflop_per_s": {k: round(v, 1) for k, v in peak.items()},
        "matmul_fp32_gflop_per_s_after": round(peak_after, 1),
        "rounds": rounds,
        "runtimes_installed": list(installed_runtimes()),
        "rows": rows,
        "speedup_over_torch": speedups,
        "definitions": {
            "video.seconds": f"the video backbone alone on the clip's frames (best of {rounds} interleaved rounds "
                             "after a warm-up)",
            "audio.seconds": f"the audio backbone alone on the clip's audio (best of {rounds} rounds)",
            "end_to_end_s": f"the clip through run_extract (decode, backbones, cache write), backbones loaded "
                            f"(best of {rounds} rounds)",
            "fraction_of_matmul": f"GFLOP/s reached over a {MATMUL_N}x{MATMUL_N} torch matmul's at that precision "
                                  "(the best of the rounds of the same run)",
            "speedup_over_torch": "torch's seconds over the runtime's (higher is faster)",
        },
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    write_json(out, result, indent=2)
    return result


__all__ = ["matmul_gflops", "run_runtime_bench", "runtimes_to_bench"]
