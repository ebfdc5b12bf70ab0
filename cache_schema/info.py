"""What ``cache info`` shows: a cache's configuration and status counts, for people or tools."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from .reader import open_cache


def cache_info(path: str | Path, clips: bool = True) -> dict[str, Any]:
    """``{path, format, attrs, counts, layout}`` and, with ``clips``, one entry per clip.
    A ragged (v2) cache adds ``steps``: ``stored`` (over every step block), ``referenced``
    (by its ``ok`` clips) and ``unreferenced`` (left by clips extracted again, or by a
    batch killed since the cache was last opened for writing)."""
    with open_cache(path) as r:
        info: dict[str, Any] = {"path": str(path), "format": r.format, "attrs": r.attrs, "counts": r.counts(),
                                "layout": r.layout.describe()}
        if r.ragged:
            stored, referenced = r.stored_steps(), int(r.step_counts().sum())
            info["steps"] = {"stored": stored, "referenced": referenced, "unreferenced": max(0, stored - referenced)}
        if clips:
            info["clips"] = r.clips()
    return info


def format_cache_info(info: dict[str, Any]) -> str:
    """The human-readable summary of ``cache_info`` (with its clips' errors, if listed)."""
    a = info["attrs"]
    lines = [f"cache      {info['path']} ({info['format']}, schema v{a.get('schema_version')})",
             f"steps      {info.get('layout', a.get('steps'))} at {a.get('sample_rate')} Hz audio, "
             f"features {a.get('feature_dtype')}"]
    if "steps" in info:
        s = info["steps"]
        lines.append(f"           {s['referenced']} steps in ok clips, {s['stored']} stored, {s['unreferenced']} "
                     "unreferenced (steps of clips extracted again)")
    for mod in ("video", "audio"):
        b = a.get(f"{mod}_backbone", {})
        used = (a.get("precision") or {}).get(mod) if isinstance(a.get("precision"), dict) else None
        runtime = (a.get("runtime") or {}).get(mod) if isinstance(a.get("runtime"), dict) else None
        used = f"{used} on {runtime}" if used and runtime else used
        lines.append(f"{mod:<10} {b.get('name')} ({b.get('arch')}, {b.get('dim')}-d, "
                     f"{'pretrained' if b.get('pretrained') else 'UNTRAINED weights'}, "
                     f"sha256 {str(b.get('checksum'))[:12]}" + (f", last run in {used}" if used else "") + ")")
        w = b.get("weights") or {}
        if w:
            lines.append(f"{'':<10} weights: {w.get('source')}" + (f", file sha256 {str(w['sha256'])[:12]}"
                                                                      if w.get("sha256") else "")
                         + f", licence {w.get('licence', 'unknown')}")
    if a.get("decode"):
        lines.append(f"decode     {a['decode']} (the last run's video decoder; a description, not identity)")
    lines.append(f"classes    {', '.join(a.get('class_names', [])) or '(unlabelled)'}")
    lines.append(f"created    {a.get('created')}  complete: {a.get('complete')}")
    c = info["counts"]
    lines.append(f"clips      {c['total']}: {c['ok']} ok, {c['error']} error, {c['pending']} pending")
    lines += [f"  error    {clip['key']}: {clip['error']}" for clip in info.get("clips", [])
              if clip["status"] == "error"]
    return "\n".join(lines)


__all__ = ["cache_info", "format_cache_info"]
