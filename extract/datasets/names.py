"""The one rule for the names a dataset gives its clips: class labels, keys and groups.

Each of them ends up in line-oriented outputs (``per_class.md``, ``cache info``, the logs,
TSV split files): a name holding a line break or another control character would break
every one of them, or hide what it says. So a label, key or group read from a file (a
manifest, ``metadata.csv``, ``groups.tsv``) or a folder name that is to become a label,
is refused when it holds one, naming the line it came from; a file name on disk, which
the user may not be able to change, becomes a key with those bytes escaped instead
(``cache_schema.key_from_relpath``), so one odd file never stops a dataset.
"""

from __future__ import annotations

import unicodedata

# Cc: C0 controls (tab, newline, escape, ...), DEL and the C1 controls; Zl, Zp: the line
# and paragraph separators, which ``str.splitlines`` breaks on as it does on a newline.
FORBIDDEN_CATEGORIES = frozenset({"Cc", "Zl", "Zp"})


def name_problem(text: str, what: str) -> str | None:
    """Why ``text`` cannot be a ``what`` (a label, a key, a group), or None when it can."""
    bad = sorted({c for c in text if unicodedata.category(c) in FORBIDDEN_CATEGORIES})
    if not bad:
        return None
    shown = ", ".join(f"U+{ord(c):04X}" + (" (newline)" if c in "\r\n" else " (tab)" if c == "\t" else "")
                      for c in bad)
    return f"the {what} {text!r} holds a control character ({shown}); write it on one line, without control characters"


__all__ = ["FORBIDDEN_CATEGORIES", "name_problem"]
