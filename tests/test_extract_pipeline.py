"""Stage 1 end to end with the tiny backbones: what lands in the cache, bad input,
resume, formats, parity with direct backbone calls, alignment, and kill -9."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from cache_schema import CacheConfigMismatch, CacheReader, validate
from extract.backbones import load_audio_backbone, load_video_backbone
from extract.decode import decode_clip
from extract.datasets import VAAR_CLASSES, build_manifest
from extract.pipeline import ExtractConfig, run_extract
from tests.media_factory import write_clip

REPO = Path(__file__).resolve().parents[1]
TINY = dict(video_model="tiny", audio_model="tiny", progress=False)


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("vaar")
    write_clip(root / "crash/av.mp4", duration=3.0, brightness=lambda t: 0.2 + 0.2 * t)
    write_clip(root / "normal/av.avi", duration=2.5, vcodec="mpeg4", acodec="mp3")
    write_clip(root / "normal/mute.mp4", duration=2.0, tone_hz=None)
    write_clip(root / "crash/sound.mp3", duration=2.0, video=False, acodec="mp3")
    write_clip(root / "explosion/vp9.webm", duration=2.0, vcodec="libvpx-vp9", acodec="libopus", sample_rate=48000)
    (root / "normal/notes.mp4").write_text("this is not a video")
    (root / "crash/empty.mp4").write_bytes(b"")
    return root


def _extract(root: Path, out: Path, **kw) -> object:
    cfg = ExtractConfig(**{**TINY, "batch_size": 2, "workers": 0, **kw})
    return run_extract(build_manifest("vaar", root), out, cfg)


def test_cache_contents_and_bad_input(dataset: Path, tmp_path: Path) -> None:
    out = tmp_path / "c.zarr"
    summary = _extract(dataset, out, workers=2)
    assert summary.done == 5 and set(summary.failed) == {"normal/notes.mp4", "crash/empty.mp4"}
    assert all(summary.failed.values())
    rep = validate(out)
    assert rep.ok, rep.problems
    with CacheReader(out) as r:
        clips = {c["key"]: c for c in r.clips()}
        assert clips["crash/av.mp4"]["has_video"] and clips["crash/av.mp4"]["has_audio"]
        assert clips["normal/mute.mp4"]["has_video"] and not clips["normal/mute.mp4"]["has_audio"]
        assert clips["crash/sound.mp3"]["has_audio"] and not clips["crash/sound.mp3"]["has_video"]
        assert clips["crash/empty.mp4"]["status"] == "error"
        assert abs(clips["crash/av.mp4"]["duration"] - 3.0) < 0.1
        d = r.load(fields=("video", "audio", "label", "step_time"))
        assert d["video"].shape[1:] == (10, r.config.video.dim)
        labels = {k: VAAR_CLASSES[l] for k, l in zip(d["key"], d["label"])}
        assert labels["explosion/vp9.webm"] == "explosion"
        assert np.all(np.isfinite(d["video"])) and np.all(np.isfinite(d["audio"]))
        assert r.attrs["video_backbone"]["pretrained"] is False
        st = d["step_time"][list(d["key"]).index("crash/av.mp4")]
        np.testing.assert_allclose(st, (np.arange(10) + 0.5) * 0.3, atol=0.02)


def test_resume_skips_finished_and_extends(dataset: Path, tmp_path: Path) -> None:
    out = tmp_path / "c.zarr"
    _extract(dataset, out)
    again = _extract(dataset, out)
    assert again.done == 0 and again.skipped == 7 and not again.failed
    write_clip(dataset / "pain/new.mp4", duration=1.5)
    try:
        more = _extract(dataset, out)
        assert more.done == 1 and more.skipped == 7
        with CacheReader(out) as r:
            assert r.counts() == {"total": 8, "ok": 6, "error": 2, "pending": 0}
    finally:
        (dataset / "pain/new.mp4").unlink()
        (dataset / "pain").rmdir()


def test_formats_equal_and_mismatch_refused(dataset: Path, tmp_path: Path) -> None:
    _extract(dataset, tmp_path / "c.zarr")
    _extract(dataset, tmp_path / "c.h5", fmt="hdf5")
    with CacheReader(tmp_path / "c.zarr") as z, CacheReader(tmp_path / "c.h5") as h:
        assert h.format == "hdf5"
        fields = ("video", "audio", "video_mask", "audio_mask", "step_time", "duration", "status")
        dz, dh = z.load(fields, only_ok=False), h.load(fields, only_ok=False)
        for k in dz:
            np.testing.assert_array_equal(dz[k], dh[k], err_msg=k)
    with pytest.raises(CacheConfigMismatch, match="steps"):
        _extract(dataset, tmp_path / "c.zarr", steps=5)


def test_features_equal_direct_backbone_calls(dataset: Path, tmp_path: Path) -> None:
    """Parity: cached features == the backbones called directly on the same decoded
    frames and audio. Tolerance 1e-4 absolute (float32 cache; batch composition may
    change BLAS summation order, nothing else)."""
    out = tmp_path / "c.zarr"
    _extract(dataset, out, feature_dtype="float32", batch_size=3)
    video = load_video_backbone("tiny")
    audio = load_audio_backbone("tiny")
    clip = decode_clip(dataset / "crash/av.mp4", 10, frame_transform=video.transform)
    v = video.embed(torch.stack([torch.as_tensor(f) for f in clip.frames])).numpy()
    a = audio.embed([(clip.audio, clip.step_bounds)])[0]
    with CacheReader(out) as r:
        row = list(r.keys).index("crash/av.mp4")
        np.testing.assert_allclose(r.read("video")[row], v, atol=1e-4)
        np.testing.assert_allclose(r.read("audio")[row], a, atol=1e-4)


def test_step_features_change_exactly_where_content_changes(tmp_path: Path) -> None:
    """A 4 s clip, 10 steps of 0.4 s: brightness jumps at 2.0 s (start of step 5) and the
    tone jumps at 1.2 s (start of step 3); features must change at exactly those steps."""
    root = tmp_path / "data"
    write_clip(root / "crash/a.mp4", duration=4.0, fps=25, brightness=lambda t: 0.15 if t < 2.0 else 0.85,
               tone_hz=lambda t: 300.0 if t < 1.2 else 2400.0, square=False)
    _extract(root, tmp_path / "c.zarr", feature_dtype="float32")
    with CacheReader(tmp_path / "c.zarr") as r:
        v, a = r.read("video")[0], r.read("audio")[0]
    dv = np.linalg.norm(np.diff(v, axis=0), axis=1)
    da = np.linalg.norm(np.diff(a, axis=0), axis=1)
    assert int(np.argmax(dv)) == 4, dv  # between step 4 and step 5
    assert int(np.argmax(da)) == 2, da  # between step 2 and step 3
    assert np.sort(dv)[-2] < 0.5 * dv.max()


def _cli(*args: str) -> list[str]:
    return [sys.executable, str(REPO / "cli.py"), *args]


def test_kill_9_then_resume_equals_uninterrupted(tmp_path: Path) -> None:
    root = tmp_path / "data"
    for i in range(6):
        write_clip(root / f"{VAAR_CLASSES[i % 3]}/c{i}.mp4", duration=2.0 + 0.25 * i, brightness=lambda t, i=i: 0.1 * i)
    args = ["extract", "--dataset", "synth", "--root", str(root), "--backbones", "tiny", "--workers", "0",
            "--batch-size", "1", "--feature-dtype", "float32"]
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    subprocess.run(_cli(*args, "--out", str(tmp_path / "ref.zarr")), check=True, env=env, capture_output=True)
    killed = tmp_path / "killed.zarr"
    proc = subprocess.Popen(_cli(*args, "--out", str(killed)), env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        try:
            with CacheReader(killed) as r:
                if r.counts()["ok"] >= 2:
                    break
        except Exception:
            pass
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    rep = validate(killed)
    assert rep.ok, rep.problems
    with CacheReader(killed) as r:
        assert 2 <= r.counts()["ok"] < 6, "the kill should land mid-run"
    subprocess.run(_cli(*args, "--out", str(killed)), check=True, env=env, capture_output=True)
    with CacheReader(tmp_path / "ref.zarr") as a, CacheReader(killed) as b:
        assert b.counts()["ok"] == 6 and b.attrs["complete"] is True
        for name in ("video", "audio", "video_mask", "audio_mask", "step_time", "key"):
            np.testing.assert_array_equal(a.read(name), b.read(name), err_msg=name)
