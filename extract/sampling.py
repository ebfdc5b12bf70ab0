"""Step segments, their target frames, and the keyframe-aware decode plan.

Everything here is pure arithmetic on timestamps (no I/O), so the rules that decide
which frames a clip costs can be unit-tested without media files.

Time convention (docs/architecture.md): a clip of duration ``d`` is cut into ``T``
equal segments ``[i*d/T, (i+1)*d/T)``; the target of segment ``i`` is its centre, and
the frame for it is the one whose presentation time is nearest that centre.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from cache_schema import StepLayout


def step_segments(duration: float, steps: int) -> np.ndarray:
    """Bounds ``[T, 2]`` (start, end seconds) of ``steps`` equal segments of a clip: the
    fixed layout's ``cache_schema.StepLayout(steps=T).segments``, the one definition."""
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    return StepLayout(steps=int(steps)).segments(duration)


def step_centres(bounds: np.ndarray) -> np.ndarray:
    """Target time of each segment: its centre (stored as the step time)."""
    return bounds.mean(axis=1)


def target_frames(frame_times: np.ndarray, centres: np.ndarray) -> np.ndarray:
    """Index into ``frame_times`` (sorted ascending) of the frame nearest each centre.

    Ties go to the earlier frame so that the choice is deterministic and matches the
    streaming selection in frame_picker.py, which prefers the frame already seen.
    """
    times = np.asarray(frame_times, dtype=np.float64)
    if times.size == 0:
        raise ValueError("no frame times to choose from")
    centres = np.asarray(centres, dtype=np.float64)
    right = np.searchsorted(times, centres, side="left").clip(0, times.size - 1)
    left = (right - 1).clip(0, times.size - 1)
    take_left = np.abs(centres - times[left]) <= np.abs(times[right] - centres)
    return np.where(take_left, left, right).astype(np.int64)


@dataclass(frozen=True)
class DecodeAction:
    """One contiguous forward decode.

    ``seek_to_pts`` is the keyframe to seek to first, or ``None`` to keep decoding from
    where the previous action stopped (or from the file start for the first action).
    ``target_pts`` are the frames this run must deliver, ascending; the run stops once
    the last of them has come out of the decoder.
    """

    seek_to_pts: int | None
    target_pts: tuple[int, ...]


def _preceding_keyframes(keyframe_pts: np.ndarray, targets: np.ndarray) -> np.ndarray:
    """Keyframe at or before each target; the first frame of the file where none is."""
    idx = np.searchsorted(keyframe_pts, targets, side="right") - 1
    return idx


def plan_decode(
    frame_pts: np.ndarray, keyframe_pts: np.ndarray, target_pts: np.ndarray
) -> list[DecodeAction]:
    """Group the targets into forward decodes, seeking only where that saves frames.

    Rule: after delivering target ``a`` the decoder sits at ``a``. For the next target
    ``b`` with preceding keyframe ``K``, if ``a >= K`` then decoding on from ``a`` costs
    the frames in ``(a, b]``, which is never more than a fresh decode ``[K, b]``; so we
    continue. Otherwise we seek to ``K``. Under this rule the frames decoded equal
    ``min_frames_needed`` exactly (each frame of the union is decoded once).

    Targets may be unsorted and repeated (short clips where two steps share a frame);
    each distinct target appears once in the plan. ``frame_pts`` is accepted for
    symmetry with ``min_frames_needed`` and to validate that targets are real frames.
    """
    frames = np.asarray(frame_pts, dtype=np.int64)
    keys = np.unique(np.asarray(keyframe_pts, dtype=np.int64))
    targets = np.unique(np.asarray(target_pts, dtype=np.int64))
    if targets.size and not np.isin(targets, frames).all():
        missing = targets[~np.isin(targets, frames)]
        raise ValueError(f"target pts {missing.tolist()} are not in the frame index")
    key_idx = _preceding_keyframes(keys, targets)

    actions: list[DecodeAction] = []
    position: int | None = None  # pts of the last frame delivered; None = file start
    current: list[int] = []
    current_seek: int | None = None
    for target, k in zip(targets.tolist(), key_idx.tolist()):
        keyframe = int(keys[k]) if k >= 0 else None
        if position is None:
            # Nothing decoded yet: reading from the file start reaches the first frame
            # without a seek; any keyframe after it is worth seeking to.
            needs_seek = keyframe is not None and keyframe > frames[0]
        else:
            needs_seek = keyframe is not None and position < keyframe
        if needs_seek or not current:
            if current:
                actions.append(DecodeAction(current_seek, tuple(current)))
            current_seek = keyframe if needs_seek else None
            current = []
        current.append(target)
        position = target
    if current:
        actions.append(DecodeAction(current_seek, tuple(current)))
    return actions


def min_frames_needed(
    frame_pts: np.ndarray, keyframe_pts: np.ndarray, target_pts: np.ndarray
) -> int:
    """Frames that any keyframe-respecting decoder must produce to reach the targets.

    The union over targets of the frames from each target's preceding keyframe (the
    first frame of the file where none precedes it) up to the target, in display order.
    """
    frames = np.unique(np.asarray(frame_pts, dtype=np.int64))
    keys = np.unique(np.asarray(keyframe_pts, dtype=np.int64))
    targets = np.unique(np.asarray(target_pts, dtype=np.int64))
    if frames.size == 0 or targets.size == 0:
        return 0
    key_idx = _preceding_keyframes(keys, targets)
    if keys.size == 0:
        starts = np.full(targets.shape, frames[0])
    else:
        starts = np.where(key_idx >= 0, keys[key_idx.clip(0)], frames[0])
    needed = np.zeros(frames.size, dtype=bool)
    lo = np.searchsorted(frames, starts, side="left")
    hi = np.searchsorted(frames, targets, side="right")
    for a, b in zip(lo.tolist(), hi.tolist()):
        needed[a:b] = True
    return int(needed.sum())


def planned_frames(frame_pts: np.ndarray, actions: list[DecodeAction]) -> int:
    """Frames a plan decodes, assuming seeks land exactly on their keyframe.

    Used by tests and benchmarks to show that the plan meets ``min_frames_needed``.
    """
    frames = np.unique(np.asarray(frame_pts, dtype=np.int64))
    total = 0
    position_idx = -1  # index of the last frame decoded
    for action in actions:
        start_idx = (
            int(np.searchsorted(frames, action.seek_to_pts, side="left"))
            if action.seek_to_pts is not None
            else position_idx + 1
        )
        end_idx = int(np.searchsorted(frames, action.target_pts[-1], side="right")) - 1
        total += max(0, end_idx - start_idx + 1)
        position_idx = end_idx
    return total
