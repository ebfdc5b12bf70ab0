"""Training a head on the cache: AdamW, ReduceLROnPlateau on the validation loss (the
paper's schedule), the best-on-validation weights kept, optional early stop and class
weights, deterministic under a seed.

What a run directory ends up holding, and how each file is written and read, is
:mod:`temporal.rundir`'s; :class:`TrainConfig` (what a run is asked to do) is
:mod:`temporal.train_config`'s, re-exported here.

"Best on validation" means the highest validation accuracy, ties broken by the lower
validation loss: accuracy is what is reported, and the loss separates the many ties a
small validation set produces.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import torch
from sklearn.utils.class_weight import compute_class_weight
from tqdm.auto import tqdm

from cache_schema import InvalidInput

from .checkpoint import load_train_state, read_weights, save_train_state, save_weights
from .data import (BatchGatherer, CacheData, HeadInputs, cap_steps, drop_features, drop_modalities, has_modality,
                   load_cache, step_batches)
from .evaluate import class_prior, evaluate_run
from .heads import mil_head_options
from .losses import LossConfig, MilConfig, head_loss, head_mil_loss
from .metrics import resolve_normal_class
from .model import AnomalyModel, ModelOutput, PaddedBatches
from .plots import curves_figure, save_figure
from .rundir import MissingRunFile, RunConfig, RunDir, RunError, RunMismatch
from .split import Split, load_or_create_split
from .train_config import TrainConfig
from .xd_tasks import task_of_identity

logger = logging.getLogger(__name__)


class TrainingDiverged(RunError, InvalidInput):
    """A training or validation loss became NaN or infinite: the run cannot learn as set up."""


@dataclass(frozen=True)
class RunResult:
    rundir: Path
    metrics: dict[str, Any]
    history: list[dict[str, float]]


def model_loss(out: ModelOutput, labels: torch.Tensor, config: LossConfig, weight: torch.Tensor | None,
               mil: MilConfig | None = None) -> torch.Tensor:
    """Each stream's head is trained on its own stream (one term per head); with ``mil``
    the multiple-instance objective, else the per-step one (``temporal/losses.py``)."""
    total = out.clip_logits.new_zeros(())
    for head_out, mask in out.streams.values():
        total = total + (head_loss(head_out, labels, mask, config, weight) if mil is None
                         else head_mil_loss(head_out, labels, mask, config, mil, weight))
    return total


def head_steps(config: TrainConfig, data: CacheData) -> int:
    """The T a run's head is built for: the cache's fixed step count, or on a time grid
    (clips of any length) ``max_train_steps``, the longest sequence it trains on (MTCN's
    layers follow from it)."""
    return config.max_train_steps if data.layout.grid else data.steps


def resolve_config(config: TrainConfig, data: CacheData) -> TrainConfig:
    """``config`` with its objective resolved for this data ("auto" -> "step" or "mil"),
    and a MIL run's head options completed with the head's MIL defaults (MTCN: local
    context, see docs/temporal.md): what the run records, so that a resume compares like
    with like and the run rebuilds the same head."""
    objective = config.resolved_objective(data.class_names, task_of_identity(data.identity))
    options = mil_head_options(config.head, config.head_options) if objective == "mil" else config.head_options
    if objective == config.objective and options == config.head_options:
        return config
    return dataclasses.replace(config, objective=objective, head_options=options)


def mil_config(config: TrainConfig, class_names: tuple[str, ...] | list[str]) -> MilConfig | None:
    """The MIL settings of a run whose objective is resolved; None for the per-step objective."""
    if config.objective != "mil":
        return None
    return MilConfig(int(config.normal_index(class_names)), config.mil_sparsity, config.mil_smoothness)


def build_model(config: TrainConfig, data: CacheData) -> AnomalyModel:
    """The run's model; ``config``'s objective must be resolved (:func:`resolve_config`)."""
    mil = config.objective == "mil"
    return AnomalyModel(config.head, config.modality, config.fusion, data.config.video.dim, data.config.audio.dim,
                        len(data.class_names), head_steps(config, data), config.head_options,
                        objective="mil" if mil else "step", normal_index=config.normal_index(data.class_names))


def usable_rows(data: CacheData, split: Split, modality: str) -> tuple[dict[str, np.ndarray], dict[str, int]]:
    """Row indices of each part that hold data in the modality, and how many did not."""
    ok = has_modality(data.clips, modality)
    rows, missing = {}, {}
    for part in ("train", "val", "test"):
        r = data.rows_of(split.part(part))
        rows[part] = r[ok[r]]
        missing[part] = int(len(r) - len(rows[part]))
    return rows, missing


def train_epoch(model: AnomalyModel, inputs: HeadInputs | PaddedBatches, optimizer: torch.optim.Optimizer,
                config: TrainConfig, generator: torch.Generator, weight: torch.Tensor | None = None,
                mil: MilConfig | None = None) -> tuple[float, float]:
    """One pass over ``inputs`` (built once by ``model.head_inputs``, or ragged clips
    padded batch by batch) in a seeded random order, with the config's augmentations;
    mean loss and accuracy."""
    model.train()
    order = torch.randperm(len(inputs), generator=generator)
    size = config.batch_size
    batches = BatchGatherer(inputs, size) if isinstance(inputs, HeadInputs) else inputs
    modality_dropout = config.modality_dropout if config.modality == "fused" else 0.0
    total, correct = 0.0, 0
    for start in range(0, len(order), size):
        batch = drop_features(batches.take(order[start:start + size]), config.input_dropout, generator)
        batch = drop_modalities(batch, modality_dropout, generator)
        out = model.forward_inputs(batch)
        loss = model_loss(out, batch.label, config.loss, weight, mil)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        total += loss.item() * len(batch)
        correct += int((out.clip_logits.argmax(1) == batch.label).sum())
    return total / max(1, len(inputs)), correct / max(1, len(inputs))


@torch.no_grad()
def validate(model: AnomalyModel, inputs: HeadInputs | PaddedBatches, loss_config: LossConfig,
             weight: torch.Tensor | None, batch_size: int = 512, mil: MilConfig | None = None) -> tuple[float, float]:
    """Mean loss and accuracy; ragged clips are batched by a budget of padded steps."""
    model.eval()
    total, correct = 0.0, 0
    if isinstance(inputs, HeadInputs):
        chunks = [torch.arange(start, min(len(inputs), start + batch_size))
                  for start in range(0, len(inputs), batch_size)]
    else:
        chunks = [torch.from_numpy(c) for c in step_batches(inputs.clips.lengths.numpy(), max_clips=batch_size)]
    for idx in chunks:
        batch = inputs.take(idx)
        out = model.forward_inputs(batch)
        total += float(model_loss(out, batch.label, loss_config, weight, mil)) * len(batch)
        correct += int((out.clip_logits.argmax(1) == batch.label).sum())
    return total / max(1, len(inputs)), correct / max(1, len(inputs))


def make_optimizer(model: torch.nn.Module, config: TrainConfig) -> torch.optim.AdamW:
    """AdamW with the fused kernel: on CPU it is ~4x faster than the per-tensor loop, which
    matters for small heads whose step is otherwise dominated by the optimizer."""
    return torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=config.weight_decay, fused=True)


def class_weight_tensor(labels: np.ndarray, num_classes: int) -> torch.Tensor:
    """scikit-learn's "balanced" weights; classes absent from train keep weight 1."""
    present = np.unique(labels)
    w = np.ones(num_classes, dtype=np.float32)
    w[present] = compute_class_weight("balanced", classes=present, y=labels)
    return torch.from_numpy(w)


