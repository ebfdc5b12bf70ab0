"""Benchmark clips: H.264/AAC footage that costs what real footage costs to decode.

Moving texture and noise keep frames from compressing to nothing; frames are generated
lazily, so the writer never holds the video either (10-minute 720p clips are fine).
"""

from __future__ import annotations

from collections.abc import Iterator
from fractions import Fraction
from pathlib import Path

import numpy as np

from .encode import write_clip


def write_bench_clip(path: Path, duration: float, width: int = 1280, height: int = 720, fps: int = 25,
                     seed: int = 0, grain: int = 1) -> Path:
    """Write ``duration`` seconds of ``width`` x ``height`` video at ``fps`` with a 330 Hz
    tone in noise (44.1 kHz AAC) to ``path`` (mp4); deterministic in ``seed``. ``grain``
    is the side of the noise's square cells in pixels: 1 (per-pixel noise, the costliest
    content to encode and decode) or larger for camera-like content that encodes in a
    fraction of the time (a 10-minute 720p video of per-pixel noise is ~0.9 GB)."""
    rng = np.random.default_rng(seed)
    n = int(round(duration * fps))
    cells = rng.integers(0, 255, size=((height + 64) // grain + 1, (width + 64) // grain + 1, 3), dtype=np.uint8)
    base = np.ascontiguousarray(cells.repeat(grain, 0).repeat(grain, 1)[: height + 64, : width + 64])

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


__all__ = ["write_bench_clip"]
