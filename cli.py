"""The one command-line entry. It parses options and calls library functions; nothing
else happens here. Imports are local to each command so that ``--help`` is instant."""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path
from typing import Any

import click


DECODE_CHOICES = ["sw", "cuda", "vaapi", "qsv", "auto"]  # extract.hw_decode.DECODE_CHOICES (not imported: av)
DECODE_HELP = ("Where video is decoded: sw (FFmpeg in software), cuda (NVDEC), vaapi, qsv (refused where that "
               "device does not open), or auto (a hardware decoder that opens here, else sw). A file the hardware "
               "decoder refuses is decoded in software, with the same frames.")
PRECISION_HELP = ("auto: bf16 on a CPU with native bf16 (AMX / AVX-512 BF16) or a CUDA device that supports it, "
                  "else fp32 (emulated bf16 is many times slower); the cache records the precision used.")


# extract.backbones.RUNTIME_CHOICES, spelled out so that --help imports nothing heavy (a test checks they agree).
RUNTIME_CHOICES = ("torch", "openvino", "onnxruntime", "auto")
RUNTIME_HELP = ("What runs the frozen backbones on the CPU: torch (eager), openvino or onnxruntime (the extras of "
                "those names; the backbone is exported once per weights and input into the user cache), or auto: "
                "the fastest installed here, measured once per machine and backbone (torch on a GPU). The cache "
                "records the runtime used; it is not identity.")


def runtime_option(func):
    """``--runtime`` for every command that runs the backbones."""
    return click.option("--runtime", type=click.Choice(RUNTIME_CHOICES), default="torch", show_default=True,
                        help=RUNTIME_HELP)(func)


# TrainConfig.std_floor, spelled out so that --help imports nothing heavy (a test checks they agree).
STD_FLOOR = 0.1

NORMAL_CLASS_HELP = ("The class of normal clips: the binary view scores anomalies as 1 - p(NAME) (AP(anomaly)) "
                     "[normal, if a class has that name; else no binary view].")


class _Commands(click.Group):
    """The command group that turns the project's expected failures (``AvarError``: bad
    input, missing weights, a mismatched cache or run) into one line and exit status 2.
    Anything else is a bug and keeps its traceback."""

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except Exception as exc:
            from cache_schema import AvarError

            if not isinstance(exc, AvarError):
                raise
            click.echo(f"error: {exc}", err=True)
            ctx.exit(2)


