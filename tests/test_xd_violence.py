"""XD-Violence support: the official lists and annotations (real metadata, no videos),
the frame-level ground truth, the AP as the official test code computes it, the
alignment-by-name guard, and the task views of a cache."""

from __future__ import annotations

import csv
import json
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from extract.datasets.xd_violence import (
    XD_CLASSES,
    XDListError,
    label_codes,
    load_xd_violence,
    official_split_path,
    parse_entry,
    read_lists,
    read_name_list,
)
from temporal.xd_detection import (
    VideoScores,
    XDDetectionError,
    expand_to_frames,
    frame_ap,
    frame_arrays,
    frame_ground_truth,
    frame_level_ap,
    read_annotations,
    video_name,
)

REAL = Path(__file__).resolve().parents[1].parent / "shared" / "realdata" / "xd-violence"
needs_real = pytest.mark.skipif(not (REAL / "annotations.txt").exists(), reason="XD-Violence metadata not present")


def _csv_names(path: Path) -> Counter:
    """Video -> label string from an official CSV, by plain string handling (independent
    of the parser under test): basename, drop the ``__<crop>.npy`` tail."""
    labels = {}
    with path.open(newline="") as f:
        for row in csv.DictReader(f):
            base = row["path"].split("/")[-1]
            labels[base[: base.rindex("__")]] = row["label"]
    return labels


# -- real metadata ------------------------------------------------------------------------
@needs_real
def test_real_lists_counts_and_codes() -> None:
    lists = read_lists(REAL)
    train, test = lists.split("train"), lists.split("test")
    assert (len(train), len(test)) == (3954, 800)
    assert sum(not v.violent for v in train) == 2049 and sum(not v.violent for v in test) == 300
    for split, fname in (("train", "xd_CLIP_rgb.csv"), ("test", "xd_CLIP_rgbtest.csv")):
        expected = _csv_names(REAL / fname)
        assert lists.code_counts(split) == Counter(expected.values())
        assert {v.name: v.code_string for v in lists.split(split)} == expected
        first = Counter(lab.split("-")[0] for lab in expected.values())
        by_class = lists.class_counts(split)
        assert {c: by_class[XD_CLASSES[i]] for i, c in enumerate(("A", "B1", "B2", "B4", "B5", "B6", "G"))} == \
            {c: first.get(c, 0) for c in ("A", "B1", "B2", "B4", "B5", "B6", "G")}
    assert sum(lists.class_counts("train", violent_only=True).values()) == 3954 - 2049
    assert lists.class_counts("test", violent_only=True) == {
        "fighting": 120, "shooting": 84, "riot": 101, "abuse": 8, "car_accident": 96, "explosion": 91}
    table = lists.describe()
    assert "violent (6 classes)" in table and "1905" in table and "500" in table
    assert lists.annotations and Path(lists.annotations).name == "annotations.txt"


@needs_real
def test_real_annotations_are_the_violent_test_videos() -> None:
    ann = read_annotations(REAL / "annotations.txt")
    lists = read_lists(REAL)
    violent_test = {v.name for v in lists.split("test") if v.violent}
    assert len(ann) == 500 and set(ann) == violent_test  # every annotated video is a non-normal test video
    raw_names = [line.split()[0] for line in (REAL / "annotations.txt").read_text().splitlines()]
    assert sum(n.endswith(".mp4") for n in raw_names) > 0  # the official file mixes both forms


