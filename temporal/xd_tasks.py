"""XD-Violence's two tasks as views of one cache.

One extraction serves both tasks: the cache holds every video labelled with seven
classes (``normal`` + six violent ones, the first label code). A task is a relabelled
subset of the loaded cache, made in memory, so no feature is copied:

* ``xd-recognition`` (the paper's XD-VR): violent videos only, six classes in the cache's
  order without ``normal``.
* ``xd-detection``: every video, ``normal`` vs ``violent`` (video-level labels, as the
  weakly supervised protocol trains); the anomaly score is ``1 - p(normal)``.

The task name is written into the view's identity (``identity["task"]``), which training
copies into the run's ``config.json`` as ``cache_identity``. So a run remembers its task
(``RunConfig.task``), and evaluation must apply the same view
(``load_task_data(cache, config.task)``) before the identity check, or the check refuses
the raw cache, as it should.
"""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path
from typing import Any, Callable, Mapping

import numpy as np
import torch

from cache_schema import InvalidInput

from .data import CacheData, load_cache

logger = logging.getLogger(__name__)

NORMAL = "normal"
VIOLENT = "violent"
RECOGNITION = "xd-recognition"
DETECTION = "xd-detection"


def _normal_index(data: CacheData, task: str) -> int:
    names = list(data.class_names)
    if NORMAL not in names:
        raise InvalidInput(f"{task} needs a cache whose classes include {NORMAL!r} (an xd-violence extraction); "
                         f"{data.path} has {names}")
    return names.index(NORMAL)


def _relabel(data: CacheData, rows: np.ndarray, labels: np.ndarray, class_names: tuple[str, ...], task: str,
             left_out: dict[str, int]) -> CacheData:
    rows_t = torch.as_tensor(rows, dtype=torch.long)
    clips = dataclasses.replace(data.clips.take(rows_t), label=torch.as_tensor(labels, dtype=torch.long))
    config = dataclasses.replace(data.config, class_names=class_names)
    identity = {**data.identity, "class_names": list(class_names), "task": task}
    return dataclasses.replace(data, config=config, identity=identity, keys=data.keys[rows],
                               groups=data.groups[rows], clips=clips, left_out={**data.left_out, **left_out})


def recognition_view(data: CacheData) -> CacheData:
    """Violent videos only, six classes (the cache's order, ``normal`` removed)."""
    normal = _normal_index(data, RECOGNITION)
    labels = data.clips.label.numpy()
    rows = np.flatnonzero(labels != normal)
    if len(rows) == 0:
        raise InvalidInput(f"{data.path} holds no violent video; {RECOGNITION} has nothing to train on")
    names = tuple(n for i, n in enumerate(data.class_names) if i != normal)
    old_to_new = {old: new for new, old in enumerate(i for i in range(len(data.class_names)) if i != normal)}
    new_labels = np.array([old_to_new[int(y)] for y in labels[rows]], dtype=np.int64)
    return _relabel(data, rows, new_labels, names, RECOGNITION, {"normal_not_in_task": int(len(labels) - len(rows))})


def detection_view(data: CacheData) -> CacheData:
    """Every video, ``normal`` (0) vs ``violent`` (1)."""
    normal = _normal_index(data, DETECTION)
    labels = data.clips.label.numpy()
    rows = np.arange(len(labels))
    return _relabel(data, rows, (labels != normal).astype(np.int64), (NORMAL, VIOLENT), DETECTION, {})


TASKS: dict[str, Callable[[CacheData], CacheData]] = {RECOGNITION: recognition_view, DETECTION: detection_view}


def apply_task(data: CacheData, task: str | None) -> CacheData:
    """The view of ``data`` for ``task``; ``None`` or ``""`` is the cache as it is."""
    if not task:
        return data
    try:
        view = TASKS[task]
    except KeyError:
        raise InvalidInput(f"unknown task {task!r}; choose one of {sorted(TASKS)}") from None
    out = view(data)
    logger.info("%s view of %s: %d clips, classes %s", task, data.path, len(out.keys), list(out.class_names))
    return out


def load_task_data(cache: str | Path, task: str | None) -> CacheData:
    return apply_task(load_cache(cache), task)


def task_of_identity(identity: Mapping[str, Any] | None) -> str | None:
    """The task view a cache identity (a view's, or the one a run's ``config.json``
    records) was made for; None: the plain cache."""
    return (identity or {}).get("task")


__all__ = ["RECOGNITION", "DETECTION", "TASKS", "recognition_view", "detection_view", "apply_task",
           "load_task_data", "task_of_identity"]
