"""``cli.py bench live``: what live scoring costs, against the backbones alone, per CPU.

Untrained weights with the full-size architectures (``random``: MobileViT-S and
wav2vec2-base) and the ``tiny`` presets, an untrained MTCN head on XD-Violence's snippet
grid: the figures are about compute, not accuracy, so no trained run is needed.

Per setting (backbones, precision, device), on one generated file:

* **backbones alone**: the file's steps are first cut into live units (by live's own
  source reader and assembler, read as fast as it decodes), then scored one step at a
  time by the live scorer (stage 1's ``FeatureExtractor`` and the head), timed alone;
* **live, as fast as it decodes**: ``run_watch`` on the same file, not paced: a file read
  this way blocks instead of dropping, so its wall time is the live path's cost for the
  same steps; ``live_over_backbones`` is the ratio of the two (measured minutes apart in
  the same process, because this machine is shared and timings drift between runs);
* **live, real time**: the file paced at its own rate, as 1, 4 (and, tiny, 8) streams at
  once: latency p50/p95 of the score records, steps dropped, whether it kept real time.

Figures differ between machines by several times (an AVX2-only EPYC vs a Xeon with AMX),
so every row says which CPU it is from.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from apply import Predictor
from cache_schema import StepLayout, check_output_file, cpu_model, write_json
from extract.audio_windows import AudioWindowing
from extract.backbones import BACKBONE_PRESETS, load_audio_backbone, load_video_backbone
from extract.backbones import cpu_has_native_bf16, read_cpu_flags, resolve_device, resolve_precision
from synth.bench_clip import write_bench_clip
from temporal.model import AnomalyModel

from .assembler import LiveUnit
from .events import DROPPED_STEPS, Event, EventHub, ScoreRecord, StatusEvent
from .scorer import LiveScorer
from .sources import SourceReader, SourceSpec, parse_source
from .watch import WatchConfig, assembler_factory, audio_context, frame_transform, plan_for, run_watch

__all__ = ["LiveBenchConfig", "Setting", "run_live_bench"]

logger = logging.getLogger(__name__)

CLASS_NAMES = ("normal", "violent")
RUN_STEPS = 200
HEAD_OPTIONS = {"stages": 1, "layers": 2, "attention_window": 0}


@dataclass(frozen=True)
class Setting:
    """One backbone pair at one precision on one device, with the media it is timed on."""

    backbones: str            # a preset: "random" (full-size, untrained), "tiny", or "lite" (pretrained, no hub)
    precision: str
    device: str
    seconds: float            # media length
    streams: tuple[int, ...]  # real-time rows: this many streams at once
    note: str = ""


@dataclass(frozen=True)
class LiveBenchConfig:
    """``full_s`` / ``bf16_s`` / ``tiny_s``: media seconds of the full-size fp32, full-size
    bf16 and tiny rows (CPU bf16 is emulated where the CPU lacks native bf16, tens of
    times slower: kept short there). ``full`` / ``bf16`` / ``gpu``: include those rows
    (GPU rows only where CUDA is visible)."""

    full_s: float = 12.0
    bf16_s: float = 2.0
    tiny_s: float = 24.0
    width: int = 640
    height: int = 360
    fps: int = 24
    step_seconds: float = 0.6667
    streams: tuple[int, ...] = (1, 4)
    tiny_streams: tuple[int, ...] = (1, 4, 8)
    full: bool = True
    bf16: bool = True
    gpu: bool = True
    cpu: bool = True  # False: the GPU rows alone (tools/gpu_check.sh)
    lite: bool = False
    lite_s: float = 24.0
    depth: int = 2
    notes: str = ""
    runtime: str = "torch"    # the CPU rows' backbones (extract.backbones.use_runtime); GPU rows run torch

    def settings(self) -> list[Setting]:
        return (self._cpu_settings() if self.cpu else []) + self._gpu_settings()

    def _cpu_settings(self) -> list[Setting]:
        out = []
        native = cpu_has_native_bf16(read_cpu_flags())
        if self.full:
            out.append(Setting("random", "fp32", "cpu", self.full_s, self.streams))
            if self.bf16:
                out.append(Setting("random", "bf16", "cpu", self.bf16_s if not native else self.full_s,
                                   self.streams[:1] if not native else self.streams,
                                   "" if native else "bf16 emulated on this CPU (no native bf16): "
                                   f"{self.bf16_s:g} s of media, 1 stream only"))
        out.append(Setting("tiny", "fp32", "cpu", self.tiny_s, self.tiny_streams))
        if self.lite:
            out.append(Setting("lite", "fp32", "cpu", self.lite_s, self.tiny_streams,
                               "EfficientNet-Lite0 + YAMNet, pretrained (the lite extra and YAMNet's file)"))
        return out

    def _gpu_settings(self) -> list[Setting]:
        out = []
        if self.gpu and torch.cuda.is_available():
            if self.full:
                out.append(Setting("random", "fp32", "cuda", self.full_s, self.tiny_streams))
                if self.bf16 and torch.cuda.is_bf16_supported():
                    out.append(Setting("random", "bf16", "cuda", self.full_s, self.tiny_streams))
            out.append(Setting("tiny", "fp32", "cuda", self.tiny_s, self.tiny_streams))
            if self.lite:
                out.append(Setting("lite", "fp32", "cuda", self.lite_s, self.tiny_streams,
                                   "EfficientNet-Lite0 + YAMNet, pretrained"))
        return out


def cpu_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


class ListSink:
    """Keeps every event in memory (the bench reads them after the watch)."""

    def __init__(self) -> None:
        self.events: list[Event] = []

    def handle(self, event: Event) -> None:
        self.events.append(event)

    def close(self) -> None:
        pass


def build_predictor(backbones: str, precision: str, device: str, step_seconds: float,
                    runtime: str = "torch") -> Predictor:
    """An untrained head over a preset's backbones: a run's predictor in compute only."""
    video_model, audio_model = BACKBONE_PRESETS[backbones]
    video = load_video_backbone(video_model, device=device, precision=precision, runtime=runtime)
    # a grid run's audio: causal step windows, as grid extraction computes them
    audio = load_audio_backbone(audio_model, device=device, precision=precision, windowing=AudioWindowing.step(),
                                runtime=runtime)
    torch.manual_seed(0)
    model = AnomalyModel("mtcn", "fused", "early", video.dim, audio.dim, len(CLASS_NAMES), RUN_STEPS,
                         dict(HEAD_OPTIONS), objective="mil", normal_index=0)
    return Predictor(model, CLASS_NAMES, StepLayout(step_seconds=step_seconds), "float32", video, audio,
                     device=device, precision=precision, normal="normal")


def collect_units(predictor: Predictor, path: Path, config: WatchConfig) -> tuple[list[LiveUnit], int]:
    """The file's live units, cut by live's own reader and assembler (not paced), and the
    head's window in steps."""
    plan, window_steps = plan_for(predictor, RUN_STEPS, config, audio_context(predictor))
    spec = parse_source(str(path))
    units: list[LiveUnit] = []
    make = assembler_factory(spec.name, plan, frame_transform(predictor), config)
    reader = SourceReader(spec, make, units.append, lambda event: None, threading.Event(),
                          stall_timeout=config.stall_timeout, grid_every=plan.every)
    reader.start()
    reader.join()
    if reader.error:
        raise RuntimeError(reader.error)
    return units, window_steps