@click.group(cls=_Commands, context_settings={"help_option_names": ["-h", "--help"]})
@click.option("-v", "--verbose", is_flag=True, help="Debug logging.")
def main(verbose: bool) -> None:
    """AVAR-Net: audio-visual anomaly recognition on a cached-feature pipeline.

    media -> extract (frozen MobileViT + Wav2Vec2) -> cache -> temporal heads -> apply.
    """
    import torch

    from extract.distributed import DistEnv

    # Process-wide start-up, once for every command (and every torchrun rank): denormal
    # floats make untrained MobileViT about ten times slower on CPU.
    torch.set_flush_denormal(True)
    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO,
                        format=f"{DistEnv.from_environ().log_prefix}%(levelname)s %(name)s: %(message)s")
    for noisy in ("httpx", "huggingface_hub", "urllib3", "filelock"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


def _list_backbones(ctx: click.Context, _: click.Parameter, value: bool) -> None:
    if not value or ctx.resilient_parsing:
        return
    from extract.backbones import list_backbones, measure_cost

    click.echo(f"{'name':<24} {'modality':<8} {'dim':>5}  {'GFLOP':>7} {'ms':>8}  {'per':<10} {'licence':<22} "
               "input; weights")
    for entry in list_backbones():
        cost = measure_cost(entry)
        click.echo(f"{entry.name:<24} {entry.modality:<8} {entry.dim:>5}  {cost.gflop:>7.3f} {cost.ms:>8.1f}  "
                   f"{entry.unit:<10} {entry.licence:<22} {entry.input}; {entry.weights}"
                   + ("" if entry.pretrained else " (UNTRAINED)"))
    click.echo("cost: this CPU, fp32, the architecture with untrained weights (the weights do not change it); GFLOP "
               "counts 2 per multiply-add (torch.utils.flop_counter); "
               "presets: " + ", ".join(f"{k} = {v[0]} + {v[1]}" for k, v in _presets().items()))
    ctx.exit()


def _presets() -> dict[str, tuple[str, str]]:
    from extract.backbones import BACKBONE_PRESETS

    return BACKBONE_PRESETS


BACKBONE_PRESET_NAMES = ["pretrained", "lite", "random", "tiny"]
"""``--backbones`` choices: the keys of ``extract.backbones.BACKBONE_PRESETS`` (written
out so that ``--help`` does not import torch; tests/test_architecture.py checks them)."""


@main.command()
@click.option("--out", required=True, type=click.Path(path_type=Path), help="Folder to write DIR/<class>/<clip>.<ext>.")
@click.option("--clips-per-class", default=30, show_default=True, type=click.IntRange(1))
@click.option("--seed", default=0, show_default=True, type=int)
def synth(out: Path, clips_per_class: int, seed: int) -> None:
    """Generate the synthetic audio-visual benchmark (real encoded media)."""
    from synth import SynthConfig, generate

    clips = generate(out, SynthConfig(clips_per_class=clips_per_class, seed=seed), progress=True)
    click.echo(f"wrote {len(clips)} clips to {out}")


@main.command("synth-xd")
@click.option("--out", required=True, type=click.Path(path_type=Path),
              help="Folder to write DIR/videos/<split>/<name>.mp4, DIR/lists/ and DIR/standin_meta.json.")
@click.option("--seed", default=0, show_default=True, type=int, help="Draws every scene, event and distractor.")
@click.option("--lengths", default="20-60", show_default=True, help="Video lengths, seconds MIN-MAX (evenly spread).")
@click.option("--event-seconds", default="2-4", show_default=True, help="Violent event lengths, seconds MIN-MAX.")
@click.option("--workers", default=None, type=click.IntRange(1), help="Encoding processes [CPU count, at most 8].")
def synth_xd(out: Path, seed: int, lengths: str, event_seconds: str, workers: int | None) -> None:
    """Generate the XD-Violence stand-in (long untrimmed videos, short violent events,
    XD-style names, lists and annotations; docs/xd_violence.md). Another --seed and
    --lengths give a held-out set of the same kind."""
    from synth.xd_standin import StandinConfig, generate_standin, parse_range

    cfg = StandinConfig(seed=seed, lengths=parse_range(lengths, "--lengths"),
                        event_seconds=parse_range(event_seconds, "--event-seconds"))
    videos = generate_standin(out, cfg, workers=workers)
    click.echo(f"wrote {sum(bool(v.file) for v in videos)} videos ({len(videos)} listed) to {out}")


@main.command("synth-stream")
@click.option("--out", required=True, help="Where the MPEG-TS goes: udp://127.0.0.1:PORT (loopback only), - "
                                           "(standard output, e.g. piped into a reader), a FIFO or a file.")
@click.option("--seconds", default=20.0, show_default=True, type=click.FloatRange(min=0, min_open=True),
              help="Media length.")
@click.option("--event-at", default=None, type=click.FloatRange(min=0),
              help="Media time the violent event starts, seconds [no event].")
@click.option("--event-seconds", default=3.0, show_default=True, type=click.FloatRange(min=0, min_open=True))
@click.option("--event-class", default="B1", show_default=True,
              help="The event's XD-Violence class code (B1 fighting, B2 shooting, B4 riot, B5 abuse, B6 car "
                   "accident, G explosion).")
@click.option("--no-audio", is_flag=True, help="A video-only stream.")
@click.option("--sample-rate", default=48000, show_default=True, type=click.Choice(["48000", "44100"]))
@click.option("--stereo", is_flag=True, help="Stereo audio [mono].")
@click.option("--pause-at", default=None, type=click.FloatRange(min=0, min_open=True),
              help="Media time the sender stalls, seconds [no pause].")
@click.option("--pause-seconds", default=3.0, show_default=True, type=click.FloatRange(min=0, min_open=True),
              help="Wall seconds of the stall.")
@click.option("--resume", default="clock", show_default=True, type=click.Choice(["clock", "hold"]),
              help="After a pause: clock = timestamps jump by the pause (the media of the pause is lost, as a "
                   "camera that kept its clock); hold = they continue where they stopped.")
@click.option("--resize-at", default=None, type=click.FloatRange(min=0, min_open=True),
              help="Media time the resolution changes to --resize-to [never].")
@click.option("--resize-to", default="160x120", show_default=True, help="WIDTHxHEIGHT after --resize-at.")
@click.option("--seed", default=0, show_default=True, type=int, help="Draws the scene and the event's noise.")
@click.option("--size", default="320x240", show_default=True, help="WIDTHxHEIGHT (even).")
@click.option("--keyframe-seconds", default=1.0, show_default=True, type=click.FloatRange(min=0, min_open=True))
@click.option("--realtime/--no-realtime", default=None,
              help="Send each frame when the wall clock reaches its media time [real time for udp, - and a FIFO; "
                   "as fast as possible for a file].")
@click.option("--truth", default=None, type=click.Path(path_type=Path),
              help="Write the ground truth (event, pause, resize in media seconds) as JSON here, before streaming.")
def synth_stream(out: str, seconds: float, event_at: float | None, event_seconds: float, event_class: str,
                 no_audio: bool, sample_rate: str, stereo: bool, pause_at: float | None, pause_seconds: float,
                 resume: str, resize_at: float | None, resize_to: str, seed: int, size: str,
                 keyframe_seconds: float, realtime: bool | None, truth: Path | None) -> None:
    """Write a live MPEG-TS stream of the XD-Violence stand-in's scene in real time, with a
    violent event, a stall and a resolution change at known media times (docs/synthetic.md,
    "Live streams"). Stops cleanly on SIGTERM/Ctrl-C and when the reader goes away."""
    from synth.live_stream import StreamEvent, StreamPause, StreamPlan, StreamResize, parse_size, write_stream

    plan = StreamPlan(
        seconds=seconds, seed=seed, audio=not no_audio, size=parse_size(size, "--size"),
        sample_rate=int(sample_rate), channels=2 if stereo else 1, resume=resume, keyframe_s=keyframe_seconds,
        event=None if event_at is None else StreamEvent(event_at, event_at + event_seconds, event_class),
        pause=None if pause_at is None else StreamPause(pause_at, pause_seconds),
        resize=None if resize_at is None else StreamResize(resize_at, parse_size(resize_to, "--resize-to")))
    result = write_stream(out, plan, realtime, truth_path=truth)
    # the summary goes to stderr: standard output may be the stream
    click.echo(f"stream {result.ended}: {result.frames_sent} frames, {result.last_media_s:.2f} s of media "
               f"in {result.wall_seconds:.2f} s to {out}", err=True)


@main.command()
@click.option("--dataset", type=click.Choice(["synth", "vaar", "folder", "xd-violence", "classes", "manifest"]),
              required=True, help="Dataset layout of --root (classes: ROOT/[split/]<label>/<clip>, any labels; "
                                  "manifest: the --manifest file).")
@click.option("--root", required=True, type=click.Path(path_type=Path), help="Dataset root folder.")
@click.option("--lists", type=click.Path(path_type=Path), default=None,
              help="xd-violence: folder with the train/test lists and annotations.txt [ROOT/lists, else ROOT].")
@click.option("--manifest", "manifest_file", type=click.Path(path_type=Path), default=None,
              help="manifest: CSV, TSV or JSON lines with 'path' (relative to --root) and optional 'label', "
                   "'group', 'split'.")
@click.option("--out", required=True, type=click.Path(path_type=Path), help="Cache path (.zarr directory or .h5 file).")
@click.option("--steps", default=None, type=click.IntRange(1),
              help="Equal steps per clip, whatever its length [default: 10].")
@click.option("--step-seconds", default=None, type=click.FloatRange(min=0, min_open=True),
              help="Instead of --steps: steps of this many seconds (ceil(d/S) per clip, e.g. 0.6667 for "
                   "XD-Violence's 16 frames at 24 fps); writes a ragged (schema v2) cache.")
@click.option("--frames-per-step", default=1, show_default=True, type=click.IntRange(1),
              help="With --step-seconds: average the video features of this many evenly spaced frames per step.")
@click.option("--audio-context", default=None, type=click.FloatRange(min=0),
              help="With --step-seconds: each step's audio feature hears the step and up to this many seconds "
                   "before its end, never after it (causal, as live mode hears it; 0: the step alone) "
                   "[default: 1].")
@click.option("--format", "fmt", type=click.Choice(["zarr", "hdf5"]), default=None,
              help="Cache format [default: from the --out suffix, zarr unless .h5/.hdf5].")
@click.option("--backbones", type=click.Choice(BACKBONE_PRESET_NAMES), default="pretrained",
              show_default=True, help="Preset for both models (pretrained: the paper's MobileViT-S + wav2vec2-base "
                                      "from the hubs; lite: EfficientNet-Lite0 + YAMNet, no hub); "
                                      "--video-model/--audio-model override it. See --list-backbones.")
@click.option("--video-model", default=None,
              help="timm name, checkpoint file or folder, efficientnet_lite0, or tiny/random [the preset's].")
@click.option("--audio-model", default=None,
              help="HF audio model id or folder, yamnet or a YAMNet .tflite file, or tiny/random [the preset's].")
@click.option("--list-backbones", is_flag=True, expose_value=False, is_eager=True, callback=_list_backbones,
              help="Print every registered backbone (modality, dim, input, cost on this CPU, weights, licence), "
                   "and exit.")
@click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]), default="auto", show_default=True)
@click.option("--precision", type=click.Choice(["auto", "fp32", "bf16", "fp16"]), default="auto", show_default=True,
              help=PRECISION_HELP)
