"""The XD-Violence path end to end on the generated stand-in: ``cli.py synth-xd`` -> lists
-> ``cli.py extract --dataset xd-violence`` (tiny backbones) -> train on the official split
-> six-class recognition and frame-level detection. The stand-in's videos are long and
untrimmed (18-36 s here) with short obvious violent events (2-4 s of strobing flashes and
loud bursts) and harmless distractors, so detection needs localisation: on a fixed
12-step layout a step spans 1.5-3 s and its one frame can miss an event."""

from __future__ import annotations

import json
from pathlib import Path

import av
import numpy as np
import pytest
from sklearn.metrics import auc, precision_recall_curve

from cache_schema import InvalidInput, open_cache
from synth.xd_standin import FPS, MARGIN, StandinConfig, parse_range, plan

STEPS = 12
# Recognition: the paper's head, kept small. Detection: the per-step MLP whose clip score is
# the mean of its step probabilities (trained from video labels only, multiple-instance
# style) on video features. Why not MTCN or fused: MTCN's loss gives every step of a
# violent video the video's label, and with its clip-wide receptive field it then flags
# whole violent videos, not their segments (frame AP near chance, 0.2, on this set); and the
# tiny audio backbone's step features carry clip-wide context (self-attention over the
# window), so calm steps of a violent video already sound "violent" (fused AP 0.4-0.85 by
# seed, video 0.81-0.87). See docs/xd_violence.md.
RECOGNITION_HEAD = dict(head="mtcn", head_options={"hidden": 32, "stages": 2}, batch_size=8, lr=3e-3, progress=False)
# The grid (snippet-time) proof: MTCN, video features, its MIL defaults (one stage of two
# layers, attention over each step itself: local context, see docs/temporal.md).
GRID_HEAD = dict(head="mtcn", modality="video", progress=False)  # the training defaults otherwise
DETECTION_HEAD = dict(head="pool", head_options={"hidden": 64}, modality="video", batch_size=8, lr=3e-3,
                      progress=False)


pytestmark = pytest.mark.usefixtures("one_thread")


def _oracle_ap(videos, steps: int) -> float:
    """Official PR-AUC of a perfect predictor of each of ``steps`` equal steps' violent
    fraction (written here from the stand-in's own metadata, independent of the code under
    test)."""
    gts, scores = [], []
    for v in videos:
        gt = np.zeros(v.n_frames)
        for a, b in v.segments:
            gt[a:b] = 1
        step = np.arange(v.n_frames) * steps // v.n_frames
        frac = np.bincount(step, weights=gt, minlength=steps) / np.bincount(step, minlength=steps)
        gts.append(gt)
        scores.append(frac[step])
    precision, recall, _ = precision_recall_curve(np.concatenate(gts), np.concatenate(scores))
    return float(auc(recall, precision))


def test_plan_is_long_untrimmed_with_short_events_and_distractors() -> None:
    videos = plan(StandinConfig())
    seconds = np.array([v.n_frames / FPS for v in videos])
    assert seconds.min() >= 20 and seconds.max() <= 60 and np.ptp(seconds) > 30   # a spread, 20-60 s
    for v in videos:
        assert 1 <= len(v.distractors) <= 3 and {d[0] for d in v.distractors} <= {"light", "walker", "beep"}
        assert len(v.segments) == (0 if v.codes == ("A",) else len(v.segments)) and len(v.segments) <= 2
        assert all(2 * FPS <= b - a <= 4 * FPS for a, b in v.segments), v
        spans = sorted([*v.segments, *((a, b) for _, a, b in v.distractors)])
        assert spans[0][0] >= MARGIN and spans[-1][1] <= v.n_frames - MARGIN
        assert all(b[0] - a[1] >= MARGIN for a, b in zip(spans, spans[1:])), v    # distractors are never events
    violent = [v for v in videos if v.violent]
    assert len(violent) == 18 and any(len(v.segments) == 2 for v in violent)
    share = sum(b - a for v in violent for a, b in v.segments) / sum(v.n_frames for v in violent)
    assert share < 0.2                                                                # short events: localise
    assert plan(StandinConfig()) == videos                                            # deterministic
    held_out = plan(StandinConfig(seed=1, lengths=(16.0, 45.0), event_seconds=(1.5, 3.0)))
    assert [v.name for v in held_out] == [v.name for v in videos]                     # same layout and names
    assert all(16 * FPS <= v.n_frames <= 45 * FPS for v in held_out)
    assert [v.segments for v in held_out] != [v.segments for v in videos]
    assert all(1.5 * FPS <= b - a <= 3 * FPS for v in held_out for a, b in v.segments)
    with pytest.raises(InvalidInput, match="shortest video"):
        StandinConfig(lengths=(10.0, 12.0))
    assert parse_range("20-60") == (20.0, 60.0) and parse_range("30") == (30.0, 30.0)
    for bad in ("x", "60-20", "0-5", "1-2-3"):
        with pytest.raises(InvalidInput, match="MIN-MAX"):
            parse_range(bad, "--lengths")