def _pct(values: Sequence[float], q: float) -> float | None:
    return round(float(np.percentile(values, q)), 4) if len(values) else None


def watch_row(predictor: Predictor, specs: list[SourceSpec], config: WatchConfig, media_s: float,
              step_seconds: float) -> dict[str, Any]:
    """One ``run_watch`` over ``specs``: time, latency and what was dropped."""
    sink = ListSink()
    summary = run_watch(predictor, specs, config, EventHub([sink]), run_steps=RUN_STEPS)
    records = [e for e in sink.events if isinstance(e, ScoreRecord)]
    latency = [r.latency_s for r in records]
    drop_events = [e for e in sink.events if isinstance(e, StatusEvent) and e.type == DROPPED_STEPS]
    dropped = sum(s.dropped for s in summary.sources.values())
    errors = {n: s.error for n, s in summary.sources.items() if s.error}
    return {
        "streams": len(specs), "media_s": round(media_s, 3), "steps_scored": len(records),
        "wall_s": round(summary.wall_s, 3), "scoring_s": round(summary.scoring_s, 3),
        # scoring time per second of the media it scored (dropped steps cost nothing)
        "real_time_factor": round(summary.scoring_s / max(len(records) * step_seconds, 1e-9), 4),
        "scoring_over_wall": round(summary.scoring_s / max(summary.wall_s, 1e-9), 4),
        "wall_over_media": round(summary.wall_s / media_s, 4),
        "latency_p50_s": _pct(latency, 50), "latency_p95_s": _pct(latency, 95),
        "latency_max_s": round(max(latency), 4) if latency else None,
        "steps_dropped": dropped, "dropped_steps_events": len(drop_events),
        "kept_real_time": dropped == 0 and not errors and bool(records),
        **({"errors": errors} if errors else {}),
    }


