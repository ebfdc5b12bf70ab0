"""decode_clip on generated media whose content encodes time.

Each video frame shows its index in binary (16 black/white blocks) so the decoded
target frames can be identified exactly; the audio is a tone whose frequency steps at
known times, so each step's audio can be checked for alignment.
"""

from __future__ import annotations

import dataclasses
import time
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest

import extract.media_reader as media_reader
from cache_schema.errors import AvarError
from extract.decode import ClipTimeout, DecodeError, decode_all_frames_sequentially, decode_clip
from extract.media_reader import FrameGroup, MediaReader
from extract.probe import probe
from extract.sampling import step_centres, step_segments, target_frames

SIZE = 64  # 4x4 grid of 16-pixel blocks, one bit each
AUDIO_RATE = 48000


def index_image(index: int) -> np.ndarray:
    image = np.zeros((SIZE, SIZE, 3), np.uint8)
    for bit in range(16):
        if (index >> bit) & 1:
            row, col = divmod(bit, 4)
            image[row * 16 : (row + 1) * 16, col * 16 : (col + 1) * 16] = 255
    return image


def read_index(image) -> int:
    pixels = np.asarray(image.convert("L"), dtype=np.float64)
    value = 0
    for bit in range(16):
        row, col = divmod(bit, 4)
        if pixels[row * 16 + 4 : (row + 1) * 16 - 4, col * 16 + 4 : (col + 1) * 16 - 4].mean() > 128:
            value |= 1 << bit
    return value


def tone(seconds: float, schedule: list[tuple[float, float]], amplitude: float = 0.5) -> np.ndarray:
    """Mono float32 signal: ``schedule`` is (start time, frequency Hz; 0 = silence)."""
    t = np.arange(int(round(seconds * AUDIO_RATE))) / AUDIO_RATE
    out = np.zeros_like(t)
    for i, (start, freq) in enumerate(schedule):
        end = schedule[i + 1][0] if i + 1 < len(schedule) else seconds
        on = (t >= start) & (t < end)
        out[on] = amplitude * np.sin(2 * np.pi * freq * t[on]) if freq else 0.0
    return out.astype(np.float32)


def write_media(
    path: Path,
    frame_ms: list[int] | None = None,
    *,
    n_frames: int = 100,
    fps: int = 25,
    gop: int = 12,
    bframes: int = 2,
    audio: np.ndarray | None = None,
    audio_codec: str = "aac",
    audio_start: float = 0.0,
    video_codec: str = "libx264",
    rotation: float | None = None,
    image=index_image,
) -> Path:
    """Write a clip; ``frame_ms`` gives each frame's start in ms (VFR), else CFR ``fps``."""
    container = av.open(str(path), "w")
    video = container.add_stream(video_codec, rate=fps)
    video.width = video.height = SIZE
    video.pix_fmt = "yuv420p"
    video.codec_context.gop_size = gop
    if video_codec == "libx264":
        video.options = {
            "x264-params": f"keyint={gop}:min-keyint={gop}:scenecut=0:bframes={bframes}",
            "crf": "12",
            "preset": "veryfast",
        }
    else:
        video.codec_context.max_b_frames = bframes
        video.codec_context.bit_rate = 2_000_000
    if frame_ms is not None:
        video.codec_context.time_base = Fraction(1, 1000)
    if rotation is not None:
        video.set_display_rotation(rotation)
    stream_audio = None
    if audio is not None:
        stream_audio = container.add_stream(audio_codec, rate=AUDIO_RATE)
        stream_audio.layout = "mono"
    count = len(frame_ms) if frame_ms is not None else n_frames
    for i in range(count):
        frame = av.VideoFrame.from_ndarray(image(i), format="rgb24")
        if frame_ms is not None:
            frame.pts, frame.time_base = frame_ms[i], Fraction(1, 1000)
        for packet in video.encode(frame):
            container.mux(packet)
    for packet in video.encode():
        container.mux(packet)
    if stream_audio is not None:
        size = stream_audio.codec_context.frame_size or 1024
        offset = int(round(audio_start * AUDIO_RATE))
        for start in range(0, len(audio), size):
            chunk = audio[None, start : start + size]
            frame = av.AudioFrame.from_ndarray(np.ascontiguousarray(chunk), format="flt", layout="mono")
            frame.sample_rate = AUDIO_RATE
            frame.pts, frame.time_base = offset + start, Fraction(1, AUDIO_RATE)
            for packet in stream_audio.encode(frame):
                container.mux(packet)
        for packet in stream_audio.encode():
            container.mux(packet)
    container.close()
    return path