@needs_real
def test_real_frame_ground_truth_sets_exactly_the_annotated_frames() -> None:
    """All 800 test videos with stand-in frame counts: the ground truth's ones are exactly
    the annotated frames (parsed here from the raw text), normal videos are all zero."""
    lists = read_lists(REAL)
    ann = read_annotations(REAL / "annotations.txt")
    expected: dict[str, set[int]] = {}
    for line in (REAL / "annotations.txt").read_text().splitlines():
        name, *nums = line.split()
        idx = list(map(int, nums))
        expected[name.removesuffix(".mp4")] = {f for s, e in zip(idx[::2], idx[1::2]) for f in range(s, e)}
    rng = np.random.default_rng(0)
    fps = 24.0
    videos = []
    for v in lists.split("test"):
        last = max(expected.get(v.name, {0})) + 1
        n = last + int(rng.integers(0, 500))
        videos.append(VideoScores(v.name, rng.random(3), n / fps, v.violent))
    gt, scores, info = frame_arrays(videos, ann, fps, gt_frames="all")
    assert info["annotated_frames_past_end"] == 0 and info["annotated_not_scored"] == 0
    for v in videos:
        ones = set(np.flatnonzero(gt[v.name]).tolist())
        assert ones == expected.get(v.name, set()), v.name
        assert len(scores[v.name]) == len(gt[v.name])
    assert sum(int(g.sum()) for g in gt.values()) == sum(len(s) for s in expected.values())


@needs_real
def test_real_lists_find_videos_by_name_and_count_missing(tmp_path: Path) -> None:
    lists = read_lists(REAL)
    test = lists.split("test")
    root = tmp_path / "xd"
    (root / "videos" / "sub").mkdir(parents=True)
    (root / "videos" / f"{test[0].name}.mp4").write_bytes(b"x")
    (root / "videos" / "sub" / test[1].name).write_bytes(b"x")               # no extension
    (root / "videos" / f"{test[2].name}.avi").write_bytes(b"x")
    (root / "videos" / f"{test[2].name}.mp4").write_bytes(b"x")              # .mp4 preferred
    (root / "videos" / f"{lists.split('train')[0].name}__0.npy").write_bytes(b"x")  # a feature, not a video
    xd = load_xd_violence(root, REAL)
    keys = [r.key for r in xd.manifest.rows]
    assert keys == [f"videos/{test[0].name}.mp4", f"videos/sub/{test[1].name}", f"videos/{test[2].name}.mp4"]
    assert [r.label for r in xd.manifest.rows] == [v.class_index for v in test[:3]]
    assert xd.manifest.class_names == XD_CLASSES and xd.manifest.dataset == "xd-violence"
    assert xd.missing_counts() == {"train": 3954, "test": 797}
    path = xd.write_official_split(tmp_path / "c.zarr")
    assert path == official_split_path(tmp_path / "c.zarr") and path.name == "c.zarr.official_split.json"
    doc = json.loads(path.read_text())
    assert doc["train"] == [] and doc["val"] == [] and doc["test"] == keys
    assert len(doc["info"]["missing"]["test"]) == 797 and doc["info"]["annotations"].endswith("annotations.txt")


# -- names and lists ------------------------------------------------------------------------
def test_parse_entries_and_codes() -> None:
    n = "Bad.Boys.1995__#01-11-55_01-12-40_label_G-B2-B6"
    for entry in (n, f"{n}.mp4", f"/feat/XDTest/{n}__7.npy", f"C:\\feat\\{n}__0.npy", f"  {n}  "):
        assert parse_entry(entry).name == n
    assert parse_entry(f"/x/{n}__3.npy").crop == "3" and parse_entry(f"{n}.mp4").ext == ".mp4"
    assert label_codes(n) == ("G", "B2", "B6")
    assert label_codes("v=4FzhVu2PR8Y__#1_label_B1") == ("B1",)
    assert label_codes("x_label_B4-0-0") == ("B4",) and label_codes("x_label_A") == ("A",)
    with pytest.raises(XDListError, match="not XD-Violence codes"):
        label_codes("x_label_B3-0-0")
    with pytest.raises(XDListError, match="not an XD-Violence video name"):
        parse_entry("holiday.mp4")
    assert video_name(f"videos/test/{n}.mp4") == n and video_name(f"{n}__0.npy") == n


