"""Test metrics, all from scikit-learn, over the classes the dataset has.

Which classes. A cache names every class its dataset layout allows (``vaar`` names ten
even when a user brings two folders), but only classes with clips can be measured: a
class with no test clip and no prediction scores precision, recall and F1 of 0 under
``zero_division=0`` and drags every macro average down (two real classes averaged over
ten read as macro F1 0.2 for a perfect run). So every metric covers the *classes present*:
those with at least one usable (ok, labelled) clip in the cache the run was trained and
tested on (:func:`present_classes`), passed to scikit-learn as ``labels=``. The cache, not
the test split, decides, so every run on one cache (every cell of a Table 2) reports the
same classes, and a class that only a small test split happens to miss still counts.
A test clip predicted as a class without any clip is a plain mistake (accuracy and that
clip's recall count it); it has no column in the confusion matrix, and
``n_predicted_without_data`` says how many there were.

The binary normal-vs-anomaly view scores each clip with ``1 - p(normal)`` and reports its
average precision (``ap_anomaly``). Its normal class is ``--normal-class NAME`` or, by
default, the class named ``normal`` when there is one; without such a class the view is
left out (``ap_anomaly`` None, ``binary_view`` says why), never computed against a
made-up class (:func:`resolve_normal_class`).
"""

from __future__ import annotations

import logging
from typing import Any, Sequence

import numpy as np
from sklearn.metrics import (
    accuracy_score,
    average_precision_score,
    confusion_matrix,
    precision_recall_fscore_support,
)

from cache_schema import InvalidInput

logger = logging.getLogger(__name__)

NORMAL = "normal"


def present_classes(labels: np.ndarray, num_classes: int) -> list[int]:
    """Indices of the classes that have at least one clip among ``labels`` (sorted)."""
    labels = np.asarray(labels, dtype=np.int64)
    return [int(c) for c in np.unique(labels[(labels >= 0) & (labels < num_classes)])]


def resolve_normal_class(requested: str, class_names: Sequence[str]) -> tuple[str | None, str]:
    """The normal class of the binary view and a sentence saying how it was chosen.

    ``requested`` is ``--normal-class`` (``""``: the class named ``normal``, if any). A
    named class that the run does not have is a user error (:class:`InvalidInput`); no
    class named ``normal`` by default gives ``(None, reason)``: the view is left out."""
    names = list(class_names)
    if requested:
        if requested not in names:
            raise InvalidInput(f"--normal-class {requested!r} is not a class of this cache (classes: "
                               f"{', '.join(names)}); pass one of them, or leave the option out")
        return requested, f"normal class {requested!r} (--normal-class)"
    if NORMAL in names:
        return NORMAL, f"normal class {NORMAL!r} (the class of that name)"
    return None, (f"left out: no class is named {NORMAL!r} (classes: {', '.join(names)}); pass "
                  "--normal-class NAME to score anomalies as 1 - p(NAME)")


def anomaly_score(probs: np.ndarray, class_names: Sequence[str], normal: str | None = NORMAL) -> np.ndarray | None:
    """``1 - p(normal)`` per clip (or per step, for ``[..., C]`` input); None without a normal class."""
    if normal is None or normal not in class_names:
        return None
    return 1.0 - probs[..., list(class_names).index(normal)]


