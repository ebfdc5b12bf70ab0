"""Predict on raw video with a trained run: class, class probabilities, anomaly-score timeline.

This is the one place where both stages meet at run time, so it lives at the top level
(nothing in ``temporal/`` imports ``extract/``). A run directory records the identity of
the cache it was trained on; the backbones named there are loaded again and checked
(weights checksum, dimension, preprocessing), so the head only ever sees features of the
kind it was trained on. A run whose backbones cannot be reproduced is refused with what
differs and how to fix it.

Two modes:

* whole video (default): the file is one clip of ``T`` steps, exactly as extraction cut
  the training clips (``decode_clip`` + ``FeatureExtractor``; features rounded to the
  cache's dtype), so a training clip gets the prediction its cached features give;
* ``window``/``hop``: windows of ``window`` seconds every ``hop`` seconds, each cut into
  ``T`` steps as if it were a clip (``extract.windows``: one pass over the file, bounded
  memory, any length). Per window: a class and ``T`` step scores; over the video: one
  merged score timeline and the anomalous segments.

The anomaly score of a step is ``1 - p(normal)`` of its step probabilities (MTCN's
per-step output). Files that cannot be read give an error entry, never a crash.
"""

from __future__ import annotations

import json
import logging
import math
import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from cache_schema import BackboneInfo
from extract.backbones import AudioBackbone, VideoBackbone, load_audio_backbone, load_video_backbone
from extract.decode import DecodeError, decode_clip
from extract.frozen_model import autocast_context, resolve_device
from extract.pipeline import SAMPLE_RATE, Decoded, FeatureExtractor
from extract.windows import DecodedWindow, decode_windows
from extract.windows import thumbnail as window_thumbnail
from temporal.data import Clips
from temporal.evaluate import load_run
from temporal.metrics import NORMAL
from temporal.model import AnomalyModel

logger = logging.getLogger(__name__)

# Preprocessing fields that describe, not define, the input: a library upgrade or a
# checkpoint loaded from a file instead of the hub changes them, never the tensors.
INFORMATIONAL_PREPROCESSING = ("library", "pretrained_tag")
THUMB_HEIGHT = 72


class BackboneMismatch(ValueError):
    """The run's features came from backbones that cannot be reproduced here."""


@dataclass(frozen=True)
class PredictConfig:
    """How to predict. ``video_model``/``audio_model`` point at the run's weights when its
    recorded name does not resolve here (a local copy of the same checkpoint)."""

    video_model: str | None = None
    audio_model: str | None = None
    device: str = "auto"
    precision: str = "fp32"
    window: float | None = None     # seconds; None = the whole video is one clip
    hop: float | None = None        # seconds between window starts; default window / 2
    batch_size: int = 8             # windows (or videos) per backbone batch
    thumbnails: bool = False        # keep small frames for plots

    def __post_init__(self) -> None:
        if self.hop is not None and self.window is None:
            raise ValueError("--hop needs --window")
        for name in ("window", "hop"):
            v = getattr(self, name)
            if v is not None and not (math.isfinite(v) and v > 0):
                raise ValueError(f"--{name} must be a positive number of seconds, got {v}")
        if self.batch_size < 1:
            raise ValueError("batch_size must be at least 1")

    @property
    def effective_hop(self) -> float | None:
        if self.window is None:
            return None
        return self.hop if self.hop is not None else self.window / 2


# ------------------------------------------------------------------------------ results


@dataclass
class WindowResult:
    """One scored window (the whole video in whole-video mode). ``step_scores`` are NaN at
    steps with neither stream; ``score`` is the window's clip-level ``1 - p(normal)``."""

    start: float
    end: float
    label: str | None = None
    probs: np.ndarray | None = None
    score: float | None = None
    step_times: np.ndarray = field(default_factory=lambda: np.zeros(0))
    step_scores: np.ndarray = field(default_factory=lambda: np.zeros(0))
    error: str | None = None
    thumbnail: Image.Image | None = field(default=None, repr=False)

    def to_json(self, class_names: Sequence[str]) -> dict[str, Any]:
        return {
            "start": round(self.start, 4), "end": round(self.end, 4), "label": self.label,
            "probs": _probs_json(self.probs, class_names), "score": _num(self.score),
            "steps": [{"t": round(float(t), 4), "score": _num(s)} for t, s in zip(self.step_times, self.step_scores)],
            "error": self.error,
        }


