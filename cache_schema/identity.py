"""Sameness of features: the one place that says which recorded fields define a cache's
features (identity) and which only describe them (informational), and the comparison
that the cache writer, stage 2's evaluation and the predictor all use.

Identity of a backbone: its architecture, its weights (``checksum``, sha256 of the
state_dict), its feature dim and its preprocessing (resize, crop, mean, std, windows,
normalisation...). Two backbones equal in these give the same tensors.

Informational, compared only to warn:

* ``name``: how the weights were found (a hub id, a local checkpoint, a preset). The same
  weights loaded from the hub or from a local copy give the same tensors, and the checksum
  already tells weights apart, so a renamed copy of the weights is the same backbone.
* ``pretrained``: whether the loader took the weights for trained ones (a preset is not,
  any file is).
* ``weights``: where the weights came from (package or file, its sha256, the licence);
  a cache written before it was recorded has none, which is no difference. It says what the weights mean, not what they compute: the checksum fixes
  the tensors, and the cache keeps the flag it was created with.
* ``preprocessing.library`` (the timm / transformers version) and
  ``preprocessing.pretrained_tag`` (timm's name of a weight set): provenance.

A whole identity (``CacheConfig.identity()``, a cache's attributes, a run's
``cache_identity``) is compared key by key: ``steps``, ``sample_rate``, ``feature_dtype``,
``class_names``, a task view's ``task``, ``schema_version``, and the two backbones as above.

Values are compared in canonical JSON form (tuples equal lists, 30 equals 30.0, as a
cache stores them), and preprocessing recorded in the old sentence layout is upgraded
first (``cache_schema.legacy``), so an old cache equals today's backbones when its
features would be the same.
"""

from __future__ import annotations

import json
from typing import Any, Mapping, Union

from .legacy import upgrade_preprocessing
from .schema import GRID_IDENTITY_KEYS, IDENTITY_KEYS, BackboneInfo

BackboneLike = Union[BackboneInfo, Mapping[str, Any]]
"""A BackboneInfo, or a dict with its fields (a cache's ``video_backbone`` attribute, a
run's ``cache_identity["audio_backbone"]``, a backbone's ``describe()``); other keys, such
as ``describe()``'s device and precision, are ignored."""

Sides = tuple[str, str]
"""How a difference names its two sides: ("run has", "loaded") gives
"audio preprocessing window_s: run has 10.0, loaded 30.0"."""

# field of BackboneInfo -> (how a message names it, whether it defines the features)
BACKBONE_FIELDS: dict[str, tuple[str, bool]] = {
    "arch": ("architecture", True),
    "checksum": ("weights", True),
    "dim": ("feature dim", True),
    "preprocessing": ("preprocessing", True),
    "name": ("name", False),
    "pretrained": ("pretrained", False),
    "weights": ("weights provenance", False),
}
INFORMATIONAL_PREPROCESSING = frozenset({"library", "pretrained_tag"})
"""Preprocessing fields (of either family) that describe where values came from."""

BACKBONE_KEYS = {"video_backbone": "video", "audio_backbone": "audio"}
"""The keys of a whole identity that hold a backbone, and the kind they are named by."""

RUN_SIDES: Sides = ("run has", "loaded")
WRITER_SIDES: Sides = ("requested", "cache has")


def canonical(value: Any) -> Any:
    """JSON round trip: tuples become lists, ints and floats compare as JSON stores them."""
    return json.loads(json.dumps(value, sort_keys=True, default=str))


def canonical_backbone(info: BackboneLike) -> dict[str, Any]:
    """The BackboneInfo fields of ``info``, canonical, preprocessing in today's form."""
    d = info.to_dict() if isinstance(info, BackboneInfo) else BackboneInfo.from_dict(info).to_dict()
    d["preprocessing"] = upgrade_preprocessing(d["preprocessing"])
    return canonical(d)


def cache_identity(attrs: Mapping[str, Any]) -> dict[str, Any]:
    """The identity part of a cache's attributes, backbones in today's form (what a run
    records as its ``cache_identity``)."""
    out = {k: attrs.get(k) for k in IDENTITY_KEYS}
    out.update({k: attrs[k] for k in GRID_IDENTITY_KEYS if k in attrs})  # time-grid caches only
    for key in BACKBONE_KEYS:
        if isinstance(out[key], Mapping):
            out[key] = BackboneInfo.from_dict(out[key]).to_dict()
    return out


