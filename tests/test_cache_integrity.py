"""Which chunks of a cache count as damaged (``cache_schema.integrity``), shared by
``validate`` and the writer's repair: deleted chunk files are found instead of being read
as zeros, a run killed while adding rows stays valid, and every repair leaves a valid
cache whose damaged clips are pending."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Callable

import numpy as np
import pytest

from cache_schema import CacheReader, CacheWriter, ClipEntry, validate
from cache_schema.lock import CacheLock, CacheLocked
from cache_schema.storage import open_backend
from tests.cache_factory import make_config, write_cache

CONFIG = make_config()


@pytest.fixture(scope="module")
def pristine(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[str]]:
    path = tmp_path_factory.mktemp("integrity") / "c.zarr"
    return path, write_cache(path, CONFIG, n=10, chunk_clips=4)


def _unlink(rel: str) -> Callable[[Path], None]:
    return lambda p: (p / rel).unlink()


def _half_extended(p: Path) -> None:
    b = open_backend(p, "a")
    for name in ("video", "audio", "status"):  # killed before the key array was resized
        b.resize(name, 13)


@pytest.mark.parametrize("damage,broken,redo", [
    (_unlink("video/c/1/0/0"), [4, 5, 6, 7], [4, 5, 6, 7]),  # features deleted: not zeros
    (_unlink("status/c/2"), [8, 9], [8, 9]),  # finished clips without a status
    (_unlink("label/c/1"), [4, 5, 6, 7], []),  # restored from the manifest, features kept
    (_half_extended, [], []),  # a run killed while adding rows: valid as it is
])
def test_damage_is_named_and_repaired(pristine: tuple[Path, list[str]], tmp_path: Path,
                                      damage: Callable[[Path], None], broken: list[int], redo: list[int]) -> None:
    src, keys = pristine
    path = tmp_path / "c.zarr"
    shutil.copytree(src, path)
    damage(path)
    rep = validate(path)
    assert rep.broken_keys == [keys[i] for i in broken]
    assert rep.ok == (not broken)
    entries = [ClipEntry(k, i % 2, k) for i, k in enumerate(keys)]
    with CacheWriter.open(path, CONFIG, entries, chunk_clips=4) as w:
        assert w.todo(keys) == [keys[i] for i in redo]
        assert w.counts()["pending"] == len(redo)
    assert validate(path).ok
    with CacheReader(path) as r, CacheReader(src) as ref:
        ok = r.ok_rows()
        assert list(ok) == [i for i in range(10) if i not in redo]
        for name in ("video", "audio", "label"):
            np.testing.assert_array_equal(r.read(name)[ok], ref.read(name)[ok])


def test_a_lost_key_chunk_frees_its_rows_for_the_clips(pristine: tuple[Path, list[str]], tmp_path: Path) -> None:
    src, keys = pristine
    path = tmp_path / "c.zarr"
    shutil.copytree(src, path)
    (path / "key" / "c" / "0").unlink()
    rep = validate(path)
    assert not rep.ok and rep.broken_keys == ["row 0", "row 1", "row 2", "row 3"]
    entries = [ClipEntry(k, i % 2, k) for i, k in enumerate(keys)]
    with CacheWriter.open(path, CONFIG, entries, chunk_clips=4) as w:
        assert sorted(w.todo(keys)) == sorted(keys[:4])  # the freed rows take their clips back
    with CacheReader(path) as r:
        assert r.n == 10 and sorted(r.keys) == sorted(keys)
    assert validate(path).ok


def test_lock_is_exclusive_and_says_who_holds_it(tmp_path: Path) -> None:
    cache = tmp_path / "c.zarr"
    with CacheLock(cache):
        with pytest.raises(CacheLocked, match=r"is being written by pid \d+ \(host .+\) since"):
            CacheLock(cache).acquire()
    with CacheLock(cache) as again:  # released on exit
        assert again.held
