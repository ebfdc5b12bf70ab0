"""Faults during stage 1 never lose finished clips or leave wrong features: kill -9 at
several points, two writers on one cache, damaged chunk files, a full disk and an
unwritable output folder. Every fault ends with the same check: ``validate`` passes, and
a rerun completes the cache bit for bit equal to an uninterrupted run."""

from __future__ import annotations

import errno
import os
import shutil
import signal
import socket
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from cache_schema import CacheReader, validate
from cache_schema.lock import CacheLocked, CacheWriteError
from cache_schema.storage import ZarrBackend
from cli import main as cli_main
from tests.extract_harness import (
    CFG,
    CLI_TINY,
    PauseBeforeStatus,
    PauseInResize,
    assert_same_cache,
    extract_here,
    fork_extract,
    kill,
    make_dataset,
    wait_for,
)


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_dataset(tmp_path_factory.mktemp("faults") / "data", n=12)


@pytest.fixture(scope="module")
def ref(data: Path) -> Path:
    out = data.parent / "ref.zarr"
    extract_here(data, out)
    return out


def _finished(cache: Path) -> int:
    with CacheReader(cache) as r:
        c = r.counts()
        return c["ok"] + c["error"]


def _assert_valid(cache: Path) -> None:
    rep = validate(cache)
    assert rep.ok, rep.problems


def test_kill_9_at_several_points_then_resume_equals_uninterrupted(data: Path, ref: Path, tmp_path: Path) -> None:
    out = tmp_path / "c.zarr"
    with CacheReader(ref) as r:
        n_clips = r.n
        clip_s = r.attrs["last_run"]["seconds"] / n_clips  # how long one clip takes here

    # 1. while the new cache's rows are being added: half the arrays resized, no keys yet
    marker = tmp_path / "in-resize"
    p = fork_extract(data, out, faults=(PauseInResize(after=6, marker=marker),))
    wait_for(marker.exists, "the child to pause mid-resize")
    kill(p)
    assert p.exitcode == -9
    _assert_valid(out)

    # 2. while a batch is being written: features on disk, status not yet
    marker = tmp_path / "in-write"
    p = fork_extract(data, out, faults=(PauseBeforeStatus(nth=3, marker=marker),))
    wait_for(marker.exists, "the child to pause between features and status")
    with CacheReader(out) as r:  # the torn clip's features are there, but it is pending
        status, video = r.read("status"), r.read("video")
        torn = [i for i in range(r.n) if status[i] == "" and np.any(video[i] != 0)]
    kill(p)
    assert len(torn) == 1, "exactly the clip in flight has features without a status"
    _assert_valid(out)
    assert _finished(out) == 2

    # 3. at seeded random moments within the next clip or two (decode, embed or write)
    rng = np.random.default_rng(1234)
    killed: list[bool] = []
    for delay in rng.uniform(0.0, 1.5 * clip_s, size=3):
        before = _finished(out)
        p = fork_extract(data, out)
        wait_for(lambda: _finished(out) > before or not p.is_alive(), "progress")
        p.join(delay)  # the random moment (the child runs on meanwhile)
        killed.append(p.is_alive())
        kill(p)
        _assert_valid(out)
        assert before < _finished(out) <= n_clips
    assert any(killed) and _finished(out) < n_clips, "the kills should land before the end"

    summary = extract_here(data, out)
    assert summary.skipped + summary.done + len(summary.failed) == n_clips
    _assert_valid(out)
    assert_same_cache(ref, out)


def _children(pid: int) -> list[int]:
    """Pids of the live processes whose parent is ``pid`` (from /proc: no psutil here)."""
    out = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            stat = _stat(int(entry))
            if stat and stat[1] == pid and stat[0] != "Z":
                out.append(int(entry))
    return out


