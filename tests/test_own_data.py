"""Your own labelled data (issue 14, items 1-3): a ``classes`` folder with any labels,
split folders and a metadata file, a ``manifest`` file, and symbolic links, through real
encoded clips, the real CLI and real Zarr caches (tiny backbones).

The first test runs the README's "Your own data" commands as written there (parsed from
the README, tiny options appended), so the section cannot drift from the CLI."""

from __future__ import annotations

import json
import logging
import os
import re
import shlex
import shutil
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from cache_schema import CacheReader, InvalidInput, official_split_path
from extract.datasets import prepare_dataset
from extract.datasets import ManifestFileError
from extract.datasets import build_manifest
from tests.media_factory import write_clip

README = Path(__file__).resolve().parent.parent / "README.md"
TINY = {"extract": ["--backbones", "tiny", "--workers", "0", "--steps", "4"],
        "train": ["--head", "pool", "--epochs", "3", "--batch-size", "4"],
        "compare": ["--heads", "pool", "--modalities", "fused", "--epochs", "2", "--batch-size", "4"]}

pytestmark = pytest.mark.usefixtures("one_thread")


def cli(*args: str | Path):
    from cli import main

    return CliRunner().invoke(main, [str(a) for a in args])


def ok(result) -> str:
    assert result.exit_code == 0, (result.output, result.exception)
    return result.output


@pytest.fixture(scope="module")
def clips(tmp_path_factory: pytest.TempPathFactory) -> dict[str, list[Path]]:
    """Five short real clips per label (dark + low tone vs bright + high tone), written once."""
    pool = tmp_path_factory.mktemp("pool")
    out: dict[str, list[Path]] = {}
    for label, (grey, tone) in {"fight": (0.2, 300.0), "noFight": (0.7, 900.0)}.items():
        out[label] = [write_clip(pool / label / f"c{i}.mp4", duration=0.8, fps=10, size=(48, 32),
                                 brightness=lambda t, g=grey, i=i: g + 0.02 * i, tone_hz=lambda t, f=tone: f)
                      for i in range(5)]
    return out


def _copy(files: list[Path], folder: Path) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    return [Path(shutil.copy(f, folder / f.name)) for f in files]


def readme_commands() -> list[list[str]]:
    """The ``python cli.py`` lines of the README's "Your own data" code blocks."""
    text = README.read_text()
    section = text.split("## Your own data", 1)[1].split("\n## ", 1)[0]
    lines = [line.split("#", 1)[0] for block in re.findall(r"```bash\n(.*?)```", section, re.S)
             for line in block.splitlines()]
    return [shlex.split(line)[2:] for line in lines if line.strip().startswith("python cli.py")]


def cache_rows(cache: Path) -> tuple[tuple, list[tuple[str, int, str]]]:
    with CacheReader(cache) as r:
        rows = sorted(zip(r.keys, r.read("label").tolist(), r.read("group")))
        return tuple(r.config.class_names), [(str(k), int(lab), str(g)) for k, lab, g in rows]


