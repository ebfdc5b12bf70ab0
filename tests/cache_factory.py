"""Builds small caches with known content through the real writer, for tests of the
cache contract and of stage 2 (which must never need a video or a backbone)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from cache_schema import SAMPLE_RATE, BackboneInfo, CacheConfig, CacheWriter, ClipEntry, ClipRecord


def make_config(dv: int = 8, da: int = 6, steps: int = 10, classes: tuple[str, ...] = ("normal", "crash"),
                feature_dtype: str = "float32", video_name: str = "tiny", video_checksum: str = "v" * 8,
                audio_preprocessing: dict | None = None) -> CacheConfig:
    return CacheConfig(
        steps=steps,
        sample_rate=SAMPLE_RATE,
        video=BackboneInfo(video_name, "test-video", video_checksum, False, dv, {"input_size": [3, 8, 8]}),
        audio=BackboneInfo("tiny", "test-audio", "a" * 8, False, da,
                           {"sample_rate": SAMPLE_RATE} if audio_preprocessing is None else audio_preprocessing),
        class_names=classes,
        feature_dtype=feature_dtype,
    )


def ok_record(key: str, config: CacheConfig, rng: np.random.Generator, video=None, audio=None,
              video_mask=None, audio_mask=None, duration: float = 5.0) -> ClipRecord:
    t = config.steps
    return ClipRecord(
        key=key,
        status="ok",
        video=rng.standard_normal((t, config.video.dim)).astype(np.float32) if video is None else video,
        audio=rng.standard_normal((t, config.audio.dim)).astype(np.float32) if audio is None else audio,
        video_mask=np.ones(t, bool) if video_mask is None else video_mask,
        audio_mask=np.ones(t, bool) if audio_mask is None else audio_mask,
        duration=duration,
        step_time=(np.arange(t) + 0.5) * duration / t,
    )


def write_cache(path: Path, config: CacheConfig, n: int, seed: int = 0, fmt: str | None = None,
                chunk_clips: int = 4, labels: np.ndarray | None = None) -> list[str]:
    """A cache of ``n`` ok clips with random features and labels cycling over the classes."""
    rng = np.random.default_rng(seed)
    keys = [f"{config.class_names[i % len(config.class_names)]}/clip_{i:04d}.mp4" for i in range(n)]
    labels = np.arange(n) % len(config.class_names) if labels is None else labels
    entries = [ClipEntry(k, int(labels[i]), k) for i, k in enumerate(keys)]
    with CacheWriter.open(path, config, entries, fmt=fmt, chunk_clips=chunk_clips) as w:
        w.write([ok_record(k, config, rng) for k in keys])
        w.finish()
    return keys


def write_class_cache(path: Path, config: CacheConfig, n: int, seed: int = 0, separation: float = 1.5,
                      clips_per_group: int = 1, no_audio: tuple[int, ...] = (), no_video: tuple[int, ...] = (),
                      errors: tuple[int, ...] = (), fmt: str | None = None,
                      present: tuple[int, ...] | None = None, scale: float = 1.0, offset: float = 0.0) -> list[str]:
    """A learnable cache for stage-2 tests: clip ``i`` has label ``i % C`` (with
    ``present``: ``present[i % len(present)]``, the other classes get no clip) and features
    around a per-class prototype (``separation`` apart, unit noise) in both streams, then
    ``* scale + offset`` (the same clips on another scale, as real backbones give them).
    Consecutive clips of a class share a group (``clips_per_group`` of them, keys
    ``<class>/src<g>_<i>.mp4``, so the source id can also be recovered by a pattern). Rows
    in ``no_audio`` / ``no_video`` lack that stream; rows in ``errors`` failed extraction."""
    rng = np.random.default_rng(seed)
    c = len(config.class_names)
    t = config.steps
    proto_v = rng.standard_normal((c, config.video.dim)) * separation
    proto_a = rng.standard_normal((c, config.audio.dim)) * separation
    keys, entries, records = [], [], []
    used = tuple(range(c)) if present is None else present
    for i in range(n):
        y = used[i % len(used)]
        g = (i // len(used)) // clips_per_group
        key = f"{config.class_names[y]}/src{g:03d}_{i:04d}.mp4"
        keys.append(key)
        entries.append(ClipEntry(key, y, f"{config.class_names[y]}/src{g:03d}"))
        if i in errors:
            records.append(ClipRecord.failed(key, "synthetic failure"))
            continue
        video = ((proto_v[y] + rng.standard_normal((t, config.video.dim))) * scale + offset).astype(np.float32)
        audio = ((proto_a[y] + rng.standard_normal((t, config.audio.dim))) * scale + offset).astype(np.float32)
        records.append(ok_record(key, config, rng, video=video, audio=audio,
                                 video_mask=np.zeros(t, bool) if i in no_video else None,
                                 audio_mask=np.zeros(t, bool) if i in no_audio else None))
    with CacheWriter.open(path, config, entries, fmt=fmt, chunk_clips=16) as w:
        w.write(records)
        w.finish()
    return keys


def make_grid_config(dv: int = 8, da: int = 6, step_seconds: float = 0.5, frames_per_step: int = 1,
                     classes: tuple[str, ...] = ("normal", "crash"), feature_dtype: str = "float32") -> CacheConfig:
    """A time-grid (ragged, schema v2) configuration of the tiny test backbones."""
    base = make_config(dv=dv, da=da, classes=classes, feature_dtype=feature_dtype)
    return CacheConfig(steps=0, sample_rate=base.sample_rate, video=base.video, audio=base.audio,
                       class_names=classes, feature_dtype=feature_dtype, step_seconds=step_seconds,
                       frames_per_step=frames_per_step)


def grid_duration(config: CacheConfig, count: int) -> float:
    """A duration that the grid cuts into exactly ``count`` steps (the last one half long)."""
    return (count - 0.5) * config.step_seconds


def ragged_record(key: str, config: CacheConfig, rng: np.random.Generator, duration: float,
                  video=None, audio=None, video_mask=None, audio_mask=None) -> ClipRecord:
    """An ok clip on the config's time grid: ``layout.count(duration)`` steps at the
    centres of its segments, random features unless given."""
    bounds = config.layout.segments(duration)
    t = len(bounds)
    return ClipRecord(
        key=key, status="ok",
        video=rng.standard_normal((t, config.video.dim)).astype(np.float32) if video is None else video,
        audio=rng.standard_normal((t, config.audio.dim)).astype(np.float32) if audio is None else audio,
        video_mask=np.ones(t, bool) if video_mask is None else video_mask,
        audio_mask=np.ones(t, bool) if audio_mask is None else audio_mask,
        duration=duration, step_time=bounds.mean(axis=1),
    )


def make_ragged_cache(path: Path, counts, labels=None, *, config: CacheConfig | None = None,
                      durations=None, keys=None, groups=None, errors=(), fmt: str | None = None,
                      chunk_clips: int = 4, step_chunk: int = 16, seed: int = 0) -> Path:
    """A ragged (schema v2) cache at ``path`` written through the real writer: clip ``i``
    has ``counts[i]`` steps of random features (both modalities present), label
    ``labels[i]`` (default ``i % classes``), duration ``durations[i]`` (default one the
    grid cuts into ``counts[i]`` steps; a given one must agree with it), key ``keys[i]``
    (default ``<class>/clip_<i>.mp4``) and group ``groups[i]`` (default its key). Rows in
    ``errors`` are failed clips (no steps). Returns ``path``."""
    config = config or make_grid_config()
    counts = [int(c) for c in counts]
    n = len(counts)
    labels = [i % len(config.class_names) for i in range(n)] if labels is None else [int(x) for x in labels]
    durations = [grid_duration(config, c) for c in counts] if durations is None else [float(d) for d in durations]
    keys = [f"{config.class_names[max(0, labels[i])]}/clip_{i:04d}.mp4" for i in range(n)] if keys is None else list(keys)
    groups = list(keys) if groups is None else list(groups)
    for i, (c, d) in enumerate(zip(counts, durations)):
        if i not in errors and config.layout.count(d) != c:
            raise ValueError(f"clip {i}: {config.layout.describe()} cut {d} s into {config.layout.count(d)} steps, "
                             f"not {c}")
    rng = np.random.default_rng(seed)
    entries = [ClipEntry(k, labels[i], groups[i]) for i, k in enumerate(keys)]
    records = [ClipRecord.failed(k, "synthetic failure") if i in errors else ragged_record(k, config, rng, durations[i])
               for i, k in enumerate(keys)]
    with CacheWriter.open(path, config, entries, fmt=fmt, chunk_clips=chunk_clips, step_chunk=step_chunk) as w:
        w.write(records)
        w.finish()
    return Path(path)
