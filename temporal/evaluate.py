"""Evaluating a run directory on its test split (also the last step of every training).

Everything comes from the run directory: the model is rebuilt from ``config.json``, its
weights from ``model.safetensors``, the test clips from ``split.json``, and the features
from the cache the run was trained on (or another path to the same cache, checked by the
cache's identity: features of other backbones or step counts are refused).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from cache_schema import feature_identity_differences

from .checkpoint import load_weights
from .data import CacheData, Clips, RaggedClips, has_modality, modalities_of, step_batches
from .metrics import classification_metrics, per_class_table, present_classes, resolve_normal_class, untrained_note
from .model import AnomalyModel
from .plots import confusion_figure, save_figure
from .rundir import RunConfig, RunDir, RunMismatch
from .split import Split
from .xd_tasks import load_task_data

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Prediction:
    """Probabilities of N clips. Clips of different lengths are padded to the longest
    (``step_mask`` False there); ``lengths`` says how many steps each clip has."""

    clip_probs: np.ndarray   # [N, C]
    step_probs: np.ndarray   # [N, T_max, C], zero where step_mask is False
    step_mask: np.ndarray    # [N, T_max]
    lengths: np.ndarray | None = None   # [N] steps per clip; None: all T_max

    def clip_steps(self, i: int) -> int:
        return int(self.step_mask.shape[1] if self.lengths is None else self.lengths[i])


def load_run(rundir: str | Path) -> tuple[AnomalyModel, RunConfig]:
    """The trained model of a run (eval mode) and its config. A path that is not a run,
    or a run without weights, raises :class:`~temporal.rundir.MissingRunFile`."""
    run = RunDir(rundir)
    config = run.read_config()
    t = config.train
    objective = t.trained_objective
    model = AnomalyModel(t.head, t.modality, t.fusion, config.video_dim, config.audio_dim,
                         len(config.class_names), config.steps, t.head_options or {}, objective=objective,
                         normal_index=t.normal_index(config.class_names) if objective == "mil" else None)
    load_weights(model, run.weights)
    return model.eval(), config


@torch.no_grad()
def predict(model: AnomalyModel, clips: Clips | RaggedClips, batch_size: int = 512) -> Prediction:
    """Class probabilities per clip and per step, every clip at its full length. Ragged
    clips run in batches by a budget of padded steps (:func:`~temporal.data.step_batches`),
    so that memory stays bounded whatever the clip lengths; a fixed-step set gives the
    batches of ``batch_size`` clips it always had."""
    model.eval()
    if isinstance(clips, Clips):
        cp, sp, sm = [], [], []
        for start in range(0, len(clips), batch_size):
            out = model(clips.take(torch.arange(start, min(len(clips), start + batch_size))))
            cp.append(torch.softmax(out.clip_logits, -1))
            sp.append(torch.softmax(out.step_logits, -1) * out.step_mask.unsqueeze(-1))
            sm.append(out.step_mask)
        return Prediction(torch.cat(cp).numpy(), torch.cat(sp).numpy(), torch.cat(sm).numpy())
    lengths = clips.lengths.numpy()
    n, t_max = len(clips), int(lengths.max()) if len(clips) else 0
    clip_probs, step_probs, step_mask = None, None, np.zeros((n, t_max), dtype=bool)
    for idx in step_batches(lengths, max_clips=batch_size):
        out = model(clips.pad(torch.from_numpy(idx)))
        cp = torch.softmax(out.clip_logits, -1).numpy()
        sp = (torch.softmax(out.step_logits, -1) * out.step_mask.unsqueeze(-1)).numpy()
        if clip_probs is None:
            clip_probs = np.zeros((n, cp.shape[1]), dtype=cp.dtype)
            step_probs = np.zeros((n, t_max, cp.shape[1]), dtype=sp.dtype)
        t = sp.shape[1]
        clip_probs[idx], step_probs[idx, :t], step_mask[idx, :t] = cp, sp, out.step_mask.numpy()
    if clip_probs is None:
        raise ValueError("predict needs at least one clip")
    return Prediction(clip_probs, step_probs, step_mask, lengths)


@dataclass(frozen=True)
class RunTestClips:
    """A run and its test clips: ``rows`` / ``clips`` are those holding the run's modality
    (what the model can read), ``without_stream`` the test rows that have no step of it
    (scored with the training class prior by :func:`evaluate_run`)."""

    model: AnomalyModel
    config: RunConfig         # the run's config.json
    data: CacheData
    split: Split              # the run's split.json
    rows: np.ndarray          # the test clips' rows in ``data`` that hold the run's modality
    clips: RaggedClips
    without_stream: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))  # rows without it

    @property
    def all_rows(self) -> np.ndarray:
        """Every test clip of the split found in ``data``, in the split's order."""
        return self.data.rows_of(self.split.test)


