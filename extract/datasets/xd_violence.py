"""XD-Violence (Wu et al., ECCV 2020) as a manifest, with its official split.

XD-Violence identifies everything by the video *name*: the official lists (VadCLIP-style
CSVs ``path,label`` of per-crop feature files, XDVioDet-style ``.list`` files of feature
paths, or plain name lists) and ``annotations.txt`` all name videos such as
``Bad.Boys.1995__#00-26-51_00-27-53_label_B2-0-0``. The label codes after ``_label_``
are up to three, ``0``-padded: A normal, B1 fighting, B2 shooting, B4 riot, B5 abuse,
B6 car accident, G explosion. The first code is the video's class.

This module reads the lists (names parsed from any path form, the 5/10 feature crops
deduplicated), finds each listed video under the dataset root by name (with or without
extension, ``.mp4`` preferred), and builds a manifest of every video found, labelled with
seven classes (``normal`` + the six violent ones, so stage 2 can score ``1 - p(normal)``).
Videos that are listed but absent are logged and counted, never fatal: partial downloads
are common and the rest is still worth extracting.

The official split cannot ride in the cache (the cache holds features, not protocol), so
it is handed to stage 2 as a split file beside the cache, ``<cache>.official_split.json``,
in the format ``temporal.split`` reads (``--split-file``): ``train``/``test`` key lists, an
empty ``val`` (XD-Violence has none; stage 2 carves one out of train).
"""

from __future__ import annotations

import csv
import logging
import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from cache_schema import InvalidInput, MissingInput, official_split_path, write_json

from .manifest import Manifest, ManifestRow, relative_key
from .tree import MEDIA_SUFFIXES

logger = logging.getLogger(__name__)

DATASET = "xd-violence"
# Label code -> class name. "normal" stays literally "normal": stage 2 finds the anomaly
# score as 1 - p("normal").
CODE_CLASSES: dict[str, str] = {
    "A": "normal", "B1": "fighting", "B2": "shooting", "B4": "riot", "B5": "abuse", "B6": "car_accident",
    "G": "explosion",
}
XD_CLASSES: tuple[str, ...] = tuple(CODE_CLASSES.values())
VIOLENT_CLASSES: tuple[str, ...] = XD_CLASSES[1:]
NORMAL_CODE = "A"
PAD = "0"
SPLITS = ("train", "test")

# Accepted list files, in order of preference (first found wins).
LIST_FILES: dict[str, tuple[str, ...]] = {
    "train": ("train.list", "train.txt", "train.csv", "xd_CLIP_rgb.csv", "rgb.list"),
    "test": ("test.list", "test.txt", "test.csv", "xd_CLIP_rgbtest.csv", "rgb_test.list"),
}
ANNOTATIONS_FILE = "annotations.txt"
VIDEO_PREFERENCE = (".mp4", "")  # then other video suffixes, then audio-only ones
AUDIO_SUFFIXES = frozenset(".mp3 .wav .m4a .aac .ogg .opus .flac".split())

_CODE = r"(?:[A-Z]\d?|0)"
# <name ending in _label_<codes>> [__<crop>] [.<ext>]; the greedy prefix takes the last _label_.
_NAME_RE = re.compile(rf"^(?P<name>.*_label_(?P<codes>{_CODE}(?:-{_CODE})*))(?P<rest>.*)$")
_REST_RE = re.compile(r"^(?:__(?P<crop>\d+))?(?P<ext>\.[A-Za-z0-9]+)?$")


class XDListError(InvalidInput):
    """A list or a name does not follow XD-Violence's conventions; the message says which."""


@dataclass(frozen=True)
class ParsedName:
    name: str         # the video name, through the label codes
    crop: str         # "" or the feature crop index of a "__<crop>.npy" entry
    ext: str          # "" or the extension (with the dot)


def parse_entry(entry: str) -> ParsedName:
    """The video name in a list entry: a bare name, a video file name, or a feature path
    (``/any/dir/<name>__<crop>.npy``, POSIX or Windows separators)."""
    base = re.split(r"[\\/]", entry.strip())[-1]
    m = _NAME_RE.match(base)
    rest = _REST_RE.match(m.group("rest")) if m else None
    if m is None or rest is None:
        raise XDListError(f"{entry!r} is not an XD-Violence video name (<name>_label_<c1>[-<c2>-<c3>] with an "
                          "optional __<crop> and extension); check that the list holds XD-Violence names")
    return ParsedName(m.group("name"), rest.group("crop") or "", rest.group("ext") or "")


