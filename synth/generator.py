"""Orchestration: per-clip draws, sources (groups), writing the media and the metadata.

Random streams, all ``numpy.random.default_rng`` seeded by tuples so that a clip never
depends on how many other clips are generated:

* content ``(seed, 1, class, index)``: event times and parameters, nuisance;
* format ``(seed, 2, class, index)``: resolution, frame rate, duration, sample rate,
  channels, the audio codec in MKV — never the class;
* sample noise ``(seed, 3, class, index)``: sensor noise and audio noise;
* shares (containers, no-audio/silent audio, long clips): a deterministic apportionment
  over the clip sequence "row by row" (row ``i`` holds clip ``i`` of every class, in an
  order shuffled per row and per attribute by ``(seed, 10 + attribute, i)``), so every
  prefix of rows holds each category ``share * n`` times (rounded) and which class gets it
  is random;
* sources: the same row-major sequence (shuffled by ``(seed, 5, i)``) cut into runs of
  1-3 consecutive clips (run lengths from ``(seed, 6)``); a source's scene comes from
  ``(seed, 7, source)``. Consecutive clips of a row have different classes, so one
  background is shared across classes and never predicts the class.

Adding clips per class only appends rows, so existing clips keep their content and
encoding (only the last source of the old set may grow).
"""

from __future__ import annotations

import json
import os
import re
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass, field
from fractions import Fraction
from multiprocessing import get_context
from pathlib import Path

import numpy as np

from cache_schema import InvalidInput, die_with_parent, write_json, write_text
from synth.encode import ACODEC_NAMES, CONTAINERS, FIXED_RATES, write_clip
from synth.scenes import CLASSES, PAIRS, RECIPES, ClipPlan, draw_events, draw_nuisance, draw_scene, render_audio, render_frames

META_FILE = "synth_meta.json"
GROUPS_FILE = "groups.tsv"
META_VERSION = 1

SIZES: tuple[tuple[int, int], ...] = (
    (128, 96), (160, 120), (176, 144), (192, 108), (208, 96), (224, 160),
    (240, 180), (256, 144), (192, 192), (144, 176), (174, 130), (320, 180), (320, 240),
)
FPS_CHOICES: tuple[float, ...] = (10, 12, 15, 20, 24, 25, 29.97, 30)
SAMPLE_RATES: tuple[int, ...] = (16000, 22050, 32000, 44100, 48000)
_CLIP_NAME = re.compile(r"^clip_\d+\.(mp4|webm|avi|mkv)$")


@dataclass(frozen=True)
class SynthConfig:
    clips_per_class: int = 30
    seed: int = 0
    other_container_share: float = 0.25    # share NOT mp4/h264/aac: split evenly over webm, avi, mkv
    no_audio_share: float = 0.1            # clips with no audio stream at all
    silent_audio_share: float = 0.1        # clips with an audio stream of digital silence
    duration_range: tuple[float, float] = (3.0, 8.0)
    long_share: float = 0.05               # clips drawn from long_range instead
    long_range: tuple[float, float] = (12.0, 20.0)
    variable_fps_share: float = 0.1        # irregular pts (1/1000 time base); never in AVI
    stereo_share: float = 0.5
    clips_per_source: tuple[int, int] = (1, 3)
    sizes: tuple[tuple[int, int], ...] = SIZES
    fps_choices: tuple[float, ...] = FPS_CHOICES
    sample_rates: tuple[int, ...] = SAMPLE_RATES

    def __post_init__(self) -> None:
        if self.clips_per_class < 1:
            raise InvalidInput("clips_per_class must be >= 1")
        if self.seed < 0:
            raise InvalidInput("seed must be >= 0")
        for name in ("other_container_share", "no_audio_share", "silent_audio_share", "long_share",
                     "variable_fps_share", "stereo_share"):
            v = getattr(self, name)
            if not 0.0 <= v <= 1.0:
                raise InvalidInput(f"{name} must be in [0, 1], got {v}")
        if self.no_audio_share + self.silent_audio_share > 1.0:
            raise InvalidInput("no_audio_share + silent_audio_share must not exceed 1")
        for name in ("duration_range", "long_range"):
            lo, hi = getattr(self, name)
            if not 0.2 <= lo <= hi:
                raise InvalidInput(f"{name} must satisfy 0.2 <= low <= high, got {(lo, hi)}")
        lo, hi = self.clips_per_source
        if not 1 <= lo <= hi:
            raise InvalidInput(f"clips_per_source must satisfy 1 <= low <= high, got {(lo, hi)}")
        for w, h in self.sizes:
            if w % 2 or h % 2 or w < 16 or h < 16:
                raise InvalidInput(f"frame sizes must be even and >= 16, got {w}x{h}")


