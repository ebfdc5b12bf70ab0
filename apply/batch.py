"""A batch of files through one predictor: the error policy of ``cli.py predict``.

One file's failure is that file's entry, never the batch's: an unusable video becomes its
``error`` (``Predictor.predict``), a timeline figure that cannot be written becomes its
``plot_error`` while its prediction stands, and the next file is predicted. Output names
are fixed before any work starts (``timeline_paths``), one per input, so that an unusable
``--plot`` is refused at once and two videos never write the same figure.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence
from pathlib import Path

from cache_schema import AvarError

from .media_figures import plot_timeline
from .predictor import PredictConfig, Predictor
from .results import VideoPrediction

logger = logging.getLogger(__name__)


def predict_batch(predictor: Predictor, videos: Sequence[str | Path], config: PredictConfig = PredictConfig(),
                  plots: Sequence[Path] | None = None) -> Iterator[VideoPrediction]:
    """Predict each of ``videos`` in order, drawing its timeline to ``plots[i]`` when given
    (``timeline_paths``; ``config.thumbnails`` must then be on for the frame strip).

    Expected failures of one file (``AvarError``) and of writing its figure (``OSError``:
    a full disk, a name the file system refuses, a folder that became unwritable) are
    recorded on that file's prediction; anything else is a bug and propagates. The frames
    kept for the plot are dropped once it is drawn, so a long batch holds no images."""
    if plots is not None and len(plots) != len(videos):
        raise ValueError(f"{len(plots)} plot paths for {len(videos)} videos")
    for i, video in enumerate(videos):
        pred = predictor.predict(video, config)
        target = plots[i] if plots is not None else None
        if target is not None and pred.error is None:
            try:
                pred.plot = str(plot_timeline(pred, target))
            except (AvarError, OSError) as exc:
                pred.plot_error = f"timeline {target}: {exc}"
                logger.warning("%s: %s", video, pred.plot_error)
        pred.thumbnails = []
        yield pred


__all__ = ["predict_batch"]
