"""Stage 2: temporal heads trained on the feature cache only.

Nothing here imports ``extract``: stage 2 never opens a video or loads a backbone; it
reads the cache through ``cache_schema``.
"""

from .data import CacheData, RaggedClips, load_cache
from .evaluate import evaluate_run, load_run, predict
from .figures import run_figures
from .heads import BASELINE_HEAD, PAPER_HEADS, TABLE_HEADS, create_head, describe_heads, list_heads
from .rundir import RunConfig, RunDir, RunError
from .split import SplitConfig, default_split_path, load_or_create_split
from .timeline import Segment, clip_segments, merged_timeline, score_peak, window_segments
from .train import RunResult, TrainConfig

# ``train`` itself is imported from ``temporal.train``: re-exporting it here would shadow
# the submodule of the same name (``import temporal.train`` would give the function).
__all__ = ["CacheData", "RaggedClips", "load_cache", "evaluate_run", "load_run", "predict", "BASELINE_HEAD", "PAPER_HEADS", "TABLE_HEADS", "create_head",
           "describe_heads", "list_heads", "RunConfig", "RunDir", "RunError", "SplitConfig", "default_split_path",
           "load_or_create_split", "RunResult", "TrainConfig", "run_figures", "Segment", "clip_segments",
           "merged_timeline", "score_peak", "window_segments"]
