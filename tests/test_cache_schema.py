"""The cache contract: both formats, resume/extend, refusing mixed configurations,
status-last writes and validation of damaged caches."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from cache_schema import (
    CacheConfigMismatch,
    CacheReader,
    CacheWriter,
    ClipEntry,
    ClipRecord,
    cache_info,
    validate,
)
from cache_schema.schema import ARRAYS
from cache_schema.storage import open_backend
from tests.cache_factory import make_config, make_grid_config, ok_record, ragged_record, write_cache


def _record(key: str, config, rng: np.random.Generator) -> ClipRecord:
    """An ok clip of either layout (a time grid's clip: 2.25 s, so 5 steps of 0.5 s)."""
    return ragged_record(key, config, rng, 2.25) if config.ragged else ok_record(key, config, rng)


BOTH_LAYOUTS = pytest.mark.parametrize("config", [make_config(), make_grid_config()], ids=["dense", "ragged"])


@pytest.mark.parametrize("fmt,name", [("zarr", "c.zarr"), ("hdf5", "c.h5")])
def test_roundtrip_both_formats(tmp_path: Path, fmt: str, name: str) -> None:
    config = make_config(feature_dtype="float16")
    keys = write_cache(tmp_path / name, config, n=9, fmt=fmt)
    with CacheReader(tmp_path / name) as r:
        assert r.format == fmt
        assert r.config == config
        d = r.load()
        assert list(d["key"]) == keys
        assert d["video"].shape == (9, 10, 8) and d["video"].dtype == np.float32
        assert d["audio"].shape == (9, 10, 6)
        assert r.counts() == {"total": 9, "ok": 9, "error": 0, "pending": 0}
        assert r.attrs["complete"] is True
        assert r.attrs["video_backbone"]["pretrained"] is False
    assert validate(tmp_path / name).ok


def test_formats_read_back_equal(tmp_path: Path) -> None:
    config = make_config()
    write_cache(tmp_path / "a.zarr", config, n=7, seed=3, fmt="zarr")
    write_cache(tmp_path / "a.h5", config, n=7, seed=3, fmt="hdf5")
    with CacheReader(tmp_path / "a.zarr") as z, CacheReader(tmp_path / "a.h5") as h:
        dz, dh = z.load(fields=("video", "audio", "video_mask", "label", "step_time")), h.load(
            fields=("video", "audio", "video_mask", "label", "step_time"))
        for k in dz:
            np.testing.assert_array_equal(np.asarray(dz[k]), np.asarray(dh[k]))


def test_absent_modality_is_zero_and_masked(tmp_path: Path) -> None:
    config = make_config()
    rng = np.random.default_rng(0)
    entries = [ClipEntry("a.mp4", 0), ClipEntry("b.mp4", 1)]
    with CacheWriter.open(tmp_path / "c.zarr", config, entries) as w:
        rec = ok_record("a.mp4", config, rng, audio_mask=np.zeros(10, bool))
        w.write([rec, ClipRecord.failed("b.mp4", "no streams")])
    with CacheReader(tmp_path / "c.zarr") as r:
        d = r.load(fields=("audio", "audio_mask", "video_mask"), only_ok=False)
        assert not d["audio_mask"][0].any() and np.all(d["audio"][0] == 0)
        assert not d["video_mask"][1].any() and np.all(d["audio"][1] == 0)
        clips = r.clips()
        assert clips[1]["status"] == "error" and clips[1]["error"] == "no streams"
        assert clips[0]["has_video"] and not clips[0]["has_audio"]


@BOTH_LAYOUTS
def test_resume_and_extend(tmp_path: Path, config) -> None:
    rng = np.random.default_rng(0)
    entries = [ClipEntry(f"c{i}.mp4", 0) for i in range(5)]
    with CacheWriter.open(tmp_path / "c.zarr", config, entries, chunk_clips=2) as w:
        w.write([_record(e.key, config, rng) for e in entries[:2]])
        assert w.todo([e.key for e in entries]) == ["c2.mp4", "c3.mp4", "c4.mp4"]
        assert w.finish()["pending"] == 3
    assert validate(tmp_path / "c.zarr").ok  # pending clips are not defects
    more = entries + [ClipEntry("new/c9.mp4", 1)]
    with CacheWriter.open(tmp_path / "c.zarr", config, more, chunk_clips=2) as w:
        assert w.todo([e.key for e in more]) == ["c2.mp4", "c3.mp4", "c4.mp4", "new/c9.mp4"]
    with CacheReader(tmp_path / "c.zarr") as r:
        assert r.n == 6 and r.read("label")[5] == 1 and r.attrs["complete"] is False


def test_config_mismatch_is_refused(tmp_path: Path) -> None:
    write_cache(tmp_path / "c.zarr", make_config(), n=3)
    other = make_config(steps=5)
    with pytest.raises(CacheConfigMismatch, match="steps"):
        CacheWriter.open(tmp_path / "c.zarr", other, [ClipEntry("x.mp4")])
    # other weights (as the presets tiny and random are): refused, naming the field
    with pytest.raises(CacheConfigMismatch, match="video weights: requested sha256 rrrr"):
        CacheWriter.open(tmp_path / "c.zarr", make_config(video_name="random", video_checksum="r" * 8),
                         [ClipEntry("x.mp4")])
    with pytest.raises(CacheConfigMismatch, match="audio preprocessing sample_rate: requested 8000, cache has 16000"):
        CacheWriter.open(tmp_path / "c.zarr", make_config(audio_preprocessing={"sample_rate": 8000}),
                         [ClipEntry("x.mp4")])


def test_same_weights_under_another_name_extend_the_cache(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """The checksum identifies the weights: a local copy of them (another name) gives the
    same features, so it may resume the cache; the name is only reported."""
    write_cache(tmp_path / "c.zarr", make_config(), n=3)
    with caplog.at_level("WARNING", logger="cache_schema.writer"):
        with CacheWriter.open(tmp_path / "c.zarr", make_config(video_name="/models/copy.safetensors"),
                              [ClipEntry("x.mp4")]) as w:
            assert w.todo(["x.mp4"]) == ["x.mp4"]
    assert "video name: requested '/models/copy.safetensors', cache has 'tiny'" in caplog.text
    with CacheReader(tmp_path / "c.zarr") as r:  # the cache keeps what it recorded
        assert r.n == 4 and r.config.video.name == "tiny"


@BOTH_LAYOUTS
def test_status_written_last(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, config) -> None:
    """A crash after the features but before the status leaves the clip pending."""
    entries = [ClipEntry("a.mp4", 0)]
    w = CacheWriter.open(tmp_path / "c.zarr", config, entries)
    real = w.backend.write

    def dying_write(name, rows, values):
        if name == "status":
            raise KeyboardInterrupt("killed")
        real(name, rows, values)

    monkeypatch.setattr(w.backend, "write", dying_write)
    with pytest.raises(KeyboardInterrupt):
        w.write([_record("a.mp4", config, np.random.default_rng(0))])
    with CacheReader(tmp_path / "c.zarr") as r:
        assert r.counts()["pending"] == 1 and len(r.ok_rows()) == 0
        assert not config.ragged or r.step_counts().sum() == 0  # pending: no steps, whatever was written


def test_damaged_chunk_is_named_and_repaired(tmp_path: Path) -> None:
    config = make_config()
    keys = write_cache(tmp_path / "c.zarr", config, n=8, chunk_clips=4)
    chunk = tmp_path / "c.zarr" / "video" / "c" / "1" / "0" / "0"
    assert chunk.exists()
    chunk.write_bytes(chunk.read_bytes()[:10])  # truncated chunk file
    rep = validate(tmp_path / "c.zarr")
    assert not rep.ok
    assert rep.broken_keys == keys[4:8]
    entries = [ClipEntry(k, i % 2, k) for i, k in enumerate(keys)]
    with CacheWriter.open(tmp_path / "c.zarr", config, entries, chunk_clips=4) as w:
        assert w.todo(keys) == keys[4:8]
    assert validate(tmp_path / "c.zarr").ok  # reset to pending: nothing claims to be valid


def test_validate_catches_inconsistent_clip(tmp_path: Path) -> None:
    config = make_config()
    write_cache(tmp_path / "c.zarr", config, n=4)
    b = open_backend(tmp_path / "c.zarr", "a")
    b.write("video_mask", np.array([2]), np.zeros((1, 10), bool))  # features remain non-zero
    rep = validate(tmp_path / "c.zarr")
    assert not rep.ok and any("video_mask is false" in p for p in rep.problems)
    assert rep.broken_keys == ["normal/clip_0002.mp4"]


def test_validate_missing_cache(tmp_path: Path) -> None:
    rep = validate(tmp_path / "nope.zarr")
    assert not rep.ok and "no cache" in rep.problems[0]


def test_a_keyless_row_is_no_pending_clip_and_does_not_stay(tmp_path: Path) -> None:
    """A run that failed between giving a new clip a row and its key (the state a name
    that could not be stored left) must not leave ``cache info`` saying complete while a
    row is pending."""
    config = make_config(steps=4)
    path = tmp_path / "c.zarr"
    keys = write_cache(path, config, 3, chunk_clips=2)
    backend = open_backend(path, "r+")
    for spec in ARRAYS:  # one row more, with no key and pending, as the interrupted extension left it
        backend.resize(spec.name, 4)
    backend.write("status", np.array([3]), np.array([""], dtype=object))
    backend.close()
    info = cache_info(path)
    assert info["counts"]["pending"] == 0 and info["counts"]["total"] == 3 and info["attrs"]["complete"] is True
    assert [c["key"] for c in info["clips"]] == keys
    assert validate(path).counts["pending"] == 0
    with CacheWriter.open(path, config, [ClipEntry(k) for k in keys]) as w:  # the next run: the row is gone
        assert w.counts() == {"ok": 3, "error": 0, "pending": 0}
    with CacheReader(path) as r:
        assert r.n == 3
    assert validate(path).ok
