"""XD-Violence from the snippet features the field shares, instead of from the videos.

Most XD-Violence work starts from released per-snippet features (16 frames at 24 fps per
snippet). This module writes them into a time-grid (schema v2, ragged) cache, one clip per
video with ``T`` = its snippet count, exactly as ``extract --step-seconds 0.6667`` would lay
out features it computed itself, so that ``train --task xd-detection`` and ``evaluate
--detection`` run on the same features as the published tables.

The layouts, as read in the authors' repositories:

* **XDVioDet** (Wu et al., ECCV 2020; github.com/Roc-Ng/XDVioDet): ``list/rgb.list`` and
  ``list/rgb_test.list`` hold one absolute path per line of I3D RGB features,
  ``.../i3d-features/RGB[Test]/<name>__<c>.npy`` for the five crops ``c = 0..4`` (README:
  ``__0`` the centre, ``__1..__4`` the corners), consecutive lines per video, each ``[T,
  1024]`` float32; ``list/audio.list`` and ``list/audio_test.list`` one path per video,
  ``.../vggish-features/{train,test}/<name>__vggish.npy`` ``[T', 128]`` (``option.py``: the
  default lists, ``feature-size`` 1024 + 128). ``dataset.py`` (modality ``MIX2``) pairs RGB
  list line ``i`` with audio line ``i // 5`` and concatenates the two when their row
  counts are equal, else ``features1[:-1]`` with the audio: it drops the **last RGB row**
  (one; any other difference makes the concatenation fail). ``list/make_list.py`` writes
  the lists (violent videos first, then normal ones), ``list/make_gt.py`` the frame ground
  truth (``16 * floor((n - 1) / 16)`` frames per video), ``test.py`` scores
  ``np.repeat(scores, 16)`` (the 5 crops' scores averaged, ``main.py``'s test batch of 5).
* **VadCLIP** (Wu et al., AAAI 2024; github.com/nwpu-zxr/VadCLIP): ``list/xd_CLIP_rgb.csv``
  and ``list/xd_CLIP_rgbtest.csv`` are CSVs ``path,label`` (``list/make_list_xd.py``: the
  label is the code string after ``_label_``, ``A`` for normal videos), one row per crop
  file ``<name>__<c>.npy`` of CLIP ViT-B/16 features ``[T, 512]`` (``src/xd_option.py``:
  ``visual-width`` 512); the train list has ten crops ``__0..__9`` per video, the test list
  only ``__0`` (``src/utils/dataset.py`` loads each row as one sample; ``src/xd_test.py``
  scores the test rows at full length, ``np.repeat(.., 16)``). VadCLIP releases no audio.

What the cache holds, per video (key: the video name, group: the name, as
``xd_violence`` leaves groups; label: the first code's class of seven):

* video: ``--crop mean`` (default) the mean of the crops the list names for the video (a
  video whose listed crops disagree in shape fails), ``--crop N`` the file
  ``<name>__N.npy`` (looked up under the root whether or not the list names it, so that the
  centre crop of VadCLIP's test videos is ``--crop 0``);
* audio (XDVioDet): the VGGish rows, aligned as ``dataset.py`` aligns them (equal counts
  kept, one RGB row more: the last RGB row dropped, anything else a failed clip that names
  both counts). VadCLIP: no audio. An audio dim of 0 cannot be stored (HDF5 refuses a zero
  chunk dimension), so its smallest honest form is one zero per step with ``audio_mask``
  False everywhere: a masked modality, never invented audio;
* steps: ``T`` snippets of ``16 / 24`` s, ``step_time`` at the snippet centres, ``duration
  = T * 16 / 24`` (so ``evaluate --detection`` scores ``16 T`` frames, the official length).

The backbones are recorded by what was released (``xdviodet-i3d-rgb``, ``xdviodet-vggish``,
``vadclip-clip-vit-b16``): ``checksum`` is the sha256 of the list files (the released set
they name, the same on every resumed run, whereas a hash of the bytes would change each
time a missing file arrived); the bytes of each clip's files are watched through its
``source_size`` / ``source_mtime``, so a changed file is imported again, as extraction does.
``preprocessing`` records the format, the crop choice and the alignment.

Paths in the lists are the authors' (``/media/peng/...``): every file is found by its name
under ``--root`` (any depth). A file that is not there, or that is a link leading out of the
root, is refused: all of them are named in one warning and in the official split's
``info.missing``, and the rest is imported (``--strict``: nothing is imported then). The
import is resumable and crash-safe like extraction: the cache lock, ``CacheWriter.open``
(which resumes, repairs and extends), batches written status last, ``finish``.
"""

