"""The contract between stage 1 (extract) and stage 2 (temporal): schema, writer,
reader and validation of the per-clip feature cache."""

from .errors import AvarError, InvalidInput, MissingInput
from .info import cache_info, format_cache_info
from .sidecars import official_split_path, split_file_for
from .reader import CacheReader, open_cache
from .schema import (
    SCHEMA_VERSION,
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
from .storage import FORMATS, detect_format
from .validate import ValidationReport, validate
from .writer import CacheWriter

__all__ = [
    "AvarError", "InvalidInput", "MissingInput", "cache_info", "format_cache_info", "official_split_path", "split_file_for",
    "SCHEMA_VERSION", "STATUS_ERROR", "STATUS_OK", "STATUS_PENDING", "UNLABELLED", "BackboneInfo",
    "CacheConfig", "CacheConfigMismatch", "CacheError", "CacheSchemaError", "ClipEntry", "ClipRecord",
    "FORMATS", "detect_format", "ValidationReport", "validate", "CacheWriter", "CacheReader", "open_cache",
]