def video_name(entry: str) -> str:
    return parse_entry(entry).name


def label_codes(name: str) -> tuple[str, ...]:
    """The label codes of a video name without the ``0`` pads, first code first."""
    m = _NAME_RE.match(name)
    if m is None:
        raise XDListError(f"{name!r} has no _label_<codes> suffix")
    codes = tuple(c for c in m.group("codes").split("-") if c != PAD)
    unknown = [c for c in codes if c not in CODE_CLASSES]
    if not codes or unknown:
        raise XDListError(f"{name!r}: label codes {unknown or 'none'} are not XD-Violence codes "
                          f"{sorted(CODE_CLASSES)}")
    if NORMAL_CODE in codes and len(codes) > 1:
        raise XDListError(f"{name!r} is labelled both normal (A) and violent")
    return codes


@dataclass(frozen=True)
class XDVideo:
    name: str
    split: str                 # "train" | "test"
    codes: tuple[str, ...]     # without pads, e.g. ("B2", "G")

    @property
    def code_string(self) -> str:
        """The label as the official CSVs write it (``A``, ``B2-G-0``): the name's suffix."""
        return self.name.rsplit("_label_", 1)[1]

    @property
    def class_name(self) -> str:
        return CODE_CLASSES[self.codes[0]]

    @property
    def class_index(self) -> int:
        return XD_CLASSES.index(self.class_name)

    @property
    def violent(self) -> bool:
        return self.codes[0] != NORMAL_CODE


# -- lists ------------------------------------------------------------------------------
def read_name_list(path: str | Path) -> list[str]:
    """Unique video names of a list file, in first-seen order.

    ``.csv``: the ``path`` column when there is a header naming it, else the first column;
    a ``label`` column, if any, must agree with the name (a disagreement means a corrupted
    list, so it is an error). Anything else: one entry per line (first whitespace-separated
    token), blank lines and ``#`` comments skipped."""
    path = Path(path)
    entries: list[tuple[str, str | None]] = []
    if path.suffix.lower() == ".csv":
        with path.open(newline="") as f:
            rows = [r for r in csv.reader(f) if r and r[0].strip()]
        header = [c.strip().lower() for c in rows[0]] if rows else []
        if "path" in header:
            pi, li = header.index("path"), (header.index("label") if "label" in header else None)
            entries = [(r[pi], r[li].strip() if li is not None and li < len(r) else None) for r in rows[1:]]
        else:
            entries = [(r[0], None) for r in rows]
    else:
        for line in path.read_text().splitlines():
            line = line.strip()
            if line and not line.startswith("#"):
                entries.append((line.split()[0], None))
    names: dict[str, None] = {}
    for n, (entry, label) in enumerate(entries, 1):
        try:
            name = video_name(entry)
        except XDListError as exc:
            raise XDListError(f"{path}, entry {n}: {exc}") from None
        if label is not None and label != name.rsplit("_label_", 1)[1]:
            raise XDListError(f"{path}, entry {n}: label column {label!r} disagrees with the name {name!r}")
        names[name] = None
    if not names:
        raise XDListError(f"{path} lists no video")
    return list(names)


def find_list_files(lists_dir: str | Path) -> dict[str, Path]:
    """The train and test list files of a folder (see ``LIST_FILES``)."""
    lists_dir = Path(lists_dir)
    if not lists_dir.is_dir():
        raise MissingInput(f"list folder {lists_dir} does not exist; pass --lists DIR holding the train/test "
                                f"lists and {ANNOTATIONS_FILE}")
    found: dict[str, Path] = {}
    for split, candidates in LIST_FILES.items():
        present = [lists_dir / c for c in candidates if (lists_dir / c).is_file()]
        if not present:
            raise MissingInput(f"no {split} list in {lists_dir}: expected one of {list(candidates)} "
                                    "(CSV with a 'path' column, or one name/path per line)")
        if len(present) > 1:
            logger.info("%s list: using %s (also present: %s)", split, present[0].name, [p.name for p in present[1:]])
        found[split] = present[0]
    return found


def default_lists_dir(root: str | Path) -> Path:
    """``ROOT/lists`` when it exists, else ``ROOT`` itself."""
    root = Path(root)
    return root / "lists" if (root / "lists").is_dir() else root