@click.option("--decode", type=click.Choice(DECODE_CHOICES), default="sw", show_default=True, help=DECODE_HELP)
@runtime_option
@click.option("--batch-size", default=8, show_default=True, type=click.IntRange(1),
              help="Clips per backbone batch (on a GPU the frames per forward pass follow its free memory, logged).")
@click.option("--workers", default=2, show_default=True, type=click.IntRange(0), help="Decoding processes.")
@click.option("--clip-timeout", default=300.0, show_default=True, type=float, help="Seconds before a clip's decoding is given up (the backbones run later, on batches; a clip's length is checked against its packets first).")
@click.option("--feature-dtype", type=click.Choice(["float16", "float32"]), default="float16", show_default=True)
@click.option("--retry-errors", is_flag=True, help="Also redo clips that failed in an earlier run.")
@click.option("--chunk-clips", default=32, show_default=True, type=click.IntRange(1),
              help="Clips per chunk of a new cache; under torchrun a rank's unit of work.")
@click.option("--dist-timeout", default=7200.0, show_default=True, type=click.FloatRange(1),
              help="Under torchrun: seconds a rank waits for the others (rank 0's setup, the slowest shard).")
def extract(dataset: str, root: Path, lists: Path | None, manifest_file: Path | None, out: Path, steps: int | None,
            step_seconds: float | None, frames_per_step: int, audio_context: float | None, fmt: str | None,
            backbones: str,
            video_model: str | None, audio_model: str | None, device: str, precision: str, decode: str,
            runtime: str,
            batch_size: int, workers: int, clip_timeout: float, feature_dtype: str, retry_errors: bool, chunk_clips: int,
            dist_timeout: float) -> None:
    """Stage 1: decode each clip once, run the frozen backbones, write the feature cache.

    Runs alone, or as every rank of `torchrun --nproc-per-node N cli.py extract ...`
    (Zarr caches only; see the README's cluster section)."""
    from cache_schema import InvalidInput
    from extract.backbones import preset_models
    from extract.datasets import prepare_dataset
    from extract.pipeline import ExtractConfig, run_extract

    if steps is not None and step_seconds is not None:
        raise InvalidInput(f"--steps {steps} and --step-seconds {step_seconds:g} both given: a cache has equal steps "
                           "per clip or steps on a time grid, not both; drop one of them")
    video, audio = preset_models(backbones, video_model, audio_model)
    cfg = ExtractConfig(
        steps=steps or 10, step_seconds=step_seconds or 0.0, frames_per_step=frames_per_step, fmt=fmt, video_model=video, audio_model=audio, device=device, precision=precision,
        runtime=runtime, batch_size=batch_size, workers=workers, clip_timeout=clip_timeout, feature_dtype=feature_dtype,
        retry_errors=retry_errors, chunk_clips=chunk_clips, dist_timeout=dist_timeout, audio_context=audio_context,
        decode=decode,
    )
    prepared = prepare_dataset(dataset, root, out, lists, manifest_file=manifest_file)
    if prepared.summary:
        click.echo(prepared.summary)
    summary = run_extract(prepared.manifest, out, cfg)
    click.echo(summary.describe())


@main.command("import-features")
@click.option("--format", "release", type=click.Choice(["xdviodet", "vadclip"]), required=True,
              help="Released XD-Violence features: XDVioDet's I3D RGB + VGGish, or VadCLIP's CLIP ViT-B/16.")
@click.option("--root", required=True, type=click.Path(path_type=Path), help="Folder holding the .npy files (any depth).")
@click.option("--lists", type=click.Path(path_type=Path), default=None,
              help="Folder with the released lists (and annotations.txt) [ROOT/lists, else ROOT].")
@click.option("--out", required=True, type=click.Path(path_type=Path), help="Cache path (.zarr directory or .h5 file).")
@click.option("--crop", default="mean", show_default=True, help="'mean' of the crops, or one crop index.")
@click.option("--strict", is_flag=True, help="Import nothing when a listed file is missing.")
@click.option("--cache-format", "fmt", type=click.Choice(["zarr", "hdf5"]), default=None,
              help="Cache format [default: from the --out suffix, zarr unless .h5/.hdf5].")
@click.option("--feature-dtype", type=click.Choice(["float16", "float32"]), default="float16", show_default=True)
@click.option("--retry-errors", is_flag=True, help="Also redo videos that failed in an earlier run.")
@click.option("--chunk-clips", default=32, show_default=True, type=click.IntRange(1), help="Clips per chunk and write.")
def import_features(release: str, root: Path, lists: Path | None, out: Path, crop: str, strict: bool,
                    fmt: str | None, feature_dtype: str, retry_errors: bool, chunk_clips: int) -> None:
    """Stage 1 from released XD-Violence snippet features: a time-grid cache and its official split."""
    from extract.datasets import ImportConfig, import_features as run_import

    cfg = ImportConfig(release, crop=crop, strict=strict, feature_dtype=feature_dtype, fmt=fmt,
                       chunk_clips=chunk_clips, retry_errors=retry_errors)
    click.echo(run_import(root, out, cfg, lists=lists).describe())


def _train_options(f):
    """Options shared by `train` and the table commands (one place, one meaning)."""
    opts = [
        click.option("--epochs", default=50, show_default=True, type=click.IntRange(1)),
        click.option("--batch-size", default=16, show_default=True, type=click.IntRange(1),
                     help="Clips per training step (64: about half the time per epoch, about 2 points lower "
                          "at 50 epochs on the synthetic benchmark; docs/temporal.md)."),
        click.option("--lr", default=1e-3, show_default=True, type=float),
        click.option("--early-stop", default=0, show_default=True, type=click.IntRange(0),
                     help="Stop after N epochs without a better validation score (0: never)."),
        click.option("--class-weights", is_flag=True, help="Inverse-frequency class weights in the loss."),
        click.option("--split-seed", default=0, show_default=True, type=int, help="Seed of the stored split."),
        click.option("--split-file", type=click.Path(path_type=Path), default=None,
                     help="Explicit (official) split: JSON train/val/test key lists or TSV key<TAB>part."),
        click.option("--groups-file", type=click.Path(path_type=Path), default=None,
                     help="TSV key<TAB>source id: clips of one source never straddle train and test."),
        click.option("--group-pattern", default=None, help="Regex on the key giving the source id (first group)."),
        click.option("--task", type=click.Choice(["xd-recognition", "xd-detection"]), default=None,
                     help="XD-Violence views: six violent classes, or normal vs violent."),
        click.option("--threads", default=1, show_default=True, type=click.IntRange(1), help="torch CPU threads."),
        click.option("--normal-class", default="", help=NORMAL_CLASS_HELP),
        click.option("--max-train-steps", default=200, show_default=True, type=click.IntRange(1),
                     help="Longer training clips are cut to N steps (evaluation always runs at full length)."),
        click.option("--train-steps-mode", type=click.Choice(["sample", "pool"]), default="sample",
                     show_default=True, help="Cut by uniform index sampling (XDVioDet) or mean-pool into N bins "
                                             "(UR-DMU)."),
        click.option("--objective", type=click.Choice(["auto", "step", "mil"]), default="auto", show_default=True,
                     help="mil: top-k multiple-instance loss (auto: for xd-detection and normal-vs-anomaly runs); "
                          "step: per-step cross-entropy."),
        click.option("--mil-sparsity", default=0.0, show_default=True, type=click.FloatRange(0),
                     help="MIL: weight of Sultani et al.'s sparsity term."),
        click.option("--mil-smoothness", default=0.0, show_default=True, type=click.FloatRange(0),
                     help="MIL: weight of Sultani et al.'s smoothness term."),
        click.option("--std-floor", default=STD_FLOOR, show_default=True, type=click.FloatRange(0),
                     help="Input normalisation: every feature's std is at least this fraction of its stream's RMS "
                          "std, so near-constant dimensions of real backbones are not blown up (docs/temporal.md)."),
    ]
    for o in reversed(opts):
        f = o(f)
    return f


