"""A small generated stand-in for XD-Violence: real encoded videos with XD-style names,
official-style lists and an ``annotations.txt`` whose violent segments are known.

XD-Violence's videos cannot live on this project's machines, so this set proves the whole
path (lists -> extract -> train -> recognition and frame-level detection) on media whose
answer is known. Every video is a calm scene (a dim, slowly drifting gradient with a small
moving square, quiet hum and hiss); a violent video holds one or two violent segments:
full-frame strobing flashes in its class's colour over high-contrast noise, and loud
noise bursts in its class's frequency band. Segments start and end on frame boundaries at
24 fps, so the annotations (0-based start, exclusive end) are exact.

Layout written under ``out``:

* ``videos/<split>/<name>.mp4`` (a few without extension, as users sometimes store them);
* ``lists/xd_CLIP_rgb.csv`` (train, 10 feature crops per video, as VadCLIP's list),
  ``lists/xd_CLIP_rgbtest.csv`` (test, crop 0), ``lists/annotations.txt`` (violent test
  videos; one name written with ``.mp4``, no trailing newline, as the official file);
* ``standin_meta.json``: every video's split, codes, segments (frames and seconds), and
  which listed videos were deliberately not written (to exercise the missing-video path).

Names carry multi-label codes (``B2-G-0``); the class is the first code. A segment's look
and sound follow one of the video's codes (first segment: the first code).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from fractions import Fraction
from pathlib import Path

import numpy as np

from cache_schema import write_json, write_text
from synth.encode import write_clip

FPS = 24
VIOLENT_CODES = ("B1", "B2", "B4", "B5", "B6", "G")
META_FILE = "standin_meta.json"
CROPS = 10
# Per code: flash colour (RGB) and the noise band of its sound (Hz).
STYLE: dict[str, tuple[tuple[int, int, int], tuple[float, float]]] = {
    "B1": ((255, 40, 40), (300.0, 900.0)),
    "B2": ((255, 255, 200), (2500.0, 6000.0)),
    "B4": ((255, 140, 0), (150.0, 500.0)),
    "B5": ((220, 0, 220), (900.0, 2000.0)),
    "B6": ((40, 90, 255), (60.0, 250.0)),
    "G": ((255, 220, 60), (40.0, 6000.0)),
}
# Multi-label videos: (split, first code, index within that code) -> all codes.
MULTI = {("train", "B1", 1): ("B1", "B2", "B6"), ("train", "G", 1): ("G", "B2"), ("test", "B2", 0): ("B2", "G")}


@dataclass(frozen=True)
class StandinConfig:
    train_normal: int = 6
    train_per_class: int = 2        # violent train videos per class (first code)
    test_normal: int = 4
    test_per_class: int = 1
    duration: float = 6.0           # seconds
    size: tuple[int, int] = (64, 48)
    sample_rate: int = 16000
    missing: int = 1                # listed train videos whose file is not written
    seed: int = 0


@dataclass(frozen=True)
class StandinVideo:
    name: str
    split: str
    codes: tuple[str, ...]
    segments: tuple[tuple[int, int], ...]    # frames, [start, end)
    n_frames: int
    file: str                                # path relative to out; "" when deliberately missing
    segment_codes: tuple[str, ...] = ()

    @property
    def violent(self) -> bool:
        return bool(self.segments)


def _name(split: str, i: int, codes: tuple[str, ...]) -> str:
    padded = "-".join(codes + ("0",) * (3 - len(codes))) if codes != ("A",) else "A"
    # Both naming styles of the real set: a dotted movie title with a time span, and a
    # YouTube id with a clip number.
    if i % 2 == 0:
        return f"Standin.{split.title()}.Movie.{2000 + i}__#00-0{i % 10}-00_00-0{i % 10}-06_label_{padded}"
    return f"v={split}{i:03d}Xq__#{i}_label_{padded}"


def _segments(rng: np.random.Generator, n_frames: int, count: int) -> tuple[tuple[int, int], ...]:
    """``count`` disjoint segments of 1.2-2.2 s, at least 0.5 s from each other and the ends."""
    while True:
        lengths = rng.integers(int(1.2 * FPS), int(2.2 * FPS), size=count)
        starts = np.sort(rng.integers(FPS // 2, n_frames - FPS // 2, size=count))
        segs = [(int(s), int(s + n)) for s, n in zip(starts, lengths)]
        ok = segs[-1][1] <= n_frames - FPS // 2 and all(b[0] - a[1] >= FPS // 2 for a, b in zip(segs, segs[1:]))
        if ok:
            return tuple(segs)


def plan(cfg: StandinConfig) -> list[StandinVideo]:
    """Every video of the stand-in, deterministic in ``cfg``."""
    rng = np.random.default_rng(cfg.seed)
    n_frames = int(round(cfg.duration * FPS))
    videos: list[StandinVideo] = []
    for split, n_normal, per_class in (("train", cfg.train_normal, cfg.train_per_class),
                                       ("test", cfg.test_normal, cfg.test_per_class)):
        specs: list[tuple[str, ...]] = [("A",)] * n_normal
        for code in VIOLENT_CODES:
            specs += [MULTI.get((split, code, j), (code,)) for j in range(per_class)]
        for i, codes in enumerate(specs):
            name = _name(split, i, codes)
            if codes == ("A",):
                segs: tuple[tuple[int, int], ...] = ()
            else:
                segs = _segments(rng, n_frames, 1 + int(rng.random() < 0.4))
            seg_codes = tuple(codes[s % len(codes)] for s in range(len(segs)))
            ext = "" if i % 7 == 3 else ".mp4"
            videos.append(StandinVideo(name, split, codes, segs, n_frames, f"videos/{split}/{name}{ext}", seg_codes))
    # Leave out the last few normal train videos' files: listed, not on disk.
    normal_train = [i for i, v in enumerate(videos) if v.split == "train" and not v.violent]
    for i in normal_train[len(normal_train) - cfg.missing:] if cfg.missing else []:
        videos[i] = StandinVideo(**{**asdict(videos[i]), "file": ""})
    return videos


# -- content ------------------------------------------------------------------------------
def _frames(video: StandinVideo, cfg: StandinConfig, rng: np.random.Generator):
    w, h = cfg.size
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    hue = rng.uniform(0.2, 0.8, size=3).astype(np.float32)
    in_seg = np.full(video.n_frames, -1)
    for s, (a, b) in enumerate(video.segments):
        in_seg[a:b] = s
    for f in range(video.n_frames):
        t = f / FPS
        s = int(in_seg[f])
        if s < 0:
            grad = (xx / w * 0.6 + yy / h * 0.4 + 0.05 * np.sin(t * 0.7))[..., None]
            img = 40 + 50 * grad * hue
            x = int((f * 0.8) % (w - 8))
            img[h // 2 - 4:h // 2 + 4, x:x + 8] = 110
        else:
            colour = np.array(STYLE[video.segment_codes[s]][0], np.float32)
            on = (f // 2) % 2 == 0                 # 12 Hz strobe
            noise = rng.uniform(0.0, 1.0, size=(h, w, 1)).astype(np.float32)
            img = colour * (0.75 + 0.25 * noise) if on else 255 * noise * np.ones(3, np.float32)
        yield np.clip(img, 0, 255).astype(np.uint8)


def _band_noise(rng: np.random.Generator, n: int, sr: int, lo: float, hi: float) -> np.ndarray:
    """White noise band-limited to [lo, hi] Hz, unit RMS."""
    spec = np.fft.rfft(rng.standard_normal(n))
    freqs = np.fft.rfftfreq(n, 1.0 / sr)
    spec[(freqs < lo) | (freqs > hi)] = 0
    x = np.fft.irfft(spec, n)
    return x / (np.sqrt(np.mean(x**2)) + 1e-9)


def _audio(video: StandinVideo, cfg: StandinConfig, rng: np.random.Generator) -> np.ndarray:
    """Calm: a quiet 110 Hz hum with hiss. Violent: loud gated noise bursts in the band of
    the segment's code."""
    sr = cfg.sample_rate
    n = int(round(video.n_frames / FPS * sr))
    t = np.arange(n) / sr
    x = 0.15 * np.sin(2 * np.pi * 110 * t) + 0.03 * rng.standard_normal(n)
    for (a, b), code in zip(video.segments, video.segment_codes):
        i0, i1 = int(round(a / FPS * sr)), int(round(b / FPS * sr))
        lo, hi = STYLE[code][1]
        gate = (np.arange(i1 - i0) / sr * 6.0) % 1.0 < 0.6   # 6 bursts per second
        x[i0:i1] = 0.25 * _band_noise(rng, i1 - i0, sr, lo, hi) * gate + 0.05 * rng.standard_normal(i1 - i0)
    return np.clip(x, -1, 1).astype(np.float32)[None]