def backbone_differences(kind: str, expected: BackboneLike, found: BackboneLike,
                         sides: Sides = RUN_SIDES) -> list[str]:
    """The differences between two backbones that make their features differ, one
    readable line each ("video weights: run has sha256 0000…, loaded a591…"); empty when
    the features are the same. ``kind`` ("video", "audio") starts each line."""
    return _backbone_lines(kind, expected, found, sides, identity=True)


def informational_differences(kind: str, expected: BackboneLike, found: BackboneLike,
                              sides: Sides = RUN_SIDES) -> list[str]:
    """The differences between two backbones that do not change their features (name,
    pretrained flag, library version, pretrained tag): worth a warning, never a refusal."""
    return _backbone_lines(kind, expected, found, sides, identity=False)


def feature_identity_differences(expected: Mapping[str, Any], found: Mapping[str, Any],
                                 sides: Sides = WRITER_SIDES) -> list[str]:
    """The differences between two whole identities that make their features differ
    (a missing key differs from a present one); empty when features of both may be mixed."""
    out: list[str] = []
    for key in sorted(set(expected) | set(found)):
        a, b = expected.get(key), found.get(key)
        if key in BACKBONE_KEYS and isinstance(a, Mapping) and isinstance(b, Mapping):
            out += backbone_differences(BACKBONE_KEYS[key], a, b, sides)
        elif canonical(a) != canonical(b):
            out.append(_line(key, a, b, sides))
    return out


def identity_informational_differences(expected: Mapping[str, Any], found: Mapping[str, Any],
                                       sides: Sides = WRITER_SIDES) -> list[str]:
    """:func:`informational_differences` of both backbones of two whole identities."""
    out: list[str] = []
    for key, kind in BACKBONE_KEYS.items():
        a, b = expected.get(key), found.get(key)
        if isinstance(a, Mapping) and isinstance(b, Mapping):
            out += informational_differences(kind, a, b, sides)
    return out


def _backbone_lines(kind: str, expected: BackboneLike, found: BackboneLike, sides: Sides,
                    identity: bool) -> list[str]:
    a, b = canonical_backbone(expected), canonical_backbone(found)
    out: list[str] = []
    for field, (label, defines) in BACKBONE_FIELDS.items():
        if field == "preprocessing":
            out += _preprocessing_lines(f"{kind} {label}", a[field], b[field], sides, identity)
        elif field == "weights":
            # recorded on one side only (an older cache or run) is no difference; where the
            # file lies differs from machine to machine and says nothing about the weights
            x, y = ({k: v for k, v in side.get(field, {}).items() if k != "file"} for side in (a, b))
            if not identity and x and y and x != y:
                out.append(_line(f"{kind} {label}", x, y, sides))
        elif defines == identity and a[field] != b[field]:
            out.append(_line(f"{kind} {label}", a[field], b[field], sides, checksum=field == "checksum"))
    return out


def _preprocessing_lines(where: str, a: dict[str, Any], b: dict[str, Any], sides: Sides,
                         identity: bool) -> list[str]:
    out: list[str] = []
    for key in sorted(set(a) | set(b)):
        if (key in INFORMATIONAL_PREPROCESSING) == identity:
            continue
        x, y = a.get(key), b.get(key)
        if isinstance(x, dict) and isinstance(y, dict):  # e.g. resize.interpolation
            out += [_line(f"{where} {key}.{k}", x.get(k), y.get(k), sides)
                    for k in sorted(set(x) | set(y)) if x.get(k) != y.get(k)]
        elif x != y:
            out.append(_line(f"{where} {key}", x, y, sides))
    return out


def _line(where: str, a: Any, b: Any, sides: Sides, checksum: bool = False) -> str:
    return f"{where}: {sides[0]} {_show(a, checksum)}, {sides[1]} {_show(b, checksum)}"


def _show(value: Any, checksum: bool) -> str:
    if value is None:
        return "nothing"
    if checksum and isinstance(value, str):
        return f"sha256 {value[:12]}…"
    return repr(value)


__all__ = [
    "BACKBONE_FIELDS", "BACKBONE_KEYS", "INFORMATIONAL_PREPROCESSING", "RUN_SIDES", "WRITER_SIDES",
    "BackboneLike", "Sides", "backbone_differences", "cache_identity", "canonical", "canonical_backbone",
    "feature_identity_differences", "identity_informational_differences", "informational_differences",
]
