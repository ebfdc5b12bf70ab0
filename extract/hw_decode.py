"""Hardware video decoding (``--decode sw|cuda|vaapi|qsv|auto``) through PyAV's ``HWAccel``.

Decoding is what limits a GPU node: one H100 embeds 720p frames far faster than its CPU
cores decode H.264. FFmpeg's hardware decoders (NVDEC through ``cuda``, VA-API, Intel
Quick Sync) take that work off the CPU. This module decides which decoder a run uses
and opens files with it; the decoding engine (``extract.media_reader``) calls it, so
extraction, ``predict`` and ``watch`` all get it.

* ``sw``: FFmpeg's software decoders (what every run did before; the default).
* ``cuda`` / ``vaapi`` / ``qsv``: that device, checked once when the run starts: a machine
  without it is refused (``InvalidInput``: one ``error:`` line, exit 2), never silently
  decoded in software.
* ``auto``: the first of cuda, vaapi, qsv whose device opens here, else software.

Per file, a hardware decoder may still refuse: the device context does not open for the
file, or FFmpeg's decoder rejects the stream (NVDEC has no 4:4:4 or 10-bit H.264). That
file is then decoded in software, and the reason is logged once per reason and process
(a dataset of thousands of such files must not print thousands of lines). The frames
are the same either way: H.264/HEVC decoding is bit-exact by specification, and a frame
downloaded from the device (NV12) is put in the software decoder's planar layout before
swscale converts it (``as_software_layout``), so it gives the software path's RGB.

``keep_on_device`` (CUDA only) leaves decoded frames in GPU memory (``is_hw_owned``),
where ``extract.frame_tensors`` converts them with torch ops; without it frames are
downloaded to host memory and follow the software path from there.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import av
from av.codec.hwaccel import HWAccel, hwdevices_available

from cache_schema import InvalidInput

from .probe import ClipTimeout, open_container

__all__ = ["DECODE_CHOICES", "HW_KINDS", "SOFTWARE", "HardwareDecoder", "as_software_layout", "decode_mode",
           "device_error", "log_fallback_once", "on_device", "open_for_decoding", "open_with_fallback",
           "resolve_decode"]

logger = logging.getLogger(__name__)

C = TypeVar("C")

SOFTWARE = "sw"
AUTO = "auto"
HW_KINDS = ("cuda", "vaapi", "qsv")
DECODE_CHOICES = (SOFTWARE, *HW_KINDS, AUTO)

# Decoders whose hardware configs can open each kind's device (the first one this build
# has is used to test that the device opens). Quick Sync decodes through its own
# ``*_qsv`` decoders; CUDA and VA-API through the ordinary decoders' hwaccel.
_PROBE_CODECS = {
    "cuda": ("h264", "hevc", "av1", "vp9"),
    "vaapi": ("h264", "hevc", "av1", "vp9"),
    "qsv": ("h264_qsv", "hevc_qsv", "av1_qsv"),
}

# Pixel formats of frames that a hardware decoder produced: its own surface format when
# frames stay on the device, else the format the download yields.
_HW_FRAME_FORMATS = frozenset({"cuda", "vaapi", "qsv", "nv12", "p010le", "p016le"})


@dataclass(frozen=True)
class HardwareDecoder:
    """A hardware decoder a run uses: ``kind`` (cuda, vaapi, qsv), ``device`` (a CUDA index
    or a DRI render node; None: the default) and whether frames stay on the device."""

    kind: str
    device: str | None = None
    keep_on_device: bool = False

    def __post_init__(self) -> None:
        if self.kind not in HW_KINDS:
            raise ValueError(f"unknown hardware decoder {self.kind!r}; one of {', '.join(HW_KINDS)}")
        if self.keep_on_device and self.kind != "cuda":
            raise ValueError("only CUDA frames can stay on the device (DLPack export is CUDA only)")

    def accel(self) -> HWAccel:
        """PyAV's settings for ``av.open``: FFmpeg may fall back to software per stream."""
        return HWAccel(self.kind, device=self.device, allow_software_fallback=True, is_hw_owned=self.keep_on_device)

    def decoded(self, frame: av.VideoFrame) -> bool:
        """Whether ``frame`` came out of the hardware decoder (not FFmpeg's software
        fall-back for a stream the device refused)."""
        return frame.format.name in _HW_FRAME_FORMATS


# Frames downloaded from a hardware decoder come interleaved (NV12, P010); the software
# decoder gives the planar layout of the same samples. swscale converts the two to RGB by
# different paths (NV12 -> RGB interpolates chroma: up to 23 levels apart on real frames),
# so a downloaded frame is first put in the planar layout (a lossless reshuffle), and then
# converts to exactly the RGB of the software path.
_PLANAR_OF = {"nv12": "yuv420p", "p010le": "yuv420p10le", "p016le": "yuv420p16le"}


def as_software_layout(frame: av.VideoFrame) -> av.VideoFrame:
    """``frame`` in the planar layout a software decoder gives (itself if it has it)."""
    planar = _PLANAR_OF.get(frame.format.name)
    return frame if planar is None else frame.reformat(format=planar)


