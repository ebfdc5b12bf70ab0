"""Checkpoints without pickle: weights in safetensors, everything else in JSON.

``model.safetensors`` holds the best-on-validation weights (and the feature
standardisation buffers). ``train_state.safetensors`` holds what a
later ``train --resume`` needs to continue after the last epoch exactly: the last
weights (``model.<name>``), the optimizer's per-parameter tensors (flattened to
``optimizer.<param>.<name>``), the random generators' states, and, as JSON in the file's metadata, the
optimizer's param groups, the LR scheduler's state and the loop's counters (history
included). It is rewritten atomically after every epoch.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file
from torch import nn

from cache_schema import replace_atomically

from .rundir import MissingRunFile, RunDir, RunMismatch


def save_weights(state: dict[str, torch.Tensor], path: str | Path) -> None:
    """Written beside ``path`` and renamed over it, so that a run killed mid-save keeps the
    previous checkpoint instead of a torn one."""
    tensors = {k: v.detach().contiguous().cpu() for k, v in state.items()}
    replace_atomically(path, lambda p: save_file(tensors, str(p)))


def load_weights(model: nn.Module, path: str | Path) -> None:
    """Load weights strictly: a checkpoint of another head or modality is an error."""
    path = Path(path)
    if not path.exists():
        raise MissingRunFile(f"no checkpoint at {path}; was this run trained to the end? Train it with `cli.py train`")
    state = read_weights(path)
    expected = model.state_dict()
    missing = [k for k in expected if k not in state]
    no_normalisation = [k for k in missing if k.startswith("standardize.")]
    if no_normalisation:
        # The input normalisation is part of the model: scoring without it would feed the
        # head raw features on another scale than the one it was trained on.
        raise RunMismatch(f"{path} holds no input normalisation ({', '.join(no_normalisation)}), so its head cannot "
                          "be given the features it was trained on; train the run again into a new --out")
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as exc:  # missing, unexpected or mis-shaped tensors
        unexpected = [k for k in state if k not in expected]
        detail = "; ".join(part for part in (
            f"missing {', '.join(missing[:3])}{' ...' if len(missing) > 3 else ''}" if missing else "",
            f"unexpected {', '.join(unexpected[:3])}{' ...' if len(unexpected) > 3 else ''}" if unexpected else "",
        ) if part) or " ".join(str(exc).split())[:200] or type(exc).__name__
        raise RunMismatch(f"{path} holds the weights of another model than its config.json describes ({detail}); "
                          "train the run again into a new --out") from None


def read_weights(path: str | Path) -> dict[str, torch.Tensor]:
    """The tensors of a weights file, ``{}`` if there is none yet (a resumed run that had
    not saved its best weights). A damaged file (empty, truncated, not safetensors) is a
    :class:`~temporal.rundir.RunMismatch` naming it."""
    path = Path(path)
    if not path.exists():
        return {}
    try:
        return load_file(str(path))
    except (SafetensorError, OSError) as exc:
        raise RunMismatch(f"{path} is damaged ({damage(exc)}); train the run again into a new --out") from None


def damage(exc: BaseException) -> str:
    """One line of what safetensors (or the OS) said about a file it could not read."""
    text = " ".join(str(exc).split())
    return text or type(exc).__name__


def _json_safe(x: Any) -> Any:
    if isinstance(x, float) and not math.isfinite(x):
        return {"__float__": repr(x)}
    if isinstance(x, dict):
        return {str(k): _json_safe(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_json_safe(v) for v in x]
    if isinstance(x, torch.Tensor):
        return x.item()
    return x


def _from_json(x: Any) -> Any:
    if isinstance(x, dict):
        if set(x) == {"__float__"}:
            return float(x["__float__"])
        return {k: _from_json(v) for k, v in x.items()}
    if isinstance(x, list):
        return [_from_json(v) for v in x]
    return x


def save_train_state(rundir: str | Path, model: nn.Module, optimizer: torch.optim.Optimizer, scheduler: Any,
                     generator: torch.Generator, loop: dict[str, Any]) -> None:
    opt = optimizer.state_dict()
    tensors: dict[str, torch.Tensor] = {f"model.{k}": v.detach().contiguous().cpu().clone()
                                        for k, v in model.state_dict().items()}
    for pid, st in opt["state"].items():
        for name, v in st.items():
            tensors[f"optimizer.{pid}.{name}"] = torch.as_tensor(v).detach().contiguous().cpu().clone()
    tensors["rng.torch"] = torch.get_rng_state()
    tensors["rng.shuffle"] = generator.get_state()
    doc = {"param_groups": opt["param_groups"], "scheduler": scheduler.state_dict(), "loop": loop}
    text = json.dumps(_json_safe(doc))
    # The JSON part travels inside the safetensors file's metadata: one file, replaced
    # atomically, so tensors and counters can never come from two different epochs.
    replace_atomically(RunDir(rundir).train_state,
                       lambda p: save_file(tensors, str(p), metadata={"train_state": text}))


def load_train_state(rundir: str | Path, model: nn.Module, optimizer: torch.optim.Optimizer, scheduler: Any,
                     generator: torch.Generator) -> dict[str, Any]:
    """Restore what :func:`save_train_state` wrote; returns the loop counters."""
    path = RunDir(rundir).train_state
    if not path.exists():
        raise MissingRunFile(f"no training state in {rundir} to resume from; train without --resume")
    fix = "train without --resume into a new --out (this state cannot be continued)"
    try:
        with safe_open(str(path), framework="pt") as f:
            doc = _from_json(json.loads((f.metadata() or {})["train_state"]))
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except (SafetensorError, OSError) as exc:
        raise RunMismatch(f"{path} is damaged ({damage(exc)}); {fix}") from None
    except KeyError:
        raise RunMismatch(f"{path} holds no training state metadata (not written by `train`); {fix}") from None
    except ValueError as exc:
        raise RunMismatch(f"{path} holds unreadable training state metadata ({exc}); {fix}") from None
    try:
        model.load_state_dict({k[len("model."):]: v for k, v in tensors.items() if k.startswith("model.")},
                              strict=True)
        state: dict[int, dict[str, torch.Tensor]] = {}
        for key, v in tensors.items():
            if key.startswith("optimizer."):
                _, pid, name = key.split(".", 2)
                state.setdefault(int(pid), {})[name] = v
        groups = [{**g, "betas": tuple(g["betas"])} if "betas" in g else g for g in doc["param_groups"]]
        optimizer.load_state_dict({"state": state, "param_groups": groups})
        scheduler.load_state_dict(doc["scheduler"])
        torch.set_rng_state(tensors["rng.torch"])
        generator.set_state(tensors["rng.shuffle"])
        loop = doc["loop"]
    except (KeyError, TypeError, ValueError, RuntimeError, AttributeError) as exc:
        detail = f"no {exc}" if isinstance(exc, KeyError) else (str(exc).strip().splitlines() or [""])[0]
        raise RunMismatch(f"{path} is not a training state of this run ({detail}); {fix}") from None
    if not isinstance(loop, dict):
        raise RunMismatch(f"{path} holds no loop counters; {fix}")
    return loop
