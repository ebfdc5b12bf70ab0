"""``cli.py bench efficiency``: the paper's Table 4 (efficiency) for this implementation.

What is measured, per device and precision, on generated H.264/AAC clips with the
full-size architectures (MobileViT-S, wav2vec2-base, the MTCN head on 640 + 768 fused
features; untrained weights: compute does not depend on the weights' values):

* **FPS**: clips of ``STEPS`` frames per second through the whole pipeline, as a deployment
  would run it: decoding in worker processes overlapping batched backbones, then the head
  (``clips / wall seconds`` over all clips);
* **latency**: ms per clip from decoded input (the ``STEPS`` preprocessed frames and the
  16 kHz audio in memory) to the class probabilities, one clip at a time;
* **inference**: ms per clip from the file on disk to the class probabilities, one clip at a
  time (probe + decode + preprocess + backbones + head);
* parameter counts of each backbone and the head; the device and precision.

Timings are medians over the clips after one warm-up clip. CPU is always measured; CUDA
(fp32 and reduced-precision autocast) when a GPU is visible. The paper's numbers (RTX 3090
Ti) are written beside ours; they are from another machine, so compare with care.
"""

from __future__ import annotations

import logging
import os
import platform
import statistics
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from cache_schema import SAMPLE_RATE, check_output_file, cpu_model, write_json, write_text
from extract.backbones import AudioBackbone, VideoBackbone, load_audio_backbone, load_video_backbone
from extract.decode import DecodedClip, decode_clip
from extract.backbones import AUTO, resolve_precision
from extract.datasets import ManifestRow
from extract.pipeline import Decoded, ExtractConfig, iter_decoded
from synth.bench_clip import write_bench_clip
from temporal.model import AnomalyModel

from .predictor import Predictor

logger = logging.getLogger(__name__)

PAPER = {"source": "AVAR-Net paper, Table 4 (VAAR)", "device": "NVIDIA RTX 3090 Ti", "precision": "not stated",
         "fps": 9.13, "latency_ms": 65.69, "inference_ms": 184.93}
CLASSES = 10


@dataclass(frozen=True)
class BenchConfig:
    clips: int = 8
    duration: float = 10.0          # seconds per clip
    width: int = 640
    height: int = 360
    fps: int = 25
    steps: int = 10
    video_model: str = "random"     # full-size MobileViT-S architecture, untrained
    audio_model: str = "random"     # full-size wav2vec2-base architecture, untrained
    head: str = "mtcn"
    workers: int = 2                # decoding processes for the FPS run
    batch_size: int = 8             # clips per backbone batch for the FPS run
    targets: tuple[tuple[str, str], ...] = field(default_factory=lambda: default_targets())


def default_targets() -> tuple[tuple[str, str], ...]:
    """(device, precision) pairs: the CPU at the precision ``auto`` picks for it (bf16 with
    native bf16, else fp32: see ``extract.backbones.choose_precision``); on a GPU fp32
    and bf16 (fp16 where the GPU has no bf16)."""
    out = [("cpu", resolve_precision(AUTO, "cpu"))]
    if torch.cuda.is_available():
        out.append(("cuda", "fp32"))
        out.append(("cuda", "bf16" if torch.cuda.is_bf16_supported() else "fp16"))
    return tuple(out)


def device_name(device: str) -> str:
    if device.startswith("cuda"):
        return torch.cuda.get_device_name(torch.device(device))
    return f"{cpu_model()} ({torch.get_num_threads()} threads)"


def _params(module: torch.nn.Module) -> int:
    return int(sum(p.numel() for p in module.parameters()))


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def targets_for(device: str, precision: str | None = AUTO) -> tuple[tuple[str, str], ...]:
    """The (device, precision) rows of ``--device``/``--precision``. ``--device auto`` is
    ``default_targets()`` (with an explicit precision: the CPU, and the GPU when visible, at
    that precision). With ``--precision auto`` (or None) a CPU is measured at the
    precision ``auto`` picks for it, a GPU at fp32 and its reduced precision (the
    comparison a GPU row exists for); an explicit precision is the only row."""
    precision = precision or AUTO
    if device == "auto":
        if precision == AUTO:
            return default_targets()
        return tuple((d, precision) for d in (["cpu"] + (["cuda"] if torch.cuda.is_available() else [])))
    if precision != AUTO:
        return ((device, precision),)
    if device == "cpu":
        return (("cpu", resolve_precision(AUTO, "cpu")),)
    return tuple((device, p) for p in ("fp32", "bf16" if torch.cuda.is_available() and torch.cuda.is_bf16_supported()
                                       else "fp16"))