@contextmanager
def torch_threads(n: int | None) -> Iterator[None]:
    """Run with ``n`` intra-op threads and restore the previous number afterwards.

    Heads this small gain little from a second thread (a 3,000-clip epoch at batch 64:
    1.25 s with one, 0.95 s with two on a 2-core machine) and lose up to tenfold when
    another process competes for the cores, because the idle OpenMP thread spins. So runs
    default to one thread; pass ``threads=None`` to keep the process setting."""
    before = torch.get_num_threads()
    if n:
        torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def train(cache: str | Path, out: str | Path, config: TrainConfig = TrainConfig(),
          data: CacheData | None = None, resume: bool = False, overwrite: bool = False) -> RunResult:
    """Train one head on one cache into run directory ``out``, then evaluate it on the
    test split. ``data`` skips reading the cache again (``compare`` loads it once).
    ``resume`` continues an interrupted run from its last saved epoch; with the same
    config it ends with the same weights and metrics as an uninterrupted run.

    ``out`` is locked for this process while the run is written (a second process is
    refused) and must not hold a run already unless ``resume`` or ``overwrite`` (which
    removes the old run's files first) is given: see :meth:`RunDir.claim`."""
    refuse_out_inside_cache(cache, out)
    with torch_threads(config.threads), RunDir(out).writing(resume=resume, overwrite=overwrite) as run:
        return _train(cache, run, config, data, resume)


def refuse_out_inside_cache(cache: str | Path, out: str | Path) -> None:
    """A run written into the cache folder would land inside the Zarr store (which must
    hold only the store) or next to chunks a later ``extract`` rewrites."""
    cache_path, out_path = Path(cache).resolve(), Path(out).resolve()
    if out_path == cache_path or cache_path in out_path.parents:
        raise InvalidInput(f"--out {out} is inside the cache {cache}; write the run outside the cache folder "
                           f"(e.g. --out {cache_path.parent / 'runs' / out_path.name})")