def device_error(kind: str, device: str | None = None) -> str | None:
    """Why ``kind``'s device does not open on this machine, or None when it does."""
    if kind not in hwdevices_available():
        return (f"this FFmpeg build has no {kind} support (it has: {', '.join(hwdevices_available()) or 'none'})")
    codecs = [c for c in _PROBE_CODECS[kind] if c in av.codecs_available]
    last = f"no decoder of this FFmpeg build decodes on {kind}"
    for name in codecs:
        try:
            HWAccel(kind, device=device, allow_software_fallback=False).create(av.Codec(name, "r"))
            return None
        except NotImplementedError:  # this decoder has no config for the kind: try the next
            continue
        except Exception as exc:  # the device itself did not open (no driver, no permission)
            named = kind if device is None else f"{kind} {device}"
            return f"the {named} device does not open ({type(exc).__name__}: {exc})"
    return last


def resolve_decode(choice: str, device: str | None = None, keep_on_device: bool = False) -> HardwareDecoder | None:
    """The decoder a ``--decode`` choice means on this machine: None for software.

    An explicit kind whose device does not open raises ``InvalidInput`` (the user asked
    for it: better to stop than to run many times slower in software). ``auto`` takes the
    first kind that opens, else software, and logs which."""
    if choice not in DECODE_CHOICES:
        raise InvalidInput(f"--decode {choice!r}: choose one of {', '.join(DECODE_CHOICES)}")
    if choice == SOFTWARE:
        return None
    kinds = HW_KINDS if choice == AUTO else (choice,)
    reasons = []
    for kind in kinds:
        why = device_error(kind, device)
        if why is None:
            decoder = HardwareDecoder(kind, device, keep_on_device and kind == "cuda")
            logger.info("decoding video on %s%s", kind, "" if choice != AUTO else " (--decode auto)")
            return decoder
        reasons.append(why)
    if choice != AUTO:
        raise InvalidInput(f"--decode {choice}: {reasons[0]}. Decode in software (--decode sw), or let "
                           "--decode auto pick what this machine has")
    logger.info("--decode auto: no hardware decoder opens here (%s); decoding in software", "; ".join(reasons))
    return None


def on_device(decoder: HardwareDecoder | None, device: object) -> HardwareDecoder | None:
    """``decoder`` on the GPU that the backbones use (``device``: a torch device or its
    text, e.g. ``cuda:1``). FFmpeg's CUDA decoder opens GPU 0 when it is given no device,
    so under ``torchrun`` every rank would decode on GPU 0 while its backbones ran on its
    own GPU, and every frame would cross between them. A CUDA decoder with no device of
    its own therefore takes ``device``'s index. Any other decoder, a decoder given its
    device explicitly, or a ``device`` without a CUDA index is returned as it was."""
    if decoder is None or decoder.kind != "cuda" or decoder.device is not None:
        return decoder
    text = str(device)
    if not text.startswith("cuda:") or not text[5:].isdigit():
        return decoder
    return dataclasses.replace(decoder, device=text[5:])


def decode_mode(decoder: HardwareDecoder | None) -> str:
    """The decode mode a run records (descriptive, not identity): ``sw`` or the kind."""
    return SOFTWARE if decoder is None else decoder.kind


_logged: set[str] = set()
_logged_lock = threading.Lock()


def log_fallback_once(reason: str) -> None:
    """Log a software fall-back the first time this process sees its reason; later files
    with the same reason are logged at debug level only."""
    with _logged_lock:
        first = reason not in _logged
        _logged.add(reason)
    (logger.warning if first else logger.debug)("decoding in software: %s%s", reason,
                                                " (said once; later files alike are not listed)" if first else "")


@functools.lru_cache(maxsize=16)
def _device_error_here(kind: str, device: str | None) -> str | None:
    """``device_error``, asked once per process (a device context costs milliseconds)."""
    return device_error(kind, device)


def open_with_fallback(open_media: Callable[[HWAccel | None], C], decoder: HardwareDecoder | None,
                       retry_in_software: bool = True) -> tuple[C, bool]:
    """``open_media(hwaccel)`` with ``decoder``'s settings, and whether on its device.

    Where the device does not open in this process, the input is opened for software
    decoding (the reason logged once). Where it opens but this input's open fails with
    it, the input is opened again in software (``retry_in_software``: a file; not a
    network stream, whose failure is most likely the network's); if that fails too,
    the software open's own error says why, as it always did."""
    if decoder is None:
        return open_media(None), False
    why = _device_error_here(decoder.kind, decoder.device)
    if why is not None:
        log_fallback_once(f"the {decoder.kind} device did not open ({why})")
        return open_media(None), False
    try:
        return open_media(decoder.accel()), True
    except Exception as exc:  # noqa: BLE001 - retried in software, whose error is the one raised
        if not retry_in_software or isinstance(exc, ClipTimeout):   # a clip's time limit is never a fallback
            raise
        container = open_media(None)
        cause = exc.__cause__ or exc
        log_fallback_once(f"the {decoder.kind} device did not open for a file ({type(cause).__name__}: {cause})")
        return container, False


def open_for_decoding(path: str | Path, decoder: HardwareDecoder | None) -> tuple[av.container.InputContainer, bool]:
    """A file opened for decoding its video (``open_container``'s checks and errors), and
    whether on ``decoder``'s device (see ``open_with_fallback``)."""
    return open_with_fallback(lambda hwaccel: open_container(path, hwaccel=hwaccel), decoder)
