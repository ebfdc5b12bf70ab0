"""A generated stand-in for XD-Violence: real encoded, long, untrimmed videos with XD-style
names, official-style lists and an ``annotations.txt`` whose violent segments are known.

XD-Violence's videos cannot live on this project's machines, so this set proves the whole
path (lists -> extract -> train -> recognition and frame-level detection) on media whose
answer is known. It is built to need what the real set needs: **localisation**. Videos are
untrimmed and tens of seconds long, of several lengths (``lengths``: evenly spread over the
range, in shuffled order, so every set has short and long ones); a violent video holds one
or two short violent events (``event_seconds``, a few seconds each), so most of its frames
are calm; and every video, normal or violent, holds harmless *distractors* outside its
events (a light switched on, a large pale object walking across, a beep), so that "something
changed here" is not the same as "violence here".

Every video is a calm scene (a dim, slowly drifting gradient in a per-video hue with a small
moving square, a quiet hum and hiss). A violent event is full-frame strobing flashes in its
class's colour over high-contrast noise, with loud noise bursts in its class's frequency
band. Events start and end on frame boundaries at 24 fps, so the annotations (0-based
start, exclusive end) are exact.

Layout written under ``out``:

* ``videos/<split>/<name>.mp4`` (a few without extension, as users sometimes store them);
* ``lists/xd_CLIP_rgb.csv`` (train, 10 feature crops per video, as VadCLIP's list),
  ``lists/xd_CLIP_rgbtest.csv`` (test, crop 0), ``lists/annotations.txt`` (violent test
  videos; one name written with ``.mp4``, no trailing newline, as the official file);
* ``standin_meta.json``: the config, every video's split, codes, length, events (frames and
  seconds), distractors, and which listed videos were deliberately not written (to
  exercise the missing-video path).

Names carry multi-label codes (``B2-G-0``); the class is the first code. An event's look
and sound follow one of the video's codes (first event: the first code).

A **held-out set** "like the stand-in, with different content and lengths" is another seed
and another length range: ``cli.py synth-xd --out DIR --seed 1 --lengths 15-45``. The seed
draws every scene, event and distractor; the class styles (what violence of a class looks
and sounds like) are the same in every set, as they are one dataset's classes.
"""

from __future__ import annotations

import os
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass
from fractions import Fraction
from multiprocessing import get_context
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from cache_schema import InvalidInput, write_json, write_text
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
# Harmless changes that are not events: a light switched on (video), a large pale object
# walking across (video), a beep (audio).
DISTRACTORS = ("light", "walker", "beep")
# Multi-label videos: (split, first code, index within that code) -> all codes.
MULTI = {("train", "B1", 1): ("B1", "B2", "B6"), ("train", "G", 1): ("G", "B2"), ("test", "B2", 0): ("B2", "G")}
MARGIN = FPS // 2          # frames kept calm between events, distractors and the video's ends


@dataclass(frozen=True)
class StandinConfig:
    """What to generate. ``lengths`` and ``event_seconds`` are (min, max) seconds; a video's
    length is drawn from an even spread over ``lengths``, an event's from ``event_seconds``;
    ``two_events`` is the share of violent videos with a second event; each video gets
    ``distractors`` (min, max) harmless changes."""

    train_normal: int = 6
    train_per_class: int = 2        # violent train videos per class (first code)
    test_normal: int = 4
    test_per_class: int = 1
    lengths: tuple[float, float] = (20.0, 60.0)
    event_seconds: tuple[float, float] = (2.0, 4.0)
    two_events: float = 0.4
    distractors: tuple[int, int] = (1, 3)
    size: tuple[int, int] = (64, 48)
    sample_rate: int = 16000
    missing: int = 1                # listed train videos whose file is not written
    seed: int = 0

    def __post_init__(self) -> None:
        lo, hi = self.lengths
        elo, ehi = self.event_seconds
        if not 0 < lo <= hi:
            raise InvalidInput(f"stand-in lengths {self.lengths}: give 0 < min <= max seconds")
        if not 0 < elo <= ehi:
            raise InvalidInput(f"stand-in event_seconds {self.event_seconds}: give 0 < min <= max seconds")
        # two events, the distractors (at most 2 s each) and the margins fit the shortest video
        need = 2 * ehi + 2.0 * self.distractors[1] + (3 + self.distractors[1]) * MARGIN / FPS + 0.5
        if lo < need:
            raise InvalidInput(f"stand-in lengths {self.lengths}: the shortest video must be at least {need:g} s "
                               f"for two {ehi:g} s events and {self.distractors[1]} distractors; "
                               "raise the minimum length, shorten the events or lower the distractors")
        if not 0 <= self.distractors[0] <= self.distractors[1]:
            raise InvalidInput(f"stand-in distractors {self.distractors}: give 0 <= min <= max")