def time_alone(predictor: Predictor, units: list[LiveUnit], window_steps: int) -> float:
    """Seconds for the live scorer over pre-cut units, one step per batch as one stream
    scores live: the backbones and the head alone, without decoding or threads."""
    scorer = LiveScorer(predictor, window_steps)
    t0 = time.perf_counter()
    for u in units:
        scorer.score([u])
    return time.perf_counter() - t0


def bench_setting(s: Setting, media: Path, work: Path, cfg: LiveBenchConfig, cpu: str) -> list[dict[str, Any]]:
    device = resolve_device(s.device)
    precision = resolve_precision(s.precision, device)
    predictor = build_predictor(s.backbones, precision, device, cfg.step_seconds,
                                cfg.runtime if device == "cpu" else "torch")
    config = WatchConfig(depth=cfg.depth)
    base = {"backbones": s.backbones, "video_model": predictor.video_backbone.arch if hasattr(
        predictor.video_backbone, "arch") else s.backbones, "precision": precision, "device": device,
        "runtime": {kind: getattr(b, "runtime", "torch") for kind, b in
                    (("video", predictor.video_backbone), ("audio", predictor.audio_backbone))},
        "cpu": cpu, "torch_threads": torch.get_num_threads()}
    if device.startswith("cuda"):
        base["gpu"] = torch.cuda.get_device_name(torch.device(device))
    if s.note:
        base["note"] = s.note
    logger.info("live bench: %s %s on %s, %g s of media", s.backbones, precision, device, s.seconds)
    units, window_steps = collect_units(predictor, media, config)
    steps = len(units)

    scorer = LiveScorer(predictor, window_steps)
    scorer.score(units[:2])            # warm-up: first calls allocate
    before = time_alone(predictor, units, window_steps)
    fast = watch_row(predictor, [parse_source(str(media))], config, s.seconds, cfg.step_seconds)
    after = time_alone(predictor, units, window_steps)
    alone_s = (before + after) / 2     # around the live run: drift on a shared machine shows as their spread
    rows = [{**base, "row": "backbones alone", "streams": 1, "media_s": s.seconds, "steps": steps,
             "seconds": round(alone_s, 3), "seconds_before_live": round(before, 3),
             "seconds_after_live": round(after, 3), "seconds_per_media_s": round(alone_s / s.seconds, 4),
             "real_time_factor": round(alone_s / s.seconds, 4)}]
    fast["real_time_factor"] = round(fast["wall_s"] / s.seconds, 4)   # not paced: wall is the cost
    fast["live_over_backbones"] = round(fast["wall_s"] / alone_s, 4)
    rows.append({**base, "row": "live, as fast as it decodes", "steps": steps, **fast})

    for n in s.streams:
        copies = []
        for i in range(n):
            copy = work / f"{s.backbones}-{precision}-{device}-cam{i}{media.suffix}"
            if not copy.exists():
                shutil.copyfile(media, copy)
            copies.append(parse_source(str(copy), realtime=True))
        rt = watch_row(predictor, copies, config, s.seconds, cfg.step_seconds)
        rows.append({**base, "row": "live, real time", "steps": steps * n, **rt})
    return rows