def test_text_lists_and_label_column_check(tmp_path: Path) -> None:
    (tmp_path / "train.list").write_text("# comment\n/f/a_label_A__0.npy\n/f/a_label_A__1.npy\n\nb_label_B2-0-0.mp4\n")
    (tmp_path / "test.list").write_text("c_label_G-0-0\n")
    lists = read_lists(tmp_path)
    assert [v.name for v in lists.split("train")] == ["a_label_A", "b_label_B2-0-0"]
    assert [v.class_name for v in lists.videos] == ["normal", "shooting", "explosion"]
    (tmp_path / "bad.csv").write_text("path,label\n/f/a_label_B1-0-0__0.npy,B2-0-0\n")
    with pytest.raises(XDListError, match="disagrees"):
        read_name_list(tmp_path / "bad.csv")
    (tmp_path / "test.list").write_text("a_label_A\n")
    with pytest.raises(XDListError, match="both train and test"):
        read_lists(tmp_path)
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="no train list"):
        read_lists(tmp_path / "empty")
    with pytest.raises(FileNotFoundError, match="--lists"):
        read_lists(tmp_path / "nothing")


# -- AP as the official code computes it --------------------------------------------------------
def test_ap_on_a_hand_computed_vector() -> None:
    """Six frames, scores falling, truth 1 0 1 1 0 0. PR points (R, P) after sklearn's
    truncation at full recall: (1/3, 1), (1/3, 1/2), (2/3, 2/3), (1, 3/4), plus (0, 1).
    Trapezoids: 1/3*1 + 0 + 1/3*(1/2+2/3)/2 + 1/3*(2/3+3/4)/2 = 55/72.
    Average precision: 1/3*1 + 0*1/2 + 1/3*2/3 + 1/3*3/4 = 29/36."""
    gt = np.array([1, 0, 1, 1, 0, 0])
    scores = np.array([0.9, 0.8, 0.7, 0.6, 0.5, 0.4])
    pr_auc, ap = frame_ap(gt, scores)
    assert pr_auc == pytest.approx(55 / 72, abs=1e-12)
    assert ap == pytest.approx(29 / 36, abs=1e-12)
    # The same through per-video ground truth and step expansion (2 frames per step).
    ann = {"v1_label_B1-0-0": ((0, 2), (4, 8))}
    videos = [VideoScores("v1_label_B1-0-0", np.array([0.9, 0.8, 0.7, 0.6]), 8 / 24, True),
              VideoScores("v2_label_A", np.array([0.5, 0.4]), 4 / 24, False)]
    gt_v, sc_v, _ = frame_arrays(videos, ann, fps=24, gt_frames="all")
    r = frame_level_ap(gt_v, sc_v)
    assert r["n_frames"] == 12 and r["n_violent_frames"] == 6
    assert r["ap_frame_pr_auc"] == pytest.approx(55 / 72) and r["ap_frame_average_precision"] == pytest.approx(29 / 36)


def test_expansion_matches_the_official_repeat() -> None:
    s = np.array([0.1, 0.7, 0.3])
    assert np.array_equal(expand_to_frames(s, 48), np.repeat(s, 16))  # 16-frame snippets, as the official code
    assert expand_to_frames(np.arange(4.0), 10).tolist() == [0, 0, 0, 1, 1, 2, 2, 2, 3, 3]
    with pytest.raises(ValueError, match="NaN"):
        expand_to_frames(np.array([0.1, np.nan]), 4)
    assert frame_ground_truth([(2, 4), (8, 20)], 10).tolist() == [0, 0, 1, 1, 0, 0, 0, 0, 1, 1]


def test_alignment_is_by_name_never_by_position() -> None:
    rng = np.random.default_rng(1)
    names = [f"vid{i:02d}_label_{'A' if i % 3 else 'B1-0-0'}" for i in range(12)]
    gt = {n: (rng.random(50) < (0.0 if n.endswith("A") else 0.4)).astype(np.uint8) for n in names}
    scores = {n: gt[n] * 0.5 + rng.random(50) * 0.8 for n in names}
    base = frame_level_ap(gt, scores)
    order = rng.permutation(names)
    shuffled = frame_level_ap({n: gt[n] for n in order}, {n: scores[n] for n in reversed(order)})
    assert shuffled == base
    # The pitfall itself: the same arrays concatenated in two different orders.
    wrong = frame_ap(np.concatenate([gt[n] for n in names]), np.concatenate([scores[n] for n in order]))
    assert abs(wrong[0] - base["ap_frame_pr_auc"]) > 0.05
    with pytest.raises(XDDetectionError, match="different videos"):
        frame_level_ap(gt, {**{n: scores[n] for n in names[1:]}, "other_label_A": scores[names[0]]})
    with pytest.raises(XDDetectionError, match="unequal frame counts"):
        frame_level_ap(gt, {**scores, names[0]: scores[names[0]][:-1]})