@dataclass(frozen=True)
class StandinVideo:
    name: str
    split: str
    codes: tuple[str, ...]
    segments: tuple[tuple[int, int], ...]    # violent events, frames, [start, end)
    n_frames: int
    file: str                                # path relative to out; "" when deliberately missing
    segment_codes: tuple[str, ...] = ()
    distractors: tuple[tuple[str, int, int], ...] = ()   # (kind, start, end) frames

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


def _place(rng: np.random.Generator, n_frames: int, lengths: list[int]) -> list[tuple[int, int]]:
    """Disjoint spans of the given lengths (in frames) in a random order, at least
    ``MARGIN`` frames from each other and from the video's ends, the free frames split at
    random between the gaps. Always succeeds when they fit (the config check ensures it)."""
    free = n_frames - sum(lengths) - (len(lengths) + 1) * MARGIN
    if free < 0:
        raise RuntimeError(f"no room for spans {lengths} in {n_frames} frames")  # excluded by __post_init__
    cuts = np.sort(rng.integers(0, free + 1, size=len(lengths)))
    gaps = np.diff(np.concatenate([[0], cuts]))
    spans, pos = [None] * len(lengths), 0
    for gap, j in zip(gaps, rng.permutation(len(lengths))):
        pos += MARGIN + int(gap)
        spans[j] = (pos, pos + lengths[j])
        pos += lengths[j]
    return spans


def _lengths(rng: np.random.Generator, cfg: StandinConfig, n: int) -> list[int]:
    """``n`` video lengths in frames, evenly spread over ``cfg.lengths`` (with jitter), shuffled."""
    lo, hi = cfg.lengths
    if n <= 1:
        seconds = np.array([(lo + hi) / 2])
    else:
        seconds = np.linspace(lo, hi, n) + rng.uniform(-0.5, 0.5, n) * (hi - lo) / (n - 1)
    seconds = np.clip(seconds, lo, hi)
    rng.shuffle(seconds)
    return [int(round(s * FPS)) for s in seconds]


def plan(cfg: StandinConfig) -> list[StandinVideo]:
    """Every video of the stand-in, deterministic in ``cfg``."""
    rng = np.random.default_rng(cfg.seed)
    elo, ehi = (int(round(s * FPS)) for s in cfg.event_seconds)
    videos: list[StandinVideo] = []
    for split, n_normal, per_class in (("train", cfg.train_normal, cfg.train_per_class),
                                       ("test", cfg.test_normal, cfg.test_per_class)):
        specs: list[tuple[str, ...]] = [("A",)] * n_normal
        for code in VIOLENT_CODES:
            specs += [MULTI.get((split, code, j), (code,)) for j in range(per_class)]
        for i, (codes, n_frames) in enumerate(zip(specs, _lengths(rng, cfg, len(specs)))):
            name = _name(split, i, codes)
            count = 0 if codes == ("A",) else 1 + int(rng.random() < cfg.two_events)
            n_dis = int(rng.integers(cfg.distractors[0], cfg.distractors[1] + 1))
            kinds = [DISTRACTORS[int(k)] for k in rng.integers(0, len(DISTRACTORS), size=n_dis)]
            event_len = [int(n) for n in rng.integers(elo, ehi + 1, size=count)]
            spans = _place(rng, n_frames, event_len + [int(n) for n in rng.integers(FPS, 2 * FPS + 1, size=n_dis)])
            segs = sorted(spans[:count])
            dis = tuple(sorted(((k, a, b) for k, (a, b) in zip(kinds, spans[count:])), key=lambda d: d[1]))
            seg_codes = tuple(codes[s % len(codes)] for s in range(len(segs)))
            ext = "" if i % 7 == 3 else ".mp4"
            videos.append(StandinVideo(name, split, codes, tuple(segs), n_frames, f"videos/{split}/{name}{ext}",
                                       seg_codes, dis))
    # Leave out the last few normal train videos' files: listed, not on disk.
    normal_train = [i for i, v in enumerate(videos) if v.split == "train" and not v.violent]
    for i in normal_train[len(normal_train) - cfg.missing:] if cfg.missing else []:
        videos[i] = StandinVideo(**{**asdict(videos[i]), "file": ""})
    return videos


