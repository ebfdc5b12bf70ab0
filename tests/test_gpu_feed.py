"""The GPU feed (``extract.gpu_feed``) on a machine without a GPU: it imports, refuses a
CPU device, and its rules (batch size from free memory, resident NVDEC frames) hold.
The CUDA path itself runs in tools/gpu_check.sh on a GPU machine, never in these tests."""

from __future__ import annotations

import pytest
import torch

from extract.gpu_feed import ACTIVATION_FACTOR, DeviceFeed, device_batch_size, resident_decoder
from extract.hw_decode import HardwareDecoder


def test_the_feed_is_for_cuda_devices_only() -> None:
    with pytest.raises(ValueError, match="CUDA"):
        DeviceFeed(iter([]), torch.device("cpu"))
    with pytest.raises(ValueError, match="CUDA"):
        device_batch_size(torch.device("cpu"), (3, 256, 256))


def test_frames_stay_on_the_gpu_only_when_decoded_in_this_process_by_cuda() -> None:
    cuda = HardwareDecoder("cuda")
    assert resident_decoder(cuda, workers=0) == HardwareDecoder("cuda", keep_on_device=True)
    assert resident_decoder(cuda, workers=2) == cuda  # another process's GPU frames cannot be handed over
    assert resident_decoder(HardwareDecoder("vaapi"), workers=0) == HardwareDecoder("vaapi")
    assert resident_decoder(None, workers=0) is None


def test_batch_size_rule_from_free_memory(monkeypatch: pytest.MonkeyPatch) -> None:
    frame = 3 * 256 * 256 * 4
    for free, want in ((70e9, 896), (200e9, 1024), (4e9, 32), (2 * 200 * ACTIVATION_FACTOR * frame, 192), (1e6, 32)):
        monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device, free=free: (int(free), int(80e9)))
        assert device_batch_size(torch.device("cuda", 0), (3, 256, 256)) == want, free