from __future__ import annotations

import csv
import hashlib
import logging
import os
import re
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from cache_schema import (SAMPLE_RATE, STATUS_OK, BackboneInfo, CacheConfig, CacheWriter, ClipRecord, InvalidInput,
                          MissingInput, StepLayout)
from cache_schema.lock import CacheLock

from .manifest import Manifest, ManifestRow
from .names import name_problem
from .npy import NpyError, npy_header, read_npy
from .xd_violence import (ANNOTATIONS_FILE, DATASET, SPLITS, XD_CLASSES, XDListError, XDLists, XDVideo, XDViolence,
                          default_lists_dir, label_codes, parse_entry)

logger = logging.getLogger(__name__)

SNIPPET_FRAMES = 16
SNIPPET_FPS = 24.0
SNIPPET_SECONDS = SNIPPET_FRAMES / SNIPPET_FPS
"""One released feature row: 16 frames at 24 fps (the grid of ``--step-seconds 0.6667``)."""
CROP_MEAN = "mean"
AUDIO_FILE_SUFFIX = "__vggish"
FEATURE_SUFFIX = ".npy"
ABSENT_AUDIO_DIM = 1
"""The audio dim of a format without audio: the smallest that every backend stores (module doc)."""
ALIGN_DROP_LAST_RGB = "rgb_last_row_dropped_when_one_more_than_audio"
ALIGN_NONE = "video_only"


class ReleasedFeaturesError(InvalidInput):
    """A list or a feature file does not follow the released layout; the message says which."""


class MissingFeatureFiles(MissingInput):
    """``--strict`` and some listed feature files are not under the root (or lead out of it)."""


@dataclass(frozen=True)
class ReleasedFormat:
    """One released feature set: its list files, crops and features (module doc)."""

    name: str
    video_lists: Mapping[str, str]          # split -> list file name in --lists
    audio_lists: Mapping[str, str] | None   # split -> list file name, None: no audio released
    crops: int                              # crops per video as released
    video_name: str
    video_arch: str
    video_dim: int                          # the released dim (a different one is only reported)
    audio_name: str = "none"
    audio_arch: str = "none"
    audio_dim: int = 0

    @property
    def has_audio(self) -> bool:
        return self.audio_lists is not None


RELEASED_FORMATS: dict[str, ReleasedFormat] = {
    "xdviodet": ReleasedFormat(
        "xdviodet", {"train": "rgb.list", "test": "rgb_test.list"},
        {"train": "audio.list", "test": "audio_test.list"}, crops=5,
        video_name="xdviodet-i3d-rgb", video_arch="i3d", video_dim=1024,
        audio_name="xdviodet-vggish", audio_arch="vggish", audio_dim=128),
    "vadclip": ReleasedFormat(
        "vadclip", {"train": "xd_CLIP_rgb.csv", "test": "xd_CLIP_rgbtest.csv"}, None, crops=10,
        video_name="vadclip-clip-vit-b16", video_arch="clip-vit-b/16", video_dim=512),
}
FORMAT_NAMES: tuple[str, ...] = tuple(RELEASED_FORMATS)


@dataclass(frozen=True)
class ReleasedPreprocessing:
    """What a cache records as the imported features' preprocessing (identity: another
    crop choice or alignment gives other features)."""

    source: str              # "xdviodet" | "vadclip" | "xdviodet-audio"
    crop: str                # "mean" or the crop index; "" for audio
    crops_released: int
    snippet_frames: int = SNIPPET_FRAMES
    fps: float = SNIPPET_FPS
    alignment: str = ALIGN_NONE
    absent: bool = False     # True: no features of this modality were released

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class ImportConfig:
    """How to import: the released ``format``, ``crop`` ("mean" or a crop index), whether
    a missing file stops everything (``strict``), and the cache's own settings."""

    format: str
    crop: str = CROP_MEAN
    strict: bool = False
    feature_dtype: str = "float16"
    fmt: str | None = None          # cache format: zarr | hdf5 | None (from the --out suffix)
    chunk_clips: int = 32           # clips per chunk of a new cache, and per write
    retry_errors: bool = False

    def __post_init__(self) -> None:
        if self.format not in RELEASED_FORMATS:
            raise InvalidInput(f"unknown released feature format {self.format!r}; choose one of {FORMAT_NAMES}")
        released = RELEASED_FORMATS[self.format]
        if self.crop != CROP_MEAN and not (self.crop.isdigit() and int(self.crop) < released.crops):
            raise InvalidInput(f"--crop must be 'mean' or a crop index 0..{released.crops - 1} of {self.format}'s "
                               f"{released.crops} crops, got {self.crop!r}")
        if self.chunk_clips < 1:
            raise InvalidInput(f"chunk_clips must be >= 1, got {self.chunk_clips}")

    @property
    def released(self) -> ReleasedFormat:
        return RELEASED_FORMATS[self.format]


