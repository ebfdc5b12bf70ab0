"""A trained head with the backbones that reproduce its features, applied to raw files.

Two modes:

* whole video (default): the file is one clip of ``T`` steps, exactly as extraction cut
  the training clips (``decode_clip`` + ``FeatureExtractor``; features rounded to the
  cache's dtype), so a training clip gets the prediction its cached features give. A run
  trained on a time-grid cache (``--step-seconds S``) scores the whole file at its grid,
  at full length: ``ceil(d / S)`` steps, whose scores are the timeline;
* ``window``/``hop``: windows of ``window`` seconds every ``hop`` seconds, each cut into
  ``T`` steps as if it were a clip (``extract.windows``: one pass over the file, bounded
  memory, any length). Per window: a class and ``T`` step scores; over the video: one
  merged score timeline and the anomalous segments (``temporal.timeline``). Fixed-step
  runs only: a grid run's whole-file timeline already has the grid's resolution, so
  windows are refused for it (``load_predictor``, docs/predict.md).

The anomaly score of a step is ``1 - p(normal)`` of its step probabilities. A file that
cannot be used (an expected failure: ``AvarError``) gives an error entry; anything else is
a bug and propagates.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Protocol

import numpy as np
import torch
from PIL import Image

from cache_schema import SAMPLE_RATE, AvarError, ClipRecord, InvalidInput, StepLayout
from extract.backbones import autocast_context
from extract.decode import DecodeError, decode_clip
from extract.hw_decode import DECODE_CHOICES, SOFTWARE, HardwareDecoder, on_device, resolve_decode
from extract.pipeline import Decoded, FeatureExtractor, worker_transform
from extract.windows import DecodedWindow, decode_windows, thumbnail
from temporal.data import Clips
from temporal.metrics import NORMAL, anomaly_score
from temporal.model import AnomalyModel
from temporal.timeline import clip_segments, merged_timeline, window_segments

from .results import ScoredClip, VideoPrediction, WindowResult

logger = logging.getLogger(__name__)

THUMB_HEIGHT = 72

HeadProbs = tuple[np.ndarray, np.ndarray, np.ndarray]   # clip probs [B, C], step probs [B, T, C], step mask [B, T]
Evidence = dict[str, HeadProbs]                         # modality kept ("audio", "video") -> the head without the other


@dataclass(frozen=True)
class PredictConfig:
    """How to predict. ``video_model``/``audio_model`` point at the run's weights when its
    recorded name does not resolve here (a local copy of the same checkpoint)."""

    video_model: str | None = None
    audio_model: str | None = None
    device: str = "auto"
    precision: str = "auto"         # fp32, or bf16 where the device computes it natively
    runtime: str = "torch"          # what runs the frozen backbones (extract.backbones.use_runtime)
    window: float | None = None     # seconds; None = the whole video is one clip
    hop: float | None = None        # seconds between window starts; default window / 2
    batch_size: int = 8             # windows (or videos) per backbone batch
    thumbnails: bool = False        # keep small frames for plots
    decode: str = SOFTWARE          # where video is decoded: sw, cuda, vaapi, qsv, auto (extract.hw_decode)

    def __post_init__(self) -> None:
        if self.hop is not None and self.window is None:
            raise InvalidInput("--hop needs --window")
        for name in ("window", "hop"):
            v = getattr(self, name)
            if v is not None and not (math.isfinite(v) and v > 0):
                raise InvalidInput(f"--{name} must be a positive number of seconds, got {v}")
        if self.batch_size < 1:
            raise InvalidInput("batch_size must be at least 1")
        if self.decode not in DECODE_CHOICES:
            raise InvalidInput(f"--decode {self.decode!r}: choose one of {', '.join(DECODE_CHOICES)}")

    @property
    def effective_hop(self) -> float | None:
        if self.window is None:
            return None
        return self.hop if self.hop is not None else self.window / 2


def _score(x: np.ndarray | float | None) -> float | None:
    return None if x is None else float(x)


class VideoFeatures(Protocol):
    """What the predictor needs of a video backbone (a real one, or a stand-in)."""

    dim: int
    transform: Callable[[Image.Image], Any]

    def embed(self, images: torch.Tensor) -> torch.Tensor: ...


class AudioFeatures(Protocol):
    dim: int

    def embed(self, clips: Sequence[tuple[np.ndarray, np.ndarray]],
              origins: Sequence[int] | None = None) -> list[np.ndarray]: ...


class Predictor:
    """A run's head with the backbones that reproduce its features, ready for raw video.

    ``feature_extractor`` is stage 1's ``FeatureExtractor`` over the same backbones, so a
    file's features are computed exactly as extraction computed the cache's. ``steps`` is
    the run's ``T``, or its cache's ``StepLayout`` (a time grid: ``steps`` is then 0 and
    every file gets its own number of steps)."""

    def __init__(self, model: AnomalyModel, class_names: Sequence[str], steps: int | StepLayout, feature_dtype: str,
                 video: VideoFeatures, audio: AudioFeatures, device: str = "cpu", precision: str = "fp32",
                 normal: str | None = NORMAL) -> None:
        self.model = model.eval().to(device)
        self.class_names = tuple(class_names)
        self.layout = steps if isinstance(steps, StepLayout) else StepLayout(steps=int(steps))
        self.steps = self.layout.steps
        self.feature_dtype = np.dtype(feature_dtype)
        self.video_backbone, self.audio_backbone = video, audio
        self.feature_extractor = FeatureExtractor(video, audio, self.layout)  # type: ignore[arg-type]
        self.device, self.precision = device, precision
        # the run's normal class (its --normal-class, else "normal"): the anomaly score is 1 - p(it)
        self.normal_class = normal if normal in self.class_names else None
        self.normal = self.class_names.index(normal) if self.normal_class is not None else None
        if self.normal is None:
            logger.warning("this run has no normal class (%r): no anomaly score, classes only", normal)
        self._decoders: dict[str, HardwareDecoder | None] = {}

    def decoder(self, config: PredictConfig) -> HardwareDecoder | None:
        """The hardware decoder ``config.decode`` means here (resolved once per choice;
        ``InvalidInput`` where an explicit device does not open)."""
        if config.decode not in self._decoders:
            self._decoders[config.decode] = on_device(resolve_decode(config.decode), self.device)
        return self._decoders[config.decode]

    # -- the head
    @torch.inference_mode()
    def score_records(self, records: Sequence[ClipRecord]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Clip probabilities ``[B, C]``, step probabilities ``[B, T, C]`` and step mask
        ``[B, T]`` of ``ok`` records. Features go through the cache's dtype first, so the
        head reads exactly what it would have read from the cache. Records of different
        step counts (a time grid) are padded to the longest of the batch, the padding
        masked out (``T`` is that longest; a record's own steps come first)."""
        return self._head(*self._inputs(records))

    @torch.inference_mode()
    def score_with_evidence(self, records: Sequence[ClipRecord]) -> tuple[HeadProbs, Evidence]:
        """``score_records`` and, for a run that reads both modalities, the same with one
        modality masked out: per modality *kept* (``"audio"``: the video masked,
        ``"video"``: the audio masked), exactly as a clip without the other stream is
        presented to the head (features zero, mask False). ``{}`` for a single-modality
        run. One extra head pass per modality, the backbones' features reused. These are
        counterfactual scores, not shares of the fused score (docs/predict.md, "Heard,
        seen or both")."""
        v, a, vm, am = self._inputs(records)
        if not self.reads_both:
            return self._head(v, a, vm, am), {}
        # one head call over the batch three times (as is, video masked, audio masked): one
        # pass of three times the rows costs less than three passes
        zv, za, zvm, zam = torch.zeros_like(v), torch.zeros_like(a), torch.zeros_like(vm), torch.zeros_like(am)
        clip_p, step_p, mask = self._head(torch.cat([v, zv, v]), torch.cat([a, a, za]), torch.cat([vm, zvm, vm]),
                                          torch.cat([am, am, zam]))
        b = len(v)
        parts = [(clip_p[i * b:(i + 1) * b], step_p[i * b:(i + 1) * b], mask[i * b:(i + 1) * b]) for i in range(3)]
        return parts[0], {"audio": parts[1], "video": parts[2]}

    @property
    def reads_both(self) -> bool:
        """Whether the run's head reads video and audio (a fused run, early or late):
        only then does masking one of them say anything."""
        streams = set(self.model.streams)
        return "fused" in streams or streams == {"video", "audio"}

    def _inputs(self, records: Sequence[ClipRecord]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        lengths = [len(r.video_mask) for r in records]
        t = max(lengths)

        def pad(x: np.ndarray, n: int) -> np.ndarray:
            return x if len(x) == t else np.concatenate([x, np.zeros((t - n, *x.shape[1:]), x.dtype)])

        def feats(name: str, dim: int) -> torch.Tensor:
            rows = [pad(getattr(r, name), n) if getattr(r, name) is not None else np.zeros((t, dim), np.float32)
                    for r, n in zip(records, lengths)]
            x = np.stack(rows).astype(self.feature_dtype).astype(np.float32)
            return torch.from_numpy(x)

        vm = torch.from_numpy(np.stack([pad(np.asarray(r.video_mask, bool), n) for r, n in zip(records, lengths)]))
        am = torch.from_numpy(np.stack([pad(np.asarray(r.audio_mask, bool), n) for r, n in zip(records, lengths)]))
        v = feats("video", self.video_backbone.dim) * vm.unsqueeze(-1)
        a = feats("audio", self.audio_backbone.dim) * am.unsqueeze(-1)
        return v, a, vm, am

    def _head(self, v: torch.Tensor, a: torch.Tensor, vm: torch.Tensor, am: torch.Tensor) -> HeadProbs:
        clips = Clips(*(x.to(self.device) for x in (v, a, vm, am, torch.zeros(len(v), dtype=torch.long))))
        with autocast_context(self.device, self.precision):
            out = self.model(clips)
        clip_p = torch.softmax(out.clip_logits.float(), -1)
        step_p = torch.softmax(out.step_logits.float(), -1) * out.step_mask.unsqueeze(-1)
        return clip_p.cpu().numpy(), step_p.cpu().numpy(), out.step_mask.cpu().numpy()

    def anomaly(self, probs: np.ndarray) -> np.ndarray | None:
        """``1 - p(normal)`` over the last axis; None when the run has no normal class."""
        return anomaly_score(probs, self.class_names, self.normal_class)

    def score(self, decoded: Sequence[Decoded], evidence: bool = False) -> list[ScoredClip]:
        """Backbones and head over a batch of decoded clips, one ``ScoredClip`` each;
        ``evidence``: with each modality's evidence (``score_with_evidence``; what
        ``predict`` gives), else the head alone (what the benchmarks time)."""
        records = self.feature_extractor.records(decoded, isolate_failures=False)
        ok = [i for i, r in enumerate(records) if r.status == "ok"]
        out = [ScoredClip(r) for r in records]
        if ok:
            batch = [records[i] for i in ok]
            (clip_p, step_p, mask), masked = self.score_with_evidence(batch) if evidence else \
                (self.score_records(batch), {})

            def steps(probs: np.ndarray, m: np.ndarray, j: int, n: int) -> np.ndarray:
                s = self.anomaly(probs[j, :n])
                return np.full(n, np.nan) if s is None else np.where(m[j, :n], s, np.nan)

            for j, i in enumerate(ok):
                n = len(records[i].video_mask)  # this clip's steps (the batch may be padded past them)
                # a modality absent from the whole clip has no evidence (the head read nothing)
                ev = {k: (_score(self.anomaly(e_clip[j])) if e_mask[j, :n].any() else None,
                          steps(e_step, e_mask, j, n)) for k, (e_clip, e_step, e_mask) in masked.items()}
                out[i] = ScoredClip(records[i], clip_p[j], steps(step_p, mask, j, n), mask[j, :n], ev)
        return out

    def _window_result(self, start: float, end: float, step_times: np.ndarray, scored: ScoredClip | None,
                       error: str | None, thumb: Image.Image | None) -> WindowResult:
        if scored is None or not scored.ok:
            return WindowResult(start, end, step_times=step_times, error=error or (scored.error if scored else None),
                                step_scores=np.full(len(step_times), np.nan), thumbnail=thumb)
        score = self.anomaly(scored.probs)
        return WindowResult(start, end, self.class_names[int(np.argmax(scored.probs))], scored.probs,
                            None if score is None else float(score), step_times, scored.step_scores, thumbnail=thumb,
                            evidence={k: clip for k, (clip, _) in scored.evidence.items()} or None,
                            step_evidence={k: steps for k, (_, steps) in scored.evidence.items()} or None)

    # -- files
    def predict(self, path: str | Path, config: PredictConfig = PredictConfig()) -> VideoPrediction:
        """One file; an expected failure of that file (``AvarError``) becomes ``error``."""
        t0 = time.perf_counter()
        try:
            pred = self._predict_windows(path, config) if config.window else self._predict_clip(path, config)
        except AvarError as exc:
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

    def _transform(self, thumbnails: bool) -> Callable[[Image.Image], Any]:
        # a whole file's frames are held until it is embedded: as uint8 crops where the
        # backbone's transform splits (a grid run of a long file has thousands of them)
        base = worker_transform(self.video_backbone)  # type: ignore[arg-type]
        if not thumbnails:
            return base
        return lambda image: (base(image), thumbnail(image, THUMB_HEIGHT))

    def _predict_clip(self, path: str | Path, config: PredictConfig) -> VideoPrediction:
        clip = decode_clip(path, self.layout, sample_rate=SAMPLE_RATE,
                           frame_transform=self._transform(config.thumbnails), decoder=self.decoder(config))
        thumbs: list[Image.Image] = []
        if config.thumbnails and clip.frames is not None:
            clip.frames, thumbs = (list(x) for x in zip(*clip.frames))
            thumbs = thumbs[clip.frames_per_step // 2::clip.frames_per_step]  # one per step
        scored = self.score([Decoded(str(path), clip=clip)], evidence=True)[0]
        if not scored.ok:
            raise DecodeError(scored.error)
        w = self._window_result(0.0, clip.duration, clip.step_times, scored, None, None)
        if clip.duration > 120 and not self.layout.grid:
            logger.warning("%s is %.0f s long: as one clip each of its %d steps spans %.0f s; use --window for a "
                           "timeline at the scale of the training clips", path, clip.duration, self.steps,
                           clip.duration / self.steps)
        pred = VideoPrediction(str(path), self.class_names, clip.duration, w.label, w.probs,
                               np.asarray(clip.step_times), w.step_scores, [w], mode="clip",
                               evidence=w.step_evidence)
        if self.normal is not None and pred.label != self.class_names[self.normal]:
            pred.segments = clip_segments(pred.duration or 0.0, pred.scores, pred.label,
                                          step_bounds=clip.step_bounds if self.layout.grid else None)
        pred.thumbnails = list(zip(clip.step_times.tolist(), thumbs))
        return pred

    def _predict_windows(self, path: str | Path, config: PredictConfig) -> VideoPrediction:
        if self.layout.grid:
            raise InvalidInput(f"{path}: this run's steps lie on a time grid ({self.layout.describe()}); its "
                               "whole-file timeline is already at that grid: predict without --window/--hop")
        hop = config.effective_hop
        pending: list[DecodedWindow] = []
        results: list[WindowResult] = []

        def flush() -> None:
            good = [w for w in pending if w.clip is not None]
            scored = iter(self.score([Decoded(f"{path}@{w.start:.3f}", clip=w.clip) for w in good], evidence=True))
            for w in pending:
                s = next(scored) if w.clip is not None else None
                results.append(self._window_result(w.start, w.end, w.step_times, s, w.error, w.thumbnail))
            pending.clear()

        def on_window(w: DecodedWindow) -> None:
            pending.append(w)
            if len(pending) >= config.batch_size:
                flush()

        info = decode_windows(path, self.steps, config.window, hop, on_window, sample_rate=SAMPLE_RATE,
                              frame_transform=self.video_backbone.transform,
                              thumb_height=THUMB_HEIGHT if config.thumbnails else None,
                              decoder=self.decoder(config))
        flush()
        good = [w for w in results if w.probs is not None]
        if not good:
            raise DecodeError(f"{path}: no window could be decoded: {results[0].error if results else 'no windows'}")
        starts = np.array([w.start for w in results])
        ends = np.array([w.end for w in results])
        times, scores = merged_timeline(starts, ends, [w.step_scores if w.probs is not None else None
                                                       for w in results], info.duration, self.steps, config.window)
        top = max(good, key=lambda w: (w.score if w.score is not None else float(np.max(w.probs))))
        evidence = None
        if self.reads_both:   # each modality's masked timeline, merged as the scores are
            evidence = {k: merged_timeline(starts, ends, [w.step_evidence[k] if w.probs is not None and w.step_evidence
                                                          else None for w in results],
                                           info.duration, self.steps, config.window)[1] for k in ("audio", "video")}
        pred = VideoPrediction(str(path), self.class_names, info.duration, top.label, top.probs, times, scores,
                               results, mode="window", window=config.window, hop=hop, evidence=evidence)
        pred.segments = window_segments(starts, ends, [w.label for w in results],
                                        np.array([np.nan if w.score is None else w.score for w in results]),
                                        info.duration, self.class_names[self.normal] if self.normal is not None
                                        else None)
        pred.thumbnails = [((w.start + w.end) / 2, w.thumbnail) for w in results if w.thumbnail is not None]
        return pred


__all__ = ["PredictConfig", "Predictor", "THUMB_HEIGHT"]
