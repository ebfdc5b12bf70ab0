"""The contract between stage 1 (extract) and stage 2 (temporal): schema, writer,
reader and validation of the per-clip feature cache, and the one definition of when two
caches (or a run and the backbones loaded for new media) hold the same features
(``feature_identity_differences``, ``backbone_differences``); and the atomic writes
(``replace_atomically``, ``write_json``, ``write_text``) every stage uses for its files."""

from .atomic import check_output_file, finite_json, json_text, replace_atomically, temporary_path, write_bytes, write_json, write_text
from .errors import AvarError, InvalidInput, MissingInput
from .identity import (
    backbone_differences,
    cache_identity,
    feature_identity_differences,
    identity_informational_differences,
    informational_differences,
)
from .info import cache_info, format_cache_info
from .keys import key_from_relpath, media_path, relpath_from_key, storable_text
from .preprocessing import AudioPreprocessing, Crop, Normalization, Resize, VideoPreprocessing
from .machine import cpu_model
from .processes import die_with_parent, spawned_worker_init
from .lock import FileLock
from .layout import StepLayout
from .reader import CacheReader, open_cache
from .schema import (
    GRID_IDENTITY_KEYS,
    IDENTITY_KEYS,
    SAMPLE_RATE,
    SCHEMA_VERSION,
    SCHEMA_VERSIONS,
    STEP_FIELDS,
    STATUS_ERROR,
    STATUS_OK,
    STATUS_PENDING,
    UNLABELLED,
    BackboneInfo,
    CacheConfig,
    CacheConfigMismatch,
    CacheError,
    CacheSchemaError,
    ClipEntry,
    ClipRecord,
)
from .sidecars import input_file, official_split_path, optional_file, split_file_for
from .storage import FORMATS, detect_format
from .validate import ValidationReport, validate
from .writer import CacheWriter

__all__ = [
    "AvarError", "InvalidInput", "MissingInput", "cache_info", "format_cache_info", "official_split_path",
    "split_file_for", "check_output_file", "finite_json", "json_text", "replace_atomically", "temporary_path", "write_bytes", "write_json",
    "write_text", "optional_file", "input_file", "die_with_parent", "spawned_worker_init", "key_from_relpath", "media_path",
    "relpath_from_key", "storable_text", "FileLock", "cpu_model",
    "backbone_differences", "cache_identity", "feature_identity_differences", "identity_informational_differences",
    "informational_differences",
    "AudioPreprocessing", "Crop", "Normalization", "Resize", "VideoPreprocessing",
    "GRID_IDENTITY_KEYS", "IDENTITY_KEYS", "SAMPLE_RATE", "StepLayout",
    "SCHEMA_VERSION", "SCHEMA_VERSIONS", "STEP_FIELDS", "STATUS_ERROR", "STATUS_OK", "STATUS_PENDING", "UNLABELLED", "BackboneInfo",
    "CacheConfig", "CacheConfigMismatch", "CacheError", "CacheSchemaError", "ClipEntry", "ClipRecord",
    "FORMATS", "detect_format", "ValidationReport", "validate", "CacheWriter", "CacheReader", "open_cache",
]
