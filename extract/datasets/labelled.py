"""Your own labelled data: the ``classes`` and ``manifest`` datasets.

``classes`` reads a folder the way Hugging Face's ``videofolder``/``audiofolder``
builders do: ``ROOT/<label>/**/<clip>`` with any label names, optionally under split
folders (``ROOT/train/<label>/...``, ``ROOT/test/<label>/...``, ``val``/``validation``),
and an optional ``metadata.csv`` or ``metadata.jsonl`` at ROOT whose ``file_name`` column
(relative to ROOT) names clips and whose ``label``, ``group`` and ``split`` columns override
or add to what the folders say (an empty cell changes nothing). The class names are the
labels in sorted order, so the same folder always gives the same class indices.

``manifest`` describes a dataset in any layout once, in a file a user writes by hand or
with a spreadsheet: CSV, TSV or JSON lines with a ``path`` column relative to ROOT and
optional ``label``, ``group``, ``split``. Every bad row (a missing file, an empty path, a
path that leaves ROOT, a duplicate, an unknown split) and every unknown column is
reported at once, with line numbers, in one :class:`ManifestFileError`: a user fixing a
spreadsheet should not have to run the command once per mistake. A good manifest gives the
same clips (keys, labels, groups, class names) as the equivalent ``classes`` folder.

Paths: a key is always the path under ROOT as written (folders) or as listed (manifest),
never the target of a link. A path in a manifest may not leave ROOT by its text (absolute,
or ``..`` above ROOT) because its key would then mean nothing; a symbolic link under ROOT
that points elsewhere is followed, because linking data in is a deliberate act.

A dataset's own split (split folders, or a ``split`` column) is written beside the cache
as its official split, ``<cache>.official_split.json``, in the format XD-Violence's is
written (xd_violence.py); stage 2 uses it for every run of that cache unless
``--split-file`` says otherwise (``cache_schema.split_file_for``). Without ``val``, stage
2 carves one out of train.
"""

from __future__ import annotations

import json
import logging
import os
from collections import Counter
from dataclasses import dataclass, replace
from pathlib import Path, PurePosixPath

from cache_schema import UNLABELLED, InvalidInput, MissingInput, official_split_path, optional_file, write_json

from .manifest import SPLIT_NAMES, Manifest, ManifestRow, check_root, relative_key
from .names import name_problem
from .tables import ManifestFileError, TableRow, read_table, refuse
from .tree import read_groups, walk_media

logger = logging.getLogger(__name__)

METADATA_FILES = ("metadata.csv", "metadata.jsonl")
MANIFEST_COLUMNS = ("path", "label", "group", "split")
METADATA_COLUMNS = ("file_name", "label", "group", "split")


@dataclass(frozen=True)
class Clip:
    """One clip while a labelled dataset is being assembled: labels are still names."""

    path: Path
    key: str
    label: str = ""
    group: str = ""
    split: str = ""


def _listed_once(text: str, line: int, root: Path, first: dict[str, int],
                 problems: list[str]) -> tuple[PurePosixPath, str] | None:
    """A row's relative path and key, or None with the problem noted: not a clean relative
    path, one holding a control character (``names``), or a path listed on an earlier line
    (``first`` maps keys to their first line)."""
    problem = name_problem(text, "path (a clip's key)")
    if problem is not None:
        problems.append(f"line {line}: {problem}")
        return None
    rel = _relative(text)
    if isinstance(rel, str):
        problems.append(f"line {line}: {rel}")
        return None
    key = relative_key(root / rel, root)
    if key in first:
        problems.append(f"line {line}: {str(rel)!r} is listed again (first on line {first[key]})")
        return None
    first[key] = line
    return rel, key


def _relative(text: str) -> PurePosixPath | str:
    """The path as a clean relative path, or the reason it is not one."""
    if not text:
        return "empty path"
    p = PurePosixPath(text)
    if p.is_absolute():
        return f"{text!r} is absolute; write it relative to the root"
    depth = 0
    parts = []
    for part in p.parts:
        if part == "..":
            depth -= 1
            if depth < 0:
                return f"{text!r} leaves the root (..); move the file under the root, or link it there"
            parts.pop()
        elif part != ".":
            depth += 1
            parts.append(part)
    if not parts:
        return f"{text!r} names the root itself, not a file"
    return PurePosixPath(*parts)


def _split_of(value: str) -> str | None:
    return SPLIT_NAMES.get(value.strip().lower()) if value else ""


def _row_fields(row: TableRow, problems: list[str]) -> tuple[str, str, str] | None:
    """label, group and split of a row; a bad split value, or a label or group holding a
    control character (``names``), is a problem."""
    label, group = row.values.get("label", ""), row.values.get("group", "")
    problem = name_problem(label, "label") or name_problem(group, "group")
    if problem is not None:
        problems.append(f"line {row.line}: {problem}")
        return None
    split = _split_of(row.values.get("split", ""))
    if split is None:
        problems.append(f"line {row.line}: split {row.values['split']!r} is not one of {sorted(SPLIT_NAMES)}")
        return None
    return label, group, split