@dataclass(frozen=True)
class SynthClip:
    key: str                 # path relative to the output folder, posix
    label: str               # the class ("class" in synth_meta.json)
    index: int
    group: str               # source id
    container: str
    vcodec: str
    acodec: str | None
    width: int
    height: int
    fps: float               # nominal rate (variable_fps: the mean is n_frames / duration)
    variable_fps: bool
    n_frames: int
    duration: float
    sample_rate: int | None
    channels: int | None
    has_audio: bool
    silent_audio: bool
    events: tuple[dict, ...] = field(default_factory=tuple)

    @property
    def event_window(self) -> tuple[float, float] | None:
        if not self.events:
            return None
        return (min(e["start"] for e in self.events), max(e["end"] for e in self.events))

    def to_meta(self) -> dict:
        d = asdict(self)
        d["class"] = d.pop("label")
        d["events"] = list(self.events)
        d["event_window"] = list(self.event_window) if self.events else None
        order = ["key", "class", "index", "group"]
        return {k: d[k] for k in order} | {k: v for k, v in d.items() if k not in order}


# --------------------------------------------------------------------------- assignment

def _apportion(shares: dict[str, float], n: int) -> list[str]:
    """A sequence of ``n`` categories in which every prefix of length ``m`` holds each
    category ``share * m`` times up to rounding: each slot goes to the category furthest
    behind its quota (ties to the first listed)."""
    cats = list(shares)
    counts = dict.fromkeys(cats, 0)
    out = []
    for k in range(1, n + 1):
        c = max(cats, key=lambda c: k * shares[c] - counts[c] + 1e-9 * (len(cats) - cats.index(c)))
        counts[c] += 1
        out.append(c)
    return out


def _row_slots(seed: int, tag: int, n_rows: int, n_classes: int) -> np.ndarray:
    """``slots[i, c]``: position of class ``c`` within row ``i`` of the clip sequence."""
    slots = np.empty((n_rows, n_classes), dtype=np.int64)
    for i in range(n_rows):
        order = np.random.default_rng([seed, tag, i]).permutation(n_classes)
        slots[i, order] = np.arange(n_classes)
    return slots


def _assign(seed: int, tag: int, shares: dict[str, float], n_rows: int, n_classes: int) -> np.ndarray:
    """Category of every clip ``[row, class]`` with exact-as-possible shares."""
    seq = np.array(_apportion(shares, n_rows * n_classes), dtype=object)
    slots = _row_slots(seed, tag, n_rows, n_classes)
    return seq[np.arange(n_rows)[:, None] * n_classes + slots]


def _sources(seed: int, n_rows: int, n_classes: int, per_source: tuple[int, int]) -> np.ndarray:
    """Source number of every clip ``[row, class]``: the row-major sequence cut in runs."""
    slots = _row_slots(seed, 5, n_rows, n_classes)
    n = n_rows * n_classes
    rng = np.random.default_rng([seed, 6])
    seq = np.empty(n, dtype=np.int64)
    pos, src = 0, 0
    while pos < n:
        size = int(rng.integers(per_source[0], per_source[1] + 1))
        seq[pos:pos + size] = src
        pos += size
        src += 1
    return seq[np.arange(n_rows)[:, None] * n_classes + slots]


# --------------------------------------------------------------------------- per clip

@dataclass(frozen=True)
class ClipJob:
    """A clip's metadata plus what rendering and encoding it needs."""

    clip: SynthClip
    plan: ClipPlan
    fps_fraction: Fraction
    frame_times: tuple[float, ...]
    acodec_encoder: str | None


def _frame_times(rng: np.random.Generator, duration: float, fps: Fraction, variable: bool) -> np.ndarray:
    if not variable:
        n = max(int(round(duration * float(fps))), 2)
        return np.arange(n, dtype=np.float64) / float(fps)
    # Irregular intervals in whole milliseconds around the nominal rate (0.5x-2x).
    base = 1000.0 / float(fps)
    times, t = [], 0
    while t < duration * 1000.0 - 0.5 or len(times) < 2:
        times.append(t)
        t += max(int(round(base * float(np.clip(np.exp(rng.normal(0.0, 0.35)), 0.5, 2.0)))), 1)
    return np.asarray(times, dtype=np.float64) / 1000.0