@dataclass(frozen=True)
class XDLists:
    """The official video lists: every video once, with its split and codes."""

    videos: tuple[XDVideo, ...]
    files: dict[str, str] = field(default_factory=dict)   # split -> list file it came from
    annotations: str | None = None                        # annotations.txt beside the lists, if any

    def split(self, name: str) -> tuple[XDVideo, ...]:
        return tuple(v for v in self.videos if v.split == name)

    def by_name(self) -> dict[str, XDVideo]:
        return {v.name: v for v in self.videos}

    def code_counts(self, split: str) -> Counter:
        """Videos per label string (``B1-0-0``, ``G-B2-0``, ...), as the CSVs' label column."""
        return Counter(v.code_string for v in self.split(split))

    def class_counts(self, split: str, violent_only: bool = False) -> dict[str, int]:
        """Videos per class (first code), in class order."""
        c = Counter(v.class_name for v in self.split(split))
        names = VIOLENT_CLASSES if violent_only else XD_CLASSES
        return {n: c.get(n, 0) for n in names}

    def describe(self) -> str:
        """The per-class counts of each split (first code): the recognition task's classes,
        plus normal for detection."""
        counts = {s: self.class_counts(s) for s in SPLITS}
        table = [(n, counts["train"][n], counts["test"][n]) for n in XD_CLASSES]
        table.append(("violent (6 classes)", *(sum(counts[s].values()) - counts[s]["normal"] for s in SPLITS)))
        table.append(("all", len(self.split("train")), len(self.split("test"))))
        width = max(len(r[0]) for r in table)
        lines = [f"{'class':<{width}}  {'train':>6}  {'test':>6}"]
        lines += [f"{n:<{width}}  {a:>6}  {b:>6}" for n, a, b in table]
        return "\n".join(lines)


def read_lists(lists_dir: str | Path) -> XDLists:
    """Train and test videos of a list folder. A video in both splits is an error: the
    official split would leak."""
    files = find_list_files(lists_dir)
    per_split = {s: read_name_list(p) for s, p in files.items()}
    both = sorted(set(per_split["train"]) & set(per_split["test"]))
    if both:
        raise XDListError(f"{len(both)} videos are listed for both train and test (e.g. {both[:3]}); "
                          "check that the train and test lists are not the same file")
    videos = tuple(XDVideo(n, s, label_codes(n)) for s in SPLITS for n in per_split[s])
    annotations = Path(lists_dir) / ANNOTATIONS_FILE
    return XDLists(videos, {s: str(p) for s, p in files.items()},
                   str(annotations.resolve()) if annotations.is_file() else None)


# -- videos on disk -----------------------------------------------------------------------
def _preference(suffix: str) -> tuple[int, str]:
    s = suffix.lower()
    if s in VIDEO_PREFERENCE:
        return (VIDEO_PREFERENCE.index(s), s)
    return (len(VIDEO_PREFERENCE) + (s in AUDIO_SUFFIXES), s)


def index_videos(root: str | Path) -> dict[str, Path]:
    """Video name -> file for every media file (or extension-less file) under ``root``
    whose name is an XD-Violence name. Feature files (``.npy``) and lists are ignored.
    When a name is present several times, ``.mp4`` wins, then no extension, then other
    video containers, then audio; equal candidates (the same file in two folders) are
    reported and the first path in sorted order is used."""
    root = Path(root)
    candidates: dict[str, list[tuple[tuple[int, str], Path]]] = {}
    for p in sorted(root.rglob("*")):
        if not p.is_file():
            continue
        try:
            parsed = parse_entry(p.name)
        except XDListError:
            continue
        if parsed.crop or (parsed.ext and parsed.ext.lower() not in MEDIA_SUFFIXES):
            continue
        candidates.setdefault(parsed.name, []).append((_preference(parsed.ext), p))
    out: dict[str, Path] = {}
    dupes = []
    for name, ranked in candidates.items():
        ranked.sort(key=lambda r: (r[0], str(r[1])))
        if len(ranked) > 1 and ranked[0][0] == ranked[1][0]:
            dupes.append(name)
        out[name] = ranked[0][1]
    if dupes:
        logger.warning("%d videos are present more than once under %s with the same extension (e.g. %s); "
                       "using the first path in sorted order", len(dupes), root, dupes[:3])
    return out