def test_media_shows_events_where_annotated_and_distractors_elsewhere(xd_standin: dict) -> None:
    """Decoded through PyAV: a frame is a strobe/flash frame (its brightest channel's mean
    over 110 of 255) exactly inside the annotated events, never in a distractor; the sound
    is loud inside events."""
    assert "wrote 27 videos (28 listed)" in xd_standin["synth_output"]
    video = next(v for v in xd_standin["videos"] if v.split == "test" and len(v.segments) and v.distractors)
    with av.open(str(xd_standin["root"] / video.file)) as f:
        frames = [fr.to_ndarray(format="rgb24") for fr in f.decode(video=0)]
    with av.open(str(xd_standin["root"] / video.file)) as f:
        audio = np.concatenate([fr.to_ndarray().reshape(-1) for fr in f.decode(audio=0)])
    assert len(frames) == video.n_frames
    flash = np.array([img.reshape(-1, 3).mean(0).max() > 110 for img in frames])
    truth = np.zeros(video.n_frames, bool)
    for a, b in video.segments:
        truth[a:b] = True
    assert (flash == truth).mean() > 0.99, np.flatnonzero(flash != truth)
    sr = len(audio) / (video.n_frames / FPS)
    rms = lambda a, b: float(np.sqrt(np.mean(audio[int(a / FPS * sr):int(b / FPS * sr)] ** 2)))  # noqa: E731
    calm = rms(0, MARGIN)
    assert all(rms(a, b) > 1.5 * calm for a, b in video.segments)


@pytest.fixture(scope="module")
def extracted(xd_standin: dict) -> dict:
    """The stand-in extracted once per session (``tests/conftest.py``), shared with
    tests/test_documented_commands.py."""
    assert xd_standin["cache"].name == "xd.zarr" and STEPS == 12
    return xd_standin


def test_extract_keeps_the_official_split_and_counts_missing(extracted: dict) -> None:
    videos = extracted["videos"]
    missing = [v.name for v in videos if not v.file]
    out = extracted["output"]
    assert "violent (6 classes)" in out and "missing: 1 listed videos" in out and missing[0] in out
    doc = json.loads(extracted["split"].read_text())
    assert doc["info"]["missing"] == {"train": missing, "test": []}
    for split in ("train", "test"):  # keys are relative to --root (here ROOT/videos)
        assert sorted(doc[split]) == sorted(v.file.removeprefix("videos/") for v in videos if v.split == split and v.file)
    with open_cache(extracted["cache"]) as r:
        assert r.counts()["ok"] == sum(bool(v.file) for v in videos)
        assert r.config.class_names[0] == "normal" and len(r.config.class_names) == 7