# -- the lists ------------------------------------------------------------------------------
@dataclass(frozen=True)
class ReleasedVideo:
    """One listed video: its crop files as the list names them (index, file name), and its
    audio file name (None when the format has no audio, or the audio list lacks it)."""

    name: str
    split: str
    codes: tuple[str, ...]
    crops: tuple[tuple[int, str], ...]
    audio: str | None = None

    def xd_video(self) -> XDVideo:
        return XDVideo(self.name, self.split, self.codes)


@dataclass(frozen=True)
class ReleasedLists:
    videos: tuple[ReleasedVideo, ...]
    files: dict[str, str]                 # "train"/"test" (video lists), "train_audio"/"test_audio"
    annotations: str | None

    def xd_lists(self) -> XDLists:
        return XDLists(tuple(v.xd_video() for v in self.videos),
                       {s: self.files[s] for s in SPLITS}, self.annotations)


def read_list_entries(path: str | Path) -> list[str]:
    """The file paths of a released list: a ``.csv`` by its ``path`` column (its ``label``
    column, if any, must be the name's code string), else one path per line."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8", errors="surrogateescape")
    except OSError as exc:
        raise MissingInput(f"cannot read the list {path}: {exc.strerror or exc}; pass --lists holding the "
                           "released lists") from None
    if path.suffix.lower() != ".csv":
        return [line.strip() for line in text.splitlines() if line.strip() and not line.startswith("#")]
    rows = [r for r in csv.reader(text.splitlines()) if r and r[0].strip()]
    header = [c.strip().lower() for c in rows[0]] if rows else []
    if "path" not in header:
        raise ReleasedFeaturesError(f"{path} has no 'path' column in its header; a VadCLIP list starts with "
                                    "'path,label'")
    pi = header.index("path")
    li = header.index("label") if "label" in header else None
    out = []
    for n, r in enumerate(rows[1:], 2):
        entry = r[pi].strip()
        if li is not None and li < len(r):
            name = _parsed(entry, path, n)[0]
            if r[li].strip() != name.rsplit("_label_", 1)[1]:
                raise ReleasedFeaturesError(f"{path}, line {n}: label column {r[li].strip()!r} disagrees with the "
                                            f"name {name!r}")
        out.append(entry)
    return out


def file_name(entry: str) -> str:
    """The file name of a list entry (POSIX or Windows folders stripped)."""
    return re.split(r"[\\/]", entry.strip())[-1]


def _parsed(entry: str, path: Path, line: int, audio: bool = False) -> tuple[str, int | None]:
    """(video name, crop index or None) of one entry; the audio form ``<name>__vggish.npy``."""
    base = file_name(entry)
    if not base.endswith(FEATURE_SUFFIX):
        raise ReleasedFeaturesError(f"{path}, line {line}: {base!r} is not a .npy feature file")
    if audio:
        stem = base[: -len(FEATURE_SUFFIX)]
        if not stem.endswith(AUDIO_FILE_SUFFIX):
            raise ReleasedFeaturesError(f"{path}, line {line}: {base!r} is not a VGGish file "
                                        f"<name>{AUDIO_FILE_SUFFIX}.npy")
        base = stem[: -len(AUDIO_FILE_SUFFIX)]
    problem = name_problem(base, "file name (a video's key)")
    if problem is not None:
        raise ReleasedFeaturesError(f"{path}, line {line}: {problem}")
    try:
        parsed = parse_entry(base)
    except XDListError as exc:
        raise ReleasedFeaturesError(f"{path}, line {line}: {exc}") from None
    if audio and parsed.crop:
        raise ReleasedFeaturesError(f"{path}, line {line}: {base!r} names a crop; VGGish files have none")
    if not audio and not parsed.crop:
        raise ReleasedFeaturesError(f"{path}, line {line}: {base!r} names no crop (<name>__<c>.npy)")
    return parsed.name, (int(parsed.crop) if parsed.crop else None)


def _list_file(lists_dir: Path, name: str) -> Path:
    p = lists_dir / name
    if not p.is_file():
        raise MissingInput(f"{p} is missing: the released lists go in --lists DIR ({lists_dir}); expected "
                           f"{name} there, as the authors' repository has it")
    return p


def read_released_lists(released: ReleasedFormat, lists_dir: str | Path) -> ReleasedLists:
    """Every video of the train and test lists, with its listed crop and audio files."""
    lists_dir = Path(lists_dir)
    if not lists_dir.is_dir():
        raise MissingInput(f"list folder {lists_dir} does not exist; pass --lists DIR holding "
                           f"{sorted(released.video_lists.values())}")
    files: dict[str, str] = {}
    per_video: dict[str, dict[str, Any]] = {}
    for split in SPLITS:
        path = _list_file(lists_dir, released.video_lists[split])
        files[split] = str(path.resolve())
        for n, entry in enumerate(read_list_entries(path), 1):
            name, crop = _parsed(entry, path, n)
            v = per_video.setdefault(name, {"split": split, "crops": {}})
            if v["split"] != split:
                raise ReleasedFeaturesError(f"{name!r} is listed for both train and test ({path}); check that the "
                                            "train and test lists are not the same file")
            assert crop is not None
            v["crops"].setdefault(crop, file_name(entry))
    audio: dict[str, str] = {}
    if released.audio_lists is not None:
        for split in SPLITS:
            path = _list_file(lists_dir, released.audio_lists[split])
            files[f"{split}_audio"] = str(path.resolve())
            for n, entry in enumerate(read_list_entries(path), 1):
                name, _ = _parsed(entry, path, n, audio=True)
                if name in per_video and per_video[name]["split"] != split:
                    raise ReleasedFeaturesError(f"{path}, line {n}: {name!r} is a {per_video[name]['split']} video "
                                                "of the RGB lists")
                audio.setdefault(name, file_name(entry))
        extra = sorted(set(audio) - set(per_video))
        if extra:
            logger.warning("%d videos of the audio lists have no RGB entry and are left out (e.g. %s)",
                           len(extra), extra[:3])
    if not per_video:
        raise ReleasedFeaturesError(f"the lists in {lists_dir} name no video")
    videos = []
    for name, v in per_video.items():
        try:
            codes = label_codes(name)
        except XDListError as exc:
            raise ReleasedFeaturesError(f"{files[v['split']]}: {exc}") from None
        videos.append(ReleasedVideo(name, v["split"], codes, tuple(sorted(v["crops"].items())), audio.get(name)))
    annotations = lists_dir / ANNOTATIONS_FILE
    return ReleasedLists(tuple(videos), files, str(annotations.resolve()) if annotations.is_file() else None)


def lists_checksum(paths: Sequence[str | Path]) -> str:
    """sha256 over the bytes of the list files, in the order given (module doc: why the
    lists and not the feature bytes)."""
    h = hashlib.sha256()
    for p in paths:
        data = Path(p).read_bytes()
        h.update(f"{Path(p).name}\0{len(data)}\0".encode())
        h.update(data)
    return h.hexdigest()


# -- the files under the root -----------------------------------------------------------------
def index_feature_files(root: str | Path) -> dict[str, list[Path]]:
    """File name -> the ``.npy`` files of that name under ``root`` (any depth, sorted;
    folder links are not followed, so every path found lies under the root)."""
    out: dict[str, list[Path]] = {}
    for folder, dirs, names in os.walk(root):
        dirs.sort()
        for n in sorted(names):
            if n.endswith(FEATURE_SUFFIX):
                out.setdefault(n, []).append(Path(folder) / n)
    return out


@dataclass(frozen=True)
class ResolvedVideo:
    """A listed video whose files are all under the root."""

    video: ReleasedVideo
    crops: tuple[Path, ...]
    audio: Path | None

    @property
    def key(self) -> str:
        return self.video.name

    def files(self) -> tuple[Path, ...]:
        return self.crops + ((self.audio,) if self.audio is not None else ())

    def source(self) -> tuple[int, float]:
        """(total bytes, latest mtime) of its files: a changed file changes these."""
        stats = [p.stat() for p in self.files()]
        return sum(s.st_size for s in stats), max(s.st_mtime for s in stats)


@dataclass(frozen=True)
class Resolution:
    found: tuple[ResolvedVideo, ...]
    missing: dict[str, list[str]]      # video name -> what is wrong with each of its files

    def missing_line(self, limit: int = 20) -> str:
        items = [f"{n} ({'; '.join(why)})" for n, why in self.missing.items()]
        more = f" ... and {len(items) - limit} more (all in the official split's info.missing)" \
            if len(items) > limit else ""
        return ", ".join(items[:limit]) + more


def resolve_files(lists: ReleasedLists, cfg: ImportConfig, root: str | Path) -> Resolution:
    """Find each video's files by name under ``root``: the listed crops (``--crop mean``)
    or ``<name>__N.npy`` (``--crop N``), and its audio file. A video with any file absent,
    or leading out of the root through a link, is missing (module doc)."""
    root = Path(root)
    real_root = root.resolve()
    index = index_feature_files(root)
    found, missing, dupes = [], {}, 0
    for v in lists.videos:
        problems: list[str] = []

        def locate(name: str) -> Path | None:
            nonlocal dupes
            candidates = index.get(name, [])
            if not candidates:
                problems.append(f"{name} not under {root}")
                return None
            dupes += len(candidates) > 1
            p = candidates[0]
            try:
                inside = p.resolve(strict=True).is_relative_to(real_root)
            except OSError as exc:
                problems.append(f"{p} cannot be opened ({exc.strerror or exc})")
                return None
            if not inside:
                problems.append(f"{p} leads out of the root {root} (a link to {p.resolve()})")
                return None
            if not p.is_file():
                problems.append(f"{p} is not a regular file")
                return None
            return p

        if cfg.crop == CROP_MEAN:
            crop_names = [n for _, n in v.crops]
        else:
            crop_names = [f"{v.name}__{int(cfg.crop)}{FEATURE_SUFFIX}"]
        crops = [locate(n) for n in crop_names]
        audio: Path | None = None
        if cfg.released.has_audio:
            if v.audio is None:
                problems.append(f"no entry in the audio list {lists.files[v.split + '_audio']}")
            else:
                audio = locate(v.audio)
        if problems:
            missing[v.name] = problems
        else:
            found.append(ResolvedVideo(v, tuple(p for p in crops if p is not None), audio))
    if dupes:
        logger.warning("%d listed file names exist more than once under %s; the first path in sorted order is used",
                       dupes, root)
    return Resolution(tuple(found), missing)


# -- features of one video ------------------------------------------------------------------------
class UnusableFeatures(ReleasedFeaturesError):
    """A video's files cannot make a clip (unreadable, wrong shape, unalignable); the
    import stores it as that clip's error, as extraction stores an undecodable video."""


