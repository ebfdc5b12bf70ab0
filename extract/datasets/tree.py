"""What a dataset root holds, read the same way for every layout: its media files
(symbolic links followed, loops reported) and the optional ``groups.tsv``."""

from __future__ import annotations

import csv
import logging
import os
from pathlib import Path

from cache_schema import InvalidInput, key_from_relpath, optional_file

from .names import name_problem

logger = logging.getLogger(__name__)

MEDIA_SUFFIXES = frozenset(
    ".mp4 .m4v .mov .avi .mkv .webm .mpg .mpeg .ts .mts .flv .wmv .3gp .ogv "
    ".mp3 .wav .m4a .aac .ogg .opus .flac".split()
)
GROUPS_FILE = "groups.tsv"  # optional: key<TAB>source id, for group-aware splits


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
    both become keys the same way). A key or group holding a control character (a quoted
    cell with a line break) is refused with its line number (``names``)."""
    path = optional_file(root / GROUPS_FILE, "the optional groups file (key<TAB>source id per line)")
    if path is None:
        return {}
    rows: list[tuple[int, list[str]]] = []
    problems: list[str] = []
    with path.open(newline="", encoding="utf-8", errors="surrogateescape") as f:
        reader = csv.reader(f, delimiter="\t")
        line = 1
        for r in reader:
            first, line = line, reader.line_num + 1
            if r and not r[0].startswith("#"):
                rows.append((first, r))
    if rows and rows[0][1][:2] == ["key", "group"]:
        rows = rows[1:]
    groups: dict[str, str] = {}
    for line, r in rows:
        if len(r) < 2:
            continue
        problem = name_problem(r[0], "key") or name_problem(r[1], "group")
        if problem is not None:
            problems.append(f"line {line}: {problem}")
            continue
        groups[key_from_relpath(r[0])] = key_from_relpath(r[1])
    if problems:
        raise InvalidInput(f"{path}: " + "; ".join(problems[:10]) + (f"; ... and {len(problems) - 10} more"
                                                                      if len(problems) > 10 else ""))
    return groups


__all__ = ["GROUPS_FILE", "MEDIA_SUFFIXES", "read_groups", "walk_media"]