def dominant_frequency(samples: np.ndarray, rate: int = 16000) -> float:
    spectrum = np.abs(np.fft.rfft(samples * np.hanning(len(samples))))
    return float(np.fft.rfftfreq(len(samples), 1 / rate)[spectrum.argmax()])


SEGMENT = 0.4
FREQS = [300.0, 500.0, 700.0, 900.0, 1100.0, 1300.0, 1500.0, 1700.0, 1900.0, 2100.0]


@pytest.fixture(scope="module")
def media(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("media")


@pytest.fixture(scope="module")
def cfr_clip(media) -> Path:
    """4 s, 25 fps, GOP 12 with B-frames; audio tone steps every 0.4 s."""
    schedule = [(i * SEGMENT, f) for i, f in enumerate(FREQS)]
    return write_media(media / "cfr.mp4", audio=tone(4.0, schedule))


@pytest.fixture(scope="module")
def vfr_clip(media) -> tuple[Path, list[int]]:
    rng = np.random.default_rng(3)
    starts = np.cumsum(np.r_[0, rng.choice([20, 40, 90], size=79)]).tolist()
    return write_media(media / "vfr.mp4", starts), starts


def test_cfr_targets_are_the_frames_nearest_each_centre(cfr_clip):
    clip = decode_clip(cfr_clip, 10)
    assert clip.duration == pytest.approx(4.0, abs=1e-6)
    np.testing.assert_allclose(clip.step_times, (np.arange(10) + 0.5) * 0.4)
    got = [read_index(image) for image in clip.frames]
    expected = [int(np.argmin(np.abs(np.arange(100) / 25 - c))) for c in clip.step_times]
    assert got == expected
    np.testing.assert_allclose(clip.frame_times, np.array(expected) / 25, atol=1e-9)
    assert clip.stats.mode == "planned"


def test_vfr_targets_are_the_frames_nearest_each_centre(vfr_clip):
    path, starts_ms = vfr_clip
    seconds = np.array(starts_ms) / 1000
    clip = decode_clip(path, 9)
    got = [read_index(image) for image in clip.frames]
    expected = [int(np.argmin(np.abs(seconds - c))) for c in clip.step_times]
    assert got == expected
    np.testing.assert_allclose(clip.frame_times, seconds[expected], atol=1e-9)


def test_decodes_no_more_than_the_plan_minimum_and_converts_only_targets(cfr_clip):
    clip = decode_clip(cfr_clip, 10)
    stats = clip.stats
    assert stats.min_frames > 0
    assert stats.frames_decoded <= 1.05 * stats.min_frames + 2
    assert stats.frames_decoded < 100  # far fewer than the whole clip
    assert stats.seeks >= 1
    assert stats.frames_converted == len({read_index(f) for f in clip.frames}) == 10
    full = decode_all_frames_sequentially(cfr_clip)
    assert full == 100


def test_frame_transform_is_applied_once_per_target(cfr_clip):
    calls = []

    def transform(image):
        calls.append(image.size)
        return np.asarray(image, dtype=np.float32).mean(axis=2)

    clip = decode_clip(cfr_clip, 5, frame_transform=transform)
    assert len(calls) == 5
    assert all(isinstance(f, np.ndarray) and f.shape == (SIZE, SIZE) for f in clip.frames)


def test_step_audio_is_aligned_with_its_segment(cfr_clip):
    clip = decode_clip(cfr_clip, 10)
    assert clip.audio is not None and clip.audio.dtype == np.float32
    assert len(clip.audio) == 64000
    bounds = clip.audio_sample_bounds
    assert bounds[0, 0] == 0 and bounds[-1, 1] == 64000
    assert (np.diff(bounds, axis=1) == 6400).all()
    for step in range(10):
        samples = clip.step_audio(step)
        assert len(samples) == 6400
        assert dominant_frequency(samples[800:-800]) == pytest.approx(FREQS[step], abs=15)
    # The change from 300 Hz to 500 Hz sits at 0.4 s = sample 6400, within a few ms.
    win = 160  # 10 ms
    def freq_at(centre):
        return dominant_frequency(clip.audio[centre - win : centre + win])
    assert freq_at(6400 - 2 * win) == pytest.approx(300, abs=60)
    assert freq_at(6400 + 2 * win) == pytest.approx(500, abs=60)
    assert clip.audio_end == pytest.approx(4.0, abs=0.01)
    assert not clip.audio_silent


def test_late_and_short_audio_is_zero_outside_its_span(media):
    path = write_media(
        media / "late.mkv", n_frames=75, audio=tone(1.0, [(0.0, 440.0)]),
        audio_codec="libopus", audio_start=1.0,
    )
    clip = decode_clip(path, 3)
    assert clip.duration == pytest.approx(3.0, abs=0.05)
    assert clip.audio_end == pytest.approx(2.0, abs=0.03)
    assert np.abs(clip.step_audio(0)[:-160]).max() < 1e-3  # silent until ~1 s
    assert np.abs(clip.step_audio(2)[160:]).max() < 1e-3  # and again after ~2 s
    assert np.sqrt(np.mean(clip.step_audio(1) ** 2)) > 0.3
    onset = int(np.argmax(np.abs(clip.audio) > 0.1)) / 16000
    assert onset == pytest.approx(1.0, abs=0.01)


def test_video_only_clip_has_no_audio(media):
    clip = decode_clip(write_media(media / "silent.mp4", n_frames=20), 4)
    assert clip.audio is None and clip.audio_end == 0.0 and not clip.audio_silent
    assert len(clip.frames) == 4


def test_more_steps_than_frames_share_frames(media):
    path = write_media(media / "four.mp4", n_frames=4, gop=4, bframes=0)
    clip = decode_clip(path, 10)
    got = [read_index(f) for f in clip.frames]
    assert got == sorted(got) and set(got) == {0, 1, 2, 3}
    assert clip.stats.frames_converted == 4
    for i in range(1, 10):  # steps that share a frame share one object
        assert (clip.frames[i] is clip.frames[i - 1]) == (got[i] == got[i - 1])


@pytest.mark.parametrize("degrees", [90, -90, 180])
def test_rotation_metadata_gives_display_orientation(media, degrees):
    def marked(i):
        image = np.zeros((SIZE, SIZE, 3), np.uint8)
        image[:16, :32] = 255  # a bar across the top-left: not symmetric
        return image

    path = write_media(media / f"rot{degrees}.mp4", n_frames=5, rotation=degrees, image=marked)
    clip = decode_clip(path, 1)
    shown = np.asarray(clip.frames[0].convert("L"), dtype=np.float64) > 128
    # VideoFrame.rotation is counter-clockwise: the player turns the picture that way.
    expected = np.rot90(marked(0)[:, :, 0] > 128, k=degrees // 90)
    assert (shown == expected).mean() > 0.97
    assert clip.rotation == (-degrees) % 360


def test_avi_falls_back_to_display_order_timing(media):
    path = write_media(media / "clip.avi", n_frames=50, video_codec="mpeg4", bframes=2)
    clip = decode_clip(path, 5)
    assert clip.stats.mode == "sequential-ordinal"
    got = [read_index(f) for f in clip.frames]
    expected = [int(np.argmin(np.abs(np.arange(50) / 25 - c))) for c in clip.step_times]
    assert all(abs(g - e) <= 1 for g, e in zip(got, expected)), (got, expected)
    assert clip.stats.frames_converted == 5


def _patched_probe(monkeypatch, change):
    real = media_reader.probe

    def fake(path, **kwargs):
        info = real(path, **kwargs)
        return dataclasses.replace(info, video=change(info.video))

    monkeypatch.setattr(media_reader, "probe", fake)


def test_missing_keyframe_flags_fall_back_to_one_sequential_pass(cfr_clip, monkeypatch):
    planned = [read_index(f) for f in decode_clip(cfr_clip, 10).frames]
    _patched_probe(monkeypatch, lambda v: dataclasses.replace(v, keyframe_pts=v.keyframe_pts[:0]))
    clip = decode_clip(cfr_clip, 10)
    assert clip.stats.mode == "sequential-pts" and clip.stats.seeks == 0
    assert [read_index(f) for f in clip.frames] == planned
    assert clip.stats.frames_converted == 10


def test_untrusted_pts_fall_back_to_display_order(cfr_clip, monkeypatch):
    planned = [read_index(f) for f in decode_clip(cfr_clip, 10).frames]
    _patched_probe(monkeypatch, lambda v: dataclasses.replace(v, pts_reliable=False, pts_note="test"))
    clip = decode_clip(cfr_clip, 10)
    assert clip.stats.mode == "sequential-ordinal"
    assert [read_index(f) for f in clip.frames] == planned


def test_a_wrong_keyframe_index_is_detected_and_recovered(cfr_clip, monkeypatch):
    planned = [read_index(f) for f in decode_clip(cfr_clip, 10).frames]
    # Claim that every frame is a keyframe: seeks then land on the real keyframe before.
    _patched_probe(monkeypatch, lambda v: dataclasses.replace(v, keyframe_pts=v.frame_pts))
    clip = decode_clip(cfr_clip, 10)
    assert [read_index(f) for f in clip.frames] == planned
    assert clip.stats.mode == "sequential-pts" and clip.stats.fallback_reason


def test_past_deadline_raises_clip_timeout(cfr_clip):
    with pytest.raises(ClipTimeout, match="deadline"):
        decode_clip(cfr_clip, 4, deadline=time.monotonic() - 1)


def test_undecodable_audio_leaves_video_and_says_why(media):
    """An mp3 stream whose packets are noise: audio missing, video intact."""
    path = media / "bad_audio.mkv"
    container = av.open(str(path), "w")
    video = container.add_stream("libx264", rate=25)
    video.width = video.height = SIZE
    video.pix_fmt = "yuv420p"
    audio = container.add_stream("mp3", rate=44100)
    audio.layout = "mono"
    for i in range(25):
        for packet in video.encode(av.VideoFrame.from_ndarray(index_image(i), format="rgb24")):
            container.mux(packet)
    for packet in video.encode():
        container.mux(packet)
    rng = np.random.default_rng(0)
    for i in range(30):
        packet = av.Packet(rng.integers(0, 256, 400, dtype=np.uint8).tobytes())
        packet.stream = audio
        packet.pts = packet.dts = i * 26
        packet.time_base = Fraction(1, 1000)
        container.mux(packet)
    container.close()
    clip = decode_clip(path, 2)
    assert clip.audio is None and clip.audio_error
    assert clip.duration == pytest.approx(1.0)
    assert [read_index(f) for f in clip.frames] == [6, 19]  # nearest 0.25 s and 0.75 s


def test_unreadable_files_raise_decode_error(media, cfr_clip):
    empty = media / "empty.mp4"
    empty.write_bytes(b"")
    text = media / "text.mp4"
    text.write_text("this is not a video\n" * 50)
    truncated = media / "truncated.mp4"
    truncated.write_bytes(cfr_clip.read_bytes()[: cfr_clip.stat().st_size * 6 // 10])
    data_only = media / "data.ts"
    container = av.open(str(data_only), "w")
    stream = container.add_data_stream("klv")
    for i in range(3):
        packet = av.Packet(b"payload!" * 8)
        packet.stream, packet.pts, packet.dts = stream, i * 10, i * 10
        packet.time_base = Fraction(1, 1000)
        container.mux(packet)
    container.close()
    for path, reason in [
        (empty, "empty"),
        (text, "cannot open"),
        (truncated, "cannot open"),
        (data_only, "no audio or video"),
        (media / "missing.mp4", "no such file"),
    ]:
        began = time.monotonic()
        with pytest.raises(DecodeError, match=reason):
            decode_clip(path, 4)
        assert time.monotonic() - began < 5


def test_truncated_streamable_file_decodes_what_is_there_or_raises(media, caplog):
    whole = write_media(media / "whole.mkv", n_frames=100, audio=tone(4.0, [(0.0, 440.0)]),
                        audio_codec="libopus")
    cut = media / "cut.mkv"
    cut.write_bytes(whole.read_bytes()[: whole.stat().st_size // 2])
    try:
        clip = decode_clip(cut, 4, deadline=time.monotonic() + 20)
    except DecodeError as exc:
        assert str(cut) in str(exc)
    else:
        assert 0 < clip.duration < 3.5
        assert len(clip.frames) == 4
        assert "looks truncated" in caplog.text


def test_probe_reports_streams_and_index_without_decoding(cfr_clip):
    info = probe(cfr_clip)
    assert info.has_video and info.has_audio
    assert info.video.frame_pts.size == 100
    keys = info.video.pts_to_seconds(info.video.keyframe_pts)
    np.testing.assert_allclose(keys, np.arange(0, 100, 12) / 25)
    assert info.duration == pytest.approx(4.0, abs=1e-6) and info.duration_source == "packets"
    centres = step_centres(step_segments(info.duration, 10))
    times = info.video.pts_to_seconds(info.video.frame_pts) - info.start
    assert target_frames(times, centres).tolist() == [
        int(np.argmin(np.abs(np.arange(100) / 25 - c))) for c in centres
    ]


def _damaged_clip(media: Path) -> Path:
    """100 frames, GOP 25 without B-frames; packet 60 of GOP [50, 75) is overwritten with noise."""
    damaged = media / "damaged.mp4"
    if damaged.exists():
        return damaged
    path = write_media(media / "gop25.mp4", n_frames=100, gop=25, bframes=0)
    with av.open(str(path)) as container:
        packets = [p for p in container.demux(video=0) if p.size]
    bad = next(p for p in packets if p.pts * p.time_base == Fraction(60, 25))
    data = bytearray(path.read_bytes())
    data[bad.pos : bad.pos + bad.size] = np.random.default_rng(0).integers(0, 256, bad.size, dtype=np.uint8).tobytes()
    damaged.write_bytes(bytes(data))
    return damaged


def test_damaged_video_fails_only_steps_that_depend_on_the_damage(media, monkeypatch):
    damaged = _damaged_clip(media)
    clip = decode_clip(damaged, 2)  # frames 25 and 75: a seek skips the damage
    assert [read_index(f) for f in clip.frames] == [25, 75]
    with pytest.raises(DecodeError, match=r"damaged.*2\.400 s"):
        decode_clip(damaged, 4)  # frame 62 depends on packet 60
    # A sequential pass reads through the damage; the next keyframe (75) heals it.
    _patched_probe(monkeypatch, lambda v: dataclasses.replace(v, keyframe_pts=v.keyframe_pts[:0]))
    clip = decode_clip(damaged, 2)
    assert [read_index(f) for f in clip.frames] == [25, 75]
    assert clip.stats.video_packets_failed == 1


# ------------------------------------------------------------------ the engine itself


def test_reader_groups_fail_only_where_their_chosen_frame_is_damaged(media):
    """Groups of targets come out in order; the one whose frame 65 depends on the damaged
    packet 60 carries the error, its neighbours (before the damage, after keyframe 75)
    are whole, and a frame shared by two groups is converted once."""
    reader = MediaReader(_damaged_clip(media))
    groups = np.array([[1.0, 1.48], [2.2, 2.6], [3.2, 3.6], [3.6, 3.8]])  # frames 25 37 | 55 65 | 80 90 | 90 95
    got: list[FrameGroup] = []
    reader.read_frames(groups, got.append)
    assert [g.index for g in got] == [0, 1, 2, 3]
    assert [read_index(f) for f in got[0].frames] == [25, 37]
    assert got[1].frames is None and got[1].times is None and "2.400 s" in got[1].error
    assert [read_index(f) for f in got[2].frames] == [80, 90]
    assert got[3].frames[0] is got[2].frames[1]
    np.testing.assert_allclose(got[3].times, [3.6, 3.8], atol=1e-9)
    assert reader.stats.mode == "planned" and reader.stats.seeks == 3
    assert reader.stats.frames_converted == 6  # 25 37 55 80 90 95; the tainted 65 is not converted


def test_reader_stops_once_every_waiting_group_has_failed(media):
    """One group (a clip) whose first frame depends on the damage: the decode stops there
    instead of reading on to the group's later frames (90 would need frames 75-90)."""
    reader = MediaReader(_damaged_clip(media))
    with pytest.raises(DecodeError, match=r"damaged.*2\.400 s"):
        reader.frames_at(np.array([2.6, 3.6]))
    assert reader.stats.seeks == 1 and reader.stats.frames_decoded <= 16  # frames 50-66 less the lost 60
    assert reader.stats.frames_converted == 0


def test_reader_audio_whole_and_lazy_by_ranges_agree(cfr_clip):
    """The track gathered during the probe equals the lazy one on its own handle, read in
    ranges with everything behind released."""
    gathered = MediaReader(cfr_clip, gather_audio_rate=16000)
    whole, covered = gathered.gathered_audio().read(0, 64000)
    assert covered == 64000
    with MediaReader(cfr_clip, info=gathered.info).open_audio(16000) as track:
        for lo in range(0, 64000, 6000):
            hi = min(lo + 8000, 64000)
            part, _ = track.read(lo, hi)
            assert np.array_equal(part, whole[lo:hi])
            track.release(lo + 6000)
        assert track.failed == 0


def test_decode_error_is_an_expected_failure():
    assert issubclass(DecodeError, AvarError) and issubclass(ClipTimeout, AvarError)