@dataclass
class Segment:
    """A stretch of video whose windows are predicted as one non-normal class."""

    start: float
    end: float
    label: str
    peak: float | None

    def to_json(self) -> dict[str, Any]:
        return {"start": round(self.start, 3), "end": round(self.end, 3), "label": self.label, "peak": _num(self.peak)}


@dataclass
class VideoPrediction:
    """The answer for one file. ``label``/``probs`` are those of the most anomalous window
    (the only window in whole-video mode); ``times``/``scores`` the anomaly-score timeline
    over the whole video. ``error`` is set (and the rest empty) when the file is unusable."""

    video: str
    class_names: tuple[str, ...]
    duration: float | None = None
    label: str | None = None
    probs: np.ndarray | None = None
    times: np.ndarray = field(default_factory=lambda: np.zeros(0))
    scores: np.ndarray = field(default_factory=lambda: np.zeros(0))
    windows: list[WindowResult] = field(default_factory=list)
    segments: list[Segment] = field(default_factory=list)
    mode: str = "clip"
    window: float | None = None
    hop: float | None = None
    error: str | None = None
    seconds: float = 0.0
    thumbnails: list[tuple[float, Image.Image]] = field(default_factory=list, repr=False)  # (time, frame), plots

    @property
    def peak(self) -> tuple[float, float] | None:
        """(time, score) of the highest step score, if any. A confident head saturates over a
        whole event, so the time is the middle of the first run of points within 0.01 of
        the maximum, not its first point."""
        if self.scores.size == 0 or np.all(np.isnan(self.scores)):
            return None
        top = float(np.nanmax(self.scores))
        near = np.nan_to_num(self.scores, nan=-1.0) >= top - 0.01
        i = int(np.argmax(near))
        j = i
        while j + 1 < len(near) and near[j + 1]:
            j += 1
        mid = (i + j) // 2
        return float(self.times[mid]), float(self.scores[mid])

    def to_json(self) -> dict[str, Any]:
        """``{video, label, probs, steps: [{t, score}], error}`` plus the windows, segments,
        duration and mode. NaN (a step without data) is written as null."""
        return {
            "video": self.video, "label": self.label, "probs": _probs_json(self.probs, self.class_names),
            "steps": [{"t": round(float(t), 4), "score": _num(s)} for t, s in zip(self.times, self.scores)],
            "error": self.error,
            "duration": None if self.duration is None else round(self.duration, 4), "mode": self.mode,
            "window": self.window, "hop": self.hop,
            "windows": [w.to_json(self.class_names) for w in self.windows],
            "segments": [s.to_json() for s in self.segments],
        }


def _num(x: float | None) -> float | None:
    return None if x is None or not math.isfinite(float(x)) else round(float(x), 6)


def _probs_json(probs: np.ndarray | None, class_names: Sequence[str]) -> dict[str, float] | None:
    return None if probs is None else {c: round(float(p), 6) for c, p in zip(class_names, probs)}


# ------------------------------------------------------------------------------ backbones


def backbone_differences(kind: str, expected: dict[str, Any], loaded: VideoBackbone | AudioBackbone) -> list[str]:
    """What differs between the backbone a run was trained on and the one loaded here."""
    want = BackboneInfo.from_dict(expected)
    out = []
    if want.checksum != loaded.checksum:
        out.append(f"{kind} weights: run has sha256 {want.checksum[:12]}…, loaded {loaded.checksum[:12]}…")
    if want.arch != loaded.arch:
        out.append(f"{kind} architecture: run has {want.arch}, loaded {loaded.arch}")
    if want.dim != loaded.dim:
        out.append(f"{kind} feature dim: run has {want.dim}, loaded {loaded.dim}")
    a = _canonical({k: v for k, v in want.preprocessing.items() if k not in INFORMATIONAL_PREPROCESSING})
    b = _canonical({k: v for k, v in loaded.preprocessing.items() if k not in INFORMATIONAL_PREPROCESSING})
    for key in sorted(set(a) | set(b)):
        if a.get(key) != b.get(key):
            out.append(f"{kind} preprocessing {key}: run has {a.get(key)!r}, loaded {b.get(key)!r}")
    for key in INFORMATIONAL_PREPROCESSING:
        if want.preprocessing.get(key) != loaded.preprocessing.get(key):
            logger.warning("%s preprocessing %s differs (run: %r, here: %r); the tensors are the same, going on",
                           kind, key, want.preprocessing.get(key), loaded.preprocessing.get(key))
    return out