def _stat(pid: int) -> tuple[str, int] | None:
    """(state, parent pid) of a process, or None when it is gone."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return fields[0], int(fields[1])


def _alive(pid: int) -> bool:
    stat = _stat(pid)
    return stat is not None and stat[0] != "Z"  # a zombie holds no memory and no descriptor


def _holds(pid: int, path: Path) -> bool:
    """Whether process ``pid`` has ``path`` open."""
    try:
        fds = os.listdir(f"/proc/{pid}/fd")
    except OSError:
        return False
    for fd in fds:
        try:
            if os.readlink(f"/proc/{pid}/fd/{fd}") == str(path):
                return True
        except OSError:
            pass
    return False


@pytest.mark.skipif(not os.path.isdir("/proc/self/fd"), reason="needs /proc (Linux)")
def test_kill_9_of_the_main_process_alone_takes_its_decode_workers_and_never_leaves_the_cache_locked(
        data: Path, ref: Path, tmp_path: Path) -> None:
    """What the OOM killer does: kill -9 of the main process only, with decode workers on."""
    out = tmp_path / "c.zarr"
    lock = tmp_path / "c.zarr.lock"
    marker = tmp_path / "writing"
    p = fork_extract(data, out, cfg=replace(CFG, workers=2), faults=(PauseBeforeStatus(nth=2, marker=marker),))
    wait_for(lambda: marker.exists() or not p.is_alive(), "the extract to be writing with its workers")
    assert p.is_alive(), f"the extract stopped early (exit code {p.exitcode})"
    workers = _children(p.pid)
    assert len(workers) == 2, f"expected two decode workers of pid {p.pid}, found {workers}"
    assert _holds(p.pid, lock)
    assert not [w for w in workers if _holds(w, lock)], "a decode worker holds the cache lock"

    os.kill(p.pid, signal.SIGKILL)  # the main process only, not its process group
    kill(p)  # reap it
    wait_for(lambda: not any(_alive(w) for w in workers), "the decode workers to die with their parent",
             timeout=5.0)
    extract_here(data, out)  # not refused: no process holds the lock
    _assert_valid(out)
    assert_same_cache(ref, out)


def test_second_writer_is_refused_and_a_killed_writer_never_blocks(data: Path, ref: Path, tmp_path: Path) -> None:
    out = tmp_path / "c.zarr"
    marker = tmp_path / "holding"
    holder = fork_extract(data, out, faults=(PauseBeforeStatus(nth=2, marker=marker),))
    wait_for(marker.exists, "the first extract to be writing")

    with pytest.raises(CacheLocked) as refused:
        extract_here(data, out)
    msg = str(refused.value)
    assert f"pid {holder.pid}" in msg and socket.gethostname() in msg and "another --out" in msg

    result = CliRunner().invoke(cli_main, ["extract", "--dataset", "synth", "--root", str(data), "--out", str(out),
                                           *CLI_TINY])
    assert result.exit_code == 2, result.output
    assert f"is being written by pid {holder.pid}" in result.output

    kill(holder)  # kill -9: the kernel drops its flock, the lock file stays behind
    assert (tmp_path / "c.zarr.lock").exists()
    extract_here(data, out)
    assert_same_cache(ref, out)


def test_damaged_chunk_files_are_named_then_repaired(data: Path, ref: Path, tmp_path: Path) -> None:
    out = tmp_path / "c.zarr"
    shutil.copytree(ref, out)
    with CacheReader(out) as r:
        keys = list(r.keys)
    chunk = out / "video" / "c" / "1" / "0" / "0"  # rows 2-3
    chunk.write_bytes(chunk.read_bytes()[: len(chunk.read_bytes()) // 2])  # truncated
    (out / "audio" / "c" / "3" / "0" / "0").unlink()  # rows 6-7, deleted
    (out / "status" / "c" / "0").unlink()  # rows 0-1: finished clips without a status
    broken = keys[0:4] + keys[6:8]

    result = CliRunner().invoke(cli_main, ["cache", "validate", str(out)])
    assert result.exit_code == 1
    assert "chunk of rows 2-3 is unreadable" in result.output and "rows 6-7 is missing" in result.output
    named = result.output.split("broken clips")[1]
    assert all(k in named for k in broken) and not any(k in named for k in keys[4:6] + keys[8:])

    summary = extract_here(data, out)
    assert summary.done + len(summary.failed) == len(broken) and summary.skipped == len(keys) - len(broken)
    _assert_valid(out)
    assert_same_cache(ref, out)


def test_disk_full_keeps_finished_clips_and_says_what_to_do(data: Path, ref: Path, tmp_path: Path,
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    out = tmp_path / "c.zarr"
    finished_before_full = 3
    real_write, real_attrs = ZarrBackend.write, ZarrBackend.set_attrs
    written = [0]

    def full() -> OSError:
        return OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    def write(self: ZarrBackend, name: str, rows: np.ndarray, values: np.ndarray) -> None:
        if written[0] >= finished_before_full:
            raise full()
        real_write(self, name, rows, values)
        if name == "status" and any(values != ""):
            written[0] += len(rows)

    def set_attrs(self: ZarrBackend, attrs: dict) -> None:
        if written[0] >= finished_before_full:
            raise full()
        real_attrs(self, attrs)

    monkeypatch.setattr(ZarrBackend, "write", write)
    monkeypatch.setattr(ZarrBackend, "set_attrs", set_attrs)
    with pytest.raises(CacheWriteError) as err:
        extract_here(data, out)
    msg = str(err.value)
    assert "No space left on device" in msg and "kept and valid" in msg
    with CacheReader(ref) as r:
        assert f"{r.n - finished_before_full} clips are still pending: rerun the same command" in msg
    monkeypatch.undo()

    _assert_valid(out)
    assert _finished(out) == finished_before_full
    summary = extract_here(data, out)
    assert summary.skipped == finished_before_full
    assert_same_cache(ref, out)


def test_unwritable_output_folder_is_a_clear_error(data: Path, tmp_path: Path) -> None:
    not_a_folder = tmp_path / "notes.txt"
    not_a_folder.write_text("a file where the cache's folder should be")
    result = CliRunner().invoke(cli_main, ["extract", "--dataset", "synth", "--root", str(data),
                                           "--out", str(not_a_folder / "c.zarr"), *CLI_TINY])
    assert result.exit_code == 2
    assert "cannot write the cache" in result.output and "choose an --out" in result.output
    assert "Traceback" not in result.output


@pytest.fixture(scope="module")
def small(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Two clips and a file that is no video, each once more under a name that is not UTF-8."""
    root = make_dataset(tmp_path_factory.mktemp("names") / "data", n=2)
    for src, name in ((root / "abuse/c0.mp4", b"caf\xe9.mp4"), (root / "crash/bad.mp4", b"bad\xe9.mp4")):
        fd = os.open(os.fsencode(src.parent) + b"/" + name, os.O_WRONLY | os.O_CREAT, 0o644)
        os.write(fd, src.read_bytes())
        os.close(fd)
    return root


