"""Applying a trained run to new media: the last stage of the data flow.

media -> ``extract`` -> cache (``cache_schema``) -> ``temporal`` -> runs -> ``apply``.

A run directory names the backbones its cache came from; ``load_predictor`` loads them
again, checks that they reproduce the run's features, and returns a :class:`Predictor`
that scores raw files (whole, or in sliding windows over any length). Both stages meet
here at run time, which is why this is a package of its own: nothing in ``temporal``
imports ``extract``.

    predictor = load_predictor("runs/demo", PredictConfig(window=10, hop=5))
    for pred in predictor.predict_many(["cam.mp4"]):
        print(format_table([pred]))
"""

from .attribution import BOTH, HEARD, SEEN, TRIGGERS, trigger_of
from .batch import predict_batch
from .loading import BackboneMismatch, load_predictor
from .media_figures import (FiguresResult, all_figures, check_figure_path, plot_clip_strips, plot_timeline,
                            timeline_figure, timeline_paths)
from .predictor import PredictConfig, Predictor
from .report import format_table, to_json_lines
from .results import ScoredClip, Segment, VideoPrediction, WindowResult

__all__ = [
    "BOTH", "HEARD", "SEEN", "TRIGGERS", "trigger_of",
    "BackboneMismatch", "FiguresResult", "PredictConfig", "Predictor", "ScoredClip", "Segment", "VideoPrediction",
    "WindowResult", "all_figures", "check_figure_path", "format_table", "load_predictor", "plot_clip_strips",
    "plot_timeline", "predict_batch", "timeline_figure", "timeline_paths", "to_json_lines",
]
