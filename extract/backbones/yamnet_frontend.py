"""YAMNet's frontend, as tensorflow/models ``research/audioset/yamnet`` defines it
(``features.py`` with ``params.py``'s values), in torch: waveform -> log-mel patches.

Ported rather than approximated because the weights were trained on exactly these
features: a different window, mel scale or log offset shifts every input cell, and the
classifier's calibration with it. The steps:

* ``pad_waveform``: zeros at the end, to at least one patch's samples (15,600: 0.96 s of
  frames plus one STFT window less one hop) and then to a whole number of patch hops
  (7,680 samples) past the first patch, so the last patch is whole;
* ``tf.signal.stft`` with ``pad_end=False``: frames of 400 samples every 160, a periodic
  Hann window, each frame zero-padded at its end to an FFT of 512; magnitude;
* ``tf.signal.linear_to_mel_weight_matrix``: 64 HTK-mel triangles from 125 to 7,500 Hz
  over the 257 bins, the DC bin given weight zero;
* ``log(mel + 0.001)``;
* ``tf.signal.frame`` over time: patches of 96 frames every 48.

Patch ``k`` of a waveform covers samples ``[k * 7680, k * 7680 + 15600)`` (:func:`patch_layout`).
Everything is batched over leading dimensions, float32, and runs on the input's device.
"""

from __future__ import annotations

import functools
import logging
from dataclasses import asdict, dataclass

import numpy as np
import torch

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class YamnetFrontend:
    """The frontend's constants (``params.py``), in samples and frames rather than
    seconds so that every derived length is an exact integer. Recorded as named fields in
    a cache's identity, so that features from a different frontend never compare equal."""

    sample_rate: int = 16000
    stft_window_samples: int = 400  # 0.025 s
    stft_hop_samples: int = 160  # 0.010 s
    fft_length: int = 512  # next power of two of the window
    window: str = "hann_periodic"
    magnitude: str = "abs"
    mel_bands: int = 64
    mel_min_hz: float = 125.0
    mel_max_hz: float = 7500.0
    mel_scale: str = "htk_tf_linear_to_mel_weight_matrix"
    log_offset: float = 0.001
    patch_frames: int = 96  # 0.96 s
    patch_hop_frames: int = 48  # 0.48 s
    padding: str = "pad_end_to_whole_patches"

    @property
    def patch_samples(self) -> int:
        """Samples one patch spans: its frames' hops plus one window less one hop (15,600)."""
        return (self.patch_frames - 1) * self.stft_hop_samples + self.stft_window_samples

    @property
    def patch_hop_samples(self) -> int:
        """Samples between consecutive patches' starts (7,680)."""
        return self.patch_hop_frames * self.stft_hop_samples

    @property
    def spectrogram_bins(self) -> int:
        return self.fft_length // 2 + 1

    def to_dict(self) -> dict:
        """The fields plus the derived patch lengths, JSON-serialisable."""
        return {**asdict(self), "patch_samples": self.patch_samples, "patch_hop_samples": self.patch_hop_samples}


YAMNET_FRONTEND = YamnetFrontend()


