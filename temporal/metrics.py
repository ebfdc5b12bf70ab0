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
    """A few lines for the terminal at the end of ``train`` / ``evaluate``."""
    ap = metrics.get("ap_anomaly")
    split = metrics.get("split", {})
    lines = [
        f"{metrics.get('head')} / {metrics.get('modality')} ({metrics.get('fusion')} fusion), "
        f"{metrics.get('params', 0):,} parameters, seed {metrics.get('seed')}",
        f"test: accuracy {metrics['accuracy']:.3f}  precision {metrics['precision_macro']:.3f}  "
        f"recall {metrics['recall_macro']:.3f}  F1 {metrics['f1_macro']:.3f} (macro)  "
        f"AP(anomaly) {'n/a' if ap is None else f'{ap:.3f}'}  on {metrics['n_test']} clips",
        f"split: {split.get('kind')} (seed {split.get('seed')}, groups from {split.get('groups_source')}), "
        f"sizes {split.get('sizes')}",
    ]
    pb = metrics.get("pretrained_backbones", {})
    if pb and not pb.get("both"):
        lines.append("NOTE: features from UNTRAINED backbone weights: this tests the pipeline, not recognition.")
    return "\n".join(lines)