def test_a_file_name_that_is_not_utf8_costs_one_clip_at_most_and_the_root_is_stored_absolute(
        small: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(small.parent)  # a relative --root, as typed in the dataset's parent folder
    out = tmp_path / "c.zarr"
    summary = extract_here(Path(small.name), out)
    assert summary.done == 3 and set(summary.failed) == {"crash/bad.mp4", "crash/bad\\xe9.mp4"}
    assert "bad\\xe9.mp4" in summary.failed["crash/bad\\xe9.mp4"]  # the message names the file, escaped
    _assert_valid(out)
    with CacheReader(out) as r:
        keys, status = list(r.keys), r.status
        assert status[keys.index("abuse/caf\\xe9.mp4")] == "ok"
        np.testing.assert_array_equal(r.read("video")[keys.index("abuse/caf\\xe9.mp4")],
                                      r.read("video")[keys.index("abuse/c0.mp4")])  # the same bytes, decoded
        assert r.attrs["root"] == str(small) and r.attrs["complete"] is True
    result = CliRunner().invoke(cli_main, ["cache", "info", str(out)])
    assert result.exit_code == 0 and "0 pending" in result.output and "complete: True" in result.output


def test_a_file_that_changed_since_its_extraction_is_extracted_again_and_old_caches_still_resume(
        small: Path, tmp_path: Path) -> None:
    out = tmp_path / "c.zarr"
    first = extract_here(small, out)
    assert first.changed == []
    grown = small / "abuse/c0.mp4"  # as if it was extracted while still being copied
    before = grown.read_bytes()
    with grown.open("ab") as f:
        f.write(b"\0" * 64)
    try:
        again = extract_here(small, out)
    finally:
        grown.write_bytes(before)
    assert again.changed == ["abuse/c0.mp4"] and again.done == 1 and again.skipped == first.total - 1
    assert "1 clips extracted again because their file changed" in again.describe()
    with CacheReader(out) as r:
        row = list(r.keys).index("abuse/c0.mp4")
        assert r.read("source_size")[row] == len(before) + 64
    _assert_valid(out)

    old = tmp_path / "old.zarr"  # a cache written before the source arrays existed
    shutil.copytree(out, old)
    for name in ("source_size", "source_mtime"):
        shutil.rmtree(old / name)
    _assert_valid(old)
    with CacheReader(old) as r:
        assert (r.read("source_size") == -1).all()  # unknown
    resumed = extract_here(small, old)  # nothing known to have changed: nothing redone
    assert resumed.done == 0 and resumed.changed == [] and resumed.skipped == first.total
    _assert_valid(old)
    with CacheReader(old) as r:
        assert (r.read("source_size") == -1).all()  # added on open, as unknown
    assert sorted(p.name for p in old.iterdir()) == sorted(p.name for p in out.iterdir())
