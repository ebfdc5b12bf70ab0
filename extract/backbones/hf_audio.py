"""Frozen transformers speech encoder (wav2vec2-base by default): per-step audio features.

Two windowings (``extract.audio_windows.AudioWindowing``). "clip": a clip's audio is cut
into consecutive windows of at most `window_s` (cost linear in duration), and a step's
feature is the mean of last_hidden_state over the frames whose time falls in the step, so
it has heard its whole window, future included. "step" (time-grid caches and live mode):
each step gets its own causal window, the step plus up to `context_s` seconds before its
end, and its feature is the mean of that window's frames in the step, so it depends on no
audio after the step (cost about max(context_s, S) / S times the clip's audio). Either way
each window is normalised exactly as Wav2Vec2FeatureExtractor normalises one input.

Batching must never change features. Models whose conv encoder uses GroupNorm
(feat_extract_norm == "group", e.g. wav2vec2-base) take no attention mask and normalise
over time, so zero padding changes every frame: their windows are only batched with windows
of exactly the same length (all full windows share one length, so long clips still batch
well). Models with feat_extract_norm == "layer" (their feature extractor returns an
attention mask) are padded and given the mask.

The cache records these rules as ``cache_schema.AudioPreprocessing`` fields; the audio
rate is the contract's ``cache_schema.SAMPLE_RATE``.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import transformers
from torch import nn
from transformers import (
    AutoConfig,
    AutoFeatureExtractor,
    AutoModel,
    Wav2Vec2Config,
    Wav2Vec2FeatureExtractor,
    Wav2Vec2Model,
)

from cache_schema import SAMPLE_RATE, AudioPreprocessing, InvalidInput, Normalization
from cache_schema.preprocessing import (
    BATCHING_EQUAL_LENGTH,
    BATCHING_PADDED_WITH_MASK,
    NORMALIZE_NONE,
    NORMALIZE_ZERO_MEAN_UNIT_VAR,
    WINDOWS_CAUSAL_STEP,
    WINDOWS_CONSECUTIVE,
)

from ..audio_windows import (
    NORM_EPS,
    WINDOWING_CLIP,
    WINDOWING_STEP,
    AudioWindowing,
    FrameGeometry,
    causal_step_windows,
    normalize_like_wav2vec2,
    pad_to_length,
    plan_windows,
    pool_frames_per_step,
)
from .frozen import (
    BackboneUnavailable,
    DescribedBackbone,
    autocast_context,
    resolve_precision,
    freeze,
    seeded_rng,
    state_dict_checksum,
)

logger = logging.getLogger(__name__)

DEFAULT_AUDIO_MODEL = "facebook/wav2vec2-base"
DEFAULT_WINDOW_S = 30.0

AudioClip = tuple[np.ndarray, np.ndarray]
"""(mono float32 16 kHz audio, step bounds [T, 2] in seconds of clip time). The audio is
the whole clip, or (causal step windows) any part of it that holds every step's window:
``embed``'s ``origins`` say which clip sample its first sample is."""


@dataclass
class _Window:
    """One encoder input: ``source[lo:hi]`` (clip ``clip``'s audio array), normalised and
    padded only when its batch runs, so that a long clip's many step windows are never all
    copied at once."""

    clip: int
    start_sample: int  # clip sample of the window's first sample: where its frames lie in time
    source: np.ndarray
    lo: int
    hi: int
    length: int  # after padding to the receptive field: what decides who shares a batch
    step: int = -1  # causal step windows: the step this window serves


def tiny_wav2vec2_config() -> Wav2Vec2Config:
    """Same family and the same 7 conv strides/kernels (20 ms frames), a few thousand times cheaper."""
    return Wav2Vec2Config(
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        conv_dim=(32,) * 7,
        num_conv_pos_embeddings=16,
        num_conv_pos_embedding_groups=4,
    )


def default_feature_extractor(config: Any) -> Wav2Vec2FeatureExtractor:
    """The extractor a wav2vec2-family checkpoint ships: normalise, mask only for layer-norm encoders."""
    return Wav2Vec2FeatureExtractor(
        feature_size=1,
        sampling_rate=SAMPLE_RATE,
        padding_value=0.0,
        do_normalize=True,
        return_attention_mask=getattr(config, "feat_extract_norm", "group") == "layer",
    )


