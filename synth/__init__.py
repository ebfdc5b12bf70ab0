"""Synthetic audio-visual benchmark: real encoded media in VAAR's layout.

``generate(out, SynthConfig(...))`` writes ``out/<class>/clip_NNNN.<ext>``,
``out/synth_meta.json`` (per-clip facts and event times) and ``out/groups.tsv``
(key -> source video). docs/synthetic.md describes the classes and the design.

``write_stream(target, StreamPlan(...))`` writes a live MPEG-TS stream in real time (a pipe,
standard output, UDP on loopback, a file) with a violent event, a stall and a resolution
change at known media times, for live mode's tests and demos (``synth.live_stream``;
docs/synthetic.md, "Live streams"); ``LoopingCamera(clip)`` serves a clip's packets in a
loop on loopback TCP, in real time, for as long as a long run needs (``synth.loop_camera``).
"""

from synth.bench_clip import write_bench_clip
from synth.generator import GROUPS_FILE, META_FILE, SynthClip, SynthConfig, generate, plan_clips, read_meta
from synth.live_stream import (StreamEvent, StreamPause, StreamPlan, StreamResize, StreamResult, stream_truth,
                               write_stream)
from synth.loop_camera import LoopingCamera
from synth.scenes import CLASSES, PAIRS, RECIPES

__all__ = [
    "CLASSES", "PAIRS", "RECIPES", "GROUPS_FILE", "META_FILE",
    "SynthClip", "SynthConfig", "generate", "plan_clips", "read_meta", "write_bench_clip",
    "StreamEvent", "StreamPause", "StreamPlan", "StreamResize", "StreamResult", "stream_truth", "write_stream",
    "LoopingCamera",
]