def _load(path: Path, dim: int | None) -> np.ndarray:
    try:
        a = read_npy(path)  # its header checked against the file's size first: never a MemoryError
    except NpyError as exc:
        raise UnusableFeatures(str(exc)) from None
    except OSError as exc:
        raise UnusableFeatures(f"{path} is not a readable .npy array ({exc})") from None
    if a.ndim != 2 or a.shape[0] < 1 or a.dtype.kind not in "fiu":
        raise UnusableFeatures(f"{path} holds a {a.dtype} array of shape {a.shape}; expected [snippets, dim] numbers")
    if dim is not None and a.shape[1] != dim:
        raise UnusableFeatures(f"{path} has dim {a.shape[1]}, and this cache's features have dim {dim}")
    a = a.astype(np.float32)
    if not np.isfinite(a).all():
        raise UnusableFeatures(f"{path} holds NaN or infinite values")
    return a


def video_features(resolved: ResolvedVideo, video_dim: int | None = None,
                   audio_dim: int | None = None) -> tuple[np.ndarray, np.ndarray | None]:
    """The clip's video rows (the mean of its crops, or the one crop) and audio rows,
    aligned as XDVioDet's ``dataset.py`` aligns them (module doc). Raises ``UnusableFeatures``."""
    crops = [_load(p, video_dim) for p in resolved.crops]
    shapes = {c.shape for c in crops}
    if len(shapes) > 1:
        raise UnusableFeatures(f"its crops differ in shape ({sorted(shapes)}); they cannot be averaged")
    video = crops[0] if len(crops) == 1 else np.mean(np.stack(crops), axis=0, dtype=np.float64).astype(np.float32)
    if resolved.audio is None:
        return video, None
    audio = _load(resolved.audio, audio_dim)
    tv, ta = len(video), len(audio)
    if tv == ta + 1:  # dataset.py: np.concatenate((features1[:-1], features2), axis=1)
        video = video[:-1]
    elif tv != ta:
        raise UnusableFeatures(f"RGB has {tv} snippets and VGGish {ta}; XDVioDet's loader aligns equal "
                          "counts or one RGB snippet more, nothing else")
    return video, audio


