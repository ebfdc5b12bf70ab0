"""Train/val/test splits: seeded, stratified, group-aware, stored beside the cache.

Why groups: clips cut from the same source video share background, people and sound, so
a clip in train and its sibling in test let a head recognise the *video*, not the event.
On a public fight-vs-normal set (300 clips from 46 source videos) untrained-backbone
features reach 55-63% on random folds and chance on source-grouped folds: random splits
of such data measure leakage. So no group ever straddles two parts, and the split is
stratified by class within that constraint (scikit-learn's StratifiedGroupKFold: one
fold is test, then one fold of the rest is val).

Groups come from, in order of precedence: a groups file given at train time (TSV, key ->
source id), a regex on the key (first capture group, or the whole match), or the cache's
``group`` array (filled at extraction; its default is the key itself, i.e. no grouping).

The split is written once to ``<cache>.split.json`` (for ``x.zarr``: ``x.zarr.split.json``;
for ``x.h5``: ``x.h5.split.json``) and reused by every later run, so that every head and
modality is scored on the same clips. A dataset's official split can be given as a file
instead (JSON with ``train``/``val``/``test`` key lists, or TSV ``key<TAB>train|val|test``;
without ``val``, val is carved out of train as above).
"""

from __future__ import annotations

import csv
import json
import logging
import re
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from sklearn.model_selection import StratifiedGroupKFold

from cache_schema import InvalidInput, input_file, optional_file, write_json

from .data import CacheData

logger = logging.getLogger(__name__)

PARTS = ("train", "val", "test")


class SplitError(InvalidInput):
    """A split cannot be made or reused as asked; the message says what to do."""


@dataclass(frozen=True)
class SplitConfig:
    seed: int = 0
    test_fraction: float = 0.2
    val_fraction: float = 0.2
    groups_file: str | None = None    # TSV key -> source id
    group_pattern: str | None = None  # regex on the key
    split_file: str | None = None     # explicit (official) split; default <cache>.split.json

    def recipe(self, groups_source: str) -> dict[str, Any]:
        """What must match for a stored split to be reused."""
        return {"seed": self.seed, "test_fraction": self.test_fraction, "val_fraction": self.val_fraction,
                "groups_source": groups_source}


@dataclass(frozen=True)
class Split:
    train: tuple[str, ...]
    val: tuple[str, ...]
    test: tuple[str, ...]
    info: dict[str, Any] = field(default_factory=dict)  # kind, seed, groups source, sizes, ...

    def part(self, name: str) -> tuple[str, ...]:
        return {"train": self.train, "val": self.val, "test": self.test}[name]

    def to_json(self) -> dict[str, Any]:
        return {"info": self.info, "train": list(self.train), "val": list(self.val), "test": list(self.test)}


def split_from_json(doc: Any) -> Split:
    """A :class:`Split` from its JSON form (``train``/``val``/``test`` lists of keys, an
    optional ``info`` object); ``ValueError`` saying what is wrong otherwise."""
    if not isinstance(doc, dict):
        raise ValueError(f"a JSON {type(doc).__name__}, not an object")
    parts = []
    for part in PARTS:
        if part not in doc:
            raise ValueError(f"no {part!r} list")
        keys = doc[part]
        if not isinstance(keys, list) or not all(isinstance(k, str) for k in keys):
            raise ValueError(f"{part!r} is not a list of keys")
        parts.append(tuple(keys))
    info = doc.get("info") or {}
    if not isinstance(info, dict):
        raise ValueError("'info' is not an object")
    return Split(*parts, info=dict(info))


def default_split_path(cache: str | Path) -> Path:
    p = Path(cache)
    return p.with_name(p.name + ".split.json")


# -- groups -----------------------------------------------------------------------------
def read_groups_file(path: str | Path) -> dict[str, str]:
    """``key<TAB>source`` per line; blank lines, ``#`` comments and a ``key`` header skipped."""
    out: dict[str, str] = {}
    for n, row in _tsv_rows(path, "--groups-file"):
        if not row or not row[0].strip() or row[0].startswith("#"):
            continue
        if len(row) < 2:
            raise SplitError(f"{path}:{n}: expected 'key<TAB>source id', got {row!r}")
        if n == 1 and row[0].strip().lower() == "key":
            continue
        out[row[0].strip()] = row[1].strip()
    return out


