"""decode_clip on every file of the real-media set (skipped where it is absent).

The manifest's ``expect`` column says which modalities must come out; ``duration_s`` is
what a container-level probe saw, so our packet-measured duration must agree with it
within a tolerance (edit lists and encoder padding make the two differ slightly).
"""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from extract.decode import DecodeError, decode_clip

REALDATA = Path(__file__).resolve().parents[1].parent / "shared" / "realdata"
STEPS = 8
# Largest gap seen between packet-measured and container durations: skateboarding_dog.mp4,
# whose last frame lies 0.13 s past the edit list's end.
DURATION_TOLERANCE_S = 0.15


def manifest_rows() -> list[dict[str, str]]:
    manifest = REALDATA / "MANIFEST.tsv"
    if not manifest.is_file():
        return []
    with manifest.open(newline="") as handle:
        return list(csv.DictReader(handle, delimiter="\t"))


ROWS = manifest_rows()
pytestmark = pytest.mark.skipif(not ROWS, reason=f"real media not found at {REALDATA}")


@pytest.mark.parametrize("row", ROWS, ids=[r["path"] for r in ROWS])
def test_manifest_expectation_holds(row):
    path = REALDATA / row["path"]
    expect = row["expect"]
    if expect == "error":
        with pytest.raises(DecodeError) as caught:
            decode_clip(path, STEPS)
        message = str(caught.value)
        assert str(path) in message and len(message) > len(str(path)) + 30
        return

    clip = decode_clip(path, STEPS)
    assert clip.duration > 0
    if row["duration_s"]:
        assert clip.duration == pytest.approx(float(row["duration_s"]), abs=DURATION_TOLERANCE_S)
    assert clip.step_bounds.shape == (STEPS, 2) and clip.step_bounds[-1, 1] == clip.duration

    has_video = expect in ("audio+video", "video-only")
    has_audio = expect in ("audio+video", "audio-only")
    if has_video:
        assert clip.frames is not None and len(clip.frames) == STEPS
        assert all(isinstance(f, Image.Image) and f.mode == "RGB" for f in clip.frames)
        assert ((clip.frame_times >= -1e-6) & (clip.frame_times <= clip.duration)).all()
        assert np.all(np.diff(clip.frame_times) >= 0)
        assert clip.stats.frames_converted <= STEPS
        if clip.stats.mode == "planned":
            assert clip.stats.frames_decoded <= 1.05 * clip.stats.min_frames + 2
    else:
        assert clip.frames is None and clip.frame_times is None
    if has_audio:
        assert clip.audio is not None and clip.audio.dtype == np.float32
        assert len(clip.audio) == round(clip.duration * 16000)
        assert 0 < clip.audio_end <= clip.duration + 1e-6
        assert clip.audio_silent == ("digital silence" in row["notes"])
    else:
        assert clip.audio is None


@pytest.mark.skipif(not ROWS, reason="no real media")
def test_no_duration_webm_gets_its_duration_from_packets():
    clip = decode_clip(REALDATA / "video/moviepy/no_duration.webm", STEPS)
    assert clip.info.duration_source == "packets"
    # 74 frames at 14.985 fps end at 4.938 s; the opus track ends slightly earlier.
    assert clip.duration == pytest.approx(74 / 14.985, abs=0.02)
    assert clip.audio_end < clip.duration


@pytest.mark.skipif(not ROWS, reason="no real media")
@pytest.mark.parametrize(
    "name,size,rotation",
    [
        ("decord/video_0.mov", (568, 320), 0),
        ("decord/video_90.mov", (320, 568), 90),
        ("decord/video_180.mov", (568, 320), 180),
        ("decord/video_270.mov", (320, 568), 270),
        ("moviepy/fire2.mp4", (1280, 720), 180),
        ("video_llama/skateboarding_dog.mp4", (576, 1024), 0),
    ],
)
def test_rotated_videos_come_out_in_display_orientation(name, size, rotation):
    clip = decode_clip(REALDATA / "video" / name, 2)
    assert clip.rotation == rotation
    assert all(frame.size == size for frame in clip.frames)  # PIL size is (width, height)


@pytest.mark.skipif(not ROWS, reason="no real media")
def test_rotation_turns_the_picture_not_just_its_shape():
    """video_180 shows a keyboard upright; its stored picture is upside down."""
    import av

    clip = decode_clip(REALDATA / "video/decord/video_180.mov", 1)
    with av.open(str(REALDATA / "video/decord/video_180.mov")) as container:
        stored = next(container.decode(video=0)).to_ndarray(format="rgb24").astype(np.float64)
    shown = np.asarray(clip.frames[0], dtype=np.float64)
    # The frame nearest the 0.05 s centre is the second one, not the first: compare
    # against a 180-degree turn loosely (neighbouring frames are nearly identical).
    turned = np.abs(shown - stored[::-1, ::-1]).mean()
    unturned = np.abs(shown - stored).mean()
    assert turned < unturned / 2
