"""Dataset names -> the function that builds each one's manifest. The layouts build on
``manifest`` (the types at the bottom) and know nothing of each other or of this table."""

from __future__ import annotations

from pathlib import Path
from typing import Callable

from cache_schema import InvalidInput

from .folders import folder, synth, vaar
from .labelled import classes_manifest, read_manifest_file
from .manifest import Manifest
from .xd_violence import xd_violence_manifest


def _manifest_needs_a_file(root: Path) -> Manifest:
    raise InvalidInput("--dataset manifest needs --manifest FILE (CSV, TSV or JSON lines with a 'path' column "
                       "relative to --root, and optional 'label', 'group', 'split')")


DATASETS: dict[str, Callable[[Path], Manifest]] = {"synth": synth, "vaar": vaar, "folder": folder,
                                                   "xd-violence": xd_violence_manifest, "classes": classes_manifest,
                                                   "manifest": _manifest_needs_a_file}
DATASET_NAMES: tuple[str, ...] = tuple(DATASETS)


def build_manifest(dataset: str, root: str | Path, manifest_file: str | Path | None = None) -> Manifest:
    """The manifest of ``dataset`` under ``root`` (``manifest_file``: for ``manifest`` only)."""
    try:
        build = DATASETS[dataset]
    except KeyError:
        raise InvalidInput(f"unknown dataset {dataset!r}; choose one of {sorted(DATASETS)}") from None
    if dataset == "manifest" and manifest_file is not None:
        return read_manifest_file(Path(root), Path(manifest_file))
    if manifest_file is not None:
        raise InvalidInput(f"--manifest {manifest_file} is only read with --dataset manifest (not {dataset}); "
                           "drop it, or pass --dataset manifest")
    return build(Path(root))


__all__ = ["DATASETS", "DATASET_NAMES", "build_manifest"]
