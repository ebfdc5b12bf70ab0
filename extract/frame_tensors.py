"""Decoded frames as torch tensors, and the backbone's eval transform as torch ops.

Frames that a CUDA decoder leaves on the GPU (``HardwareDecoder(keep_on_device=True)``)
must not come back to the host for PIL: the colour conversion (NV12 / YUV 4:2:0 -> RGB, bit-identical to swscale's),
the orientation, the resize, the centre crop and the normalisation run here as torch ops
on whatever device the tensor is on, so each backbone gets batches that are already there.

:class:`TorchFrameTransform` reproduces timm's eval transform (``resolve_data_config`` +
``create_transform``, what ``extract.backbones.timm_image.VideoTransform`` runs with PIL):
the shorter side resized to ``floor(size / crop_pct)`` with the configured interpolation
(antialiased, as PIL resamples), rounded to 8 bits as PIL's image is, a centre crop of
``size``, ``/ 255``, then ``(x - mean) / std``. The two differ by interpolation rounding
only (tests/test_frame_tensors.py: cosine >= 0.999 on the backbones' features). Only
timm's default ``center`` crop mode with a square input is covered; other configs keep
the PIL path (``TorchFrameTransform.supports``).

On the CPU, extraction keeps PIL (measured there as fast, and it is the reference); this
module is the GPU path's.
"""

from __future__ import annotations

import functools
import math
from typing import Any

import av
import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from .hw_decode import as_software_layout
from .orientation import Orientation

__all__ = ["TorchFrameTransform", "frame_to_tensor", "nv12_to_rgb", "orient", "yuv420_to_rgb"]