# -- the manifest dataset ---------------------------------------------------------------------
def read_manifest_file(root: Path, file: Path) -> Manifest:
    """``--dataset manifest --root ROOT --manifest FILE`` (module doc)."""
    check_root(root)
    if optional_file(file, "the manifest (--manifest)") is None:
        raise MissingInput(f"manifest {file} does not exist; pass --manifest FILE (CSV, TSV or JSON lines with a "
                           "'path' column)")
    problems: list[str] = []
    columns, rows = read_table(file, problems)
    unknown = [c for c in columns if c not in MANIFEST_COLUMNS]
    if unknown:
        problems.insert(0, f"line 1: unknown columns {unknown}; the columns are {list(MANIFEST_COLUMNS)}")
    if "path" not in columns:
        problems.insert(0, "line 1: no 'path' column (paths relative to the root)")
    clips: list[Clip] = []
    first: dict[str, int] = {}
    for row in rows if "path" in columns else []:
        listed = _listed_once(row.values.get("path", ""), row.line, root, first, problems)
        if listed is None:
            continue
        rel, key = listed
        path = root / rel
        if not path.is_file():
            what = ("a broken link" if path.is_symlink() and not path.exists() else
                    "not a regular file" if path.exists() else "not found")
            problems.append(f"line {row.line}: {str(rel)!r} is {what} under {root}")
            continue
        fields = _row_fields(row, problems)
        if fields is not None:
            clips.append(Clip(path, key, *fields))
    refuse(file, f"fix these rows (paths are relative to --root {root}) and run again", problems)
    if not clips:
        raise MissingInput(f"manifest {file} lists no clip; add rows with a 'path' relative to --root {root}")
    groups = read_groups(root)  # a group column wins over ROOT/groups.tsv, as in metadata
    clips = [c if c.group else replace(c, group=groups.get(c.key, "")) for c in clips]
    return _assemble("manifest", root, clips, f"the 'split' column of {file}")


# -- the classes dataset ----------------------------------------------------------------------
def classes_manifest(root: Path) -> Manifest:
    """``--dataset classes`` (module doc)."""
    check_root(root)
    files = walk_media(root)
    tops = {p.relative_to(root).parts[0] for p in files if len(p.relative_to(root).parts) > 1}
    split_tops = {t for t in tops if t.lower() in SPLIT_NAMES}
    by_split = bool(split_tops)
    if by_split and split_tops != tops:
        raise InvalidInput(f"{root} mixes split folders {sorted(split_tops)} with other folders "
                           f"{sorted(tops - split_tops)}; put every class folder under a split folder "
                           f"({'/'.join(sorted(SPLIT_NAMES))}), or none")
    groups = read_groups(root)
    clips: dict[str, Clip] = {}
    for path in files:
        parts = path.relative_to(root).parts
        split = SPLIT_NAMES[parts[0].lower()] if by_split and len(parts) > 1 else ""
        inner = parts[1:] if split else parts
        label = inner[0] if len(inner) > 1 else ""
        key = relative_key(path, root)
        clips[key] = Clip(path, key, label, groups.get(key, ""), split)
    metadata = _metadata_file(root)
    if metadata is not None:
        _apply_metadata(root, metadata, clips)
    unlabelled = [c.key for c in clips.values() if not c.label]
    if unlabelled:
        logger.warning("ignoring %d files outside a class folder and without a label in the metadata: %s%s",
                       len(unlabelled), unlabelled[:5], " ..." if len(unlabelled) > 5 else "")
    kept = [c for c in clips.values() if c.label]
    bad = sorted({c.label for c in kept if name_problem(c.label, "label")})
    if bad:  # metadata labels were checked with their lines: these are folder names
        raise InvalidInput(f"{root}: the class folder {bad[0]!r} cannot be a label: "
                           f"{name_problem(bad[0], 'label')}; rename the folder"
                           + (f" (and {len(bad) - 1} more)" if len(bad) > 1 else ""))
    if not kept:
        raise MissingInput(f"no labelled media files under {root}: expected {root}/<label>/<clip> (or "
                           f"{root}/train/<label>/<clip>, ...), or a metadata.csv with file_name and label columns")
    return _assemble("classes", root, kept, "split folders" if by_split else f"the 'split' column of {metadata}")


def _metadata_file(root: Path) -> Path | None:
    present = [p for p in (optional_file(root / name, "the dataset's metadata file (file_name, label, group, "
                                         "split columns)") for name in METADATA_FILES) if p is not None]
    if len(present) > 1:
        raise InvalidInput(f"{root} has both {' and '.join(p.name for p in present)}; keep one metadata file")
    return present[0] if present else None