def clip_record(resolved: ResolvedVideo, config: CacheConfig) -> ClipRecord:
    """The cache record of one video (a failed record, naming the file, when its files
    cannot make a clip)."""
    size, mtime = resolved.source()
    audio_absent = config.audio.preprocessing.get("absent", False)
    try:
        video, audio = video_features(resolved, config.video.dim, None if audio_absent else config.audio.dim)
    except UnusableFeatures as exc:
        record = ClipRecord.failed(resolved.key, str(exc))
        record.source_size, record.source_mtime = size, mtime
        return record
    t = len(video)
    duration = t * config.step_seconds
    step_time = config.layout.segments(duration).mean(axis=1)
    return ClipRecord(
        key=resolved.key, status=STATUS_OK, video=video,
        audio=np.zeros((t, config.audio.dim), np.float32) if audio is None else audio,
        video_mask=np.ones(t, bool), audio_mask=np.full(t, audio is not None),
        audio_silent=False, duration=duration, step_time=step_time, source_size=size, source_mtime=mtime,
    )


# -- the cache ---------------------------------------------------------------------------------------
def _dims(found: Sequence[ResolvedVideo]) -> tuple[int, int | None]:
    """(video dim, audio dim) from the first video whose files read (headers only)."""
    for r in found:
        try:
            v = npy_header(r.crops[0])[0]
            a = None if r.audio is None else npy_header(r.audio)[0]
        except (OSError, NpyError):
            continue
        if len(v) == 2 and (a is None or len(a) == 2):
            return int(v[1]), (None if a is None else int(a[1]))
    raise ReleasedFeaturesError("none of the listed feature files is a readable [snippets, dim] .npy array; "
                                "check --root and --format")