def _find(rows: list[dict[str, Any]], **match: Any) -> dict[str, Any] | None:
    return next((r for r in rows if all(r.get(k) == v for k, v in match.items())), None)


def targets(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """The issue's targets, each true/false (None: the row was not run)."""
    out: dict[str, Any] = {}
    fast = _find(rows, backbones="random", precision="fp32", device="cpu", row="live, as fast as it decodes")
    out["live <= 1.2x backbones alone (full-size fp32 CPU)"] = \
        None if fast is None else fast["live_over_backbones"] <= 1.2
    tiny_fast = _find(rows, backbones="tiny", device="cpu", row="live, as fast as it decodes")
    out["live <= 1.2x backbones alone (tiny CPU)"] = \
        None if tiny_fast is None else tiny_fast["live_over_backbones"] <= 1.2
    one = _find(rows, backbones="random", precision="fp32", device="cpu", row="live, real time", streams=1)
    out["1 full-size stream: real-time factor <= 0.5 and p95 <= 1.0 s (CPU fp32)"] = None if one is None else \
        bool(one["real_time_factor"] <= 0.5 and one["latency_p95_s"] is not None and one["latency_p95_s"] <= 1.0)
    eight = _find(rows, backbones="tiny", device="cpu", row="live, real time", streams=8)
    out["8 tiny streams in real time (CPU)"] = None if eight is None else eight["kept_real_time"]
    lite = _find(rows, backbones="lite", device="cpu", row="live, real time", streams=8)
    out["8 lite streams in real time, p95 <= 1.0 s (CPU)"] = None if lite is None else bool(
        lite["kept_real_time"] and lite["latency_p95_s"] is not None and lite["latency_p95_s"] <= 1.0)
    return out


def run_live_bench(out: Path, cfg: LiveBenchConfig = LiveBenchConfig()) -> dict[str, Any]:
    """Every row of ``bench live`` on freshly written media; the JSON goes to ``out``."""
    check_output_file(out)
    cpu = cpu_model()
    flags = read_cpu_flags()
    rows: list[dict[str, Any]] = []
    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        media: dict[float, Path] = {}
        for s in cfg.settings():
            if s.seconds not in media:
                media[s.seconds] = write_bench_clip(work / f"media_{s.seconds:g}s.mp4", s.seconds, cfg.width,
                                                    cfg.height, cfg.fps, seed=0, grain=8)
            rows.extend(bench_setting(s, media[s.seconds], work, cfg, cpu))
    result = {
        "cpu": cpu, "cpu_cores": cpu_cores(), "torch_threads": torch.get_num_threads(),
        "cpu_native_bf16": cpu_has_native_bf16(flags),
        "cpu_simd": sorted(f for f in flags if f in ("avx2", "avx512f", "avx512_bf16", "amx_bf16", "amx_tile")),
        "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "torch": torch.__version__,
        "weights": "untrained (random and tiny presets, untrained MTCN head): compute figures only",
        "media": f"H.264/AAC {cfg.width}x{cfg.height} at {cfg.fps} fps, 8-pixel noise cells, a tone in noise",
        "step_seconds": cfg.step_seconds, "head": {"head": "mtcn", "fusion": "early", "steps": RUN_STEPS,
                                                  **HEAD_OPTIONS},
        "queue_depth": cfg.depth,
        "definitions": {
            "real_time_factor": "processing time / media time: backbones alone, their time over the media; "
                                "as fast as it decodes, wall time over the media; real time, scoring time over "
                                "the media of the steps scored (all streams; dropped steps not counted)",
            "scoring_over_wall": "the fraction of the watch the scorer was busy (near 1: saturated)",
            "live_over_backbones": "wall time of live on the file read as fast as it decodes / the same steps' "
                                   "features and head alone on pre-cut units, same process",
            "latency_s": "score record's emission time - the moment its step's media was complete",
            "kept_real_time": "no step dropped",
        },
        "rows": rows,
        "targets": targets(rows),
        "bench_s": round(time.perf_counter() - started, 1),
        "notes": cfg.notes,
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    write_json(out, result, indent=2)
    return result