def _train_config(head: str, modality: str, fusion: str, seed: int, epochs: int, batch_size: int, lr: float,
                  early_stop: int, class_weights: bool, split_seed: int, split_file: Path | None,
                  groups_file: Path | None, group_pattern: str | None, threads: int, normal_class: str = "",
                  max_train_steps: int = 200, train_steps_mode: str = "sample", objective: str = "auto",
                  mil_sparsity: float = 0.0, mil_smoothness: float = 0.0, std_floor: float = STD_FLOOR,
                  progress: bool = True):
    from temporal.split import SplitConfig
    from temporal.train import TrainConfig

    split = SplitConfig(seed=split_seed, split_file=str(split_file) if split_file else None,
                        groups_file=str(groups_file) if groups_file else None, group_pattern=group_pattern)
    return TrainConfig(head=head, modality=modality, fusion=fusion, epochs=epochs, seed=seed, batch_size=batch_size,
                       lr=lr, early_stop=early_stop, class_weights=class_weights, threads=threads, split=split,
                       normal_class=normal_class, max_train_steps=max_train_steps, train_steps_mode=train_steps_mode,
                       objective=objective, mil_sparsity=mil_sparsity, mil_smoothness=mil_smoothness,
                       std_floor=std_floor, progress=progress)


def _list_heads(ctx: click.Context, _: click.Parameter, value: bool) -> None:
    if not value or ctx.resilient_parsing:
        return
    from temporal.heads import describe_heads

    for name, description in describe_heads().items():
        click.echo(f"{name:<12} {description}")
    ctx.exit()


@main.command()
@click.option("--list-heads", is_flag=True, expose_value=False, is_eager=True, callback=_list_heads,
              help="Print every head of the registry with its description, and exit.")
@click.option("--cache", "cache_path", required=True, type=click.Path(path_type=Path, exists=True))
@click.option("--head", default="mtcn", show_default=True, help="Head name from the registry (see --list-heads).")
@click.option("--modality", type=click.Choice(["fused", "video", "audio"]), default="fused", show_default=True)
@click.option("--fusion", type=click.Choice(["early", "late"]), default="early", show_default=True)
@click.option("--seed", default=0, show_default=True, type=int)
@click.option("--out", required=True, type=click.Path(path_type=Path), help="Run directory to create.")
@click.option("--resume", is_flag=True, help="Continue an interrupted run in --out from its last saved epoch.")
@click.option("--overwrite", is_flag=True, help="Replace the run already in --out (its files are removed first).")
@_train_options
def train(cache_path: Path, head: str, modality: str, fusion: str, seed: int, out: Path, resume: bool,
          overwrite: bool, task: str | None, **kw) -> None:
    """Stage 2: train a head on the cache only, then evaluate it on the test split."""
    from cache_schema import split_file_for
    from temporal.metrics import format_summary
    from temporal.train import train as train_run
    from temporal.xd_tasks import load_task_data

    kw["split_file"] = split_file_for(cache_path, kw["split_file"], task)
    cfg = _train_config(head, modality, fusion, seed, **kw)
    data = load_task_data(cache_path, task) if task else None
    result = train_run(cache_path, out, cfg, data=data, resume=resume, overwrite=overwrite)
    click.echo(format_summary(result.metrics))
    click.echo(f"run -> {result.rundir}")


@main.command()
@click.argument("rundir", type=click.Path(path_type=Path, exists=True, file_okay=False))
@click.option("--cache", "cache_path", type=click.Path(path_type=Path, exists=True), default=None,
              help="Evaluate on this cache instead of the run's own (same backbones required).")
@click.option("--detection", is_flag=True, help="XD-Violence: frame-level AP of the per-step anomaly scores.")
@click.option("--annotations", type=click.Path(path_type=Path, exists=True), default=None,
              help="XD-Violence annotations.txt [the one recorded in the official split].")
@click.option("--fps", default=24.0, show_default=True, type=float, help="Frame rate of the annotations.")
@click.option("--gt-frames", type=click.Choice(["official", "all"]), default="official", show_default=True,
              help="Ground-truth length per video: the official 16*floor((N-1)/16) frames, or every frame.")
@click.option("--normal-class", default=None, help=NORMAL_CLASS_HELP + " [the run's own]")
def evaluate(rundir: Path, cache_path: Path | None, detection: bool, annotations: Path | None, fps: float,
             gt_frames: str, normal_class: str | None) -> None:
    """Accuracy, precision, recall, F1, per-class table, confusion matrix and AP of a run."""
    from temporal.evaluate import evaluate_run
    from temporal.metrics import format_summary

    metrics = evaluate_run(rundir, cache=cache_path, normal_class=normal_class)
    if detection:
        from temporal.xd_detection import evaluate_detection

        metrics = {**metrics, **evaluate_detection(rundir, annotations=annotations, fps=fps, cache=cache_path,
                                                   gt_frames=gt_frames, normal_class=normal_class)}
    click.echo(format_summary(metrics))


@main.command()
@click.option("--cache", "cache_path", required=True, type=click.Path(path_type=Path, exists=True))
@click.option("--out", required=True, type=click.Path(path_type=Path), help="Report folder (tables, CSV, heat-map).")
@click.option("--heads", default="mtcn,gru,bigru,lstm,bilstm,transformer,linear", show_default=True,
              help="Comma-separated head names: the paper's, then the `linear` baseline row.")
