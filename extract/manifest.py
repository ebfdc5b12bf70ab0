"""Datasets as manifests: one row per clip (key, path, label, group).

Everything after this module reads the manifest, never the folder layout, so adding a
dataset means adding one function to ``DATASETS``. A clip's key is its path relative to
the dataset root (posix form), so two ``clip.mp4`` in different folders never collide
and a cache stays valid when the root moves; a name that is not valid UTF-8 has its
undecodable bytes escaped (``cache_schema.key_from_relpath``), while the row keeps the
real path to open.
"""

from __future__ import annotations

import csv
import logging
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from cache_schema import UNLABELLED, ClipEntry, InvalidInput, MissingInput, key_from_relpath, optional_file

logger = logging.getLogger(__name__)

# VAAR's ten classes, in the paper's order. Folder names are matched after lower-casing
# and mapping spaces and hyphens to underscores ("Baby Cry" -> "baby_cry").
VAAR_CLASSES: tuple[str, ...] = (
    "abuse", "baby_cry", "crash", "brawling", "explosion",
    "intruder", "normal", "pain", "police_siren", "vandalism",
)

MEDIA_SUFFIXES = frozenset(
    ".mp4 .m4v .mov .avi .mkv .webm .mpg .mpeg .ts .mts .flv .wmv .3gp .ogv "
    ".mp3 .wav .m4a .aac .ogg .opus .flac".split()
)
GROUPS_FILE = "groups.tsv"  # optional: key<TAB>source id, for group-aware splits


SPLIT_NAMES: dict[str, str] = {"train": "train", "val": "val", "validation": "val", "valid": "val", "test": "test"}
"""Names a dataset may give its parts (split folders, a ``split`` column) -> the part stage 2 reads."""


@dataclass(frozen=True)
class ManifestRow:
    key: str
    path: Path
    label: int = UNLABELLED
    group: str = ""
    split: str = ""   # "", or the dataset's own part of the clip ("train", "val", "test")

    def entry(self) -> ClipEntry:
        return ClipEntry(self.key, self.label, self.group or self.key)


@dataclass(frozen=True)
class Manifest:
    dataset: str
    root: Path
    class_names: tuple[str, ...]
    rows: tuple[ManifestRow, ...]

    def entries(self) -> list[ClipEntry]:
        return [r.entry() for r in self.rows]

    def __len__(self) -> int:
        return len(self.rows)

    def own_split(self) -> dict[str, list[str]] | None:
        """The dataset's own split (keys per part), or None when its rows name no part."""
        if not any(r.split for r in self.rows):
            return None
        parts: dict[str, list[str]] = {"train": [], "val": [], "test": []}
        for r in self.rows:
            parts[r.split].append(r.key)
        return parts


def normalise_class(name: str) -> str:
    return re.sub(r"[\s\-]+", "_", name.strip().lower())


def walk_media(root: Path) -> list[Path]:
    """Every media file under ``root``, in sorted order, symbolic links followed.

    A linked folder or file is read wherever it points, inside the root or outside it (a
    class folder linked in from shared storage is common; the link says the user wants
    it), and its clips keep the path under the root as their key. Each real folder is
    read once: a link back to a folder being read (a loop) and a second link to a folder
    already read are reported as warnings and skipped, so the walk always ends and no clip
    is read twice under two labels. Links that cannot be followed (dangling, or a link to
    itself) are reported and skipped."""
    found: list[Path] = []
    top = root.stat()
    seen: dict[tuple[int, int], Path] = {(top.st_dev, top.st_ino): root}

    def visit(folder: Path, chain: frozenset[tuple[int, int]]) -> None:
        try:
            with os.scandir(folder) as it:
                entries = sorted(it, key=lambda e: e.name)
        except OSError as exc:
            logger.warning("cannot read the folder %s (%s); its files are left out", folder, exc.strerror or exc)
            return
        for e in entries:
            path = Path(e.path)
            try:
                st = e.stat()  # follows links
            except OSError as exc:
                logger.warning("not following the link %s -> %s (%s); it is left out", path,
                               os.readlink(path) if e.is_symlink() else "?", exc.strerror or exc)
                continue
            if e.is_dir():
                ident = (st.st_dev, st.st_ino)
                if ident in chain:
                    logger.warning("symbolic link loop: %s -> %s leads back to %s, which is being read; "
                                   "not followed", path, os.readlink(path) if e.is_symlink() else "?", seen[ident])
                elif ident in seen:
                    logger.warning("%s is the folder %s again (through a link); its files are read once, "
                                   "under %s", path, seen[ident], seen[ident])
                else:
                    seen[ident] = path
                    visit(path, chain | {ident})
            elif e.is_file() and path.suffix.lower() in MEDIA_SUFFIXES:
                found.append(path)

    visit(root, frozenset(seen))
    return sorted(found)


