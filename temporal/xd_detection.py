"""XD-Violence frame-level detection AP, computed as the official evaluation computes it.

The official test code (XDVioDet ``test.py``) concatenates, over the test videos, one
anomaly score per frame (each 16-frame snippet's score repeated 16 times) and the
frame-level ground truth, then reports

    precision, recall, _ = precision_recall_curve(gt, scores);  AP = auc(recall, precision)

i.e. the trapezoidal area under the PR curve. Later works (VadCLIP and others) report
``average_precision_score`` (the step-wise sum) on the same arrays; both are reported here
(``ap_frame_pr_auc``, ``ap_frame_average_precision``), plus the frame-level ROC AUC.

Ground truth. ``annotations.txt`` has one line per violent test video,
``<video> s1 e1 [s2 e2 ...]``: frame indices at the videos' 24 fps, 0-based start,
exclusive end, so a video's frame vector is ``gt[s:e] = 1`` for each pair (slices past the
end are cut, as numpy slicing in the official ``make_gt`` cuts them). Normal test videos
are all zeros. A video's frame count is ``N = round(duration * fps)``: the cache stores
each clip's duration, not its frame rate, and XD-Violence's videos and annotations are at
24 fps, so ``fps`` defaults to 24.

Ground-truth length. The official vectors (XDVioDet's ``make_gt.py``) hold
``16 * floor((N - 1) / 16)`` frames per video, whole I3D snippets only; that is the
default (``gt_frames="official"``; a video too short for one snippet keeps its frames);
``gt_frames="all"`` keeps every frame.

Scores. A step's anomaly score is ``1 - p(normal)``; each frame takes the score of the
step holding its start time, by the cache's step layout (``StepLayout.frame_steps``): on a
grid of 16 frames at 24 fps that is exactly the official ``np.repeat(scores, 16)``; with
fixed steps (``[i*d/T, (i+1)*d/T)``) frame ``f`` of ``N`` gets step ``floor(f * T / N)``.
A step with no data (masked) takes the clip's score.

The layout's ceiling. ``ap_frame_oracle`` is the AP a perfect predictor of each step's
violent fraction reaches with the run's layout: every step scored by the mean of the
frame ground truth over the frames it covers, expanded back to those frames. It is 1.0
when steps never straddle a boundary of a violent segment; coarse steps lower it (on
XD-Violence's test set: 0.9998 at 16-frame snippets, 0.977 at 10 steps per video), so a
reader sees how much of the gap to 1 is the layout and how much the model.

Alignment. The known pitfall of this protocol is a test-list order that differs between
the scores and the ground truth: the AP is then silently wrong. Here both sides are keyed
by video name, concatenated in one sorted order, and any name on one side only, or any
per-video length mismatch, is an error, never a silent reorder.
"""

from __future__ import annotations

import json
import logging
import re
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
from sklearn.metrics import auc, average_precision_score, precision_recall_curve, roc_auc_score

from cache_schema import InvalidInput, MissingInput, StepLayout, open_cache

from .data import CacheData
from .evaluate import Prediction, load_test_split, predict, training_prior
from .rundir import RunDir
from .split import Split

logger = logging.getLogger(__name__)

DEFAULT_FPS = 24.0
NORMAL = "normal"
SNIPPET_FRAMES = 16                 # XD-Violence's I3D snippets
GT_FRAMES = ("official", "all")     # ground-truth length: make_gt.py's, or every frame
_NAME_RE = re.compile(r"^(?P<name>.*_label_(?:[A-Z]\d?|0)(?:-(?:[A-Z]\d?|0))*)")
_EXT_RE = re.compile(r"\.[A-Za-z0-9]{1,5}$")


class XDDetectionError(InvalidInput):
    """The scores and the ground truth do not describe the same videos; the message says how."""


def video_name(key: str) -> str:
    """The XD-Violence video name of a cache key, list entry or annotation name: the file
    name through its ``_label_<codes>``, without folders, crop suffix or extension."""
    base = re.split(r"[\\/]", key.strip())[-1]
    m = _NAME_RE.match(base)
    return m.group("name") if m else _EXT_RE.sub("", base)


