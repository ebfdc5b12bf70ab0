"""Test metrics, all from scikit-learn.

The binary normal-vs-anomaly view scores each clip with ``1 - p(normal)`` and reports its
average precision; it exists only when a class is named ``normal``.
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np
from sklearn.metrics import (
    accuracy_score,
    average_precision_score,
    confusion_matrix,
    precision_recall_fscore_support,
)

NORMAL = "normal"


def anomaly_score(probs: np.ndarray, class_names: Sequence[str], normal: str = NORMAL) -> np.ndarray | None:
    """``1 - p(normal)`` per clip (or per step, for ``[..., C]`` input); None without a normal class."""
    if normal not in class_names:
        return None
    return 1.0 - probs[..., list(class_names).index(normal)]


def classification_metrics(y_true: np.ndarray, probs: np.ndarray, class_names: Sequence[str],
                           normal: str = NORMAL) -> dict[str, Any]:
    """Accuracy, macro/weighted P/R/F1, a per-class table, the confusion matrix and the
    anomaly AP for true labels ``[N]`` and class probabilities ``[N, C]``."""
    labels = list(range(len(class_names)))
    y_pred = probs.argmax(1) if len(probs) else np.zeros(0, dtype=np.int64)
    out: dict[str, Any] = {"n_test": int(len(y_true)), "class_names": list(class_names)}
    out["accuracy"] = float(accuracy_score(y_true, y_pred)) if len(y_true) else float("nan")
    for avg in ("macro", "weighted"):
        p, r, f, _ = precision_recall_fscore_support(y_true, y_pred, labels=labels, average=avg, zero_division=0)
        out[f"precision_{avg}"], out[f"recall_{avg}"], out[f"f1_{avg}"] = float(p), float(r), float(f)
    p, r, f, s = precision_recall_fscore_support(y_true, y_pred, labels=labels, average=None, zero_division=0)
    out["per_class"] = {
        name: {"precision": float(p[i]), "recall": float(r[i]), "f1": float(f[i]), "support": int(s[i])}
        for i, name in enumerate(class_names)
    }
    out["confusion_matrix"] = confusion_matrix(y_true, y_pred, labels=labels).tolist()
    score = anomaly_score(probs, class_names, normal)
    is_anomaly = y_true != (list(class_names).index(normal) if score is not None else -1)
    if score is None or len(np.unique(is_anomaly)) < 2:
        out["ap_anomaly"] = None  # no normal class, or only one side present in the test set
    else:
        out["ap_anomaly"] = float(average_precision_score(is_anomaly, score))
    return out


def per_class_table(metrics: dict[str, Any]) -> str:
    """The per-class part of ``metrics`` as a Markdown table."""
    rows = ["| class | precision | recall | F1 | support |", "|---|---:|---:|---:|---:|"]
    for name, m in metrics["per_class"].items():
        rows.append(f"| {name} | {m['precision']:.3f} | {m['recall']:.3f} | {m['f1']:.3f} | {m['support']} |")
    return "\n".join(rows)


def format_summary(metrics: dict[str, Any]) -> str:
    """A few lines for the terminal at the end of ``train`` / ``evaluate``.

    Every part is optional, because ``metrics`` may hold the recognition metrics, the
    XD-Violence detection metrics (``evaluate --detection``), or both merged: a summary
    must never fail on metrics that were computed and written correctly."""
    lines = []
    if "head" in metrics or "params" in metrics:
        lines.append(f"{metrics.get('head')} / {metrics.get('modality')} ({metrics.get('fusion')} fusion), "
                     f"{metrics.get('params', 0):,} parameters, seed {metrics.get('seed')}")
    if "accuracy" in metrics:
        ap = metrics.get("ap_anomaly")
        lines.append(
            f"test: accuracy {_num(metrics['accuracy'])}  precision {_num(metrics.get('precision_macro'))}  "
            f"recall {_num(metrics.get('recall_macro'))}  F1 {_num(metrics.get('f1_macro'))} (macro)  "
            f"AP(anomaly) {_num(ap)}  on {metrics.get('n_test')} clips")
    if "ap_frame_pr_auc" in metrics:
        det = metrics.get("detection") or {}
        lines.append(f"detection: frame AP (official PR-AUC) {_num(metrics['ap_frame_pr_auc'], 4)}, "
                     f"average precision {_num(metrics.get('ap_frame_average_precision'), 4)}"
                     + (f" over {det['n_videos']} videos, {det['n_frames']} frames"
                        if "n_videos" in det and "n_frames" in det else ""))
    split = metrics.get("split")
    if isinstance(split, dict):
        lines.append(f"split: {split.get('kind')} (seed {split.get('seed')}, groups from "
                     f"{split.get('groups_source')}), sizes {split.get('sizes')}")
    pb = metrics.get("pretrained_backbones", {})
    if pb and not pb.get("both"):
        lines.append("NOTE: features from UNTRAINED backbone weights: this tests the pipeline, not recognition.")
    return "\n".join(lines) or "no metrics"


def _num(value: Any, digits: int = 3) -> str:
    """A metric for the terminal: ``n/a`` for a missing or non-numeric value."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return "n/a"
    return f"{value:.{digits}f}"
