"""Keeping a GPU busy: decoded batches staged onto the device while the backbones run.

Only used when the video backbone is on a CUDA device (``device.type == "cuda"``); the
CPU path never enters this module. Three stages overlap, each on its own thread or stream:

1. decoding: the decode workers (``extract.decode_workers``, processes; with NVDEC they
   are spawned) hand batches of clips whose frames are the transform's uint8 crops; or,
   with ``--decode cuda --workers 0``, frames decoded by NVDEC stay on the GPU and the
   torch transform (``extract.frame_tensors``) runs there, in this module's staging thread;
2. staging (a thread, the *copy stream*): a batch's host frames are stacked into pinned
   memory and copied to the device asynchronously, ``depth`` batches ahead;
3. the backbones (the caller's thread, the *compute stream*): each batch waits only for
   its own copy (an event), so copies of the next batches run under the current one.

bf16 autocast comes from the backbones' precision (``--precision auto`` picks bf16 where
``torch.cuda.is_bf16_supported()``). The backbones' batch comes from the free device
memory (:func:`device_batch_size`).
"""

from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Iterator
from dataclasses import replace
from typing import Any

import numpy as np
import torch

from .backbones import VideoBackbone
from .datasets import ManifestRow
from .decode_workers import Decoded, iter_decoded
from .extract_config import ExtractConfig
from .feature_extractor import worker_transform
from .frame_tensors import TorchFrameTransform
from .hw_decode import HardwareDecoder

__all__ = ["ACTIVATION_FACTOR", "DeviceFeed", "device_batch_size", "gpu_batches", "resident_decoder"]

logger = logging.getLogger(__name__)

ACTIVATION_FACTOR = 48
"""Device bytes one frame costs in a frozen backbone's forward pass (inference mode: no
activations kept for backward), as a multiple of its float32 input tensor: a generous
estimate for mobile CNNs and MobileViT, whose largest live activations are a few times
the input (not measured on a GPU yet: tools/gpu_check.sh records what it gets)."""

MEMORY_SHARE = 0.5  # of the free device memory, the rest left to the allocator's slack and other users