@dataclass(frozen=True)
class BenchSetup:
    """What one row of the table times: the backbones and head it built, and the
    predictor over them (the same object ``predict`` uses on raw files)."""

    video: VideoBackbone
    audio: AudioBackbone
    model: AnomalyModel
    predictor: Predictor


def build_setup(cfg: BenchConfig, device: str, precision: str) -> BenchSetup:
    """Full-size backbones and an (untrained) head on the fused 640 + 768 features."""
    video = load_video_backbone(cfg.video_model, device=device, precision=precision)
    audio = load_audio_backbone(cfg.audio_model, device=device, precision=precision)
    torch.manual_seed(0)
    names = tuple(f"class{i}" for i in range(CLASSES - 1)) + ("normal",)
    model = AnomalyModel(cfg.head, "fused", "early", video.dim, audio.dim, CLASSES, cfg.steps)
    return BenchSetup(video, audio, model, Predictor(model, names, cfg.steps, "float16", video, audio,
                                                     device=device, precision=precision))


def measure(cfg: BenchConfig, paths: list[Path], device: str, precision: str) -> dict[str, Any]:
    """One row of the table: FPS, latency and inference on ``device`` at ``precision``."""
    setup = build_setup(cfg, device, precision)
    pred = setup.predictor
    transform = setup.video.transform

    def decode(p: Path) -> DecodedClip:
        return decode_clip(p, cfg.steps, sample_rate=SAMPLE_RATE, frame_transform=transform)

    def to_probs(clip: DecodedClip) -> np.ndarray:
        scored = pred.score([Decoded(clip.path, clip=clip)])[0]
        if not scored.ok:
            raise RuntimeError(f"benchmark clip failed: {scored.error}")
        return scored.probs

    # warm-up: first calls allocate, pick kernels, fill caches
    to_probs(decode(paths[0]))

    # latency: decoded input -> prediction, with a breakdown by component
    decoded = [decode(p) for p in paths]
    latency, parts = [], {"video_backbone": [], "audio_backbone": [], "head": []}
    for clip in decoded:
        _sync(device)
        t0 = time.perf_counter()
        frames = torch.stack([torch.as_tensor(f) for f in clip.frames])
        setup.video.embed(frames)
        t1 = time.perf_counter()
        setup.audio.embed([(clip.audio, clip.step_bounds)])
        t2 = time.perf_counter()
        parts["video_backbone"].append(t1 - t0)
        parts["audio_backbone"].append(t2 - t1)
        t0 = time.perf_counter()
        to_probs(clip)
        _sync(device)
        latency.append(time.perf_counter() - t0)
    record = [pred.score([Decoded(decoded[0].path, clip=decoded[0])])[0].record]
    for _ in paths:
        t0 = time.perf_counter()
        pred.score_records(record)
        _sync(device)
        parts["head"].append(time.perf_counter() - t0)
    del decoded

    # inference: file -> prediction, one clip at a time
    inference = []
    for p in paths:
        _sync(device)
        t0 = time.perf_counter()
        to_probs(decode(p))
        _sync(device)
        inference.append(time.perf_counter() - t0)

    # FPS: the whole pipeline with decoding workers overlapping batched backbones
    ecfg = ExtractConfig(steps=cfg.steps, workers=cfg.workers, batch_size=cfg.batch_size, progress=False)
    rows = [ManifestRow(p.name, p) for p in paths]
    _sync(device)
    t0 = time.perf_counter()
    done = 0
    for batch in iter_decoded(rows, ecfg, transform):
        done += sum(s.ok for s in pred.score(batch))
    _sync(device)
    wall = time.perf_counter() - t0
    if done != len(paths):
        raise RuntimeError(f"only {done} of {len(paths)} benchmark clips went through the pipeline")

    ms = lambda xs: round(1000 * statistics.median(xs), 2)  # noqa: E731
    return {
        "device": device, "device_name": device_name(device), "precision": precision,
        "fps": round(len(paths) / wall, 3), "latency_ms": ms(latency), "inference_ms": ms(inference),
        "latency_breakdown_ms": {k: ms(v) for k, v in parts.items()},
        "decode_ms": round(ms(inference) - ms(latency), 2),
        "fps_pipeline": {"workers": cfg.workers, "batch_size": cfg.batch_size, "wall_s": round(wall, 3)},
        "params": {"video_backbone": _params(setup.video.model), "audio_backbone": _params(setup.audio.model),
                   "head": _params(setup.model)},
        "video_arch": setup.video.arch, "audio_arch": setup.audio.arch,
    }


