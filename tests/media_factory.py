"""Small real media files for tests, encoded through PyAV, whose content is known:
brightness and tone change at given times, so that alignment can be checked exactly."""

from __future__ import annotations

from fractions import Fraction
from pathlib import Path
from typing import Callable

import av
import numpy as np


def write_clip(
    path: Path,
    duration: float = 4.0,
    fps: int = 15,
    size: tuple[int, int] = (96, 64),
    brightness: Callable[[float], float] = lambda t: 0.5,
    tone_hz: Callable[[float], float] | None = lambda t: 440.0,
    sample_rate: int = 44100,
    vcodec: str = "libx264",
    acodec: str = "aac",
    gop: int = 12,
    video: bool = True,
    square: bool = True,
) -> Path:
    """Write a clip whose frame at time t has uniform grey level ``brightness(t)`` (0..1)
    plus, if ``square``, a small moving square (so frames are not constant), and whose audio is a sine of
    frequency ``tone_hz(t)`` (no audio stream when ``tone_hz`` is None)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    w, h = size
    with av.open(str(path), "w") as out:
        vs = None
        if video:
            vs = out.add_stream(vcodec, rate=fps)
            vs.width, vs.height, vs.pix_fmt = w, h, "yuv420p"
            vs.gop_size = gop
            if vcodec == "libx264":
                vs.options = {"preset": "ultrafast", "bf": "2"}
        aus = None
        if tone_hz is not None:
            aus = out.add_stream(acodec, rate=sample_rate)
            aus.layout = "mono"
        if vs is not None:
            n = int(round(duration * fps))
            for i in range(n):
                t = i / fps
                img = np.full((h, w, 3), int(255 * brightness(t)), dtype=np.uint8)
                if square:
                    x = int((i * 3) % max(1, w - 8))
                    img[4:12, x:x + 8] = 255 - img[0, 0]
                frame = av.VideoFrame.from_ndarray(img, format="rgb24")
                frame.pts = i
                frame.time_base = Fraction(1, fps)
                for p in vs.encode(frame):
                    out.mux(p)
            for p in vs.encode():
                out.mux(p)
        if aus is not None:
            n = int(duration * sample_rate)
            t = np.arange(n) / sample_rate
            freq = np.array([tone_hz(x) for x in t[:: sample_rate // 100]]).repeat(sample_rate // 100)[:n]
            freq = np.pad(freq, (0, n - len(freq)), mode="edge")
            phase = 2 * np.pi * np.cumsum(freq) / sample_rate
            wave = (0.3 * np.sin(phase)).astype(np.float32)
            block = 1024
            for s in range(0, n, block):
                chunk = wave[s: s + block][None, :]
                frame = av.AudioFrame.from_ndarray(chunk, format="flt", layout="mono")
                frame.sample_rate = sample_rate
                frame.pts = s
                frame.time_base = Fraction(1, sample_rate)
                for p in aus.encode(frame):
                    out.mux(p)
            for p in aus.encode():
                out.mux(p)
    return path


def write_audio_jump_clip(
    path: Path,
    jump: float,
    duration: float = 4.0,
    fps: int = 15,
    sample_rate: int = 44100,
    acodec: str = "aac",
    video: bool = True,
) -> Path:
    """A clip (mkv or mpegts, by suffix) whose audio packets' pts jump forward by ``jump``
    seconds halfway (a camera whose audio clock broke), beside a normal video stream; the
    packets are encoded normally and only their timestamps are moved before muxing."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with av.open(str(path), "w") as out:
        vs = None
        if video:
            vs = out.add_stream("libx264", rate=fps)
            vs.width, vs.height, vs.pix_fmt = 96, 64, "yuv420p"
            vs.options = {"preset": "ultrafast"}
        aus = out.add_stream(acodec, rate=sample_rate)
        aus.layout = "mono"
        if vs is not None:
            for i in range(int(round(duration * fps))):
                img = np.full((64, 96, 3), (17 * i) % 256, dtype=np.uint8)
                frame = av.VideoFrame.from_ndarray(img, format="rgb24")
                frame.pts, frame.time_base = i, Fraction(1, fps)
                for p in vs.encode(frame):
                    out.mux(p)
            for p in vs.encode():
                out.mux(p)
        n = int(duration * sample_rate)
        wave = (0.3 * np.sin(2 * np.pi * 440.0 * np.arange(n) / sample_rate)).astype(np.float32)
        packets = []
        for s in range(0, n, 1024):
            frame = av.AudioFrame.from_ndarray(wave[None, s: s + 1024], format="flt", layout="mono")
            frame.sample_rate, frame.pts, frame.time_base = sample_rate, s, Fraction(1, sample_rate)
            packets += list(aus.encode(frame))
        packets += list(aus.encode())
        for j, p in enumerate(packets):
            if j >= len(packets) // 2:
                shift = int(round(jump / p.time_base))
                p.pts += shift
                p.dts += shift
            out.mux(p)
    return path