def read_groups(root: Path) -> dict[str, str]:
    """``ROOT/groups.tsv`` by key (every dataset but XD-Violence reads it). Its names may be
    written as keys or as raw file names (bytes that are not UTF-8 are read as such, and
    both become keys the same way)."""
    path = optional_file(root / GROUPS_FILE, "the optional groups file (key<TAB>source id per line)")
    if path is None:
        return {}
    with path.open(newline="", encoding="utf-8", errors="surrogateescape") as f:
        rows = [r for r in csv.reader(f, delimiter="\t") if r and not r[0].startswith("#")]
    if rows and rows[0][:2] == ["key", "group"]:
        rows = rows[1:]
    return {key_from_relpath(r[0]): key_from_relpath(r[1]) for r in rows if len(r) >= 2}


def relative_key(path: Path, root: Path) -> str:
    """The key of ``path`` under ``root`` (module doc)."""
    return key_from_relpath(path.relative_to(root).as_posix())


def _check_root(root: Path) -> None:
    if not root.is_dir():
        raise MissingInput(f"dataset root {root} is not a folder; pass --root (or DATA_ROOT=) pointing at it")


def class_folders(root: Path, dataset: str, class_names: tuple[str, ...] = VAAR_CLASSES) -> Manifest:
    """``root/<class>/<clip>.<ext>``: the label is the folder. Unknown folders are an
    error rather than silently dropped, since a typo would otherwise lose a class."""
    _check_root(root)
    index = {c: i for i, c in enumerate(class_names)}
    groups = read_groups(root)
    rows, unknown = [], set()
    for path in walk_media(root):
        rel = path.relative_to(root)
        if len(rel.parts) < 2:
            logger.warning("ignoring %s: not inside a class folder", rel)
            continue
        cls = normalise_class(rel.parts[0])
        if cls not in index:
            unknown.add(rel.parts[0])
            continue
        key = relative_key(path, root)
        rows.append(ManifestRow(key, path, index[cls], groups.get(key, "")))
    if unknown:
        raise InvalidInput(
            f"folders {sorted(unknown)} under {root} are not {dataset} classes {list(class_names)}; "
            "rename them, or use --dataset folder for unlabelled media"
        )
    if not rows:
        raise MissingInput(f"no media files found under {root}/<class>/ (suffixes: {sorted(MEDIA_SUFFIXES)})")
    return Manifest(dataset, root, class_names, tuple(rows))


def vaar(root: Path) -> Manifest:
    return class_folders(root, "vaar")


def synth(root: Path) -> Manifest:
    return class_folders(root, "synth")


def folder(root: Path) -> Manifest:
    """Any tree of media files, unlabelled (for prediction or feature export)."""
    _check_root(root)
    groups = read_groups(root)
    rows = tuple(ManifestRow(relative_key(p, root), p, UNLABELLED, groups.get(relative_key(p, root), ""))
                 for p in walk_media(root))
    if not rows:
        raise MissingInput(f"no media files found under {root}")
    return Manifest("folder", root, (), rows)


def xd_violence(root: Path) -> Manifest:
    """XD-Violence from its official lists (``ROOT/lists`` or ``ROOT``): see extract/xd_violence.py."""
    from .xd_violence import xd_violence_manifest  # imported here: that module builds on this one

    return xd_violence_manifest(root)


def classes(root: Path) -> Manifest:
    """``ROOT/[<split>/]<label>/**/<clip>`` with any labels, and an optional metadata file:
    see extract/labelled.py."""
    from .labelled import classes_manifest  # imported here: that module builds on this one

    return classes_manifest(root)


def _manifest_needs_a_file(root: Path) -> Manifest:
    raise InvalidInput("--dataset manifest needs --manifest FILE (CSV, TSV or JSON lines with a 'path' column "
                       "relative to --root, and optional 'label', 'group', 'split')")


DATASETS: dict[str, Callable[[Path], Manifest]] = {"synth": synth, "vaar": vaar, "folder": folder,
                                                   "xd-violence": xd_violence, "classes": classes,
                                                   "manifest": _manifest_needs_a_file}


def build_manifest(dataset: str, root: str | Path, manifest_file: str | Path | None = None) -> Manifest:
    """The manifest of ``dataset`` under ``root`` (``manifest_file``: for ``manifest`` only)."""
    try:
        build = DATASETS[dataset]
    except KeyError:
        raise InvalidInput(f"unknown dataset {dataset!r}; choose one of {sorted(DATASETS)}") from None
    if dataset == "manifest" and manifest_file is not None:
        from .labelled import read_manifest_file

        return read_manifest_file(Path(root), Path(manifest_file))
    if manifest_file is not None:
        raise InvalidInput(f"--manifest {manifest_file} is only read with --dataset manifest (not {dataset}); "
                           "drop it, or pass --dataset manifest")
    return build(Path(root))
