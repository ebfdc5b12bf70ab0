"""A tiny fused run that hears one kind of anomaly and sees another (tests of heard / seen
/ both): real media from ``tests.media_factory.write_clip``, where

* normal: a dim grey picture and a 440 Hz tone;
* an anomaly that is only *heard*: the same picture, a 2.5 kHz tone;
* an anomaly that is only *seen*: a bright picture, the 440 Hz tone;

extracted with the ``tiny`` backbones and learnt by the ``pool`` head (per-step MLP) with
modality dropout, so that the head has met clips with one stream masked (what the
evidence passes present to it). Built once per session (a few seconds).
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable

from tests.media_factory import write_clip

CLASSES = ("anomaly", "normal")
DIM, BRIGHT = 0.25, 0.9
CALM_HZ, ALARM_HZ = 440.0, 2500.0
CLIP_S = 2.0


def cue(kind: str, start: float = 0.0, end: float = 1e9) -> tuple[Callable[[float], float], Callable[[float], float]]:
    """(brightness(t), tone_hz(t)) of a clip whose ``kind`` cue ("heard", "seen", "none")
    lasts from ``start`` to ``end``."""
    def during(t: float) -> bool:
        return start <= t < end

    brightness = (lambda t: BRIGHT if during(t) else DIM) if kind == "seen" else (lambda t: DIM)
    tone = (lambda t: ALARM_HZ if during(t) else CALM_HZ) if kind == "heard" else (lambda t: CALM_HZ)
    return brightness, tone


def write_cue_clip(path: Path, kind: str, duration: float = CLIP_S, start: float = 0.0, end: float = 1e9) -> Path:
    brightness, tone = cue(kind, start, end)
    return write_clip(path, duration=duration, fps=8, size=(64, 48), brightness=brightness, tone_hz=tone,
                      sample_rate=16000, gop=8)


def build_attribution_run(root: Path, per_kind: int = 10, epochs: int = 40) -> Path:
    """The run under ``root/run`` (built once)."""
    run = root / "run"
    if (run / "metrics.json").is_file():
        return run
    from extract.datasets import Manifest, ManifestRow
    from extract.pipeline import ExtractConfig, run_extract
    from temporal.train import TrainConfig, train

    rows = []
    for kind, label in (("heard", 0), ("seen", 0), ("none", 1)):
        for i in range(per_kind if kind != "none" else 2 * per_kind):
            path = write_cue_clip(root / "media" / kind / f"clip_{i:02d}.mp4", kind)
            rows.append(ManifestRow(f"{kind}/{path.name}", path, label, f"{kind}{i}"))
    manifest = Manifest("attribution", root / "media", CLASSES, tuple(rows))
    run_extract(manifest, root / "cache.zarr", ExtractConfig(steps=4, video_model="tiny", audio_model="tiny",
                                                              device="cpu", workers=0, progress=False))
    train(root / "cache.zarr", run, TrainConfig(head="pool", epochs=epochs, modality_dropout=0.5, progress=False))
    return run