def test_detection_ap_is_high_on_obvious_events(extracted: dict, tmp_path: Path) -> None:
    from temporal import SplitConfig, TrainConfig, load_cache
    from temporal.train import train
    from temporal.xd_detection import evaluate_detection
    from temporal.xd_tasks import apply_task

    data = apply_task(load_cache(extracted["cache"]), "xd-detection")
    config = TrainConfig(epochs=25, split=SplitConfig(split_file=str(extracted["split"])), **DETECTION_HEAD)
    run = train(extracted["cache"], tmp_path / "det", config, data=data)
    assert run.metrics["class_names"] == ["normal", "violent"]
    # annotations found through the official split file, which extraction wrote
    metrics = evaluate_detection(run.rundir, data=data)  # the official ground-truth length by default
    det = metrics["detection"]
    test_videos = [v for v in extracted["videos"] if v.split == "test"]
    assert det["n_videos"] == len(test_videos) and det["fps"] == 24.0
    # the official ground-truth length: 16 * floor((N - 1) / 16) frames per video (make_gt.py)
    official = {v.name: 16 * ((v.n_frames - 1) // 16) for v in test_videos}
    assert det["n_frames"] == sum(official.values())
    assert det["n_violent_frames"] == sum(max(min(b, official[v.name]) - a, 0) for v in test_videos
                                          for a, b in v.segments)
    chance = det["n_violent_frames"] / det["n_frames"]
    assert chance < 0.2
    # On 12 fixed steps the layout caps the AP (a perfect predictor of each step's violent
    # fraction), and one frame per 1.5-3 s step often misses a 2-4 s event: the trained AP
    # lies between chance and that ceiling (seed 0 here; seeds 0-2 gave 0.1-0.4 on the
    # 20-60 s set). The grid layout (test_mil_on_snippet_grid_localises) lifts both.
    ceiling = _oracle_ap(test_videos, STEPS)
    assert 1.5 * chance < det["ap_frame_pr_auc"] <= ceiling + 0.02, (det, chance, ceiling)
    stored = json.loads((run.rundir / "metrics.json").read_text())
    assert stored["ap_frame_pr_auc"] == det["ap_frame_pr_auc"] and "accuracy" in stored
    # The same run evaluated from its directory alone (the view comes from the run's identity).
    again = evaluate_detection(run.rundir, write=False)
    assert again["ap_frame_pr_auc"] == pytest.approx(det["ap_frame_pr_auc"])


def test_recognition_uses_violent_videos_and_six_classes(extracted: dict, tmp_path: Path) -> None:
    from temporal import SplitConfig, TrainConfig, load_cache
    from temporal.train import train
    from temporal.xd_tasks import apply_task

    data = apply_task(load_cache(extracted["cache"]), "xd-recognition")
    # Two violent train videos per class: val is carved as a 2-fold (val_fraction 0.4 of 0.8).
    split = SplitConfig(split_file=str(extracted["split"]), val_fraction=0.4)
    config = TrainConfig(epochs=10, split=split, **RECOGNITION_HEAD)
    run = train(extracted["cache"], tmp_path / "rec", config, data=data)
    m = run.metrics
    assert m["class_names"] == ["fighting", "shooting", "riot", "abuse", "car_accident", "explosion"]
    assert m["n_test"] == sum(v.violent for v in extracted["videos"] if v.split == "test")
    assert 0.0 <= m["accuracy"] <= 1.0 and len(m["confusion_matrix"]) == 6


def test_mil_on_snippet_grid_localises(xd_standin_grid: dict, tmp_path: Path) -> None:
    """The issue's proof: ``extract --step-seconds 0.6667`` -> MTCN trained with ``--objective
    mil`` -> ``evaluate --detection`` reaches frame AP >= 0.9 on the stand-in, and the per-step
    objective scores lower on the same set."""
    from temporal import SplitConfig, TrainConfig, load_cache
    from temporal.train import train
    from temporal.xd_detection import evaluate_detection
    from temporal.xd_tasks import apply_task

    data = apply_task(load_cache(xd_standin_grid["cache"]), "xd-detection")
    ap = {}
    for objective in ("mil", "step"):
        config = TrainConfig(split=SplitConfig(split_file=str(xd_standin_grid["split"])), objective=objective,
                             **GRID_HEAD)
        run = train(xd_standin_grid["cache"], tmp_path / objective, config, data=data)
        det = evaluate_detection(run.rundir, data=data)["detection"]
        assert det["ap_frame_oracle"] > 0.98           # 16-frame steps: the layout costs almost nothing
        assert det["layout"] == "steps of 0.6667 s"
        ap[objective] = det["ap_frame_pr_auc"]
        if objective == "mil":  # the run records the objective and the MIL defaults it was built with
            recorded = json.loads((run.rundir / "config.json").read_text())["train"]
            assert recorded["objective"] == "mil"
            assert recorded["head_options"] == {"stages": 1, "layers": 2, "attention_window": 0}
    assert ap["mil"] >= 0.9 and ap["step"] < ap["mil"], ap


def test_detection_scores_every_test_video_whatever_the_modality(xd_standin_grid: dict, tmp_path: Path) -> None:
    """An audio run's frame AP covers the test videos without audio too (scored with the
    training prior, as evaluate_run scores them), so that modalities compare on the same
    videos; and ``--normal-class`` reaches the detection metrics."""
    from temporal import SplitConfig, TrainConfig, load_cache
    from temporal.train import train
    from temporal.xd_detection import XDDetectionError, evaluate_detection
    from temporal.xd_tasks import apply_task

    data = apply_task(load_cache(xd_standin_grid["cache"]), "xd-detection")
    split = json.loads(xd_standin_grid["split"].read_text())
    test_rows = data.rows_of(split["test"])
    silent = int(test_rows[0])  # this test video loses its audio
    lo, hi = int(data.clips.offsets[silent]), int(data.clips.offsets[silent + 1])
    data.clips.audio_mask[lo:hi] = False
    config = TrainConfig(epochs=3, split=SplitConfig(split_file=str(xd_standin_grid["split"])),
                         head="pool", modality="audio", progress=False)
    run = train(xd_standin_grid["cache"], tmp_path / "audio", config, data=data)
    det = evaluate_detection(run.rundir, data=data)["detection"]
    assert det["n_videos"] == len(test_rows) and det["n_without_stream"] == 1
    assert det["normal_class"] == "normal"
    with pytest.raises(XDDetectionError, match="not a class"):
        evaluate_detection(run.rundir, data=data, normal_class="calm", write=False)
    # the option reaches the detection labels: with "violent" as the normal class the violent
    # videos count as normal, which the annotations contradict
    with pytest.raises(XDDetectionError, match="labelled normal have violent segments"):
        evaluate_detection(run.rundir, data=data, normal_class="violent", write=False)
