"""What one extraction run is asked to do (:class:`ExtractConfig`, frozen, passed down to
every stage) and what it reports (:class:`ExtractSummary`)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from cache_schema import InvalidInput, StepLayout

from .audio_windows import WINDOWING_CLIP, WINDOWING_STEP, AudioWindowing
from .backbones import DEFAULT_AUDIO_MODEL, DEFAULT_VIDEO_MODEL
from .hw_decode import DECODE_CHOICES, SOFTWARE

__all__ = ["ExtractConfig", "ExtractSummary"]


@dataclass(frozen=True)
class ExtractConfig:
    steps: int = 10
    # A time grid instead of ``steps`` equal steps per clip: steps of this many seconds
    # (``ceil(d / S)`` per clip, schema v2 ragged cache); 0 = the fixed ``steps``.
    step_seconds: float = 0.0
    frames_per_step: int = 1  # grid: video frames (evenly spaced) whose features are averaged per step
    fmt: str | None = None  # None: from the output path's suffix
    video_model: str = DEFAULT_VIDEO_MODEL
    audio_model: str = DEFAULT_AUDIO_MODEL
    device: str = "auto"
    precision: str = "auto"  # resolved when the backbones load (extract.backbones.resolve_precision)
    runtime: str = "torch"  # what runs the frozen backbones (extract.backbones.use_runtime); auto: the fastest here
    batch_size: int = 8
    workers: int = 2
    # Seconds one clip's decoding (probe, frames, audio, in its worker) may take. The backbones
    # run afterwards on batches in the main process and are not timed per clip; their cost
    # is bounded by the clip's duration, which the probe checks against the packets
    # (probe.check_timeline) before anything is sized by it.
    clip_timeout: float = 300.0
    feature_dtype: str = "float16"
    chunk_clips: int = 32  # rows per chunk of a new cache: also the unit of work of one rank
    retry_errors: bool = False
    progress: bool = True
    dist_timeout: float = 7200.0  # seconds a rank waits for the others (torchrun only)
    # Audio windows (extract.audio_windows): None = by layout, causal step windows on a time
    # grid (what live mode can reproduce), clip windows for fixed steps (as they always were).
    audio_windows: str | None = None
    audio_context: float | None = None  # causal step windows: seconds reaching back [DEFAULT_AUDIO_CONTEXT_S]
    # Where video is decoded (extract.hw_decode): sw, cuda, vaapi, qsv, or auto (a device
    # that opens, else software); resolved once when the run starts.
    decode: str = SOFTWARE
    prefetch: int = 2  # CUDA only: decoded batches copied to the device ahead of the backbones (extract.gpu_feed)

    def __post_init__(self) -> None:
        if self.decode not in DECODE_CHOICES:
            raise InvalidInput(f"--decode {self.decode!r}: choose one of {', '.join(DECODE_CHOICES)}")
        self.layout  # refuses an impossible combination (InvalidInput) before any work
        self.windowing  # likewise

    @property
    def layout(self) -> StepLayout:
        """Where each clip's steps lie (``steps`` is ignored on a time grid)."""
        return StepLayout(steps=0 if self.step_seconds else self.steps, step_seconds=self.step_seconds,
                          frames_per_step=self.frames_per_step)

    @property
    def windowing(self) -> AudioWindowing:
        """The audio backbone's windowing for this layout (see ``audio_windows``)."""
        grid = self.layout.grid
        mode = self.audio_windows or (WINDOWING_STEP if grid else WINDOWING_CLIP)
        if not grid and self.audio_context is not None:
            raise InvalidInput("--audio-context applies to time-grid caches (--step-seconds): a cache of fixed "
                               "--steps keeps clip audio windows; drop --audio-context")
        if not grid and mode == WINDOWING_STEP:
            raise InvalidInput("causal step audio windows apply to time-grid caches (--step-seconds); a cache of "
                               "fixed --steps keeps clip audio windows")
        if mode == WINDOWING_CLIP and self.audio_context is not None:
            raise InvalidInput("an audio context applies to causal step windows, not to clip windows; drop it")
        return AudioWindowing(mode, self.audio_context)

    @property
    def decode_batch(self) -> int:
        """Clips per batch handed from the decode workers. On a time grid a clip carries a
        frame per step (900 for 10 minutes at 0.6667 s, ~170 MB of uint8 crops at 256 px),
        and the loader holds ``workers x 2`` batches in flight: one clip per batch keeps
        that to a few clips, and the backbones batch the clip's frames themselves."""
        return 1 if self.step_seconds else self.batch_size


@dataclass
class ExtractSummary:
    total: int
    skipped: int
    done: int = 0
    failed: dict[str, str] = field(default_factory=dict)
    seconds: float = 0.0
    cache: str = ""
    rank: int = 0
    ranks: list[dict[str, Any]] = field(default_factory=list)  # per rank, on rank 0 of a distributed run
    changed: list[str] = field(default_factory=list)  # finished clips redone because their file changed

    def describe(self) -> str:
        rate = self.done / self.seconds if self.seconds > 0 else 0.0
        if self.rank:  # rank 0 prints the run's summary; the others only their share
            return f"rank {self.rank}: {self.done} clips done, {len(self.failed)} failed, {self.seconds:.1f} s"
        lines = [
            f"extract: {self.done} clips done ({rate:.2f} clips/s), {self.skipped} already in the cache, "
            f"{len(self.failed)} failed, {self.seconds:.1f} s -> {self.cache}"
        ]
        if self.changed:
            lines.append(f"  {len(self.changed)} clips extracted again because their file changed since "
                         f"(size or modification time): {', '.join(self.changed[:5])}"
                         + (" ..." if len(self.changed) > 5 else ""))
        if self.ranks:
            lines.append("  ranks: " + ", ".join(f"{r['rank']}: {r['done']} done, {r['failed']} failed"
                                                 for r in self.ranks))
        lines += [f"  failed {k}: {why}" for k, why in sorted(self.failed.items())]
        return "\n".join(lines)