def read_annotations(path: str | Path) -> dict[str, tuple[tuple[int, int], ...]]:
    """``<video> s1 e1 [s2 e2 ...]`` per line -> {video name: ((s1, e1), ...)}. Names are
    normalised (some official lines carry ``.mp4``); a repeated video, an odd number of
    indices or a segment with ``e <= s`` is an error naming the line."""
    path = Path(path)
    if not path.is_file():
        raise MissingInput(f"no annotations file at {path}; pass --annotations PATH (XD-Violence's "
                                "annotations.txt)")
    out: dict[str, tuple[tuple[int, int], ...]] = {}
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise XDDetectionError(f"{path} cannot be read as an annotations text file ({exc}); pass --annotations PATH "
                               "(XD-Violence's annotations.txt)") from None
    for n, line in enumerate(text.splitlines(), 1):
        parts = line.split()
        if not parts or parts[0].startswith("#"):
            continue
        name, nums = video_name(parts[0]), parts[1:]
        if len(nums) % 2:
            raise XDDetectionError(f"{path}:{n}: {len(nums)} frame indices for {name}; expected start/end pairs")
        try:
            idx = [int(x) for x in nums]
        except ValueError:
            raise XDDetectionError(f"{path}:{n}: frame indices must be integers, got {nums}") from None
        segs = tuple(zip(idx[0::2], idx[1::2]))
        bad = [s for s in segs if not 0 <= s[0] < s[1]]
        if bad:
            raise XDDetectionError(f"{path}:{n}: segments {bad} of {name} are not 0 <= start < end")
        if name in out:
            raise XDDetectionError(f"{path}:{n}: {name} is annotated twice")
        out[name] = segs
    return out


def frame_count(duration: float, fps: float = DEFAULT_FPS) -> int:
    """Frames of a clip of ``duration`` seconds at ``fps`` (at least 1)."""
    return max(1, int(round(float(duration) * fps)))


def frame_ground_truth(segments: Sequence[tuple[int, int]], n_frames: int) -> np.ndarray:
    """0/1 per frame: 1 on ``[s, e)`` of every segment, cut at ``n_frames``."""
    gt = np.zeros(n_frames, dtype=np.uint8)
    for s, e in segments:
        gt[s:e] = 1
    return gt