def _canonical(d: dict[str, Any]) -> dict[str, Any]:
    """JSON round trip: tuples and lists, ints and floats compare as the cache stores them."""
    return json.loads(json.dumps(d, sort_keys=True, default=str))


class _AbsentVideo:
    """Stands in for the video backbone of an audio-only run: the head never reads video,
    so frames are shrunk to nothing and their features are zeros."""

    def __init__(self, dim: int) -> None:
        self.dim = dim

    @staticmethod
    def transform(image: Image.Image) -> torch.Tensor:
        return torch.zeros(3, 1, 1)

    def embed(self, images: torch.Tensor) -> torch.Tensor:
        return torch.zeros(images.shape[0], self.dim)


class _AbsentAudio:
    """Stands in for the audio backbone of a video-only run (features are zeros)."""

    def __init__(self, dim: int) -> None:
        self.dim = dim

    def embed(self, clips: Sequence[tuple[np.ndarray, np.ndarray]]) -> list[np.ndarray]:
        return [np.zeros((len(bounds), self.dim), np.float32) for _, bounds in clips]


def _load_checked(kind: str, expected: dict[str, Any], override: str | None, device: str, precision: str,
                  ) -> VideoBackbone | AudioBackbone:
    name = override or expected["name"]
    load = load_video_backbone if kind == "video" else load_audio_backbone
    flag = f"--{kind}-model"
    try:
        backbone = load(name, device=device, precision=precision)
    except Exception as exc:
        raise BackboneMismatch(
            f"cannot load the {kind} backbone {name!r} that this run's features came from ({exc}). "
            f"Pass {flag} PATH to a local copy of the same weights (sha256 {expected['checksum'][:12]}…)."
        ) from exc
    diffs = backbone_differences(kind, expected, backbone)
    if diffs:
        raise BackboneMismatch(
            f"the {kind} backbone {name!r} loaded here is not the one this run was trained on: "
            + "; ".join(diffs) + f". Pass {flag} PATH to the weights the run's cache was extracted with "
            f"(recorded name {expected['name']!r}), or retrain the head on a cache of these backbones."
        )
    return backbone


# ------------------------------------------------------------------------------ predictor