def test_readme_commands_from_labelled_folder_to_table2(clips: dict, tmp_path: Path,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    """footage/fight, footage/noFight (a class folder linked in from elsewhere) -> cache ->
    run -> metrics -> Table 2, each holding exactly the two classes; the manifest of the same
    clips gives the same cache."""
    monkeypatch.chdir(tmp_path)
    _copy(clips["fight"], Path("footage/fight"))
    shared = _copy(clips["noFight"], tmp_path / "shared-storage" / "noFight")
    os.symlink(shared[0].parent, "footage/noFight")  # outside the root: followed, keys stay under it
    Path("footage.csv").write_text("path,label\n" + "".join(
        f"{label}/{f.name},{label}\n" for label in ("fight", "noFight") for f in clips[label]))
    commands = readme_commands()
    names = [c[0] for c in commands]
    assert names[:4] == ["extract", "train", "evaluate", "compare"] and "manifest" in commands[-1], names
    for args in commands:
        ok(cli(*args, *TINY.get(args[0], [])))
    extract, train, evaluate, compare = commands[:4]
    cache = Path(extract[extract.index("--out") + 1])
    run = Path(train[train.index("--out") + 1])
    report = Path(compare[compare.index("--out") + 1])
    names, rows = cache_rows(cache)
    assert names == ("fight", "noFight")
    assert [k for k, _, _ in rows] == [f"{lab}/c{i}.mp4" for lab in names for i in range(5)]
    assert [lab for _, lab, _ in rows] == [0] * 5 + [1] * 5
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["class_names"] == ["fight", "noFight"] and set(metrics["per_class"]) == {"fight", "noFight"}
    assert np.asarray(metrics["confusion_matrix"]).shape == (2, 2) and metrics["n_test"] >= 2
    table = (report / "table2.csv").read_text()
    assert "pool" in table
    # the manifest listing the same clips: the same keys, labels, groups and class names
    manifest_cache = Path(commands[-1][commands[-1].index("--out") + 1])
    assert cache_rows(manifest_cache) == (names, rows)


def test_split_folders_and_metadata_train_on_their_split(clips: dict, tmp_path: Path) -> None:
    """train/ and test/ folders become the official split beside the cache, which training
    uses; metadata.csv relabels one clip, groups two and moves one to val."""
    root = tmp_path / "data"
    for part, sl in (("train", slice(0, 3)), ("test", slice(3, 5))):
        for label in ("fight", "noFight"):
            _copy(clips[label][sl], root / part / label)
    (root / "metadata.csv").write_text(
        "file_name,label,group,split,caption\n"
        "train/noFight/c2.mp4,fight,,,a label override\n"     # overrides the folder
        "train/fight/c0.mp4,,cam1,,\n"                         # adds a group
        "train/fight/c1.mp4,,cam1,,\n"
        "train/noFight/c1.mp4,,,validation,\n")                # moves a clip to val
    m = build_manifest("classes", root)
    labels = {r.key: m.class_names[r.label] for r in m.rows}
    assert m.class_names == ("fight", "noFight") and labels["train/noFight/c2.mp4"] == "fight"
    assert {r.key: r.group for r in m.rows if r.group} == {"train/fight/c0.mp4": "cam1", "train/fight/c1.mp4": "cam1"}
    cache = tmp_path / "own.zarr"
    out = ok(cli("extract", "--dataset", "classes", "--root", root, "--out", cache, *TINY["extract"]))
    assert f"official split -> {official_split_path(cache)}" in out
    split = json.loads(official_split_path(cache).read_text())
    assert sorted(split["test"]) == sorted(f"test/{lab}/c{i}.mp4" for lab in ("fight", "noFight") for i in (3, 4))
    assert split["val"] == ["train/noFight/c1.mp4"] and len(split["train"]) == 5
    assert split["info"]["dataset"] == "classes" and split["info"]["class_counts"]["test"] == {"fight": 2, "noFight": 2}
    run = tmp_path / "run"
    ok(cli("train", "--cache", cache, *TINY["train"], "--out", run))
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["class_names"] == ["fight", "noFight"] and metrics["n_test"] == 4  # its own test part
    assert json.loads((run / "split.json").read_text())["test"] == sorted(split["test"])
    # the same folder without its split folders: the stale split is removed, never reused
    flat = tmp_path / "flat"
    for label in ("fight", "noFight"):
        _copy(clips[label], flat / label)
    prepared = prepare_dataset("classes", flat, cache)
    assert "official split" not in prepared.summary and not official_split_path(cache).exists()


def test_a_manifest_with_errors_reports_every_bad_line_at_once(clips: dict, tmp_path: Path) -> None:
    root = tmp_path / "root"
    _copy(clips["fight"][:2], root / "fight")
    (tmp_path / "outside.mp4").write_bytes(b"x")
    table = tmp_path / "m.csv"
    table.write_text("path,label,camera\n"                     # line 1: unknown column
                     "fight/c0.mp4,fight,a\n"                   # fine
                     "fight/nope.mp4,fight,b\n"                 # 3: missing
                     "fight/c0.mp4,fight,c\n"                   # 4: duplicate of 2
                     "../outside.mp4,fight,d\n"                 # 5: leaves the root
                     ",fight,e\n"                               # 6: empty path
                     f"{tmp_path / 'outside.mp4'},fight,f\n"    # 7: absolute
                     "fight/c1.mp4,fight\n")                    # 8: a field short
    with pytest.raises(ManifestFileError) as info:
        build_manifest("manifest", root, table)
    lines = str(info.value).splitlines()
    assert str(table) in lines[0] and "fix these rows" in lines[0]
    assert [int(re.match(r"line (\d+):", x).group(1)) for x in lines[1:]] == [1, 3, 4, 5, 6, 7, 8], lines
    assert "camera" in lines[1] and "listed again (first on line 2)" in lines[3] and "leaves the root" in lines[4]
    result = cli("extract", "--dataset", "manifest", "--root", root, "--manifest", table, "--out", tmp_path / "c.zarr")
    assert result.exit_code == 2 and result.output.startswith(f"error: {table} has 7 problem(s)")
    # JSON lines and TSV read the same columns; a bad split is named
    (tmp_path / "m.jsonl").write_text('{"path": "fight/c0.mp4", "label": "fight", "split": "train"}\n'
                                      '{"path": "fight/c1.mp4", "label": "fight", "split": "holdout"}\n')
    with pytest.raises(ManifestFileError, match=r"line 2: split 'holdout'"):
        build_manifest("manifest", root, tmp_path / "m.jsonl")
    (tmp_path / "m.tsv").write_text("path\tgroup\nfight/c0.mp4\tg\nfight/c1.mp4\tg\n")
    m = build_manifest("manifest", root, tmp_path / "m.tsv")
    assert m.class_names == () and {r.group for r in m.rows} == {"g"}
    with pytest.raises(InvalidInput, match="only read with --dataset manifest"):
        build_manifest("classes", root, table)
    with pytest.raises(InvalidInput, match="needs --manifest"):
        build_manifest("manifest", root)


def test_symlinked_folders_files_and_loops(clips: dict, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    root = tmp_path / "root"
    _copy(clips["fight"][:2], root / "fight")
    elsewhere = _copy(clips["noFight"][:2], tmp_path / "elsewhere" / "noFight")
    os.symlink(elsewhere[0].parent, root / "noFight")                 # a class folder linked in
    os.symlink(elsewhere[1], root / "fight" / "linked.mp4")            # a linked file
    os.symlink(root / "fight", root / "fight" / "again")               # a loop
    os.symlink(root / "noFight", root / "zz-same")                     # the same folder twice
    os.symlink(tmp_path / "gone.mp4", root / "fight" / "dangling.mp4")  # a broken link
    with caplog.at_level(logging.WARNING, logger="extract.datasets.tree"):
        m = build_manifest("classes", root)
    assert [r.key for r in m.rows] == ["fight/c0.mp4", "fight/c1.mp4", "fight/linked.mp4",
                                       "noFight/c0.mp4", "noFight/c1.mp4"]
    assert m.class_names == ("fight", "noFight") and m.rows[3].path == root / "noFight" / "c0.mp4"
    text = caplog.text
    assert f"symbolic link loop: {root / 'fight' / 'again'}" in text
    assert f"{root / 'zz-same'} is the folder {root / 'noFight'} again" in text
    assert "dangling.mp4" in text
    # vaar and folder walk the same way
    assert len(build_manifest("folder", root)) == 5


def _readme_block(after: str) -> str:
    """The first plain code block of the "Your own data" section after the text ``after``."""
    section = README.read_text().split("## Your own data", 1)[1].split("\n## ", 1)[0]
    return re.search(r"```\n(.*?)```", section.split(after, 1)[1], re.S).group(1)


def test_the_readme_metadata_and_manifest_examples_read_as_described(tmp_path: Path) -> None:
    """The README's metadata.csv relabels and adds clips; its manifest matches the folders;
    split folders with no test part write no split (stage 2 then makes a seeded one)."""
    root = tmp_path / "footage"
    for rel in ("fight/cam1_0001.mp4", "fight/2024-05/cam2_0007.mkv", "noFight/cam1_0002.mp4"):
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(b"x")
    (tmp_path / "footage.csv").write_text(_readme_block("**A manifest**"))
    listed = build_manifest("manifest", root, tmp_path / "footage.csv")
    folders = build_manifest("classes", root)
    assert [(r.key, r.label) for r in listed.rows] == [(r.key, r.label) for r in folders.rows]
    assert listed.class_names == folders.class_names == ("fight", "noFight")
    (root / "clip_9.mp4").write_bytes(b"x")
    (root / "metadata.csv").write_text(_readme_block("**`metadata.csv`**"))
    m = build_manifest("classes", root)
    labels = {r.key: (m.class_names[r.label], r.group) for r in m.rows}
    assert labels == {"clip_9.mp4": ("noFight", "cam3"), "fight/2024-05/cam2_0007.mkv": ("fight", ""),
                      "fight/cam1_0001.mp4": ("fight", "cam1"), "noFight/cam1_0002.mp4": ("fight", "cam1")}
    only_train = tmp_path / "only-train"
    shutil.copytree(root / "fight", only_train / "train" / "fight")
    shutil.copytree(root / "noFight", only_train / "train" / "noFight")
    assert prepare_dataset("classes", only_train, tmp_path / "c.zarr").summary.startswith("class")
    assert not official_split_path(tmp_path / "c.zarr").exists()
    (only_train / "fight2").mkdir()
    (only_train / "fight2" / "a.mp4").write_bytes(b"x")
    with pytest.raises(InvalidInput, match="mixes split folders"):
        build_manifest("classes", only_train)


def test_a_dataset_of_one_class_is_refused_at_extraction(tmp_path: Path) -> None:
    """Issue 24, fault 14: a labelled dataset with a single class was extracted and trained
    without a word, and its run reported accuracy and macro F1 1.000 over "1 classes".
    Extraction refuses it in one line (exit 2) before anything is written, for every
    labelled layout; an unlabelled ``folder`` dataset is still extracted."""
    root = tmp_path / "root"
    for name in ("a.mp4", "b.mp4"):
        (root / "fight").mkdir(parents=True, exist_ok=True)
        (root / "fight" / name).write_bytes(b"x")   # refused before any file is opened
    (tmp_path / "m.csv").write_text("path,label\nfight/a.mp4,fight\nfight/b.mp4,fight\n")
    for args in (["--dataset", "classes"], ["--dataset", "manifest", "--manifest", tmp_path / "m.csv"]):
        out = tmp_path / "c.zarr"
        result = cli("extract", *args, "--root", root, "--out", out, *TINY["extract"])
        assert result.exit_code == 2, result.output
        assert result.output.count("\n") == 1 and result.output.startswith("error: ")
        assert "one class only ('fight', 2 clips)" in result.output and "at least two" in result.output
        assert not out.exists()
    assert len(prepare_dataset("folder", root, tmp_path / "f.zarr").manifest) == 2