def cache_config(cfg: ImportConfig, lists: ReleasedLists, video_dim: int, audio_dim: int | None) -> CacheConfig:
    """The time-grid cache configuration of the imported features (module doc)."""
    rf = cfg.released
    for what, got, released in (("video", video_dim, rf.video_dim), ("audio", audio_dim, rf.audio_dim)):
        if got is not None and got != released:
            logger.warning("the %s features have dim %d; %s released %d-d ones", what, got, rf.name, released)
    video = BackboneInfo(
        name=rf.video_name, arch=rf.video_arch, checksum=lists_checksum([lists.files[s] for s in SPLITS]),
        pretrained=True, dim=video_dim,
        preprocessing=ReleasedPreprocessing(rf.name, cfg.crop, rf.crops,
                                            alignment=ALIGN_DROP_LAST_RGB if rf.has_audio else ALIGN_NONE).to_dict())
    if rf.has_audio:
        assert audio_dim is not None
        audio = BackboneInfo(
            name=rf.audio_name, arch=rf.audio_arch, pretrained=True, dim=audio_dim,
            checksum=lists_checksum([lists.files[f"{s}_audio"] for s in SPLITS]),
            preprocessing=ReleasedPreprocessing(f"{rf.name}-audio", "", 1, alignment=ALIGN_DROP_LAST_RGB).to_dict())
    else:  # nothing released: a masked placeholder (module doc), no weights behind it
        audio = BackboneInfo(name="none", arch="none", checksum="", pretrained=False, dim=ABSENT_AUDIO_DIM,
                             preprocessing=ReleasedPreprocessing(rf.name, "", 0, absent=True).to_dict())
    return CacheConfig(steps=0, step_seconds=SNIPPET_SECONDS, sample_rate=SAMPLE_RATE, video=video, audio=audio,
                       class_names=XD_CLASSES, feature_dtype=cfg.feature_dtype)


