"""Tables a user writes by hand or with a spreadsheet (a manifest, ``metadata.csv``):
CSV, TSV or JSON lines, read with a line number per row so that every bad row can be
named, and refused all at once (:func:`refuse`): a user fixing a spreadsheet should not
have to run the command once per mistake."""

from __future__ import annotations

import csv
import io
import json
from dataclasses import dataclass
from pathlib import Path

from cache_schema import InvalidInput, MissingInput

TABLE_SUFFIXES = {".csv": "csv", ".tsv": "tsv", ".tab": "tsv", ".jsonl": "jsonl", ".ndjson": "jsonl",
                  ".json": "jsonl"}
MAX_LISTED = 50  # bad rows named in one message; the rest are counted


class ManifestFileError(InvalidInput):
    """A manifest or metadata file has bad rows or columns. The first line of the message
    names the file and the fix; one line per problem follows, with its line number."""


@dataclass(frozen=True)
class TableRow:
    line: int
    values: dict[str, str]


# -- tables (CSV, TSV, JSON lines) --------------------------------------------------------------
def read_table(path: Path, problems: list[str]) -> tuple[list[str], list[TableRow]]:
    """The columns and rows of a CSV, TSV or JSON-lines file. Rows that cannot be read
    are added to ``problems`` (``line N: ...``) and left out."""
    kind = TABLE_SUFFIXES.get(path.suffix.lower())
    if kind is None:
        raise InvalidInput(f"{path}: unknown table format {path.suffix!r}; name it .csv, .tsv or .jsonl")
    try:
        text = path.read_text(encoding="utf-8-sig")  # -sig: spreadsheets often start with a BOM
    except UnicodeDecodeError as exc:
        raise InvalidInput(f"{path} is not UTF-8 text ({exc.reason} at byte {exc.start}); save it as UTF-8") from None
    except OSError as exc:
        raise MissingInput(f"cannot read {path} ({exc.strerror or exc}); pass an existing file") from None
    if kind == "jsonl":
        return _jsonl_table(text, problems)
    reader = csv.reader(io.StringIO(text, newline=""), delimiter="\t" if kind == "tsv" else ",")
    header: list[str] | None = None
    rows: list[TableRow] = []
    start = 1
    for cells in reader:
        line, start = start, reader.line_num + 1
        if not any(c.strip() for c in cells) or (header is None and cells[0].lstrip().startswith("#")):
            continue
        if header is None:
            header = [c.strip() for c in cells]
            continue
        if len(cells) != len(header):
            problems.append(f"line {line}: {len(cells)} fields where the header has {len(header)}")
            continue
        rows.append(TableRow(line, {h: c.strip() for h, c in zip(header, cells)}))
    return header or [], rows


def _jsonl_table(text: str, problems: list[str]) -> tuple[list[str], list[TableRow]]:
    columns: dict[str, None] = {}
    rows: list[TableRow] = []
    for n, raw in enumerate(text.splitlines(), 1):
        if not raw.strip():
            continue
        try:
            doc = json.loads(raw)
        except ValueError as exc:
            problems.append(f"line {n}: not JSON ({exc})")
            continue
        if not isinstance(doc, dict):
            problems.append(f"line {n}: a JSON {type(doc).__name__}, not an object")
            continue
        bad = [k for k, v in doc.items() if v is not None and not isinstance(v, (str, int))]
        if bad:
            problems.append(f"line {n}: {bad} must be strings")
            continue
        columns.update(dict.fromkeys(doc))
        rows.append(TableRow(n, {k: "" if v is None else str(v).strip() for k, v in doc.items()}))
    return list(columns), rows


def refuse(path: Path, fix: str, problems: list[str]) -> None:
    if not problems:
        return
    problems = sorted(problems, key=lambda p: int(p.split(":", 1)[0].removeprefix("line ")))  # stable
    listed = problems[:MAX_LISTED]
    more = [f"... and {len(problems) - MAX_LISTED} more"] if len(problems) > MAX_LISTED else []
    raise ManifestFileError("\n".join([f"{path} has {len(problems)} problem(s); {fix}:", *listed, *more]))


__all__ = ["MAX_LISTED", "TABLE_SUFFIXES", "ManifestFileError", "TableRow", "read_table", "refuse"]