def _rate(fps: float) -> Fraction:
    """Exact frame rate: NTSC-style values (29.97, 23.976, 59.94) mean N*1000/1001."""
    ntsc = round(fps * 1.001)
    if fps != round(fps) and abs(fps * 1.001 - ntsc) < 2e-3:
        return Fraction(ntsc * 1000, 1001)
    return Fraction(fps).limit_denominator(1000)


def _plan_clip(cfg: SynthConfig, ci: int, i: int, container: str, audio_mode: str, long: bool,
               source: int) -> ClipJob:
    label = CLASSES[ci]
    spec = CONTAINERS[container]
    f = np.random.default_rng([cfg.seed, 2, ci, i])
    # Draw every format value unconditionally, in a fixed order, so one choice never
    # shifts the stream of the others.
    w, h = cfg.sizes[int(f.integers(len(cfg.sizes)))]
    fps_val = cfg.fps_choices[int(f.integers(len(cfg.fps_choices)))]
    vfr_draw = f.random()
    dur_short = f.uniform(*cfg.duration_range)
    dur_long = f.uniform(*cfg.long_range)
    sr_draw = cfg.sample_rates[int(f.integers(len(cfg.sample_rates)))]
    stereo_draw = f.random()
    acodec_draw = spec.acodecs[int(f.integers(len(spec.acodecs)))]
    vfr_times_rng = np.random.default_rng([cfg.seed, 4, ci, i])

    fps = _rate(fps_val)
    variable = bool(vfr_draw < cfg.variable_fps_share and spec.variable_fps_ok)
    duration = round(float(dur_long if long else dur_short), 3)
    times = _frame_times(vfr_times_rng, duration, fps, variable)
    has_audio = audio_mode != "none"
    acodec = acodec_draw if has_audio else None
    sample_rate = FIXED_RATES.get(acodec, sr_draw) if has_audio else None
    channels = (2 if stereo_draw < cfg.stereo_share else 1) if has_audio else None

    c = np.random.default_rng([cfg.seed, 1, ci, i])
    events = draw_events(label, duration, c)
    nuisance = draw_nuisance(c, duration)
    scene = draw_scene(np.random.default_rng([cfg.seed, 7, source]), f"src_{source:04d}")
    plan = ClipPlan(label, duration, scene, events, nuisance, (cfg.seed, 3, ci, i))

    clip = SynthClip(
        key=f"{label}/clip_{i:04d}.{spec.name}", label=label, index=i, group=scene.source,
        container=spec.name, vcodec=spec.vcodec_name, acodec=ACODEC_NAMES[acodec] if acodec else None,
        width=int(w), height=int(h), fps=round(float(fps), 5), variable_fps=variable, n_frames=len(times),
        duration=duration, sample_rate=sample_rate, channels=channels, has_audio=has_audio,
        silent_audio=audio_mode == "silent", events=tuple(e.to_meta() for e in events),
    )
    return ClipJob(clip, plan, fps, tuple(float(t) for t in times), acodec)


def plan_clips(cfg: SynthConfig) -> list[ClipJob]:
    """Every clip's plan, in class order then index order (no media is touched)."""
    n_rows, n_cls = cfg.clips_per_class, len(CLASSES)
    o = cfg.other_container_share
    containers = _assign(cfg.seed, 11, {"mp4": 1.0 - o, "webm": o / 3, "avi": o / 3, "mkv": o / 3}, n_rows, n_cls)
    audio = _assign(cfg.seed, 12, {"sound": max(1.0 - cfg.no_audio_share - cfg.silent_audio_share, 0.0),
                                   "none": cfg.no_audio_share, "silent": cfg.silent_audio_share}, n_rows, n_cls)
    long = _assign(cfg.seed, 13, {"short": 1.0 - cfg.long_share, "long": cfg.long_share}, n_rows, n_cls)
    sources = _sources(cfg.seed, n_rows, n_cls, cfg.clips_per_source)
    return [
        _plan_clip(cfg, ci, i, containers[i, ci], audio[i, ci], long[i, ci] == "long", int(sources[i, ci]))
        for ci in range(n_cls) for i in range(n_rows)
    ]


