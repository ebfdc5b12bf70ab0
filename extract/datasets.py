"""A dataset name and root -> the manifest to extract, with what the dataset needs besides.

XD-Violence also has an official train/test split; it is written beside the cache (by
rank 0 alone under torchrun) so that stage 2's ``--task`` runs find it.
"""

from __future__ import annotations

import logging
from pathlib import Path

from .distributed import DistEnv
from .manifest import DATASETS, Manifest, build_manifest
from .xd_violence import load_xd_violence

logger = logging.getLogger(__name__)

DATASET_NAMES: tuple[str, ...] = tuple(DATASETS)


def dataset_manifest(dataset: str, root: str | Path, out: str | Path, lists: str | Path | None = None,
                     env: DistEnv | None = None) -> Manifest:
    """The manifest of ``dataset`` under ``root``, for a cache at ``out``."""
    if dataset != "xd-violence":
        return build_manifest(dataset, root)
    xd = load_xd_violence(root, lists)
    if (env or DistEnv.from_environ()).is_main:  # under torchrun, one rank speaks and writes
        logger.info("%s", xd.describe())
        logger.info("official split -> %s", xd.write_official_split(out))
    return xd.manifest


__all__ = ["DATASET_NAMES", "dataset_manifest"]