@click.option("--modalities", default="audio,video,fused", show_default=True)
@click.option("--seeds", "n_seeds", default=1, show_default=True, type=click.IntRange(1),
              help="Runs per cell: mean ± std over seeds SEED..SEED+N-1.")
@click.option("--seed", default=0, show_default=True, type=int)
@click.option("--jobs", default=1, show_default=True, type=click.IntRange(1),
              help="Runs trained side by side in worker processes (one CPU thread each): up to the core count.")
@_train_options
def compare(cache_path: Path, out: Path, heads: str, modalities: str, n_seeds: int, seed: int, jobs: int,
            task: str | None, **kw) -> None:
    """The paper's Table 2: every head x modality from one cache and one split."""
    from dataclasses import replace

    from cache_schema import split_file_for
    from temporal.compare import TABLE2_MD
    from temporal.compare import compare as compare_run

    kw["split_file"] = split_file_for(cache_path, kw["split_file"], task)
    base = replace(_train_config("mtcn", "fused", "early", seed, progress=False, **kw), checkpoint_every=0)
    compare_run(cache_path, out, heads=tuple(h for h in heads.split(",") if h),
                        modalities=tuple(m for m in modalities.split(",") if m),
                        seeds=tuple(range(seed, seed + n_seeds)), base=base, jobs=jobs, task=task)
    click.echo((out / TABLE2_MD).read_text())


@main.command("ablate-steps")
@click.option("--cache", "caches", multiple=True, required=True, type=click.Path(path_type=Path, exists=True),
              help="One cache per step count (repeat the option).")
@click.option("--out", required=True, type=click.Path(path_type=Path))
@click.option("--head", default="mtcn", show_default=True)
@click.option("--seeds", "n_seeds", default=1, show_default=True, type=click.IntRange(1))
@click.option("--seed", default=0, show_default=True, type=int)
@click.option("--jobs", default=1, show_default=True, type=click.IntRange(1),
              help="Runs trained side by side in worker processes (one CPU thread each): up to the core count.")
@_train_options
def ablate_steps(caches: tuple[Path, ...], out: Path, head: str, n_seeds: int, seed: int, jobs: int,
                 task: str | None, **kw) -> None:
    """The paper's Table 3: the same head on caches of different step counts."""
    from temporal.compare import TABLE3_MD
    from temporal.compare import ablate_steps as run

    from cache_schema import split_file_for

    kw["split_file"] = split_file_for(caches[0], kw["split_file"], task)
    base = _train_config(head, "fused", "early", seed, progress=False, **kw)
    run(caches, out, head=head, seeds=tuple(range(seed, seed + n_seeds)), base=base, jobs=jobs, task=task)
    click.echo((out / TABLE3_MD).read_text())


@main.command("ablate-fusion")
@click.option("--cache", "cache_path", required=True, type=click.Path(path_type=Path, exists=True))
@click.option("--out", required=True, type=click.Path(path_type=Path))
@click.option("--heads", default="mtcn", show_default=True, help="Comma-separated head names.")
@click.option("--seeds", "n_seeds", default=1, show_default=True, type=click.IntRange(1))
@click.option("--seed", default=0, show_default=True, type=int)
@click.option("--jobs", default=1, show_default=True, type=click.IntRange(1),
              help="Runs trained side by side in worker processes (one CPU thread each): up to the core count.")
@_train_options
def ablate_fusion(cache_path: Path, out: Path, heads: str, n_seeds: int, seed: int, jobs: int, task: str | None,
                  **kw) -> None:
    """Early (concatenation, the paper's choice) vs late (averaged probabilities) fusion."""
    from temporal.compare import FUSION_MD
    from temporal.compare import ablate_fusion as run

    from cache_schema import split_file_for

    kw["split_file"] = split_file_for(cache_path, kw["split_file"], task)
    base = _train_config("mtcn", "fused", "early", seed, progress=False, **kw)
    run(cache_path, out, heads=tuple(h for h in heads.split(",") if h),
        seeds=tuple(range(seed, seed + n_seeds)), base=base, jobs=jobs, task=task)
    click.echo((out / FUSION_MD).read_text())


@main.group()
def bench() -> None:
    """Speed and memory benchmarks (JSON under reports/bench/; ratios measured in one run)."""


@bench.command("extract")
@click.option("--out", default=Path("reports/bench/extract.json"), show_default=True, type=click.Path(path_type=Path))
@click.option("--video-model", default="random", show_default=True)
@click.option("--audio-model", default="random", show_default=True)
@click.option("--clips", default=8, show_default=True, type=click.IntRange(1))
@click.option("--workers", default=2, show_default=True, type=click.IntRange(0))
@click.option("--batch-size", default=8, show_default=True, type=click.IntRange(1))
@click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]), default="cpu", show_default=True)
@click.option("--precision", type=click.Choice(["auto", "fp32", "bf16", "fp16"]), default="auto", show_default=True,
              help=PRECISION_HELP)
@runtime_option
@click.option("--runtimes", default=None, metavar="LIST",
              help="Instead: the backbones on each runtime of LIST (comma-separated, or 'all': every installed one "
                   "and auto) on the same 10 s 720p clip, with a matmul roofline "
                   "[--out default: reports/bench/extract_runtimes.json].")
@click.option("--grid-video", is_flag=True,
              help="Add a 10-minute 720p video decoded on a 0.6667 s grid (minutes more).")
@click.option("--grid-only", is_flag=True,
              help="Only that row [--out default: reports/bench/extract_grid.json].")
@click.option("--backbones", type=click.Choice([p for p in BACKBONE_PRESET_NAMES if p != "random"]), default=None,
              help="Instead: this preset against the paper's architectures (random), in one run, on the same "
                   "clips [--out default: reports/bench/extract_PRESET.json].")
@click.option("--decode", type=click.Choice(DECODE_CHOICES), default="sw", show_default=True, help=DECODE_HELP)
@click.option("--throughput-only", is_flag=True,
              help="Only decode-only, backbone-only and end-to-end clips/s on --clips 10 s 720p clips "
                   "[--out default: reports/bench/extract_throughput.json].")
@click.option("--clips-dir", type=click.Path(path_type=Path, file_okay=False), default=None,
              help="With --throughput-only: keep the generated clips here and reuse them in later runs.")