def _diverged(run: RunDir, epoch: int, losses: dict[str, float], config: TrainConfig) -> TrainingDiverged:
    what = ", ".join(f"{k} loss {v}" for k, v in losses.items() if not math.isfinite(v))
    return TrainingDiverged(
        f"training diverged at epoch {epoch} ({what}) with learning rate {config.lr:g}; train again with a "
        f"lower --lr (e.g. {config.lr / 100:g}) and --overwrite (the unfinished run is in {run.path}, its "
        f"losses in {run.history.name})")


def _check_resumable(run: RunDir, config: TrainConfig) -> None:
    if not run.can_resume():
        raise MissingRunFile(f"{run.path} holds no training state to resume; train without --resume")
    saved = run.read_config().train
    saved = dataclasses.replace(saved, objective=saved.trained_objective)  # "auto": a run from before objectives
    if json.dumps(saved.to_json(), sort_keys=True) != json.dumps(config.to_json(), sort_keys=True):
        raise RunMismatch(f"{run.path} was trained with another configuration ({run.config}); "
                          "resume with the same options, or train into a new --out")


def _run_inputs(model: AnomalyModel, data: CacheData, rows: dict[str, np.ndarray], config: TrainConfig,
                ) -> tuple[HeadInputs | PaddedBatches, HeadInputs | PaddedBatches]:
    """Training and validation inputs. When every clip has the same ``T <= max_train_steps``
    (a fixed-step cache) they are standardised and fused once, dense, as they always were
    (so such runs give the numbers they gave before ragged clips existed). Otherwise the
    clips stay ragged, each capped at ``max_train_steps`` (:func:`~temporal.data.cap_steps`),
    and every batch is padded to its own longest clip."""
    t = data.clips.uniform_steps()
    if t is not None and t <= config.max_train_steps:
        with torch.no_grad():  # standardised and fused once, not per batch (see HeadInputs)
            return (model.head_inputs(data.clips.take(rows["train"]).dense()),
                    model.head_inputs(data.clips.take(rows["val"]).dense()))
    if t is not None and not data.layout.grid:  # a fixed-step cache longer than the cap: say so
        logger.warning("every clip of %s has %d steps, more than --max-train-steps %d: training and validation "
                       "sequences are cut to %d steps (%s); evaluation runs at all %d. Raise --max-train-steps "
                       "to train on every step", data.path, t, config.max_train_steps, config.max_train_steps,
                       config.train_steps_mode, t)
    capped = {p: cap_steps(data.clips.take(rows[p]), config.max_train_steps, config.train_steps_mode)
              for p in ("train", "val")}
    logger.info("ragged clips (%d to %d steps), training sequences capped at %d steps (%s)",
                int(data.lengths.min()), int(data.lengths.max()), config.max_train_steps, config.train_steps_mode)
    return PaddedBatches(model, capped["train"]), PaddedBatches(model, capped["val"])


