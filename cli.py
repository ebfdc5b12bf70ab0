"""The one command-line entry. It parses options and calls library functions; nothing
else happens here. Imports are local to each command so that ``--help`` is instant."""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path

import click

VIDEO_DEFAULT = "mobilevit_s.cvnets_in1k"
AUDIO_DEFAULT = "facebook/wav2vec2-base"
BACKBONE_PRESETS = {
    "pretrained": (VIDEO_DEFAULT, AUDIO_DEFAULT),
    "random": ("random", "random"),
    "tiny": ("tiny", "tiny"),
}


def _fail(exc: Exception) -> None:
    click.echo(f"error: {exc}", err=True)
    sys.exit(2)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("-v", "--verbose", is_flag=True, help="Debug logging.")
def main(verbose: bool) -> None:
    """AVAR-Net: audio-visual anomaly recognition on a cached-feature pipeline.

    media -> extract (frozen MobileViT + Wav2Vec2) -> cache -> temporal heads.
    """
    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    for noisy in ("httpx", "huggingface_hub", "urllib3", "filelock"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


@main.command()
@click.option("--out", required=True, type=click.Path(path_type=Path), help="Folder to write DIR/<class>/<clip>.<ext>.")
@click.option("--clips-per-class", default=30, show_default=True, type=click.IntRange(1))
@click.option("--seed", default=0, show_default=True, type=int)
def synth(out: Path, clips_per_class: int, seed: int) -> None:
    """Generate the synthetic audio-visual benchmark (real encoded media)."""
    from synth import SynthConfig, generate

    clips = generate(out, SynthConfig(clips_per_class=clips_per_class, seed=seed), progress=True)
    click.echo(f"wrote {len(clips)} clips to {out}")


@main.command()
@click.option("--dataset", type=click.Choice(["synth", "vaar", "folder"]), required=True)
@click.option("--root", required=True, type=click.Path(path_type=Path), help="Dataset root folder.")
@click.option("--out", required=True, type=click.Path(path_type=Path), help="Cache path (.zarr directory or .h5 file).")
@click.option("--steps", default=10, show_default=True, type=click.IntRange(1))
@click.option("--format", "fmt", type=click.Choice(["zarr", "hdf5"]), default=None,
              help="Cache format [default: from the --out suffix, zarr unless .h5/.hdf5].")
@click.option("--backbones", type=click.Choice(sorted(BACKBONE_PRESETS)), default="pretrained", show_default=True,
              help="Preset for both models; --video-model/--audio-model override it.")
@click.option("--video-model", default=None, help=f"timm name, checkpoint file or folder, or tiny/random [{VIDEO_DEFAULT}].")
@click.option("--audio-model", default=None, help=f"HF audio model id or folder, or tiny/random [{AUDIO_DEFAULT}].")
@click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]), default="auto", show_default=True)
@click.option("--precision", type=click.Choice(["fp32", "bf16", "fp16"]), default="fp32", show_default=True)
@click.option("--batch-size", default=8, show_default=True, type=click.IntRange(1), help="Clips per backbone batch.")
@click.option("--workers", default=2, show_default=True, type=click.IntRange(0), help="Decoding processes.")
@click.option("--clip-timeout", default=300.0, show_default=True, type=float, help="Seconds before a clip is given up.")
@click.option("--feature-dtype", type=click.Choice(["float16", "float32"]), default="float16", show_default=True)
@click.option("--retry-errors", is_flag=True, help="Also redo clips that failed in an earlier run.")
def extract(dataset: str, root: Path, out: Path, steps: int, fmt: str | None, backbones: str,
            video_model: str | None, audio_model: str | None, device: str, precision: str, batch_size: int,
            workers: int, clip_timeout: float, feature_dtype: str, retry_errors: bool) -> None:
    """Stage 1: decode each clip once, run the frozen backbones, write the feature cache."""
    from extract.manifest import build_manifest
    from extract.pipeline import ExtractConfig, run_extract

    v_default, a_default = BACKBONE_PRESETS[backbones]
    cfg = ExtractConfig(
        steps=steps, fmt=fmt, video_model=video_model or v_default, audio_model=audio_model or a_default,
        device=device, precision=precision, batch_size=batch_size, workers=workers, clip_timeout=clip_timeout,
        feature_dtype=feature_dtype, retry_errors=retry_errors,
    )
    try:
        manifest = build_manifest(dataset, root)
        summary = run_extract(manifest, out, cfg)
    except Exception as exc:  # library errors carry what to do next
        from cache_schema import CacheError
        from extract.backbones import BackboneUnavailable

        if isinstance(exc, (CacheError, BackboneUnavailable, FileNotFoundError, ValueError)):
            _fail(exc)
        raise
    click.echo(summary.describe())


@main.group()
def cache() -> None:
    """Inspect and check feature caches."""


@cache.command("info")
@click.argument("path", type=click.Path(path_type=Path, exists=True))
@click.option("--json", "as_json", is_flag=True, help="Machine-readable, with one entry per clip.")
def cache_info(path: Path, as_json: bool) -> None:
    """Print a cache's metadata and status counts."""
    from cache_schema import CacheError, open_cache

    try:
        with open_cache(path) as r:
            info = {"path": str(path), "format": r.format, "attrs": r.attrs, "counts": r.counts()}
            if as_json:
                info["clips"] = r.clips()
                click.echo(json.dumps(info, indent=2))
                return
            clips = r.clips()
    except CacheError as exc:
        _fail(exc)
    a = info["attrs"]
    click.echo(f"cache      {path} ({info['format']}, schema v{a.get('schema_version')})")
    click.echo(f"steps      {a.get('steps')} at {a.get('sample_rate')} Hz audio, features {a.get('feature_dtype')}")
    for mod in ("video", "audio"):
        b = a.get(f"{mod}_backbone", {})
        click.echo(f"{mod:<10} {b.get('name')} ({b.get('arch')}, {b.get('dim')}-d, "
                   f"{'pretrained' if b.get('pretrained') else 'UNTRAINED weights'}, sha256 {str(b.get('checksum'))[:12]})")
    click.echo(f"classes    {', '.join(a.get('class_names', [])) or '(unlabelled)'}")
    click.echo(f"created    {a.get('created')}  complete: {a.get('complete')}")
    c = info["counts"]
    click.echo(f"clips      {c['total']}: {c['ok']} ok, {c['error']} error, {c['pending']} pending")
    for clip in clips:
        if clip["status"] == "error":
            click.echo(f"  error    {clip['key']}: {clip['error']}")


@cache.command("validate")
@click.argument("path", type=click.Path(path_type=Path))
def cache_validate(path: Path) -> None:
    """Check a cache against the schema; exit non-zero on any defect."""
    from cache_schema import validate

    report = validate(path)
    for p in report.problems:
        click.echo(f"defect: {p}", err=True)
    if report.broken_keys:
        click.echo(f"broken clips ({len(report.broken_keys)}): {', '.join(report.broken_keys)}", err=True)
    if not report.ok:
        sys.exit(1)
    c = report.counts
    click.echo(f"ok: {c.get('total', 0)} clips ({c.get('ok', 0)} ok, {c.get('error', 0)} error, "
               f"{c.get('pending', 0)} pending)")


if __name__ == "__main__":
    main()
