"""Files that stage 1 writes beside a cache for stage 2 to find, named here once.

XD-Violence's official train/test split is one: extraction writes it, and a ``--task``
run without an explicit ``--split-file`` uses it.
"""

from __future__ import annotations

from pathlib import Path

OFFICIAL_SPLIT_SUFFIX = ".official_split.json"


def official_split_path(cache: str | Path) -> Path:
    """``<cache>.official_split.json``: the dataset's own split, beside the cache."""
    p = Path(cache)
    return p.with_name(p.name + OFFICIAL_SPLIT_SUFFIX)


def split_file_for(cache: str | Path, split_file: str | Path | None, task: str | None) -> Path | None:
    """The split a run uses: ``split_file`` when given; for a task run (XD-Violence), the
    official split beside the cache when there is one; otherwise None (a seeded split)."""
    if split_file or not task:
        return Path(split_file) if split_file else None
    candidate = official_split_path(cache)
    return candidate if candidate.exists() else None


__all__ = ["OFFICIAL_SPLIT_SUFFIX", "official_split_path", "split_file_for"]
