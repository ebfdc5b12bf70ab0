"""A file's audio as mono float32 at one sample rate, in clip time, decoded as far as it is read.

Resampling is FFmpeg's (``av.AudioResampler``), so rate and channel mixing match what the
training cache was built with. Every resampled chunk is placed by its timestamp, not by
counting samples, so gaps and late starts stay zero and a step's audio is the audio that
was playing during that step.

Packets reach :class:`AudioTrack` one of two ways: pushed by a demux pass that reads the
file anyway (the probe; the file is then read once for both), or pulled lazily from a
handle of its own, only as far as a read needs, with ``release`` forgetting what lies
behind (sliding windows over a long video).
"""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Callable, Iterator

import av
import numpy as np

__all__ = ["SILENCE_PEAK", "AudioDecoder", "AudioTrack", "nothing_decoded_note"]

logger = logging.getLogger(__name__)

# Peak below which a decoded track counts as digital silence: -120 dBFS, well under one
# 16-bit step (3e-5), so dithered near-silence is still audio but codec round-off of
# an all-zero track is not.
SILENCE_PEAK = 1e-6

AudioChunk = tuple[int | None, np.ndarray]
"""(pts in output samples, or None where the resampler could not time it; samples)."""


class AudioDecoder:
    """Decodes and resamples the packets of one audio stream into timed chunks.

    A packet that fails to decode is counted and skipped (audio frames are independent
    enough that one bad packet should not cost the whole track). A change of rate or
    layout mid-stream drains the resampler and starts a new one.
    """

    def __init__(self, sample_rate: int) -> None:
        self.sample_rate = sample_rate
        self._resampler: av.AudioResampler | None = None
        self._chunks: list[AudioChunk] = []
        self._stream: av.audio.stream.AudioStream | None = None
        self._flushed = False
        self.failed = 0
        self.first_error: str | None = None

    def feed(self, packet: av.Packet) -> None:
        """One demuxed packet, including FFmpeg's final empty flush packet."""
        self._stream = packet.stream
        if packet.size == 0 and packet.pts is None:
            self._flushed = True
            self._decode(None)
            return
        self._decode(packet)

    def finish(self) -> None:
        """Drain the decoder (if the demux never reached EOF) and the resampler."""
        if self._stream is not None and not self._flushed:
            self._flushed = True
            self._decode(None)
        if self._resampler is not None:
            self._push(None)

    def take(self) -> list[AudioChunk]:
        """The chunks resampled since the last call, in decode order."""
        chunks, self._chunks = self._chunks, []
        return chunks

    def _decode(self, packet: av.Packet | None) -> None:
        if packet is None and (self._stream is None or self._stream.codec_context is None):
            return  # nothing was ever decoded (or the header names no usable codec): nothing to flush
        try:
            frames = (
                packet.decode() if packet is not None else self._stream.codec_context.decode(None)
            )
        except (av.FFmpegError, ValueError) as exc:
            self.failed += 1
            if self.first_error is None:
                where = f" at pts {packet.pts}" if packet is not None else ""
                self.first_error = f"{type(exc).__name__}{where}: {exc}"
            return
        for frame in frames:
            self._push(frame)

    def _push(self, frame: av.AudioFrame | None) -> None:
        if self._resampler is None:
            self._resampler = self._new_resampler()
        try:
            outputs = self._resampler.resample(frame)
        except ValueError:
            # The stream changed rate or layout mid-way: drain and start a new graph.
            outputs = self._resampler.resample(None)
            self._resampler = self._new_resampler()
            outputs += self._resampler.resample(frame)
        for out in outputs:
            samples = out.to_ndarray().reshape(-1).astype(np.float32, copy=False)
            self._chunks.append((out.pts, samples))

    def _new_resampler(self) -> av.AudioResampler:
        return av.AudioResampler(format="flt", layout="mono", rate=self.sample_rate)