def _apply_metadata(root: Path, file: Path, clips: dict[str, Clip]) -> None:
    """Override or add label, group and split from the metadata file (module doc). Other
    columns (captions, say) are features of Hugging Face's builders and not ours: ignored."""
    problems: list[str] = []
    columns, rows = read_table(file, problems)
    if "file_name" not in columns:
        problems.insert(0, "line 1: no 'file_name' column (paths relative to the dataset root)")
        rows = []
    ignored = [c for c in columns if c not in METADATA_COLUMNS]
    if ignored:
        logger.info("%s: columns %s are not used (only %s are)", file, ignored, list(METADATA_COLUMNS[1:]))
    first: dict[str, int] = {}
    for row in rows:
        listed = _listed_once(row.values.get("file_name", ""), row.line, root, first, problems)
        if listed is None:
            continue
        rel, key = listed
        fields = _row_fields(row, problems)
        if fields is None:
            continue
        clip = clips.get(key)
        if clip is None:
            if not (root / rel).is_file():
                problems.append(f"line {row.line}: {str(rel)!r} is not a file under {root}")
                continue
            clip = Clip(root / rel, key)
        label, group, split = fields
        clips[key] = replace(clip, label=label or clip.label, group=group or clip.group, split=split or clip.split)
    refuse(file, f"fix these rows (file_name is relative to {root}) and run again", problems)


# -- both -------------------------------------------------------------------------------------
def _assemble(dataset: str, root: Path, clips: list[Clip], split_source: str) -> Manifest:
    """Class names in sorted order, rows in key order; a split on some clips only is an error."""
    with_split = [c.key for c in clips if c.split]
    if with_split and len(with_split) != len(clips):
        missing = [c.key for c in clips if not c.split]
        raise InvalidInput(f"{len(missing)} clips of {root} have no split while {len(with_split)} have one (from "
                           f"{split_source}), e.g. {missing[:3]}; give every clip a split, or none")
    names = tuple(sorted({c.label for c in clips if c.label}))
    index = {n: i for i, n in enumerate(names)}
    rows = tuple(ManifestRow(c.key, c.path, index[c.label] if c.label else UNLABELLED, c.group, c.split)
                 for c in sorted(clips, key=lambda c: c.key))
    return Manifest(dataset, root, names, rows)


def describe_labelled(manifest: Manifest) -> str:
    """Clips per class (and per part of the dataset's own split), for the user to check."""
    counts = Counter((r.label, r.split) for r in manifest.rows)
    parts = [p for p in ("train", "val", "test") if any(s == p for _, s in counts)] or [""]
    names = [*manifest.class_names, *(["(unlabelled)"] if any(r.label == UNLABELLED for r in manifest.rows) else [])]
    width = max(len(n) for n in [*names, "class"])
    lines = [f"{'class':<{width}}  " + "  ".join(f"{p or 'clips':>6}" for p in parts)]
    for i, n in enumerate(names):
        label = UNLABELLED if n == "(unlabelled)" else i
        lines.append(f"{n:<{width}}  " + "  ".join(f"{counts.get((label, p), 0):>6}" for p in parts))
    return "\n".join(lines)


def write_own_split(manifest: Manifest, cache: str | Path) -> Path | None:
    """Write the dataset's own split as ``<cache>.official_split.json`` (module doc), or,
    for a dataset without one, remove such a file that an earlier extraction of this kind
    of dataset left (it would otherwise still steer every run). Returns the path written."""
    path = official_split_path(cache)
    parts = manifest.own_split()
    if parts is None:
        _remove_stale_split(path)
        return None
    sizes = {p: len(k) for p, k in parts.items()}
    if not parts["train"] or not parts["test"]:  # e.g. only train/: nothing to hold out, so no split
        logger.warning("the dataset's own split has no %s part (%s), so it is not written and stage 2 makes a "
                       "seeded split; add %s clips to use it", "train" if not parts["train"] else "test", sizes,
                       "train" if not parts["train"] else "test")
        _remove_stale_split(path)
        return None
    path.parent.mkdir(parents=True, exist_ok=True)
    counts = {p: Counter(manifest.class_names[r.label] for r in manifest.rows if r.split == p and r.label >= 0)
              for p in parts}
    doc = {"info": {"kind": "official", "dataset": manifest.dataset, "root": os.path.abspath(manifest.root),
                    "class_names": list(manifest.class_names),
                    "class_counts": {p: {n: counts[p].get(n, 0) for n in manifest.class_names} for p in parts}},
           **parts}
    write_json(path, doc)  # atomic: under torchrun every rank could write this same file
    logger.info("the dataset's own split written to %s: %s", path, sizes)
    return path


def _remove_stale_split(path: Path) -> None:
    if optional_file(path, "the official split that extraction writes beside the cache") is None:
        return
    try:
        dataset = json.loads(path.read_text(encoding="utf-8")).get("info", {}).get("dataset")
    except (OSError, ValueError, AttributeError):
        dataset = None
    if dataset in ("classes", "manifest"):
        path.unlink()
        logger.warning("removed %s: an earlier extraction of a dataset with its own split wrote it, and this "
                       "dataset has none (stage 2 now makes a seeded split)", path)
    else:
        logger.warning("%s is beside the cache but this dataset has no split of its own; stage 2 uses it for "
                       "every run: delete it if it is stale", path)


__all__ = ["METADATA_FILES", "MANIFEST_COLUMNS", "METADATA_COLUMNS",
           "read_manifest_file", "classes_manifest", "describe_labelled", "write_own_split"]
