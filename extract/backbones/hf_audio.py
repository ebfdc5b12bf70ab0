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
    normalize_like_wav2vec2,
    pad_to_length,
)
from .audio_frames import AudioBackbone, AudioWindow
from .frozen import (
    BackboneUnavailable,
    autocast_context,
    seeded_rng,
)
from .runtimes.export_cache import ExportSpec

logger = logging.getLogger(__name__)

DEFAULT_AUDIO_MODEL = "facebook/wav2vec2-base"
DEFAULT_WINDOW_S = 30.0


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


class Wav2Vec2Backbone(AudioBackbone):
    """A frozen wav2vec2-family encoder: windows normalised as its feature extractor does,
    batched only where batching cannot change a result (see the module doc)."""

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
        weights: dict | None = None,
    ) -> None:
        """``windowing`` "clip" (consecutive ``window_s`` windows) or "step" (causal step
        windows reaching ``context_s`` seconds back, default ``DEFAULT_AUDIO_CONTEXT_S``;
        ``window_s`` is then unused). ``weights``: where the weights came from
        (``WeightsProvenance.to_dict()``)."""
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
        self.hold(model, name=name, pretrained=pretrained, weights=weights, device=device, precision=precision,
                  batch_size=batch_size)
        self.feature_extractor = feature_extractor
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

    def prepare(self, window: AudioWindow) -> np.ndarray:
        """The window as the encoder takes it: normalised, then padded to the receptive field."""
        piece = window.source[window.lo : window.hi]
        if self.do_normalize:
            piece = normalize_like_wav2vec2(piece)
        return pad_to_length(piece, self.geometry.receptive_field_samples)

    def group(self, windows: list[AudioWindow]) -> list[list[int]]:
        """GroupNorm encoders: only windows of one length share a batch; layer-norm ones
        are padded with a mask, longest first."""
        if self.uses_attention_mask:
            order = sorted(range(len(windows)), key=lambda i: -windows[i].length)
            groups = [order]
        else:
            by_length: dict[int, list[int]] = defaultdict(list)
            for i, window in enumerate(windows):
                by_length[window.length].append(i)
            groups = list(by_length.values())
        return [group[s : s + self.batch_size] for group in groups for s in range(0, len(group), self.batch_size)]

    def torch_forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x).last_hidden_state

    def export_spec(self) -> ExportSpec | None:
        """Windows ``[N, samples]``, any number of any length from the receptive field up
        (one export serves every window); None for encoders that take an attention mask."""
        if self.uses_attention_mask:
            return None
        return ExportSpec(self.arch, self.checksum, (2, 2 * SAMPLE_RATE),
                          ((0, 1), (1, self.geometry.receptive_field_samples)),
                          (1, min(self.window_samples, 10 * SAMPLE_RATE)))

    @torch.inference_mode()
    def run_batch(self, inputs: list[np.ndarray]) -> list[np.ndarray]:
        lengths = [a.shape[0] for a in inputs]
        longest = max(lengths)
        batch = np.zeros((len(inputs), longest), dtype=np.float32)
        for row, audio in enumerate(inputs):
            batch[row, : lengths[row]] = audio
        kwargs: dict[str, torch.Tensor] = {}
        if self.uses_attention_mask:
            mask = np.arange(longest)[None, :] < np.asarray(lengths)[:, None]
            kwargs["attention_mask"] = torch.from_numpy(mask.astype(np.int64)).to(self.device)
        x = torch.from_numpy(batch).to(self.device)
        if kwargs:  # attention-mask encoders run in torch (export_spec)
            with autocast_context(self.device, self.precision):
                hidden = self.model(x, **kwargs).last_hidden_state
        else:
            hidden = self.frozen_forward(x)
        hidden = hidden.float().cpu().numpy()
        n_frames = self.model._get_feat_extract_output_lengths(torch.tensor(lengths)).tolist()
        return [hidden[row, : int(n_frames[row])] for row in range(len(inputs))]