# -- files --------------------------------------------------------------------------------
def _write_lists(out: Path, videos: list[StandinVideo]) -> None:
    lists = out / "lists"
    lists.mkdir(parents=True, exist_ok=True)
    for split, fname, crops, root in (("train", "xd_CLIP_rgb.csv", CROPS, "/features/XDTrainClipFeatures"),
                                      ("test", "xd_CLIP_rgbtest.csv", 1, "/features/XDTestClipFeatures")):
        rows = ["path,label"]
        for v in (v for v in videos if v.split == split):
            label = v.name.rsplit("_label_", 1)[1]
            rows += [f"{root}/{v.name}__{c}.npy,{label}" for c in range(crops)]
        write_text(lists / fname, "\n".join(rows) + "\n")
    lines = []
    for i, v in enumerate(v for v in videos if v.split == "test" and v.violent):
        name = v.name + (".mp4" if i == 0 else "")  # the official file names a few videos with .mp4
        lines.append(" ".join([name, *(str(x) for seg in v.segments for x in seg)]))
    write_text(lists / "annotations.txt", "\n".join(lines))  # no trailing newline, as the official file


def generate_standin(out: str | Path, cfg: StandinConfig = StandinConfig()) -> list[StandinVideo]:
    """Write the stand-in under ``out`` (see the module doc) and return its videos."""
    out = Path(out)
    videos = plan(cfg)
    for k, v in enumerate(videos):
        if not v.file:
            continue
        path = out / v.file
        path.parent.mkdir(parents=True, exist_ok=True)
        rng = np.random.default_rng((cfg.seed, 1, k))
        write_clip(path, "mp4", "aac", cfg.size[0], cfg.size[1], Fraction(FPS), np.arange(v.n_frames) / FPS,
                   False, _frames(v, cfg, rng), _audio(v, cfg, rng), cfg.sample_rate)
    _write_lists(out, videos)
    meta = {"config": asdict(cfg), "fps": FPS,
            "videos": [{**asdict(v), "seconds": [[a / FPS, b / FPS] for a, b in v.segments]} for v in videos]}
    write_json(out / META_FILE, meta)
    return videos


__all__ = ["FPS", "StandinConfig", "StandinVideo", "plan", "generate_standin", "META_FILE"]
