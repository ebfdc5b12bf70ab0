"""Predict on raw video: windows decoded in one pass, JSON and table output, a timeline
that peaks at a known event, refusal of runs whose backbones differ, error entries for
unreadable files, and the Figure-5 plot.

A small benchmark is built once per session (``synthetic_run``): 16 "normal" and 16
"explosion" clips rendered by ``synth``'s scene renderer (a calm scene; a bang and a
vehicle), extracted with the tiny backbones and an MTCN trained on them. The long test
video is a calm 30 s scene of an unseen source with an explosion centred at 15 s.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from extract.decode import decode_clip
from extract.probe import probe
from extract.sampling import min_frames_needed, target_frames
from extract.windows import decode_windows, plan_windows, window_steps
from tests.media_factory import write_clip as write_test_clip

CLASSES = ("explosion", "normal")
SIZE, FPS, SR = (128, 96), 12, 16000
LONG_DURATION, EVENT_AT, EVENT_SPAN = 30.0, 15.0, 5.0
WINDOW, HOP = 5.0, 2.5


pytestmark = pytest.mark.usefixtures("one_thread")


def render(path: Path, label: str, duration: float, seed: int, event_at: float | None = None,
           event_span: float | None = None, container: str = "mp4", acodec: str = "aac") -> tuple:
    """A synthetic scene of ``label``; the events are drawn for a clip of ``event_span``
    seconds and centred at ``event_at`` (default: spread over the whole clip as in synth)."""
    from synth.encode import write_clip
    from synth.scenes import ClipPlan, draw_events, draw_nuisance, draw_scene, render_audio, render_frames

    rng = np.random.default_rng([seed, 1])
    scene = draw_scene(np.random.default_rng([seed, 7]), f"src{seed}")
    events: tuple = ()
    if label != "normal":
        span = event_span or duration
        events = draw_events(label, span, rng)
        shift = 0.0 if event_at is None else event_at - span / 2
        events = tuple(dataclasses.replace(e, start=e.start + shift, end=e.end + shift) for e in events)
    plan = ClipPlan(label, duration, scene, events, draw_nuisance(np.random.default_rng([seed, 2]), duration),
                    (seed, 3))
    times = np.arange(int(round(duration * FPS))) / FPS
    w, h = SIZE
    path.parent.mkdir(parents=True, exist_ok=True)
    write_clip(path, container, acodec, w, h, Fraction(FPS), times, False, render_frames(plan, w, h, times),
               render_audio(plan, SR, 1), SR)
    return events


def build_synthetic_run(root: Path) -> Path:
    """Media, a tiny-backbone cache and a trained MTCN under ``root`` (built once)."""
    run = root / "run"
    if (run / "metrics.json").is_file():
        return run
    from extract.datasets import Manifest, ManifestRow
    from extract.pipeline import ExtractConfig, run_extract
    from temporal.train import TrainConfig, train

    rows = []
    for ci, label in enumerate(CLASSES):
        for i in range(16):
            path = root / "media" / label / f"clip_{i:02d}.mp4"
            render(path, label, 4.0 + i % 3, seed=100 * ci + i)
            rows.append(ManifestRow(f"{label}/{path.name}", path, ci, f"{label}{i}"))
    manifest = Manifest("test", root / "media", CLASSES, tuple(rows))
    run_extract(manifest, root / "cache.zarr", ExtractConfig(video_model="tiny", audio_model="tiny", device="cpu",
                                                              workers=0, progress=False))
    train(root / "cache.zarr", run, TrainConfig(epochs=40, progress=False))
    return run


@pytest.fixture(scope="session")
def long_video(synthetic_run: Path) -> tuple[Path, float, float]:
    """30 s of a calm scene from a source not in training, an explosion centred at 15 s."""
    path = synthetic_run.parent / "long_explosion.mp4"
    if not path.is_file():
        events = render(path, "explosion", LONG_DURATION, seed=902, event_at=EVENT_AT, event_span=EVENT_SPAN)
        (path.with_suffix(".json")).write_text(json.dumps([min(e.start for e in events), max(e.end for e in events)]))
    start, end = json.loads(path.with_suffix(".json").read_text())
    return path, start, end


@pytest.fixture(scope="session")
def predictor(synthetic_run: Path):
    from apply import PredictConfig, load_predictor

    return load_predictor(synthetic_run, PredictConfig(device="cpu"))


def _cli(*args: str):
    from cli import main

    return CliRunner().invoke(main, list(args), catch_exceptions=False)


# ---------------------------------------------------------------------------- windows


def test_plan_windows_cover_the_video_with_full_length_windows() -> None:
    w = plan_windows(12.0, 5.0, 2.5)
    assert w[:, 0].tolist() == [0.0, 2.5, 5.0, 7.0]  # the last one aligned to the end
    assert np.allclose(w[:, 1] - w[:, 0], 5.0) and w[-1, 1] == 12.0
    assert plan_windows(3.0, 5.0, 2.5).tolist() == [[0.0, 3.0]]  # shorter than a window: the clip itself
    with pytest.raises(ValueError, match="positive"):
        plan_windows(10.0, 0.0, 1.0)


def test_one_window_over_a_clip_is_exactly_decode_clip(tmp_path: Path) -> None:
    """Frames, audio and timing equal decode_clip's for mp4, webm, AVI (no timestamps) and a
    clip with a display rotation."""
    from tests.test_decode import write_media

    files = [(tmp_path / "a.mp4", "mp4", "aac"), (tmp_path / "b.webm", "webm", "libopus"),
             (tmp_path / "c.avi", "avi", "libmp3lame")]
    for i, (path, container, acodec) in enumerate(files):
        render(path, "explosion", 3.0, seed=i, container=container, acodec=acodec)
    rotated = write_media(tmp_path / "rot.mp4", n_frames=20, rotation=90,
                          image=lambda i: np.pad(np.full((16, 32, 3), 255, np.uint8), ((0, 48), (0, 32), (0, 0))))
    for path in [f for f, _, _ in files] + [rotated]:
        ref = decode_clip(path, 10)
        got = []
        decode_windows(path, 10, 100.0, 100.0, got.append)
        (w,) = got
        assert w.start == 0.0 and w.end == pytest.approx(ref.duration)
        clip = w.clip
        assert np.array_equal(clip.step_bounds, ref.step_bounds)
        assert np.allclose(clip.frame_times, ref.frame_times)
        assert all(np.array_equal(np.asarray(a), np.asarray(b)) for a, b in zip(clip.frames, ref.frames))
        assert (clip.audio is None and ref.audio is None) or (
            np.array_equal(clip.audio, ref.audio) and clip.audio_end == pytest.approx(ref.audio_end))
        assert clip.rotation == ref.rotation


def test_windows_take_the_frame_nearest_each_step_and_the_matching_audio(tmp_path: Path) -> None:
    """A 20 s clip whose grey level encodes time: every window step shows the frame nearest
    its centre; every window's audio is the matching slice of the whole track; each frame
    is decoded at most once although windows overlap."""
    duration, fps = 20.0, 10
    path = write_test_clip(tmp_path / "ramp.mp4", duration=duration, fps=fps, brightness=lambda t: t / duration,
                           tone_hz=lambda t: 300.0 + 40 * t, square=False, gop=25)
    whole = decode_clip(path, 10)
    info = probe(path)
    got = []
    decode_windows(path, 10, 4.0, 1.5, got.append)
    bounds = plan_windows(info.duration, 4.0, 1.5)
    assert [(w.start, w.end) for w in got] == [tuple(b) for b in bounds.tolist()]
    _, centres = window_steps(bounds, 10)
    frame_times = info.video.frame_pts * float(info.video.time_base) - info.start
    for w, c in zip(got, centres):
        nearest = frame_times[target_frames(frame_times, c)]
        assert np.allclose(w.clip.frame_times + w.start, nearest)
        grey = np.array([np.asarray(f).mean() / 255 for f in w.clip.frames])
        assert np.allclose(grey, nearest / duration, atol=0.03)
        assert np.allclose(w.step_times, c)
        lo = int(round(w.start * whole.sample_rate))
        assert np.array_equal(w.clip.audio, whole.audio[lo:lo + len(w.clip.audio)])
    stats = got[0].clip.stats
    targets = info.video.frame_pts[target_frames(frame_times, centres.reshape(-1))]
    needed = min_frames_needed(info.video.frame_pts, info.video.keyframe_pts, targets)
    # the plan's minimum, plus at most one look-ahead frame per forward run (to see which
    # of two frames is nearer a target); never a frame twice
    assert needed <= stats.frames_decoded <= min(needed + stats.seeks + 1, info.video.frame_pts.size)


# ---------------------------------------------------------------------------- predict


def test_json_output_has_steps_scores_and_increasing_times(synthetic_run: Path, long_video) -> None:
    clip = synthetic_run.parent / "media" / "explosion" / "clip_03.mp4"
    result = _cli("predict", str(synthetic_run), str(clip), str(long_video[0]), "--json", "--window", str(WINDOW),
                  "--hop", str(HOP))
    assert result.exit_code == 0, result.output
    lines = [json.loads(x) for x in result.stdout.strip().splitlines()]
    assert [Path(x["video"]).name for x in lines] == [clip.name, long_video[0].name]
    for obj in lines:
        assert obj["error"] is None and obj["label"] in CLASSES
        assert set(obj["probs"]) == set(CLASSES) and sum(obj["probs"].values()) == pytest.approx(1.0, abs=1e-4)
        times = [s["t"] for s in obj["steps"]]
        assert all(b > a for a, b in zip(times, times[1:]))
        assert all(0.0 <= s["score"] <= 1.0 for s in obj["steps"])
        for w in obj["windows"]:
            assert len(w["steps"]) == 10
            wt = [s["t"] for s in w["steps"]]
            assert all(b > a for a, b in zip(wt, wt[1:])) and w["start"] <= wt[0] and wt[-1] < w["end"]
            assert all(0.0 <= s["score"] <= 1.0 for s in w["steps"])
    assert len(lines[1]["windows"]) == len(plan_windows(LONG_DURATION, WINDOW, HOP))


def test_timeline_peaks_at_the_known_event(predictor, long_video) -> None:
    from apply import PredictConfig

    path, start, end = long_video
    pred = predictor.predict(path, PredictConfig(window=WINDOW, hop=HOP))
    assert pred.error is None and pred.label == "explosion"
    t_peak, score = pred.peak
    assert start - WINDOW <= t_peak <= end + WINDOW and score > 0.5
    far = np.abs(pred.times - EVENT_AT) > EVENT_SPAN / 2 + WINDOW
    assert np.median(pred.scores[far]) < 0.5 < score
    assert any(s.label == "explosion" and s.start < end and s.end > start for s in pred.segments)


def test_whole_video_mode_reproduces_the_cached_prediction(predictor, synthetic_run: Path) -> None:
    """Raw video in, the same probabilities as the head on the cached features of that clip."""
    from temporal.data import load_cache
    from temporal.evaluate import load_run, predict

    data = load_cache(synthetic_run.parent / "cache.zarr")
    model, _ = load_run(synthetic_run)
    keys = ["explosion/clip_01.mp4", "normal/clip_04.mp4"]
    cached = predict(model, data.clips.take(data.rows_of(keys))).clip_probs
    for key, probs in zip(keys, cached):
        pred = predictor.predict(synthetic_run.parent / "media" / key)
        assert np.allclose(pred.probs, probs, atol=2e-3), key
        assert len(pred.times) == 10 and pred.windows[0].end == pytest.approx(pred.duration)


def test_a_run_with_other_backbones_is_refused(synthetic_run: Path, tmp_path: Path) -> None:
    from apply import BackboneMismatch, PredictConfig, load_predictor

    run = tmp_path / "run"
    shutil.copytree(synthetic_run, run)
    doc = json.loads((run / "config.json").read_text())
    doc["cache_identity"]["video_backbone"]["checksum"] = "0" * 64
    (run / "config.json").write_text(json.dumps(doc))
    with pytest.raises(BackboneMismatch, match="video weights.*--video-model"):
        load_predictor(run, PredictConfig(device="cpu"))
    result = _cli("predict", str(run), str(synthetic_run.parent / "media" / "normal" / "clip_00.mp4"))
    assert result.exit_code == 2 and "not the one this run was trained on" in result.output
    # same weights, other input: audio pooled over other windows
    doc = json.loads((synthetic_run / "config.json").read_text())
    doc["cache_identity"]["audio_backbone"]["preprocessing"]["window_s"] = 10.0
    (run / "config.json").write_text(json.dumps(doc))
    with pytest.raises(BackboneMismatch, match="audio preprocessing window_s"):
        load_predictor(run, PredictConfig(device="cpu"))
    # other weights named on the command line
    with pytest.raises(BackboneMismatch, match="video weights"):
        load_predictor(synthetic_run, PredictConfig(device="cpu", video_model="random"))


def test_an_unreadable_file_is_an_error_entry_and_the_others_are_predicted(synthetic_run: Path,
                                                                           tmp_path: Path) -> None:
    good = synthetic_run.parent / "media" / "normal" / "clip_02.mp4"
    corrupt = tmp_path / "corrupt.mp4"
    corrupt.write_bytes(good.read_bytes()[: 2000])       # cut before its index
    garbage = tmp_path / "notes.mp4"
    garbage.write_text("not a video")
    missing = tmp_path / "missing.mp4"
    result = _cli("predict", str(synthetic_run), str(good), str(corrupt), str(garbage), str(missing), str(good),
                  "--json")
    assert result.exit_code == 1  # some failed; all were answered
    lines = [json.loads(x) for x in result.stdout.strip().splitlines()]
    assert len(lines) == 5
    assert [x["error"] is None for x in lines] == [True, False, False, False, True]
    for bad in lines[1:4]:
        assert bad["label"] is None and bad["probs"] is None and bad["steps"] == [] and bad["error"]
    assert lines[0]["probs"] == lines[4]["probs"]
    table = _cli("predict", str(synthetic_run), str(good), str(missing))
    assert "ERROR" in table.output and "normal" in table.output


def test_plot_draws_the_timeline_png(synthetic_run: Path, long_video, tmp_path: Path) -> None:
    from apply.media_figures import timeline_png_size
    from PIL import Image

    out = tmp_path / "timeline.png"
    result = _cli("predict", str(synthetic_run), str(long_video[0]), "--window", str(WINDOW), "--plot", str(out))
    assert result.exit_code == 0, result.output
    assert out.stat().st_size > 10_000
    assert Image.open(out).size == timeline_png_size()
    assert "explosion" in result.output


def test_an_audio_clock_jump_is_an_error_entry_and_the_next_file_is_predicted(synthetic_run: Path,
                                                                              tmp_path: Path) -> None:
    """Audio pts that jump by a year once made predict die with a MemoryError (1.8 TiB of
    audio) before the other files, and --window grow without bound; a jump of an hour was a
    3604 s clip whose steps all showed the last frame. Now each is that file's error entry,
    whole-clip and windowed, and the next file is predicted."""
    from tests.media_factory import write_audio_jump_clip

    good = synthetic_run.parent / "media" / "normal" / "clip_02.mp4"
    year = write_audio_jump_clip(tmp_path / "year.mkv", 365 * 86400.0)
    hour = write_audio_jump_clip(tmp_path / "hour.ts", 3600.0)
    for extra in ([], ["--window", str(WINDOW)]):
        result = _cli("predict", str(synthetic_run), str(year), str(hour), str(good), "--json", *extra)
        assert result.exit_code == 1
        lines = [json.loads(x) for x in result.stdout.strip().splitlines()]
        assert [x["error"] is None for x in lines] == [False, False, True]
        for bad in lines[:2]:
            assert "timestamps jump" in bad["error"] and "MemoryError" not in bad["error"]
            assert bad["probs"] is None
        assert lines[2]["label"] in CLASSES


def test_plot_failures_are_entries_and_names_are_unique_per_video(synthetic_run: Path, tmp_path: Path) -> None:
    """Issue 16, fault 6: a 251-character name, a name that is not valid UTF-8 and three
    videos sharing the base name ``cam`` each get their own timeline; a figure that cannot
    be written is that video's plot error, the others go on, exit 1; an unusable --plot
    (``.txt``, a folder that is a file) is refused before any work, exit 2, one line."""
    from apply import timeline_paths

    src = synthetic_run.parent / "media" / "normal" / "clip_00.mp4"
    videos = [tmp_path / "pa" / "cam.mp4", tmp_path / "pb" / "cam.mp4", tmp_path / "pb" / "cam.mkv",
              tmp_path / ("x" * 247 + ".mp4"), tmp_path / "caf\udce9.mp4"]
    for v in videos:
        v.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(src, v)
    out = tmp_path / "plots" / "t.png"
    paths = timeline_paths(out, videos)
    assert len(set(paths)) == len(videos) and paths == timeline_paths(out, videos)   # unique, deterministic
    paths[1].mkdir(parents=True)    # this figure cannot be written: a folder holds its name
    result = _cli("predict", str(synthetic_run), *map(str, videos), "--plot", str(out), "--json")
    assert result.exit_code == 1, result.output
    lines = [json.loads(x) for x in result.stdout.strip().splitlines()]
    assert [x["error"] for x in lines] == [None] * 5 and all(x["label"] for x in lines)
    assert [x["plot_error"] is not None for x in lines] == [False, True, False, False, False]
    for line, path in zip(lines, paths):
        if line["plot"]:
            assert Path(line["plot"]) == path and path.stat().st_size > 10_000
    table = _cli("predict", str(synthetic_run), str(videos[0]), str(videos[1]), "--plot", str(out))
    assert table.exit_code == 1 and "plot failed" in table.output
    assert "pa/cam.mp4" in table.output and "pb/cam.mp4" in table.output  # two cam.mp4 rows told apart
    assert "\\udce9" not in result.stdout and "caf\\\\xe9.mp4" in result.stdout  # valid UTF-8, as cache keys
    (tmp_path / "afile").write_text("")
    for bad in (tmp_path / "out.txt", tmp_path / "afile" / "t.png", tmp_path / ("y" * 251 + ".png")):
        refused = _cli("predict", str(synthetic_run), str(videos[0]), "--plot", str(bad))
        assert refused.exit_code == 2 and refused.output.count("\n") == 1 and "--plot" in refused.output, \
            refused.output
