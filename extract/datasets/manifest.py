"""The bottom of the datasets package: a dataset as a manifest, one row per clip (key,
path, label, group, split), and the rules every layout shares.

Everything after a dataset module reads the manifest, never the folder layout, so adding
a dataset means adding one function to ``registry.DATASETS``. A clip's key is its path
relative to the dataset root (posix form), so two ``clip.mp4`` in different folders never
collide and a cache stays valid when the root moves; a name that is not valid UTF-8, or
that holds a control character, has those bytes escaped (``cache_schema.key_from_relpath``),
while the row keeps the real path to open.

Each layout (``folders``, ``labelled``, ``xd_violence``, ``released_features``) builds on
this module and none on another, so there is no import circle between them.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from cache_schema import UNLABELLED, ClipEntry, InvalidInput, MissingInput, key_from_relpath

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

    def labelled_classes(self) -> list[str]:
        """The class names that label at least one row, in class order."""
        used = {r.label for r in self.rows if r.label != UNLABELLED}
        return [n for i, n in enumerate(self.class_names) if i in used]


def require_two_classes(manifest: Manifest, where: str) -> Manifest:
    """``manifest`` when its labelled rows span two classes or more, or when it is not
    labelled at all (``folder``: media for prediction or export). One class is refused
    (``InvalidInput``): a classifier of one class learns nothing, and its metrics (accuracy
    1.000 over "1 classes") would say otherwise. ``where`` names the dataset in the message."""
    if not any(r.label != UNLABELLED for r in manifest.rows):
        return manifest
    present = manifest.labelled_classes()
    if len(present) < 2:
        raise InvalidInput(f"{where} has clips of one class only ({present[0]!r}, {len(manifest.rows)} clips); a "
                           "classifier needs at least two: add the clips of another class (e.g. a 'normal' one)")
    return manifest


def relative_key(path: Path, root: Path) -> str:
    """The key of ``path`` under ``root`` (module doc)."""
    return key_from_relpath(path.relative_to(root).as_posix())



def check_root(root: Path) -> None:
    if not root.is_dir():
        raise MissingInput(f"dataset root {root} is not a folder; pass --root (or DATA_ROOT=) pointing at it")



__all__ = ["SPLIT_NAMES", "Manifest", "ManifestRow", "check_root", "relative_key", "require_two_classes"]