@dataclass
class ImportSummary:
    cache: Path
    listed: int
    missing: int
    done: int = 0
    skipped: int = 0
    failed: dict[str, str] = field(default_factory=dict)
    split_file: Path | None = None
    seconds: float = 0.0

    def describe(self) -> str:
        lines = [f"imported {self.done} videos into {self.cache} in {self.seconds:.1f} s "
                 f"({self.skipped} already there, {len(self.failed)} failed, {self.missing} of {self.listed} listed "
                 "videos missing)"]
        lines += [f"  failed: {k}: {why}" for k, why in list(self.failed.items())[:10]]
        if self.split_file is not None:
            lines.append(f"official split -> {self.split_file}")
        return "\n".join(lines)


def import_features(root: str | Path, out: str | Path, cfg: ImportConfig,
                    lists: str | Path | None = None) -> ImportSummary:
    """Write the released features under ``root`` (lists in ``lists``, default
    ``ROOT/lists`` or ``ROOT``) into the time-grid cache ``out``, with the official split
    beside it. Resumable: a rerun imports only what is pending (and, with
    ``retry_errors``, what failed) or whose files changed."""
    t0 = time.monotonic()
    root, out = Path(root), Path(out)
    if not root.is_dir():
        raise MissingInput(f"feature root {root} is not a folder; pass --root holding the released .npy files")
    released_lists = read_released_lists(cfg.released, lists if lists is not None else default_lists_dir(root))
    resolution = resolve_files(released_lists, cfg, root)
    listed = len(released_lists.videos)
    if resolution.missing:
        line = (f"{len(resolution.missing)} of {listed} listed videos have feature files missing under {root}: "
                f"{resolution.missing_line()}")
        if cfg.strict or not resolution.found:
            raise MissingFeatureFiles(line + ("; --strict imports nothing then" if cfg.strict else
                                              "; pass --root holding the released .npy files"))
        logger.warning("%s; they are left out (--strict refuses instead)", line)
    found = resolution.found
    config = cache_config(cfg, released_lists, *_dims(found))
    xd = XDViolence(
        released_lists.xd_lists(),
        Manifest(DATASET, root, XD_CLASSES, tuple(ManifestRow(r.key, r.crops[0], r.video.xd_video().class_index)
                                                  for r in found)),
        {r.key: r.key for r in found},
        tuple(v.xd_video() for v in released_lists.videos if v.name in resolution.missing),
    )
    summary = ImportSummary(out, listed, len(resolution.missing))
    with CacheLock(out):
        writer = CacheWriter.open(out, config, xd.manifest.entries(), fmt=cfg.fmt, chunk_clips=cfg.chunk_clips,
                                  info={"dataset": DATASET, "root": os.path.abspath(root),
                                        "imported": {"format": cfg.format, "crop": cfg.crop,
                                                     "lists": released_lists.files}})
        with writer:
            summary.split_file = xd.write_official_split(out)
            by_key = {r.key: r for r in found}
            todo = set(writer.todo(list(by_key), retry_errors=cfg.retry_errors))
            for key, (size, mtime) in writer.recorded_sources([k for k in by_key if k not in todo]).items():
                if by_key[key].source() != (size, mtime):
                    todo.add(key)
            summary.skipped = len(by_key) - len(todo)
            batch: list[ClipRecord] = []
            for r in found:
                if r.key not in todo:
                    continue
                record = clip_record(r, config)
                if record.status == STATUS_OK:
                    summary.done += 1
                else:
                    summary.failed[r.key] = record.error
                    logger.warning("%s failed: %s", r.key, record.error)
                batch.append(record)
                if len(batch) >= cfg.chunk_clips:
                    writer.write(batch)
                    batch = []
            writer.write(batch)
            summary.seconds = time.monotonic() - t0
            writer.finish({"last_run": {"done": summary.done, "failed": len(summary.failed),
                                        "missing": summary.missing, "seconds": round(summary.seconds, 2)}})
    return summary


__all__ = [
    "ABSENT_AUDIO_DIM", "CROP_MEAN", "FORMAT_NAMES", "RELEASED_FORMATS", "SNIPPET_FPS", "SNIPPET_FRAMES",
    "SNIPPET_SECONDS", "ImportConfig", "ImportSummary", "MissingFeatureFiles", "ReleasedFeaturesError",
    "ReleasedFormat", "ReleasedLists", "ReleasedPreprocessing", "ReleasedVideo", "Resolution", "ResolvedVideo",
    "UnusableFeatures",
    "cache_config", "clip_record", "file_name", "import_features", "index_feature_files", "lists_checksum",
    "read_list_entries", "read_released_lists", "resolve_files", "video_features",
]
