"""YAMNet as a frozen audio backbone: 1024-d patch embeddings placed onto the cache's steps.

YAMNet reads 0.96 s log-mel patches every 0.48 s (``yamnet_frontend``); each patch's
embedding is a "frame" in the sense of ``audio_frames``: it lies at the centre of the
samples it read, and a step's feature is the mean of the patches whose centre falls in
the step (else the nearest one), as wav2vec2's 20 ms frames are pooled.

* Clip windows: exactly YAMNet over the whole clip (its ``pad_waveform`` at the clip's
  end). The clip is cut into windows of ``CHUNK_PATCHES`` patch hops only to bound memory;
  each window reads one patch's overlap past its end (``lookahead_samples``), so that the
  patches are those of the whole waveform, bit for bit.
* Causal step windows (time-grid caches, live mode): the whole patches that end at the
  window's end, the latest first; a window shorter than one patch is preceded by zeros.
  The step's last patch therefore always ends with the step, and nothing after it is heard.

The weights come from the TFLite file (``yamnet.load_yamnet``): ``--audio-model
PATH.tflite``, or the name ``yamnet`` resolved through ``$AVAR_YAMNET`` (the file or its
folder), else ``<user cache>/yamnet/yamnet_spectra_in.tflite``. Nothing is downloaded.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import numpy as np
import torch

from cache_schema import SAMPLE_RATE, AudioPreprocessing, Normalization
from cache_schema.preprocessing import (
    BATCHING_INDEPENDENT_PATCHES,
    NORMALIZE_NONE,
    PAD_YAMNET,
    WINDOWS_CAUSAL_STEP,
    WINDOWS_WHOLE_CLIP,
)

from ..audio_windows import WINDOWING_STEP, AudioWindowing, FrameGeometry
from .audio_frames import AudioBackbone, AudioWindow
from .frozen import (
    BackboneUnavailable,
    WeightsProvenance,
    user_cache_dir,
)
from .runtimes.export_cache import ExportSpec
from .yamnet import EMBEDDING_DIM, YAMNET_ENV, YAMNET_FILE, YAMNET_SHA256, YamNet, load_yamnet, where_to_get
from .yamnet_frontend import YAMNET_FRONTEND, waveform_to_patches

logger = logging.getLogger(__name__)

CHUNK_PATCHES = 64
"""Patch hops per clip window (30.72 s): bounds the memory of a long clip's spectrogram."""
LICENCE = "Apache-2.0"


def yamnet_weights_file(name: str) -> Path:
    """The .tflite file that ``name`` means: a path as given, or for ``yamnet``
    ``$AVAR_YAMNET`` (a file or the folder holding ``yamnet_spectra_in.tflite``), else the
    user cache's ``yamnet/yamnet_spectra_in.tflite``. A missing file is one line saying
    where to get it."""
    if name != "yamnet":
        path = Path(name).expanduser()
    elif os.environ.get(YAMNET_ENV):
        path = Path(os.environ[YAMNET_ENV]).expanduser()
    else:
        path = user_cache_dir() / "yamnet"
    path = path / YAMNET_FILE if path.is_dir() else path
    if not path.is_file():
        raise BackboneUnavailable(where_to_get(path, "is not there" if not path.exists() else "is not a file"))
    return path