def load_test_split(rundir: str | Path, cache: str | Path | None = None, data: CacheData | None = None) -> RunTestClips:
    """Reload a run and the clips of its test split, from the cache (or task view, for
    XD-Violence task runs) it was trained on; another cache is refused."""
    run = RunDir(rundir)
    model, config = load_run(run.path)
    if data is None:  # a task run (XD-Violence) sees its relabelled view
        data = load_task_data(cache or config.cache, config.task)
    diffs = feature_identity_differences(config.cache_identity, data.identity, ("run was trained on", "cache has"))
    if diffs:
        raise RunMismatch(identity_refusal(data.path, config.cache, diffs))
    split = run.read_split()
    rows = data.rows_of(split.test)
    usable = has_modality(data.clips, config.train.modality)[rows]
    return RunTestClips(model, config, data, split, rows[usable], data.clips.take(rows[usable]), rows[~usable])


def _same_path(a: str | Path, b: str | Path) -> bool:
    try:
        return Path(a).resolve() == Path(b).resolve()
    except OSError:
        return False


def identity_refusal(cache: str | Path, trained_on: str | Path, diffs: list[str]) -> str:
    """Why a run refuses the features at ``cache`` (what differs) and what to do. When
    ``cache`` is the very path the run was trained on, it was re-extracted with other
    settings since: pointing ``--cache`` at it again cannot help, so the fix is to retrain
    on it or to re-extract it with the run's settings."""
    what = "; ".join(diffs)
    if _same_path(cache, trained_on):
        return (f"{cache} no longer holds the features this run was trained on: it was re-extracted with other "
                f"settings since ({what}); retrain on it (`cli.py train --cache {cache} --out NEW_RUN`), or "
                "re-extract it with the run's settings")
    return (f"{cache} is not the cache this run was trained on ({what}); evaluate with --cache pointing at a cache "
            f"extracted with the run's settings (it was trained on {trained_on}), or retrain on {cache}")


def training_prior(run: RunDir, test: RunTestClips) -> np.ndarray:
    """The class prior ``[C]`` of the run's training clips (those holding its modality):
    what a model predicts for a clip it has no input for. Stored in ``training.json`` by
    ``train``; recomputed from the split for runs written before it was stored."""
    stored = run.read_training().get("class_prior")
    num_classes = len(test.config.class_names)
    if isinstance(stored, list) and len(stored) == num_classes:
        return np.asarray(stored, dtype=np.float64)
    rows = test.data.rows_of(test.split.train)
    rows = rows[has_modality(test.data.clips, test.config.train.modality)[rows]]
    return class_prior(test.data.clips.label[rows].numpy(), num_classes)


def class_prior(labels: np.ndarray, num_classes: int) -> np.ndarray:
    """Relative class frequencies of ``labels`` (uniform for no labels)."""
    counts = np.bincount(np.asarray(labels, dtype=np.int64), minlength=num_classes).astype(np.float64)
    return counts / counts.sum() if counts.sum() else np.full(num_classes, 1.0 / num_classes)


