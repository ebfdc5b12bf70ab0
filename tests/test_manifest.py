"""Datasets become manifests: keys are root-relative paths, labels come from class
folders, groups from an optional groups file."""

from __future__ import annotations

from pathlib import Path

import pytest

from extract.manifest import VAAR_CLASSES, build_manifest


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