# -- the dataset -----------------------------------------------------------------------------
@dataclass(frozen=True)
class XDViolence:
    """The lists, the manifest of the videos found, and the listed videos that were not."""

    lists: XDLists
    manifest: Manifest
    keys: dict[str, str]                 # video name -> manifest key (found videos only)
    missing: tuple[XDVideo, ...]

    def missing_counts(self) -> dict[str, int]:
        return {s: sum(v.split == s for v in self.missing) for s in SPLITS}

    def official_split(self) -> dict[str, list[str]]:
        """Manifest keys per part of the official split (found videos only; ``val`` empty)."""
        parts: dict[str, list[str]] = {"train": [], "val": [], "test": []}
        for v in self.lists.videos:
            if v.name in self.keys:
                parts[v.split].append(self.keys[v.name])
        return parts

    def describe(self) -> str:
        found = {s: sum(v.name in self.keys for v in self.lists.split(s)) for s in SPLITS}
        lines = [f"XD-Violence lists: {', '.join(f'{s} {p}' for s, p in self.lists.files.items())}",
                 self.lists.describe(),
                 f"videos found under {self.manifest.root}: train {found['train']}/{len(self.lists.split('train'))}, "
                 f"test {found['test']}/{len(self.lists.split('test'))}"]
        if self.missing:
            lines.append(f"missing: {len(self.missing)} listed videos were not found (listed in the official split "
                         f"file's info.missing), e.g. {[v.name for v in self.missing[:3]]}")
        return "\n".join(lines)

    def write_official_split(self, cache: str | Path) -> Path:
        """Write ``<cache>.official_split.json`` for stage 2's ``--split-file``."""
        path = official_split_path(cache)
        path.parent.mkdir(parents=True, exist_ok=True)
        parts = self.official_split()
        doc = {
            "info": {
                "kind": "official", "dataset": DATASET, "lists": self.lists.files,
                "annotations": self.lists.annotations,
                "class_names": list(XD_CLASSES),
                "class_counts": {s: self.lists.class_counts(s) for s in SPLITS},
                "found": {s: len(parts[s]) for s in SPLITS},
                "missing": {s: [v.name for v in self.missing if v.split == s] for s in SPLITS},
            },
            **parts,
        }
        write_json(path, doc)  # atomic: under torchrun every rank writes this same file
        logger.info("official split written to %s (train %d, test %d videos)", path, len(parts["train"]),
                    len(parts["test"]))
        return path


def load_xd_violence(root: str | Path, lists: str | Path | None = None) -> XDViolence:
    """Read the lists (``lists`` or the default folder) and find their videos under ``root``."""
    root = Path(root)
    if not root.is_dir():
        raise MissingInput(f"dataset root {root} is not a folder; pass --root (or DATA_ROOT=) pointing at the "
                                "XD-Violence videos")
    xd_lists = read_lists(lists if lists is not None else default_lists_dir(root))
    on_disk = index_videos(root)
    rows, keys, missing = [], {}, []
    for v in xd_lists.videos:
        path = on_disk.get(v.name)
        if path is None:
            missing.append(v)
            continue
        key = relative_key(path, root)  # a name's odd bytes escaped, as every layout's keys
        keys[v.name] = key
        rows.append(ManifestRow(key, path, v.class_index))
    if missing:
        counts = Counter(v.split for v in missing)
        logger.warning("%d listed XD-Violence videos not found under %s (train %d, test %d); they are left out: %s%s",
                       len(missing), root, counts.get("train", 0), counts.get("test", 0),
                       ", ".join(v.name for v in missing[:20]), " ..." if len(missing) > 20 else "")
    if not rows:
        raise MissingInput(f"none of the {len(xd_lists.videos)} listed XD-Violence videos is under {root}; "
                                "pass --root pointing at the folder holding the videos (any depth, named "
                                "<video name>[.mp4])")
    manifest = Manifest(DATASET, root, XD_CLASSES, tuple(rows))
    return XDViolence(xd_lists, manifest, keys, tuple(missing))


def xd_violence_manifest(root: Path) -> Manifest:
    """The ``DATASETS`` entry: lists from ``ROOT/lists`` or ``ROOT``."""
    return load_xd_violence(root).manifest


__all__ = [
    "CODE_CLASSES", "XD_CLASSES", "VIOLENT_CLASSES", "LIST_FILES", "ANNOTATIONS_FILE",
    "XDListError", "ParsedName", "XDVideo", "XDLists", "XDViolence", "parse_entry", "video_name", "label_codes",
    "read_name_list", "find_list_files", "default_lists_dir", "read_lists", "index_videos", "load_xd_violence",
    "official_split_path", "xd_violence_manifest",
]