def build_random_audio_model() -> nn.Module:
    """wav2vec2-base architecture, untrained, reproducible.

    transformers' own init is kept: checked to give unit-scale, input-dependent features
    (its LayerNorms have unit scale and conv layers Kaiming init), unlike its MobileViT init.
    """
    with seeded_rng():
        return Wav2Vec2Model(Wav2Vec2Config())


def build_tiny_audio_model() -> nn.Module:
    """A 32-wide, 2-layer wav2vec2 with the real conv geometry, for quick CPU runs and tests."""
    with seeded_rng():
        return Wav2Vec2Model(tiny_wav2vec2_config())


def _unavailable_message(name: str, err: BaseException) -> str:
    return (
        f"Weights for audio model {name!r} could not be loaded ({type(err).__name__}: {err}).\n"
        "Provide them in one of these ways:\n"
        "  * on a machine with network, run once: python -c \"from transformers import AutoModel, "
        f"AutoFeatureExtractor; AutoModel.from_pretrained('{name}'); AutoFeatureExtractor.from_pretrained('{name}')\" "
        "to download them into the Hugging Face cache ($HF_HOME, default ~/.cache/huggingface), "
        "then copy that cache to this machine;\n"
        "  * pass a local directory as --audio-model (config.json + weights, as written by "
        "model.save_pretrained, plus preprocessor_config.json if it has one);\n"
        "  * or use --audio-model tiny / random for an untrained test run (no pretrained semantics)."
    )


def load_pretrained_audio_model(
    name: str, cache_dir: str | Path | None = None
) -> tuple[nn.Module, Wav2Vec2FeatureExtractor | Any]:
    """A Hugging Face model id (hub or cache) or a local save_pretrained directory."""
    path = Path(name).expanduser()
    looks_local = path.is_absolute() or name.startswith((".", "~"))
    if looks_local and not path.is_dir():
        raise BackboneUnavailable(f"Audio model directory {path} does not exist.")
    source = str(path) if path.is_dir() else name
    try:
        config = AutoConfig.from_pretrained(source, cache_dir=cache_dir)
        model = AutoModel.from_pretrained(source, config=config, cache_dir=cache_dir)
    except (OSError, ValueError) as err:
        raise BackboneUnavailable(_unavailable_message(name, err)) from err
    try:
        extractor = AutoFeatureExtractor.from_pretrained(source, cache_dir=cache_dir)
    except (OSError, ValueError):
        logger.warning("%s ships no feature extractor: using wav2vec2 defaults (normalise inputs)", name)
        extractor = default_feature_extractor(config)
    return model, extractor


