"""A dataset name and root -> the manifest to extract, with what the dataset needs besides.

XD-Violence has an official train/test split, and a ``classes`` or ``manifest`` dataset
may have its own (split folders, a ``split`` column); it is written beside the cache (by
rank 0 alone under torchrun) so that stage 2 finds it. A labelled dataset of one class is
refused here, before anything is extracted (``manifest.require_two_classes``).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ..distributed import DistEnv
from .labelled import describe_labelled, write_own_split
from .manifest import Manifest, require_two_classes
from .registry import build_manifest
from .xd_violence import load_xd_violence


@dataclass(frozen=True)
class PreparedDataset:
    """The manifest to extract, and what to tell the user about the dataset first."""

    manifest: Manifest
    summary: str = ""


def prepare_dataset(dataset: str, root: str | Path, out: str | Path, lists: str | Path | None = None,
                    env: DistEnv | None = None, manifest_file: str | Path | None = None) -> PreparedDataset:
    """The manifest of ``dataset`` under ``root``, for a cache at ``out`` (``manifest_file``:
    the ``--manifest`` of ``--dataset manifest``)."""
    main_rank = (env or DistEnv.from_environ()).is_main
    where = f"--dataset {dataset} under {root}" + (f" (--manifest {manifest_file})" if manifest_file else "")
    if dataset in ("classes", "manifest"):
        manifest = require_two_classes(build_manifest(dataset, root, manifest_file), where)
        if not main_rank:
            return PreparedDataset(manifest)
        written = write_own_split(manifest, out)
        summary = describe_labelled(manifest) + (f"\nofficial split -> {written}" if written else "")
        return PreparedDataset(manifest, summary)
    if dataset != "xd-violence":
        return PreparedDataset(require_two_classes(build_manifest(dataset, root, manifest_file), where))
    xd = load_xd_violence(root, lists)
    require_two_classes(xd.manifest, where)
    if not main_rank:  # under torchrun, one rank speaks and writes
        return PreparedDataset(xd.manifest)
    return PreparedDataset(xd.manifest, f"{xd.describe()}\nofficial split -> {xd.write_official_split(out)}")


__all__ = ["PreparedDataset", "prepare_dataset"]