def official_frame_count(n_frames: int, gt_frames: str = "official") -> int:
    """Frames of a video's ground-truth vector: ``16 * floor((N - 1) / 16)`` as XDVioDet's
    ``make_gt.py`` (a video too short for one snippet keeps its ``N``), or ``N`` for "all"."""
    if gt_frames not in GT_FRAMES:
        raise InvalidInput(f"unknown ground-truth length {gt_frames!r}; choose one of {GT_FRAMES}")
    if gt_frames == "all":
        return n_frames
    official = SNIPPET_FRAMES * ((n_frames - 1) // SNIPPET_FRAMES)
    return official if official > 0 else n_frames


def frame_step_index(n_frames: int, n_steps: int, layout: StepLayout | None = None,
                     fps: float = DEFAULT_FPS) -> np.ndarray:
    """The step each of ``n_frames`` frames takes its score from (see module doc); without
    a layout, fixed steps (frame ``f`` takes step ``floor(f * T / n_frames)``)."""
    layout = layout if layout is not None else StepLayout(steps=max(1, n_steps))
    return layout.frame_steps(n_frames, fps, n_steps)  # fixed layouts: over the clip's own T


def expand_to_frames(step_scores: np.ndarray, n_frames: int, layout: StepLayout | None = None,
                     fps: float = DEFAULT_FPS) -> np.ndarray:
    """Per-frame scores by :func:`frame_step_index` (fixed steps without a layout)."""
    step_scores = _step_vector(step_scores)
    return step_scores[frame_step_index(n_frames, len(step_scores), layout, fps)]


def _step_vector(step_scores: np.ndarray) -> np.ndarray:
    """``step_scores`` as a finite, non-empty float64 vector, or a ValueError saying why not."""
    step_scores = np.asarray(step_scores, dtype=np.float64)
    if step_scores.ndim != 1 or len(step_scores) == 0:
        raise ValueError(f"expected a non-empty vector of step scores, got shape {step_scores.shape}")
    if not np.all(np.isfinite(step_scores)):
        raise ValueError("step scores hold NaN or inf; fill masked steps before expanding")
    return step_scores


def oracle_frame_scores(gt: np.ndarray, frame_steps: np.ndarray, n_steps: int) -> np.ndarray:
    """A perfect predictor of each step's violent fraction, per frame: every step scores
    the mean of ``gt`` over its frames (``frame_steps``: each frame's step), expanded back."""
    count = np.bincount(frame_steps, minlength=n_steps)
    violent = np.bincount(frame_steps, weights=np.asarray(gt, dtype=np.float64), minlength=n_steps)
    return (violent / np.maximum(count, 1))[frame_steps]


def frame_ap(gt: np.ndarray, scores: np.ndarray) -> tuple[float, float]:
    """(official PR-AUC, ``average_precision_score``) of one concatenated frame vector."""
    gt = np.asarray(gt)
    if len(gt) != len(scores):
        raise XDDetectionError(f"{len(gt)} ground-truth frames but {len(scores)} scores")
    if gt.min(initial=0) == gt.max(initial=0):
        raise XDDetectionError("the ground truth holds only one class; AP needs violent and non-violent frames")
    precision, recall, _ = precision_recall_curve(gt, scores)
    return float(auc(recall, precision)), float(average_precision_score(gt, scores))


def frame_level_ap(gt_by_video: Mapping[str, np.ndarray], scores_by_video: Mapping[str, np.ndarray]) -> dict[str, Any]:
    """Frame-level AP over videos keyed by name. Both sides must name the same videos with
    equal frame counts; they are concatenated in sorted name order, whatever order the
    mappings were built in."""
    only_gt = sorted(set(gt_by_video) - set(scores_by_video))
    only_scores = sorted(set(scores_by_video) - set(gt_by_video))
    if only_gt or only_scores:
        raise XDDetectionError(
            f"scores and ground truth name different videos: {len(only_scores)} scored without ground truth "
            f"(e.g. {only_scores[:3]}), {len(only_gt)} with ground truth but no score (e.g. {only_gt[:3]}); "
            "align by video name (check the test list, the cache keys and annotations.txt)")
    names = sorted(gt_by_video)
    bad = [(n, len(gt_by_video[n]), len(scores_by_video[n])) for n in names
           if len(gt_by_video[n]) != len(scores_by_video[n])]
    if bad:
        raise XDDetectionError(f"{len(bad)} videos have unequal frame counts (name, gt, scores), e.g. {bad[:3]}")
    gt = np.concatenate([np.asarray(gt_by_video[n]) for n in names])
    scores = np.concatenate([np.asarray(scores_by_video[n], dtype=np.float64) for n in names])
    pr_auc, ap = frame_ap(gt, scores)
    return {"ap_frame_pr_auc": pr_auc, "ap_frame_average_precision": ap,
            "auc_frame_roc": float(roc_auc_score(gt, scores)), "n_videos": len(names),
            "n_frames": int(len(gt)), "n_violent_frames": int(gt.sum())}


@dataclass(frozen=True)
class VideoScores:
    """One test video's per-step anomaly scores and what frames they stand for."""

    name: str
    step_scores: np.ndarray   # [T], finite
    duration: float           # seconds
    violent: bool             # video-level label


def frame_arrays(videos: Sequence[VideoScores], annotations: Mapping[str, Sequence[tuple[int, int]]],
                 fps: float = DEFAULT_FPS, gt_frames: str = "official", layout: StepLayout | None = None,
                 oracle: dict[str, np.ndarray] | None = None,
                 ) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray], dict[str, Any]]:
    """Frame-level ground truth and scores per video name, and what was noticed on the way.

    ``gt_frames`` "official" (default) gives each video the official ground-truth length
    ``16 * floor((N - 1) / 16)`` (see :func:`official_frame_count`), "all" every frame.
    Step scores reach frames by ``layout`` (see :func:`frame_step_index`; None: fixed
    steps). With ``oracle`` (a dict to fill), the layout's perfect per-step scores
    (:func:`oracle_frame_scores`) are put there per video.

    Errors (the test set and the annotations disagree): a name twice, an annotated video
    labelled normal, a violent video without annotation. Annotated videos absent from the
    scores (videos missing from the download or failed extraction) are counted and left
    out, as the scores cannot cover them."""
    names = [v.name for v in videos]
    dupes = sorted(n for n, c in Counter(names).items() if c > 1)
    if dupes:
        raise XDDetectionError(f"videos scored twice: {dupes[:3]}; a test set must hold each video once")
    normal_annotated = sorted(v.name for v in videos if not v.violent and v.name in annotations)
    if normal_annotated:
        raise XDDetectionError(f"{len(normal_annotated)} videos labelled normal have violent segments in the "
                               f"annotations (e.g. {normal_annotated[:3]}); check the labels and the annotations file")
    unannotated = sorted(v.name for v in videos if v.violent and v.name not in annotations)
    if unannotated:
        raise XDDetectionError(f"{len(unannotated)} violent test videos have no line in the annotations (e.g. "
                               f"{unannotated[:3]}); pass the annotations.txt that belongs to this test list")
    gt, scores = {}, {}
    beyond = 0
    for v in videos:
        n_all = frame_count(v.duration, fps)
        n = official_frame_count(n_all, gt_frames)
        segs = annotations.get(v.name, ())
        beyond += sum(max(0, e - max(s, n_all)) for s, e in segs)
        gt[v.name] = frame_ground_truth(segs, n)
        step_scores = _step_vector(v.step_scores)
        steps = frame_step_index(n_all, len(step_scores), layout, fps)[:n]  # once, for scores and oracle
        scores[v.name] = step_scores[steps]
        if oracle is not None:
            oracle[v.name] = oracle_frame_scores(gt[v.name], steps, len(v.step_scores))
    scored = set(names)
    not_scored = sorted(n for n in annotations if n not in scored)
    if not_scored:
        logger.warning("%d annotated videos have no score (not extracted or not in the test split), e.g. %s",
                       len(not_scored), not_scored[:3])
    if beyond:
        logger.warning("%d annotated frames lie past the end of their videos at %g fps (cut); if many, the fps "
                       "is wrong", beyond, fps)
    info = {"fps": fps, "gt_frames": gt_frames, "annotated_not_scored": len(not_scored),
            "annotated_frames_past_end": int(beyond)}
    return gt, scores, info


