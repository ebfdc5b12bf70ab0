"""Faults of run directories and of the files every stage writes (issue 16, faults 2 and 3
and the smaller ones): one writer per run directory, no silent overwrite of a run, every
file written whole or not at all (strict JSON), a diverged run stopped at once, and an
``--out`` that cannot hold a run refused with a message instead of a traceback."""

from __future__ import annotations

import ast
import errno
import json
import os
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest
from click.testing import CliRunner

from cache_schema import AvarError, InvalidInput, write_json, write_text
from cli import main
from temporal.compare import CellSpec, run_cells
from temporal.data import load_cache
from temporal.rundir import RunBusy, RunConfig, RunDir, RunError, RunExists
from temporal.split import SplitConfig, default_split_path, load_or_create_split
from temporal.train import TrainConfig, TrainingDiverged, train
from tests.cache_factory import make_config, write_class_cache

REPO = Path(__file__).resolve().parents[1]
ONE = TrainConfig(epochs=1, progress=False)

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("runs") / "c.zarr"
    write_class_cache(path, make_config(classes=("normal", "crash")), 30)
    return path


def _cli(*args: str):
    return CliRunner().invoke(main, list(args), catch_exceptions=False)


def _strict_json(path: Path):
    """``json.loads`` that refuses the bare ``NaN``/``Infinity`` Python's json writes by default."""
    def refuse(token: str):
        raise ValueError(f"{path} holds {token}, which is not JSON")
    return json.loads(path.read_text(), parse_constant=refuse)


# -- fault 2: one writer per run directory, and no silent overwrite -----------------------------
def test_a_second_writer_of_a_run_directory_is_refused_naming_it(cache: Path, tmp_path: Path) -> None:
    """While one `train` writes a run (here: the test holds its lock), a second one into
    the same --out is refused with a message naming the folder and the holder, through
    the library and the CLI; nothing of the second run is written."""
    out = tmp_path / "run"
    with RunDir(out).claim():
        with pytest.raises(RunBusy) as info:
            train(cache, out, ONE)
        assert str(out) in str(info.value) and f"pid {os.getpid()}" in str(info.value)
        assert isinstance(info.value, AvarError) and not RunDir(out).is_run()
        result = _cli("train", "--cache", str(cache), "--out", str(out), "--epochs", "1")
        assert result.exit_code == 2 and f"{out} is being written by another process" in result.output
    assert not RunDir(out).is_run()