def _tsv_rows(path: str | Path, option: str) -> list[tuple[int, list[str]]]:
    """The numbered rows of a TSV file the user passed with ``option``; a missing,
    unreadable or non-text file is an error naming it."""
    path = input_file(path, f"the {option} (a tab-separated text file)")  # a folder or a FIFO refused unopened
    try:
        with path.open(newline="", encoding="utf-8") as f:
            return list(enumerate(csv.reader(f, delimiter="\t"), 1))
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise SplitError(f"{option} {path} cannot be read as tab-separated UTF-8 text ({exc}); "
                         "fix or replace the file") from None


def compile_group_pattern(pattern: str) -> re.Pattern[str]:
    """``--group-pattern`` as a regular expression; an invalid one is a :class:`SplitError`."""
    try:
        return re.compile(pattern)
    except re.error as exc:
        raise SplitError(f"--group-pattern {pattern!r} is not a regular expression ({exc}); fix it "
                         "(e.g. '^([^/]+/[^_]+)_' takes the key up to its first '_' as the source id)") from None


def resolve_groups(data: CacheData, config: SplitConfig) -> tuple[np.ndarray, str]:
    """The group of every loaded clip, and where the groups came from."""
    keys = data.keys.tolist()
    if config.groups_file:
        table = read_groups_file(config.groups_file)
        missing = [k for k in keys if k not in table]
        if missing:
            raise SplitError(f"{len(missing)} clips have no entry in {config.groups_file} (e.g. {missing[:3]}); "
                             "add them, or use --group-pattern instead")
        return np.array([table[k] for k in keys], dtype=object), f"file:{config.groups_file}"
    if config.group_pattern:
        rx = compile_group_pattern(config.group_pattern)
        groups = []
        for k in keys:
            m = rx.search(k)
            if m is None:
                raise SplitError(f"--group-pattern {config.group_pattern!r} does not match key {k!r}; "
                                 "fix the pattern so that it matches every key")
            groups.append(m.group(1) if rx.groups else m.group(0))
        return np.array(groups, dtype=object), f"pattern:{config.group_pattern}"
    return np.asarray(data.groups, dtype=object), "cache"


# -- making a split ---------------------------------------------------------------------
def _one_fold(labels: np.ndarray, groups: np.ndarray, fraction: float, seed: int, what: str) -> tuple[np.ndarray, np.ndarray]:
    """Indices (rest, held) with about ``fraction`` of the clips held out, whole groups."""
    k = max(2, int(round(1.0 / fraction)))
    n_groups = len(set(groups.tolist()))
    if n_groups < k:
        raise SplitError(f"only {n_groups} groups for a {what} fold of {fraction:.0%} (needs {k}); "
                         "use more clips, a larger fraction, or a split file")
    labels_seen, counts = np.unique(labels, return_counts=True)
    if len(counts) and counts.max() < k:
        # scikit-learn refuses when every class has fewer clips than folds
        per_class = ", ".join(f"class {int(c)}: {int(n)}" for c, n in zip(labels_seen, counts))
        raise SplitError(
            f"too few clips for a stratified, group-aware {what} part of {fraction:.0%}: it is one of {k} folds, "
            f"so at least one class needs {k} clips there, and the largest has {int(counts.max())} ({per_class}); "
            "add clips (at least {k} of some class), or pass --split-file PATH with your own train/val/test "
            "key lists (JSON, or TSV key<TAB>train|val|test; without val, val is carved from train)"
            .replace("{k}", str(k)))
    sgkf = StratifiedGroupKFold(n_splits=k, shuffle=True, random_state=seed)
    with warnings.catch_warnings():  # "least populated class has only n members": expected on small sets
        warnings.simplefilter("ignore", UserWarning)
        rest, held = next(sgkf.split(np.zeros(len(labels)), labels, groups))
    return rest, held


def make_split(keys: np.ndarray, labels: np.ndarray, groups: np.ndarray, config: SplitConfig,
               groups_source: str) -> Split:
    """A fresh stratified group split of the given clips (no file access)."""
    if not (0 < config.test_fraction < 1 and 0 < config.val_fraction < 1
            and config.test_fraction + config.val_fraction < 1):
        raise SplitError("test and val fractions must be in (0, 1) and sum to less than 1")
    trainval, test = _one_fold(labels, groups, config.test_fraction, config.seed, "test")
    val_of_rest = config.val_fraction / (1.0 - config.test_fraction)
    tr, va = _one_fold(labels[trainval], groups[trainval], val_of_rest, config.seed + 1, "val")
    train, val = trainval[tr], trainval[va]
    info = {"kind": "stratified-group", **config.recipe(groups_source)}
    return _finish(keys, groups, train, val, test, info)