def oracle_ap(gt_by_video: Mapping[str, np.ndarray], oracle_by_video: Mapping[str, np.ndarray]) -> dict[str, float]:
    """``ap_frame_oracle`` (official PR-AUC) and its two forms, from :func:`frame_arrays`'s
    ``oracle`` scores."""
    ap = frame_level_ap(gt_by_video, oracle_by_video)
    return {"ap_frame_oracle": ap["ap_frame_pr_auc"], "ap_frame_oracle_pr_auc": ap["ap_frame_pr_auc"],
            "ap_frame_oracle_average_precision": ap["ap_frame_average_precision"]}


def step_anomaly(pred: Prediction, class_names: Sequence[str], normal: str = NORMAL) -> np.ndarray:
    """``1 - p(normal)`` per step ``[N, T]``; masked steps (and the padding of clips
    shorter than the longest) take the clip's score."""
    normal = normal or NORMAL
    if normal not in class_names:
        raise XDDetectionError(f"detection needs a run whose classes include {normal!r}, got {list(class_names)}; "
                               "train with --task xd-detection (or on the 7-class cache)")
    k = list(class_names).index(normal)
    step = 1.0 - pred.step_probs[..., k]
    clip = 1.0 - pred.clip_probs[:, k]
    return np.where(pred.step_mask, step, clip[:, None])