def bench_extract(out: Path, video_model: str, audio_model: str, clips: int, workers: int, batch_size: int,
                  device: str, precision: str, runtime: str, runtimes: str | None, grid_video: bool, grid_only: bool, backbones: str | None, decode: str,
                  throughput_only: bool, clips_dir: Path | None) -> None:
    """Stage 1 with full-size architectures: decode plan vs minimum, decode-only per decode mode
    available here, end-to-end vs backbone-only, peak memory and time of a 120 s vs a 10 s
    720p clip (and, with --grid-video, a 10-minute 720p video on a time grid)."""
    from extract.bench import run_bench, run_grid_bench, run_preset_bench, run_throughput_bench
    from extract.pipeline import ExtractConfig

    cfg = ExtractConfig(video_model=video_model, audio_model=audio_model, workers=workers, batch_size=batch_size,
                        progress=False, device=device, precision=precision, decode=decode, runtime=runtime)
    if runtimes:
        from extract.bench_runtimes import run_runtime_bench

        if click.get_current_context().get_parameter_source("out").name == "DEFAULT":
            out = Path("reports/bench/extract_runtimes.json")
        click.echo(json.dumps(run_runtime_bench(out, cfg, runtimes), indent=2))
        return
    if throughput_only:
        if click.get_current_context().get_parameter_source("out").name == "DEFAULT":
            out = Path("reports/bench/extract_throughput.json")
        click.echo(json.dumps(run_throughput_bench(out, cfg, clips, clips_dir), indent=2))
        return
    if backbones:
        if click.get_current_context().get_parameter_source("out").name == "DEFAULT":
            out = Path(f"reports/bench/extract_{backbones}.json")
        click.echo(json.dumps(run_preset_bench(out, cfg, backbones, n_clips=min(clips, 4)), indent=2))
        return
    if grid_only:
        if click.get_current_context().get_parameter_source("out").name == "DEFAULT":
            out = Path("reports/bench/extract_grid.json")
        click.echo(json.dumps(run_grid_bench(out, cfg), indent=2))
        return
    click.echo(json.dumps(run_bench(out, cfg, clips, grid_video=grid_video), indent=2))


@bench.command("live")
@click.option("--out", default=Path("reports/bench/live.json"), show_default=True, type=click.Path(path_type=Path))
@click.option("--full-seconds", default=12.0, show_default=True, type=click.FloatRange(min=1),
              help="Media seconds of the full-size fp32 rows.")
@click.option("--bf16-seconds", default=2.0, show_default=True, type=click.FloatRange(min=1),
              help="Media seconds of the full-size bf16 rows on a CPU without native bf16 (emulated: slow).")
@click.option("--tiny-seconds", default=24.0, show_default=True, type=click.FloatRange(min=1),
              help="Media seconds of the tiny rows.")
@click.option("--no-full", is_flag=True, help="Tiny backbones only (seconds).")
@click.option("--no-bf16", is_flag=True, help="Leave out the bf16 rows.")
@click.option("--notes", default="", help="Recorded in the JSON (e.g. what else ran on the machine).")
@click.option("--backbones", "lite", type=click.Choice(["lite"]), default=None,
              help="--backbones lite: add the pretrained lite rows (EfficientNet-Lite0 + YAMNet; 1, 4, 8 streams).")
@click.option("--gpu-only", is_flag=True, help="Only the GPU rows (none where CUDA is not visible).")
@runtime_option
def bench_live(out: Path, full_seconds: float, bf16_seconds: float, tiny_seconds: float, no_full: bool,
               no_bf16: bool, notes: str, lite: str | None, gpu_only: bool,
               runtime: str) -> None:
    """Live scoring (``watch``) vs the backbones alone: real-time factor, latency p50/p95 and
    drops for 1 and 4 streams (8 tiny), full-size untrained backbones in fp32 and bf16 and
    the tiny ones, on this CPU (and a GPU when one is visible)."""
    from live.bench import LiveBenchConfig, run_live_bench

    cfg = LiveBenchConfig(full_s=full_seconds, bf16_s=bf16_seconds, tiny_s=tiny_seconds, full=not no_full,
                          bf16=not no_bf16, notes=notes, lite=lite == "lite", cpu=not gpu_only,
                          runtime=runtime)
    click.echo(json.dumps(run_live_bench(out, cfg), indent=2))


@bench.command("soak")
@click.option("--out", default=Path("reports/bench/soak.json"), show_default=True, type=click.Path(path_type=Path))
@click.option("--minutes", default=20.0, show_default=True, type=click.FloatRange(min=0, min_open=True),
              help="How long to watch.")
@click.option("--sample-every", default=60.0, show_default=True, type=click.FloatRange(min=0, min_open=True),
              help="Seconds between samples of memory, descriptors and threads.")
@click.option("--warmup", default=120.0, show_default=True, type=click.FloatRange(min=0),
              help="Seconds at the start whose samples the growth leaves out.")
@click.option("--streams", default=4, show_default=True, type=click.IntRange(1, 16))
@click.option("--size", default="320x240", show_default=True, help="The cameras' frames, WIDTHxHEIGHT.")
@click.option("--run", "run", default=None, type=click.Path(path_type=Path),
              help="Run directory to watch with [default: one trained first with the tiny backbones, minutes].")
@click.option("--work", default=None, type=click.Path(path_type=Path),
              help="Keep the clips, JSON lines, snapshots (and the built run) here [default: a temporary folder].")
@click.option("--notes", default="", help="Recorded in the JSON (e.g. what else ran on the machine).")
@click.option("--no-clips", is_flag=True, help="Leave alert clips out.")
@click.option("--no-mqtt", is_flag=True, help="Leave MQTT out (it is left out anyway where mosquitto is not installed).")
@click.option("--threshold", default=0.5, show_default=True, type=click.FloatRange(0, 1, min_open=True),
              help="The cameras' alert threshold (watch's default); lower it for a run whose event scores are weak.")
def bench_soak(out: Path, minutes: float, sample_every: float, warmup: float, streams: int, size: str,
               run: Path | None, work: Path | None, notes: str, no_clips: bool, no_mqtt: bool,
               threshold: float) -> None:
    """A long watch of looping loopback cameras (tiny backbones; JSON lines, snapshots, alert
    clips, the webhook, MQTT to a mosquitto of its own, and a polled --serve page with
    /metrics on): memory, open descriptors and threads sampled, their growth after warm-up
    against noise, and what each stream scored."""
    from live.soak import SoakConfig, run_soak, soak_summary
    from synth.live_stream import parse_size

    cfg = SoakConfig(minutes=minutes, sample_every=sample_every, warmup_s=warmup, streams=streams,
                     size=parse_size(size, "--size"), run=str(run) if run else None, notes=notes,
                     clips=not no_clips, mqtt=not no_mqtt, threshold=threshold)
    result = run_soak(out, cfg, work=work)
    click.echo(soak_summary(result))
    click.echo(f"report: {out}")


@bench.command("train")
@click.option("--out", default=Path("reports/bench/train.json"), show_default=True, type=click.Path(path_type=Path))
@click.option("--clips", default=3000, show_default=True, type=click.IntRange(10))
@click.option("--epochs", default=3, show_default=True, type=click.IntRange(1), help="Timed epochs per setting (median).")
@click.option("--batch-sizes", default="16,32,64,128", show_default=True,
              help="Batch sizes to time besides the default training config.")
