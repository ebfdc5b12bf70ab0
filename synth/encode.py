"""Writing real media through PyAV: containers, codecs, timestamps.

One function, ``write_clip``, muxes a stream of RGB frames (constant or variable frame
rate) and an optional float audio track into a file. Encoders run single-threaded so that
the same input gives the same bitstream (and, above all, the same decoded content) on
every machine; the synthetic clips are small, so parallelism is spent across clips
(generator.py) instead.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import av
import numpy as np

from cache_schema import replace_atomically


@dataclass(frozen=True)
class Container:
    name: str                 # the "container" value in the metadata, and the file extension
    av_format: str            # FFmpeg muxer
    vcodec: str               # FFmpeg encoder
    vcodec_name: str          # what a probe reports
    acodecs: tuple[str, ...]  # encoders this container is written with (chosen per clip)
    variable_fps_ok: bool     # AVI has no per-frame timestamps: constant frame rate only


CONTAINERS: dict[str, Container] = {
    "mp4": Container("mp4", "mp4", "libx264", "h264", ("aac",), True),
    "webm": Container("webm", "webm", "libvpx-vp9", "vp9", ("libopus",), True),
    "avi": Container("avi", "avi", "mpeg4", "mpeg4", ("libmp3lame",), False),
    "mkv": Container("mkv", "matroska", "libx264", "h264", ("aac", "libopus"), True),
}

ACODEC_NAMES = {"aac": "aac", "libopus": "opus", "libmp3lame": "mp3"}
# Opus only encodes at 8/12/16/24/48 kHz; the benchmark always uses 48 kHz with it.
FIXED_RATES = {"libopus": 48000}

_VIDEO_OPTIONS = {
    # ultrafast is ~2x quicker than veryfast; B-frames and CABAC put back for realism
    # (B-frames make decode order differ from presentation order, as in real files).
    "libx264": {"preset": "ultrafast", "crf": "27", "x264-params": "bframes=2:cabac=1"},
    "libvpx-vp9": {"deadline": "realtime", "cpu-used": "8", "crf": "38", "b": "0", "row-mt": "0"},
    "mpeg4": {},
}
_AUDIO_BITRATE = {"aac": 48_000, "libopus": 40_000, "libmp3lame": 64_000}
# The fast AAC coder is ~2.5x quicker than the default two-loop search; lame level 9 ~2x.
_AUDIO_OPTIONS = {"aac": {"aac_coder": "fast"}, "libopus": {}, "libmp3lame": {"compression_level": "9"}}
VFR_TIME_BASE = Fraction(1, 1000)


def _video_stream(out: av.container.OutputContainer, spec: Container, width: int, height: int,
                  fps: Fraction, variable: bool):
    vs = out.add_stream(spec.vcodec, rate=fps, options=dict(_VIDEO_OPTIONS[spec.vcodec]))
    vs.width, vs.height, vs.pix_fmt = width, height, "yuv420p"
    cc = vs.codec_context
    cc.thread_count = 1
    cc.gop_size = max(int(round(2 * float(fps))), 1)
    if spec.vcodec == "mpeg4":
        cc.bit_rate = 300_000
    if variable:
        vs.time_base = VFR_TIME_BASE
        cc.time_base = VFR_TIME_BASE
    return vs


def write_clip(
    path: Path,
    container: str,
    acodec: str | None,
    width: int,
    height: int,
    fps: Fraction,
    frame_times: np.ndarray,
    variable_fps: bool,
    frames: Iterable[np.ndarray],
    audio: np.ndarray | None,
    sample_rate: int | None,
) -> None:
    """Encode a clip into ``path`` (see :func:`_encode_clip`), written to a temporary name
    and renamed into place: a killed or failed encode never leaves a truncated video that
    a later extraction would take for a complete short clip."""
    replace_atomically(path, lambda tmp: _encode_clip(tmp, container, acodec, width, height, fps, frame_times,
                                                      variable_fps, frames, audio, sample_rate))


def _encode_clip(
    path: Path,
    container: str,
    acodec: str | None,
    width: int,
    height: int,
    fps: Fraction,
    frame_times: np.ndarray,
    variable_fps: bool,
    frames: Iterable[np.ndarray],
    audio: np.ndarray | None,
    sample_rate: int | None,
) -> None:
    """Encode ``frames`` (uint8 RGB ``[height, width, 3]``, one per ``frame_times`` entry)
    and ``audio`` (float32 ``[channels, samples]`` or ``None`` for no audio stream).

    Constant frame rate: pts ``k`` in a ``1/fps`` time base. Variable: pts are the frame
    times in milliseconds (``1/1000`` time base); the muxer may rescale them (MP4 picks
    its own timescale) but keeps them irregular. Audio and video packets are interleaved
    in time order.
    """
    spec = CONTAINERS[container]
    path = Path(path)
    # AVI stores no timestamps for audio; the MP3 encoder's negative first pts would make
    # the muxer shift every stream and skip a video frame slot, so do not shift there.
    options = {"avoid_negative_ts": "disabled"} if spec.av_format == "avi" else {}
    out = av.open(str(path), mode="w", format=spec.av_format, options=options)
    try:
        vs = _video_stream(out, spec, width, height, fps, variable_fps)
        ast = None
        if audio is not None:
            if acodec not in spec.acodecs:
                raise ValueError(f"{container} is not written with {acodec}; choose one of {spec.acodecs}")
            layout = "mono" if audio.shape[0] == 1 else "stereo"
            ast = out.add_stream(acodec, rate=sample_rate, options=dict(_AUDIO_OPTIONS[acodec]))
            ast.layout = layout
            ast.codec_context.bit_rate = _AUDIO_BITRATE[acodec] * audio.shape[0]
            ast.codec_context.thread_count = 1
        times = np.asarray(frame_times, dtype=np.float64)
        chunk = max(int(sample_rate * 0.25), 1) if ast is not None else 0
        a_pos = 0
        n_audio = audio.shape[1] if audio is not None else 0

        def push_audio(until: float) -> None:
            nonlocal a_pos
            while ast is not None and a_pos < n_audio and a_pos / sample_rate <= until:
                block = np.ascontiguousarray(audio[:, a_pos:a_pos + chunk], dtype=np.float32)
                af = av.AudioFrame.from_ndarray(block, format="fltp", layout=ast.layout.name)
                af.sample_rate = sample_rate
                af.pts = a_pos
                af.time_base = Fraction(1, sample_rate)
                for pkt in ast.encode(af):
                    out.mux(pkt)
                a_pos += block.shape[1]

        for k, img in enumerate(frames):
            t = float(times[k])
            push_audio(t)
            vf = av.VideoFrame.from_ndarray(img, format="rgb24")
            if variable_fps:
                vf.pts = int(round(t * 1000))
                vf.time_base = VFR_TIME_BASE
            else:
                vf.pts = k
                vf.time_base = 1 / fps
            for pkt in vs.encode(vf):
                out.mux(pkt)
        for pkt in vs.encode():
            out.mux(pkt)
        push_audio(float("inf"))
        if ast is not None:
            for pkt in ast.encode():
                out.mux(pkt)
    finally:
        out.close()
