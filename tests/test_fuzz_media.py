"""Bad input, fuzzed: real and synthetic media with their bytes mutated (truncated at
random offsets, bytes flipped in the header and in the middle), empty files, text named
.mp4 and media under the wrong extension. The extractor never crashes and never hangs,
records a reason for every file it cannot use, and writes every good clip of the same
run with the same features as a run without the bad files.

Seeded, and small enough for the normal suite; ``pytest --fuzz-long`` mutates every
small real file many more times."""

from __future__ import annotations

import csv
import shutil
import signal
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

import extract.decode_workers as decode_workers
from cache_schema import CacheReader, validate
from extract.datasets import build_manifest
from extract.pipeline import ExtractConfig, hard_limit_s, run_extract
from tests.extract_harness import REALDATA, one_thread
from tests.media_factory import write_clip

CFG = ExtractConfig(video_model="tiny", audio_model="tiny", progress=False, workers=2, batch_size=4, steps=4,
                    feature_dtype="float32", clip_timeout=20.0)
# Small real files of every container and codec family the fuzzer should see.
REAL_SOURCES = (
    "video/moviepy/doc_medias_example3.mp4",  # h264 + mp3 in mp4
    "video/moviepy/transparent.webm",  # vp9 + vorbis
    "video/mmaction2/test.avi",  # mpeg4 + mp3 in avi
    "video/decord/unordered.mov",  # 4 frames, no audio
    "audio/mmaction2/test.wav",  # pcm
    "audio/esc10_crying_baby/testing_1-60997-B.mp3",
)
MAX_LONG_SOURCE_BYTES = 1_000_000