@click.option("--threads", default="1,2", show_default=True, help="torch thread counts to time with each batch size.")
def bench_train(out: Path, clips: int, epochs: int, batch_sizes: str, threads: str) -> None:
    """Seconds per MTCN epoch over a generated cache of CLIPS clips (paper dims), for the
    default training config and a grid of batch sizes x threads."""
    from temporal.bench import bench_train as run

    grid = [(b, t) for b in _int_list(batch_sizes) for t in _int_list(threads)]
    click.echo(json.dumps(run(out, n_clips=clips, epochs=epochs, grid=grid), indent=2))


@bench.command("efficiency")
@click.option("--out", default=Path("reports/bench/efficiency.json"), show_default=True,
              type=click.Path(path_type=Path))
@click.option("--clips", default=8, show_default=True, type=click.IntRange(2))
@click.option("--duration", default=10.0, show_default=True, type=click.FloatRange(min=0, min_open=True))
@click.option("--width", default=640, show_default=True, type=click.IntRange(16))
@click.option("--height", default=360, show_default=True, type=click.IntRange(16))
@click.option("--steps", default=10, show_default=True, type=click.IntRange(1))
@click.option("--workers", default=2, show_default=True, type=click.IntRange(0))
@click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]), default="auto", show_default=True,
              help="auto: CPU, plus CUDA fp32 and bf16/fp16 when a GPU is visible.")
@click.option("--precision", type=click.Choice(["auto", "fp32", "bf16", "fp16"]), default="auto", show_default=True,
              help="auto: the CPU at fp32 (bf16 where it computes bf16 natively), a GPU at fp32 and bf16/fp16; "
                   "any other: only this precision.")
def bench_efficiency(out: Path, clips: int, duration: float, width: int, height: int, steps: int, workers: int,
                     device: str, precision: str) -> None:
    """The paper's Table 4: FPS, latency, inference and parameters (full-size, untrained)."""
    from apply.efficiency import BenchConfig, run, targets_for, to_markdown

    cfg = BenchConfig(clips=clips, duration=duration, width=width, height=height, steps=steps, workers=workers,
                      targets=targets_for(device, precision))
    click.echo(to_markdown(run(cfg, out)))


def _int_list(text: str) -> list[int]:
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise click.BadParameter(f"expected comma-separated integers, got {text!r}") from None
    if not values or min(values) < 1:
        raise click.BadParameter(f"expected positive integers, got {text!r}")
    return values


@main.command()
@click.argument("rundir", type=click.Path(path_type=Path, exists=True, file_okay=False))
@click.argument("videos", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option("--json", "as_json", is_flag=True,
              help="One JSON object per video: {video, label, probs, steps: [{t, score}], error, windows, ...}.")
@click.option("--window", type=click.FloatRange(min=0, min_open=True), default=None,
              help="Slide windows of this many seconds over each video (any length) for a score timeline.")
@click.option("--hop", type=click.FloatRange(min=0, min_open=True), default=None,
              help="Seconds between window starts [window/2].")
@click.option("--plot", type=click.Path(path_type=Path), default=None,
              help="Draw the timeline with sampled frames (Figure 5) to this PNG; with several videos, "
                   "OUT-<video>.png each (plus a short hash where names collide).")
@click.option("--video-model", default=None, help="Local copy of the run's video backbone weights.")
@click.option("--audio-model", default=None, help="Local copy of the run's audio backbone weights.")
@click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]), default="auto", show_default=True)
@click.option("--precision", type=click.Choice(["auto", "fp32", "bf16", "fp16"]), default="auto", show_default=True,
              help=PRECISION_HELP)
@click.option("--decode", type=click.Choice(DECODE_CHOICES), default="sw", show_default=True, help=DECODE_HELP)
@runtime_option
def predict(rundir: Path, videos: tuple[Path, ...], as_json: bool, window: float | None, hop: float | None,
            plot: Path | None, video_model: str | None, audio_model: str | None, device: str, precision: str,
            decode: str, runtime: str) -> None:
    """Predict the class and the anomaly-score timeline of raw VIDEOS with a trained RUNDIR.

    The backbones of the run's cache are loaded and checked (weights checksum, preprocessing);
    a run they cannot reproduce is refused. A file that cannot be read gives an error entry
    and the others are still predicted; the exit status is 1 if any video failed."""
    from apply import PredictConfig, format_table, load_predictor, predict_batch, timeline_paths, to_json_lines

    plots = timeline_paths(plot, videos) if plot is not None else None  # refused here, before any work
    config = PredictConfig(video_model=video_model, audio_model=audio_model, device=device, precision=precision,
                           window=window, hop=hop, thumbnails=plot is not None, decode=decode,
                           runtime=runtime)
    predictor = load_predictor(rundir, config)
    preds = []
    for pred in predict_batch(predictor, videos, config, plots):
        preds.append(pred)
        if as_json:
            click.echo(next(to_json_lines([pred])))
        if pred.plot:
            click.echo(f"timeline -> {pred.plot}", err=as_json)
    if not as_json:
        click.echo(format_table(preds))
    if any(p.failed for p in preds):
        sys.exit(1)


def _print_config_schema(ctx: click.Context, _: click.Parameter, value: bool) -> None:
    if not value or ctx.resilient_parsing:
        return
    from live.config_file import schema_text

    click.echo(schema_text())
    ctx.exit()


@main.command()
@click.argument("rundir", type=click.Path(path_type=Path, exists=True, file_okay=False), required=False)
@click.argument("sources", nargs=-1, required=False)
@click.option("--config", "config_file", type=click.Path(path_type=Path, dir_okay=False), default=None,
              help="A YAML file of named cameras, their settings and the outputs (docs/live.md); RUN and SOURCES "
                   "come from it, and the flags it also sets are refused beside it.")
@click.option("--config-schema", is_flag=True, expose_value=False, is_eager=True, callback=_print_config_schema,
              help="Print the JSON Schema of the --config file and exit.")
@click.option("--realtime", is_flag=True, help="Pace files by their timestamps, as a camera sends them "
              "[files are read as fast as they decode].")
@click.option("--window", type=click.FloatRange(min=0, min_open=True), default=None,
              help="Seconds the head sees [grid runs: what the run was trained on; fixed-step runs: 10].")
@click.option("--hop", type=click.FloatRange(min=0, min_open=True), default=None,
              help="Fixed-step runs: seconds between windows [window/2].")
@click.option("--threshold", default=0.5, show_default=True, type=float, help="Anomaly score that counts as anomalous.")
@click.option("--min-duration", default=1.0, show_default=True, type=float,
              help="Seconds at or above --threshold before an alert starts.")
@click.option("--cooldown", default=5.0, show_default=True, type=float,
              help="Seconds below --threshold before an open alert ends (one fight is one alert).")
@click.option("--snapshots", type=click.Path(path_type=Path, file_okay=False), default=None,
              help="Folder for the peak frame of each alert (JPEG).")
@click.option("--clips", type=click.Path(path_type=Path, file_okay=False), default=None,
              help="Folder for a video clip of each alert (the camera's own packets, remuxed to MP4, not re-encoded).")
