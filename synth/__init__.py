"""Synthetic audio-visual benchmark: real encoded media in VAAR's layout.

``generate(out, SynthConfig(...))`` writes ``out/<class>/clip_NNNN.<ext>``,
``out/synth_meta.json`` (per-clip facts and event times) and ``out/groups.tsv``
(key -> source video). docs/synthetic.md describes the classes and the design.
"""

from synth.bench_clip import write_bench_clip
from synth.generator import GROUPS_FILE, META_FILE, SynthClip, SynthConfig, generate, plan_clips, read_meta
from synth.scenes import CLASSES, PAIRS, RECIPES

__all__ = [
    "CLASSES", "PAIRS", "RECIPES", "GROUPS_FILE", "META_FILE",
    "SynthClip", "SynthConfig", "generate", "plan_clips", "read_meta", "write_bench_clip",
]