@functools.lru_cache(maxsize=4)
def _swscale_table(colorspace: int, color_range: int) -> torch.Tensor:
    """swscale's own YUV -> RGB conversion as a table ``[U, V, Y] -> RGB`` (48 MB uint8).

    The software path converts with swscale (nearest chroma for 4:2:0, fixed-point
    arithmetic); a table of its outputs makes the GPU conversion bit-identical to it,
    where a float formula lands a level or two away on many pixels (enough to move a
    backbone's features). Built once per colour space and range, by converting one
    synthetic 4096x4096 frame that holds every (Y, U, V) triple: each chroma sample (its
    2x2 luma block) is one (U, V) pair with 4 luma values, 64 samples per pair."""
    pairs, blocks = 256 * 256, 64
    # chroma plane 2048x2048 in raster order: sample s is pair s // 64, block s % 64
    s = np.arange(pairs * blocks)
    u = (s // blocks // 256).astype(np.uint8).reshape(2048, 2048)
    v = (s // blocks % 256).astype(np.uint8).reshape(2048, 2048)
    block = (s % blocks).reshape(2048, 2048)
    y = np.empty((2048, 2, 2048, 2), np.uint8)  # [chroma row, dy, chroma col, dx]
    for dy in range(2):
        for dx in range(2):
            y[:, dy, :, dx] = 4 * block + 2 * dy + dx
    planes = np.concatenate([y.reshape(-1), u.reshape(-1), v.reshape(-1)]).reshape(6144, 4096)
    frame = av.VideoFrame.from_ndarray(planes, format="yuv420p")
    frame.colorspace, frame.color_range = colorspace, color_range
    rgb = frame.to_ndarray(format="rgb24")  # [4096, 4096, 3]
    # pixel (2*cr + dy, 2*cc + dx) with cc = (pair % 32) * 64 + block, cr = pair // 32
    table = rgb.reshape(2048, 2, 32, 64, 2, 3).transpose(0, 2, 3, 1, 4, 5).reshape(pairs * 256, 3)
    return torch.from_numpy(np.ascontiguousarray(table))


def _table_on(device: torch.device, colorspace: int, color_range: int) -> torch.Tensor:
    return _table_cached(str(device), colorspace, color_range)


@functools.lru_cache(maxsize=4)
def _table_cached(device: str, colorspace: int, color_range: int) -> torch.Tensor:
    return _swscale_table(colorspace, color_range).to(device)


def _upsample_chroma(c: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """A half-resolution chroma plane to ``[height, width]`` (each sample covers 2x2, as
    swscale's 4:2:0 -> RGB conversion reads it)."""
    return c.repeat_interleave(2, dim=0).repeat_interleave(2, dim=1)[:height, :width]


def _yuv_to_rgb(y: torch.Tensor, u: torch.Tensor, v: torch.Tensor, colorspace: int, color_range: int,
                ) -> torch.Tensor:
    """Full-resolution planes ``[H, W]`` uint8 -> RGB ``[3, H, W]`` uint8, on their device."""
    table = _table_on(y.device, colorspace, color_range)
    index = (u.to(torch.int64) * 256 + v.to(torch.int64)) * 256 + y.to(torch.int64)
    return table[index].permute(2, 0, 1)


def nv12_to_rgb(y: torch.Tensor, uv: torch.Tensor, colorspace: int = 2, color_range: int = 0) -> torch.Tensor:
    """NV12 (``y`` ``[H, W]``, interleaved ``uv`` ``[H/2, W/2, 2]``) -> RGB ``[3, H, W]``
    uint8, as swscale converts a frame of that ``colorspace`` / ``color_range`` (FFmpeg's
    enum values; 2/0: unspecified, which swscale reads as BT.601 limited range)."""
    h, w = y.shape
    return _yuv_to_rgb(y, _upsample_chroma(uv[..., 0], h, w), _upsample_chroma(uv[..., 1], h, w), colorspace,
                       color_range)


def yuv420_to_rgb(y: torch.Tensor, u: torch.Tensor, v: torch.Tensor, colorspace: int = 2,
                  color_range: int = 0) -> torch.Tensor:
    """Planar YUV 4:2:0 (``u``, ``v`` at half resolution) -> RGB ``[3, H, W]`` uint8."""
    h, w = y.shape
    return _yuv_to_rgb(y, _upsample_chroma(u, h, w), _upsample_chroma(v, h, w), colorspace, color_range)


def frame_to_tensor(frame: av.VideoFrame, device: torch.device | str | None = None) -> torch.Tensor:
    """A decoded frame as RGB ``[3, H, W]`` uint8 on ``device`` (its own for a CUDA frame).

    A CUDA frame (``is_hw_owned``) is read in place through DLPack (its NV12 planes) and
    converted on the GPU; any other frame is converted by swscale on the host, as the
    software path converts it, and then moved."""
    if frame.format.name == "cuda":
        # FFmpeg's NVDEC copies the picture into the surface on the legacy default stream,
        # which torch's (non-blocking) streams do not wait for: wait for it here. PyAV's
        # DLPack export takes no stream (torch.from_dlpack would pass one), so the capsule
        # is taken without. The surface goes back to FFmpeg's pool when the frame is
        # dropped, so the conversion is waited for before returning.
        dev = torch.device(device) if device is not None else torch.device("cuda", torch.cuda.current_device())
        torch.cuda.default_stream(dev).synchronize()
        y = torch.utils.dlpack.from_dlpack(frame.planes[0].__dlpack__())
        uv = torch.utils.dlpack.from_dlpack(frame.planes[1].__dlpack__())
        rgb = nv12_to_rgb(y, uv, int(frame.colorspace), int(frame.color_range))
        torch.cuda.current_stream(dev).synchronize()
        return rgb if device is None else rgb.to(device)
    rgb = torch.from_numpy(as_software_layout(frame).to_ndarray(format="rgb24")).permute(2, 0, 1).contiguous()
    return rgb if device is None else rgb.to(device, non_blocking=True)


def orient(x: torch.Tensor, orientation: Orientation) -> torch.Tensor:
    """``Orientation.apply`` for a ``[..., H, W]`` tensor (right angles and flips; a rare
    non-right angle goes through PIL on the host)."""
    T = Image.Transpose
    for op in orientation.transposes:
        if op == T.FLIP_LEFT_RIGHT:
            x = x.flip(-1)
        elif op == T.FLIP_TOP_BOTTOM:
            x = x.flip(-2)
        elif op == T.ROTATE_90:
            x = torch.rot90(x, 1, dims=(-2, -1))
        elif op == T.ROTATE_180:
            x = torch.rot90(x, 2, dims=(-2, -1))
        elif op == T.ROTATE_270:
            x = torch.rot90(x, -1, dims=(-2, -1))
        elif op == T.TRANSPOSE:
            x = x.transpose(-2, -1)
        elif op == T.TRANSVERSE:
            x = torch.rot90(x.transpose(-2, -1), 2, dims=(-2, -1))
    if orientation.angle:
        image = Image.fromarray(x.permute(1, 2, 0).cpu().numpy())
        turned = np.asarray(orientation.apply(image))
        x = torch.from_numpy(turned.copy()).permute(2, 0, 1).to(x.device)
    return x


_MODES = {"bicubic": "bicubic", "bilinear": "bilinear", "nearest": "nearest"}


class TorchFrameTransform:
    """timm's eval transform for uint8 RGB tensors ``[3, H, W]`` or ``[N, 3, H, W]`` (any
    device) -> float ``[..., 3, size, size]`` on the same device (see the module doc)."""

    def __init__(self, data_config: dict[str, Any]) -> None:
        if not self.supports(data_config):
            raise ValueError(f"no torch transform for {data_config}: only a square input with crop_mode 'center'")
        self.data_config = dict(data_config)
        _, h, _ = data_config["input_size"]
        self.size = int(h)
        crop_pct = data_config.get("crop_pct") or 0.875
        self.scale = math.floor(self.size / crop_pct)
        self.mode = _MODES[str(data_config.get("interpolation", "bilinear"))]
        self.mean = torch.tensor(data_config["mean"], dtype=torch.float32).view(3, 1, 1)
        self.std = torch.tensor(data_config["std"], dtype=torch.float32).view(3, 1, 1)

    @staticmethod
    def supports(data_config: dict[str, Any]) -> bool:
        _, h, w = data_config["input_size"]
        return h == w and data_config.get("crop_mode", "center") in (None, "center") and \
            str(data_config.get("interpolation", "bilinear")) in _MODES

    def resized_size(self, height: int, width: int) -> tuple[int, int]:
        """torchvision's ``Resize(int)``: the shorter side to ``scale``, the longer in proportion."""
        short, long = (height, width) if height <= width else (width, height)
        new_long = int(self.scale * long / short)
        return (self.scale, new_long) if height <= width else (new_long, self.scale)

    def __call__(self, frames: torch.Tensor) -> torch.Tensor:
        single = frames.ndim == 3
        x = frames.unsqueeze(0) if single else frames
        h, w = x.shape[-2:]
        nh, nw = self.resized_size(h, w)
        x = x.to(torch.float32)
        # PIL resamples in two passes, horizontal then vertical, each rounded to 8 bits:
        # done the same way here, the result is within a level of PIL's
        if nw != w:
            x = self._resize(x, (h, nw))
        if nh != h:
            x = self._resize(x, (nh, nw))
        top, left = int(round((nh - self.size) / 2.0)), int(round((nw - self.size) / 2.0))
        x = x[..., top:top + self.size, left:left + self.size]
        mean, std = self.mean.to(x.device), self.std.to(x.device)
        x = (x / 255.0 - mean) / std
        return x[0] if single else x

    def _resize(self, x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
        if self.mode == "nearest":
            return F.interpolate(x, size=size, mode="nearest")
        x = F.interpolate(x, size=size, mode=self.mode, antialias=True, align_corners=False)
        return x.round_().clamp_(0, 255)

    def __repr__(self) -> str:
        return f"TorchFrameTransform({self.data_config})"
