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
from .choice import runtime_version
from .export_cache import ExportSpec

logger = logging.getLogger(__name__)

Forward = Callable[[torch.Tensor], torch.Tensor]

PROBE_REPEATS = 3


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


def seconds_per_call(forward: Forward, x: torch.Tensor, repeats: int = PROBE_REPEATS) -> float:
    """Best of ``repeats`` timed calls after one warm-up call."""
    with torch.inference_mode():
        forward(x)
        best = float("inf")
        for _ in range(repeats):
            started = time.perf_counter()
            forward(x)
            best = min(best, time.perf_counter() - started)
    return best


def measure_and_record(key: dict, forwards: dict[str, Forward], root: Path | None = None) -> str:
    """Time every candidate on the probe input, keep the answer, return the fastest."""
    x = torch.randn(key["input"], generator=torch.Generator().manual_seed(0))
    timings = {name: seconds_per_call(forward, x) for name, forward in forwards.items()}
    choice = min(timings, key=timings.__getitem__)
    logger.info("--runtime auto for %s %s: %s (%s)", key["arch"], key["precision"], choice,
                ", ".join(f"{n} {1000 * s:.1f} ms" for n, s in timings.items()))
    path = probe_path(key, root)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        write_json(path, {"key": key, "seconds": timings, "choice": choice}, indent=2)
    except OSError as err:  # a read-only cache only costs the next run another probe
        logger.warning("could not keep the runtime probe in %s (%s)", path, err)
    return choice


__all__ = ["PROBE_REPEATS", "cached_choice", "measure_and_record", "probe_key", "probe_path",
           "seconds_per_call"]