def evaluate_run(rundir: str | Path, cache: str | Path | None = None, data: CacheData | None = None,
                 write: bool = True, normal_class: str | None = None) -> dict[str, Any]:
    """Test metrics of a run; writes ``metrics.json``, ``per_class.md`` and ``confusion.png``.

    Every test clip of the split is scored, whatever the run's modality, so runs of
    different modalities on one split are measured on the same clips (Table 2): a clip
    without the stream the run reads is predicted as the model does with that stream
    masked, which for a model that sees nothing is its training class prior; those clips
    are counted (``n_test_without_stream``, keys in ``test_keys_without_stream``), and the
    metrics over the other clips alone are kept in ``on_clips_with_stream`` (how good the
    head is when its stream is there). The metrics cover the classes present in the cache
    (see :mod:`temporal.metrics`); the binary view uses ``normal_class`` (default: the
    run's ``--normal-class``)."""
    run = RunDir(rundir)
    test = load_test_split(run.path, cache, data)
    config, data, split, rows = test.config, test.data, test.split, test.rows
    t = config.train
    normal, reason = resolve_normal_class(t.normal_class if normal_class is None else normal_class,
                                          config.class_names)
    all_rows = test.all_rows
    usable = np.isin(all_rows, rows)
    probs = np.empty((len(all_rows), len(config.class_names)), dtype=np.float64)
    if len(rows):
        probs[usable] = predict(test.model, test.clips).clip_probs
    probs[~usable] = training_prior(run, test)
    labels = present_classes(data.clips.label.numpy(), len(config.class_names))
    y_true = data.clips.label[all_rows].numpy()
    metrics = classification_metrics(y_true, probs, config.class_names, normal, labels)
    if normal is None:
        metrics["binary_view"] = reason
        logger.info("binary normal-vs-anomaly view %s", reason)
    n_without = int((~usable).sum())
    if n_without:
        subset = classification_metrics(y_true[usable], probs[usable], config.class_names, normal, labels)
        metrics["on_clips_with_stream"] = {k: subset[k] for k in ("n_test", "accuracy", "precision_macro",
                                                                 "recall_macro", "f1_macro", "ap_anomaly")}
    training = run.read_training()
    keys = data.keys[all_rows].tolist()
    metrics.update({
        "head": t.head, "modality": t.modality, "fusion": t.fusion, "seed": t.seed,
        "params": config.params, "pretrained_backbones": data.pretrained_backbones(modalities_of(t.modality)),
        "split": split.info, "cache": str(data.path),
        "n_test_without_stream": n_without,
        "test_without": {m: int((~has_modality(data.clips, m)[all_rows]).sum()) for m in ("video", "audio")},
        "test_keys": keys,
        "test_keys_without_stream": [k for k, ok in zip(keys, usable.tolist()) if not ok],
        "n_test_not_in_cache": int(len(split.test) - len(all_rows)),
        **{k: training[k] for k in ("best_epoch", "epochs_run", "best_val_accuracy", "train_seconds",
                                   "seconds_per_epoch", "left_out", "n_train", "n_val", "batch_size") if k in training},
    })
    if write:
        run.write_metrics(metrics)
        untrained = untrained_note(metrics["pretrained_backbones"])
        note = f"\n\n> {untrained[0].upper()}{untrained[1:]}\n" if untrained else ""
        prior_note = f"; {n_without} test clips without {t.modality} data, predicted with the training class " \
            "prior" if n_without else ""
        run.write_per_class(
            f"# {t.head} / {t.modality} ({t.fusion} fusion), seed {t.seed}\n\n"
            f"accuracy {metrics['accuracy']:.3f}, macro F1 {metrics['f1_macro']:.3f} over "
            f"{len(metrics['class_names'])} classes, n_test {metrics['n_test']}{prior_note}"
            f"{note}\n\n{per_class_table(metrics)}\n")
        save_figure(confusion_figure(metrics["confusion_matrix"], metrics["class_names"],
                                     f"{config.label}: acc {metrics['accuracy']:.3f}"), run.confusion)
    logger.info("%s: test accuracy %.3f, macro F1 %.3f on %d clips", run.path, metrics["accuracy"],
                metrics["f1_macro"], metrics["n_test"])
    return metrics


__all__ = ["Prediction", "RunTestClips", "class_prior", "evaluate_run", "training_prior", "load_run", "load_test_split", "predict"]
