"""``cli.py import-features``: the released XD-Violence snippet features (XDVioDet's I3D
RGB + VGGish, VadCLIP's CLIP) into a time-grid cache, on generated ``.npy`` files in the
authors' layouts with lists in their formats (absolute paths of the authors' machines).

Small dims (8-d video, 4-d audio): the importer takes the dims from the files."""

from __future__ import annotations

import csv
import json
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from cache_schema import official_split_path, open_cache, validate
from extract.datasets.released_features import (CROP_MEAN, ImportConfig, MissingFeatureFiles, ReleasedFeaturesError,
                                       RELEASED_FORMATS, import_features, read_released_lists, resolve_files,
                                       video_features)

pytestmark = pytest.mark.usefixtures("one_thread")

VDIM, ADIM = 8, 4
FOREIGN = "/media/peng/Samsung_T5"


@dataclass
class Video:
    name: str
    split: str
    steps: int              # RGB rows
    audio_steps: int | None = None  # None: as many as RGB
    crops: list[np.ndarray] = field(default_factory=list)
    audio: np.ndarray | None = None


def _videos(extra: int = 0) -> list[Video]:
    """Ten videos (train and test, violent and normal, three special cases), plus
    ``extra`` violent and ``extra`` normal train videos."""
    specs = [
        ("Movie.A.2001__#00-01-00_00-02-00_label_B1-0-0", "train", 7, None),
        ("Movie.A.2001__#00-03-00_00-04-00_label_B2-G-0", "train", 5, 4),     # one RGB row more: dropped
        ("Movie.B.2002__#00-05-00_00-06-00_label_G-B2-0", "train", 9, None),
        ("v=aaa__#1_label_A", "train", 6, None),
        ("v=bbb__#1_label_A", "train", 3, None),
        ("v=ccc__#1_label_A", "train", 8, 5),                                 # unalignable: a failed clip
        ("Movie.C.2003__#00-07-00_00-08-00_label_B4-0-0", "test", 10, None),
        ("Movie.C.2003__#00-09-00_00-10-00_label_B6-B1-0", "test", 4, None),
        ("v=ddd__#1_label_A", "test", 5, None),
        ("v=eee__#1_label_A", "test", 6, None),
    ]
    specs += [(f"Movie.X.2010__#00-{i:02d}-00_00-{i:02d}-30_label_B1-0-0", "train", 4 + i % 5, None) for i in range(extra)]
    specs += [(f"v=x{i:02d}__#1_label_A", "train", 3 + i % 4, None) for i in range(extra)]
    return [Video(*s) for s in specs]


def write_xdviodet(base: Path, seed: int = 0, extra: int = 0) -> tuple[Path, Path, list[Video]]:
    """XDVioDet's layout: ROOT/i3d-features/RGB[Test]/<name>__<c>.npy (5 crops), and
    ROOT/vggish-features/{train,test}/<name>__vggish.npy; lists as list/make_list.py writes
    them (violent first, then normal), paths of the authors' disk."""
    rng = np.random.default_rng(seed)
    root, lists = base / "features", base / "lists"
    lists.mkdir(parents=True)
    videos = _videos(extra)
    lines: dict[str, list[str]] = {"rgb.list": [], "rgb_test.list": [], "audio.list": [], "audio_test.list": []}
    for v in sorted(videos, key=lambda v: "_label_A" in v.name):
        rgb_dir = "RGB" if v.split == "train" else "RGBTest"
        (root / "i3d-features" / rgb_dir).mkdir(parents=True, exist_ok=True)
        (root / "vggish-features" / v.split).mkdir(parents=True, exist_ok=True)
        for c in range(5):
            a = rng.normal(size=(v.steps, VDIM)).astype(np.float32)
            v.crops.append(a)
            np.save(root / "i3d-features" / rgb_dir / f"{v.name}__{c}.npy", a)
            lines["rgb.list" if v.split == "train" else "rgb_test.list"].append(
                f"{FOREIGN}/i3d-features/{rgb_dir}/{v.name}__{c}.npy")
        v.audio = rng.normal(size=(v.audio_steps or v.steps, ADIM)).astype(np.float32)
        np.save(root / "vggish-features" / v.split / f"{v.name}__vggish.npy", v.audio)
        lines["audio.list" if v.split == "train" else "audio_test.list"].append(
            f"{FOREIGN}/vggish-features/{v.split}/{v.name}__vggish.npy")
    for name, entries in lines.items():
        (lists / name).write_text("\n".join(entries) + "\n")
    (lists / "annotations.txt").write_text("Movie.C.2003__#00-07-00_00-08-00_label_B4-0-0.mp4 16 64\n"
                                           "Movie.C.2003__#00-09-00_00-10-00_label_B6-B1-0 0 32 40 60\n")
    return root, lists, videos


