"""Datasets whose layout is fixed: one folder per class of a known list (``vaar``,
``synth``), or any tree of media files without labels (``folder``)."""

from __future__ import annotations

import logging
import re
from pathlib import Path

from cache_schema import UNLABELLED, InvalidInput, MissingInput

from .manifest import Manifest, ManifestRow, check_root, relative_key
from .tree import MEDIA_SUFFIXES, read_groups, walk_media

logger = logging.getLogger(__name__)

# VAAR's ten classes, in the paper's order. Folder names are matched after lower-casing
# and mapping spaces and hyphens to underscores ("Baby Cry" -> "baby_cry").
VAAR_CLASSES: tuple[str, ...] = (
    "abuse", "baby_cry", "crash", "brawling", "explosion",
    "intruder", "normal", "pain", "police_siren", "vandalism",
)


def normalise_class(name: str) -> str:
    return re.sub(r"[\s\-]+", "_", name.strip().lower())


def class_folders(root: Path, dataset: str, class_names: tuple[str, ...] = VAAR_CLASSES) -> Manifest:
    """``root/<class>/<clip>.<ext>``: the label is the folder. Unknown folders are an
    error rather than silently dropped, since a typo would otherwise lose a class."""
    check_root(root)
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
    check_root(root)
    groups = read_groups(root)
    rows = tuple(ManifestRow(relative_key(p, root), p, UNLABELLED, groups.get(relative_key(p, root), ""))
                 for p in walk_media(root))
    if not rows:
        raise MissingInput(f"no media files found under {root}")
    return Manifest("folder", root, (), rows)



__all__ = ["VAAR_CLASSES", "class_folders", "folder", "normalise_class", "synth", "vaar"]
