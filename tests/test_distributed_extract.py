"""Distributed extraction on CPU with gloo: torchrun with 2 processes writes the same cache
as one process, clip for clip and bit for bit; a rerun with another number of ranks
extracts only the missing clips; one rank's failure or death stops nobody forever and
loses nothing; HDF5 is refused; a rank never writes a chunk of another."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from cache_schema import CacheError, CacheReader, CacheWriter, ClipRecord, validate
from extract.distributed import DistEnv, plan_shards
from extract.pipeline import run_extract
from tests.extract_harness import (
    CLI_TINY,
    CFG,
    DEADLINE_S,
    REPO,
    DiskFullAtClip,
    PauseBeforeStatus,
    assert_same_cache,
    extract_here,
    fork_extract,
    fork_ranks,
    join,
    kill,
    make_dataset,
    manifest,
    wait_for,
)

TORCHRUN = Path(sys.executable).parent / "torchrun"


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_dataset(tmp_path_factory.mktemp("dist") / "data", n=9)


@pytest.fixture(scope="module")
def ref(data: Path) -> Path:
    out = data.parent / "ref.zarr"
    extract_here(data, out)
    return out


def _last_run(cache: Path) -> dict:
    with CacheReader(cache) as r:
        return r.attrs["last_run"]


# -- the plan -----------------------------------------------------------------------------

def test_shards_are_whole_chunks_disjoint_complete_and_balanced() -> None:
    rows = list(range(103))
    shards = plan_shards(rows, chunk_rows=8, world=4)
    got = sorted(r for s in shards for r in s.rows)
    assert got == rows  # complete and disjoint
    chunks = [c for s in shards for c in s.chunks]
    assert len(chunks) == len(set(chunks)) == 13  # every chunk in exactly one shard
    for s in shards:
        assert {r // 8 for r in s.rows} == set(s.chunks) and list(s.rows) == sorted(s.rows)
    sizes = [len(s.rows) for s in shards]
    assert max(sizes) - min(sizes) <= 8  # at most one chunk apart
    assert plan_shards(rows, 8, 4) == shards  # every rank computes the same plan


def test_shards_of_a_resume_cover_only_pending_rows_for_any_world() -> None:
    pending = [1, 2, 3, 9, 17, 18, 19, 20, 21, 40]
    for world in (1, 2, 3, 5):
        shards = plan_shards(pending, chunk_rows=4, world=world)
        assert sorted(r for s in shards for r in s.rows) == pending
        owners = {c: i for i, s in enumerate(shards) for c in s.chunks}
        assert all(owners[r // 4] == i for i, s in enumerate(shards) for r in s.rows)


def test_shards_balance_by_weight() -> None:
    weights = [100.0] * 4 + [1.0] * 12  # one heavy chunk, three light ones
    shards = plan_shards(list(range(16)), chunk_rows=4, world=2, weights=weights)
    assert [len(s.rows) for s in shards] == [4, 12]


def test_rank_comes_from_torchrun_variables() -> None:
    assert DistEnv.from_environ({}) == DistEnv(0, 1, 0)
    env = DistEnv.from_environ({"RANK": "3", "WORLD_SIZE": "4", "LOCAL_RANK": "1"})
    assert (env.rank, env.world, env.local_rank, env.distributed, env.is_main) == (3, 4, 1, True, False)
    with pytest.raises(ValueError, match="rank 4 of 4"):
        DistEnv.from_environ({"RANK": "4", "WORLD_SIZE": "4"})


# -- refusals and the ownership rule --------------------------------------------------------

def test_hdf5_is_refused_in_a_distributed_run(data: Path, tmp_path: Path) -> None:
    with pytest.raises(CacheError, match=r"HDF5 cache cannot take the concurrent writers.*Zarr"):
        run_extract(manifest(data), tmp_path / "c.h5", CFG, env=DistEnv(0, 2, 0))
    assert not (tmp_path / "c.h5").exists()


def test_a_rank_cannot_write_another_ranks_chunk(ref: Path) -> None:
    with CacheReader(ref) as r:
        config, keys = r.config, list(r.keys)
    w = CacheWriter.attach(ref, config, {k: i for i, k in enumerate(keys)}, owned_chunks={0})
    with pytest.raises(RuntimeError, match=r"chunks \[1\] that belong to another rank"):
        w.write([ClipRecord.failed(keys[2], "never written")])  # row 2 is in chunk 1
    with pytest.raises(RuntimeError, match="only the process that opened the cache"):
        w.finish()
    assert validate(ref).ok


# -- real runs ------------------------------------------------------------------------------

@pytest.mark.skipif(not TORCHRUN.exists(), reason="torchrun is not installed beside this python")
def test_torchrun_two_ranks_equal_one_process(data: Path, ref: Path, tmp_path: Path) -> None:
    out = tmp_path / "c.zarr"
    cmd = [str(TORCHRUN), "--nproc-per-node", "2", "--standalone", str(REPO / "cli.py"), "extract",
           "--dataset", "synth", "--root", str(data), "--out", str(out), "--device", "cpu", *CLI_TINY]
    proc = subprocess.run(cmd, env={**os.environ, "HF_HUB_OFFLINE": "1"}, capture_output=True, text=True,
                          timeout=DEADLINE_S * 2)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert validate(out).ok
    assert_same_cache(ref, out)
    ranks = _last_run(out)["ranks"]
    assert [r["rank"] for r in ranks] == [0, 1] and all(r["done"] > 0 for r in ranks)
    assert sum(r["failed"] for r in ranks) == 1  # the bad file, on one rank; the other went on
    assert "ranks: 0:" in proc.stdout and "rank 1:" in proc.stdout


def test_resume_with_another_number_of_ranks_extracts_only_missing_clips(data: Path, ref: Path,
                                                                        tmp_path: Path) -> None:
    out = tmp_path / "c.zarr"
    marker = tmp_path / "paused"
    p = fork_extract(data, out, faults=(PauseBeforeStatus(nth=4, marker=marker),))  # one process, killed mid-run
    wait_for(marker.exists, "the first run to be writing its 4th clip")
    kill(p)
    with CacheReader(out) as r:
        total, finished = r.n, r.counts()["ok"] + r.counts()["error"]
    assert finished == 3

    assert join(fork_ranks(data, out, world=3)) == [0, 0, 0]
    last = _last_run(out)
    assert last["done"] + last["failed"] == total - finished  # only the missing clips
    assert len(last["ranks"]) == 3
    assert_same_cache(ref, out)

    assert join(fork_ranks(data, out, world=2)) == [0, 0]
    assert _last_run(out)["done"] == 0  # nothing left to do
    assert_same_cache(ref, out)


def test_a_failing_rank_stops_the_run_cleanly_and_a_rerun_completes(data: Path, ref: Path, tmp_path: Path) -> None:
    out = tmp_path / "c.zarr"
    codes = join(fork_ranks(data, out, world=2, faults={1: (DiskFullAtClip(nth=2),)}))
    assert codes == [1, 1]  # both stop, neither waits for the other
    assert validate(out).ok
    with CacheReader(out) as r:
        c = r.counts()
        assert 0 < c["ok"] + c["error"] < r.n and c["pending"] > 0
    assert join(fork_ranks(data, out, world=2)) == [0, 0]
    assert_same_cache(ref, out)


def test_a_killed_rank_does_not_hang_the_others(data: Path, ref: Path, tmp_path: Path) -> None:
    out = tmp_path / "c.zarr"
    marker = tmp_path / "rank1-writing"
    ranks = fork_ranks(data, out, world=2, faults={1: (PauseBeforeStatus(nth=1, marker=marker),)})
    wait_for(marker.exists, "rank 1 to be writing")
    kill(ranks[1])  # kill -9 one rank, as a node failure would
    assert join(ranks[:1], timeout=60) == [1]  # rank 0 finishes its shard, then reports the loss
    assert validate(out).ok
    extract_here(data, out)  # and one process completes what rank 1 left
    assert_same_cache(ref, out)