def classification_metrics(y_true: np.ndarray, probs: np.ndarray, class_names: Sequence[str],
                           normal: str | None = NORMAL, labels: Sequence[int] | None = None) -> dict[str, Any]:
    """Accuracy, macro/weighted P/R/F1, a per-class table, the confusion matrix and the
    anomaly AP for true labels ``[N]`` and class probabilities ``[N, C]``.

    ``labels`` are the indices (into ``class_names``, the model's outputs) of the classes
    the metrics cover (see the module doc; default: every class). ``class_names`` in the
    result are those classes, in the order of the per-class table and the matrix."""
    labels = list(range(len(class_names))) if labels is None else [int(c) for c in labels]
    names = [class_names[c] for c in labels]
    y_true = np.asarray(y_true, dtype=np.int64)
    y_pred = probs.argmax(1) if len(probs) else np.zeros(0, dtype=np.int64)
    out: dict[str, Any] = {"n_test": int(len(y_true)), "class_names": names}
    out["accuracy"] = float(accuracy_score(y_true, y_pred)) if len(y_true) else float("nan")
    for avg in ("macro", "weighted"):
        p, r, f, _ = precision_recall_fscore_support(y_true, y_pred, labels=labels, average=avg, zero_division=0)
        out[f"precision_{avg}"], out[f"recall_{avg}"], out[f"f1_{avg}"] = float(p), float(r), float(f)
    p, r, f, s = precision_recall_fscore_support(y_true, y_pred, labels=labels, average=None, zero_division=0)
    out["per_class"] = {
        name: {"precision": float(p[i]), "recall": float(r[i]), "f1": float(f[i]), "support": int(s[i])}
        for i, name in enumerate(names)
    }
    out["confusion_matrix"] = confusion_matrix(y_true, y_pred, labels=labels).tolist() if labels else []
    out["n_predicted_without_data"] = int((~np.isin(y_pred, labels)).sum())
    if out["n_predicted_without_data"]:
        logger.warning("%d test clips were predicted as a class without any clip in the cache; they count as "
                       "mistakes and have no column in the confusion matrix", out["n_predicted_without_data"])
    out.update(binary_view(y_true, probs, class_names, normal))
    return out


def binary_view(y_true: np.ndarray, probs: np.ndarray, class_names: Sequence[str],
                normal: str | None) -> dict[str, Any]:
    """``normal_class`` and ``ap_anomaly`` (average precision of ``1 - p(normal)`` for
    "not normal"); ``ap_anomaly`` is None, with the reason in ``binary_view``, when there
    is no normal class or the test clips hold only one side."""
    score = anomaly_score(probs, class_names, normal)
    if score is None:
        return {"normal_class": None, "ap_anomaly": None,
                "binary_view": f"left out: no normal class {normal!r} among the run's classes" if normal
                else "left out: no normal class"}
    is_anomaly = np.asarray(y_true) != list(class_names).index(normal)
    if len(np.unique(is_anomaly)) < 2:
        return {"normal_class": normal, "ap_anomaly": None,
                "binary_view": f"left out: the test clips are all {'anomalies' if is_anomaly.all() else normal}"}
    return {"normal_class": normal, "ap_anomaly": float(average_precision_score(is_anomaly, score)),
            "binary_view": f"anomaly score 1 - p({normal})"}


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
        names = metrics.get("class_names")
        lines.append(
            f"test: accuracy {_num(metrics['accuracy'])}  precision {_num(metrics.get('precision_macro'))}  "
            f"recall {_num(metrics.get('recall_macro'))}  F1 {_num(metrics.get('f1_macro'))} (macro"
            + (f" over {len(names)} classes" if isinstance(names, list) else "") + ")  "
            f"AP(anomaly) {_num(ap)}  on {metrics.get('n_test')} clips")
        if ap is None and metrics.get("binary_view"):
            lines.append(f"binary view (normal vs anomaly): {metrics['binary_view']}")
        if metrics.get("n_test_without_stream"):
            lines.append(f"{metrics['n_test_without_stream']} test clips have no {metrics.get('modality')} data: "
                         "predicted with the training class prior")
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
    note = untrained_note(metrics.get("pretrained_backbones"))
    if note:
        lines.append(f"NOTE: {note}")
    return "\n".join(lines) or "no metrics"


def untrained_backbones(pb: dict[str, Any] | None) -> list[str]:
    """The untrained backbones a run read ("audio tiny"), from its ``pretrained_backbones``
    record; a record from before it named them falls back to its "both" flag."""
    if not pb:
        return []
    if "untrained" in pb:
        return list(pb["untrained"])
    return [] if pb.get("both") else [f"{m} {pb.get(f'{m}_backbone')}" for m in ("video", "audio")
                                       if not pb.get(m)]


def untrained_note(pb: dict[str, Any] | None) -> str:
    """One sentence when a run's features came from UNTRAINED backbone weights, naming
    them; empty when every backbone it read was pretrained."""
    names = untrained_backbones(pb)
    return f"features from UNTRAINED backbone weights ({', '.join(names)}): this tests the pipeline, " \
        "not recognition." if names else ""


def _num(value: Any, digits: int = 3) -> str:
    """A metric for the terminal: ``n/a`` for a missing or non-numeric value."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return "n/a"
    return f"{value:.{digits}f}"
