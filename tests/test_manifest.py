"""Datasets become manifests: keys are root-relative paths (any name the file system
holds makes one), labels come from class folders, groups from an optional groups file."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from cache_schema import InvalidInput, key_from_relpath, media_path, relpath_from_key, split_file_for
from extract.datasets import VAAR_CLASSES, build_manifest


def _touch(root: Path, rel: str) -> None:
    p = root / rel
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_bytes(b"x")


def test_vaar_layout_labels_and_keys(tmp_path: Path) -> None:
    for rel in ["Baby Cry/clip.mp4", "normal/clip.mp4", "normal/sub/clip.mp4", "police-siren/a.webm", "normal/notes.txt"]:
        _touch(tmp_path, rel)
    m = build_manifest("vaar", tmp_path)
    keys = [r.key for r in m.rows]
    assert keys == ["Baby Cry/clip.mp4", "normal/clip.mp4", "normal/sub/clip.mp4", "police-siren/a.webm"]
    labels = {r.key: VAAR_CLASSES[r.label] for r in m.rows}
    assert labels["Baby Cry/clip.mp4"] == "baby_cry" and labels["police-siren/a.webm"] == "police_siren"
    assert m.class_names == VAAR_CLASSES
    assert [e.group for e in m.entries()] == keys  # no groups file: every clip is its own source


def test_groups_file_and_unknown_class(tmp_path: Path) -> None:
    _touch(tmp_path, "crash/a.mp4")
    _touch(tmp_path, "crash/b.mp4")
    (tmp_path / "groups.tsv").write_text("key\tgroup\ncrash/a.mp4\tsrc1\ncrash/b.mp4\tsrc1\n")
    assert {e.group for e in build_manifest("synth", tmp_path).entries()} == {"src1"}
    _touch(tmp_path, "dancing/c.mp4")
    with pytest.raises(ValueError, match="dancing"):
        build_manifest("vaar", tmp_path)
    m = build_manifest("folder", tmp_path)
    assert len(m) == 3 and all(r.label == -1 for r in m.rows) and m.class_names == ()


def test_missing_root_and_unknown_dataset(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="--root"):
        build_manifest("vaar", tmp_path / "nope")
    with pytest.raises(ValueError, match="unknown dataset"):
        build_manifest("kinetics", tmp_path)


# Names a POSIX file system holds, as bytes: not UTF-8, backslashes that look like escapes.
AWKWARD_NAMES = (b"caf\xe9.mp4", b"caf\\xe9.mp4", b"a\\b.mp4", b"a\\\\x41.mp4", b"a\\\xe9.mp4", b"end\\",
                 b"\xff\xfe\\x.mp4", "caf\u00e9.mp4".encode())


def test_a_key_is_made_from_any_name_and_turns_back_into_it() -> None:
    keys = [key_from_relpath(b"crash/" + n) for n in AWKWARD_NAMES]
    assert len(set(keys)) == len(keys), keys  # reversible, so never two files on one key
    for name, key in zip(AWKWARD_NAMES, keys):
        key.encode("utf-8")  # storable as text
        assert os.fsencode(relpath_from_key(key)) == b"crash/" + name
    assert key_from_relpath(b"crash/caf\xe9.mp4") == "crash/caf\\xe9.mp4"
    assert key_from_relpath("normal/café clip (1).mp4") == "normal/café clip (1).mp4"  # every usual name is its key
    assert key_from_relpath("a\\b.mp4") == "a\\b.mp4"


def test_a_name_that_is_not_utf8_becomes_a_key_not_a_crash(tmp_path: Path) -> None:
    _touch(tmp_path, "crash/a.mp4")
    fd = os.open(os.fsencode(tmp_path / "crash") + b"/caf\xe9.mp4", os.O_WRONLY | os.O_CREAT, 0o644)
    os.close(fd)
    (tmp_path / "groups.tsv").write_bytes(b"crash/caf\xe9.mp4\tsrc\xe9\n")
    rows = {r.key: r for r in build_manifest("synth", tmp_path).rows}
    assert set(rows) == {"crash/a.mp4", "crash/caf\\xe9.mp4"}
    row = rows["crash/caf\\xe9.mp4"]
    assert row.path.is_file() and os.fsencode(row.path).endswith(b"/caf\xe9.mp4")  # the real file, to open
    assert media_path(tmp_path, row.key) == row.path
    assert row.group == "src\\xe9"


@pytest.mark.parametrize("kind", ["folder", "fifo"])
def test_a_groups_file_that_is_not_a_file_is_refused_by_name(tmp_path: Path, kind: str) -> None:
    _touch(tmp_path, "crash/a.mp4")
    if kind == "folder":
        (tmp_path / "groups.tsv").mkdir()
    else:
        os.mkfifo(tmp_path / "groups.tsv")  # opening it would block the run
    for dataset in ("synth", "folder"):
        with pytest.raises(InvalidInput, match=r"groups\.tsv is (a folder|not a regular file).*rename or remove it"):
            build_manifest(dataset, tmp_path)


def test_official_split_name_taken_by_a_folder_is_refused(tmp_path: Path) -> None:
    (tmp_path / "c.zarr.official_split.json").mkdir()
    with pytest.raises(InvalidInput, match="official_split.json is a folder"):
        split_file_for(tmp_path / "c.zarr", None, "recognition")


def test_control_characters_in_labels_keys_and_groups_are_refused_with_their_line(tmp_path: Path) -> None:
    """Issue 24, fault 13: a label, key or group read from a file may not hold a control
    character (a quoted CSV cell with a line break would become a class name that breaks
    per_class.md, cache info and the logs); each is refused with its row's line number. A
    file name on disk is escaped in its key instead, and a folder name is refused by name."""
    from extract.datasets import ManifestFileError

    root = tmp_path / "root"
    for rel in ["fight/a.mp4", "calm/b.mp4", "calm/c\x1b.mp4", "calm/d.mp4"]:
        _touch(root, rel)
    table = tmp_path / "m.csv"
    table.write_text('path,label,group\n'
                     'fight/a.mp4,"fig\nht",g1\n'        # lines 2-3: a label with a newline
                     'calm/b.mp4,calm,"cam\u20281"\n'    # 4: a group with a line separator
                     '"calm/c\x1b.mp4",calm,g2\n'         # 5: a path (key) with an escape
                     'calm/d.mp4,calm,g2\n')
    with pytest.raises(ManifestFileError) as info:
        build_manifest("manifest", root, table)
    lines = str(info.value).splitlines()
    assert len(lines) == 4 and lines[0].startswith(f"{table} has 3 problem(s)"), lines
    assert [x.split(":", 1)[0] for x in lines[1:]] == ["line 2", "line 4", "line 5"]
    assert "label 'fig\\nht'" in lines[1] and "U+000A (newline)" in lines[1]
    assert "group" in lines[2] and "U+2028" in lines[2] and "path" in lines[3] and "U+001B" in lines[3]
    # metadata of a classes folder: same rule, same line numbers
    (root / "metadata.jsonl").write_text('{"file_name": "calm/b.mp4", "label": "calm"}\n'
                                         '{"file_name": "calm/d.mp4", "label": "c\\u0085alm"}\n')
    with pytest.raises(ManifestFileError, match=r"(?s)line 2: the label 'c\\x85alm' holds a control character"):
        build_manifest("classes", root)
    (root / "metadata.jsonl").unlink()
    # a file name on disk is not refused: its key escapes the bytes and turns back into the name
    m = build_manifest("classes", root)
    keys = [r.key for r in m.rows]
    assert "calm/c\\x1b.mp4" in keys and all(k.isprintable() for k in keys)
    assert media_path(root, "calm/c\\x1b.mp4") == root / "calm/c\x1b.mp4"
    # groups.tsv: a quoted cell with a line break is refused with its line
    (root / "groups.tsv").write_text('key\tgroup\nfight/a.mp4\tg1\ncalm/b.mp4\t"cam\n2"\n')
    with pytest.raises(InvalidInput, match=r"groups.tsv: line 3: the group 'cam\\n2'"):
        build_manifest("classes", root)
    (root / "groups.tsv").unlink()
    # a class folder whose name would be such a label
    _touch(root, "bad\nname/e.mp4")
    with pytest.raises(InvalidInput, match=r"the class folder 'bad\\nname' cannot be a label"):
        build_manifest("classes", root)
