"""Damaged state and bad arguments, met where a user meets them: through the CLI.

Every file the project reads is checked on the way in; a damaged or malformed one (or a
bad option) must end in exit status 2 and ONE ``error:`` line that names the file (or
the option), never a traceback. Also: a dataset too small for the stratified split, an
HDF5 cache that another process is writing, and a run whose cache was re-extracted."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from click.testing import CliRunner

import cli
from tests.cache_factory import make_config, write_class_cache

REPO = Path(__file__).resolve().parents[1]
CLASSES = ("normal", "crash")

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(cache, run): 40 clips, 2 per source; one epoch of the default head."""
    root = tmp_path_factory.mktemp("damaged")
    cache = root / "c.zarr"
    write_class_cache(cache, make_config(classes=CLASSES), 40, clips_per_group=2)
    result = invoke("train", "--cache", cache, "--out", root / "run", "--epochs", 1)  # as a user trains it
    assert result.exit_code == 0, result.output
    return cache, root / "run"


def invoke(*args: object):
    return CliRunner().invoke(cli.main, [str(a) for a in args])


def assert_one_error(result, *names: object) -> str:
    """Exit 2, exactly one ``error:`` line naming each of ``names``, no traceback."""
    out = result.output
    assert result.exit_code == 2, (result.exit_code, out, result.exception)
    assert isinstance(result.exception, SystemExit) and "Traceback" not in out, out
    errors = [line for line in out.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, out
    for name in names:
        assert str(name) in errors[0], (name, errors[0])
    return errors[0]


def copy_run(run: Path, tmp_path: Path) -> Path:
    out = tmp_path / "run"
    shutil.copytree(run, out)
    return out


# ------------------------------------------------------------------ run directory files
@pytest.mark.parametrize("damage", ["empty", "truncated"])
def test_a_damaged_model_file_is_named_by_evaluate_predict_and_figures(trained, tmp_path: Path, damage: str) -> None:
    run = copy_run(trained[1], tmp_path)
    weights = run / "model.safetensors"
    data = weights.read_bytes()
    weights.write_bytes(b"" if damage == "empty" else data[: len(data) // 2])
    assert "damaged" in assert_one_error(invoke("evaluate", run), weights)
    video = tmp_path / "v.mp4"
    video.write_bytes(b"never opened: the run is refused first")
    assert_one_error(invoke("predict", run, video), weights)
    # figures draws what metrics.json supports and says why the frame strips are skipped
    result = invoke("figures", run)
    assert result.exit_code == 0 and "Traceback" not in result.output, result.output
    assert any("skipped the frame-strip view" in line and str(weights) in line for line in result.output.splitlines())


def test_a_damaged_training_state_is_named_by_resume(trained, tmp_path: Path) -> None:
    cache, run = trained
    run = copy_run(run, tmp_path)
    state = run / "train_state.safetensors"
    state.write_bytes(state.read_bytes()[:100])
    line = assert_one_error(invoke("train", "--cache", cache, "--out", run, "--epochs", 1, "--resume"), state)
    assert "without --resume" in line


@pytest.mark.parametrize("text, why", [("{}", "no 'train'"), ("[1, 2]", "a JSON list, not an object"),
                                       ("not json", "damaged"), ("", "damaged"),
                                       ('{"train": [], "cache": "c"}', "'train' is a list, not an object")])
def test_a_config_that_is_not_a_run_configuration_is_named(trained, tmp_path: Path, text: str, why: str) -> None:
    run = copy_run(trained[1], tmp_path)
    (run / "config.json").write_text(text)
    line = assert_one_error(invoke("evaluate", run), run / "config.json")
    assert why in line and "train the run again" in line


@pytest.mark.parametrize("change, why", [
    ({"train.head_options": {"hidden": 10**9}}, "head option hidden = 1000000000 is outside the sane range"),
    ({"train.head_options": {"attention_heads": 0}}, "head option attention_heads = 0 is outside the sane range"),
    ({"train.head_options": {"layers": 10**6}}, "head option layers = 1000000 is outside the sane range"),
    ({"train.head_options": {"attention_heads": 3}}, "cannot be built with options {'attention_heads': 3}"),
    ({"train.head_options": {"dropout": 1.5}}, "head option dropout = 1.5 is outside"),
    ({"train.head_options": {"hidden": 8192, "stages": 64}}, "parameters, more than the sane bound"),
    ({"video_dim": 10**9}, "video_dim = 1000000000 is outside"),
    ({"steps": 10**12}, "steps = 1000000000000 is outside"),
])
def test_a_config_asking_for_an_absurd_head_is_refused_before_building(trained, tmp_path: Path, change: dict,
                                                                        why: str) -> None:
    """Issue 24, fault 11: a run whose config.json asks for a hidden size of 10**9, 0
    attention heads or 10**6 layers made evaluate allocate first and die with a traceback,
    or build layers until it was killed. The configuration is checked against sane bounds
    (temporal/run_bounds.py; the head built on the meta device) before anything is built:
    one error line naming config.json, for evaluate and predict alike."""
    run = copy_run(trained[1], tmp_path)
    doc = json.loads((run / "config.json").read_text())
    for path, value in change.items():
        *parents, leaf = path.split(".")
        target = doc
        for p in parents:
            target = target[p]
        target[leaf] = value
    (run / "config.json").write_text(json.dumps(doc))
    video = tmp_path / "v.mp4"
    video.write_bytes(b"never opened")
    for result in (invoke("evaluate", run), invoke("predict", run, video)):
        line = assert_one_error(result, run / "config.json")
        assert why in line and "train the run again" in line, line


@pytest.mark.parametrize("field", ["name", "checksum"])
def test_a_recorded_backbone_without_its_name_or_checksum_is_named(trained, tmp_path: Path, field: str) -> None:
    run = copy_run(trained[1], tmp_path)
    doc = json.loads((run / "config.json").read_text())
    del doc["cache_identity"]["video_backbone"][field]
    (run / "config.json").write_text(json.dumps(doc))
    video = tmp_path / "v.mp4"
    video.write_bytes(b"never opened")
    for result in (invoke("predict", run, video), invoke("evaluate", run)):
        assert field in assert_one_error(result, run / "config.json")


def test_a_backbone_record_read_by_the_predictor_is_typed(trained, tmp_path: Path) -> None:
    """apply.load_predictor reads the identity through cache_schema.CacheConfig: a run
    whose identity lacks its steps' type is refused naming config.json."""
    from apply import BackboneMismatch, load_predictor

    run = copy_run(trained[1], tmp_path)
    doc = json.loads((run / "config.json").read_text())
    doc["cache_identity"]["feature_dtype"] = "float64"
    (run / "config.json").write_text(json.dumps(doc))
    with pytest.raises(BackboneMismatch, match="config.json.*feature_dtype"):
        load_predictor(run)


@pytest.mark.parametrize("text, why", [('{"test": 5}', "no 'train' list"),
                                       ('{"train": "abc", "val": [], "test": []}', "'train' is not a list of keys")])
def test_a_split_json_of_the_wrong_shape_is_named(trained, tmp_path: Path, text: str, why: str) -> None:
    run = copy_run(trained[1], tmp_path)
    (run / "split.json").write_text(text)
    assert why in assert_one_error(invoke("evaluate", run), run / "split.json")


def test_metrics_that_are_not_numbers_are_named_by_figures(trained, tmp_path: Path) -> None:
    run = copy_run(trained[1], tmp_path)
    doc = json.loads((run / "metrics.json").read_text())
    doc.update(accuracy="high", confusion_matrix="bad")
    (run / "metrics.json").write_text(json.dumps(doc))
    line = assert_one_error(invoke("figures", run), run / "metrics.json")
    assert "accuracy" in line and "cli.py evaluate" in line


def test_a_comparison_table_with_text_for_numbers_is_named(tmp_path: Path) -> None:
    table = tmp_path / "table2.csv"
    table.write_text("head,modality,accuracy_mean\nmtcn,fused,lots\n")
    assert_one_error(invoke("figures", tmp_path, "--compare", table), f"{table}:2")


# ------------------------------------------------------------------ split options and files
def test_an_invalid_group_pattern_is_named(trained, tmp_path: Path) -> None:
    line = assert_one_error(invoke("train", "--cache", trained[0], "--out", tmp_path / "r", "--group-pattern", "("),
                            "--group-pattern '('")
    assert "regular expression" in line


def test_a_missing_groups_file_is_named(trained, tmp_path: Path) -> None:
    missing = tmp_path / "groups.tsv"
    assert_one_error(invoke("train", "--cache", trained[0], "--out", tmp_path / "r", "--groups-file", missing),
                     missing)


@pytest.mark.parametrize("name, text, why", [
    ("s.json", "{nope", "not readable JSON"),
    ("s.json", '{"test": 5}', "not a list of keys"),
    ("s.json", "[]", "JSON list"),
    ("s.json", '{"train": [], "tset": []}', "unknown parts ['tset']"),
    ("s.tsv", "a\tbogus\n", "train|val|test"),
])
def test_a_malformed_split_file_is_named(trained, tmp_path: Path, name: str, text: str, why: str) -> None:
    split = tmp_path / name
    split.write_text(text)
    line = assert_one_error(invoke("train", "--cache", trained[0], "--out", tmp_path / "r", "--split-file", split),
                            split)
    assert why in line


@pytest.mark.parametrize("damage", ["empty", "torn", "no train", "train not a list"])
def test_a_damaged_stored_split_is_named(trained, tmp_path: Path, damage: str) -> None:
    cache = tmp_path / "c.zarr"
    shutil.copytree(trained[0], cache)
    stored = tmp_path / "c.zarr.split.json"
    text = Path(str(trained[0]) + ".split.json").read_text()  # the split the fixture's training stored
    doc = json.loads(text)
    if damage == "no train":
        del doc["train"]
    elif damage == "train not a list":
        doc["train"] = 1
    stored.write_text({"empty": "", "torn": text[: len(text) // 2]}.get(damage, json.dumps(doc)))
    line = assert_one_error(invoke("train", "--cache", cache, "--out", tmp_path / "r"), stored)
    assert "delete it" in line


def test_a_folder_in_place_of_the_stored_split_is_named(trained, tmp_path: Path) -> None:
    """The name ``<cache>.split.json`` taken by a folder was an IsADirectoryError traceback."""
    cache = tmp_path / "c.zarr"
    shutil.copytree(trained[0], cache)
    stored = tmp_path / "c.zarr.split.json"
    stored.mkdir()
    line = assert_one_error(invoke("train", "--cache", cache, "--out", tmp_path / "r"), stored)
    assert "is a folder" in line


def test_a_damaged_official_split_is_named_by_detection(trained, tmp_path: Path) -> None:
    """evaluate --detection looks up the annotations in the official split file the run
    was trained with: a damaged one is named, not taken for "nothing recorded"."""
    run = copy_run(trained[1], tmp_path)
    official = tmp_path / "c.zarr.official_split.json"
    official.write_text("{torn")
    split = json.loads((run / "split.json").read_text())
    split["info"]["file"] = str(official)
    (run / "split.json").write_text(json.dumps(split))
    assert "--annotations" in assert_one_error(invoke("evaluate", run, "--detection"), official)


def test_too_few_clips_per_class_says_what_the_split_needs(tmp_path: Path) -> None:
    cache = tmp_path / "small.zarr"
    write_class_cache(cache, make_config(classes=CLASSES), 8)  # 4 clips per class, 5 folds
    line = assert_one_error(invoke("train", "--cache", cache, "--out", tmp_path / "r"))
    assert "n_splits" not in line and "5 clips" in line and "largest has 4" in line and "--split-file" in line


# ------------------------------------------------------------------ caches
def test_cache_info_on_a_folder_that_is_not_a_cache(tmp_path: Path) -> None:
    folder = tmp_path / "photos"
    folder.mkdir()
    (folder / "a.jpg").write_bytes(b"x")
    assert "not a Zarr cache" in assert_one_error(invoke("cache", "info", folder), folder)
    random_file = tmp_path / "x.h5"
    random_file.write_bytes(os.urandom(64))
    assert_one_error(invoke("cache", "info", random_file), random_file)


HOLDER = textwrap.dedent("""
    import sys, time
    import h5py
    from cache_schema.lock import CacheLock
    lock = CacheLock(sys.argv[1]).acquire()  # as extract holds it
    f = h5py.File(sys.argv[1], "a")          # as the HDF5 writer holds it
    print("ready", flush=True)
    time.sleep(60)
""")


def test_an_hdf5_cache_being_written_is_reported_as_busy_not_damaged(tmp_path: Path) -> None:
    cache = tmp_path / "c.h5"
    write_class_cache(cache, make_config(classes=CLASSES), 12, fmt="hdf5")
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    holder = subprocess.Popen([sys.executable, "-c", HOLDER, str(cache)], stdout=subprocess.PIPE, text=True, env=env)
    try:
        assert holder.stdout.readline().strip() == "ready"
        for args in (("cache", "validate", cache), ("cache", "info", cache),
                     ("train", "--cache", cache, "--out", tmp_path / "r")):
            line = assert_one_error(invoke(*args), cache, f"pid {holder.pid}")
            assert "being written" in line and "do not delete it" in line and "delete it and rerun" not in line
    finally:
        holder.kill()
        holder.wait()
    result = invoke("cache", "validate", cache)  # the writer is gone: the file was fine all along
    assert result.exit_code == 0 and result.output.startswith("ok: 12 clips"), result.output


# ------------------------------------------------------------------ a re-extracted cache
def test_evaluate_after_a_re_extraction_says_what_differs(trained, tmp_path: Path) -> None:
    cache, run = trained
    run = copy_run(run, tmp_path)
    own = tmp_path / "own.zarr"  # the run's cache, re-extracted with 5 steps since
    write_class_cache(own, make_config(classes=CLASSES, steps=5), 20)
    doc = json.loads((run / "config.json").read_text())
    doc["cache"] = str(own)
    (run / "config.json").write_text(json.dumps(doc))
    line = assert_one_error(invoke("evaluate", run), own)
    assert "steps: run was trained on 10, cache has 5" in line and "re-extracted" in line
    assert "evaluate with --cache" not in line and "retrain" in line


def test_evaluate_with_another_cache_names_both(trained, tmp_path: Path) -> None:
    cache, run = trained
    run = copy_run(run, tmp_path)
    other = tmp_path / "other.zarr"
    write_class_cache(other, make_config(classes=CLASSES, steps=5), 20)
    line = assert_one_error(invoke("evaluate", run, "--cache", other), other, cache)
    assert "steps: run was trained on 10, cache has 5" in line and "retrain" in line