def write_vadclip(base: Path, seed: int = 1) -> tuple[Path, Path, list[Video]]:
    """VadCLIP's layout: one folder per split of <name>__<c>.npy, ten crops for train,
    only __0 for test, CSV lists ``path,label`` (list/make_list_xd.py)."""
    rng = np.random.default_rng(seed)
    root, lists = base / "clip", base / "lists"
    lists.mkdir(parents=True)
    videos = [v for v in _videos() if v.audio_steps is None]
    rows: dict[str, list[list[str]]] = {"xd_CLIP_rgb.csv": [], "xd_CLIP_rgbtest.csv": []}
    for v in videos:
        folder = root / ("XDTrainClipFeatures" if v.split == "train" else "XDTestClipFeatures")
        folder.mkdir(parents=True, exist_ok=True)
        for c in range(10 if v.split == "train" else 1):
            a = rng.normal(size=(v.steps, VDIM)).astype(np.float32)
            v.crops.append(a)
            np.save(folder / f"{v.name}__{c}.npy", a)
            rows["xd_CLIP_rgb.csv" if v.split == "train" else "xd_CLIP_rgbtest.csv"].append(
                [f"/home/xbgydx/Desktop/{folder.name}/{v.name}__{c}.npy", v.name.rsplit("_label_", 1)[1]])
    for name, entries in rows.items():
        with (lists / name).open("w", newline="") as f:
            w = csv.writer(f)
            w.writerow(["path", "label"])
            w.writerows(entries)
    return root, lists, videos


def cli(*args: object):
    from cli import main

    return CliRunner().invoke(main, [str(a) for a in args])


def _steps(cache: Path) -> dict:
    with open_cache(cache) as reader:
        d = reader.load_steps(fields=("key", "label", "video", "audio", "video_mask", "audio_mask", "step_time",
                                      "duration"))
        d["config"] = reader.config
    return d


def _clip(d: dict, key: str) -> dict:
    i = list(d["key"]).index(key)
    s = slice(d["offsets"][i], d["offsets"][i + 1])
    return {n: d[n][s] for n in ("video", "audio", "video_mask", "audio_mask", "step_time")} | {
        "duration": d["duration"][i], "label": int(d["label"][i])}


# --------------------------------------------------------------------------- the lists and files


def test_lists_and_files_are_read_as_released(tmp_path: Path) -> None:
    root, lists, videos = write_xdviodet(tmp_path)
    cfg = ImportConfig("xdviodet")
    rl = read_released_lists(RELEASED_FORMATS["xdviodet"], lists)
    assert {v.name: v.split for v in rl.videos} == {v.name: v.split for v in videos}
    assert all(len(v.crops) == 5 and v.audio == f"{v.name}__vggish.npy" for v in rl.videos)
    assert rl.annotations == str((lists / "annotations.txt").resolve())
    res = resolve_files(rl, cfg, root)
    assert not res.missing and len(res.found) == len(videos)
    by = {r.key: r for r in res.found}
    # XDVioDet's dataset.py: one RGB row more than VGGish -> the last RGB row is dropped
    v = videos[1]
    video, audio = video_features(by[v.name])
    assert video.shape == (4, VDIM) and audio.shape == (4, ADIM)
    np.testing.assert_allclose(video, np.mean(v.crops, axis=0)[:4], atol=1e-6)
    # any other difference cannot be aligned
    with pytest.raises(ReleasedFeaturesError, match="RGB has 8 snippets and VGGish 5"):
        video_features(by[videos[5].name])


