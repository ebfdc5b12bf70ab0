"""``--runtime auto`` on a CPU: a short measured probe of every installed runtime on the
backbone's own frozen forward, its answer kept per machine, backbone and input in the
user's cache folder (``<user cache>/runtimes/probe-*.json``), so later runs load the
fastest without measuring again.

Like is compared with like: torch runs at the precision the backbone resolved (bf16 with
``--precision auto`` on a CPU with AMX) and OpenVINO at the same one; ONNX Runtime (fp32
only on the CPU) takes part only where the precision was left to ``auto``, and then is
chosen only if its fp32 beats torch's bf16. Torch is always a candidate, so ``auto`` is
never slower than ``torch`` by more than the probe's noise.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from collections.abc import Callable
from pathlib import Path

import torch

from cache_schema import cpu_model, write_json

from ..frozen import read_cpu_flags, user_cache_dir
from .choice import TORCH, runtime_version
from .export_cache import ExportSpec

logger = logging.getLogger(__name__)

Forward = Callable[[torch.Tensor], torch.Tensor]

PROBE_REPEATS = 3
MARGIN = 0.9
"""Another runtime replaces torch only where the probe timed it at most this fraction of torch."""


def probe_key(spec: ExportSpec, precision: str, runtimes: list[str]) -> dict:
    """What a probe's answer depends on: the machine (CPU, its flags, torch's threads), the
    architecture and input (not the weights: the cost is the architecture's), the precision
    and every candidate's version."""
    flags = hashlib.sha256(" ".join(sorted(read_cpu_flags())).encode()).hexdigest()[:16]
    return {"cpu": cpu_model(), "cpu_flags": flags, "threads": torch.get_num_threads(), "arch": spec.arch,
            "input": list(spec.probe_shape), "precision": precision,
            "runtimes": {r: runtime_version(r) for r in sorted(runtimes)}}


def probe_path(key: dict, root: Path | None = None) -> Path:
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:20]
    return (root or user_cache_dir()) / "runtimes" / f"probe-{digest}.json"


def cached_choice(key: dict, root: Path | None = None) -> str | None:
    """The runtime an earlier probe with this key chose, or None."""
    try:
        recorded = json.loads(probe_path(key, root).read_text())
    except (OSError, ValueError):
        return None
    if isinstance(recorded, dict) and recorded.get("key") == key and recorded.get("choice") in key["runtimes"]:
        return str(recorded["choice"])
    return None


def seconds_per_call(forwards: dict[str, Forward], x: torch.Tensor, rounds: int = PROBE_REPEATS) -> dict[str, float]:
    """Each forward's best of ``rounds`` timed calls after one warm-up call, in interleaved
    rounds, so that other work on a shared machine slows every candidate alike."""
    best = {name: float("inf") for name in forwards}
    with torch.inference_mode():
        for forward in forwards.values():
            forward(x)
        for _ in range(rounds):
            for name, forward in forwards.items():
                started = time.perf_counter()
                forward(x)
                best[name] = min(best[name], time.perf_counter() - started)
    return best


def fastest(timings: dict[str, float]) -> str:
    """The fastest candidate; torch unless another beats it by :data:`MARGIN` (a probe's
    noise must not make ``auto`` slower than torch)."""
    choice = min(timings, key=timings.__getitem__)
    if TORCH in timings and timings[choice] > MARGIN * timings[TORCH]:
        return TORCH
    return choice


def measure_and_record(key: dict, forwards: dict[str, Forward], root: Path | None = None) -> str:
    """Time every candidate on the probe input, keep the answer, return the fastest."""
    x = torch.randn(key["input"], generator=torch.Generator().manual_seed(0))
    timings = seconds_per_call(forwards, x)
    choice = fastest(timings)
    logger.info("--runtime auto for %s %s: %s (%s)", key["arch"], key["precision"], choice,
                ", ".join(f"{n} {1000 * s:.1f} ms" for n, s in timings.items()))
    path = probe_path(key, root)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        write_json(path, {"key": key, "seconds": timings, "choice": choice}, indent=2)
    except OSError as err:  # a read-only cache only costs the next run another probe
        logger.warning("could not keep the runtime probe in %s (%s)", path, err)
    return choice


__all__ = ["MARGIN", "PROBE_REPEATS", "cached_choice", "fastest", "measure_and_record", "probe_key", "probe_path",
           "seconds_per_call"]
