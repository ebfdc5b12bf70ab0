"""The synthetic benchmark: real media that decodes as its metadata promises, the same
content for the same seed, shares that hold, and nothing but the content that depends on
the class."""

from __future__ import annotations

import math
import re
import shutil
from collections import Counter
from pathlib import Path

import av
import numpy as np
import pytest

from synth import CLASSES, PAIRS, RECIPES, SynthConfig, generate, plan_clips, read_meta

# Short clips, every container present, a few variable-frame-rate clips.
QUICK = dict(duration_range=(1.0, 1.6), long_share=0.0, other_container_share=0.6, variable_fps_share=0.3)
CFG = SynthConfig(clips_per_class=2, seed=7, **QUICK)


@pytest.fixture(scope="module")
def bench(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("synth")
    generate(out, CFG, workers=2)
    return out


def _decode(path: Path) -> tuple[list[float], np.ndarray, np.ndarray | None, dict]:
    """Presentation times, frames [N, H, W, 3] and audio [C, S] (or None) of a file."""
    with av.open(str(path)) as c:
        info = {"vcodec": c.streams.video[0].codec_context.name,
                "audio": [(s.codec_context.name, s.sample_rate, s.channels) for s in c.streams.audio]}
        times, frames = [], []
        for f in c.decode(video=0):
            times.append(float(f.pts * f.time_base))
            frames.append(f.to_ndarray(format="rgb24"))
    audio = None
    if info["audio"]:
        with av.open(str(path)) as c:
            audio = np.concatenate([f.to_ndarray() for f in c.decode(audio=0)], axis=1)
    return times, np.stack(frames), audio, info


def test_layout_metadata_and_groups(bench: Path) -> None:
    meta = read_meta(bench)
    clips = meta["clips"]
    assert meta["classes"] == list(CLASSES) and len(clips) == 10 * CFG.clips_per_class
    assert Counter(c["class"] for c in clips) == {c: CFG.clips_per_class for c in CLASSES}
    files = sorted(p.relative_to(bench).as_posix() for p in bench.rglob("*") if p.is_file()
                   and p.name not in ("synth_meta.json", "groups.tsv"))
    assert files == sorted(c["key"] for c in clips)
    for c in clips:
        # The name says nothing beyond the class folder.
        assert re.fullmatch(rf"{c['class']}/clip_\d{{4}}\.{c['container']}", c["key"])
        assert c["width"] % 2 == 0 and c["height"] % 2 == 0
        lo, hi = CFG.duration_range
        assert lo <= c["duration"] <= hi
        for e in c["events"]:
            assert 0 <= e["start"] < e["end"] <= c["duration"]
            assert e["end"] - e["start"] >= 0.1 * c["duration"]  # at least one step of ten
        assert (c["event_window"] is None) == (c["class"] == "normal")
    lines = (bench / "groups.tsv").read_text().splitlines()
    assert lines[0] == "key\tgroup"
    groups = dict(line.split("\t") for line in lines[1:])
    assert groups == {c["key"]: c["group"] for c in clips}
    sizes = Counter(groups.values())
    assert max(sizes.values()) <= 3 and min(sizes.values()) >= 1
    # Sources are shared across classes, so the background never names the class.
    by_group: dict[str, set[str]] = {}
    for c in clips:
        by_group.setdefault(c["group"], set()).add(c["class"])
    assert any(len(v) > 1 for v in by_group.values())


def test_every_file_decodes_as_promised(bench: Path) -> None:
    for c in read_meta(bench)["clips"]:
        times, frames, audio, info = _decode(bench / c["key"])
        assert info["vcodec"] == c["vcodec"]
        assert frames.shape[1:] == (c["height"], c["width"], 3)
        assert len(times) == c["n_frames"]
        steps = np.diff(times)
        assert (steps > 0).all()
        irregular = steps.std() / steps.mean() > 0.05
        assert irregular == c["variable_fps"], c["key"]
        if not c["variable_fps"]:
            assert steps.mean() == pytest.approx(1 / c["fps"], rel=1e-3)
        assert times[-1] <= c["duration"] + 1e-6
        if not c["has_audio"]:
            assert info["audio"] == [] and audio is None
            continue
        (name, rate, channels), = info["audio"]
        assert name.startswith(c["acodec"]) and rate == c["sample_rate"] and channels == c["channels"]
        assert audio.shape[0] == c["channels"]
        assert audio.shape[1] / rate == pytest.approx(c["duration"], abs=0.1)
        if c["silent_audio"]:
            assert np.abs(audio).max() < 1e-4
        else:
            assert np.sqrt(np.mean(np.square(audio, dtype=np.float64))) > 0.003


def test_every_container_and_codec_is_written(bench: Path) -> None:
    clips = read_meta(bench)["clips"]
    assert {(c["container"], c["vcodec"]) for c in clips} == {
        ("mp4", "h264"), ("webm", "vp9"), ("avi", "mpeg4"), ("mkv", "h264")}
    audio = {(c["container"], c["acodec"]) for c in clips if c["has_audio"]}
    assert {("mp4", "aac"), ("webm", "opus"), ("avi", "mp3")} <= audio
    assert all(c["sample_rate"] == 48000 for c in clips if c["acodec"] == "opus")
    assert any(c["variable_fps"] for c in clips)


def _content(root: Path, key: str) -> tuple[np.ndarray, np.ndarray | None]:
    _, frames, audio, _ = _decode(root / key)
    return frames, audio


def test_same_seed_same_content_and_stable_prefix(bench: Path, tmp_path: Path) -> None:
    """Regenerating with fewer clips per class (and one worker) over a copy of the
    benchmark gives bit-identical decoded content for the clips both runs hold, and
    removes the clips the smaller run no longer has."""
    again = tmp_path / "again"
    shutil.copytree(bench, again)
    small = SynthConfig(clips_per_class=1, seed=CFG.seed, **QUICK)
    clips = generate(again, small, workers=1)
    old = {c["key"]: c for c in read_meta(bench)["clips"]}
    assert sorted(p.name for p in (again / "normal").iterdir()) == [Path(clips[CLASSES.index("normal")].key).name]
    for c in clips:
        assert c.to_meta() == old[c.key]
        f1, a1 = _content(bench, c.key)
        f2, a2 = _content(again, c.key)
        np.testing.assert_array_equal(f1, f2)
        assert (a1 is None) == (a2 is None)
        if a1 is not None:
            np.testing.assert_array_equal(a1, a2)


def test_another_seed_changes_content() -> None:
    a = plan_clips(SynthConfig(clips_per_class=1, seed=1, **QUICK))
    b = plan_clips(SynthConfig(clips_per_class=1, seed=2, **QUICK))
    assert [j.clip.events for j in a] != [j.clip.events for j in b]
    assert [j.plan.scene for j in a] != [j.plan.scene for j in b]


@pytest.mark.parametrize("n", [1, 2, 3, 7, 16])
def test_shares_are_exact_up_to_rounding(n: int) -> None:
    cfg = SynthConfig(clips_per_class=n, no_audio_share=0.1, silent_audio_share=0.15, long_share=0.05,
                      other_container_share=0.25)
    clips = [j.clip for j in plan_clips(cfg)]
    total = len(clips)

    def within(count: int, share: float) -> bool:
        return math.floor(share * total) <= count <= math.ceil(share * total)

    assert within(sum(not c.has_audio for c in clips), cfg.no_audio_share)
    assert within(sum(c.silent_audio for c in clips), cfg.silent_audio_share)
    assert within(sum(c.duration >= cfg.long_range[0] for c in clips), cfg.long_share)
    assert within(sum(c.container != "mp4" for c in clips), cfg.other_container_share)
    assert not any(c.silent_audio and not c.has_audio for c in clips)


def test_format_is_independent_of_class() -> None:
    """The format draws come from their own stream: every class sees the same spread of
    containers, audio presence, resolutions, frame rates and durations."""
    clips = [j.clip for j in plan_clips(SynthConfig(clips_per_class=40, seed=3))]
    by_class = {c: [x for x in clips if x.label == c] for c in CLASSES}
    containers_in = Counter(k for c in CLASSES for k in {x.container for x in by_class[c]})
    assert all(containers_in[k] >= 8 for k in ("mp4", "webm", "avi", "mkv"))
    for c, xs in by_class.items():
        assert 0.5 <= np.mean([x.container == "mp4" for x in xs]) <= 0.95, c
        assert np.mean([not x.has_audio for x in xs]) <= 0.3, c
        assert len({(x.width, x.height) for x in xs}) >= 6, c
        assert len({x.fps for x in xs}) >= 5, c
    means = [np.mean([x.duration for x in xs]) for xs in by_class.values()]
    assert max(means) - min(means) < 2.0


def test_pairs_differ_in_exactly_the_designed_factor() -> None:
    def parts(cls: str) -> tuple[list, list, str]:
        r = RECIPES[cls]
        return [v for _, v, _ in r["events"] if v], [a for _, _, a in r["events"] if a], r["timing"]

    kinds = Counter(kind for _, _, kind in PAIRS)
    assert all(kinds[k] >= 2 for k in ("audio", "video", "order"))
    assert {c for a, b, _ in PAIRS for c in (a, b)} == set(CLASSES)
    for a, b, kind in PAIRS:
        (va, aa, ta), (vb, ab, tb) = parts(a), parts(b)
        if kind == "audio":  # same visual (placed alike), different sound
            assert va == vb and aa != ab and (ta == tb or not va)
        elif kind == "video":  # same soundscape, different picture
            assert aa == ab and va != vb and (ta == tb or not aa)
        else:  # the same events, arranged differently in time
            assert sorted(va) == sorted(vb) and sorted(aa) == sorted(ab) and (ta, va) != (tb, vb)
    # Every class has its own (video, audio, timing) signature.
    assert len({str(parts(c)) for c in CLASSES}) == len(CLASSES)


def test_order_pairs_place_events_as_designed() -> None:
    clips = {(j.clip.label, j.clip.index): j.clip for j in plan_clips(SynthConfig(clips_per_class=5, seed=0))}
    for i in range(5):
        ex, cr = clips["explosion", i], clips["crash", i]
        assert [e["name"] for e in ex.events] == ["bang", "vehicle"]
        assert [e["name"] for e in cr.events] == ["vehicle", "bang"]
        br, va = clips["brawling", i], clips["vandalism", i]
        assert br.events[0]["end"] <= 0.5 * br.duration <= va.events[0]["start"]


def test_event_times_match_the_content(bench: Path) -> None:
    """The metadata's event windows are where the content changes: the sound is louder
    inside an audio event, and frames differ from the empty scene inside a visual one."""
    for c in read_meta(bench)["clips"]:
        if not c["events"]:
            continue
        times, frames, audio, _ = _decode(bench / c["key"])
        times = np.asarray(times)
        win, near = np.zeros(len(times), bool), np.zeros(len(times), bool)
        for e in c["events"]:
            if e["video"]:
                win |= (times >= e["start"] + 0.05) & (times < e["end"] - 0.05)
                near |= (times >= e["start"] - 0.05) & (times < e["end"] + 0.05)
        if win.any() and (~near).sum() >= 2:
            ref = np.median(frames[~near].astype(np.float32), axis=0)
            inside = np.abs(frames[win] - ref).mean()
            outside = np.abs(frames[~near] - ref).mean()
            assert inside > 2 * outside + 3, (c["key"], inside, outside)
        if audio is not None and not c["silent_audio"] and any(e["audio"] for e in c["events"]):
            rate = c["sample_rate"]
            x = audio.mean(0)
            t = np.arange(x.size) / rate
            ev = np.zeros(x.size, bool)
            for e in c["events"]:
                if e["audio"]:
                    ev |= (t >= e["start"]) & (t < e["end"])
            if (~ev).sum() > 0.1 * rate:
                rms_in = np.sqrt(np.mean(x[ev] ** 2))
                rms_out = np.sqrt(np.mean(x[~ev] ** 2))
                assert rms_in > 2 * rms_out, (c["key"], rms_in, rms_out)


def test_config_validation() -> None:
    with pytest.raises(ValueError):
        SynthConfig(no_audio_share=0.7, silent_audio_share=0.5)
    with pytest.raises(ValueError):
        SynthConfig(clips_per_class=0)
    with pytest.raises(ValueError):
        SynthConfig(seed=-1)
    with pytest.raises(ValueError):
        SynthConfig(sizes=((161, 120),))
    with pytest.raises(ValueError):
        SynthConfig(duration_range=(5.0, 3.0))