def test_bad_lists_are_refused_naming_the_line(tmp_path: Path) -> None:
    root, lists, _ = write_xdviodet(tmp_path)
    text = (lists / "rgb.list").read_text().splitlines()
    (lists / "rgb.list").write_text("\n".join(text[:3] + ["/x/not_an_xd_name__0.npy"] + text[3:]))
    with pytest.raises(ReleasedFeaturesError, match=r"rgb.list, line 4: .*not an XD-Violence video name"):
        read_released_lists(RELEASED_FORMATS["xdviodet"], lists)
    (lists / "rgb.list").unlink()
    with pytest.raises(FileNotFoundError, match="rgb.list is missing"):
        read_released_lists(RELEASED_FORMATS["xdviodet"], lists)
    with pytest.raises(ValueError, match="--crop must be 'mean' or a crop index 0..4"):
        ImportConfig("xdviodet", crop="5")


# --------------------------------------------------------------------------- the cache


def test_xdviodet_import_writes_a_valid_grid_cache(tmp_path: Path) -> None:
    root, lists, videos = write_xdviodet(tmp_path)
    missing = videos[2]
    (root / "vggish-features" / "train" / f"{missing.name}__vggish.npy").rename(tmp_path / "aside.npy")
    # a file that leads out of the root is refused like a missing one
    outside = tmp_path / "elsewhere.npy"
    np.save(outside, videos[3].crops[0])
    link = root / "i3d-features" / "RGB" / f"{videos[3].name}__0.npy"
    link.unlink()
    link.symlink_to(outside)
    cache = tmp_path / "xd.zarr"

    # --strict refuses with one line naming every missing file, and writes nothing
    result = cli("import-features", "--format", "xdviodet", "--root", root, "--lists", lists, "--out", cache,
                 "--strict")
    assert result.exit_code == 2, result.output
    line = result.output.strip()
    assert line.startswith("error:") and "\n" not in line and f"{missing.name}__vggish.npy not under" in line
    assert "leads out of the root" in line and not cache.exists()

    result = cli("import-features", "--format", "xdviodet", "--root", root, "--lists", lists, "--out", cache,
                 "--chunk-clips", "3")
    assert result.exit_code == 0, (result.output, result.exception)
    assert "official split ->" in result.output and "2 of 10 listed videos missing" in result.output
    d = _steps(cache)
    config = d["config"]
    assert config.ragged and config.schema_version == 2 and config.step_seconds == pytest.approx(16 / 24)
    assert (config.video.name, config.video.arch, config.video.dim) == ("xdviodet-i3d-rgb", "i3d", VDIM)
    assert (config.audio.name, config.audio.dim, config.video.preprocessing["crop"]) == ("xdviodet-vggish", ADIM,
                                                                                         CROP_MEAN)
    assert len(config.video.checksum) == 64 and config.video.pretrained
    # every imported video: T = its snippets, mean of the 5 crops, VGGish audio, snippet centres
    ok = [v for v in videos if v.name not in (missing.name, videos[3].name, videos[5].name)]
    assert sorted(d["key"]) == sorted(v.name for v in ok)
    for v in ok:
        c = _clip(d, v.name)
        t = v.audio_steps or v.steps
        np.testing.assert_allclose(c["video"], np.mean(v.crops, axis=0)[:t], atol=2e-3)
        np.testing.assert_allclose(c["audio"], v.audio, atol=2e-3)
        assert c["video_mask"].all() and c["audio_mask"].all()
        np.testing.assert_allclose(c["step_time"], (np.arange(t) + 0.5) * 16 / 24)
        assert c["duration"] == pytest.approx(t * 16 / 24)
        assert config.class_names[c["label"]] == {"B1": "fighting", "B2": "shooting", "G": "explosion",
                                                  "B4": "riot", "B6": "car_accident", "A": "normal"}[
            v.name.rsplit("_label_", 1)[1].split("-")[0]]
    with open_cache(cache) as reader:
        status = dict(zip(reader.read("key"), reader.read("status")))
        errors = dict(zip(reader.read("key"), reader.read("error")))
    assert status[videos[5].name] == "error" and "RGB has 8 snippets and VGGish 5" in errors[videos[5].name]
    # the official split, as extract --dataset xd-violence writes it
    split = json.loads(official_split_path(cache).read_text())
    assert sorted(split["train"]) == sorted(v.name for v in videos if v.split == "train"
                                            and v.name not in (missing.name, videos[3].name))
    assert sorted(split["test"]) == sorted(v.name for v in videos if v.split == "test") and split["val"] == []
    assert sorted(split["info"]["missing"]["train"]) == sorted([missing.name, videos[3].name])
    assert split["info"]["annotations"] == str((lists / "annotations.txt").resolve())

    # resumable: the file that arrives is imported, a file that changed is imported again,
    # the rest is kept as it is
    (tmp_path / "aside.npy").rename(root / "vggish-features" / "train" / f"{missing.name}__vggish.npy")
    changed = videos[0]
    changed.crops[1] = changed.crops[1] + 1.0
    crop_file = root / "i3d-features" / "RGB" / f"{changed.name}__1.npy"
    np.save(crop_file, changed.crops[1])
    os.utime(crop_file, (crop_file.stat().st_atime, crop_file.stat().st_mtime + 10))
    result = cli("import-features", "--format", "xdviodet", "--root", root, "--lists", lists, "--out", cache)
    assert result.exit_code == 0, result.output
    assert "imported 2 videos" in result.output and "7 already there" in result.output
    assert "1 of 10 listed videos missing" in result.output
    assert validate(cache).ok
    d = _steps(cache)
    assert missing.name in list(d["key"])
    np.testing.assert_allclose(_clip(d, changed.name)["video"], np.mean(changed.crops, axis=0), atol=2e-3)

    # another crop choice is another feature set: never mixed into this cache
    result = cli("import-features", "--format", "xdviodet", "--root", root, "--lists", lists, "--out", cache,
                 "--crop", "2")
    assert result.exit_code == 2 and "another configuration" in result.output


