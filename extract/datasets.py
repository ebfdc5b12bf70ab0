"""A dataset name and root -> the manifest to extract, with what the dataset needs besides.

XD-Violence also has an official train/test split; it is written beside the cache (by
rank 0 alone under torchrun) so that stage 2's ``--task`` runs find it.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from .distributed import DistEnv
from .manifest import DATASETS, Manifest, build_manifest
from .xd_violence import load_xd_violence

DATASET_NAMES: tuple[str, ...] = tuple(DATASETS)


@dataclass(frozen=True)
class PreparedDataset:
    """The manifest to extract, and what to tell the user about the dataset first."""

    manifest: Manifest
    summary: str = ""


def prepare_dataset(dataset: str, root: str | Path, out: str | Path, lists: str | Path | None = None,
                    env: DistEnv | None = None) -> PreparedDataset:
    """The manifest of ``dataset`` under ``root``, for a cache at ``out``."""
    if dataset != "xd-violence":
        return PreparedDataset(build_manifest(dataset, root))
    xd = load_xd_violence(root, lists)
    if not (env or DistEnv.from_environ()).is_main:  # under torchrun, one rank speaks and writes
        return PreparedDataset(xd.manifest)
    return PreparedDataset(xd.manifest, f"{xd.describe()}\nofficial split -> {xd.write_official_split(out)}")


__all__ = ["DATASET_NAMES", "PreparedDataset", "prepare_dataset"]