class AudioTrack:
    """Mono audio in clip time (sample 0 = clip time 0), read by sample ranges.

    ``clip_start`` is clip time 0 and ``stream_start`` where the audio stream starts, both
    absolute seconds (``MediaInfo.start``, ``AudioStreamInfo.start``); a chunk without a
    timestamp follows the one before it. ``packets`` is the lazy source (None: the decoder
    was fed to the end already); ``close`` releases it.
    """

    def __init__(
        self,
        decoder: AudioDecoder,
        clip_start: float,
        stream_start: float,
        *,
        packets: Iterator[av.Packet] | None = None,
        close: Callable[[], None] | None = None,
    ) -> None:
        self.sample_rate = decoder.sample_rate
        self._decoder = decoder
        self._packets = packets
        self._close = close
        self._origin = int(round(clip_start * self.sample_rate))
        self._cursor = int(round((stream_start - clip_start) * self.sample_rate))
        self._chunks: deque[tuple[int, np.ndarray]] = deque()
        self.decoded_end = 0  # end (clip samples) of the furthest audio decoded so far
        self.any_audio = False  # whether any sample has been decoded at all (so far)
        self.eof = packets is None

    @property
    def failed(self) -> int:
        """Packets that failed to decode (they are silent)."""
        return self._decoder.failed

    @property
    def first_error(self) -> str | None:
        return self._decoder.first_error

    def clip_audio(self, lo: int, length: float) -> tuple[np.ndarray | None, float, bool]:
        """The audio of a clip of ``length`` seconds from sample ``lo``, as a decoded clip
        holds it: (samples, or None where nothing has been decoded at all; seconds of real
        audio from the clip's start; whether it is digital silence, ``SILENCE_PEAK``)."""
        samples, covered = self.read(lo, lo + int(round(length * self.sample_rate)))
        if not self.any_audio:
            return None, 0.0, False
        # min(): the end is where real samples stop, not the rounding of the last one.
        return samples, min(covered / self.sample_rate, length), bool(np.abs(samples).max(initial=0.0) <= SILENCE_PEAK)

    def warn_failed_packets(self, path: str) -> None:
        """Log, once per file, that some packets failed to decode (they are silent)."""
        if self.failed:
            logger.warning("%s: %d audio packet(s) failed to decode (first: %s); they are silent",
                           path, self.failed, self.first_error)

    def read(self, lo: int, hi: int) -> tuple[np.ndarray, int]:
        """Samples ``[lo, hi)`` of clip time (zero where there is no audio), and how many
        of them real audio reaches (from ``lo`` to the end of the last sample written)."""
        self._place(self._decoder.take())
        while not self.eof and self.decoded_end < hi:
            self._pump()
        out = np.zeros(hi - lo, dtype=np.float32)
        end = lo
        for pos, samples in self._chunks:
            a, b = max(pos, lo), min(pos + len(samples), hi)
            if b > a:
                out[a - lo : b - lo] = samples[a - pos : b - pos]
                end = max(end, b)
        return out, end - lo

    def release(self, before: int) -> None:
        """Forget the chunks that end at or before sample ``before`` (no read goes back)."""
        while self._chunks and self._chunks[0][0] + len(self._chunks[0][1]) <= before:
            self._chunks.popleft()

    def close(self) -> None:
        if self._close is not None:
            self._close()
            self._close = None

    def __enter__(self) -> AudioTrack:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _pump(self) -> None:
        assert self._packets is not None
        try:
            self._decoder.feed(next(self._packets))
        except StopIteration:
            self._decoder.finish()
            self.eof = True
        except av.FFmpegError as exc:  # a damaged tail: keep what was read
            logger.warning("audio demux stopped early: %s", exc)
            self._decoder.finish()
            self.eof = True
        self._place(self._decoder.take())

    def _place(self, chunks: list[AudioChunk]) -> None:
        for pts, samples in chunks:
            pos = pts - self._origin if pts is not None else self._cursor
            self._cursor = pos + len(samples)
            if len(samples):
                self._chunks.append((pos, samples))
                self.decoded_end = max(self.decoded_end, pos + len(samples))
                self.any_audio = True


def nothing_decoded_note(codec: str, first_error: str | None) -> str:
    """Why a clip has no audio although its file has an audio stream (``audio_error``)."""
    return f"audio stream ({codec}) present but nothing decoded" + (f": {first_error}" if first_error else "")