class YamnetBackbone(AudioBackbone):
    """A frozen YAMNet whose patch embeddings are pooled per step (see the module doc)."""

    def __init__(self, model: YamNet, *, name: str, weights: WeightsProvenance, device: str = "cpu",
                 precision: str = "fp32", batch_size: int = 128,
                 windowing: AudioWindowing = AudioWindowing()) -> None:
        """``batch_size``: patches per forward pass (each is an independent input)."""
        frontend = YAMNET_FRONTEND
        self.hold(model, name=name, pretrained=weights.pretrained, weights=weights.to_dict(), device=device,
                  precision=precision, batch_size=batch_size)
        self.windowing = windowing
        self.arch = "yamnet"
        self.dim = EMBEDDING_DIM
        self.geometry = FrameGeometry(frontend.patch_hop_samples, frontend.patch_samples, SAMPLE_RATE)
        self.window_samples = CHUNK_PATCHES * frontend.patch_hop_samples
        self.lookahead_samples = frontend.patch_samples - frontend.patch_hop_samples
        causal = windowing.mode == WINDOWING_STEP
        self.preprocessing = AudioPreprocessing(
            sample_rate=SAMPLE_RATE,
            window_s=0.0,  # whole clip: the chunks do not change any patch
            windows=WINDOWS_CAUSAL_STEP if causal else WINDOWS_WHOLE_CLIP,
            context_s=windowing.context_s,
            normalize=Normalization(NORMALIZE_NONE),
            min_window_samples=frontend.patch_samples,
            pad=PAD_YAMNET,
            attention_mask=False,
            batching=BATCHING_INDEPENDENT_PATCHES,
            layer="embedding",
            frame_stride_s=self.geometry.stride_s,
            frontend=frontend.to_dict(),
            library=f"torch {torch.__version__.split('+')[0]} port of the YAMNet TFLite graph",
        ).to_dict()
        self.model.to(device)

    def prepare(self, window: AudioWindow) -> np.ndarray:
        """Clip windows: the samples as they are (``waveform_to_patches`` pads the clip's
        end). Causal windows: the whole patches that end at the window's end."""
        piece = window.source[window.lo : window.hi]
        if window.step < 0:
            return piece
        keep = self._causal_length(len(piece))
        if len(piece) >= keep:
            return piece[len(piece) - keep:]
        return np.concatenate([np.zeros(keep - len(piece), np.float32), piece])

    @staticmethod
    def _causal_length(n: int) -> int:
        """Samples of the whole patches, hop apart, that fit in ``n`` samples ending at its end."""
        first, hop = YAMNET_FRONTEND.patch_samples, YAMNET_FRONTEND.patch_hop_samples
        return first + (n - first) // hop * hop if n >= first else first

    def step_frame_times(self, window: AudioWindow, n_frames: int) -> np.ndarray:
        """A causal window's patches are right-aligned: they start where its end minus
        their span is (before the window's start where it was shorter than one patch)."""
        length = window.hi - window.lo
        return self.geometry.frame_times(window.start_sample + length - self._causal_length(length), n_frames)

    def group(self, windows: list[AudioWindow]) -> list[list[int]]:
        """Any windows share a pass (patches are independent inputs), up to ``batch_size`` patches."""
        groups: list[list[int]] = [[]]
        patches = 0
        for i, window in enumerate(windows):
            n = max(1, window.length // YAMNET_FRONTEND.patch_hop_samples)
            if groups[-1] and patches + n > self.batch_size:
                groups.append([])
                patches = 0
            groups[-1].append(i)
            patches += n
        return [g for g in groups if g]

    def torch_forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)[0]

    def export_spec(self) -> ExportSpec:
        """Log-mel patches ``[N, frames, bands]``, any number of them."""
        frames, bands = YAMNET_FRONTEND.patch_frames, YAMNET_FRONTEND.mel_bands
        return ExportSpec(self.arch, self.checksum, (2, frames, bands), ((0, 1),),
                          (min(self.batch_size, 64), frames, bands))

    @torch.inference_mode()
    def run_batch(self, inputs: list[np.ndarray]) -> list[np.ndarray]:
        per_input = [waveform_to_patches(torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))) for x in inputs]
        patches = torch.cat(per_input).to(self.device)
        embeddings = []
        for start in range(0, patches.shape[0], self.batch_size):
            embeddings.append(self.frozen_forward(patches[start : start + self.batch_size]).float().cpu())
        return [e.numpy() for e in torch.cat(embeddings).split([p.shape[0] for p in per_input])]


def load_yamnet_backbone(name: str, *, device: str, precision: str,
                         windowing: AudioWindowing = AudioWindowing()) -> YamnetBackbone:
    """``yamnet`` or a path to the .tflite file -> YamnetBackbone (BackboneUnavailable when
    the file is missing, damaged or another one)."""
    path = yamnet_weights_file(name)
    model = load_yamnet(path)
    provenance = WeightsProvenance(source="YAMNet TFLite file (google-coral/coralmicro)", pretrained=True,
                                   licence=LICENCE, file=str(path), sha256=YAMNET_SHA256)
    return YamnetBackbone(model, name=name, weights=provenance, device=device, precision=precision,
                          windowing=windowing)


__all__ = ["CHUNK_PATCHES", "YamnetBackbone", "load_yamnet_backbone", "yamnet_weights_file"]