def test_the_run_lock_is_held_across_processes_and_dies_with_its_holder(tmp_path: Path) -> None:
    """The lock is the kernel's ``flock``: another process holding it refuses this one,
    and its ``kill -9`` releases it (a crashed run never blocks the next)."""
    run = RunDir(tmp_path / "run").create()
    holder = subprocess.Popen(
        [sys.executable, "-c", "import fcntl, os, sys\n"
         f"fd = os.open({str(run.lock_file)!r}, os.O_RDWR | os.O_CREAT)\n"
         "fcntl.flock(fd, fcntl.LOCK_EX); print('held', flush=True); sys.stdin.read()"],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(RunBusy, match=str(run.path)):
            run.claim()
    finally:
        holder.kill()
        holder.wait()
    run.claim().release()


def test_a_run_is_refused_without_overwrite_or_resume_and_replaced_with_overwrite(cache: Path,
                                                                                  tmp_path: Path) -> None:
    out = tmp_path / "run"
    args = ["train", "--cache", str(cache), "--out", str(out), "--epochs", "1", "--head", "gru"]
    assert _cli(*args).exit_code == 0
    before = (out / "metrics.json").read_bytes()
    (out / "figures").mkdir()
    (out / "figures" / "old.png").write_bytes(b"stale")
    refused = _cli(*args[:-1], "mtcn")
    assert refused.exit_code == 2 and f"{out} already holds a finished run" in refused.output
    assert "--overwrite" in refused.output and (out / "metrics.json").read_bytes() == before
    both = _cli(*args, "--overwrite", "--resume")
    assert both.exit_code == 2 and "pass one" in both.output
    replaced = _cli(*args[:-1], "mtcn", "--overwrite")
    assert replaced.exit_code == 0, replaced.output
    assert RunDir(out).read_config().train.head == "mtcn" and not (out / "figures").exists()
    # an unfinished run (killed before its evaluation) is refused too, and names --resume
    (out / "metrics.json").unlink()
    with pytest.raises(RunExists, match="unfinished run.*--resume"):
        train(cache, out, ONE)


def test_compare_reruns_into_the_same_out_replace_their_own_runs(cache: Path, tmp_path: Path) -> None:
    """``compare`` and the ablations own the runs under OUT/runs: a rerun into the same
    --out replaces them (what a user rerunning a table expects), it is not refused."""
    data = load_cache(cache)
    spec = CellSpec("gru-fused", replace(ONE, head="gru"), data, {"head": "gru"})
    first = run_cells([spec], tmp_path / "rep", seeds=(0,))
    again = run_cells([spec], tmp_path / "rep", seeds=(0,))
    assert again[0].runs[0]["accuracy"] == first[0].runs[0]["accuracy"]
    assert [p.name for p in (tmp_path / "rep" / "runs").iterdir()] == ["gru-fused-s0"]


# -- fault 3: every file written whole or not at all ------------------------------------------
def _fill_the_disk(monkeypatch: pytest.MonkeyPatch) -> None:
    """From now on every ``Path.write_text`` writes half its text, then fails as a full disk does."""
    real = Path.write_text

    def write_half(self: Path, text: str, *args, **kwargs) -> int:
        real(self, text[: len(text) // 2], *args, **kwargs)
        raise OSError(errno.ENOSPC, "No space left on device", str(self))

    monkeypatch.setattr(Path, "write_text", write_half)


def test_a_full_disk_leaves_no_torn_split_file(cache: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    data = load_cache(cache)
    split_file = default_split_path(data.path)
    split_file.unlink(missing_ok=True)
    _fill_the_disk(monkeypatch)
    with pytest.raises(AvarError, match="cannot write the split"):
        load_or_create_split(data, SplitConfig())
    assert not split_file.exists() and not list(split_file.parent.glob(".*.tmp"))
    monkeypatch.undo()
    made = load_or_create_split(data, SplitConfig())  # the next run splits afresh, no "Expecting value"
    assert json.loads(split_file.read_text())["test"] == list(made.test)


def test_a_full_disk_keeps_the_previous_config_json(cache: Path, tmp_path: Path,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    run = RunDir(tmp_path / "run").create()
    config = RunConfig(cache=str(cache), cache_identity={}, class_names=("normal", "crash"), steps=10,
                       video_dim=8, audio_dim=6, streams=("video", "audio"), params=1, train=ONE)
    run.write_config(config)
    before = run.config.read_bytes()
    _fill_the_disk(monkeypatch)
    with pytest.raises(OSError, match="No space"):
        run.write_config(replace(config, params=2))
    monkeypatch.undo()
    assert run.config.read_bytes() == before and run.read_config().params == 1
    assert sorted(p.name for p in run.path.iterdir()) == ["config.json"]


# The calls that write a file directly. Outside the atomic helper, each must be the
# ``write`` argument of ``replace_atomically`` (it writes the temporary), or sit in a
# function listed below that only that argument calls.
WRITE_METHODS = {"write_text", "write_bytes", "savefig", "to_csv", "save", "savez", "savez_compressed"}
WRITE_FUNCTIONS = {"save_file", "dump"}
# synth/live_stream.py writes live streams into pipes, FIFOs and sockets, which cannot be
# renamed into place; its one file target goes through replace_atomically.
ALLOWED_FILES = {"cache_schema/atomic.py", "synth/live_stream.py"}
ALLOWED_FUNCTIONS = {("synth/encode.py", "_encode_clip"),  # write_clip's replace_atomically argument
                     ("synth/loop_camera.py", "_feed"),     # muxes into its clients' sockets, never a file
                     # the ONNX exporters write the temporary name replace_atomically hands them
                     ("extract/backbones/runtimes/export_cache.py", "_export")}


def _writes_mode(call: ast.Call, position: int) -> bool:
    mode = call.args[position] if len(call.args) > position else next(
        (k.value for k in call.keywords if k.arg == "mode"), None)
    return isinstance(mode, ast.Constant) and isinstance(mode.value, str) and bool(set(mode.value) & set("wax+"))


def _raw_writes(path: Path, rel: str | None = None) -> list[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    rel = rel or path.relative_to(REPO).as_posix()
    inside: set[int] = set()
    for node in ast.walk(tree):
        name = getattr(getattr(node, "func", None), "id", None) or getattr(getattr(node, "func", None), "attr", None)
        if isinstance(node, ast.Call) and name == "replace_atomically":
            inside |= {id(n) for arg in node.args[1:] for n in ast.walk(arg)}
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and (rel, node.name) in ALLOWED_FUNCTIONS:
            inside |= {id(n) for n in ast.walk(node)}
    bad = []
    for node in ast.walk(tree):
        if not isinstance(node, ast.Call) or id(node) in inside:
            continue
        f = node.func
        attr = f.attr if isinstance(f, ast.Attribute) else None
        name = f.id if isinstance(f, ast.Name) else attr
        raw = ((attr in WRITE_METHODS) or (name in WRITE_FUNCTIONS)
               or (isinstance(f, ast.Name) and f.id == "open" and _writes_mode(node, 1))
               or (attr == "open" and _writes_mode(node, 0 if not _is_module_open(f) else 1)))
        if raw:
            bad.append(f"{rel}:{node.lineno} {ast.unparse(node)[:80]}")
    return bad


def _is_module_open(f: ast.Attribute) -> bool:
    """``av.open(path, mode)`` / ``io.open(path, mode)`` take the mode second; ``Path.open(mode)`` first."""
    return isinstance(f.value, ast.Name) and f.value.id in {"av", "io", "gzip", "bz2", "lzma", "tarfile", "zipfile"}


def test_no_module_writes_a_file_without_the_atomic_helper() -> None:
    """Every file the project writes goes to a temporary and is renamed into place; a
    raw ``write_text``/``open(..., "w")``/``savefig``/``save_file`` outside
    ``cache_schema.atomic`` is the 0-byte file of the next full disk. (The cache's own
    arrays are written by Zarr/HDF5 through ``cache_schema.storage``; tests write freely.)"""
    sources = [p for pkg in ("cache_schema", "extract", "temporal", "synth", "apply")
               for p in sorted((REPO / pkg).rglob("*.py"))] + [REPO / "cli.py"]
    bad = [hit for p in sources if p.relative_to(REPO).as_posix() not in ALLOWED_FILES for hit in _raw_writes(p)]
    assert not bad, "files written without cache_schema.atomic:\n" + "\n".join(bad)


def test_the_write_scan_sees_raw_writes(tmp_path: Path) -> None:
    planted = tmp_path / "planted.py"
    planted.write_text("import av, json\nfrom pathlib import Path\n"
                       "Path('a').write_text('x')\nwith open('b', 'w') as f: json.dump({}, f)\n"
                       "fig.savefig('c.png')\nav.open('d.mp4', mode='w')\nPath('e').open('a')\n"
                       "replace_atomically('f', lambda p: p.write_text('ok'))\nopen('g').read()\n")
    hits = _raw_writes(planted, "planted.py")
    assert sorted(int(h.split()[0].rsplit(":", 1)[1]) for h in hits) == [3, 4, 4, 5, 6, 7], hits


# -- smaller: strict JSON, a diverged run, an --out that cannot hold a run ---------------------
def test_a_name_at_the_length_limit_is_still_written_atomically(tmp_path: Path) -> None:
    """The temporary of a 250-byte name must not itself exceed the 255-byte name limit."""
    target = tmp_path / ("t" * 246 + ".png")
    write_text(target, "whole")
    assert target.read_text() == "whole" and [p.name for p in tmp_path.iterdir()] == [target.name]


def test_json_files_are_strict_json(tmp_path: Path) -> None:
    write_json(tmp_path / "m.json", {"loss": float("nan"), "best": [float("inf"), 0.5], "n": 3})
    assert _strict_json(tmp_path / "m.json") == {"loss": None, "best": [None, 0.5], "n": 3}


def test_a_diverged_run_stops_at_the_first_non_finite_loss(cache: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    with pytest.raises(TrainingDiverged, match=r"diverged at epoch 1 .*lower --lr") as info:
        train(cache, out, replace(ONE, epochs=4, lr=1e30))
    assert isinstance(info.value, AvarError) and str(out) in str(info.value)
    run = RunDir(out)
    assert len(run.read_history()) == 1 and not run.training.exists() and not run.is_finished()
    result = _cli("train", "--cache", str(cache), "--out", str(tmp_path / "cli"), "--epochs", "3", "--lr", "1e30")
    assert result.exit_code == 2 and "error: training diverged at epoch 1" in result.output
    # the same cache trains into a strict training.json once the learning rate is sane
    train(cache, out, ONE, overwrite=True)
    assert _strict_json(run.training)["epochs_run"] == 1


def test_an_out_inside_the_cache_or_on_a_file_is_refused(cache: Path, tmp_path: Path) -> None:
    with pytest.raises(InvalidInput, match="inside the cache"):
        train(cache, cache / "run", ONE)
    assert not (cache / "run").exists()
    a_file = tmp_path / "notes.txt"
    a_file.write_text("mine")
    result = _cli("train", "--cache", str(cache), "--out", str(a_file), "--epochs", "1")
    assert result.exit_code == 2 and f"--out {a_file} is an existing file" in result.output
    assert a_file.read_text() == "mine"
    with pytest.raises(RunError, match="is a file, not a folder"):
        train(cache, a_file / "run", ONE)


def test_an_out_that_is_a_folder_of_other_files_is_refused(cache: Path, tmp_path: Path) -> None:
    """A run owns its folder: ``--out`` pointing at a folder of the user's files (here the
    one holding the dataset) once scattered a run's files among them."""
    folder = tmp_path / "mine"
    folder.mkdir()
    (folder / "notes.txt").write_text("mine")
    result = _cli("train", "--cache", str(cache), "--out", str(folder), "--epochs", "1")
    assert result.exit_code == 2 and "not a run directory" in result.output and "notes.txt" in result.output
    assert sorted(p.name for p in folder.iterdir()) == ["notes.txt"]
    empty = tmp_path / "empty"
    empty.mkdir()
    assert _cli("train", "--cache", str(cache), "--out", str(empty), "--epochs", "1").exit_code == 0


def test_a_cache_of_one_class_is_refused_at_training(tmp_path: Path) -> None:
    """Issue 24, fault 14, where extraction could not know the labels (imported features,
    a cache from before the rule): ``train`` refuses a cache whose usable clips are of one
    class in one line, exit 2, and writes no run; a second class makes it trainable."""
    one = tmp_path / "one.zarr"
    write_class_cache(one, make_config(classes=("normal", "crash")), 12, present=(1,))
    result = CliRunner().invoke(main, ["train", "--cache", str(one), "--head", "pool", "--epochs", "1",
                                       "--out", str(tmp_path / "run")])
    assert result.exit_code == 2, result.output
    assert result.output.count("\n") == 1 and result.output.startswith(f"error: {one} holds usable clips of one "
                                                                        "class only, 'crash' (12 clips)")
    assert not (tmp_path / "run" / "config.json").exists() and not default_split_path(one).exists()
