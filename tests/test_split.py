"""Splits: seeded and stored beside the cache, group-aware, stratified, explicit files."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from temporal.data import load_cache
from temporal.split import PARTS, SplitConfig, SplitError, default_split_path, load_or_create_split
from tests.cache_factory import make_config, write_class_cache

CLASSES = ("normal", "crash", "fight", "siren")


@pytest.fixture(scope="module")
def cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("split") / "c.zarr"
    # 120 clips, 3 per source video, one failed extraction
    write_class_cache(path, make_config(classes=CLASSES), 120, clips_per_group=3, errors=(7,))
    return path


def _fresh(cache: Path) -> None:
    default_split_path(cache).unlink(missing_ok=True)


def _groups(data, keys) -> set[str]:
    gmap = dict(zip(data.keys.tolist(), data.groups.tolist()))
    return {gmap[k] for k in keys}


def test_split_is_stored_beside_the_cache_and_reused(cache: Path) -> None:
    _fresh(cache)
    data = load_cache(cache)
    assert data.left_out["error"] == 1 and len(data.keys) == 119
    a = load_or_create_split(data, SplitConfig(seed=3))
    path = default_split_path(cache)
    assert path == cache.parent / "c.zarr.split.json" and path.exists()
    b = load_or_create_split(load_cache(cache), SplitConfig(seed=3))
    assert (a.train, a.val, a.test) == (b.train, b.val, b.test)
    _fresh(cache)
    c = load_or_create_split(data, SplitConfig(seed=3))  # made again from scratch: same seed, same split
    assert (a.train, a.val, a.test) == (c.train, c.val, c.test)
    assert sum(a.info["sizes"].values()) == 119
    assert a.info["kind"] == "stratified-group" and a.info["groups_source"] == "cache"


def test_no_group_in_two_parts_and_strata_roughly_hold(cache: Path) -> None:
    _fresh(cache)
    data = load_cache(cache)
    s = load_or_create_split(data, SplitConfig(seed=1))
    g = {p: _groups(data, s.part(p)) for p in PARTS}
    assert not (g["train"] & g["val"]) and not (g["train"] & g["test"]) and not (g["val"] & g["test"])
    labels = dict(zip(data.keys.tolist(), data.clips.label.tolist()))
    for part, share in (("test", 0.2), ("val", 0.2), ("train", 0.6)):
        n = len(s.part(part))
        assert abs(n / 119 - share) < 0.08
        counts = Counter(labels[k] for k in s.part(part))
        assert set(counts) == set(range(4))
        assert max(counts.values()) - min(counts.values()) <= 4


def test_other_settings_refuse_the_stored_split(cache: Path) -> None:
    _fresh(cache)
    data = load_cache(cache)
    load_or_create_split(data, SplitConfig(seed=0))
    with pytest.raises(SplitError, match="delete it"):
        load_or_create_split(data, SplitConfig(seed=1))


def test_group_pattern_and_groups_file(cache: Path, tmp_path: Path) -> None:
    data = load_cache(cache)
    # keys look like "<class>/src<g>_<i>.mp4": a pattern recovers the cache's groups
    _fresh(cache)
    s = load_or_create_split(data, SplitConfig(group_pattern=r"^(.*/src\d+)_"))
    assert s.info["groups_source"].startswith("pattern:") and s.info["n_groups"] == 40
    # a groups file that puts each whole class in one source forces classes apart
    _fresh(cache)
    table = tmp_path / "groups.tsv"
    table.write_text("key\tsource\n" + "".join(f"{k}\tbig{i // 12}\n" for i, k in enumerate(data.keys.tolist())))
    s = load_or_create_split(data, SplitConfig(groups_file=str(table)))
    assert s.info["groups_source"] == f"file:{table}" and s.info["n_groups"] == 10
    gmap = {k: f"big{i // 12}" for i, k in enumerate(data.keys.tolist())}
    parts = {p: {gmap[k] for k in s.part(p)} for p in PARTS}
    assert not (parts["train"] & parts["test"]) and not (parts["val"] & parts["test"])
    _fresh(cache)
    table.write_text("\n".join(f"{k}\tx" for k in data.keys.tolist()[:5]))
    with pytest.raises(SplitError, match="no entry"):
        load_or_create_split(data, SplitConfig(groups_file=str(table)))
    with pytest.raises(SplitError, match="does not match"):
        load_or_create_split(data, SplitConfig(group_pattern=r"^nothing"))


def test_explicit_split_file_tsv_with_val_carved_from_train(cache: Path, tmp_path: Path) -> None:
    data = load_cache(cache)
    keys = data.keys.tolist()
    # the official split names the failed clip too: it is dropped and counted
    official = tmp_path / "official.tsv"
    failed = f"{CLASSES[7 % 4]}/src{(7 // 4) // 3:03d}_0007.mp4"  # the row that failed extraction
    in_test = {k for k, g in zip(keys, data.groups.tolist()) if int(g[-3:]) % 5 == 0}  # whole sources
    official.write_text("".join(f"{k}\t{'test' if k in in_test else 'train'}\n" for k in keys)
                        + f"{failed}\ttrain\n")
    s = load_or_create_split(data, SplitConfig(split_file=str(official), group_pattern=r"^(.*/src\d+)_"))
    assert s.info["kind"] == "file" and s.info["dropped_from_split"] == 1
    assert set(s.test) == in_test
    assert s.val and not (set(s.val) & set(s.train))
    assert not default_split_path(official).exists()
    # JSON with all three parts is taken as is
    src = [int(g[-3:]) for g in data.groups.tolist()]
    parts = {"train": [k for k, g in zip(keys, src) if g < 6], "val": [k for k, g in zip(keys, src) if g in (6, 7)],
             "test": [k for k, g in zip(keys, src) if g > 7]}
    js = tmp_path / "official.json"
    js.write_text(json.dumps(parts))
    s = load_or_create_split(data, SplitConfig(split_file=str(js)))
    assert s.train == tuple(parts["train"]) and s.val == tuple(parts["val"]) and s.test == tuple(parts["test"])


def test_split_that_leaks_a_group_is_refused(cache: Path, tmp_path: Path) -> None:
    data = load_cache(cache)
    keys = data.keys.tolist()
    order = np.argsort(data.groups)  # clips of one source side by side, then cut mid-group
    leaky = tmp_path / "leaky.json"
    sk = [keys[i] for i in order]
    leaky.write_text(json.dumps({"train": sk[:61], "val": sk[61:90], "test": sk[90:]}))
    with pytest.raises(SplitError, match="leak"):
        load_or_create_split(data, SplitConfig(split_file=str(leaky)))