def test_one_crop_and_hdf5(tmp_path: Path) -> None:
    root, lists, videos = write_xdviodet(tmp_path)
    cache = tmp_path / "xd-crop2.h5"
    summary = import_features(root, cache, ImportConfig("xdviodet", crop="2"), lists=lists)
    assert summary.done == 9 and len(summary.failed) == 1 and summary.missing == 0
    assert validate(cache).ok
    d = _steps(cache)
    assert d["config"].video.preprocessing["crop"] == "2"
    for v in videos[:2]:
        t = v.audio_steps or v.steps
        np.testing.assert_allclose(_clip(d, v.name)["video"], v.crops[2][:t], atol=2e-3)


def test_vadclip_import_has_no_audio(tmp_path: Path) -> None:
    root, lists, videos = write_vadclip(tmp_path)
    cache = tmp_path / "vadclip.zarr"
    summary = import_features(root, cache, ImportConfig("vadclip", feature_dtype="float32"), lists=lists)
    assert summary.done == len(videos) and not summary.failed
    assert validate(cache).ok
    d = _steps(cache)
    config = d["config"]
    assert config.video.name == "vadclip-clip-vit-b16" and config.video.dim == VDIM
    # no audio released: one masked zero per step, never invented features
    assert config.audio.dim == 1 and config.audio.preprocessing["absent"] and not d["audio_mask"].any()
    assert not d["audio"].any() and d["video_mask"].all()
    for v in videos:  # train: the mean of 10 crops; test: its one listed crop
        np.testing.assert_allclose(_clip(d, v.name)["video"], np.mean(v.crops, axis=0), atol=1e-6)
    # --crop 3: only the train videos have that crop; the test ones are missing
    with pytest.raises(MissingFeatureFiles, match=r"__3.npy not under"):
        import_features(root, tmp_path / "c3.zarr", ImportConfig("vadclip", crop="3", strict=True), lists=lists)