def run(cfg: BenchConfig, out: Path) -> dict[str, Any]:
    """Measure every target, write ``out`` (JSON) and the same path with ``.md``."""
    check_output_file(out)
    check_output_file(Path(out).with_suffix(".md"))
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        logger.info("writing %d benchmark clips (%g s, %dx%d, %d fps)", cfg.clips, cfg.duration, cfg.width,
                    cfg.height, cfg.fps)
        paths = [write_bench_clip(Path(tmp) / f"clip{i}.mp4", cfg.duration, cfg.width, cfg.height, cfg.fps, seed=i)
                 for i in range(cfg.clips)]
        for device, precision in cfg.targets:
            logger.info("measuring %s %s", device, precision)
            rows.append(measure(cfg, paths, device, precision))
    params = rows[0]["params"]
    result = {
        "table": "Table 4: efficiency", "config": asdict(cfg),
        "clip": f"{cfg.duration:g} s H.264/AAC, {cfg.width}x{cfg.height} at {cfg.fps} fps, {cfg.steps} steps",
        "weights": "untrained (random preset) full-size architectures: timings only",
        "params": {**params, "total": sum(params.values())},
        "rows": rows, "paper": PAPER,
        "environment": {"torch": torch.__version__, "cuda": torch.version.cuda, "cpu_count": os.cpu_count(),
                        "torch_threads": torch.get_num_threads(), "python": platform.python_version()},
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    write_json(out, result, indent=2)
    write_text(out.with_suffix(".md"), to_markdown(result))
    return result


def to_markdown(result: dict[str, Any]) -> str:
    lines = ["# Table 4: efficiency", "",
             f"Clips: {result['clip']}; {result['weights']}. FPS = clips of {result['config']['steps']} frames per "
             "second through the whole pipeline (decoding workers + batched backbones + head); latency = ms per clip "
             "from decoded input to prediction; inference = ms per clip from file to prediction (medians, batch 1).",
             "", "| | device | precision | FPS | latency (ms) | inference (ms) |", "|---|---|---|---:|---:|---:|"]
    p = result["paper"]
    lines.append(f"| paper | {p['device']} | {p['precision']} | {p['fps']:.2f} | {p['latency_ms']:.2f} | "
                 f"{p['inference_ms']:.2f} |")
    for r in result["rows"]:
        lines.append(f"| ours | {r['device_name']} | {r['precision']} | {r['fps']:.2f} | {r['latency_ms']:.2f} | "
                     f"{r['inference_ms']:.2f} |")
    lines += ["", "Latency by component (ms per clip): "
              + "; ".join(f"{r['device']} {r['precision']}: " + ", ".join(
                  f"{k.replace('_', ' ')} {v:.1f}" for k, v in r["latency_breakdown_ms"].items())
                  + f", decode {r['decode_ms']:.1f}" for r in result["rows"]), "",
              "| part | parameters |", "|---|---:|"]
    names = {"video_backbone": f"video backbone ({result['rows'][0]['video_arch']})",
             "audio_backbone": f"audio backbone ({result['rows'][0]['audio_arch']})",
             "head": f"head ({result['config']['head']}, fused 640+768)", "total": "total"}
    lines += [f"| {names[k]} | {v:,} |" for k, v in result["params"].items()]
    return "\n".join(lines) + "\n"