def _finish(keys: np.ndarray, groups: np.ndarray, train: np.ndarray, val: np.ndarray, test: np.ndarray,
            info: dict[str, Any]) -> Split:
    parts = {"train": train, "val": val, "test": test}
    seen: dict[str, str] = {}
    for name, idx in parts.items():
        for g in set(groups[idx].tolist()):
            if g in seen:
                raise SplitError(f"group {g!r} is in both {seen[g]} and {name}; the split leaks")
            seen[g] = name
    info = {**info, "n_groups": len(set(groups.tolist())), "sizes": {k: int(len(v)) for k, v in parts.items()}}
    return Split(*(tuple(sorted(keys[parts[p]].tolist())) for p in PARTS), info=info)


def read_split_file(path: str | Path) -> dict[str, list[str]]:
    """Key lists per part from our JSON or from ``key<TAB>part`` lines."""
    path = input_file(path, "the --split-file (JSON train/val/test key lists, or key<TAB>part lines)")  # no FIFO
    if path.suffix == ".json":
        d = _read_json(path, "--split-file")
        fix = ("a split file is a JSON object with 'train', 'test' and optionally 'val' lists of cache keys "
               "(and an 'info' object)")
        if not isinstance(d, dict):
            raise SplitError(f"--split-file {path} is a JSON {type(d).__name__}; {fix}")
        unknown = sorted(set(d) - set(PARTS) - {"info"})
        if unknown:
            raise SplitError(f"--split-file {path} has unknown parts {unknown}; {fix}")
        for part in PARTS:
            keys = d.get(part, [])
            if not isinstance(keys, list) or not all(isinstance(k, str) for k in keys):
                raise SplitError(f"--split-file {path}: {part!r} is not a list of keys; {fix}")
        return {p: list(d.get(p, [])) for p in PARTS}
    out: dict[str, list[str]] = {p: [] for p in PARTS}
    for n, row in _tsv_rows(path, "--split-file"):
        if not row or row[0].startswith("#"):
            continue
        if len(row) < 2 or row[1].strip() not in PARTS:
            raise SplitError(f"{path}:{n}: expected 'key<TAB>train|val|test', got {row!r}")
        out[row[1].strip()].append(row[0].strip())
    return out


def _read_json(path: Path, what: str) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:  # ValueError: not JSON, empty, not UTF-8
        raise SplitError(f"{what} {path} is not readable JSON ({exc}); fix or replace the file") from None


def read_stored_split(path: str | Path) -> Split:
    """The split stored beside a cache (``<cache>.split.json``), checked. A damaged one
    (empty, torn, not a split) is a :class:`SplitError` that names it and says how to
    make it again."""
    path = Path(path)
    fix = ("delete it to make it again (the same seed and groups give the same split), "
           "or pass --split-file PATH")
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise SplitError(f"the stored split {path} is damaged ({exc}); {fix}") from None
    try:
        return split_from_json(doc)
    except ValueError as exc:
        raise SplitError(f"the stored split {path} is damaged ({exc}); {fix}") from None


def require_two_classes(data: CacheData) -> None:
    """Refuse (``SplitError``, exit 2) a cache whose usable clips are of one class: a head
    trained on it learns nothing and its metrics would read accuracy and macro F1 1.000
    over "1 classes". Extraction refuses such a dataset where it knows the labels
    (``extract.datasets.require_two_classes``); this catches the rest (imported features,
    caches from before that rule, a task view)."""
    labels = np.unique(data.clips.label.numpy())
    labels = labels[labels >= 0]
    if len(labels) < 2:
        names = [data.class_names[i] for i in labels if i < len(data.class_names)]
        raise SplitError(f"{data.path} holds usable clips of {'one class only, ' + repr(names[0]) if names else 'no class'} "
                         f"({len(data.keys)} clips); a classifier needs at least two: extract the clips of another "
                         "class into this cache (e.g. a 'normal' one)")