@click.option("--clip-pre", default=5.0, show_default=True, type=click.FloatRange(min=0),
              help="--clips: seconds before the alert's start.")
@click.option("--clip-post", default=5.0, show_default=True, type=click.FloatRange(min=0),
              help="--clips: seconds after the alert's end.")
@click.option("--clips-max-bytes", default=2_000_000_000, show_default=True, type=click.IntRange(min=1),
              help="--clips: the oldest clips are removed beyond this many bytes in total.")
@click.option("--clips-max-age", default=259200.0, show_default=True, type=click.FloatRange(min=0, min_open=True),
              help="--clips: clips older than this many seconds are removed.")
@click.option("--webhook", default=None, help="POST each alert event as JSON to this URL (own thread, retries).")
@click.option("--out", type=click.Path(path_type=Path, dir_okay=False), default=None,
              help="Append the JSON lines to this file [standard output].")
@click.option("--stall-timeout", default=5.0, show_default=True, type=click.FloatRange(min=0, min_open=True),
              help="Seconds without packets before a source counts as stalled (and a stream is reopened).")
@click.option("--duration", type=click.FloatRange(min=0, min_open=True), default=None,
              help="Stop after this many seconds of media per source.")
@click.option("--queue", "depth", default=2, show_default=True, type=click.IntRange(1),
              help="Steps queued per source before the oldest is dropped (bounds the latency).")
@click.option("--serve", default=None, metavar="HOST:PORT",
              help="Also serve the browser view (tiles, timelines, alerts; /api/..., /healthz) [off]; a host other "
                   "than loopback needs --token or --token-file.")
@click.option("--token", default=None, help="Required on every request to --serve (header, ?token= or cookie).")
@click.option("--token-file", type=click.Path(path_type=Path, dir_okay=False), default=None,
              help="Read the --serve token from this file's first line.")
@click.option("--serve-name", "serve_names", multiple=True, metavar="NAME",
              help="A host name the browser view answers to besides its address (repeatable); any other Host "
                   "header is refused (DNS rebinding).")
@click.option("--metrics", "metrics_address", default=None, metavar="HOST:PORT",
              help="Serve Prometheus /metrics on a port of its own [off; with --serve it is also on that port]; a "
                   "host other than loopback needs --token or --token-file.")
@click.option("--mqtt", "mqtt", default=None, metavar="HOST[:PORT]",
              help="Also publish to this MQTT broker (alerts, state, scores; Home Assistant discovery) [off]; "
                   "a broker that is down is retried, scoring goes on.")
@click.option("--mqtt-prefix", default="avar", show_default=True, help="The MQTT topics' first level(s).")
@click.option("--mqtt-user", default=None, help="MQTT user name; the password comes from --mqtt-password-file or "
              "$AVAR_MQTT_PASSWORD, never from an option.")
@click.option("--mqtt-password-file", type=click.Path(path_type=Path, dir_okay=False), default=None,
              help="Read the MQTT password from this file's first line.")
@click.option("--mqtt-client-id", default="avar-net", show_default=True,
              help="The MQTT client id (two watches on one broker need two).")
@click.option("--video-model", default=None, help="Local copy of the run's video backbone weights.")
@click.option("--audio-model", default=None, help="Local copy of the run's audio backbone weights.")
@click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]), default="auto", show_default=True)
@click.option("--precision", type=click.Choice(["auto", "fp32", "bf16", "fp16"]), default="auto", show_default=True,
              help=PRECISION_HELP)
@click.option("--decode", type=click.Choice(DECODE_CHOICES), default="sw", show_default=True, help=DECODE_HELP)
@runtime_option
def watch(rundir: Path | None, sources: tuple[str, ...], config_file: Path | None, **flags: Any) -> None:
    """Score SOURCES (cameras, streams, files) as they arrive with a trained RUNDIR.

    A SOURCE is an rtsp/rtmp/http(s)/udp/tcp/srt URL, a V4L2 device (/dev/video0), - for a
    stream on standard input, or a file. Prints JSON lines: a score record per step, alert
    events, and status events (started, stalled, reconnected, dropped_steps, ended);
    docs/live.md describes them. SIGINT/SIGTERM stop cleanly. With --config FILE the run,
    the named cameras and the outputs come from the file instead. Passwords and tokens
    are scrubbed from every output, logs included."""
    from live.command import WatchFlags, watch_cli

    if config_file is not None and (rundir is not None or sources):
        raise click.UsageError("give RUN and SOURCES, or --config FILE (which names the run and the cameras), "
                               "not both")
    if config_file is None and (rundir is None or not sources):
        raise click.UsageError("give RUN and at least one SOURCE (or --config FILE)")
    ctx = click.get_current_context()
    given = [name for name in ctx.params if ctx.get_parameter_source(name)
             in (click.core.ParameterSource.COMMANDLINE, click.core.ParameterSource.ENVIRONMENT)]
    sys.exit(watch_cli(WatchFlags(rundir=rundir, sources=sources, **flags), config_file, given))


@main.command()
@click.argument("rundir", type=click.Path(path_type=Path, exists=True, file_okay=False))
@click.option("--out", type=click.Path(path_type=Path), default=None, help="Folder for the PNGs [RUNDIR/figures].")
@click.option("--compare", "compare_csv", type=click.Path(path_type=Path, exists=True, dir_okay=False), default=None,
              help="A comparison's table2.csv for the heat-map [found beside the run when it is part of one].")
@click.option("--media-root", type=click.Path(path_type=Path, file_okay=False), default=None,
              help="Dataset folder for the frame strips [the root recorded in the run's cache].")
@click.option("--clips", "n_clips", default=8, show_default=True, type=click.IntRange(1),
              help="Test clips in the frame-strip view.")
def figures(rundir: Path, out: Path | None, compare_csv: Path | None, media_root: Path | None, n_clips: int) -> None:
    """The paper's figures of RUNDIR as PNG: confusion matrices (counts, normalised), per-class F1,
    training curves, the comparison heat-map, and test clips' frames with truth and prediction."""
    from apply import all_figures

    result = all_figures(rundir, out, compare_csv, media_root, n_clips)
    for why in result.skipped.values():
        click.echo(why, err=True)
    for name, path in result.written.items():
        click.echo(f"{name:<22} {path}")


@main.group()
def cache() -> None:
    """Inspect and check feature caches."""


@cache.command("info")
@click.argument("path", type=click.Path(path_type=Path, exists=True))
@click.option("--json", "as_json", is_flag=True, help="Machine-readable, with one entry per clip.")
def cache_info(path: Path, as_json: bool) -> None:
    """Print a cache's metadata and status counts."""
    from cache_schema import cache_info as read_info
    from cache_schema import format_cache_info

    info = read_info(path)
    click.echo(json.dumps(info, indent=2) if as_json else format_cache_info(info))


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
