"""Predictions as text: a table for people, JSON lines for tools."""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path

import numpy as np

from cache_schema import storable_text

from .results import VideoPrediction


def format_table(preds: Sequence[VideoPrediction]) -> str:
    """One line per video (class, confidence, anomaly peak), then its anomalous segments
    and its failed windows."""
    if not preds:
        return "no videos"
    names = display_names([p.video for p in preds])
    name_w = min(max(len(n) for n in names), 48)
    head = f"{'video':<{name_w}}  {'class':<14} {'p':>5}  {'anomaly':>7}  {'peak at':>9}  {'duration':>8}"
    lines = [head, "-" * len(head)]
    for p, name in zip(preds, names):
        name = name[-name_w:]
        if p.error:
            lines.append(f"{name:<{name_w}}  ERROR: {p.error}")
            continue
        conf = float(np.max(p.probs)) if p.probs is not None else float("nan")
        peak = p.peak
        score = "n/a" if peak is None else f"{peak[1]:.2f}"
        at = "" if peak is None else f"{peak[0]:.1f} s"
        lines.append(f"{name:<{name_w}}  {p.label:<14} {conf:>5.2f}  {score:>7}  {at:>9}  {p.duration:>6.1f} s")
        for s in p.segments:
            lines.append(f"{'':<{name_w}}    {s.start:7.1f}-{s.end:.1f} s  {s.label}"
                         + (f" (peak {s.peak:.2f})" if s.peak is not None else ""))
        if p.plot_error:
            lines.append(f"{'':<{name_w}}    plot failed: {p.plot_error}")
        failed = [w for w in p.windows if w.error]
        if failed:
            lines.append(f"{'':<{name_w}}    {len(failed)} window(s) failed, first at {failed[0].start:.1f} s: "
                         f"{failed[0].error}")
    return "\n".join(lines)


def display_names(videos: Sequence[str]) -> list[str]:
    """How the table names each video: its file name, or its whole path where two videos
    of one batch share a file name; bytes that are not UTF-8 shown as ``\\xHH``."""
    base = [Path(v).name for v in videos]
    return [storable_text(v if base.count(b) > 1 else b) for v, b in zip(videos, base)]


def to_json_lines(preds: Iterable[VideoPrediction]) -> Iterator[str]:
    """One JSON object per video (JSON Lines)."""
    for p in preds:
        yield json.dumps(p.to_json())


__all__ = ["display_names", "format_table", "to_json_lines"]