def parse_range(text: str, what: str = "range") -> tuple[float, float]:
    """``"20-60"`` -> ``(20.0, 60.0)``; ``"30"`` -> ``(30.0, 30.0)`` (the CLI's form of a
    (min, max) seconds option)."""
    parts = text.strip().split("-")
    try:
        lo, hi = (float(parts[0]), float(parts[-1])) if len(parts) in (1, 2) else (None, None)
    except ValueError:
        lo = hi = None
    if lo is None or hi is None or not 0 < lo <= hi:
        raise InvalidInput(f"{what} {text!r}: give seconds as MIN-MAX (e.g. 20-60) or one number, 0 < MIN <= MAX")
    return lo, hi


# -- content ------------------------------------------------------------------------------
def render_frames(video: StandinVideo, cfg: StandinConfig, rng: np.random.Generator) -> Iterator[np.ndarray]:
    """The video's frames (uint8 RGB ``[h, w, 3]`` at ``cfg.size``), one per frame at
    ``FPS``, lazily: a long video (or a live stream, ``synth.live_stream``) is never held
    in memory. The scene's hue and speed are drawn from ``rng`` on the first frame, an
    event frame's noise as it is made, so the result depends on what else drew from
    ``rng`` before the first frame is asked for."""
    w, h = cfg.size
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    base = (xx / w * 0.6 + yy / h * 0.4)[..., None]
    hue = rng.uniform(0.2, 0.8, size=3).astype(np.float32)
    speed = rng.uniform(0.4, 1.2)
    in_seg = np.full(video.n_frames, -1)
    for s, (a, b) in enumerate(video.segments):
        in_seg[a:b] = s
    light = np.zeros(video.n_frames, np.float32)
    walker = np.full(video.n_frames, -1.0, np.float32)   # the walker's progress 0..1, -1: absent
    for kind, a, b in video.distractors:
        ramp = np.minimum(np.arange(b - a) / (FPS / 4), 1.0)     # a quarter-second switch-on
        if kind == "light":
            light[a:b] = 0.6 * ramp
        elif kind == "walker":
            walker[a:b] = np.linspace(0.0, 1.0, b - a)
    for f in range(video.n_frames):
        t = f / FPS
        s = int(in_seg[f])
        if s < 0:
            img = (40 + 50 * (base + 0.05 * np.sin(t * 0.7)) * hue) * (1.0 + light[f])
            x = int((f * speed) % (w - 8))
            img[h // 2 - 4:h // 2 + 4, x:x + 8] = 110
            if walker[f] >= 0:                                # a pale figure, a third of the frame high
                wx = int(walker[f] * (w + 12)) - 12
                img[h // 3:h - 4, max(wx, 0):max(wx + 12, 0)] = (150, 145, 135)
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


HUM_HZ = (90.0, 130.0)    # the calm hum's frequency is drawn from this range per video


def calm_audio(t: np.ndarray, hum: float, rng: np.random.Generator) -> np.ndarray:
    """The calm scene's sound at times ``t`` (seconds): a quiet hum at ``hum`` Hz with
    hiss (float64). Samples depend only on their own time and the hiss drawn from
    ``rng``, so a stream can render it block by block."""
    return 0.15 * np.sin(2 * np.pi * hum * t) + 0.03 * rng.standard_normal(len(t))


def event_audio(code: str, n: int, sr: int, rng: np.random.Generator) -> np.ndarray:
    """``n`` samples of a violent event of class ``code``: loud noise bursts (6 per
    second) in the class's band over a little broadband noise (float64)."""
    lo, hi = STYLE[code][1]
    gate = (np.arange(n) / sr * 6.0) % 1.0 < 0.6   # 6 bursts per second
    return 0.25 * _band_noise(rng, n, sr, lo, hi) * gate + 0.05 * rng.standard_normal(n)


def render_audio(video: StandinVideo, cfg: StandinConfig, rng: np.random.Generator) -> np.ndarray:
    """The video's whole sound track, float32 ``[1, samples]`` at ``cfg.sample_rate``.
    Calm: a quiet hum with hiss. Violent: loud gated noise bursts in the band of the
    event's code. A beep: a clean tone at a moderate level."""
    sr = cfg.sample_rate
    n = int(round(video.n_frames / FPS * sr))
    t = np.arange(n) / sr
    hum = rng.uniform(*HUM_HZ)
    x = calm_audio(t, hum, rng)
    for kind, a, b in video.distractors:
        if kind == "beep":
            i0, i1 = int(round(a / FPS * sr)), int(round(b / FPS * sr))
            x[i0:i1] += 0.2 * np.sin(2 * np.pi * rng.uniform(500.0, 1500.0) * t[i0:i1])
    for (a, b), code in zip(video.segments, video.segment_codes):
        i0, i1 = int(round(a / FPS * sr)), int(round(b / FPS * sr))
        x[i0:i1] = event_audio(code, i1 - i0, sr, rng)
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


def _write_video(out: Path, cfg: StandinConfig, k: int, video: StandinVideo) -> None:
    path = out / video.file
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng((cfg.seed, 1, k))
    # render_frames is lazy: the audio draws from rng first, then the frames as encoded
    write_clip(path, "mp4", "aac", cfg.size[0], cfg.size[1], Fraction(FPS), np.arange(video.n_frames) / FPS,
               False, render_frames(video, cfg, rng), render_audio(video, cfg, rng), cfg.sample_rate)


def _write_job(job: tuple[str, StandinConfig, int, StandinVideo]) -> None:
    out, cfg, k, video = job
    _write_video(Path(out), cfg, k, video)


def generate_standin(out: str | Path, cfg: StandinConfig = StandinConfig(),
                     workers: int | None = None) -> list[StandinVideo]:
    """Write the stand-in under ``out`` (see the module doc) and return its videos.
    ``workers``: encoding processes (default: the CPU count, at most 8; every video's
    content is seeded by ``(seed, 1, index)``, so the result does not depend on it)."""
    out = Path(out)
    videos = plan(cfg)
    jobs = [(str(out), cfg, k, v) for k, v in enumerate(videos) if v.file]
    workers = min(os.cpu_count() or 1, 8) if workers is None else max(int(workers), 1)
    if workers == 1 or len(jobs) <= 1:
        for job in jobs:
            _write_job(job)
    else:
        with ProcessPoolExecutor(min(workers, len(jobs)), mp_context=get_context("spawn")) as pool:
            list(pool.map(_write_job, jobs))
    _write_lists(out, videos)
    meta = {"config": asdict(cfg), "fps": FPS,
            "videos": [{**asdict(v), "seconds": [[a / FPS, b / FPS] for a, b in v.segments]} for v in videos]}
    write_json(out / META_FILE, meta)
    return videos


__all__ = ["DISTRACTORS", "FPS", "HUM_HZ", "META_FILE", "STYLE", "VIOLENT_CODES", "StandinConfig", "StandinVideo",
           "calm_audio", "event_audio", "generate_standin", "parse_range", "plan", "render_audio", "render_frames"]
