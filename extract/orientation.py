"""Turning a decoded frame into the picture a player shows: the display matrix, applied.

Phones store video sideways and tag the stream with a display matrix; a model must see
the picture upright, as a person would. FFmpeg attaches the matrix to every decoded
frame, but it is a property of the stream, so :class:`Orientation` is read once (from the
first frame) and applied to every frame after it: reading ``frame.side_data`` ties the
frame and its container in a reference cycle (PyAV 18), so reading it per frame would
leave every frame's buffers to the cyclic GC, hundreds of MB over a long video.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import av
import numpy as np
from PIL import Image

__all__ = ["Orientation", "display_matrix", "frame_rotation", "to_display_image"]


def display_matrix(frame: av.VideoFrame) -> np.ndarray | None:
    """The 3x3 display matrix (9 little-endian int32, 16.16 fixed point) of a frame, if any."""
    for side in frame.side_data:
        if side.type == av.sidedata.sidedata.Type.DISPLAYMATRIX:
            raw = bytes(side)
            if len(raw) >= 36:
                return np.frombuffer(raw[:36], dtype="<i4")
    return None


@dataclass(frozen=True)
class Orientation:
    """How to put a stream's frames upright: ``degrees`` clockwise (what is reported), the
    PIL transposes that do it, and a residual ``angle`` for matrices that are not a right
    angle (rare; rotated with expansion)."""

    degrees: float = 0.0
    transposes: tuple[Image.Transpose, ...] = field(default=())
    angle: float = 0.0

    @classmethod
    def from_matrix(cls, matrix: np.ndarray | None) -> Orientation:
        """Mirrors FFmpeg's own autorotate (fftools): the matrix's rotation decides between
        the four right-angle cases, and the signs of its entries decide the flips."""
        if matrix is None:
            return cls()
        a, b, c, d = (float(matrix[i]) / 65536.0 for i in (0, 1, 3, 4))
        s0, s1 = np.hypot(a, c), np.hypot(b, d)
        if s0 == 0 or s1 == 0:
            return cls()
        theta = float(round(np.degrees(np.arctan2(b / s1, a / s0))))
        theta -= 360 * np.floor(theta / 360 + 0.9 / 360)
        T = Image.Transpose
        if abs(theta - 90) < 1:
            return cls(90.0, (T.TRANSPOSE if matrix[3] > 0 else T.ROTATE_270,))
        if abs(theta - 180) < 1:
            ops = ((T.FLIP_LEFT_RIGHT,) if matrix[0] < 0 else ()) + (
                (T.FLIP_TOP_BOTTOM,) if matrix[4] < 0 else ()
            )
            return cls(180.0, ops)
        if abs(theta - 270) < 1:
            return cls(270.0, (T.TRANSVERSE if matrix[3] < 0 else T.ROTATE_90,))
        if abs(theta) > 1:
            return cls(theta, (), theta)
        return cls(0.0, (T.FLIP_TOP_BOTTOM,) if matrix[4] < 0 else ())

    @classmethod
    def of(cls, frame: av.VideoFrame) -> Orientation:
        """The orientation a frame's display matrix asks for (read it once per stream)."""
        return cls.from_matrix(display_matrix(frame))

    def apply(self, image: Image.Image) -> Image.Image:
        for op in self.transposes:
            image = image.transpose(op)
        if self.angle:
            image = image.rotate(-self.angle, expand=True)
        return image


def to_display_image(frame: av.VideoFrame) -> Image.Image:
    """RGB image of one decoded frame as a player would show it (rotation applied).

    For a single frame; a reader of many frames reads the :class:`Orientation` once.
    """
    return Orientation.of(frame).apply(frame.to_image())


def frame_rotation(frame: av.VideoFrame) -> float:
    """Clockwise degrees applied to show ``frame`` upright (0 when no display matrix)."""
    return Orientation.of(frame).degrees