def _annotations_from_split(split: Split) -> str | None:
    """The annotations path recorded by extraction in the official split file, if any. A
    split file that is there but damaged is an error naming it (not "nothing recorded")."""
    file = split.info.get("file")
    if not file or not Path(file).is_file():
        return None
    fix = "pass --annotations PATH (XD-Violence's annotations.txt), or extract again to rewrite the split file"
    try:
        doc = json.loads(Path(file).read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise XDDetectionError(f"the official split {file} is damaged ({exc}); {fix}") from None
    info = doc.get("info") if isinstance(doc, dict) else None
    if not isinstance(doc, dict) or not isinstance(info or {}, dict):
        raise XDDetectionError(f"the official split {file} is not a split file (no 'info' object); {fix}")
    annotations = (info or {}).get("annotations")
    if annotations is not None and not isinstance(annotations, str):
        raise XDDetectionError(f"the official split {file} records annotations as {annotations!r}, not a path; {fix}")
    return annotations


def evaluate_detection(rundir: str | Path, annotations: str | Path | None = None, fps: float = DEFAULT_FPS,
                       cache: str | Path | None = None, data: CacheData | None = None, gt_frames: str = "official",
                       write: bool = True, normal_class: str | None = None) -> dict[str, Any]:
    """Frame-level AP of a run on its test split, with the ceiling of its step layout
    (``ap_frame_oracle``); merged into the run's ``metrics.json``. Every test clip is
    scored at its full length; step scores reach frames by the run's layout
    (``StepLayout.from_attrs`` of its cache identity).

    ``annotations`` defaults to the file recorded in the official split file the run was
    trained with (extraction records ``<lists>/annotations.txt`` there). ``normal_class``
    (default: the run's own) is the class whose ``1 - p`` is the anomaly score. A test
    video without the run's stream (an audio run, a video without audio) is scored as
    ``evaluate_run`` scores it, with the training class prior: one constant score over its
    frames, so that runs of every modality are measured on the same videos
    (``n_without_stream`` counts them)."""
    rundir = Path(rundir)
    run = load_test_split(rundir, cache, data)
    data, rows, test = run.data, run.rows, run.clips
    annotations = annotations or _annotations_from_split(run.split)
    if annotations is None:
        raise MissingInput("no annotations file given or recorded with the split; pass --annotations PATH "
                                "(XD-Violence's annotations.txt)")
    if len(rows) == 0:
        raise XDDetectionError(f"{rundir}: no test clip is usable in this cache")
    normal_name = normal_class or run.config.train.normal_class or NORMAL
    if normal_name not in data.class_names:
        raise XDDetectionError(f"--normal-class {normal_name!r} is not a class of {rundir} ({list(data.class_names)}); "
                               "name one of them")
    pred = predict(run.model, test)
    scores = step_anomaly(pred, data.class_names, normal_name)
    with open_cache(data.path) as reader:
        duration = dict(zip(reader.read("key").tolist(), reader.read("duration").tolist()))
        imported = "imported" in reader.attrs
    asked = gt_frames
    if imported and gt_frames == "official":
        # Released snippet features (cli.py import-features) know T snippets, not the video's
        # frame count N: their clip is 16 T frames long, and the official ground truth was
        # made from those very snippet counts (16 T frames), which "all" gives exactly.
        gt_frames = "all"
    normal = list(data.class_names).index(normal_name)
    keys = data.keys[rows].tolist()
    videos = [VideoScores(video_name(k), scores[i, :pred.clip_steps(i)], float(duration[k]),
                          int(test.label[i]) != normal) for i, k in enumerate(keys)]
    if len(run.without_stream):  # scored with the training prior, as evaluate_run scores them
        prior_score = 1.0 - float(training_prior(RunDir(rundir), run)[normal])
        lengths = data.lengths
        videos += [VideoScores(video_name(str(data.keys[r])), np.full(max(1, int(lengths[r])), prior_score),
                               float(duration[str(data.keys[r])]), int(data.clips.label[r]) != normal)
                   for r in run.without_stream.tolist()]
    layout = run.config.layout
    oracle: dict[str, np.ndarray] = {}
    gt, frame_scores, info = frame_arrays(videos, read_annotations(annotations), fps, gt_frames, layout, oracle)
    result = frame_level_ap(gt, frame_scores)
    ceiling = oracle_ap(gt, oracle)
    if asked != gt_frames:
        info["gt_frames"] = f"{asked} (16 T frames of the imported snippets)"
    result = {**result, **ceiling, **info, "layout": layout.describe(), "annotations": str(annotations),
              "normal_class": normal_name, "n_without_stream": int(len(run.without_stream))}
    metrics = {"detection": result, "ap_frame_pr_auc": result["ap_frame_pr_auc"],
               "ap_frame_average_precision": result["ap_frame_average_precision"], **ceiling}
    if write:
        RunDir(rundir).update_metrics(metrics)
    logger.info("%s: frame-level AP %.4f (PR-AUC, official) / %.4f (average precision) over %d videos, %d frames; "
                "the layout's ceiling %.4f", rundir, result["ap_frame_pr_auc"], result["ap_frame_average_precision"],
                result["n_videos"], result["n_frames"], result["ap_frame_oracle"])
    return metrics


__all__ = ["DEFAULT_FPS", "GT_FRAMES", "SNIPPET_FRAMES", "XDDetectionError", "VideoScores", "video_name",
           "read_annotations", "frame_count", "official_frame_count", "frame_ground_truth", "frame_step_index",
           "expand_to_frames", "oracle_frame_scores", "oracle_ap", "frame_ap", "frame_level_ap", "frame_arrays",
           "step_anomaly", "evaluate_detection"]