def _train(cache: str | Path, run: RunDir, config: TrainConfig, data: CacheData | None,
           resume: bool = False) -> RunResult:
    data = data if data is not None else load_cache(cache)
    resolve_normal_class(config.normal_class, data.class_names)  # a --normal-class the cache lacks: refused now
    config = resolve_config(config, data)  # refused here, before any file is written, if impossible
    split = load_or_create_split(data, config.split)
    rows, missing = usable_rows(data, split, config.modality)
    for part in ("train", "val"):
        if len(rows[part]) == 0:
            raise InvalidInput(f"the {part} split has no clip with {config.modality} data; "
                             "use another modality, more clips, or a split file")
    if missing["train"] or missing["val"]:
        logger.warning("left out of this %s run's training, clips without %s data: train %d, val %d",
                       config.modality, config.modality, missing["train"], missing["val"])
    if missing["test"]:
        logger.info("%d test clips have no %s data: they are scored with the training class prior, so that "
                    "every modality is measured on the same test clips", missing["test"], config.modality)

    mil = mil_config(config, data.class_names)
    torch.manual_seed(config.seed)
    generator = torch.Generator().manual_seed(config.seed)
    model = build_model(config, data)
    model.standardize.fit(data.clips.take(rows["train"]), config.std_floor)
    params = model.parameter_count()
    logger.info("%s head, %s modality (%s fusion): %d parameters", config.head, config.modality, config.fusion, params)
    weight = class_weight_tensor(data.clips.label[rows["train"]].numpy(), len(data.class_names)) \
        if config.class_weights else None

    optimizer = make_optimizer(model, config)
    scheduler = torch.optim.lr_scheduler.ReduceLROnPlateau(
        optimizer, mode="min", factor=config.plateau_factor, patience=config.plateau_patience, min_lr=config.min_lr)

    if resume:
        _check_resumable(run, config)
    run.write_config(RunConfig(
        cache=str(Path(cache).resolve()), cache_identity=data.identity, class_names=tuple(data.class_names),
        steps=head_steps(config, data), video_dim=data.config.video.dim, audio_dim=data.config.audio.dim,
        streams=tuple(model.streams), params=params, train=config, layout=data.layout))
    run.write_split(split)

    history: list[dict[str, float]] = []
    best: tuple[float, float] = (-1.0, float("inf"))
    best_state: dict[str, torch.Tensor] = {}
    best_epoch, since_best, start, stopped = 0, 0, 1, False
    if resume:
        loop = load_train_state(run.path, model, optimizer, scheduler, generator)
        history, best_epoch, since_best = loop["history"], loop["best_epoch"], loop["since_best"]
        best, stopped = (loop["best_val_accuracy"], loop["best_val_loss"]), loop.get("stopped", False)
        start = loop["epoch"] + 1
        best_state = read_weights(run.weights)
        logger.info("resuming %s after epoch %d", run.path, loop["epoch"])

    def loop_state(epoch: int) -> dict[str, Any]:
        return {"epoch": epoch, "best_epoch": best_epoch, "best_val_accuracy": best[0], "best_val_loss": best[1],
                "since_best": since_best, "stopped": stopped, "history": history}

    train_inputs, val_inputs = _run_inputs(model, data, rows, config)
    t0 = time.perf_counter()
    epochs = range(start, config.epochs + 1) if not stopped else range(0)
    bar = tqdm(epochs, desc=f"{config.head}/{config.modality}", disable=not config.progress,
               leave=False, dynamic_ncols=True)
    for epoch in bar:
        te = time.perf_counter()
        tr_loss, tr_acc = train_epoch(model, train_inputs, optimizer, config, generator, weight, mil)
        va_loss, va_acc = validate(model, val_inputs, config.loss, weight, mil=mil)
        scheduler.step(va_loss)
        history.append({"epoch": epoch, "train_loss": tr_loss, "train_accuracy": tr_acc, "val_loss": va_loss,
                        "val_accuracy": va_acc, "lr": optimizer.param_groups[0]["lr"],
                        "seconds": time.perf_counter() - te})
        if not (math.isfinite(tr_loss) and math.isfinite(va_loss)):
            # Stop at the first non-finite loss: every later epoch would train on NaN and
            # the evaluation would end in scikit-learn's "Input contains NaN".
            bar.close()
            run.write_history(history)
            raise _diverged(run, epoch, {"train": tr_loss, "validation": va_loss}, config)
        bar.set_postfix(loss=f"{tr_loss:.3f}", acc=f"{tr_acc:.2f}", val_acc=f"{va_acc:.2f}")
        improved = (va_acc, -va_loss) > (best[0], -best[1])
        if improved:
            best, best_epoch, since_best = (va_acc, va_loss), epoch, 0
            best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
        else:
            since_best += 1
            stopped = bool(config.early_stop and since_best >= config.early_stop)
        if config.checkpoint_every and (epoch % config.checkpoint_every == 0 or stopped or epoch == config.epochs):
            if improved or not run.weights.exists():
                save_weights(best_state, run.weights)
            save_train_state(run.path, model, optimizer, scheduler, generator, loop_state(epoch))
        if stopped:
            logger.info("early stop at epoch %d: no better validation score for %d epochs", epoch, since_best)
            break
    seconds = time.perf_counter() - t0
    bar.close()

    if not config.checkpoint_every:
        save_weights(best_state, run.weights)
        save_train_state(run.path, model, optimizer, scheduler, generator, loop_state(len(history)))
    run.write_history(history)
    save_figure(curves_figure(history, f"{config.head} / {config.modality} ({config.fusion}), seed {config.seed}",
                              best_epoch), run.curves)
    run.write_training({
        "best_epoch": best_epoch, "epochs_run": len(history), "best_val_accuracy": best[0],
        "best_val_loss": best[1], "train_seconds": seconds, "seconds_per_epoch": seconds / max(1, len(history)),
        "left_out": {**data.left_out, **{f"no_{config.modality}_{p}": n for p, n in missing.items()}},
        "split": split.info, "n_train": int(len(rows["train"])), "n_val": int(len(rows["val"])),
        "batch_size": config.batch_size,
        # what the run predicts for a test clip without its modality (see evaluate_run)
        "class_prior": class_prior(data.clips.label[rows["train"]].numpy(), len(data.class_names)).tolist(),
    })
    metrics = evaluate_run(run.path, data=data)
    return RunResult(run.path, metrics, history)


__all__ = ["TrainConfig", "TrainingDiverged", "RunResult", "refuse_out_inside_cache", "train", "build_model",
           "head_steps", "mil_config", "model_loss", "resolve_config", "train_epoch", "validate"]
