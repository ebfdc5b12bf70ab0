"""Evaluating a run directory on its test split (also the last step of every training).

Everything comes from the run directory: the model is rebuilt from ``config.json``, its
weights from ``model.safetensors``, the test clips from ``split.json``, and the features
from the cache the run was trained on (or another path to the same cache, checked by the
cache's identity: features of other backbones or step counts are refused).
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .checkpoint import WEIGHTS, load_weights
from .data import CacheData, Clips, has_modality
from .metrics import classification_metrics, per_class_table
from .model import AnomalyModel
from .plots import plot_confusion

logger = logging.getLogger(__name__)

METRICS = "metrics.json"
PER_CLASS = "per_class.md"
CONFUSION = "confusion.png"


@dataclass(frozen=True)
class Prediction:
    clip_probs: np.ndarray   # [N, C]
    step_probs: np.ndarray   # [N, T, C], zero where step_mask is False
    step_mask: np.ndarray    # [N, T]


def read_run_config(rundir: str | Path) -> dict[str, Any]:
    path = Path(rundir) / "config.json"
    if not path.exists():
        raise FileNotFoundError(f"{rundir} is not a run directory (no config.json); train one with `cli.py train`")
    return json.loads(path.read_text())


def load_run(rundir: str | Path) -> tuple[AnomalyModel, dict[str, Any]]:
    """The trained model of a run (eval mode) and its config."""
    doc = read_run_config(rundir)
    t = doc["train"]
    model = AnomalyModel(t["head"], t["modality"], t["fusion"], doc["video_dim"], doc["audio_dim"],
                         len(doc["class_names"]), doc["steps"], t.get("head_options") or {})
    load_weights(model, Path(rundir) / WEIGHTS)
    return model.eval(), doc


@torch.no_grad()
def predict(model: AnomalyModel, clips: Clips, batch_size: int = 512) -> Prediction:
    """Class probabilities per clip and per step."""
    model.eval()
    cp, sp, sm = [], [], []
    for start in range(0, len(clips), batch_size):
        out = model(clips.take(torch.arange(start, min(len(clips), start + batch_size))))
        cp.append(torch.softmax(out.clip_logits, -1))
        sp.append(torch.softmax(out.step_logits, -1) * out.step_mask.unsqueeze(-1))
        sm.append(out.step_mask)
    return Prediction(torch.cat(cp).numpy(), torch.cat(sp).numpy(), torch.cat(sm).numpy())


@dataclass(frozen=True)
class RunTestClips:
    """A run and its own test clips (those holding its modality)."""

    model: AnomalyModel
    doc: dict[str, Any]       # the run's config.json
    data: CacheData
    split: dict[str, Any]     # the run's split.json
    rows: np.ndarray          # the test clips' rows in ``data``
    clips: Clips


def load_test_split(rundir: str | Path, cache: str | Path | None = None, data: CacheData | None = None) -> RunTestClips:
    """Reload a run and the clips of its test split, from the cache (or task view, for
    XD-Violence task runs) it was trained on; another cache is refused."""
    rundir = Path(rundir)
    model, doc = load_run(rundir)
    if data is None:
        from .xd_tasks import load_task_data, task_of_run  # a task run (XD-Violence) sees its relabelled view

        data = load_task_data(cache or doc["cache"], task_of_run(doc))
    if json.dumps(data.identity, sort_keys=True) != json.dumps(doc["cache_identity"], sort_keys=True):
        raise ValueError(f"{data.path} is not the cache this run was trained on (other backbones, steps, classes "
                         f"or task view); evaluate with --cache pointing at {doc['cache']}")
    split = json.loads((rundir / "split.json").read_text())
    rows = data.rows_of(split["test"])
    rows = rows[has_modality(data.clips, doc["train"]["modality"])[rows]]
    return RunTestClips(model, doc, data, split, rows, data.clips.take(rows))


def evaluate_run(rundir: str | Path, cache: str | Path | None = None, data: CacheData | None = None,
                 write: bool = True) -> dict[str, Any]:
    """Test metrics of a run; writes ``metrics.json``, ``per_class.md`` and ``confusion.png``."""
    rundir = Path(rundir)
    run = load_test_split(rundir, cache, data)
    doc, data, split, rows = run.doc, run.data, run.split, run.rows
    t = doc["train"]
    pred = predict(run.model, run.clips)
    metrics = classification_metrics(run.clips.label.numpy(), pred.clip_probs, data.class_names)
    training = _read_json(rundir / "training.json")
    metrics.update({
        "head": t["head"], "modality": t["modality"], "fusion": t["fusion"], "seed": t["seed"],
        "params": doc["params"], "pretrained_backbones": data.pretrained_backbones(),
        "split": split.get("info", {}), "cache": str(data.path),
        "n_test_left_out": int(len(split["test"]) - len(rows)),
        **{k: training[k] for k in ("best_epoch", "epochs_run", "best_val_accuracy", "train_seconds",
                                   "seconds_per_epoch", "left_out", "n_train", "n_val", "batch_size") if k in training},
    })
    if write:
        (rundir / METRICS).write_text(json.dumps(metrics, indent=1))
        note = "" if metrics["pretrained_backbones"]["both"] else \
            "\n\n> Features from UNTRAINED backbone weights: these numbers test the pipeline, not recognition.\n"
        (rundir / PER_CLASS).write_text(
            f"# {t['head']} / {t['modality']} ({t['fusion']} fusion), seed {t['seed']}\n\n"
            f"accuracy {metrics['accuracy']:.3f}, macro F1 {metrics['f1_macro']:.3f}, n_test {metrics['n_test']}"
            f"{note}\n\n{per_class_table(metrics)}\n")
        plot_confusion(metrics["confusion_matrix"], data.class_names, rundir / CONFUSION,
                       f"{t['head']} / {t['modality']} ({t['fusion']}): acc {metrics['accuracy']:.3f}")
    logger.info("%s: test accuracy %.3f, macro F1 %.3f on %d clips", rundir, metrics["accuracy"],
                metrics["f1_macro"], metrics["n_test"])
    return metrics


def _read_json(path: Path) -> dict[str, Any]:
    return json.loads(path.read_text()) if path.exists() else {}