# --------------------------------------------------------------------------- stage 2 on it


def test_detection_trains_and_scores_on_imported_features(tmp_path: Path) -> None:
    """The point of importing: ``train --task xd-detection`` on the official split and
    ``evaluate --detection`` at the official frame length (16 frames per snippet)."""
    root, lists, videos = write_xdviodet(tmp_path, extra=6)
    cache, run = tmp_path / "xd.zarr", tmp_path / "run"
    assert cli("import-features", "--format", "xdviodet", "--root", root, "--lists", lists,
               "--out", cache).exit_code == 0
    result = cli("train", "--cache", cache, "--task", "xd-detection", "--head", "pool", "--modality", "fused",
                 "--epochs", "1", "--batch-size", "8", "--out", run)
    assert result.exit_code == 0, (result.output, result.exception)
    # the official length on imported snippets is their 16 T frames (the cache knows T, not
    # the videos' N; docs/xd_violence.md): the default gives it, as --gt-frames all does
    result = cli("evaluate", run, "--detection")
    assert result.exit_code == 0 and "frame AP" in result.output, (result.output, result.exception)
    detection = json.loads((run / "metrics.json").read_text())["detection"]
    test_steps = sum(v.steps for v in videos if v.split == "test")
    assert detection["n_frames"] == 16 * test_steps and detection["n_videos"] == 4


def _lying_npy(path: Path, shape: tuple[int, ...]) -> None:
    """A .npy whose header declares ``shape`` float32 over a 64-byte body (what a damaged
    download or a hostile file looks like); written by numpy's own header writer."""
    from numpy.lib import format as npy_format

    with path.open("wb") as f:
        npy_format.write_array_header_1_0(f, {"descr": "<f4", "fortran_order": False, "shape": shape})
        f.write(b"\0" * 64)


def test_a_header_declaring_a_huge_shape_is_that_videos_error(tmp_path: Path) -> None:
    """Issue 24, fault 12: one .npy whose header declares 10**7 x 10**6 float32 over a 64-byte
    body raised an uncaught MemoryError in import-features, and every video stayed pending.
    The declared size is checked against the file's size before anything is read: that
    video is a failed entry naming the file, the others are imported; the same for an
    audio file, and for the first video's file, where the dims are read from headers."""
    root, lists, videos = write_xdviodet(tmp_path)
    crop = root / "i3d-features" / "RGB" / f"{videos[0].name}__2.npy"   # the first listed video's file
    _lying_npy(crop, (10**7, 10**6))
    audio = root / "vggish-features" / "test" / f"{videos[6].name}__vggish.npy"
    _lying_npy(audio, (2**40, 4))
    cache = tmp_path / "xd.zarr"
    result = cli("import-features", "--format", "xdviodet", "--root", root, "--lists", lists, "--out", cache)
    assert result.exit_code == 0, (result.output, result.exception)
    assert "imported 7 videos" in result.output and "3 failed" in result.output, result.output  # + v=ccc, unalignable
    with open_cache(cache) as reader:
        status = dict(zip(reader.read("key"), reader.read("status")))
        errors = dict(zip(reader.read("key"), reader.read("error")))
    assert "pending" not in {str(s) for s in status.values()}
    assert "declares a float32 array of shape (10000000, 1000000)" in str(errors[videos[0].name])
    assert str(crop) in str(errors[videos[0].name]) and "64 bytes after the header" in str(errors[videos[0].name])
    assert "shape (1099511627776, 4)" in str(errors[videos[6].name])
    assert validate(cache).ok
