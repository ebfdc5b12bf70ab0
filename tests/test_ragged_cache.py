"""The ragged cache (schema v2, time-grid caches): clips of different step counts stored
in step blocks without padding, with everything the dense cache promises: round trip in
both formats, status last and resume after a kill, tail steps of a killed batch trimmed,
damaged block chunks putting exactly their clips back to pending, validate, attached
ranks writing only their own blocks, and ``load_steps`` serving both layouts."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

from cache_schema import CacheReader, CacheSchemaError, CacheWriter, ClipEntry, ClipRecord, cache_info, validate
from cache_schema.ragged import append_steps, block_array
from cache_schema.storage import open_backend
from tests.cache_factory import (grid_duration, make_config, make_grid_config, make_ragged_cache, ragged_record,
                                 write_cache)

COUNTS = [3, 7, 1, 12, 5, 9]


def _write(path: Path, config, counts, fmt=None, chunk_clips=2, step_chunk=4, seed=0, n_write=None):
    """A ragged cache whose clips ``i`` have ``counts[i]`` steps; returns keys and records."""
    rng = np.random.default_rng(seed)
    keys = [f"c{i}.mp4" for i in range(len(counts))]
    records = [ragged_record(k, config, rng, grid_duration(config, c)) for k, c in zip(keys, counts)]
    with CacheWriter.open(path, config, [ClipEntry(k, i % 2) for i, k in enumerate(keys)], fmt=fmt,
                          chunk_clips=chunk_clips, step_chunk=step_chunk) as w:
        w.write(records[:n_write])
        w.finish()
    return keys, records


def _assert_steps(path: Path, records: list[ClipRecord], rows) -> None:
    with CacheReader(path) as r:
        d = r.load_steps(fields=("video", "audio", "video_mask", "step_time"), rows=np.asarray(rows))
        for i, row in enumerate(rows):
            sl = slice(d["offsets"][i], d["offsets"][i + 1])
            np.testing.assert_array_equal(d["video"][sl], records[row].video.astype(r.config.feature_dtype))
            np.testing.assert_array_equal(d["audio"][sl], records[row].audio.astype(r.config.feature_dtype))
            np.testing.assert_array_equal(d["step_time"][sl], records[row].step_time)


@pytest.mark.parametrize("fmt,name", [("zarr", "c.zarr"), ("hdf5", "c.h5")])
def test_roundtrip_of_different_step_counts(tmp_path: Path, fmt: str, name: str) -> None:
    config = make_grid_config(feature_dtype="float16")
    path = tmp_path / name
    keys, records = _write(path, config, COUNTS, fmt=fmt)
    with CacheReader(path) as r:
        assert r.format == fmt and r.ragged and r.config == config and r.layout.step_seconds == 0.5
        assert r.attrs["schema_version"] == 2
        np.testing.assert_array_equal(r.step_counts(), COUNTS)
        d = r.load_steps(fields=("label", "video", "audio", "video_mask", "audio_mask"))
        np.testing.assert_array_equal(d["offsets"], np.concatenate([[0], np.cumsum(COUNTS)]))
        assert d["video"].shape == (sum(COUNTS), 8) and d["video"].dtype == np.float32
        assert d["video_mask"].dtype == bool and d["video_mask"].all()
        assert list(d["key"]) == keys and list(d["label"]) == [0, 1, 0, 1, 0, 1]
        half = r.load_steps(fields=("video",), rows=np.array([3, 0]), float32=False)  # any row order, cache dtype
        assert half["video"].dtype == np.float16 and list(half["offsets"]) == [0, 12, 15]
        np.testing.assert_array_equal(half["video"][:12], records[3].video.astype(np.float16))
        with pytest.raises(CacheSchemaError, match="load_steps"):
            r.load()
        assert all(c["has_video"] and c["has_audio"] for c in r.clips())
        assert r.backend.has(block_array(2, "video")) and not r.backend.has(block_array(3, "video"))
    _assert_steps(path, records, range(len(COUNTS)))
    info = cache_info(path)
    assert info["layout"] == "steps of 0.5 s" and info["steps"] == {"stored": 37, "referenced": 37, "unreferenced": 0}
    assert validate(path).ok


@pytest.mark.parametrize("fmt,name", [("zarr", "c.zarr"), ("hdf5", "c.h5")])
def test_a_kill_before_status_leaves_the_batch_pending_and_its_steps_are_trimmed(
        tmp_path: Path, fmt: str, name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    config = make_grid_config()
    path = tmp_path / name
    keys, records = _write(path, config, COUNTS, fmt=fmt, n_write=3)

    def killed(self, rows):
        raise KeyboardInterrupt("killed")

    w = CacheWriter.open(path, config, [ClipEntry(k, i % 2) for i, k in enumerate(keys)])
    with monkeypatch.context() as m:
        m.setattr(CacheWriter, "_before_status", killed)
        with pytest.raises(KeyboardInterrupt):
            w.write(records[3:])  # steps and offsets written, status not
    w.close()
    info = cache_info(path)
    assert info["counts"]["pending"] == 3 and info["steps"]["unreferenced"] == 12 + 5 + 9  # blocks 1 and 2 got tails
    assert validate(path).ok  # pending clips and unreferenced steps are no defect
    with CacheWriter.open(path, config, [ClipEntry(k, i % 2) for i, k in enumerate(keys)]) as w:
        assert w.todo(keys) == keys[3:]
        assert cache_info(path)["steps"]["unreferenced"] == 0  # open trimmed the tails
        w.write(records[3:])
        w.write([records[0]])  # extracted again (say, its file changed): fresh steps, old ones unreferenced
        w.finish()
    assert cache_info(path)["steps"] == {"stored": 37 + 3, "referenced": 37, "unreferenced": 3}
    assert validate(path).ok
    _assert_steps(path, records, range(len(COUNTS)))


def test_tail_steps_of_a_killed_batch_are_trimmed_on_open_never_on_attach(tmp_path: Path) -> None:
    config = make_grid_config()
    path = make_ragged_cache(tmp_path / "c.zarr", COUNTS, config=config, chunk_clips=2, step_chunk=4)
    b = open_backend(path, "r+")
    # clip 5 extracted again and killed before its status: pending (the writer's first
    # step for a finished clip), 6 new steps appended, its new offset and count written
    b.write("status", np.array([5]), np.array([""], dtype=object))
    start = append_steps(b, 2, {"video": np.ones((6, 8), np.float32), "audio": np.ones((6, 6), np.float32),
                                "video_mask": np.ones(6, bool), "audio_mask": np.ones(6, bool),
                                "step_time": np.arange(6.0)})
    b.write("step_offset", np.array([5]), np.array([start]))
    b.write("step_count", np.array([5]), np.array([6], np.int32))
    b.close()
    assert start == 5 + 9 and validate(path).ok
    assert cache_info(path)["steps"]["unreferenced"] == 9 + 6
    rows = {k: i for i, k in enumerate(CacheReader(path).keys)}
    with CacheWriter.attach(path, config, rows, owned_chunks=[2]) as w:  # attach never trims
        assert w.backend.shape(block_array(2, "video"))[0] == 20
    with CacheWriter.open(path, config, [ClipEntry(k) for k in rows]) as w:
        assert w.todo(list(rows)) == ["crash/clip_0005.mp4"]
        assert w.backend.shape(block_array(2, "step_time"))[0] == 5  # clip 4's steps only
    assert validate(path).ok and cache_info(path)["steps"]["unreferenced"] == 0


@pytest.fixture(scope="module")
def pristine(tmp_path_factory: pytest.TempPathFactory):
    path = tmp_path_factory.mktemp("ragged") / "c.zarr"
    return path, *_write(path, make_grid_config(), COUNTS)  # block 1: clip 2 at step 0, clip 3 at steps 1-12


@pytest.mark.parametrize("damage,broken", [
    ("video/c/1/0", [3]),        # steps 4-7 of block 1 (a deleted chunk file): clip 3 only
    ("truncate step_time/c/0", [2, 3]),  # steps 0-3 (a torn chunk file): clips 2 and 3
    ("audio_mask", [2, 3]),      # the whole array is gone
])
def test_a_damaged_block_chunk_puts_its_clips_back_to_pending(pristine, tmp_path: Path, damage: str,
                                                              broken: list[int]) -> None:
    src, keys, records = pristine
    path = tmp_path / "c.zarr"
    shutil.copytree(src, path)
    target = path / "steps" / "b000001" / damage.split()[-1]
    if damage.startswith("truncate"):
        target.write_bytes(target.read_bytes()[:7])
    elif target.is_dir():
        shutil.rmtree(target)
    else:
        target.unlink()
    rep = validate(path)
    assert not rep.ok and rep.broken_keys == [keys[i] for i in broken]
    with CacheWriter.open(path, make_grid_config(), [ClipEntry(k, i % 2) for i, k in enumerate(keys)]) as w:
        assert w.todo(keys) == [keys[i] for i in broken]
        _assert_steps(path, records, [i for i in range(6) if i not in broken])  # the others intact
        w.write([records[i] for i in broken])
    assert validate(path).ok


def test_validate_catches_a_bad_offset_or_count(tmp_path: Path) -> None:
    config = make_grid_config()
    path = make_ragged_cache(tmp_path / "c.zarr", COUNTS, config=config, chunk_clips=2, errors=(4,))
    keys = list(CacheReader(path).keys)
    b = open_backend(path, "r+")
    b.write("step_count", np.array([1]), np.array([6], np.int32))  # clip 1 has 7 steps by its duration
    b.write("step_offset", np.array([3]), np.array([9]))  # clip 3's 12 steps would end past its block
    b.write("step_count", np.array([4]), np.array([2], np.int32))  # a failed clip with steps
    b.close()
    rep = validate(path)
    assert rep.broken_keys == [keys[1], keys[3], keys[4]]
    text = "\n".join(rep.problems)
    assert "step_count 6, but steps of 0.5 s give a clip of 3.25 s 7 steps" in text
    assert "steps 13-20 that ok clips reference lie past its end (13 steps)" in text
    assert "a failed clip has no steps" in text


def test_attached_ranks_write_only_their_own_blocks(tmp_path: Path) -> None:
    config = make_grid_config()
    path = tmp_path / "c.zarr"
    rng = np.random.default_rng(1)
    keys = [f"c{i}.mp4" for i in range(6)]
    records = [ragged_record(k, config, rng, grid_duration(config, c)) for k, c in zip(keys, COUNTS)]
    entries = [ClipEntry(k) for k in keys]
    with CacheWriter.open(path, config, entries, chunk_clips=2, step_chunk=4) as w0:
        w0.restrict_to([0, 2])
        rows = {k: w0.row_of(k) for k in keys}
        with CacheWriter.attach(path, config, rows, owned_chunks=[1]) as w1:
            with pytest.raises(RuntimeError, match="belong to another rank"):
                w1.write([records[2], records[4]])
            w1.write(records[2:4])
            w0.write(records[:2] + records[4:])
            with pytest.raises(RuntimeError, match="belong to another rank"):
                w0.write([records[3]])
        assert w0.finish()["pending"] == 0
    assert validate(path).ok
    _assert_steps(path, records, range(6))


def test_load_steps_of_a_dense_cache_equals_its_arrays(tmp_path: Path) -> None:
    config = make_config(steps=4)
    write_cache(tmp_path / "c.zarr", config, n=5)
    with CacheReader(tmp_path / "c.zarr") as r:
        dense = r.load(fields=("video", "audio", "video_mask", "step_time"))
        ragged = r.load_steps(fields=("video", "audio", "video_mask", "step_time"))
        assert not r.ragged and list(r.step_counts()) == [4] * 5 and r.stored_steps() == 20
        np.testing.assert_array_equal(ragged["offsets"], np.arange(6) * 4)
        for name in ("video", "audio", "video_mask", "step_time"):
            np.testing.assert_array_equal(ragged[name], dense[name].reshape(20, *dense[name].shape[2:]))
