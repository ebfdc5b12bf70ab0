"""Which machine a figure is from: every benchmark (extract, temporal, apply, live) says
which CPU it ran on, since this project's machines differ (an AMX Xeon runs the backbones
5-9 times faster than an AVX2-only EPYC)."""

from __future__ import annotations

import platform
from pathlib import Path

__all__ = ["cpu_model"]


def cpu_model() -> str:
    """The CPU's model name (/proc/cpuinfo), else what ``platform`` knows (often only the
    architecture, e.g. ``x86_64``, which is why /proc/cpuinfo comes first)."""
    try:
        for line in Path("/proc/cpuinfo").read_text(errors="replace").splitlines():
            name, sep, value = line.partition(":")
            if sep and name.strip().lower() in ("model name", "hardware", "cpu model"):
                return value.strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()