class AudioBackbone(DescribedBackbone):
    """A frozen wav2vec2-family encoder with windowing, bucketing and per-step pooling."""

    def __init__(
        self,
        model: nn.Module,
        feature_extractor: Any,
        *,
        name: str,
        pretrained: bool,
        device: str = "cpu",
        precision: str = "fp32",
        window_s: float = DEFAULT_WINDOW_S,
        batch_size: int = 8,
        windowing: str = WINDOWING_CLIP,
        context_s: float | None = None,
    ) -> None:
        """``windowing`` "clip" (consecutive ``window_s`` windows) or "step" (causal step
        windows reaching ``context_s`` seconds back, default ``DEFAULT_AUDIO_CONTEXT_S``;
        ``window_s`` is then unused)."""
        config = model.config
        if not hasattr(model, "_get_feat_extract_output_lengths") or not hasattr(config, "conv_stride"):
            raise BackboneUnavailable(
                f"Audio model {name!r} ({type(model).__name__}) is not a wav2vec2-family encoder "
                "(conv feature encoder + transformer: wav2vec2, HuBERT, WavLM, data2vec-audio, ...)."
            )
        sample_rate = int(getattr(feature_extractor, "sampling_rate", SAMPLE_RATE))
        if sample_rate != SAMPLE_RATE:
            raise BackboneUnavailable(
                f"Audio model {name!r} expects {sample_rate} Hz; decode provides {SAMPLE_RATE} Hz."
            )
        if window_s <= 0:
            raise InvalidInput(f"window_s must be positive, got {window_s}")
        self.windowing = AudioWindowing(windowing, context_s)
        self.name = name
        self.pretrained = pretrained
        self.device = device
        self.precision = resolve_precision(precision, device)  # auto: what this machine runs best
        self.batch_size = int(batch_size)
        self.feature_extractor = feature_extractor
        self.model = freeze(model)
        self.checksum = state_dict_checksum(self.model)
        self.arch = str(config.model_type)
        self.dim = int(config.hidden_size)
        self.geometry = FrameGeometry.from_conv(config.conv_kernel, config.conv_stride, SAMPLE_RATE)
        self.window_samples = int(round(window_s * SAMPLE_RATE))
        if self.window_samples < self.geometry.receptive_field_samples:
            raise InvalidInput(f"window_s={window_s} is shorter than the model's receptive field")
        self.do_normalize = bool(getattr(feature_extractor, "do_normalize", True))
        self.uses_attention_mask = bool(getattr(feature_extractor, "return_attention_mask", False))
        self.preprocessing = AudioPreprocessing(
            sample_rate=SAMPLE_RATE,
            window_s=float(window_s),
            windows=WINDOWS_CAUSAL_STEP if self.windowing.mode == WINDOWING_STEP else WINDOWS_CONSECUTIVE,
            context_s=self.windowing.context_s,
            normalize=(
                Normalization(NORMALIZE_ZERO_MEAN_UNIT_VAR, eps=NORM_EPS, per="window")
                if self.do_normalize
                else Normalization(NORMALIZE_NONE)  # the feature extractor has do_normalize=False
            ),
            min_window_samples=self.geometry.receptive_field_samples,
            attention_mask=self.uses_attention_mask,
            batching=BATCHING_PADDED_WITH_MASK if self.uses_attention_mask else BATCHING_EQUAL_LENGTH,
            frame_stride_s=self.geometry.stride_s,
            library=f"transformers {transformers.__version__}",
        ).to_dict()
        self.model.to(device)

    def embed(self, clips: Sequence[AudioClip], origins: Sequence[int] | None = None) -> list[np.ndarray]:
        """Per clip: (audio, step_bounds [T, 2] s) -> features [T, D] float32.

        ``origins[i]`` is the clip sample index of clip i's ``audio[0]`` (default 0: the
        whole clip). With causal step windows the audio may be any part of the clip that
        holds every step's window (live mode passes recent audio only) and the features
        are bit-identical to those of the whole clip's audio; a window that begins before
        the audio given is a ValueError. Clip windows need the whole clip (origin 0)."""
        origins = [0] * len(clips) if origins is None else [int(o) for o in origins]
        if len(origins) != len(clips):
            raise ValueError(f"{len(origins)} origins for {len(clips)} clips")
        audios = []
        for index, (audio, _) in enumerate(clips):
            audio = np.asarray(audio, dtype=np.float32)
            if audio.ndim != 1:
                raise ValueError(f"clip {index}: expected mono audio of shape [samples], got {audio.shape}")
            audios.append(audio)
        if self.windowing.mode == WINDOWING_STEP:
            return self._embed_steps(audios, [bounds for _, bounds in clips], origins)
        if any(origins):
            raise ValueError("clip windows start at the clip's first sample: pass the whole clip's audio (origin 0)")
        return self._embed_clips(audios, [bounds for _, bounds in clips])

    def _window(self, clip: int, start_sample: int, source: np.ndarray, lo: int, hi: int, step: int = -1) -> _Window:
        hi = min(max(hi, 0), source.shape[0])
        lo = min(max(lo, 0), hi)
        return _Window(clip, start_sample, source, lo, hi, max(hi - lo, self.geometry.receptive_field_samples), step)

    def _input(self, window: _Window) -> np.ndarray:
        """The window as the encoder takes it: normalised, then padded to the receptive field."""
        piece = window.source[window.lo : window.hi]
        if self.do_normalize:
            piece = normalize_like_wav2vec2(piece)
        return pad_to_length(piece, self.geometry.receptive_field_samples)

    def _embed_clips(self, audios: list[np.ndarray], bounds: list[np.ndarray]) -> list[np.ndarray]:
        windows = [
            self._window(index, start, audio, start, stop)
            for index, audio in enumerate(audios)
            for start, stop in plan_windows(audio.shape[0], self.window_samples)
        ]
        per_clip_times: dict[int, list[np.ndarray]] = defaultdict(list)
        per_clip_frames: dict[int, list[np.ndarray]] = defaultdict(list)
        frames: list[np.ndarray | None] = [None] * len(windows)
        for i, window_frames in self._run_windows(windows):
            frames[i] = window_frames
        for window, window_frames in zip(windows, frames):
            per_clip_times[window.clip].append(self.geometry.frame_times(window.start_sample, window_frames.shape[0]))
            per_clip_frames[window.clip].append(window_frames)
        return [
            pool_frames_per_step(
                np.concatenate(per_clip_times[index]), np.concatenate(per_clip_frames[index]), clip_bounds
            )
            for index, clip_bounds in enumerate(bounds)
        ]

    def _embed_steps(self, audios: list[np.ndarray], bounds: list[np.ndarray], origins: list[int]) -> list[np.ndarray]:
        """Causal step windows: each step pooled from its own window's frames only."""
        windows: list[_Window] = []
        steps: list[np.ndarray] = []
        for index, (audio, clip_bounds, origin) in enumerate(zip(audios, bounds, origins)):
            clip_bounds = np.asarray(clip_bounds, dtype=np.float64).reshape(-1, 2)
            steps.append(clip_bounds)
            ranges = causal_step_windows(clip_bounds, float(self.windowing.context_s), SAMPLE_RATE)
            if len(ranges) and int(ranges[:, 0].min()) < origin:
                raise ValueError(
                    f"clip {index}: a step window starts at clip sample {int(ranges[:, 0].min())}, before the "
                    f"audio given (origin {origin}); keep {self.windowing.context_s:g} s before the first step"
                )
            windows += [self._window(index, int(lo), audio, int(lo) - origin, int(hi) - origin, step)
                        for step, (lo, hi) in enumerate(ranges.tolist())]
        out = [np.zeros((len(b), self.dim), dtype=np.float32) for b in steps]
        for i, frames in self._run_windows(windows):
            w = windows[i]
            times = self.geometry.frame_times(w.start_sample, frames.shape[0])
            out[w.clip][w.step] = pool_frames_per_step(times, frames, steps[w.clip][w.step : w.step + 1])[0]
        return out

    def _batches(self, windows: list[_Window]) -> list[list[int]]:
        """Window indices grouped into forward passes that cannot change any window's result."""
        if self.uses_attention_mask:
            order = sorted(range(len(windows)), key=lambda i: -windows[i].length)
            groups = [order]
        else:
            by_length: dict[int, list[int]] = defaultdict(list)
            for i, window in enumerate(windows):
                by_length[window.length].append(i)
            groups = list(by_length.values())
        return [group[s : s + self.batch_size] for group in groups for s in range(0, len(group), self.batch_size)]

    def _run_windows(self, windows: list[_Window]) -> Iterator[tuple[int, np.ndarray]]:
        """(window index, its frames [F, D]) for every window, batch by batch: only one
        batch's inputs and outputs are held at a time."""
        for batch in self._batches(windows):
            yield from zip(batch, self._run_batch([self._input(windows[i]) for i in batch]))

    @torch.inference_mode()
    def _run_batch(self, audios: list[np.ndarray]) -> list[np.ndarray]:
        lengths = [a.shape[0] for a in audios]
        longest = max(lengths)
        inputs = np.zeros((len(audios), longest), dtype=np.float32)
        for row, audio in enumerate(audios):
            inputs[row, : lengths[row]] = audio
        kwargs: dict[str, torch.Tensor] = {}
        if self.uses_attention_mask:
            mask = np.arange(longest)[None, :] < np.asarray(lengths)[:, None]
            kwargs["attention_mask"] = torch.from_numpy(mask.astype(np.int64)).to(self.device)
        with autocast_context(self.device, self.precision):
            hidden = self.model(torch.from_numpy(inputs).to(self.device), **kwargs).last_hidden_state
        hidden = hidden.float().cpu().numpy()
        n_frames = self.model._get_feat_extract_output_lengths(torch.tensor(lengths)).tolist()
        return [hidden[row, : int(n_frames[row])] for row in range(len(audios))]
