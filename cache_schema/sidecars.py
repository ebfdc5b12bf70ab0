"""Files that stage 1 writes beside a cache for stage 2 to find, named here once, and
the one rule for every optional file the project reads by its name.

A dataset's own split is one (XD-Violence's official lists; a ``classes`` dataset's split
folders or a ``split`` column): extraction writes it, and every run of that cache
without an explicit ``--split-file`` uses it.

The rule (:func:`optional_file`): an optional file that is absent is simply not used;
one whose name is taken by something that is not a regular file (a folder, a FIFO, a
socket) is refused with a message naming it. Not ignored: its presence says someone
meant to use it, and silently dropping, say, a ``groups.tsv`` would let clips of one
source fall on both sides of a split. Not opened: a FIFO would block the run.

Every file the user names (``--token-file``, ``--split-file``, ``--groups-file``, the
released lists, a run's JSON files) goes through the same check before it is opened,
:func:`input_file`: one that is required is refused when absent too.
"""

from __future__ import annotations

from pathlib import Path

from .errors import InvalidInput, MissingInput

OFFICIAL_SPLIT_SUFFIX = ".official_split.json"


def official_split_path(cache: str | Path) -> Path:
    """``<cache>.official_split.json``: the dataset's own split, beside the cache."""
    p = Path(cache)
    return p.with_name(p.name + OFFICIAL_SPLIT_SUFFIX)


def optional_file(path: str | Path, what: str) -> Path | None:
    """``path`` when it is a regular file, None when nothing has that name; raises
    :class:`InvalidInput` when something else (a folder, a FIFO) has it (module doc).
    ``what`` says what the file is for, in the message."""
    path = Path(path)
    if not path.exists() and not path.is_symlink():
        return None
    if path.is_file():
        return path
    kind = "a folder" if path.is_dir() else "a broken link" if not path.exists() else "not a regular file"
    raise InvalidInput(f"{path} is {kind}, but that name is reserved for {what}; rename or remove it, "
                       "or make it that file")


def input_file(path: str | Path, what: str) -> Path:
    """``path`` when it is a regular file (module doc); :class:`MissingInput` when nothing
    has that name, :class:`InvalidInput` when a folder, a FIFO or a broken link has it,
    before it is opened (a FIFO would block forever). ``what`` names it in the message."""
    found = optional_file(path, what)
    if found is None:
        raise MissingInput(f"{path}: no such file; it should be {what}")
    return found


def split_file_for(cache: str | Path, split_file: str | Path | None, task: str | None) -> Path | None:
    """The split a run uses: ``split_file`` when given; else the dataset's own split beside
    the cache when extraction wrote one (XD-Violence's, for a ``--task`` run or any other;
    a ``classes`` or ``manifest`` dataset's split); otherwise None (a seeded split).
    ``task`` is kept for the callers' sake: the rule no longer depends on it."""
    if split_file:
        return Path(split_file)
    return optional_file(official_split_path(cache), "the official split that extraction writes beside the cache")


__all__ = ["OFFICIAL_SPLIT_SUFFIX", "input_file", "official_split_path", "optional_file", "split_file_for"]
