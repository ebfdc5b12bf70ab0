"""The feature cache's contract: which arrays exist, their shapes and dtypes, and the
attributes that identify the configuration that produced them.

Both stages import this module and nothing else from each other, so a change here is a
change of the contract: bump ``SCHEMA_VERSION`` whenever an array or a required
attribute changes meaning.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from .errors import AvarError, InvalidInput
from .keys import storable_text
from .layout import StepLayout
from .legacy import upgrade_preprocessing

SCHEMA_VERSION = 2
"""The newest schema. Version 1 is the dense layout of fixed-step caches (``--steps T``:
per-step arrays ``[N, T, ...]``), still written for them, so that their files and
identities are what they always were; version 2 adds the ragged layout of time-grid
caches (``--step-seconds S``: every clip's steps concatenated, see ``docs/cache.md``)."""
DENSE_SCHEMA_VERSION = 1
RAGGED_SCHEMA_VERSION = 2
SCHEMA_VERSIONS = (DENSE_SCHEMA_VERSION, RAGGED_SCHEMA_VERSION)


def schema_version_for(layout: StepLayout) -> int:
    """The schema version a cache of this step layout is written with."""
    return RAGGED_SCHEMA_VERSION if layout.grid else DENSE_SCHEMA_VERSION

SAMPLE_RATE = 16000
"""The contract's audio rate (Hz): stage 1 decodes every clip's audio to mono at this rate
and its audio backbone must expect it; a cache records it as its ``sample_rate``."""

# Per-clip status. A clip is "pending" until its features and its status were written;
# the status is always written last, so a clip whose write was interrupted stays pending.
STATUS_PENDING = ""
STATUS_OK = "ok"
STATUS_ERROR = "error"
STATUSES = (STATUS_PENDING, STATUS_OK, STATUS_ERROR)

UNLABELLED = -1
UNKNOWN_SIZE = -1  # ``source_size`` of a clip whose source file was not looked at
FEATURE_DTYPES = ("float16", "float32")


class CacheError(AvarError):
    """Base class of cache problems a user can act on."""


class CacheConfigMismatch(CacheError):
    """The cache on disk was made with another configuration than the one requested."""


class CacheSchemaError(CacheError):
    """The file is not a cache of this schema (or of another schema version)."""


@dataclass(frozen=True)
class BackboneInfo:
    """What a cache records about a frozen backbone. Which of these fields identify the
    features (two caches differing in them must never be mixed) and which only describe
    them is said once, in ``cache_schema.identity``."""

    name: str
    arch: str
    checksum: str
    pretrained: bool
    dim: int
    preprocessing: dict[str, Any] = field(default_factory=dict)
    weights: dict[str, Any] = field(default_factory=dict)
    """Where the weights came from (``source``, ``file``, ``sha256`` of that file,
    ``licence``, ``pretrained``): provenance, not identity (the ``checksum`` of the loaded
    tensors is). Empty in caches written before it was recorded, and absent from their
    ``to_dict()`` so that their records stay what they were."""

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        if not d["weights"]:
            del d["weights"]
        return d

    @staticmethod
    def from_dict(d: dict[str, Any]) -> "BackboneInfo":
        return BackboneInfo(
            name=str(d["name"]),
            arch=str(d["arch"]),
            checksum=str(d["checksum"]),
            pretrained=bool(d["pretrained"]),
            dim=int(d["dim"]),
            # preprocessing of caches written before it had named fields, in today's form
            preprocessing=upgrade_preprocessing(d.get("preprocessing", {})),
            weights=dict(d.get("weights") or {}),
        )


IDENTITY_KEYS = ("schema_version", "steps", "sample_rate", "feature_dtype", "video_backbone", "audio_backbone",
                 "class_names")
"""The cache attributes that form the identity of every cache (``CacheConfig.identity()``)."""
GRID_IDENTITY_KEYS = ("step_seconds", "frames_per_step")
"""Identity attributes of time-grid caches only (absent from fixed-step ones, whose
identity stays what it was before grids existed)."""


@dataclass(frozen=True)
class CacheConfig:
    """Everything that must match for features to be comparable across clips."""

    steps: int                  # fixed layout: steps per clip; 0 on a time grid
    sample_rate: int
    video: BackboneInfo
    audio: BackboneInfo
    class_names: tuple[str, ...]
    feature_dtype: str = "float16"
    step_seconds: float = 0.0   # time grid: seconds per step (then ``steps`` is 0)
    frames_per_step: int = 1    # time grid: video frames averaged per step

    def __post_init__(self) -> None:
        self.layout  # raises on an impossible combination
        if self.feature_dtype not in FEATURE_DTYPES:
            raise InvalidInput(f"feature_dtype must be one of {FEATURE_DTYPES}")

    @property
    def layout(self) -> StepLayout:
        return StepLayout(self.steps, self.step_seconds, self.frames_per_step)

    @property
    def ragged(self) -> bool:
        """Time-grid caches store every clip's own number of steps (schema v2)."""
        return self.layout.grid

    @property
    def schema_version(self) -> int:
        return schema_version_for(self.layout)

    def identity(self) -> dict[str, Any]:
        """The JSON-comparable form used to refuse mixing configurations (compared by
        ``cache_schema.identity.feature_identity_differences``); its keys are
        ``IDENTITY_KEYS``, plus ``GRID_IDENTITY_KEYS`` on a time grid."""
        layout = self.layout.to_attrs()
        return {
            "schema_version": self.schema_version,
            "steps": self.steps,
            "sample_rate": self.sample_rate,
            "feature_dtype": self.feature_dtype,
            "video_backbone": self.video.to_dict(),
            "audio_backbone": self.audio.to_dict(),
            "class_names": list(self.class_names),
            **{k: layout[k] for k in GRID_IDENTITY_KEYS if k in layout},
        }

    @staticmethod
    def from_attrs(attrs: dict[str, Any]) -> "CacheConfig":
        try:
            layout = StepLayout.from_attrs(attrs)
            return CacheConfig(
                steps=int(attrs["steps"]),
                sample_rate=int(attrs["sample_rate"]),
                video=BackboneInfo.from_dict(attrs["video_backbone"]),
                audio=BackboneInfo.from_dict(attrs["audio_backbone"]),
                class_names=tuple(attrs["class_names"]),
                feature_dtype=str(attrs["feature_dtype"]),
                step_seconds=layout.step_seconds,
                frames_per_step=layout.frames_per_step,
            )
        except KeyError as exc:
            raise CacheSchemaError(f"cache attributes lack {exc}; is this an AVAR feature cache?") from None
        except (TypeError, ValueError, AttributeError, InvalidInput) as exc:  # a field of the wrong type
            raise CacheSchemaError(f"cache attributes are malformed ({exc}); is this an AVAR feature cache?") from None

    @property
    def pretrained(self) -> bool:
        """True only when both backbones carry trained weights; reports must say otherwise."""
        return self.video.pretrained and self.audio.pretrained


@dataclass(frozen=True)
class ArraySpec:
    """One array of the cache. ``per_step`` arrays have a second axis of ``steps`` in a
    dense (v1) cache; in a ragged (v2) one they are stored in step blocks (``[S, ...]``,
    see ``cache_schema.ragged``). ``feature`` arrays have a last axis of the backbone's dim
    and the cache's feature dtype."""

    name: str
    dtype: str  # numpy dtype name, or "str" for variable-length UTF-8
    per_step: bool = False
    feature: str | None = None  # "video" | "audio"
    fill: Any = 0
    # Added after caches of this schema version existed: a cache without it still opens,
    # validates and resumes (readers see ``fill``); the writer adds it, filled, on open.
    optional: bool = False

    def shape(self, n: int, config: CacheConfig) -> tuple[int, ...]:
        shape: tuple[int, ...] = (n,)
        if self.per_step and not config.ragged:  # ragged (v2): ``n`` counts steps, not clips
            shape += (config.steps,)
        if self.feature == "video":
            shape += (config.video.dim,)
        elif self.feature == "audio":
            shape += (config.audio.dim,)
        return shape

    def numpy_dtype(self, config: CacheConfig) -> np.dtype:
        if self.feature:
            return np.dtype(config.feature_dtype)
        if self.dtype == "str":
            return np.dtype(object)
        return np.dtype(self.dtype)


# Order matters: the writer writes arrays in this order, and ``status`` last, so that a
# clip only becomes visible once everything else about it is on disk.
ARRAYS: tuple[ArraySpec, ...] = (
    ArraySpec("key", "str", fill=""),
    ArraySpec("group", "str", fill=""),
    ArraySpec("label", "int16", fill=UNLABELLED),
    ArraySpec("video", "float", per_step=True, feature="video"),
    ArraySpec("audio", "float", per_step=True, feature="audio"),
    ArraySpec("video_mask", "bool", per_step=True, fill=False),
    ArraySpec("audio_mask", "bool", per_step=True, fill=False),
    ArraySpec("audio_silent", "bool", fill=False),
    ArraySpec("duration", "float64", fill=0.0),
    ArraySpec("step_time", "float64", per_step=True, fill=0.0),
    # The source file as it was when the clip was decoded (size -1: unknown), so that a
    # later run re-extracts a clip whose file changed (say, one still being copied).
    ArraySpec("source_size", "int64", fill=UNKNOWN_SIZE, optional=True),
    ArraySpec("source_mtime", "float64", fill=0.0, optional=True),
    ArraySpec("error", "str", fill=""),
    ArraySpec("status", "str", fill=STATUS_PENDING),
)
STEP_FIELDS = tuple(a.name for a in ARRAYS if a.per_step)
"""The per-step arrays: ``[N, T, ...]`` in a dense (v1) cache; in a ragged (v2) one every
clip's steps concatenated in its step block (``steps/bNNNNNN/<field>``)."""
STEP_OFFSET = ArraySpec("step_offset", "int64", fill=0)
"""Ragged (v2) caches: where a clip's steps start inside its step block."""
STEP_COUNT = ArraySpec("step_count", "int32", fill=0)
"""Ragged (v2) caches: how many steps the clip has (0: failed or pending, no steps)."""
RAGGED_ARRAYS: tuple[ArraySpec, ...] = tuple(
    a for spec in ARRAYS if not spec.per_step
    for a in ((STEP_OFFSET, STEP_COUNT, spec) if spec.name == "error" else (spec,))
)
"""The per-clip arrays of a ragged (v2) cache, in write order (``status`` last)."""
ARRAY_BY_NAME = {a.name: a for a in (*ARRAYS, STEP_OFFSET, STEP_COUNT)}
# Written once when a clip's row is created, never by a feature write.
IDENTITY_ARRAYS = ("key", "group", "label")
# Written for every finished clip, status last.
RECORD_ARRAYS = tuple(a.name for a in ARRAYS if a.name not in IDENTITY_ARRAYS)


def clip_arrays(ragged: bool) -> tuple[ArraySpec, ...]:
    """The arrays with one row per clip: every array of a dense (v1) cache, the per-clip
    ones (with ``step_offset`` and ``step_count``) of a ragged (v2) one."""
    return RAGGED_ARRAYS if ragged else ARRAYS


def record_arrays(ragged: bool) -> tuple[str, ...]:
    """The per-clip arrays a finished clip writes, in order, ``status`` last."""
    return tuple(a.name for a in clip_arrays(ragged) if a.name not in IDENTITY_ARRAYS)


def is_ragged_attrs(attrs: dict[str, Any]) -> bool:
    """Whether a cache's attributes say it is ragged (schema v2), before they are parsed."""
    return attrs.get("schema_version") == RAGGED_SCHEMA_VERSION


@dataclass(frozen=True)
class ClipEntry:
    """A row of a dataset manifest as the cache needs it (Lhotse-style: later steps read
    this, never the folder layout)."""

    key: str
    label: int = UNLABELLED
    group: str = ""


@dataclass
class ClipRecord:
    """The result of extracting one clip, ready to be written."""

    key: str
    status: str
    error: str = ""
    video: np.ndarray | None = None  # [T, Dv]
    audio: np.ndarray | None = None  # [T, Da]
    video_mask: np.ndarray | None = None  # [T] bool
    audio_mask: np.ndarray | None = None  # [T] bool
    audio_silent: bool = False
    duration: float = 0.0
    step_time: np.ndarray | None = None  # [T]
    source_size: int = UNKNOWN_SIZE  # bytes of the source file when it was decoded
    source_mtime: float = 0.0  # its modification time (seconds since the epoch)

    @staticmethod
    def failed(key: str, reason: str, duration: float = 0.0) -> "ClipRecord":
        # a message may quote a file name that is not UTF-8: it is stored, printed and logged as text
        return ClipRecord(key=key, status=STATUS_ERROR, error=storable_text(reason) or "unknown error",
                          duration=duration)

    def step_count(self, config: CacheConfig) -> int:
        """The clip's number of steps: the cache's ``steps``, or on a time grid the length
        of its ``step_time`` (0 for a failed clip, which holds no step)."""
        if not config.ragged:
            return config.steps
        if self.status != STATUS_OK or self.step_time is None:
            return 0
        return int(len(self.step_time))

    def as_row(self, config: CacheConfig) -> dict[str, Any]:
        """Arrays for this clip, with zeros wherever a modality is absent so that a reader
        never sees stale or invented features. Per-step arrays have ``step_count`` rows."""
        t = self.step_count(config)
        dt = np.dtype(config.feature_dtype)

        def feat(x: np.ndarray | None, dim: int, mask: np.ndarray) -> np.ndarray:
            out = np.zeros((t, dim), dtype=dt)
            if x is not None:
                out[:] = np.asarray(x, dtype=np.float32)
            out[~mask] = 0
            return out

        vm = np.zeros(t, bool) if self.video_mask is None else np.asarray(self.video_mask, bool)
        am = np.zeros(t, bool) if self.audio_mask is None else np.asarray(self.audio_mask, bool)
        if self.status != STATUS_OK:
            vm = np.zeros(t, bool)
            am = np.zeros(t, bool)
        return {
            "video": feat(self.video if self.status == STATUS_OK else None, config.video.dim, vm),
            "audio": feat(self.audio if self.status == STATUS_OK else None, config.audio.dim, am),
            "video_mask": vm,
            "audio_mask": am,
            "audio_silent": bool(self.audio_silent),
            "duration": float(self.duration),
            "step_time": np.zeros(t) if self.step_time is None else np.asarray(self.step_time, np.float64),
            "source_size": np.int64(self.source_size),
            "source_mtime": np.float64(self.source_mtime),
            "error": storable_text(self.error),
            "status": self.status,
        }