def test_annotation_file_and_test_set_must_agree(tmp_path: Path) -> None:
    p = tmp_path / "annotations.txt"
    p.write_text("a_label_B1-0-0.mp4 0 10 20 30\nb_label_G-0-0 5 9")
    ann = read_annotations(p)
    assert ann == {"a_label_B1-0-0": ((0, 10), (20, 30)), "b_label_G-0-0": ((5, 9),)}
    for bad, why in (("a_label_B1-0-0 0 10 20\n", "start/end pairs"), ("a_label_B1-0-0 9 3\n", "start < end"),
                     ("a_label_B1-0-0 0 1\na_label_B1-0-0.mp4 2 3\n", "twice")):
        p.write_text(bad)
        with pytest.raises(XDDetectionError, match=why):
            read_annotations(p)
    v = lambda name, violent: VideoScores(name, np.array([0.5]), 1.0, violent)  # noqa: E731
    with pytest.raises(XDDetectionError, match="labelled normal"):
        frame_arrays([v("a_label_B1-0-0", False)], ann)
    with pytest.raises(XDDetectionError, match="no line in the annotations"):
        frame_arrays([v("c_label_B2-0-0", True)], ann)
    with pytest.raises(XDDetectionError, match="scored twice"):
        frame_arrays([v("a_label_B1-0-0", True), v("a_label_B1-0-0", True)], ann)
    gt, _, info = frame_arrays([v("a_label_B1-0-0", True), v("n_label_A", False)], ann, fps=24, gt_frames="all")
    assert info["annotated_not_scored"] == 1 and info["annotated_frames_past_end"] == 6  # 24..30 cut
    assert gt["a_label_B1-0-0"].sum() == 14 and gt["n_label_A"].sum() == 0
    # Official-length vectors (the default): 16 * floor((N - 1) / 16) frames (24 frames -> 16).
    long = VideoScores("a_label_B1-0-0", np.array([0.1, 0.9, 0.2]), 1.0, True)
    gt, sc, info = frame_arrays([long], ann, fps=24)
    assert len(gt["a_label_B1-0-0"]) == 16 and gt["a_label_B1-0-0"].sum() == 10 and info["gt_frames"] == "official"
    assert sc["a_label_B1-0-0"].tolist() == [0.1] * 8 + [0.9] * 8


# -- task views --------------------------------------------------------------------------------
def test_task_views_relabel_without_copying_features(tmp_path: Path) -> None:
    from tests.cache_factory import make_config, write_class_cache
    from temporal.data import load_cache
    from temporal.xd_tasks import apply_task, task_of_identity

    cache = tmp_path / "xd.zarr"
    write_class_cache(cache, make_config(classes=XD_CLASSES), 21)
    data = load_cache(cache)
    rec = apply_task(data, "xd-recognition")
    assert rec.class_names == XD_CLASSES[1:] and len(rec.keys) == 18
    assert all(k.split("/")[0] == rec.class_names[int(y)] for k, y in zip(rec.keys, rec.clips.label))
    assert rec.identity["task"] == "xd-recognition" and rec.identity["class_names"] == list(XD_CLASSES[1:])
    assert rec.left_out["normal_not_in_task"] == 3
    det = apply_task(data, "xd-detection")
    assert det.class_names == ("normal", "violent") and len(det.keys) == 21
    assert det.clips.label.tolist() == [int(k.split("/")[0] != "normal") for k in det.keys]
    assert np.array_equal(det.clips.video.numpy(), data.clips.video.numpy())
    assert task_of_identity(det.identity) == "xd-detection" and apply_task(data, None) is data
    with pytest.raises(ValueError, match="unknown task"):
        apply_task(data, "xd-nothing")