def device_batch_size(device: torch.device, input_shape: tuple[int, int, int], floor: int = 32,
                      cap: int = 1024) -> int:
    """Frames per backbone batch on ``device``, from its free memory.

    The rule: ``MEMORY_SHARE`` of the free memory (``torch.cuda.mem_get_info``) divided
    by ``ACTIVATION_FACTOR`` times one float32 input frame (``C*H*W*4`` bytes), rounded
    down to a multiple of 32 (tensor-core tiles), within ``[floor, cap]``: a 256 px frame
    (786 kB) on 70 GB free gives 896; on 4 GB free, 32."""
    if device.type != "cuda":
        raise ValueError("device_batch_size is for CUDA devices")
    free, _ = torch.cuda.mem_get_info(device)
    c, h, w = input_shape
    per_frame = ACTIVATION_FACTOR * c * h * w * 4
    n = int(MEMORY_SHARE * free // per_frame) // 32 * 32
    return max(floor, min(cap, n))


def resident_decoder(decoder: HardwareDecoder | None, workers: int) -> HardwareDecoder | None:
    """The decoder with frames left on the GPU where that is possible: a CUDA decoder
    decoding in this process (``workers == 0``: a frame on one process's GPU context
    cannot be handed to another). Otherwise the decoder as it was (frames downloaded)."""
    if decoder is not None and decoder.kind == "cuda" and workers == 0:
        return replace(decoder, keep_on_device=True)
    return decoder


_END = object()


class DeviceFeed:
    """Batches of decoded clips with their host frames already copied to ``device``.

    A staging thread pulls batches from ``batches``, stacks each clip's uint8 frames
    (``[K, H, W, 3]``) in pinned memory and copies them on its own stream, ``depth``
    batches ahead; iterating yields each batch once its copy has finished on the
    consumer's current stream. Frames already on the device (resident NVDEC frames)
    pass as they are. Close it (or use it as a context manager) to join the thread."""

    def __init__(self, batches: Iterator[list[Decoded]], device: torch.device, depth: int = 2) -> None:
        if device.type != "cuda":
            raise ValueError("DeviceFeed stages batches onto a CUDA device")
        self.device = device
        self._batches = batches
        self._queue: queue.Queue[Any] = queue.Queue(maxsize=max(1, depth))
        self._stop = threading.Event()
        self._copy_stream = torch.cuda.Stream(device)
        self._compute_stream = torch.cuda.Stream(device)
        self._thread = threading.Thread(target=self._stage_all, name="device-feed", daemon=True)
        self._thread.start()

    def _stage_all(self) -> None:
        try:
            with torch.cuda.device(self.device), torch.cuda.stream(self._copy_stream):
                for batch in self._batches:
                    staged = self._stage(batch)
                    event = torch.cuda.Event()
                    event.record(self._copy_stream)
                    while not self._stop.is_set():
                        try:
                            self._queue.put((staged, event), timeout=0.1)
                            break
                        except queue.Full:
                            continue
                    if self._stop.is_set():
                        return
            self._put_end(_END)
        except BaseException as exc:  # handed to the consumer, raised there
            self._put_end(exc)

    def _put_end(self, item: Any) -> None:
        while not self._stop.is_set():
            try:
                self._queue.put(item, timeout=0.1)
                return
            except queue.Full:
                continue

    def _stage(self, batch: list[Decoded]) -> list[Decoded]:
        for d in batch:
            frames = d.clip.frames if d.clip is not None else None
            if not frames or not isinstance(frames[0], np.ndarray):
                continue  # no video, or frames already on the device
            host = torch.from_numpy(np.stack(frames)).pin_memory()
            on_device = host.to(self.device, non_blocking=True)
            d.clip.frames = list(on_device.unbind(0))
        return batch

    def __iter__(self) -> Iterator[list[Decoded]]:
        """Each batch, handed out while the compute stream is the current one: the
        consumer's backbone calls between two ``next()`` run on it (the ``with`` stays
        entered across the ``yield``)."""
        consumer = self._compute_stream
        with torch.cuda.stream(consumer):
            while True:
                item = self._queue.get()
                if item is _END:
                    return
                if isinstance(item, BaseException):
                    raise item
                batch, event = item
                consumer.wait_event(event)
                for d in batch:  # the allocator must not reuse these blocks before the consumer is done
                    for f in (d.clip.frames or []) if d.clip is not None else []:
                        if isinstance(f, torch.Tensor) and f.is_cuda:
                            f.record_stream(consumer)
                yield batch

    def close(self) -> None:
        """Stop staging and join the thread; the decode iterator is closed too (its
        worker processes are shut down)."""
        self._stop.set()
        self._thread.join()
        close = getattr(self._batches, "close", None)
        if close is not None:
            close()

    def __enter__(self) -> DeviceFeed:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def gpu_batches(rows: list[ManifestRow], cfg: ExtractConfig, video: VideoBackbone,
                decoder: HardwareDecoder | None) -> DeviceFeed:
    """Decoded batches of ``rows`` fed to ``video``'s CUDA device (see the module doc).

    Sets the backbone's batch from the free device memory. With a CUDA decoder and no
    worker processes, frames stay on the GPU and the torch transform runs there (where
    the backbone's data config allows it; else they are downloaded as usual)."""
    device = torch.device(video.device)
    decoder = resident_decoder(decoder, cfg.workers)
    transform = worker_transform(video)
    if decoder is not None and decoder.keep_on_device:
        if TorchFrameTransform.supports(video.transform.data_config):
            transform = TorchFrameTransform(video.transform.data_config)
        else:
            decoder = replace(decoder, keep_on_device=False)
    video.batch_size = device_batch_size(device, tuple(video.transform.data_config["input_size"]))
    logger.info("GPU feed on %s: backbone batches of %d frames, %d batches staged ahead, frames %s", device,
                video.batch_size, cfg.prefetch,
                "decoded and transformed on the GPU" if decoder is not None and decoder.keep_on_device
                else "copied from pinned host memory")
    return DeviceFeed(iter_decoded(rows, cfg, transform, decoder), device, depth=cfg.prefetch)