def load_or_create_split(data: CacheData, config: SplitConfig) -> Split:
    """The split of this cache: the explicit file, the stored ``<cache>.split.json``, or
    a new one written there. Keys of the split that the cache no longer holds (or that
    failed) are dropped and counted; loaded clips that the split does not know are left out
    and counted. A cache of one class is refused first (:func:`require_two_classes`)."""
    require_two_classes(data)
    groups, source = resolve_groups(data, config)
    labels = data.clips.label.numpy()
    if config.split_file:
        split = _from_explicit(data, groups, labels, config, source)
    else:
        path = default_split_path(data.path)
        if optional_file(path, "the split stored beside the cache") is not None:
            stored = read_stored_split(path)
            info = stored.info
            want = config.recipe(source)
            diffs = {k: (info.get(k), v) for k, v in want.items() if info.get(k) != v}
            if diffs:
                raise SplitError(
                    f"{path} holds a split made with other settings ({', '.join(f'{k}: stored {a!r}, asked {b!r}' for k, (a, b) in diffs.items())}); "
                    f"delete it to re-split every run of this cache, or pass the stored settings")
            split = stored
            logger.info("using the stored split %s", path)
        else:
            split = make_split(data.keys, labels, groups, config, source)
            try:
                write_json(path, split.to_json())
            except OSError as exc:
                raise SplitError(f"cannot write the split beside the cache ({exc}); pass --split-file PATH") from exc
            logger.info("wrote a new %s split to %s: %s", split.info["kind"], path, split.info["sizes"])
    return _reconcile(data, groups, split)


def _from_explicit(data: CacheData, groups: np.ndarray, labels: np.ndarray, config: SplitConfig, source: str) -> Split:
    parts = read_split_file(config.split_file)  # type: ignore[arg-type]
    info = {"kind": "file", "file": str(config.split_file), "seed": config.seed, "groups_source": source}
    if parts["val"]:
        return Split(*(tuple(parts[p]) for p in PARTS), info=info)
    if not parts["train"] or not parts["test"]:
        raise SplitError(f"{config.split_file} must list at least train and test keys")
    rows = data.rows_of(parts["train"])
    frac = config.val_fraction / (1.0 - config.test_fraction)
    tr, va = _one_fold(labels[rows], groups[rows], frac, config.seed + 1, "val")
    info["val"] = f"carved from train ({frac:.0%}, seed {config.seed + 1})"
    info["unusable_train_keys"] = len(parts["train"]) - len(rows)
    keys = data.keys
    return Split(tuple(keys[rows[tr]].tolist()), tuple(keys[rows[va]].tolist()), tuple(parts["test"]), info=info)


def _reconcile(data: CacheData, groups: np.ndarray, split: Split) -> Split:
    loaded = set(data.keys.tolist())
    parts = {p: tuple(k for k in split.part(p) if k in loaded) for p in PARTS}
    dropped = sum(len(split.part(p)) - len(parts[p]) for p in PARTS) + split.info.get("unusable_train_keys", 0)
    assigned = set().union(*map(set, parts.values()))
    unassigned = len(loaded - assigned)
    if dropped:
        logger.warning("%d clips of the split are not usable in this cache (failed, unlabelled or absent)", dropped)
    if unassigned:
        logger.warning("%d clips of the cache are in no part of the split; "
                       "they are left out (the split was made without them). Delete the split file to re-split.", unassigned)
    gmap = dict(zip(data.keys.tolist(), groups.tolist()))
    seen: dict[str, str] = {}
    for p in PARTS:
        for k in parts[p]:
            g = gmap[k]
            if seen.setdefault(g, p) != p:
                raise SplitError(f"source group {g!r} is in both {seen[g]} and {p}: this split would leak. "
                                 "Fix the split file, or check the groups you passed")
    info = {**split.info, "sizes": {p: len(parts[p]) for p in PARTS},
            "dropped_from_split": dropped, "not_in_split": unassigned,
            "n_groups": len(set(groups.tolist()))}
    return Split(*(parts[p] for p in PARTS), info=info)


__all__ = ["SplitConfig", "Split", "SplitError", "compile_group_pattern", "default_split_path",
           "load_or_create_split", "make_split", "require_two_classes", "read_groups_file", "read_split_file", "read_stored_split",
           "resolve_groups", "split_from_json"]