def padded_length(num_samples: int, frontend: YamnetFrontend = YAMNET_FRONTEND) -> int:
    """Length after YAMNet's ``pad_waveform``: at least one patch, then a whole number of
    patch hops past the first patch."""
    if num_samples < 0:
        raise ValueError(f"num_samples must be >= 0, got {num_samples}")
    first, hop = frontend.patch_samples, frontend.patch_hop_samples
    after_first = max(num_samples, first) - first
    return first + -(-after_first // hop) * hop


def patch_layout(num_samples: int, frontend: YamnetFrontend = YAMNET_FRONTEND) -> tuple[int, np.ndarray]:
    """For a waveform of ``num_samples`` samples: how many patches YAMNet makes of it and
    each patch's first sample (int64). Patch ``k`` covers ``[starts[k], starts[k] +
    frontend.patch_samples)``; its tail may lie in the zero padding. As in YAMNet, even an
    empty or short waveform gives one patch (of padding)."""
    count = 1 + (padded_length(num_samples, frontend) - frontend.patch_samples) // frontend.patch_hop_samples
    return count, np.arange(count, dtype=np.int64) * frontend.patch_hop_samples


def pad_waveform(waveform: torch.Tensor, frontend: YamnetFrontend = YAMNET_FRONTEND) -> torch.Tensor:
    """YAMNet's ``pad_waveform`` on the last dimension: zeros at the end up to
    :func:`padded_length`."""
    n = waveform.shape[-1]
    return torch.nn.functional.pad(waveform, (0, padded_length(n, frontend) - n))


@functools.lru_cache(maxsize=4)
def mel_weight_matrix(frontend: YamnetFrontend = YAMNET_FRONTEND) -> np.ndarray:
    """``tf.signal.linear_to_mel_weight_matrix`` as a float32 ``[bins, mel_bands]`` array,
    built the same way: bin frequencies ``linspace(0, nyquist, bins)`` without the DC bin,
    HTK mel ``1127 ln(1 + f / 700)``, band edges evenly spaced in mel, triangles as the
    min of the rising and falling slopes clipped at zero, and a zero row put back for DC.
    Computed in float64 (TF does float32; the two differ by ~1e-7 relative)."""
    if frontend.mel_scale != YAMNET_FRONTEND.mel_scale:
        raise ValueError(f"unknown mel scale {frontend.mel_scale!r}")

    def hz_to_mel(hz: np.ndarray | float) -> np.ndarray:
        return 1127.0 * np.log(1.0 + np.asarray(hz, dtype=np.float64) / 700.0)

    bins = frontend.spectrogram_bins
    bin_mel = hz_to_mel(np.linspace(0.0, frontend.sample_rate / 2.0, bins)[1:])[:, None]
    edges = np.linspace(hz_to_mel(frontend.mel_min_hz), hz_to_mel(frontend.mel_max_hz), frontend.mel_bands + 2)
    lower, center, upper = edges[:-2][None, :], edges[1:-1][None, :], edges[2:][None, :]
    rising = (bin_mel - lower) / (center - lower)
    falling = (upper - bin_mel) / (upper - center)
    weights = np.maximum(0.0, np.minimum(rising, falling))
    return np.concatenate([np.zeros((1, frontend.mel_bands)), weights]).astype(np.float32)


def log_mel_spectrogram(waveform: torch.Tensor, frontend: YamnetFrontend = YAMNET_FRONTEND) -> torch.Tensor:
    """``[..., samples]`` -> ``[..., frames, mel_bands]`` with frames = 1 + (samples -
    400) // 160 (no padding here; zero frames when shorter than one window)."""
    waveform = waveform.to(torch.float32)
    frames = waveform.unfold(-1, frontend.stft_window_samples, frontend.stft_hop_samples)
    window = torch.hann_window(frontend.stft_window_samples, periodic=True, dtype=torch.float32,
                               device=waveform.device)
    # rfft's n pads each windowed frame with zeros at its end, as tf.signal.stft does.
    magnitude = torch.fft.rfft(frames * window, n=frontend.fft_length).abs()
    mel = magnitude @ torch.from_numpy(mel_weight_matrix(frontend)).to(waveform.device)
    return torch.log(mel + frontend.log_offset)


def frame_patches(log_mel: torch.Tensor, frontend: YamnetFrontend = YAMNET_FRONTEND) -> torch.Tensor:
    """``[..., frames, bands]`` -> ``[..., patches, patch_frames, bands]`` (``tf.signal.frame``
    without padding: a trailing part shorter than a patch is dropped)."""
    return log_mel.unfold(-2, frontend.patch_frames, frontend.patch_hop_frames).transpose(-1, -2)


def waveform_to_patches(waveform: torch.Tensor, frontend: YamnetFrontend = YAMNET_FRONTEND) -> torch.Tensor:
    """YAMNet's whole frontend: 16 kHz mono ``[..., samples]`` in [-1, 1] ->
    ``[..., patches, 96, 64]`` log-mel patches, patches as :func:`patch_layout` places them."""
    return frame_patches(log_mel_spectrogram(pad_waveform(waveform, frontend), frontend), frontend)
