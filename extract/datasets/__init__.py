"""Datasets as manifests: what stage 1 extracts, whatever the layout on disk.

The modules, from the bottom up (each builds only on those above it, never on a sibling
layout, so there is no import circle):

* ``manifest``: ``Manifest`` and ``ManifestRow`` (key, path, label, group, split), the
  key of a path, and the rule that a labelled dataset has two classes or more;
* ``names``: the rule for labels, keys and groups (no control characters);
* ``tree``: what a root holds (``walk_media``: links followed, loops reported;
  ``groups.tsv``); ``tables``: CSV, TSV and JSON-lines tables with line numbers;
* the layouts: ``folders`` (``vaar``, ``synth``, ``folder``), ``labelled`` (your own
  data: ``classes`` and ``--dataset manifest``), ``xd_violence`` (the official lists and
  split) and ``released_features`` (``import-features``: XD-Violence from the released
  snippet features);
* ``registry`` (dataset name -> manifest) and ``prepare`` (what ``cli.py extract`` calls).
"""

from .folders import VAAR_CLASSES, normalise_class
from .labelled import classes_manifest, describe_labelled, read_manifest_file, write_own_split
from .manifest import SPLIT_NAMES, Manifest, ManifestRow, relative_key, require_two_classes
from .names import name_problem
from .prepare import PreparedDataset, prepare_dataset
from .registry import DATASET_NAMES, DATASETS, build_manifest
from .released_features import (RELEASED_FORMATS, ImportConfig, ImportSummary, MissingFeatureFiles,
                                ReleasedFeaturesError, import_features)
from .tables import ManifestFileError
from .tree import GROUPS_FILE, MEDIA_SUFFIXES, read_groups, walk_media
from .xd_violence import XD_CLASSES, XDViolence, load_xd_violence

__all__ = [
    "DATASETS", "DATASET_NAMES", "GROUPS_FILE", "MEDIA_SUFFIXES", "RELEASED_FORMATS", "SPLIT_NAMES", "VAAR_CLASSES",
    "XD_CLASSES", "ImportConfig", "ImportSummary", "Manifest", "ManifestFileError", "ManifestRow",
    "MissingFeatureFiles", "PreparedDataset", "ReleasedFeaturesError", "XDViolence", "build_manifest",
    "classes_manifest", "describe_labelled", "import_features", "load_xd_violence", "name_problem",
    "normalise_class", "prepare_dataset", "read_groups", "read_manifest_file", "relative_key",
    "require_two_classes", "walk_media", "write_own_split",
]