def _mutations(data: bytes, rng: np.random.Generator, rounds: int) -> dict[str, bytes]:
    n = len(data)
    out: dict[str, bytes] = {}
    for i in range(rounds):
        cut = int(rng.integers(1, n))
        out[f"trunc{i}_{cut}"] = data[:cut]
        for where, lo, hi, k in (("head", 0, min(n, 1024), 8), ("mid", n // 3, max(n // 3 + 1, 2 * n // 3), 32)):
            b = bytearray(data)
            for pos in rng.integers(lo, hi, size=k):
                b[pos] ^= int(rng.integers(1, 256))
            out[f"{where}{i}"] = bytes(b)
    return out


def _sources(tmp: Path, long: bool) -> dict[str, bytes]:
    """name (with its true suffix) -> bytes: synthetic clips, and real ones if present."""
    synth = tmp / "synth"
    files = [
        write_clip(synth / "h264_aac.mp4", duration=1.5, brightness=lambda t: 0.3 + 0.2 * t),
        write_clip(synth / "vp9_opus.webm", duration=1.0, vcodec="libvpx-vp9", acodec="libopus", sample_rate=48000),
        write_clip(synth / "mpeg4_mp3.avi", duration=1.0, vcodec="mpeg4", acodec="mp3"),
    ]
    if (REALDATA / "MANIFEST.tsv").exists():
        if long:  # every small real file that is usable as it is
            with (REALDATA / "MANIFEST.tsv").open(newline="") as f:
                rows = [r for r in csv.DictReader(f, delimiter="\t") if r["expect"] != "error"]
            files += [REALDATA / r["path"] for r in rows
                      if (REALDATA / r["path"]).stat().st_size <= MAX_LONG_SOURCE_BYTES]
        else:
            files += [REALDATA / s for s in REAL_SOURCES if (REALDATA / s).exists()]
    return {f"{i:02d}_{p.stem}{p.suffix}": p.read_bytes() for i, p in enumerate(files)}


def _fuzz_tree(root: Path, sources: dict[str, bytes], seed: int, rounds: int) -> tuple[set[str], set[str]]:
    """Write controls (unchanged sources), mutants and hopeless files; returns the keys
    of the controls and of the files that no extractor can use."""
    rng = np.random.default_rng(seed)
    controls, hopeless = set(), set()
    for name, data in sources.items():
        stem, suffix = name.rsplit(".", 1)
        (root / "good").mkdir(parents=True, exist_ok=True)
        (root / "good" / name).write_bytes(data)
        controls.add(f"good/{name}")
        for tag, mutant in _mutations(data, rng, rounds).items():
            (root / "bad").mkdir(exist_ok=True)
            (root / "bad" / f"{stem}.{tag}.{suffix}").write_bytes(mutant)
    (root / "bad" / "empty.mp4").write_bytes(b"")
    (root / "bad" / "notes.mp4").write_text("this is a text file, not a video\n" * 20)
    hopeless |= {"bad/empty.mp4", "bad/notes.mp4"}
    # right bytes, wrong name: the extractor must go by content, never by extension
    by_suffix = {n.rsplit(".", 1)[1]: n for n in sources}
    for true, fake in (("mp4", "mp3"), ("wav", "mp4"), ("mp3", "avi"), ("webm", "mov")):
        if true in by_suffix:
            name = f"{by_suffix[true].rsplit('.', 1)[0]}.really_{true}.{fake}"
            (root / "good" / name).write_bytes(sources[by_suffix[true]])
            controls.add(f"good/{name}")
    return controls, hopeless


def _run(root: Path, out: Path, cfg: ExtractConfig = CFG):
    with one_thread():
        return run_extract(build_manifest("folder", root), out, cfg)


@pytest.fixture
def long_fuzz(request: pytest.FixtureRequest) -> bool:
    return bool(request.config.getoption("--fuzz-long"))


def test_fuzzed_media_never_crash_or_hang_and_good_clips_are_all_written(tmp_path: Path, long_fuzz: bool) -> None:
    sources = _sources(tmp_path, long_fuzz)
    root = tmp_path / "fuzz"
    controls, hopeless = _fuzz_tree(root, sources, seed=20240607, rounds=4 if long_fuzz else 2)
    t0 = time.monotonic()
    summary = _run(root, tmp_path / "fuzz.zarr")
    seconds = time.monotonic() - t0

    rep = validate(tmp_path / "fuzz.zarr")
    assert rep.ok, rep.problems
    with CacheReader(tmp_path / "fuzz.zarr") as r:
        clips = {c["key"]: c for c in r.clips()}
    assert len(clips) == summary.total and all(c["status"] != "pending" for c in clips.values())
    errors = {k for k, c in clips.items() if c["status"] == "error"}
    assert all(clips[k]["error"] for k in errors), "every failure has a reason"
    assert errors == set(summary.failed)
    assert hopeless <= errors
    assert not errors & controls, {k: clips[k]["error"] for k in errors & controls}
    n_bad = sum(k.startswith("bad/") for k in clips)
    assert 0 < len(errors) <= n_bad
    # bounded: every clip within its limit, with room to spare for a loaded machine
    assert seconds < len(clips) * hard_limit_s(CFG.clip_timeout)

    # the good clips of the fuzzed run hold what a run without any bad file writes
    clean = tmp_path / "clean"
    shutil.copytree(root / "good", clean / "good")
    _run(clean, tmp_path / "clean.zarr")
    with CacheReader(tmp_path / "fuzz.zarr") as a, CacheReader(tmp_path / "clean.zarr") as b:
        rows_a = {k: i for i, k in enumerate(a.keys)}
        rows = np.array([rows_a[k] for k in b.keys])
        for name in ("video", "audio"):  # batches hold other clips: BLAS order may differ, nothing else
            np.testing.assert_allclose(a.read(name)[rows], b.read(name), atol=1e-5, err_msg=name)
        for name in ("video_mask", "audio_mask", "step_time", "duration", "status"):
            np.testing.assert_array_equal(a.read(name)[rows], b.read(name), err_msg=name)


def _sleepy_decoder(real):
    """decode_clip that never returns for two files: one sleeps where the in-process
    alarm can interrupt it, the other blocks that alarm, as a decoder stuck inside one C
    call would; only the parent's per-batch timeout can stop the second."""

    def decode(path, *args, **kwargs):
        name = Path(path).name
        if name == "sleepy.mp4":
            time.sleep(600)
        if name == "stuck.mp4":
            signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGALRM})
            time.sleep(600)
        return real(path, *args, **kwargs)

    return decode


def test_the_per_clip_time_limit_holds_even_for_a_decoder_stuck_in_c(tmp_path: Path,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    root = tmp_path / "data"
    for name in ("a.mp4", "sleepy.mp4", "stuck.mp4", "z.mp4"):
        write_clip(root / name, duration=1.0)
    monkeypatch.setattr(decode_workers, "decode_clip", _sleepy_decoder(decode_workers.decode_clip))  # forked workers inherit it
    # 2 s: short, yet far beyond what the good 1 s clips need even on a loaded machine
    cfg = replace(CFG, workers=1, batch_size=1, clip_timeout=2.0)
    t0 = time.monotonic()
    summary = _run(root, tmp_path / "c.zarr", cfg)
    assert time.monotonic() - t0 < 60
    assert set(summary.failed) == {"sleepy.mp4", "stuck.mp4"} and summary.done == 2
    assert "exceeded" in summary.failed["sleepy.mp4"]
    assert "hung" in summary.failed["stuck.mp4"]
    assert validate(tmp_path / "c.zarr").ok