def _render_and_write(out: str, job: ClipJob) -> SynthClip:
    clip, plan = job.clip, job.plan
    path = Path(out) / clip.key
    times = np.asarray(job.frame_times)
    audio = None
    if clip.has_audio:
        audio = (np.zeros((clip.channels, int(round(clip.duration * clip.sample_rate))), np.float32)
                 if clip.silent_audio else render_audio(plan, clip.sample_rate, clip.channels))
    write_clip(path, clip.container, job.acodec_encoder, clip.width, clip.height, job.fps_fraction, times,
               clip.variable_fps, render_frames(plan, clip.width, clip.height, times), audio, clip.sample_rate)
    return clip


def _worker_init(parent_pid: int) -> None:
    die_with_parent(parent_pid)  # a killed generate leaves no encoder behind
    # One encoder thread per process, and no oversubscription from BLAS in numpy.
    for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ.setdefault(var, "1")


def generate(out: Path, cfg: SynthConfig = SynthConfig(), progress: bool = False,
             workers: int | None = None) -> list[SynthClip]:
    """Write the benchmark under ``out`` and return its clips (class order, then index).

    ``out/<class>/clip_NNNN.<ext>``, ``out/synth_meta.json`` and ``out/groups.tsv``.
    Clip files of an earlier run that this run does not produce are removed, so the
    folder always matches its metadata. ``workers``: processes (default: CPU count, at
    most 8; 1 runs in this process). The output does not depend on it.
    """
    out = Path(out)
    jobs = plan_clips(cfg)
    for cls in CLASSES:
        (out / cls).mkdir(parents=True, exist_ok=True)
    keep = {j.clip.key for j in jobs}
    for cls in CLASSES:
        for p in (out / cls).iterdir():
            leftover = p.name.startswith(".") and p.name.endswith((".part", ".tmp"))  # a killed write's temporary
            if p.is_file() and (_CLIP_NAME.match(p.name) or leftover) and f"{cls}/{p.name}" not in keep:
                p.unlink()
    workers = min(os.cpu_count() or 1, 8) if workers is None else max(int(workers), 1)
    workers = min(workers, len(jobs))
    t0 = time.perf_counter()
    done: list[SynthClip] = []

    last = [t0]

    def report(clip: SynthClip) -> None:
        done.append(clip)
        now = time.perf_counter()
        if progress and (now - last[0] > 2.0 or len(done) == len(jobs)):
            last[0] = now
            print(f"synth: {len(done)}/{len(jobs)} clips", file=sys.stderr, flush=True)

    if workers == 1:
        for job in jobs:
            report(_render_and_write(str(out), job))
    else:
        with ProcessPoolExecutor(workers, mp_context=get_context("spawn"), initializer=_worker_init,
                                 initargs=(os.getpid(),)) as pool:
            futures = [pool.submit(_render_and_write, str(out), job) for job in jobs]
            for fut in futures:
                report(fut.result())
    elapsed = time.perf_counter() - t0
    if progress:
        print(f"synth: {len(jobs)} clips in {elapsed:.1f} s ({len(jobs) / max(elapsed, 1e-9):.1f} clips/s, "
              f"{workers} worker{'s' if workers > 1 else ''})", file=sys.stderr)
    clips = [j.clip for j in jobs]
    write_meta(out, cfg, clips)
    return clips


def write_meta(out: Path, cfg: SynthConfig, clips: list[SynthClip]) -> None:
    meta = {
        "format": "avar-synth",
        "version": META_VERSION,
        "config": asdict(cfg),
        "classes": list(CLASSES),
        "pairs": [list(p) for p in PAIRS],
        "recipes": {c: {"timing": r["timing"],
                        "events": [{"name": n, "video": v, "audio": a} for n, v, a in r["events"]]}
                    for c, r in RECIPES.items()},
        "clips": [c.to_meta() for c in clips],
    }
    write_json(out / META_FILE, meta, newline=True)
    lines = ["key\tgroup"] + [f"{c.key}\t{c.group}" for c in clips]
    write_text(out / GROUPS_FILE, "\n".join(lines) + "\n")


def read_meta(out: Path) -> dict:
    """``synth_meta.json`` of a generated folder, as written by ``generate``."""
    return json.loads((Path(out) / META_FILE).read_text())