class Predictor:
    """A run's head with the backbones that reproduce its features, ready for raw video."""

    def __init__(self, model: AnomalyModel, class_names: Sequence[str], steps: int, feature_dtype: str,
                 video: VideoBackbone | _AbsentVideo, audio: AudioBackbone | _AbsentAudio, device: str = "cpu",
                 precision: str = "fp32") -> None:
        self.model = model.eval().to(device)
        self.class_names = tuple(class_names)
        self.steps = int(steps)
        self.feature_dtype = np.dtype(feature_dtype)
        self.video, self.audio = video, audio
        self.extractor = FeatureExtractor(video, audio, self.steps)  # type: ignore[arg-type]
        self.device, self.precision = device, precision
        self.normal = self.class_names.index(NORMAL) if NORMAL in self.class_names else None
        if self.normal is None:
            logger.warning("this run has no class named %r: no anomaly score, classes only", NORMAL)

    # -- the head
    @torch.inference_mode()
    def score_records(self, records: Sequence[Any]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Clip probabilities ``[B, C]``, step probabilities ``[B, T, C]`` and step mask
        ``[B, T]`` of ``ok`` records. Features go through the cache's dtype first, so the
        head reads exactly what it would have read from the cache."""
        t = self.steps

        def feats(name: str, dim: int) -> torch.Tensor:
            rows = [getattr(r, name) if getattr(r, name) is not None else np.zeros((t, dim), np.float32)
                    for r in records]
            x = np.stack(rows).astype(self.feature_dtype).astype(np.float32)
            return torch.from_numpy(x)

        vm = torch.from_numpy(np.stack([np.asarray(r.video_mask, bool) for r in records]))
        am = torch.from_numpy(np.stack([np.asarray(r.audio_mask, bool) for r in records]))
        v = feats("video", self.video.dim) * vm.unsqueeze(-1)
        a = feats("audio", self.audio.dim) * am.unsqueeze(-1)
        clips = Clips(v, a, vm, am, torch.zeros(len(records), dtype=torch.long))
        clips = Clips(*(x.to(self.device) for x in (clips.video, clips.audio, clips.video_mask, clips.audio_mask,
                                                     clips.label)))
        with autocast_context(self.device, self.precision):
            out = self.model(clips)
        clip_p = torch.softmax(out.clip_logits.float(), -1)
        step_p = torch.softmax(out.step_logits.float(), -1) * out.step_mask.unsqueeze(-1)
        return clip_p.cpu().numpy(), step_p.cpu().numpy(), out.step_mask.cpu().numpy()

    def anomaly(self, probs: np.ndarray) -> np.ndarray | None:
        return None if self.normal is None else 1.0 - probs[..., self.normal]

    def score_decoded(self, decoded: Sequence[Decoded]) -> list[tuple[Any, np.ndarray | None, np.ndarray | None,
                                                                        np.ndarray | None]]:
        """Per decoded item: (record, clip probs, step scores, step mask); probs None on error."""
        records = self.extractor.records(decoded)
        ok = [i for i, r in enumerate(records) if r.status == "ok"]
        out: list[Any] = [(r, None, None, None) for r in records]
        if ok:
            clip_p, step_p, mask = self.score_records([records[i] for i in ok])
            step_s = self.anomaly(step_p)
            for j, i in enumerate(ok):
                s = np.full(self.steps, np.nan) if step_s is None else np.where(mask[j], step_s[j], np.nan)
                out[i] = (records[i], clip_p[j], s, mask[j])
        return out

    def _window_result(self, start: float, end: float, step_times: np.ndarray, scored: tuple, error: str | None,
                       thumbnail: Image.Image | None) -> WindowResult:
        record, probs, step_scores, _ = scored
        if probs is None:
            return WindowResult(start, end, step_times=step_times, error=error or record.error,
                                step_scores=np.full(len(step_times), np.nan), thumbnail=thumbnail)
        score = self.anomaly(probs)
        return WindowResult(start, end, self.class_names[int(np.argmax(probs))], probs,
                            None if score is None else float(score), step_times, step_scores, thumbnail=thumbnail)

    # -- files
    def predict(self, path: str | Path, config: PredictConfig = PredictConfig()) -> VideoPrediction:
        """One file; problems with the file become ``error``, never an exception."""
        t0 = time.perf_counter()
        try:
            pred = self._predict_windows(path, config) if config.window else self._predict_clip(path, config)
        except (DecodeError, OSError, ValueError, RuntimeError) as exc:
            message = str(exc) or type(exc).__name__
            message = message if str(path) in message else f"{path}: {message}"
            logger.warning("%s", message)
            pred = VideoPrediction(str(path), self.class_names, error=message)
        pred.seconds = time.perf_counter() - t0
        return pred

    def predict_many(self, paths: Iterable[str | Path], config: PredictConfig = PredictConfig(),
                     ) -> Iterator[VideoPrediction]:
        for p in paths:
            yield self.predict(p, config)

    def _transform(self, thumbnails: bool):
        base = self.video.transform
        if not thumbnails:
            return base
        return lambda image: (base(image), thumbnail(image))

    def _predict_clip(self, path: str | Path, config: PredictConfig) -> VideoPrediction:
        clip = decode_clip(path, self.steps, sample_rate=SAMPLE_RATE, frame_transform=self._transform(config.thumbnails))
        thumbs: list[Image.Image] = []
        if config.thumbnails and clip.frames is not None:
            clip.frames, thumbs = (list(x) for x in zip(*clip.frames))
        scored = self.score_decoded([Decoded(str(path), clip=clip)])[0]
        if scored[1] is None:
            raise DecodeError(scored[0].error)
        w = self._window_result(0.0, clip.duration, clip.step_times, scored, None, None)
        if clip.duration > 120:
            logger.warning("%s is %.0f s long: as one clip each of its %d steps spans %.0f s; use --window for a "
                           "timeline at the scale of the training clips", path, clip.duration, self.steps,
                           clip.duration / self.steps)
        pred = VideoPrediction(str(path), self.class_names, clip.duration, w.label, w.probs,
                               np.asarray(clip.step_times), w.step_scores, [w], mode="clip")
        pred.segments = self._step_segments(pred, scored)
        pred.thumbnails = list(zip(clip.step_times.tolist(), thumbs))
        return pred

    def _predict_windows(self, path: str | Path, config: PredictConfig) -> VideoPrediction:
        hop = config.effective_hop
        pending: list[DecodedWindow] = []
        results: list[WindowResult] = []

        def flush() -> None:
            good = [w for w in pending if w.clip is not None]
            scored = iter(self.score_decoded([Decoded(f"{path}@{w.start:.3f}", clip=w.clip) for w in good]))
            for w in pending:
                s = next(scored) if w.clip is not None else (None, None, None, None)
                results.append(self._window_result(w.start, w.end, w.step_times, s, w.error, w.thumbnail))
            pending.clear()

        def on_window(w: DecodedWindow) -> None:
            pending.append(w)
            if len(pending) >= config.batch_size:
                flush()

        info = decode_windows(path, self.steps, config.window, hop, on_window, sample_rate=SAMPLE_RATE,
                              frame_transform=self.video.transform, thumb_height=THUMB_HEIGHT if config.thumbnails
                              else None)
        flush()
        good = [w for w in results if w.probs is not None]
        if not good:
            raise DecodeError(f"{path}: no window could be decoded: {results[0].error if results else 'no windows'}")
        times, scores = merged_timeline(results, info.duration, self.steps, config.window)
        top = max(good, key=lambda w: (w.score if w.score is not None else float(np.max(w.probs))))
        pred = VideoPrediction(str(path), self.class_names, info.duration, top.label, top.probs, times, scores,
                               results, mode="window", window=config.window, hop=hop)
        pred.segments = window_segments(results, info.duration, self.class_names[self.normal]
                                        if self.normal is not None else None)
        pred.thumbnails = [((w.start + w.end) / 2, w.thumbnail) for w in results if w.thumbnail is not None]
        return pred

    def _step_segments(self, pred: VideoPrediction, scored: tuple) -> list[Segment]:
        """Whole-video mode: runs of steps whose anomaly score exceeds 0.5, labelled with the
        clip's class (the head classifies the clip; the steps say where)."""
        if self.normal is None or pred.label == self.class_names[self.normal]:
            return []
        bounds = np.linspace(0.0, pred.duration or 0.0, self.steps + 1)
        hot = np.nan_to_num(pred.scores, nan=0.0) > 0.5
        return _runs(hot, bounds, pred.scores, pred.label)


def thumbnail(image: Image.Image, height: int = THUMB_HEIGHT) -> Image.Image:
    """A small copy of a frame for the plots."""
    return window_thumbnail(image, height)


def _runs(hot: np.ndarray, edges: np.ndarray, scores: np.ndarray, label: str | list[str]) -> list[Segment]:
    out: list[Segment] = []
    labels = [label] * len(hot) if isinstance(label, str) else label
    i = 0
    while i < len(hot):
        if not hot[i]:
            i += 1
            continue
        j = i
        while j + 1 < len(hot) and hot[j + 1] and labels[j + 1] == labels[i]:
            j += 1
        peak = np.nanmax(scores[i:j + 1]) if not np.all(np.isnan(scores[i:j + 1])) else None
        out.append(Segment(float(edges[i]), float(edges[j + 1]), labels[i], None if peak is None else float(peak)))
        i = j + 1
    return out


def window_cores(windows: Sequence[WindowResult], duration: float) -> np.ndarray:
    """Edges ``[K + 1]`` that give each window the stretch of video nearest its centre: the
    timeline is partitioned among overlapping windows, so shading a window's class never
    claims more than its share of the video."""
    centres = np.array([(w.start + w.end) / 2 for w in windows])
    return np.concatenate([[0.0], (centres[:-1] + centres[1:]) / 2, [duration]])


def window_segments(windows: Sequence[WindowResult], duration: float, normal: str | None) -> list[Segment]:
    """Consecutive windows predicted as the same non-normal class, over their core stretches."""
    if normal is None or not windows:
        return []
    edges = window_cores(windows, duration)
    labels = [w.label or "" for w in windows]
    hot = np.array([w.label is not None and w.label != normal for w in windows])
    scores = np.array([np.nan if w.score is None else w.score for w in windows])
    return _runs(hot, edges, scores, labels)


def merged_timeline(windows: Sequence[WindowResult], duration: float, steps: int, window: float,
                    ) -> tuple[np.ndarray, np.ndarray]:
    """One anomaly-score curve over the whole video from overlapping windows.

    A grid of points one step apart (``window / steps``), at step centres from time 0; each
    point averages the score of the step that covers it in every window that covers it
    (a window's step scores are piecewise constant over its steps). Windows that failed
    leave their stretch to the others, or NaN where none covers it."""
    step = window / steps if duration > window else duration / steps
    n = max(1, int(math.ceil(duration / step - 1e-9)))
    grid = (np.arange(n) + 0.5) * step
    grid = grid[grid < duration] if n > 1 else np.array([duration / 2])
    total = np.zeros(len(grid))
    count = np.zeros(len(grid))
    for w in windows:
        if w.probs is None or w.step_scores.size == 0:
            continue
        inside = (grid >= w.start) & (grid < w.end)
        idx = np.clip(((grid[inside] - w.start) / (w.end - w.start) * len(w.step_scores)).astype(int), 0,
                      len(w.step_scores) - 1)
        vals = w.step_scores[idx]
        ok = ~np.isnan(vals)
        where = np.flatnonzero(inside)[ok]
        total[where] += vals[ok]
        count[where] += 1
    with np.errstate(invalid="ignore"):
        return grid, np.where(count > 0, total / np.maximum(count, 1), np.nan)


# ------------------------------------------------------------------------------ loading


def load_predictor(rundir: str | Path, config: PredictConfig = PredictConfig()) -> Predictor:
    """The run's head and the backbones of the cache it was trained on, checked.

    Raises ``FileNotFoundError`` for a path that is not a finished run, and
    ``BackboneMismatch`` when the backbones cannot be loaded or differ from the run's."""
    rundir = Path(rundir)
    model, doc = load_run(rundir)
    identity = doc.get("cache_identity") or {}
    missing = [k for k in ("video_backbone", "audio_backbone", "steps") if k not in identity]
    if missing:
        raise BackboneMismatch(f"{rundir}/config.json records no {', '.join(missing)} for its cache: it cannot "
                               "say which backbones made its features. Retrain it with this version of `train`.")
    if int(identity.get("sample_rate", SAMPLE_RATE)) != SAMPLE_RATE:
        raise BackboneMismatch(f"the run's cache has audio at {identity['sample_rate']} Hz; this pipeline decodes at "
                               f"{SAMPLE_RATE} Hz. Re-extract the cache and retrain.")
    device = resolve_device(config.device)
    if device.startswith("cpu"):
        torch.set_flush_denormal(True)
    streams = set(doc.get("streams") or model.streams)
    needs_video = bool(streams & {"fused", "video"})
    needs_audio = bool(streams & {"fused", "audio"})
    video = _load_checked("video", identity["video_backbone"], config.video_model, device, config.precision) \
        if needs_video else _AbsentVideo(int(identity["video_backbone"]["dim"]))
    audio = _load_checked("audio", identity["audio_backbone"], config.audio_model, device, config.precision) \
        if needs_audio else _AbsentAudio(int(identity["audio_backbone"]["dim"]))
    logger.info("run %s: %s head on %s, %d steps, classes %s", rundir, doc["train"]["head"],
                doc["train"]["modality"], identity["steps"], ", ".join(doc["class_names"]))
    return Predictor(model, doc["class_names"], int(identity["steps"]), str(identity.get("feature_dtype", "float32")),
                     video, audio, device=device, precision=config.precision)


# ------------------------------------------------------------------------------ text


def format_table(preds: Sequence[VideoPrediction]) -> str:
    """Human-readable summary: one line per video, then its anomalous segments."""
    if not preds:
        return "no videos"
    name_w = min(max(len(Path(p.video).name) for p in preds), 48)
    head = f"{'video':<{name_w}}  {'class':<14} {'p':>5}  {'anomaly':>7}  {'peak at':>9}  {'duration':>8}"
    lines = [head, "-" * len(head)]
    for p in preds:
        name = Path(p.video).name[:name_w]
        if p.error:
            lines.append(f"{name:<{name_w}}  ERROR: {p.error}")
            continue
        conf = float(np.max(p.probs)) if p.probs is not None else float("nan")
        peak = p.peak
        score = "n/a" if peak is None else f"{peak[1]:.2f}"
        at = "" if peak is None else f"{peak[0]:.1f} s"
        lines.append(f"{name:<{name_w}}  {p.label:<14} {conf:>5.2f}  {score:>7}  {at:>9}  {p.duration:>6.1f} s")
        for s in p.segments:
            lines.append(f"{'':<{name_w}}    {s.start:7.1f}-{s.end:.1f} s  {s.label}"
                         + (f" (peak {s.peak:.2f})" if s.peak is not None else ""))
        failed = [w for w in p.windows if w.error]
        if failed:
            lines.append(f"{'':<{name_w}}    {len(failed)} window(s) failed, first at {failed[0].start:.1f} s: "
                         f"{failed[0].error}")
    return "\n".join(lines)


def to_json_lines(preds: Iterable[VideoPrediction]) -> Iterator[str]:
    """One JSON object per video (JSON Lines)."""
    for p in preds:
        yield json.dumps(p.to_json())
