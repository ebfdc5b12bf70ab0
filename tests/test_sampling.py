"""Step segments, nearest-frame targets and the keyframe-aware decode plan."""

from __future__ import annotations

import numpy as np
import pytest

from extract.sampling import (
    DecodeAction,
    min_frames_needed,
    plan_decode,
    planned_frames,
    step_centres,
    step_segments,
    target_frames,
)


def test_step_segments_cover_the_clip_in_equal_parts():
    bounds = step_segments(10.0, 4)
    np.testing.assert_allclose(bounds, [[0, 2.5], [2.5, 5], [5, 7.5], [7.5, 10]])
    np.testing.assert_allclose(step_centres(bounds), [1.25, 3.75, 6.25, 8.75])
    odd = step_segments(0.1, 3)
    assert odd[-1, 1] == 0.1 and (odd[1:, 0] == odd[:-1, 1]).all()


@pytest.mark.parametrize("duration,steps", [(0.0, 4), (-1.0, 4), (float("nan"), 4), (1.0, 0)])
def test_step_segments_reject_impossible_requests(duration, steps):
    with pytest.raises(ValueError):
        step_segments(duration, steps)


def test_target_frames_pick_the_nearest_and_the_earlier_on_ties():
    times = np.array([0.0, 0.25, 0.75, 1.5])  # binary fractions: ties are exact
    centres = np.array([-1.0, 0.1, 0.125, 0.2, 0.5, 1.125, 1.2, 9.0])
    assert target_frames(times, centres).tolist() == [0, 0, 0, 1, 1, 2, 3, 3]


def cfr(n: int) -> np.ndarray:
    return np.arange(n, dtype=np.int64) * 10  # pts step 10


def test_plan_seeks_to_the_keyframe_before_each_distant_target():
    frames, keys = cfr(100), np.arange(0, 1000, 100)  # GOP of 10 frames
    plan = plan_decode(frames, keys, np.array([50, 550]))
    assert plan == [DecodeAction(None, (50,)), DecodeAction(500, (550,))]
    assert min_frames_needed(frames, keys, [50, 550]) == 6 + 6
    assert planned_frames(frames, plan) == 12


def test_plan_continues_when_already_past_the_targets_keyframe():
    frames, keys = cfr(100), np.array([0, 200, 400])
    # 250 and 350 share keyframe 200: after 250 the decoder is past it, so go on.
    assert plan_decode(frames, keys, [250, 350]) == [DecodeAction(200, (250, 350))]
    # 450's keyframe 400 lies beyond 350: seek.
    assert plan_decode(frames, keys, [250, 450]) == [
        DecodeAction(200, (250,)),
        DecodeAction(400, (450,)),
    ]
    # Sitting exactly on the keyframe counts as past it.
    assert plan_decode(frames, keys, [200, 210]) == [DecodeAction(200, (200, 210))]


def test_plan_from_the_file_start_needs_no_seek():
    frames, keys = cfr(50), np.array([0, 200])
    assert plan_decode(frames, keys, [30, 100]) == [DecodeAction(None, (30, 100))]
    # A target before the first flagged keyframe is decoded from the start too...
    assert plan_decode(frames, np.array([100, 300]), [50]) == [DecodeAction(None, (50,))]
    assert min_frames_needed(frames, np.array([100, 300]), [50]) == 6
    # ...but frames before the first keyframe are skipped by seeking when not needed.
    assert plan_decode(frames, np.array([100, 300]), [150]) == [DecodeAction(100, (150,))]


def test_plan_sorts_and_merges_duplicate_targets():
    frames, keys = cfr(100), np.arange(0, 1000, 100)
    messy = np.array([550, 50, 50, 550, 550])
    assert plan_decode(frames, keys, messy) == plan_decode(frames, keys, [50, 550])
    assert min_frames_needed(frames, keys, messy) == 12


def test_plan_rejects_targets_that_are_not_frames():
    with pytest.raises(ValueError, match="not in the frame index"):
        plan_decode(cfr(10), np.array([0]), [15])


def brute_force_minimum(frames, keys, targets) -> int:
    needed = set()
    for t in set(targets):
        before = [k for k in keys if k <= t]
        start = max(before) if before else min(frames)
        needed |= {f for f in frames if start <= f <= t}
    return len(needed)


@pytest.mark.parametrize("seed", range(40))
def test_plan_decodes_exactly_the_minimum(seed):
    rng = np.random.default_rng(seed)
    n = int(rng.integers(1, 300))
    frames = np.sort(rng.choice(10 * n, size=n, replace=False)).astype(np.int64)
    keys = np.sort(rng.choice(frames, size=int(rng.integers(1, max(2, n // 5))), replace=False))
    if rng.random() < 0.5:
        keys = np.unique(np.r_[frames[0], keys])
    targets = rng.choice(frames, size=int(rng.integers(1, 12)))
    plan = plan_decode(frames, keys, targets)
    minimum = min_frames_needed(frames, keys, targets)
    assert minimum == brute_force_minimum(frames.tolist(), keys.tolist(), targets.tolist())
    assert planned_frames(frames, plan) == minimum
    delivered = [t for action in plan for t in action.target_pts]
    assert delivered == sorted(set(targets.tolist()))
    for action in plan:
        if action.seek_to_pts is not None:  # always the keyframe right before its first target
            first = action.target_pts[0]
            assert action.seek_to_pts == keys[keys <= first].max()
